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

/// Erlang's `global` for Rust programs (a visible node: [`builder::NodeBuilder::visible`]).
impl Node {
    /// Registers the local process `pid` under the cluster-wide name `name` (an atom), as
    /// `:global.register_name/2`: takes the global lock on every known node, registers the
    /// name on each, releases the lock. Then `:global.whereis_name(name)` on every node of the
    /// cluster returns `pid` and `GenServer.call({:global, name}, ...)` reaches it. The name
    /// goes when the process exits (or by [`Node::global_unregister`]); it is not registered
    /// again (see [`Node::global_keep_registered`] for that). A name clash when partitions
    /// meet is resolved as [`crate::GlobalResolve::RandomExit`].
    ///
    /// Errors: [`crate::GlobalError::Taken`] when the name is registered (`no` in Erlang),
    /// [`crate::GlobalError::Duplicate`] when `pid` holds another global name,
    /// `NotLocal`/`NoProc` for a pid that is not a live process of this node, `NotVisible`
    /// on a hidden node, `BadName` for a name longer than 255 characters, `Busy` when the
    /// global lock could not be taken.
    ///
    /// ```no_run
    /// # async fn f(node: kvnode::Node) -> Result<(), Box<dyn std::error::Error>> {
    /// let p = node.process(None)?;
    /// node.global_register("my_service", p.pid()).await?;
    /// assert_eq!(node.global_whereis("my_service").as_ref(), Some(p.pid()));
    /// # Ok(()) }
    /// ```
    pub async fn global_register(
        &self,
        name: &str,
        pid: &erl_dist::term::Pid,
    ) -> Result<(), services::global::GlobalError> {
        services::global::register_name(self, name, pid, Default::default()).await
    }

    /// [`Node::global_register`] with a name clash resolution method
    /// (`:global.register_name/3` with one of `global`'s three methods).
    ///
    /// ```no_run
    /// # async fn f(node: kvnode::Node, pid: kvnode::term::Pid) -> Result<(), kvnode::GlobalError> {
    /// node.global_register_with("my_service", &pid, kvnode::GlobalResolve::NotifyAll).await?;
    /// # Ok(()) }
    /// ```
    pub async fn global_register_with(
        &self,
        name: &str,
        pid: &erl_dist::term::Pid,
        resolve: services::global::Resolve,
    ) -> Result<(), services::global::GlobalError> {
        services::global::register_name(self, name, pid, resolve).await
    }

    /// Keeps `name` registered for the local process `pid` while the node runs (what
    /// `--global-name` does): registered in the background, retried while the global lock
    /// is busy, and registered again whenever the name is free again (its holder gone, a
    /// clash lost) while `pid` lives. Returns at once; errors only for a bad name, a hidden
    /// node or a pid of another node. [`Node::global_unregister`] ends it.
    ///
    /// ```no_run
    /// # fn f(node: kvnode::Node, pid: kvnode::term::Pid) -> Result<(), kvnode::GlobalError> {
    /// node.global_keep_registered("primary", &pid)?;
    /// # Ok(()) }
    /// ```
    pub fn global_keep_registered(
        &self,
        name: &str,
        pid: &erl_dist::term::Pid,
    ) -> Result<(), services::global::GlobalError> {
        services::global::keep_registered(self, name, pid)
    }

    /// Removes the global name `name`, whichever node's process holds it, on every node
    /// (`:global.unregister_name/1`; the global lock is taken). Ok when it was not
    /// registered.
    ///
    /// ```no_run
    /// # async fn f(node: kvnode::Node) -> Result<(), kvnode::GlobalError> {
    /// node.global_unregister("my_service").await?;
    /// # Ok(()) }
    /// ```
    pub async fn global_unregister(&self, name: &str) -> Result<(), services::global::GlobalError> {
        services::global::unregister_name(self, name).await
    }

    /// The pid registered under the global name `name`, on any node of the cluster
    /// (`:global.whereis_name/1`, read from this node's table: no lock, no message). None
    /// when it is not registered, on a hidden node, or for a name that is not an atom.
    ///
    /// ```no_run
    /// # fn f(node: kvnode::Node) {
    /// if let Some(pid) = node.global_whereis("Elixir.MyApp.Leader") {
    ///     println!("leader on {}", pid.node.name);
    /// }
    /// # }
    /// ```
    pub fn global_whereis(&self, name: &str) -> Option<erl_dist::term::Pid> {
        services::global::whereis_name(self, name)
    }

    /// The global names registered in the cluster, sorted (`:global.registered_names/0`;
    /// names that are atoms; empty on a hidden node).
    ///
    /// ```no_run
    /// # fn f(node: kvnode::Node) {
    /// for name in node.global_names() {
    ///     println!("{name}");
    /// }
    /// # }
    /// ```
    pub fn global_names(&self) -> Vec<String> {
        services::global::registered_names(self)
    }
}

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
