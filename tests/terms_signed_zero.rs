//! Maps holding both `0.0` and `-0.0` as keys: two different keys since OTP 27, one key to
//! eetf (its floats compare equal), so every path that decoded such a map stored one entry
//! fewer than it acknowledged (`put_new` of `%{0.0 => :pos, -0.0 => :neg}` read back as
//! `%{-0.0 => :pos}`). Each write path here stores one and reads it back with `===`, with
//! `--data-dir` and again after a SIGKILL restart.
//!
//! On OTP 25 and 26 (the host row) BEAM itself merges the two keys, so the checks hold
//! trivially there; the script asserts the distinction exists exactly when
//! `otp_release >= 27`, and the test is meant to be run on the sid row (OTP 29) too:
//! `bash /work/notes/rowtest.sh sid terms_signed_zero`.

mod common;

use common::*;

/// After [`TERM_CHECKS`]: binds `nz` (`-0.0`, built from its bytes so no compiler folds it),
/// `m` (the map) and the values `zoo` holding it in various places.
const PRELUDE: &str = r##"
nz = :erlang.binary_to_term(<<131, 70, 128, 0, 0, 0, 0, 0, 0, 0>>)
m = %{0.0 => :pos, nz => :neg}
# The feature under test: two keys from OTP 27 on, one before.
if otp >= 27, do: (2 = map_size(m)), else: (1 = map_size(m))
IO.puts("map_size #{map_size(m)}")
zoo = [
  m,
  [m, {m}],
  %{outer: m, list: [0.0, nz], tuple: {0.0, nz}},
  {:deep, [%{{0.0} => 1, {nz} => 2}]},
  [0.0, nz],
  {0.0, nz}
]
"##;

const WRITES: &str = r##"
# A byte-lane put first, then requests answered with what it stored.
:ok = GenServer.call(store, {:put, :first, m})
check.("first mismatch", GenServer.call(store, {:cas, :first, :nope, 1}), {:error, {:mismatch, m}})
:ok = GenServer.call(store, {:put, m, :first_key})
check.("keys", GenServer.call(store, :keys) |> Enum.sort(), Enum.sort([:first, m]))
:ok = GenServer.call(store, {:delete, m})
:ok = GenServer.call(store, {:delete, :first})
for {v, i} <- Enum.with_index(zoo) do
  :ok = GenServer.call(store, {:put, {:put, i}, v})
  check.("put #{i}", GenServer.call(store, {:get, {:put, i}}), v)
  GenServer.cast(store, {:put, {:cast, i}, v})
  check.("cast #{i}", GenServer.call(store, {:get, {:cast, i}}), v)
  :ok = GenServer.call(store, {:put_new, {:new, i}, v})
  check.("put_new #{i}", GenServer.call(store, {:get, {:new, i}}), v)
  check.("put_new exists #{i}", GenServer.call(store, {:put_new, {:new, i}, :other}), {:error, :exists})
  check.("after refusal #{i}", GenServer.call(store, {:get, {:new, i}}), v)
  # cas with the value as `new` (absent key, expected nil) and as `expected`.
  :ok = GenServer.call(store, {:cas, {:cas, i}, nil, v})
  check.("cas new #{i}", GenServer.call(store, {:get, {:cas, i}}), v)
  check.("cas mismatch #{i}", GenServer.call(store, {:cas, {:cas, i}, :nope, 1}), {:error, {:mismatch, v}})
  :ok = GenServer.call(store, {:cas, {:cas, i}, v, {:swapped, v}})
  check.("cas expected #{i}", GenServer.call(store, {:get, {:cas, i}}), {:swapped, v})
  # As a key (and inside one).
  :ok = GenServer.call(store, {:put, v, i})
  check.("key #{i}", GenServer.call(store, {:get, v}), i)
  :ok = GenServer.call(store, {:put_new, {:inkey, v}, i})
  check.("key put_new #{i}", GenServer.call(store, {:get, {:inkey, v}}), i)
end
if otp >= 27 do
  # 0.0 and -0.0 inside keys are different keys.
  :ok = GenServer.call(store, {:put, %{0.0 => 1}, :pos_key})
  nil = GenServer.call(store, {:get, %{nz => 1}})
  # A change a subscriber would need an event term for is refused, not stored changed.
  :ok = GenServer.call(store, {:subscribe, :all})
  {:error, :unrepresentable} = GenServer.call(store, {:put_new, :watched, m})
  nil = GenServer.call(store, {:get, :watched})
  :ok = GenServer.call(store, {:unsubscribe, :all})
  # Requests outside the byte lane are refused with a reply, not left unanswered.
  {:error, :unrepresentable} = GenServer.call(store, {:incr, m, 1})
  {:error, :unrepresentable} = GenServer.call(store, {:subscribe, m})
end
"##;

const READS: &str = r##"
for {v, i} <- Enum.with_index(zoo) do
  check.("recovered put #{i}", GenServer.call(store, {:get, {:put, i}}), v)
  check.("recovered cast #{i}", GenServer.call(store, {:get, {:cast, i}}), v)
  check.("recovered put_new #{i}", GenServer.call(store, {:get, {:new, i}}), v)
  check.("recovered cas #{i}", GenServer.call(store, {:get, {:cas, i}}), {:swapped, v})
  check.("recovered key #{i}", GenServer.call(store, {:get, v}), i)
  check.("recovered inkey #{i}", GenServer.call(store, {:get, {:inkey, v}}), i)
end
"##;

#[test]
fn maps_with_both_signed_zeros_survive_every_write_path_and_a_restart() {
    let (out, _) = kv_script_with_restart(
        "zero",
        &format!("{TERM_CHECKS}\n{PRELUDE}\n{WRITES}"),
        &format!("{TERM_CHECKS}\n{PRELUDE}\n{READS}"),
    );
    eprintln!("{out}");
}

#[test]
fn maps_with_both_signed_zeros_in_memory() {
    // Without --data-dir, `put` and `get` take the byte view and the rest the decoding path.
    let kv = KvNode::fresh("kv_zero_mem");
    let out = kv.script(
        "zero_mem",
        &format!("{TERM_CHECKS}\n{PRELUDE}\n{WRITES}\n{READS}"),
    );
    eprintln!("{out}");
}
