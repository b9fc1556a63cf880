//! Stopping the node from a peer: `init:stop/0,1` and `erlang:halt/0,1` in the
//! [`super::functions`] table, so `erl_call -q`, `:rpc.call(kv, :init, :stop, [])` and
//! friends stop kvnode as they stop a BEAM node.
//!
//! Both stop in order (the same path as SIGTERM): stop accepting, flush what is queued to
//! every peer, close the connections, unregister from EPMD, flush the storage (every queued
//! write, casts included, is committed), and exit with the status given (0 by default).
//! `init:stop` answers `ok` first, as on BEAM; `erlang:halt` answers nothing (on BEAM the node
//! is simply gone): its caller sees the connection close (`{:badrpc, :nodedown}` from
//! `:rpc.call`), and `erl_call -q` exits 0.
//!
//! Who may do this: whoever holds the cookie, as on a BEAM node (where the cookie also lets
//! one run `:os.cmd`). The cookie is the trust boundary.

use super::functions::{Finished, Functions, Outcome, atom, error, tuple};
use erl_dist::term::{FixInteger, List, Term};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use tokio_util::sync::CancellationToken;

/// A request to stop the node, with the exit status. Cheap to clone; the first request's
/// status wins.
#[derive(Clone)]
pub struct StopRequest(Arc<Inner>);

struct Inner {
    token: CancellationToken,
    status: AtomicI32,
}

impl Default for StopRequest {
    fn default() -> Self {
        StopRequest(Arc::new(Inner {
            token: CancellationToken::new(),
            status: AtomicI32::new(-1),
        }))
    }
}

impl StopRequest {
    /// Asks the node to stop and exit with `status`.
    pub fn request(&self, status: u8) {
        let _ = self.0.status.compare_exchange(
            -1,
            i32::from(status),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        self.0.token.cancel();
    }

    /// Whether a stop was requested.
    #[cfg_attr(not(test), allow(dead_code))] // used by tests
    pub fn is_requested(&self) -> bool {
        self.0.token.is_cancelled()
    }

    /// Resolves when a stop is requested, with the exit status.
    pub async fn requested(&self) -> u8 {
        self.0.token.cancelled().await;
        u8::try_from(self.0.status.load(Ordering::Acquire)).unwrap_or(0)
    }
}

/// An exit status from `halt/1` / `init:stop/1`'s argument: a non-negative integer (taken
/// modulo 256, as the OS does) or a string (a "slogan": BEAM writes a crash dump and exits 1;
/// kvnode logs it and exits 1).
fn status_of(arg: &Term) -> Option<u8> {
    match arg {
        Term::FixInteger(FixInteger { value }) if *value >= 0 => Some((*value & 0xff) as u8),
        Term::BigInteger(b) if b.value.sign() != num_bigint::Sign::Minus => {
            let low = (&b.value & num_bigint::BigInt::from(0xff)).to_string();
            low.parse().ok()
        }
        Term::ByteList(_) | Term::List(_) => Some(1),
        _ => None,
    }
}

fn bad_status(module: &str, function: &str, arg: &Term) -> Finished {
    error(
        atom("badarg"),
        List::from(vec![tuple(vec![
            atom(module),
            atom(function),
            List::from(vec![arg.clone()]).into(),
            List::nil().into(),
        ])])
        .into(),
    )
    .into()
}

/// Registers `init:stop/0,1` and `erlang:halt/0,1`, all requesting `stop`.
pub fn register(functions: &Functions, stop: &StopRequest) {
    let s = stop.clone();
    functions.register_sync("init", "stop", 0, move |_, _| {
        tracing::info!("init:stop/0 called by a peer: stopping");
        let s = s.clone();
        Finished::then(Outcome::Return(atom("ok")), move || s.request(0))
    });
    let s = stop.clone();
    functions.register_sync("init", "stop", 1, move |_, args| {
        let Some(status) = status_of(&args[0]) else {
            return bad_status("init", "stop", &args[0]);
        };
        tracing::info!(status, "init:stop/1 called by a peer: stopping");
        let s = s.clone();
        Finished::then(Outcome::Return(atom("ok")), move || s.request(status))
    });
    let s = stop.clone();
    functions.register_sync("erlang", "halt", 0, move |_, _| {
        tracing::info!("erlang:halt/0 called by a peer: stopping");
        let s = s.clone();
        Finished::then(Outcome::Halt, move || s.request(0))
    });
    let s = stop.clone();
    functions.register_sync("erlang", "halt", 1, move |_, args| {
        let Some(status) = status_of(&args[0]) else {
            return super::functions::badarg("halt", args);
        };
        tracing::info!(status, "erlang:halt/1 called by a peer: stopping");
        let s = s.clone();
        Finished::then(Outcome::Halt, move || s.request(status))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use erl_dist::term::BigInteger;

    #[test]
    fn statuses() {
        assert_eq!(status_of(&FixInteger::from(0).into()), Some(0));
        assert_eq!(status_of(&FixInteger::from(3).into()), Some(3));
        assert_eq!(status_of(&FixInteger::from(257).into()), Some(1));
        assert_eq!(status_of(&FixInteger::from(-1).into()), None);
        assert_eq!(status_of(&BigInteger::from(1u64 << 40 | 7).into()), Some(7));
        assert_eq!(
            status_of(&eetf::ByteList::from(b"bye".to_vec()).into()),
            Some(1)
        );
        assert_eq!(status_of(&atom("abort")), None);
    }

    #[tokio::test]
    async fn first_request_wins() {
        let s = StopRequest::default();
        assert!(!s.is_requested());
        s.request(3);
        s.request(0);
        assert_eq!(s.requested().await, 3);
    }
}
