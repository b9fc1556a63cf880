//! Lists of small integers with a negative one (`[-1, 104]`): eetf writes such a list as a
//! string and truncates `-1` to `255`, so every path where kvnode decodes a peer's term and
//! writes it again must go through the corrected encoder (`kvnode::etf::encode`). Each path
//! here returned `[255, 104]` before the fix: the decoding path's stored value, a `cas`
//! mismatch reply, a subscriber's event, `:keys`, rpc, and the values recovered from
//! `--data-dir` after SIGKILL.

mod common;

use common::*;

/// The values and keys every check uses, as Elixir code binding `zoo`.
const ZOO: &str = r#"
zoo = [
  [-1, 104],
  [-128, 0, 255],
  [-5],
  {[-1, 2]},
  %{a: [-3, 4]},
  %{[-1] => [-2]},
  [[-1], [1, -1]],
  [-1 | [2]],
  {:nested, [%{[-7] => {[-8, 8]}}]}
]
"#;

#[test]
fn negative_small_integer_lists_survive_every_path_and_a_restart() {
    let tmp = TempDataDir::new("kvnode_neglists");
    let dir = tmp.0.clone();
    let dir_arg = dir.to_str().expect("utf-8 path").to_owned();
    let alive = unique("kv_neg");
    let cookie = unique("cookie");
    let epmd = free_port();
    {
        let mut kv = KvNode::start_with(&alive, &cookie, epmd, &["--data-dir", &dir_arg]);
        kv.script(
            "neg_w",
            &format!(
                r##"{ZOO}
check = fn label, got, want ->
  if got !== want, do: raise "#{{label}}: got #{{inspect(got)}}, want #{{inspect(want)}}"
end
:ok = GenServer.call(store, {{:subscribe, :all}})
for {{v, i}} <- Enum.with_index(zoo) do
  # The decoding path: put_new is decoded into terms and stored from them.
  :ok = GenServer.call(store, {{:put_new, {{:new, i}}, v}})
  check.("put_new get #{{i}}", GenServer.call(store, {{:get, {{:new, i}}}}), v)
  receive do
    {{:kv_event, {{:new, ^i}}, {{:put, got}}}} -> check.("event #{{i}}", got, v)
  after 10_000 -> raise "no event for #{{i}}"
  end
  # A refused write answers with the stored value.
  check.("cas #{{i}}", GenServer.call(store, {{:cas, {{:new, i}}, :nope, 1}}), {{:error, {{:mismatch, v}}}})
  check.("put_new exists #{{i}}", GenServer.call(store, {{:put_new, {{:new, i}}, :other}}), {{:error, :exists}})
  check.("after refusal #{{i}}", GenServer.call(store, {{:get, {{:new, i}}}}), v)
  # As a key, through the byte lane.
  :ok = GenServer.call(store, {{:put, v, i}})
  check.("key #{{i}}", GenServer.call(store, {{:get, v}}), i)
  check.("rpc #{{i}}", :rpc.call(kv, DistributedExample.KVStore, :get, [{{:new, i}}]), v)
end
keys = GenServer.call(store, :keys)
for v <- zoo, do: (if v not in keys, do: raise "key #{{inspect(v)}} missing from #{{inspect(keys)}}")
"##
            ),
        );
        kv.guard.child.kill().expect("SIGKILL kvnode");
        let _ = kv.guard.child.wait();
    }
    let kv = KvNode::start_with(&alive, &cookie, epmd, &["--data-dir", &dir_arg]);
    kv.script(
        "neg_r",
        &format!(
            r##"{ZOO}
for {{v, i}} <- Enum.with_index(zoo) do
  got = GenServer.call(store, {{:get, {{:new, i}}}})
  if got !== v, do: raise "recovered value #{{i}}: got #{{inspect(got)}}, want #{{inspect(v)}}"
  got = GenServer.call(store, {{:get, v}})
  if got !== i, do: raise "recovered key #{{i}}: got #{{inspect(got)}}"
end
n = 2 * length(zoo)
^n = GenServer.call(store, :size)
"##
        ),
    );
}
