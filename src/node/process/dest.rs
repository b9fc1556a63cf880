//! [`Dest`]: where a [`super::Process`] sends, casts, calls and monitors: a pid, a name
//! registered on this node, a name registered on another node, or a `global` name (Erlang's
//! `Pid`, `Name`, `{Name, Node}` and `{global, Name}`).

use erl_dist::term::{Atom, Pid, Term, Tuple};

/// A process to talk to: a pid, a locally registered name, a name on a node, or a `global`
/// name.
///
/// ```
/// use kvnode::Dest;
/// let local: Dest = "my_server".into();
/// let remote: Dest = ("Elixir.MyApp.Server", "app@127.0.0.1").into();
/// assert_eq!(remote, Dest::Remote { name: "Elixir.MyApp.Server".into(), node: "app@127.0.0.1".into() });
/// assert_eq!(local, Dest::Name("my_server".into()));
/// // `{:global, :leader}` in Elixir: resolved when the message goes.
/// let global = Dest::Global("leader".into());
/// assert_eq!(global.to_string(), "{global, 'leader'}");
/// ```
///
/// A [`Dest::Global`] is looked up in the node's `global` table each time a message goes
/// (as `:global.send/2`; only a visible node has one, see [`crate::Node::global_whereis`]):
/// [`crate::Process::call`] to a name nobody holds fails at once with
/// [`crate::CallError::NoProc`], [`crate::Process::send`] and [`crate::Process::cast`] drop
/// the message, and [`crate::Process::monitor`] fires `noproc` at once; a monitor or call
/// watches the pid the name had when it was placed.
///
/// ```no_run
/// # async fn f(p: kvnode::Process) -> Result<(), kvnode::CallError> {
/// use kvnode::Dest;
/// use kvnode::term::Atom;
/// use std::time::Duration;
/// let reply = p
///     .call(Dest::Global("leader".into()), Atom::from("ping").into(), Duration::from_secs(5))
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Dest {
    /// A process by pid (on this node or another).
    Pid(Pid),
    /// A name registered on this node.
    Name(String),
    /// A name registered on node `node` (`{name, node}` in Erlang).
    Remote {
        /// The registered name (an Elixir module name is `"Elixir.Module"`).
        name: String,
        /// The node's full name, `name@host`.
        node: String,
    },
    /// A name registered with `global` (`{:global, name}` in Elixir), on whichever node of
    /// the cluster holds it.
    Global(String),
}

impl Dest {
    /// The node this destination is on, given the local node's name (for a
    /// [`Dest::Global`], which names no node, the local node's).
    ///
    /// ```
    /// use kvnode::Dest;
    /// let d: Dest = ("srv", "app@h").into();
    /// assert_eq!(d.node_of("me@h"), "app@h");
    /// assert_eq!(Dest::from("srv").node_of("me@h"), "me@h");
    /// ```
    pub fn node_of<'a>(&'a self, local: &'a str) -> &'a str {
        match self {
            Dest::Pid(pid) => &pid.node.name,
            Dest::Name(_) | Dest::Global(_) => local,
            Dest::Remote { node, .. } => node,
        }
    }

    /// The destination as a term, as `erlang:send/2` takes it (`pid`, `name`, `{name, node}`;
    /// `{global, name}` for a global name, as `GenServer.call/3` takes it).
    ///
    /// ```
    /// use kvnode::Dest;
    /// use kvnode::term::{Atom, Term};
    /// assert_eq!(Dest::from("srv").to_term(), Term::from(Atom::from("srv")));
    /// ```
    pub fn to_term(&self) -> Term {
        match self {
            Dest::Pid(pid) => pid.clone().into(),
            Dest::Name(name) => Atom::from(name.as_str()).into(),
            Dest::Remote { name, node } => Tuple::from(vec![
                Atom::from(name.as_str()).into(),
                Atom::from(node.as_str()).into(),
            ])
            .into(),
            Dest::Global(name) => Tuple::from(vec![
                Atom::from("global").into(),
                Atom::from(name.as_str()).into(),
            ])
            .into(),
        }
    }
}

impl std::fmt::Display for Dest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // As the Erlang shell shows a pid (`<0.ID.SERIAL>`), with its node named.
            Dest::Pid(pid) => write!(
                f,
                "<0.{}.{}> on {}",
                pid.id,
                pid.serial,
                crate::etf::text::name(&pid.node.name)
            ),
            Dest::Name(name) => write!(f, "{}", crate::etf::text::name(name)),
            Dest::Remote { name, node } => write!(
                f,
                "{{{}, {}}}",
                crate::etf::text::name(name),
                crate::etf::text::name(node)
            ),
            Dest::Global(name) => write!(f, "{{global, {}}}", crate::etf::text::name(name)),
        }
    }
}

impl From<Pid> for Dest {
    fn from(pid: Pid) -> Self {
        Dest::Pid(pid)
    }
}

impl From<&Pid> for Dest {
    fn from(pid: &Pid) -> Self {
        Dest::Pid(pid.clone())
    }
}

impl From<&str> for Dest {
    fn from(name: &str) -> Self {
        Dest::Name(name.to_owned())
    }
}

impl From<String> for Dest {
    fn from(name: String) -> Self {
        Dest::Name(name)
    }
}

impl From<(&str, &str)> for Dest {
    fn from((name, node): (&str, &str)) -> Self {
        Dest::Remote {
            name: name.to_owned(),
            node: node.to_owned(),
        }
    }
}

impl From<(String, String)> for Dest {
    fn from((name, node): (String, String)) -> Self {
        Dest::Remote { name, node }
    }
}
