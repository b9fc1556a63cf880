//! `kvnode call` (one call, or `--repeat N --concurrency C` as a tiny load test), `cast`
//! and `send`.

use super::connect::{Client, connect};
use super::terms::{self, Target};
use super::{Failure, Status};
use crate::cli::ClientOpts;
use crate::{CallError, Dest, Process};
use erl_dist::term::Term;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// `kvnode call NODE NAME TERM`.
pub async fn call(
    opts: &ClientOpts,
    node: &str,
    name: &str,
    term: &str,
    repeat: Option<u64>,
    concurrency: u64,
) -> Result<(), Failure> {
    let syntax = terms::syntax_of(opts);
    let target = Target::parse(name, syntax)?;
    let request = terms::parse(term, syntax)?;
    let client = connect(opts, node).await?;
    let dest = target.dest(&client.peer, client.creation);
    let result = match repeat {
        None => once(&client, dest, request, opts).await,
        Some(n) => repeated(&client, dest, request, opts, n, concurrency).await,
    };
    client.stop().await;
    result
}

async fn once(
    client: &Client,
    dest: Dest,
    request: Term,
    opts: &ClientOpts,
) -> Result<(), Failure> {
    let me = process(client)?;
    match me.call(dest, request, client.remaining()).await {
        Ok(reply) => {
            println!("{}", terms::render(&reply, opts));
            Ok(())
        }
        // A reply no decoded term can hold (an OTP 29 native record, a map with both 0.0 and
        // -0.0 as keys): printed from its bytes.
        Err(CallError::Unrepresentable { dest, reply }) => {
            match terms::render_bytes(&reply, opts) {
                Ok(text) => {
                    println!("{text}");
                    Ok(())
                }
                Err(error) => Err(Failure::new(
                    Status::Remote,
                    format!(
                        "{dest} answered with a term kvnode cannot print ({error}); the reply in external format is {}",
                        crate::etf::excerpt(&reply)
                    ),
                )),
            }
        }
        Err(error) => Err(call_failure(&error, client, opts)),
    }
}

fn process(client: &Client) -> Result<Process, Failure> {
    client
        .node
        .process(None)
        .map_err(|e| Failure::new(Status::Usage, format!("cannot start a process: {e}")))
}

/// The failure a failed call makes.
pub(super) fn call_failure(error: &CallError, client: &Client, opts: &ClientOpts) -> Failure {
    match error {
        CallError::Timeout { dest, .. } => client.timed_out(&format!("the call to {dest}")),
        CallError::NoProc { dest } => Failure::new(
            Status::Remote,
            format!("remote error: noproc (no process {dest})"),
        ),
        CallError::NoConnection { node } => Failure::new(
            Status::Unreachable,
            format!("{node}: the connection went down during the call (noconnection)"),
        ),
        CallError::Exit { dest, reason } => Failure::new(
            Status::Remote,
            format!(
                "remote error: {dest} exited: {}",
                terms::render_error(reason, opts)
            ),
        ),
        // The call was answered, but with a term no kvnode term can hold (the printers work
        // on terms): said clearly, with the start of the reply's bytes; exit status 5 as for
        // the other answers kvnode cannot show as a result.
        CallError::Unrepresentable { dest, reply } => Failure::new(
            Status::Remote,
            format!(
                "{dest} answered with a term kvnode cannot print (an OTP 29 native record, or a map with both 0.0 and -0.0 as keys); the reply in external format is {}",
                crate::etf::excerpt(reply)
            ),
        ),
        other => Failure::new(Status::Remote, format!("remote error: {other}")),
    }
}

/// What the callers of `--repeat` count.
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    failed: u64,
    first_failure: Option<Failure>,
}

/// `--repeat N --concurrency C`: N calls from C processes, each call with the whole
/// `--timeout`; prints throughput and latency percentiles.
async fn repeated(
    client: &Client,
    dest: Dest,
    request: Term,
    opts: &ClientOpts,
    n: u64,
    concurrency: u64,
) -> Result<(), Failure> {
    let concurrency = concurrency.min(n);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers = (0..concurrency).map(|_| {
        let (dest, request, next) = (dest.clone(), request.clone(), next.clone());
        async move {
            let mut tally = Tally::default();
            let me = match process(client) {
                Ok(p) => p,
                Err(failure) => {
                    tally.first_failure = Some(failure);
                    return tally;
                }
            };
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let t = Instant::now();
                match me.call(dest.clone(), request.clone(), client.timeout).await {
                    // A reply only bytes can hold is an answer too.
                    Ok(_) | Err(CallError::Unrepresentable { .. }) => {
                        tally.latencies.push(t.elapsed())
                    }
                    Err(error) => {
                        tally.failed += 1;
                        if tally.first_failure.is_none() {
                            tally.first_failure = Some(call_failure(&error, client, opts));
                        }
                    }
                }
            }
            tally
        }
    });
    let tallies = futures::future::join_all(workers).await;
    let elapsed = started.elapsed();
    let mut all = Tally::default();
    for t in tallies {
        all.latencies.extend(t.latencies);
        all.failed += t.failed;
        if all.first_failure.is_none() {
            all.first_failure = t.first_failure;
        }
    }
    all.latencies.sort_unstable();
    let ok = all.latencies.len() as u64;
    let pct = |p: f64| -> f64 {
        if all.latencies.is_empty() {
            return 0.0;
        }
        let i = ((all.latencies.len() as f64 * p).ceil() as usize).clamp(1, all.latencies.len());
        all.latencies[i - 1].as_secs_f64() * 1000.0
    };
    let secs = elapsed.as_secs_f64().max(1e-9);
    let rate = ok as f64 / secs;
    let (p50, p90, p99, max) = (pct(0.50), pct(0.90), pct(0.99), pct(1.0));
    if opts.json {
        println!(
            "{{\"calls\":{n},\"ok\":{ok},\"failed\":{},\"concurrency\":{concurrency},\"elapsed_s\":{secs:.6},\"calls_per_s\":{rate:.1},\"latency_ms\":{{\"p50\":{p50:.3},\"p90\":{p90:.3},\"p99\":{p99:.3},\"max\":{max:.3}}}}}",
            all.failed
        );
    } else {
        println!(
            "calls: {n}  ok: {ok}  failed: {}  concurrency: {concurrency}",
            all.failed
        );
        println!("elapsed: {secs:.3} s  throughput: {rate:.0} calls/s");
        println!("latency: p50 {p50:.3} ms  p90 {p90:.3} ms  p99 {p99:.3} ms  max {max:.3} ms");
    }
    match all.first_failure {
        None if ok == n => Ok(()),
        first => {
            let first = first.unwrap_or_else(|| Failure::new(Status::Remote, "unknown failure"));
            Err(Failure::new(
                first.status,
                format!(
                    "{} of {n} calls failed; the first: {}",
                    n - ok,
                    first.message
                ),
            ))
        }
    }
}

/// `kvnode cast` (`cast` true) and `kvnode send`: returns once the message is handed to the
/// connection and flushed by the client node's orderly stop.
pub async fn cast_or_send(
    opts: &ClientOpts,
    node: &str,
    name: &str,
    term: &str,
    cast: bool,
) -> Result<(), Failure> {
    let syntax = terms::syntax_of(opts);
    let target = Target::parse(name, syntax)?;
    let message = terms::parse(term, syntax)?;
    let client = connect(opts, node).await?;
    let dest = target.dest(&client.peer, client.creation);
    let sent = process(&client).map(|me| {
        if cast {
            me.cast(dest, message);
        } else {
            me.send(dest, message);
        }
    });
    client.stop().await;
    sent
}
