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
use services::pg::{PgError, PgOptions, PgScope};

// `pg` process groups (services::pg).
impl Node {
    /// Starts `pg` scope `scope` on this node (`:pg.start(scope)`): a process registered as
    /// `scope` that meets the scope's processes on every visible peer, so local pids can join
    /// groups seen cluster-wide and the peers' members are known here. Limits from
    /// `--pg-max-members`/`--pg-max-group-bytes` (defaults [`PgOptions::default`]).
    /// [`PgError::NotVisible`] on a hidden node; [`PgError::Spawn`] when the name is taken.
    ///
    /// ```no_run
    /// # async fn f(node: kvnode::Node) -> Result<(), Box<dyn std::error::Error>> {
    /// let scope = node.pg_start_scope("chat")?;
    /// let me = node.process(None)?;
    /// scope.join(kvnode::PgGroup::atom("lobby"), me.pid())?;
    /// println!("{:?}", scope.get_members(&kvnode::PgGroup::atom("lobby")));
    /// # Ok(()) }
    /// ```
    pub fn pg_start_scope(&self, scope: &str) -> Result<PgScope, PgError> {
        let options = PgOptions {
            max_members: self.config().pg_max_members,
            max_group_bytes: self.config().pg_max_group_bytes,
        };
        self.pg_start(scope, options)
    }

    /// [`Node::pg_start_scope`] with its own limits.
    ///
    /// ```no_run
    /// # fn f(node: kvnode::Node) -> Result<(), kvnode::PgError> {
    /// let mut options = kvnode::PgOptions::default();
    /// options.max_members = 10_000;
    /// let scope = node.pg_start_scope_with("small", options)?;
    /// # Ok(()) }
    /// ```
    pub fn pg_start_scope_with(&self, scope: &str, options: PgOptions) -> Result<PgScope, PgError> {
        self.pg_start(scope, options)
    }
}
