//! [`Dest`]: where a [`super::Process`] sends, casts, calls and monitors: a pid, a name
//! registered on this node, or a name registered on another node (Erlang's `Pid`, `Name`
//! and `{Name, Node}`).

use erl_dist::term::{Atom, Pid, Term, Tuple};

/// A process to talk to: a pid, a locally registered name, or a name on a node.
///
/// ```
/// use kvnode::Dest;
/// let local: Dest = "my_server".into();
/// let remote: Dest = ("Elixir.MyApp.Server", "app@127.0.0.1").into();
/// assert_eq!(remote, Dest::Remote { name: "Elixir.MyApp.Server".into(), node: "app@127.0.0.1".into() });
/// assert_eq!(local, Dest::Name("my_server".into()));
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
}

impl Dest {
    /// The node this destination is on, given the local node's name.
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
            Dest::Name(_) => local,
            Dest::Remote { node, .. } => node,
        }
    }

    /// The destination as a term, as `erlang:send/2` takes it (`pid`, `name`, `{name, node}`).
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
