//! Built-in node services every Erlang node is expected to have: [`net_kernel`] (so
//! `Node.ping/1` answers `:pong`) and [`rpc`] (`:rpc.call`/`:erpc.call`, which arrive as
//! SPAWN_REQUEST on OTP 25+).

pub mod net_kernel;
pub mod rpc;
