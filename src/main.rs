//! The `kvnode` binary: parse flags, set up logging, run the node until SIGINT/SIGTERM or a
//! peer's `init:stop` / `erlang:halt` (exit status 0, or the one `halt/1` asked for); or run
//! a client command (`kvnode call ...`, see `kvnode::internals::client`).

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use kvnode::internals::Cli;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    // Client commands print what matters themselves: their logs are for RUST_LOG only.
    let default_level = if cli.command.is_some() {
        "error"
    } else {
        "info"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    if let Some(command) = cli.command.take() {
        return ExitCode::from(kvnode::internals::client::main(command));
    }
    let settings = match cli.into_settings() {
        Ok(s) => s,
        Err(error) => {
            eprintln!("kvnode: {error}");
            return ExitCode::from(2);
        }
    };
    // Every thread that may decode, encode or drop a peer's term gets a stack sized for
    // --max-term-depth: eetf recurses once per level of nesting (see kvnode::etf).
    let stack = kvnode::internals::etf::stack_size_for_depth(settings.node.max_term_depth);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(stack)
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("kvnode: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // The main thread's stack is whatever `ulimit -s` says (often 8 MiB), and the node's
    // start-up (recovery decodes every stored term) runs on the thread that blocks on it.
    let node = std::thread::Builder::new()
        .name("kvnode-main".into())
        .stack_size(stack)
        .spawn(move || {
            runtime.block_on(kvnode::run(settings.node, settings.kv, shutdown_signal()))
        });
    let result = match node.map(|thread| thread.join()) {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => {
            eprintln!("kvnode: the main thread panicked");
            return ExitCode::FAILURE;
        }
        Err(error) => {
            eprintln!("kvnode: cannot start the main thread ({stack} bytes of stack): {error}");
            return ExitCode::FAILURE;
        }
    };
    match result {
        Ok(status) => ExitCode::from(status),
        Err(error) => {
            tracing::error!(%error, "kvnode failed");
            eprintln!("kvnode: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
