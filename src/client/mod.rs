//! `kvnode call|cast|send|rpc|ping|names|epmd`: kvnode as a command-line Erlang client for
//! scripts (issue 13). Each command that talks to a node starts a short-lived hidden node
//! that does not register with EPMD ([`crate::NodeBuilder::register_with_epmd`]), connects
//! to the target, does one thing with a [`crate::Process`] and stops; the exit status says
//! what happened ([`Status`]).
//!
//! - [`connect`]: the client node, the dial and why it failed, names and pids of the target;
//! - [`terms`]: terms from the command line (Erlang or Elixir syntax) and to stdout (or JSON);
//! - [`call`]: `call` (and `--repeat`), `cast`, `send`;
//! - [`rpc`]: `rpc` (erpc through a spawn request, `rex` as a fallback) and `ping`;
//! - [`io_server`]: the Erlang I/O protocol, served to the function `rpc` runs (its group leader);
//! - [`epmd`]: `names` and the stand-alone EPMD server (`epmd [--daemon]`);
//! - [`top`]: `top`, a refreshing summary of `kvnode:info/0`.

pub mod call;
pub mod connect;
pub mod epmd;
pub mod io_server;
pub mod rpc;
pub mod terms;
pub mod top;

use crate::cli::Command;
use std::fmt;

/// Default `--timeout` of client commands, in milliseconds: the whole command (connect,
/// handshake, reply) must finish within it.
pub const DEFAULT_TIMEOUT_MS: u64 = 5000;

/// Most `--concurrency` of `call --repeat`: each concurrent caller is a process of the client
/// node with its own mailbox.
pub const MAX_CONCURRENCY: u64 = 10_000;

/// Exit statuses of the client commands (documented in `kvnode --help` and the README).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Success (ping: pong).
    Ok = 0,
    /// The peer is unreachable: no such name in EPMD, no EPMD, connection refused, the node
    /// went down (ping: pang).
    Unreachable = 1,
    /// A usage error or a term that does not parse (clap uses 2 too).
    Usage = 2,
    /// The handshake was refused: a wrong cookie, `not_allowed`, TLS.
    Refused = 3,
    /// No answer within `--timeout`.
    Timeout = 4,
    /// The remote side answered with an error: `noproc`, `badrpc`, an exception, an exit.
    Remote = 5,
}

/// A command that failed: the status to exit with and what to print on stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The exit status.
    pub status: Status,
    /// The message (printed after `kvnode: `).
    pub message: String,
}

impl Failure {
    /// A failure with `status` and `message`.
    pub fn new(status: Status, message: impl Into<String>) -> Failure {
        Failure {
            status,
            message: message.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Runs a client command; returns the exit status. Prints results on stdout and failures on
/// stderr.
pub fn main(command: Command) -> u8 {
    if let Command::Epmd {
        port,
        daemon,
        pid_file,
    } = &command
    {
        return finish(epmd::serve_command(*port, *daemon, pid_file.clone()));
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("kvnode: cannot start the runtime: {error}");
            return Status::Usage as u8;
        }
    };
    finish(runtime.block_on(run(command)))
}

fn finish(result: Result<(), Failure>) -> u8 {
    match result {
        Ok(()) => Status::Ok as u8,
        Err(failure) => {
            if !failure.message.is_empty() {
                eprintln!("kvnode: {failure}");
            }
            failure.status as u8
        }
    }
}

async fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Call {
            node,
            process: name,
            term,
            repeat,
            concurrency,
            opts,
        } => call::call(&opts, &node, &name, &term, repeat, concurrency).await,
        Command::Cast {
            node,
            process: name,
            term,
            opts,
        } => call::cast_or_send(&opts, &node, &name, &term, true).await,
        Command::Send {
            node,
            process: name,
            term,
            opts,
        } => call::cast_or_send(&opts, &node, &name, &term, false).await,
        Command::Rpc {
            node,
            module,
            function,
            args,
            rex,
            opts,
        } => rpc::rpc(&opts, &node, &module, &function, &args, rex).await,
        Command::Ping { node, opts } => rpc::ping(&opts, &node).await,
        Command::Top { node, once, opts } => top::top(&opts, &node, once).await,
        Command::Names {
            host,
            epmd_port,
            timeout,
            json,
        } => epmd::names(host.as_deref(), epmd_port, timeout, json).await,
        Command::Epmd { .. } => Ok(()), // ok: handled in `main` (it needs its own runtime)
    }
}
