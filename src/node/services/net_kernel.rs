//! `net_kernel`: answers `{:is_auth, node}` with `:yes`, which is what `Node.ping/1` /
//! `:net_adm.ping/1` ask (with an infinite timeout: silence would hang the caller forever).

use crate::node::gen_server::{CallResult, Caller, Ctx, GenServer, Request};
use erl_dist::term::{Atom, Term, Tuple};

/// The registered name.
pub const NAME: &str = "net_kernel";

/// The `net_kernel` server.
pub struct NetKernel;

impl GenServer for NetKernel {
    /// Stopped (`GenServer.stop`): restarted at once under the same name, as its supervisor
    /// would (it holds no state).
    fn restart(&mut self, _ctx: &mut Ctx, _reason: &Term) -> Option<Self> {
        Some(NetKernel)
    }

    fn handle_call(
        &mut self,
        _ctx: &mut Ctx,
        from: &Caller,
        request: Request<'_>,
    ) -> CallResult<'_> {
        let Ok(request) = request.decode() else {
            return CallResult::NoReply;
        };
        CallResult::Reply(match &request {
            Term::Tuple(Tuple { elements })
                if elements.len() == 2
                    && matches!(&elements[0], Term::Atom(a) if a.name == "is_auth") =>
            {
                tracing::debug!(from = %from.pid(), "is_auth: yes");
                Atom::from("yes").into()
            }
            _ => {
                // OTP's net_kernel has many more calls; none of them make sense here. Answer
                // rather than leave the caller hanging.
                Tuple::from(vec![
                    Atom::from("error").into(),
                    Tuple::from(vec![Atom::from("unknown_request").into(), request]).into(),
                ])
                .into()
            }
        })
    }
}
