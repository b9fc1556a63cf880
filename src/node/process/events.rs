//! Connections to other nodes as seen by Rust code: [`Node::connect`] dials a node and waits
//! for the handshake, [`Node::monitor_nodes`] streams [`NodeEvent`]s (`net_kernel:monitor_nodes`
//! in Erlang terms).
//!
//! Events go through a bounded broadcast channel ([`NODE_EVENTS_CAPACITY`]): the node never
//! waits for a subscriber. A subscriber that falls that far behind loses the oldest events
//! and is told how many with [`NodeEvent::Lagged`].

use super::Node;
use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::broadcast;

/// Node events kept for each [`NodeEvents`] subscriber that has not read them yet. A slower
/// subscriber loses the oldest ones (it sees [`NodeEvent::Lagged`]); the node never waits.
pub const NODE_EVENTS_CAPACITY: usize = 1024;

/// How long [`Node::connect`] waits beyond the configured handshake timeout (EPMD lookup and
/// TCP connect come before the handshake).
pub const CONNECT_SLACK: Duration = Duration::from_secs(5);

/// A change in the set of connected nodes.
///
/// ```no_run
/// # async fn f(node: kvnode::Node) {
/// use kvnode::NodeEvent;
/// let mut events = node.monitor_nodes();
/// while let Some(event) = events.recv().await {
///     match event {
///         NodeEvent::Up(name) => println!("{name} up"),
///         NodeEvent::Down(name) => println!("{name} down"),
///         NodeEvent::Lagged(n) => println!("missed {n} events"),
///         _ => {}
///     }
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeEvent {
    /// A connection to this node is up (handshake done).
    Up(String),
    /// The connection to this node went down.
    Down(String),
    /// This subscriber fell behind by this many events, which are lost to it.
    Lagged(u64),
}

/// Node up/down events, from [`Node::monitor_nodes`].
///
/// ```no_run
/// # async fn f(node: kvnode::Node) {
/// let mut events = node.monitor_nodes();
/// while let Some(event) = events.recv().await {
///     println!("{event:?}");
/// }
/// # }
/// ```
pub struct NodeEvents(broadcast::Receiver<NodeEvent>);

impl std::fmt::Debug for NodeEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeEvents")
            .field("queued", &self.0.len())
            .finish()
    }
}

impl NodeEvents {
    /// The next event; `None` once the node is gone.
    ///
    /// ```no_run
    /// # async fn f(node: kvnode::Node) {
    /// use kvnode::NodeEvent;
    /// let mut events = node.monitor_nodes();
    /// if let Some(NodeEvent::Down(name)) = events.recv().await {
    ///     println!("{name} went down");
    /// }
    /// # }
    /// ```
    pub async fn recv(&mut self) -> Option<NodeEvent> {
        match self.0.recv().await {
            Ok(event) => Some(event),
            Err(broadcast::error::RecvError::Lagged(n)) => Some(NodeEvent::Lagged(n)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

/// Why [`Node::connect`] failed.
///
/// ```no_run
/// # async fn f(node: kvnode::Node) {
/// use kvnode::ConnectError;
/// match node.connect("app@127.0.0.1").await {
///     Ok(()) => println!("connected"),
///     Err(ConnectError::Timeout { waited, .. }) => println!("no answer in {waited:?}"),
///     Err(e) => println!("{e}"),
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The name is not `name@host`, or is this node's own name.
    #[error("not a node name to connect to: {name:?}")]
    BadName {
        /// The name given (at most 255 bytes of it).
        name: String,
    },
    /// The dial failed (EPMD lookup, TCP, handshake, or `--max-dials` dials in flight); the
    /// node's log says why.
    #[error("cannot connect to {node}")]
    Failed {
        /// The node.
        node: String,
    },
    /// No connection within the deadline.
    #[error("no connection to {node} within {waited:?}")]
    Timeout {
        /// The node.
        node: String,
        /// How long [`Node::connect`] waited.
        waited: Duration,
    },
}

/// The event channel and the set of nodes reported up (a failed dial is no `Down`).
pub(crate) struct Hub {
    tx: broadcast::Sender<NodeEvent>,
    up: Mutex<HashSet<String>>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            tx: broadcast::channel(NODE_EVENTS_CAPACITY).0,
            up: Mutex::new(HashSet::new()),
        }
    }
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.up.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn up(&self, peer: &str) {
        let mut up = self.lock();
        if up.insert(peer.to_owned()) {
            // No subscriber is not an error.
            let _ = self.tx.send(NodeEvent::Up(peer.to_owned()));
        }
    }

    pub(crate) fn down(&self, peer: &str) {
        let mut up = self.lock();
        if up.remove(peer) {
            let _ = self.tx.send(NodeEvent::Down(peer.to_owned()));
        }
    }
}

fn excerpt(name: &str) -> String {
    let mut end = name.len().min(255);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_owned()
}

impl Node {
    /// Subscribes to node up/down events, from now on: nodes already connected are not
    /// reported (no public call lists them yet; [`Node::connect`] to a connected node
    /// returns at once).
    ///
    /// ```no_run
    /// # async fn f(node: kvnode::Node) {
    /// let mut events = node.monitor_nodes();
    /// let first = events.recv().await;
    /// # }
    /// ```
    pub fn monitor_nodes(&self) -> NodeEvents {
        NodeEvents(self.0.events.tx.subscribe())
    }

    /// Connects to `node` (`name@host`) unless connected already, and waits for the
    /// handshake (at most the configured handshake timeout plus 5 s).
    ///
    /// ```no_run
    /// # async fn f(node: kvnode::Node) -> Result<(), kvnode::ConnectError> {
    /// node.connect("app@127.0.0.1").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(&self, node: &str) -> Result<(), ConnectError> {
        let bad = || ConnectError::BadName {
            name: excerpt(node),
        };
        match node.split_once('@') {
            Some((alive, host)) if !alive.is_empty() && !host.is_empty() && node.len() <= 255 => {}
            _ => return Err(bad()),
        }
        if node == self.0.name.name {
            return Err(bad());
        }
        let waited = self.0.config.handshake_timeout + CONNECT_SLACK;
        let deadline = tokio::time::Instant::now() + waited;
        if !self.ensure_dialing(node) {
            return Err(ConnectError::Failed {
                node: node.to_owned(),
            });
        }
        loop {
            let changed = self.0.manager.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.0.manager.is_up(node) {
                return Ok(());
            }
            // The dial's slot goes when it fails.
            if !self.0.manager.knows(node) {
                return Err(ConnectError::Failed {
                    node: node.to_owned(),
                });
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(ConnectError::Timeout {
                    node: node.to_owned(),
                    waited,
                });
            }
        }
    }
}
