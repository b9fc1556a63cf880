//! Built-in node services every Erlang node is expected to have: [`net_kernel`] (so
//! `Node.ping/1` answers `:pong`), [`rex`] (the classic rpc server: `erl_call`, `ei_rpc`,
//! Jinterface, `:rpc.block_call`, `:rpc.sbcast`) and [`rpc`] (`:rpc.call`/`:erpc.call` and
//! spawns, which arrive as SPAWN_REQUEST on OTP 25+). Both rpc paths run functions from the one
//! table in [`functions`], filled by [`builtins`], [`control`] and applications (the KV app's `kv::rpc`).
//! A visible node also runs [`global`] (`global_name_server`) and the [`pg`] scopes it is asked
//! to join.

pub mod builtins;
pub mod control;
pub mod functions;
pub mod global;
pub mod net_kernel;
pub mod pg;
pub mod rex;
pub mod rpc;
