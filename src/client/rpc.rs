//! `kvnode rpc NODE MOD FUN ARGS` and `kvnode ping NODE`.
//!
//! rpc is done as `erpc:call/5` does it when the peer negotiated DFLAG_SPAWN: a spawn request
//! of `erpc:execute_call(Ref, M, F, A)` with a monitor, whose `DOWN` reason carries the
//! result (`{Ref, return, V}`, `{Ref, throw, T}`, `{Ref, exit, R}`, `{Ref, error, R, Stack}`).
//! Peers without spawn support get `rpc:call`'s older way: a GenServer call to their `rex`
//! with `{call, M, F, A, user}`, answered with the value or `{badrpc, Reason}`.
//!
//! The client's process is the spawned function's group leader: its output (`io:format`,
//! `IO.puts`) arrives as io requests, served by [`super::io_server`]: printed on stdout
//! before the result, exactly as the BEAM prints it, and always answered, so the function
//! never waits for an io reply.

use super::connect::{Client, connect};
use super::io_server::{IoOutput, IoServer};
use super::terms;
use super::{Failure, Status};
use crate::Received;
use crate::cli::ClientOpts;
use crate::node::process::spawn::{SpawnEvent, SpawnRequestError};
use erl_dist::term::{Atom, List, Reference, Term, Tuple};

fn atom(name: &str) -> Term {
    Atom::from(name).into()
}

fn tuple(elements: Vec<Term>) -> Term {
    Tuple::from(elements).into()
}

fn is_atom(term: &Term, name: &str) -> bool {
    matches!(term, Term::Atom(a) if a.name == name)
}

/// `kvnode rpc`.
pub async fn rpc(
    opts: &ClientOpts,
    node: &str,
    module: &str,
    function: &str,
    args: &str,
    use_rex: bool,
) -> Result<(), Failure> {
    let syntax = terms::syntax_of(opts);
    let module = terms::atom_name(module, syntax);
    let function = terms::atom_name(
        function.trim_start_matches(':'),
        crate::syntax::Syntax::Erlang,
    );
    let args = match terms::parse(args, syntax)? {
        Term::List(list) => list.elements,
        other => {
            return Err(Failure::new(
                Status::Usage,
                format!(
                    "ARGS must be a list of the arguments (e.g. [1, two]), got {}",
                    terms::render_error(&other, opts)
                ),
            ));
        }
    };
    let client = connect(opts, node).await?;
    // The function's output goes to stdout in order with the result; with --json stdout is
    // one JSON document, so it goes to stderr.
    let output = if opts.json {
        IoOutput::Stderr
    } else {
        IoOutput::Stdout
    };
    let result = call_answer(&client, &module, &function, args, opts, use_rex, output).await;
    client.stop().await;
    match result? {
        Answer::Term(value) => println!("{}", terms::render(&value, opts)),
        // A result no decoded term can hold (an OTP 29 native record, a map with both 0.0
        // and -0.0 as keys): printed from its bytes.
        Answer::Bytes(value) => match terms::render_bytes(&value, opts) {
            Ok(text) => println!("{text}"),
            Err(error) => {
                return Err(Failure::new(
                    Status::Remote,
                    format!(
                        "the result is a term kvnode cannot print ({error}); in external format {}",
                        crate::etf::excerpt(&value)
                    ),
                ));
            }
        },
    }
    Ok(())
}

/// What an rpc returned: a term, or (when no decoded term can hold it) its external format,
/// version byte first.
pub(crate) enum Answer {
    Term(Term),
    Bytes(Vec<u8>),
}

/// [`call_answer`] for callers that need a term (`top`): a result only bytes can hold is an
/// error (exit status 5). The function's output goes to stderr.
pub(crate) async fn call(
    client: &Client,
    module: &str,
    function: &str,
    args: Vec<Term>,
    opts: &ClientOpts,
    use_rex: bool,
) -> Result<Term, Failure> {
    match call_answer(
        client,
        module,
        function,
        args,
        opts,
        use_rex,
        IoOutput::Stderr,
    )
    .await?
    {
        Answer::Term(t) => Ok(t),
        Answer::Bytes(bytes) => Err(Failure::new(
            Status::Remote,
            format!(
                "the result holds a term kvnode cannot hold (an OTP 29 native record, or a map with both 0.0 and -0.0 as keys): {}",
                terms::render_error_bytes(&bytes, opts)
            ),
        )),
    }
}

/// Calls `module:function(args)` on the client's peer (erpc, or `rex` when asked or when
/// the peer has no spawn support); used by `rpc` and `top`, and by the io server to run
/// `io_lib:format` for an `io:format`. The client's process is the function's group leader:
/// its io requests are served with `output` ([`IoServer`]).
pub(crate) async fn call_answer(
    client: &Client,
    module: &str,
    function: &str,
    args: Vec<Term>,
    opts: &ClientOpts,
    use_rex: bool,
    output: IoOutput,
) -> Result<Answer, Failure> {
    let me = client
        .node
        .process(None)
        .map_err(|e| Failure::new(Status::Usage, format!("cannot start a process: {e}")))?;
    if use_rex {
        return rex(client, &me, module, function, args, opts).await;
    }
    let tag = client.node.new_ref();
    let erpc_args = vec![
        tag.clone().into(),
        atom(module),
        atom(function),
        List::from(args.clone()).into(),
    ];
    let mut request = match me.spawn_request(&client.peer, "erpc", "execute_call", erpc_args) {
        Ok(request) => request,
        Err(SpawnRequestError::NotSupported(_)) => {
            return rex(client, &me, module, function, args, opts).await;
        }
        Err(SpawnRequestError::NotConnected(node)) => {
            return Err(Failure::new(
                Status::Unreachable,
                format!("{node}: the connection went down"),
            ));
        }
    };
    let deadline = client.deadline;
    let mut io = IoServer::new(client, opts, output);
    loop {
        tokio::select! {
            event = request.next() => match event {
                SpawnEvent::Spawned { monitored: true, .. } => {}
                SpawnEvent::Spawned { monitored: false, .. } => {
                    return Err(Failure::new(
                        Status::Remote,
                        "remote error: the node spawned erpc:execute_call/4 without the monitor asked for",
                    ));
                }
                SpawnEvent::Refused(reason) => {
                    return Err(Failure::new(
                        Status::Remote,
                        format!("remote error: the node cannot spawn erpc:execute_call/4: {}", terms::render_error(&reason, opts)),
                    ));
                }
                SpawnEvent::Down(reason) => return erpc_result(&tag, reason, client, opts),
                SpawnEvent::NoConnection => {
                    return Err(Failure::new(
                        Status::Unreachable,
                        format!("{}: the connection went down during the call (noconnection)", client.peer),
                    ));
                }
            },
            received = me.recv() => {
                if let Received::Message(message) = received {
                    io.message(&me, message).await;
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                return Err(client.timed_out(&format!("rpc {module}:{function} on {}", client.peer)));
            }
        }
    }
}

/// The result of `erpc:execute_call/4` from its `DOWN` reason (as erpc.erl's `result/4`).
fn erpc_result(
    tag: &Reference,
    reason: Term,
    client: &Client,
    opts: &ClientOpts,
) -> Result<Answer, Failure> {
    let remote = |what: String| Failure::new(Status::Remote, format!("remote error: {what}"));
    let ours = |t: &Term| matches!(t, Term::Reference(r) if **r == *tag);
    if is_atom(&reason, "noconnection") {
        return Err(Failure::new(
            Status::Unreachable,
            format!("{}: noconnection", client.peer),
        ));
    }
    if let Some(bytes) = crate::node::unrepresentable::unwrapped_reason(&reason) {
        // The result (or the exception) holds a term no decoded term can hold: read from
        // the bytes of the reason.
        return erpc_bytes(tag, bytes, opts);
    }
    if let Term::Tuple(t) = &reason {
        match t.elements.as_slice() {
            [r, kind, value] if ours(r) && is_atom(kind, "return") => {
                return Ok(Answer::Term(value.clone()));
            }
            [r, kind, value] if ours(r) && is_atom(kind, "throw") => {
                return Err(remote(format!(
                    "throw: {}",
                    terms::render_error(value, opts)
                )));
            }
            [r, kind, value] if ours(r) && is_atom(kind, "exit") => {
                return Err(remote(format!(
                    "exit: {}",
                    terms::render_error(value, opts)
                )));
            }
            [r, kind, value] if ours(r) && is_atom(kind, "error") => {
                return Err(remote(format!(
                    "error: {}",
                    terms::render_error(value, opts)
                )));
            }
            [r, kind, value, stack] if ours(r) && is_atom(kind, "error") => {
                return Err(remote(format!(
                    "error: {}\n  stack: {}",
                    terms::render_error(value, opts),
                    terms::render_error(stack, opts)
                )));
            }
            _ => {}
        }
    }
    // The process died some other way (killed, or not erpc's execute_call).
    Err(remote(format!(
        "exit signal: {}",
        terms::render_error(&reason, opts)
    )))
}

/// [`erpc_result`] for a `DOWN` reason given as external format (version byte first):
/// `{Ref, Kind, Value}` or `{Ref, error, Reason, Stack}` read from the bytes, the value
/// returned as bytes.
fn erpc_bytes(tag: &Reference, reason: &[u8], opts: &ClientOpts) -> Result<Answer, Failure> {
    let remote = |what: String| Failure::new(Status::Remote, format!("remote error: {what}"));
    let limits = crate::etf::Limits {
        max_terms: usize::MAX,
        ..crate::etf::Limits::default()
    };
    let versioned = |part: &[u8]| [&[crate::etf::VERSION_MAGIC][..], part].concat();
    // The parts of a small tuple: each as versioned bytes.
    let parts = || -> Option<Vec<Vec<u8>>> {
        let body = reason.strip_prefix(&[crate::etf::VERSION_MAGIC])?;
        let [crate::etf::SMALL_TUPLE_EXT, arity, ref rest @ ..] = *body else {
            return None;
        };
        let mut at = 0;
        let mut out = Vec::new();
        for _ in 0..arity {
            let len = crate::etf::validate_term(rest.get(at..)?, &limits).ok()?;
            out.push(versioned(rest.get(at..at + len)?));
            at += len;
        }
        (at == rest.len()).then_some(out)
    };
    let ours = |part: &[u8]| matches!(crate::etf::decode_exact(part, &limits), Ok(Term::Reference(r)) if *r == *tag);
    let kind = |part: &[u8]| match crate::etf::decode_exact(part, &limits) {
        Ok(Term::Atom(a)) => Some(a.name),
        _ => None,
    };
    let shown = |part: &[u8]| terms::render_error_bytes(part, opts);
    if let Some(parts) = parts()
        && let [first, k, rest @ ..] = &parts[..]
        && ours(first)
    {
        match (kind(k).as_deref(), rest) {
            (Some("return"), [value]) => return Ok(Answer::Bytes(value.clone())),
            (Some(k @ ("throw" | "exit" | "error")), [value]) => {
                return Err(remote(format!("{k}: {}", shown(value))));
            }
            (Some("error"), [value, stack]) => {
                return Err(remote(format!(
                    "error: {}\n  stack: {}",
                    shown(value),
                    shown(stack)
                )));
            }
            _ => {}
        }
    }
    Err(remote(format!("exit signal: {}", shown(reason))))
}

/// A `rex` answer no decoded term can hold: `{badrpc, Reason}` is an error (shown from the
/// bytes), anything else the result.
fn rex_bytes(reply: Vec<u8>, opts: &ClientOpts) -> Result<Answer, Failure> {
    let badrpc = [
        &[crate::etf::VERSION_MAGIC, crate::etf::SMALL_TUPLE_EXT, 2][..],
        &[crate::etf::SMALL_ATOM_UTF8_EXT, 6][..],
        b"badrpc",
    ]
    .concat();
    match reply.strip_prefix(badrpc.as_slice()) {
        Some(reason) => Err(Failure::new(
            Status::Remote,
            format!(
                "remote error: badrpc: {}",
                terms::render_error_bytes(
                    &[&[crate::etf::VERSION_MAGIC][..], reason].concat(),
                    opts
                )
            ),
        )),
        None => Ok(Answer::Bytes(reply)),
    }
}

/// `rpc:call`'s way: `{call, M, F, A, user}` to the peer's `rex`.
async fn rex(
    client: &Client,
    me: &crate::Process,
    module: &str,
    function: &str,
    args: Vec<Term>,
    opts: &ClientOpts,
) -> Result<Answer, Failure> {
    let request = tuple(vec![
        atom("call"),
        atom(module),
        atom(function),
        List::from(args).into(),
        atom("user"),
    ]);
    let dest = ("rex", client.peer.as_str());
    match me.call(dest, request, client.remaining()).await {
        Ok(Term::Tuple(t)) if t.elements.len() == 2 && is_atom(&t.elements[0], "badrpc") => {
            let reply = Term::Tuple(t);
            Err(Failure::new(
                Status::Remote,
                format!("remote error: {}", terms::render_error(&reply, opts)),
            ))
        }
        Ok(value) => Ok(Answer::Term(value)),
        // The value, or a `{badrpc, Reason}` holding such a term: shown from the bytes.
        Err(crate::CallError::Unrepresentable { reply, .. }) => rex_bytes(reply, opts),
        Err(error) => Err(super::call::call_failure(&error, client, opts)),
    }
}

/// `kvnode ping NODE`: `pong` (0), or `pang` with the status of why (1, 3 or 4).
pub async fn ping(opts: &ClientOpts, node: &str) -> Result<(), Failure> {
    let client = match connect(opts, node).await {
        Ok(client) => client,
        Err(failure) if failure.status == Status::Usage => return Err(failure),
        Err(failure) => {
            println!("pang");
            return Err(failure);
        }
    };
    let own = client.node.name().name.clone();
    let answer = match client.node.process(None) {
        Ok(me) => {
            me.call(
                ("net_kernel", client.peer.as_str()),
                tuple(vec![atom("is_auth"), atom(&own)]),
                client.remaining(),
            )
            .await
        }
        Err(e) => {
            client.stop().await;
            return Err(Failure::new(
                Status::Usage,
                format!("cannot start a process: {e}"),
            ));
        }
    };
    let result = match answer {
        Ok(reply) if is_atom(&reply, "yes") => {
            println!("pong");
            Ok(())
        }
        Ok(other) => {
            println!("pang");
            Err(Failure::new(
                Status::Unreachable,
                format!(
                    "{node}: net_kernel answered is_auth with {}",
                    terms::render_error(&other, opts)
                ),
            ))
        }
        Err(error) => {
            println!("pang");
            Err(super::call::call_failure(&error, &client, opts))
        }
    };
    client.stop().await;
    result
}
