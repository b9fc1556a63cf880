//! The fast path belongs to the core: a user-written GenServer (not the KV store) hosted on
//! an in-process node receives calls and casts from a real Elixir node as bytes
//! (`Request::bytes`), and its replies (a term, pre-encoded bytes, or a later reply) reach
//! the caller by ALIAS_SEND (an OTP 24+ alias tag, either of `gen:reply`'s two alias shapes)
//! or by SEND (a plain reference tag).

mod common;

use common::{elixir_raw, free_port, unique};
use kvnode::{CallResult, Caller, Ctx, GenServer, NodeBuilder, Request};
use std::time::Duration;

use erl_dist::term::{Atom, Term, Tuple};

fn atom(name: &str) -> Term {
    Atom::from(name).into()
}

fn tuple(v: Vec<Term>) -> Term {
    Tuple::from(v).into()
}

fn flag(b: bool) -> Term {
    atom(if b { "true" } else { "false" })
}

/// Answers `{:echo, x}` with `{:echo, as_bytes, x}`, `{:later, x}` from another thread,
/// `{:encoded, x}` with `x` as the very bytes it came in, and `:last_cast` with
/// `{as_bytes, x}` of the last `{:store, x}` cast. `as_bytes`: whether the request arrived
/// undecoded.
#[derive(Default)]
struct Probe {
    last_cast: Option<(bool, Term)>,
    encoded: Vec<u8>,
}

impl GenServer for Probe {
    fn handle_call(
        &mut self,
        ctx: &mut Ctx,
        from: &Caller,
        request: Request<'_>,
    ) -> CallResult<'_> {
        let as_bytes = request.bytes().is_some();
        // `{:encoded, x}`: after the tuple's 2-byte header, the atom, then `x`.
        let x_bytes = request.bytes().and_then(|b| {
            let rest = b.get(2..)?;
            Some(rest.get(request.term_len(rest)?..)?.to_vec())
        });
        let Ok(Term::Tuple(t)) = request.decode() else {
            return CallResult::Reply(match self.last_cast.clone() {
                Some((b, x)) => tuple(vec![flag(b), x]),
                None => atom("none"),
            });
        };
        match t.elements.as_slice() {
            [Term::Atom(a), x] if a.name == "echo" => {
                CallResult::Reply(tuple(vec![atom("echo"), flag(as_bytes), x.clone()]))
            }
            [Term::Atom(a), x] if a.name == "later" => {
                let (replier, from) = (ctx.replier(), from.clone());
                let reply = tuple(vec![atom("later"), flag(as_bytes), x.clone()]);
                std::thread::spawn(move || replier.reply(&from, reply));
                CallResult::NoReply
            }
            [Term::Atom(a), _] if a.name == "encoded" => match x_bytes {
                Some(x) => {
                    self.encoded = x;
                    CallResult::Encoded(&self.encoded)
                }
                None => CallResult::Reply(atom("not_bytes")),
            },
            _ => CallResult::Reply(atom("unknown")),
        }
    }

    fn handle_cast(&mut self, _ctx: &mut Ctx, request: Request<'_>) {
        let as_bytes = request.bytes().is_some();
        if let Ok(Term::Tuple(t)) = request.decode()
            && let [Term::Atom(a), x] = t.elements.as_slice()
            && a.name == "store"
        {
            self.last_cast = Some((as_bytes, x.clone()));
        }
    }
}

#[test]
fn a_user_server_gets_requests_as_bytes_and_its_replies_reach_the_caller() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let epmd_port = free_port();
    let name = format!("{}@127.0.0.1", unique("fast"));
    let node = rt
        .block_on(
            NodeBuilder::new(&name)
                .cookie("fastcookie")
                .epmd_port(epmd_port)
                .bind([127, 0, 0, 1].into())
                .start(),
        )
        .expect("node starts");
    node.spawn_server(Some("Probe"), Probe::default())
        .expect("Probe spawns");

    let script = r#"
defmodule PlainTag do
  def call(dest, request) do
    ref = make_ref()
    send(dest, {:"$gen_call", {self(), ref}, request})
    receive do
      {^ref, reply} -> reply
    after
      10_000 -> raise "no reply to a plain-tag call"
    end
  end
end

kv = String.to_atom(System.fetch_env!("KV_NODE"))
probe = {:Probe, kv}
true = Node.connect(kv)
odd = %{:a => 1.5, "b" => [-0.0, {1, :x}], 3 => <<1, 2, 3::4>>}
big = String.duplicate("v", 100_000)
for x <- [1, odd, big, self()] do
  {:echo, true, ^x} = GenServer.call(probe, {:echo, x})
  {:later, true, ^x} = GenServer.call(probe, {:later, x})
  ^x = GenServer.call(probe, {:encoded, x})
end
# A pre-OTP-24 caller: a plain reference tag, so the reply comes by SEND to our pid.
{:echo, true, ^odd} = PlainTag.call(probe, {:echo, odd})
# gen:reply's second alias shape, [[:alias | ref] | _], is answered by ALIAS_SEND too: a
# reply to an alias already given up is dropped, so it is not in the mailbox once the reply
# to a later call (same server, same connection, so sent after it) is here.
gone = :erlang.alias()
gone_tag = [[:alias | gone] | :label]
true = :erlang.unalias(gone)
send(probe, {:"$gen_call", {self(), gone_tag}, {:echo, 1}})
{:echo, true, 2} = PlainTag.call(probe, {:echo, 2})
receive do
  {^gone_tag, reply} -> raise "a reply to an inactive alias reached the mailbox: #{inspect(reply)}"
after
  0 -> :ok
end
live = :erlang.alias()
live_tag = [[:alias | live] | :label]
send(probe, {:"$gen_call", {self(), live_tag}, {:echo, 3}})
receive do
  {^live_tag, {:echo, true, 3}} -> :ok
after
  10_000 -> raise "no reply to a [[:alias | ref] | _] tag"
end
GenServer.cast(probe, {:store, odd})
{true, ^odd} = GenServer.call(probe, :last_cast)
IO.puts("FAST_PATH_OK")
"#;
    let out = elixir_raw(
        &name,
        epmd_port,
        &unique("fastcli"),
        "fastcookie",
        script,
        Duration::from_secs(120),
    );
    rt.block_on(node.stop());
    assert!(
        out.status.success() && out.stdout.contains("FAST_PATH_OK"),
        "script failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
}
