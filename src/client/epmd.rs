//! `kvnode names [HOST]` (EPMD NAMES, printed as `epmd -names` prints it) and
//! `kvnode epmd [--port P] [--daemon] [--pid-file F]`: the EPMD server on its own, so a
//! machine without Erlang can run one that outlives every node registered with it.

use super::{Failure, Status};
use crate::epmd::EpmdError;
use crate::epmd::server::EpmdServer;
use std::io::{BufRead, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long `epmd --daemon` waits for the background EPMD to listen.
pub const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(10);

/// `kvnode names [HOST]`.
pub async fn names(
    host: Option<&str>,
    port: u16,
    timeout_ms: u64,
    json: bool,
) -> Result<(), Failure> {
    let host = host.unwrap_or("127.0.0.1");
    let timeout = Duration::from_millis(timeout_ms.max(1));
    let timed_out = || {
        Failure::new(
            Status::Timeout,
            format!("timeout: the EPMD on {host}:{port} did not answer within {timeout_ms} ms"),
        )
    };
    let work = async {
        let addr = tokio::net::lookup_host((host, port))
            .await
            .ok()
            .and_then(|mut addrs| addrs.find(|a| a.is_ipv4()))
            .ok_or_else(|| {
                Failure::new(Status::Unreachable, format!("cannot resolve host {host:?}"))
            })?;
        crate::epmd::client::names(addr).await.map_err(|e| match e {
            EpmdError::Timeout { .. } => timed_out(),
            other => Failure::new(Status::Unreachable, format!("epmd: {other}")),
        })
    };
    let names = tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| timed_out())??;
    if json {
        let items: Vec<String> = names
            .iter()
            .map(|(name, port)| format!("{{\"name\":{},\"port\":{port}}}", json_string(name)))
            .collect();
        println!("[{}]", items.join(","));
    } else {
        let mut out = String::from(&*format!(
            "epmd: up and running on port {port} with data:\n"
        ));
        for (name, port) in &names {
            out.push_str(&format!("name {name} at port {port}\n"));
        }
        print!("{out}");
    }
    Ok(())
}

/// A JSON string literal.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `kvnode epmd`: in the foreground, or detached with `--daemon`.
pub fn serve_command(port: u16, daemon: bool, pid_file: Option<PathBuf>) -> Result<(), Failure> {
    if daemon {
        return spawn_daemon(port, pid_file);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(Status::Usage, format!("cannot start the runtime: {e}")))?;
    runtime.block_on(serve(port, pid_file))
}

/// The line a listening EPMD prints on stdout (what `--daemon` waits for and prints).
fn listening_line(port: u16, pid: u32) -> String {
    format!("epmd: listening on port {port} (pid {pid})")
}

async fn serve(port: u16, pid_file: Option<PathBuf>) -> Result<(), Failure> {
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    let server = EpmdServer::bind(addr).await.map_err(|e| {
        Failure::new(
            Status::Unreachable,
            format!("cannot listen on {addr}: {e} (is another EPMD running there?)"),
        )
    })?;
    let bound = server.local_addr().port();
    let pid = std::process::id();
    if let Some(path) = &pid_file {
        write_atomically(path, &format!("{pid}\n")).map_err(|e| {
            Failure::new(
                Status::Usage,
                format!("cannot write the pid file {}: {e}", path.display()),
            )
        })?;
    }
    tracing::info!(port = bound, pid, "EPMD listening");
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", listening_line(bound, pid));
        let _ = out.flush();
    }
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        signalled().await;
        stop.cancel();
    });
    server.run(shutdown).await;
    if let Some(path) = &pid_file {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!(port = bound, "EPMD stopped");
    Ok(())
}

async fn signalled() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// Re-executes this binary as `kvnode epmd --port P` in a new session with no terminal and
/// null stdio (but stdout, a pipe until the EPMD says it listens); prints that line and
/// returns once it came.
fn spawn_daemon(port: u16, pid_file: Option<PathBuf>) -> Result<(), Failure> {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let exe = std::env::current_exe()
        .map_err(|e| Failure::new(Status::Usage, format!("cannot find the kvnode binary: {e}")))?;
    let mut command = Command::new(exe);
    command
        .arg("epmd")
        .arg("--port")
        .arg(port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(path) = &pid_file {
        // Relative to where the daemon was asked for, not to its working directory.
        let path = std::path::absolute(path).unwrap_or_else(|_| path.clone());
        command.arg("--pid-file").arg(path);
    }
    // SAFETY: setsid is async-signal-safe; it runs in the child between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // The daemon is the working directory's user no longer: like any daemon, it moves to /.
    command.current_dir("/");
    let mut child = command
        .spawn()
        .map_err(|e| Failure::new(Status::Usage, format!("cannot start the EPMD: {e}")))?;
    let Some(stdout) = child.stdout.take() else {
        return Err(Failure::new(Status::Usage, "cannot read the EPMD's output"));
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(DAEMON_START_TIMEOUT).unwrap_or_default();
    if line.starts_with("epmd: listening") {
        print!("{line}");
        // The child goes on alone; nobody waits for it (it is re-parented to init).
        drop(child);
        return Ok(());
    }
    let _ = child.kill();
    let status = child.wait().ok().and_then(|s| s.code());
    // Say why, if it is the port: bind it ourselves.
    let why = match std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)) {
        Err(e) => format!("cannot listen on port {port}: {e} (is another EPMD running there?)"),
        Ok(_) => format!(
            "the EPMD did not start (exit status {status:?}); run `kvnode epmd --port {port}` to see why"
        ),
    };
    Err(Failure::new(Status::Unreachable, why))
}
