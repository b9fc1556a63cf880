//! The generic Erlang node: nothing in it knows the KV store (or any other app).
//!
//! Layers, data flowing one way (bytes -> transport -> process -> behaviour -> app ->
//! behaviour -> transport):
//! - [`transport`]: admission of unauthenticated sockets, the handshake, TLS, connection
//!   read/write loops, outboxes, the peer table and dialing, the connection threads.
//! - [`process`]: the node's identity, pids, references, registered names, mailboxes,
//!   monitors and links in both directions, exit signals, and routing of control messages.
//! - [`gen_server`]: the one GenServer protocol module (`$gen_call`/`$gen_cast`, alias tags,
//!   system messages) and the host that runs servers.
//! - [`services`]: what every Erlang node has (`net_kernel`, `rex`, rpc/erpc over one function
//!   table that apps extend).
//! - [`builder`]: starting ([`builder::NodeBuilder`]) and stopping a node.

pub mod builder;
pub mod gen_server;
pub mod process;
pub mod services;
pub mod transport;

pub use process::*;
