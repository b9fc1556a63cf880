//! kvnode: a Rust program that is a real Erlang node.
//!
//! Module map (data flows top to bottom):
//! - [`cli`]: command-line flags -> [`config::Config`].
//! - [`epmd`]: EPMD client (register, keep the registration) and the embedded EPMD server.
//! - [`dist`]: the distribution protocol: handshake, framing and ticks, per-peer connections,
//!   the connection manager (peer name -> connection, dial on demand).
//! - [`node`]: the local node: pids, refs, registered names, mailboxes, monitors, routing.
//! - [`gen_server`]: the GenServer trait and its run loop (`$gen_call`, `$gen_cast`, info).
//! - [`kv`]: the `DistributedExample.KVStore` server and its wire interface.
//! - [`services`]: built-in node services (`net_kernel`, rpc via SPAWN_REQUEST).

pub mod cli;
pub mod config;
pub mod dist;
pub mod epmd;
pub mod gen_server;
pub mod kv;
pub mod node;
pub mod services;
pub mod term;
