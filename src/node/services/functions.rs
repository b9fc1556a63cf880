//! The one table of functions a peer can run on kvnode, by module, function and arity.
//!
//! Every way a peer asks a node to run a function goes through [`Functions::apply`]:
//! `:rpc.call` / `:erpc.call` / `:rpc.multicall` (SPAWN_REQUEST of `erpc:execute_call/4`),
//! `:rpc.cast` (`erpc:execute_cast/3`), `:erlang.spawn/4`, `spawn_monitor/4` and `Node.spawn/4`
//! (SPAWN_REQUEST of the function itself, see [`super::rpc`]), and the classic `rex` protocol
//! (`:rpc.block_call`, `erl_call -a`, `ei_rpc`, Jinterface `sendRPC`, see [`super::rex`]). So
//! a function answers the same through all of them, and one that is not here fails the same
//! way everywhere: as an undefined function does on a BEAM node (`undef`).
//!
//! The node's own functions (`erlang:node/0` and friends) are registered by
//! [`super::builtins`], the stopping ones (`init:stop/0`, `erlang:halt/0,1`) by
//! [`super::control`], and applications register theirs (the KV server's API under the
//! `--process-name` module, [`super::kv_api`]) when they start.
//!
//! kvnode runs no code it is sent: nothing outside this table runs, funs are only data.

use crate::node::Node;
use erl_dist::term::{Atom, FixInteger, List, Map, Term, Tuple};
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// How a function ended, in the terms of an Erlang process: the four ways `erpc` tells apart
/// (a registered function returns one, see [`Node::register_function`]).
///
/// What the caller sees for each:
///
/// | outcome | `:erpc.call` | `:rpc.call` / `rex` |
/// |---|---|---|
/// | `Return(v)` | `v` | `v` |
/// | `Throw(v)` | raises (throws) `v` | `v` |
/// | `Error { reason, stack }` | raises the error `{:exception, reason, stack}` | `{:badrpc, {:EXIT, {reason, stack}}}` |
/// | `Exit(r)` | exits with `{:exception, r}` | `{:badrpc, {:EXIT, r}}` |
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Outcome {
    /// Returned a value.
    Return(Term),
    /// `throw(Term)`.
    Throw(Term),
    /// `error(Reason)` with its (already trimmed) stack, e.g. `[{M, F, Args, []}]`.
    Error {
        /// The error reason (`undef`, `badarg`, ...).
        reason: Term,
        /// The stack trace, as `erpc` trims it.
        stack: Term,
    },
    /// `exit(Reason)`.
    Exit(Term),
    /// The node halts: no answer is sent (the caller sees the connection close, as with a
    /// BEAM node that halts). Only the node's own `erlang:halt` answers this.
    #[doc(hidden)]
    Halt,
}

/// A finished call: its outcome, and what to do once the caller's answer is on its way
/// (used by `init:stop/0`, which answers `ok` *before* the node stops).
pub struct Finished {
    /// How the function ended.
    pub outcome: Outcome,
    after: Option<Box<dyn FnOnce() + Send>>,
}

impl std::fmt::Debug for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Finished")
            .field("outcome", &self.outcome)
            .field("after", &self.after.is_some())
            .finish()
    }
}

impl From<Outcome> for Finished {
    fn from(outcome: Outcome) -> Self {
        Finished {
            outcome,
            after: None,
        }
    }
}

impl Finished {
    /// An outcome followed by `after`, which the caller runs once its answer is queued.
    pub fn then(outcome: Outcome, after: impl FnOnce() + Send + 'static) -> Self {
        Finished {
            outcome,
            after: Some(Box::new(after)),
        }
    }

    /// Runs what was to happen after the answer (call it once the answer is sent).
    pub fn finish(self) {
        if let Some(after) = self.after {
            after();
        }
    }
}

/// A registered function: gets the node and the arguments (exactly as many as its arity).
pub type Function = Arc<dyn Fn(Node, Vec<Term>) -> BoxFuture<'static, Finished> + Send + Sync>;

type Key = (String, String, usize);

/// The table. Cheap to read concurrently; registration is rare (at start).
#[derive(Default)]
pub struct Functions {
    table: RwLock<HashMap<Key, Function>>,
}

impl Functions {
    /// Registers (or replaces) `module:function/arity`.
    pub fn register(&self, module: &str, function: &str, arity: usize, f: Function) {
        let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
        table.insert((module.to_owned(), function.to_owned(), arity), f);
    }

    /// Registers a function that answers at once.
    pub fn register_sync(
        &self,
        module: &str,
        function: &str,
        arity: usize,
        f: impl Fn(&Node, &[Term]) -> Finished + Send + Sync + 'static,
    ) {
        let f = Arc::new(f);
        self.register(
            module,
            function,
            arity,
            Arc::new(move |node: Node, args: Vec<Term>| {
                let done = f(&node, &args);
                Box::pin(async move { done }) as BoxFuture<'static, Finished>
            }),
        );
    }

    fn lookup(&self, module: &str, function: &str, arity: usize) -> Option<Function> {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        table
            .get(&(module.to_owned(), function.to_owned(), arity))
            .cloned()
    }
}

/// Runs `apply(m, f, args)` on `node` as `erlang:apply/3` would: `undef` for anything not in
/// the table, `badarg` when `m` or `f` is not an atom or `args` not a proper list.
pub async fn apply(node: &Node, m: &Term, f: &Term, args: Term) -> Finished {
    let (Term::Atom(module), Term::Atom(function), Some(argv)) = (m, f, args_vec(&args)) else {
        return error(
            atom("badarg"),
            stack_erlang("apply", vec![m.clone(), f.clone(), args]),
        )
        .into();
    };
    match node
        .functions()
        .lookup(&module.name, &function.name, argv.len())
    {
        Some(fun) => fun(node.clone(), argv).await,
        None => {
            tracing::debug!(
                module = %excerpt(&module.name),
                function = %excerpt(&function.name),
                arity = argv.len(),
                "call of a function kvnode does not have: undef"
            );
            undef(m, f, args).into()
        }
    }
}

/// An atom name cut to a few dozen characters for logs.
pub fn excerpt(s: &str) -> String {
    const MAX: usize = 48;
    if s.chars().count() <= MAX {
        s.escape_debug().to_string()
    } else {
        let cut: String = s.chars().take(MAX).collect();
        format!("{}...", cut.escape_debug())
    }
}

/// The elements of a proper list (a charlist arrives as a byte string).
pub fn args_vec(args: &Term) -> Option<Vec<Term>> {
    match args {
        Term::List(l) => Some(l.elements.clone()),
        Term::ByteList(b) => Some(
            b.bytes
                .iter()
                .map(|&b| FixInteger::from(i32::from(b)).into())
                .collect(),
        ),
        _ => None,
    }
}

/// `undef` for `m:f(args)`, as a BEAM node raises it: `{undef, [{M, F, Args, []}]}`.
pub fn undef(m: &Term, f: &Term, args: Term) -> Outcome {
    error(
        atom("undef"),
        List::from(vec![tuple(vec![
            m.clone(),
            f.clone(),
            args,
            List::nil().into(),
        ])])
        .into(),
    )
}

/// An error outcome.
pub fn error(reason: Term, stack: Term) -> Outcome {
    Outcome::Error { reason, stack }
}

/// The stack of a failed `erlang` BIF as OTP 24+ reports it (trimmed by `erpc`):
/// `[{erlang, F, Args, [{error_info, #{module => erl_erts_errors}}]}]`.
pub fn stack_erlang(function: &str, args: Vec<Term>) -> Term {
    let info: HashMap<Term, Term> = [(atom("module"), atom("erl_erts_errors"))]
        .into_iter()
        .collect();
    let location = List::from(vec![tuple(vec![
        atom("error_info"),
        Map::from(info).into(),
    ])]);
    List::from(vec![tuple(vec![
        atom("erlang"),
        atom(function),
        List::from(args).into(),
        location.into(),
    ])])
    .into()
}

/// `badarg` from the `erlang` BIF `function` called with `args`, as a BEAM node raises it.
pub fn badarg(function: &str, args: &[Term]) -> Finished {
    error(atom("badarg"), stack_erlang(function, args.to_vec())).into()
}

/// `{ok}`-style helpers.
pub fn ret(t: Term) -> Finished {
    Outcome::Return(t).into()
}

/// An atom term.
pub fn atom(s: &str) -> Term {
    Atom::from(s).into()
}

/// A tuple term.
pub fn tuple(elements: Vec<Term>) -> Term {
    Tuple::from(elements).into()
}

impl Node {
    /// Makes `module:function/arity` callable by peers, as if a BEAM node had that module
    /// loaded: `:rpc.call`, `:erpc.call`, `:rpc.cast`, `Node.spawn(node, m, f, a)`, and the
    /// classic `rex` clients (`erl_call -a`, Jinterface `sendRPC`, ei) all reach it, and get
    /// the same answers for its [`Outcome`]. Registering an existing name replaces it. A call
    /// with another arity, or of a name nobody registered, fails as on BEAM (`undef`).
    ///
    /// `f` runs as a task on the node's runtime, with the node and exactly `arity` arguments;
    /// the number of calls running at once is bounded (the node stops reading from peers that
    /// start more).
    ///
    /// ```no_run
    /// use kvnode::Outcome;
    /// use kvnode::term::{FixInteger, Term};
    /// # fn demo(node: &kvnode::Node) {
    /// // From Elixir: :erpc.call(:"app@127.0.0.1", :calc, :add, [1, 2]) returns 3.
    /// node.register_function("calc", "add", 2, |_node, args| async move {
    ///     match (&args[0], &args[1]) {
    ///         (Term::FixInteger(a), Term::FixInteger(b)) => match a.value.checked_add(b.value) {
    ///             Some(sum) => Outcome::Return(FixInteger::from(sum).into()),
    ///             None => Outcome::Exit(kvnode::term::Atom::from("overflow").into()),
    ///         },
    ///         _ => Outcome::Error {
    ///             reason: kvnode::term::Atom::from("badarg").into(),
    ///             stack: kvnode::term::List::nil().into(),
    ///         },
    ///     }
    /// });
    /// # }
    /// ```
    pub fn register_function<F, Fut>(&self, module: &str, function: &str, arity: usize, f: F)
    where
        F: Fn(Node, Vec<Term>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Outcome> + Send + 'static,
    {
        use futures::FutureExt;
        self.functions().register(
            module,
            function,
            arity,
            Arc::new(move |node, args| {
                let run = f(node, args);
                async move {
                    match run.await {
                        // Only the node's own `erlang:halt` may end without an answer; from
                        // an app's function it would leave the caller waiting forever.
                        Outcome::Halt => Finished::from(Outcome::Exit(atom("halt"))),
                        outcome => Finished::from(outcome),
                    }
                }
                .boxed()
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_of_a_charlist_are_integers() {
        let bl: Term = eetf::ByteList::from(vec![1u8, 2]).into();
        let v = args_vec(&bl).expect("list");
        assert_eq!(v.len(), 2);
        assert_eq!(v[0], FixInteger::from(1).into());
        assert!(args_vec(&atom("x")).is_none());
        assert_eq!(args_vec(&List::nil().into()).map(|v| v.len()), Some(0));
    }

    #[test]
    fn excerpts_are_bounded() {
        let long = "a".repeat(300);
        assert!(excerpt(&long).len() < 60);
        assert_eq!(excerpt("ab\n"), "ab\\n");
    }
}
