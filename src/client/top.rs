//! `kvnode top NODE`: a one-screen summary of a running node, redrawn every second from
//! `kvnode:info/0` (called by rpc, as `kvnode rpc NODE kvnode info '[]'` does). Quits on
//! `q` or Ctrl-C; `--once` prints one summary and exits (for scripts and tests).

use super::connect::connect;
use super::{Failure, Status, rpc};
use crate::cli::ClientOpts;
use erl_dist::term::Term;
use std::io::Write;
use std::time::Duration;
use tokio::time::Instant;

/// Time between two redraws.
pub const REFRESH: Duration = Duration::from_secs(1);

/// The counters shown first, in this order (the rest follow sorted by name).
const ORDER: [&str; 13] = [
    "connections",
    "keys",
    "stored_bytes",
    "subscriptions",
    "storage_syncs",
    "processes",
    "registered",
    "monitors",
    "monitored_by",
    "linked_by",
    "backpressure_pauses",
    "rss_bytes",
    "open_fds",
];

/// Counters that only grow: shown with their rate since the previous screen.
const RATES: [&str; 2] = ["storage_syncs", "backpressure_pauses"];

/// `kvnode top`.
pub async fn top(opts: &ClientOpts, node: &str, once: bool) -> Result<(), Failure> {
    let mut client = connect(opts, node).await?;
    let mut keys = KeyReader::start(once);
    let mut previous: Option<(Instant, Vec<(String, u64)>)> = None;
    let result = loop {
        client.deadline = Instant::now() + client.timeout;
        let info = match rpc::call(&client, "kvnode", "info", Vec::new(), opts, false).await {
            Ok(info) => info,
            Err(failure) => break Err(failure),
        };
        let Some(counters) = counters(&info) else {
            break Err(Failure::new(
                Status::Remote,
                "kvnode:info/0 did not answer a map of counters",
            ));
        };
        let now = Instant::now();
        let screen = render(node, &counters, previous.as_ref(), now);
        let mut out = std::io::stdout().lock();
        let written = if once {
            out.write_all(screen.as_bytes())
        } else {
            // Home, clear the screen, draw.
            out.write_all(b"\x1b[H\x1b[2J")
                .and_then(|()| out.write_all(screen.replace('\n', "\r\n").as_bytes()))
        };
        let _ = written.and_then(|()| out.flush());
        drop(out);
        if once {
            break Ok(());
        }
        previous = Some((now, counters));
        tokio::select! {
            () = tokio::time::sleep(REFRESH) => {}
            _ = tokio::signal::ctrl_c() => break Ok(()),
            () = keys.quit() => break Ok(()),
        }
    };
    drop(keys);
    client.stop().await;
    result
}

/// The `name => integer` entries of an info map, sorted as shown.
fn counters(info: &Term) -> Option<Vec<(String, u64)>> {
    let Term::Map(map) = info else { return None };
    let mut out: Vec<(String, u64)> = map
        .map
        .iter()
        .filter_map(|(k, v)| {
            let Term::Atom(name) = k else { return None };
            let value = match v {
                Term::FixInteger(i) => u64::try_from(i.value).ok()?,
                Term::BigInteger(b) => u64::try_from(&b.value).ok()?,
                _ => return None,
            };
            Some((name.name.clone(), value))
        })
        .collect();
    let rank = |name: &str| ORDER.iter().position(|k| *k == name).unwrap_or(ORDER.len());
    out.sort_by(|(a, _), (b, _)| rank(a).cmp(&rank(b)).then_with(|| a.cmp(b)));
    Some(out)
}

fn human(name: &str, value: u64) -> String {
    if name.ends_with("_bytes") {
        format!("{:.1} MiB", value as f64 / (1024.0 * 1024.0))
    } else {
        value.to_string()
    }
}

/// One screen: a title line, then one `name value [rate]` line per counter.
fn render(
    node: &str,
    counters: &[(String, u64)],
    previous: Option<&(Instant, Vec<(String, u64)>)>,
    now: Instant,
) -> String {
    let mut s = format!("kvnode top  {node}  (kvnode:info/0 every 1 s; q or Ctrl-C quits)\n\n");
    for (name, value) in counters {
        let mut line = format!("{name:<22}{:>14}", human(name, *value));
        if RATES.contains(&name.as_str())
            && let Some((then, before)) = previous
            && let Some((_, old)) = before.iter().find(|(n, _)| n == name)
        {
            let secs = now.duration_since(*then).as_secs_f64().max(1e-3);
            line.push_str(&format!(
                "  {:>10.1}/s",
                value.saturating_sub(*old) as f64 / secs
            ));
        }
        s.push_str(&line);
        s.push('\n');
    }
    s
}

/// Reads keys from a terminal in non-canonical mode (restored when dropped), so `q` quits
/// without Enter. Without a terminal (or with `--once`) it never reports a key.
struct KeyReader {
    saved: Option<libc::termios>,
    rx: Option<tokio::sync::mpsc::Receiver<u8>>,
}

impl KeyReader {
    fn start(once: bool) -> KeyReader {
        if once || !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
            return KeyReader {
                saved: None,
                rx: None,
            };
        }
        // SAFETY: an all-zero termios is a valid value of this plain C struct.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd 0 and a valid, writable termios.
        if unsafe { libc::tcgetattr(0, &mut saved) } != 0 {
            return KeyReader {
                saved: None,
                rx: None,
            };
        }
        let mut raw = saved;
        raw.c_lflag &= !(libc::ICANON | libc::ECHO);
        raw.c_cc[libc::VMIN] = 1;
        raw.c_cc[libc::VTIME] = 0;
        // SAFETY: fd 0 and a valid termios.
        let saved = (unsafe { libc::tcsetattr(0, libc::TCSANOW, &raw) } == 0).then_some(saved);
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        // A plain thread: a blocking read of stdin has no async form that can be cancelled.
        std::thread::spawn(move || {
            let mut byte = [0u8; 1];
            while let Ok(1) = std::io::Read::read(&mut std::io::stdin(), &mut byte) {
                if tx.blocking_send(byte[0]).is_err() {
                    break;
                }
            }
        });
        KeyReader {
            saved,
            rx: Some(rx),
        }
    }

    /// Resolves when `q` (or `Q`) was typed; never without a terminal.
    async fn quit(&mut self) {
        let Some(rx) = &mut self.rx else {
            return std::future::pending().await;
        };
        loop {
            match rx.recv().await {
                Some(b'q' | b'Q') => return,
                Some(_) => {}
                // stdin closed: keep running until Ctrl-C.
                None => return std::future::pending().await,
            }
        }
    }
}

impl Drop for KeyReader {
    fn drop(&mut self) {
        if let Some(saved) = self.saved {
            // SAFETY: fd 0 and the termios read at start.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, &saved);
            }
        }
    }
}
