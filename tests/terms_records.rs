//! OTP 29 native records (`RECORD_EXT`, tag 67) as values and keys. eetf has no term for
//! them: before, the validator refused the tag and the peer's connection was closed. Now
//! kvnode validates, measures, stores, canonicalises (OTP 29 `=:=`: module, name, exported
//! flag, field names in order and values) and returns them as the bytes they came as.
//!
//! On OTP 25 and 27 the feature does not exist: the script asserts that (no `:records`
//! module) and stops. Run it on the sid row (OTP 29):
//! `bash /work/notes/rowtest.sh sid terms_records`.

mod common;

use common::*;

/// After [`TERM_CHECKS`]: binds `has_records` (exactly on OTP 29 and later).
const PRELUDE: &str = r##"
has_records = Code.ensure_loaded?(:records) and function_exported?(:records, :create, 4)
if has_records != (otp >= 29), do: raise("native records on OTP #{otp}: #{has_records}")
"##;

const WRITES: &str = r##"
if has_records do
  for {v, i} <- Enum.with_index(zoo) do
    :ok = GenServer.call(store, {:put, {:put, i}, v})
    check.("put #{i}", GenServer.call(store, {:get, {:put, i}}), v)
    GenServer.cast(store, {:put, {:cast, i}, v})
    check.("cast #{i}", GenServer.call(store, {:get, {:cast, i}}), v)
    :ok = GenServer.call(store, {:put_new, {:new, i}, v})
    check.("put_new #{i}", GenServer.call(store, {:get, {:new, i}}), v)
    check.("exists #{i}", GenServer.call(store, {:put_new, {:new, i}, 0}), {:error, :exists})
    :ok = GenServer.call(store, {:cas, {:cas, i}, nil, v})
    check.("cas mismatch #{i}", GenServer.call(store, {:cas, {:cas, i}, :nope, 1}), {:error, {:mismatch, v}})
    :ok = GenServer.call(store, {:cas, {:cas, i}, v, {:swapped, v}})
    check.("cas #{i}", GenServer.call(store, {:get, {:cas, i}}), {:swapped, v})
    :ok = GenServer.call(store, {:put, v, i})
    check.("key #{i}", GenServer.call(store, {:get, v}), i)
  end
  # `r` and `other` are different keys; cas compares with =:=.
  check.("r key", GenServer.call(store, {:get, r}), 0)
  check.("other key", GenServer.call(store, {:get, other}), 4)
  :ok = GenServer.call(store, {:put, :pt, r})
  {:error, {:mismatch, ^r}} = GenServer.call(store, {:cas, :pt, other, :x})
  :ok = GenServer.call(store, {:cas, :pt, r, other})
  check.("cas to other", GenServer.call(store, {:get, :pt}), other)
  # A change a subscriber would need an event term for is refused, not stored changed.
  :ok = GenServer.call(store, {:subscribe, :all})
  {:error, :unrepresentable} = GenServer.call(store, {:put_new, :watched, r})
  nil = GenServer.call(store, {:get, :watched})
  :ok = GenServer.call(store, {:unsubscribe, :all})
  # In-node calls (rpc) carry terms: a record is answered as an error, never as another term.
  {:error, :unrepresentable} = :rpc.call(kv, DistributedExample.KVStore, :get, [{:put, 0}])
end
"##;

const READS: &str = r##"
if has_records do
  for {v, i} <- Enum.with_index(zoo) do
    check.("recovered put #{i}", GenServer.call(store, {:get, {:put, i}}), v)
    check.("recovered cast #{i}", GenServer.call(store, {:get, {:cast, i}}), v)
    check.("recovered put_new #{i}", GenServer.call(store, {:get, {:new, i}}), v)
    check.("recovered cas #{i}", GenServer.call(store, {:get, {:cas, i}}), {:swapped, v})
    check.("recovered key #{i}", GenServer.call(store, {:get, v}), i)
  end
  check.("recovered pt", GenServer.call(store, {:get, :pt}), other)
end
"##;

#[test]
fn native_records_as_values_and_keys_survive_every_path_and_a_restart() {
    let (out, _) = kv_script_with_restart(
        "rec",
        &format!("{TERM_CHECKS}\n{PRELUDE}\n{ZOO_IF}\n{WRITES}"),
        &format!("{TERM_CHECKS}\n{PRELUDE}\n{ZOO_IF}\n{READS}"),
    );
    eprintln!("{out}");
}

#[test]
fn native_records_in_memory() {
    let kv = KvNode::fresh("kv_rec_mem");
    let out = kv.script(
        "rec_mem",
        &format!("{TERM_CHECKS}\n{PRELUDE}\n{ZOO_IF}\n{WRITES}"),
    );
    eprintln!("{out}");
    // `kvnode call` answered with a record: no term can hold it, so it is printed from the
    // reply's bytes, as OTP 29 prints it.
    let port = kv.epmd_port.to_string();
    let run = kvnode_client(&[
        "call",
        &kv.name,
        "Elixir.DistributedExample.KVStore",
        "{get, {put, 0}}",
        "--cookie",
        &kv.cookie,
        "--epmd-port",
        &port,
    ]);
    eprintln!("kvnode call of a record: {run:?}");
    if out.contains("OTP 29") || out.contains("OTP 3") {
        assert_eq!(run.status, Some(0), "{run:?}");
        assert_eq!(run.stdout.trim(), "#geo:pt{x = 1,y = 2.5}", "{run:?}");
    } else {
        assert_eq!(run.status, Some(0), "{run:?}");
    }
}

/// [`ZOO`] only where records exist (binds `r`, `other`, `zoo` to `nil` elsewhere).
const ZOO_IF: &str = r##"
{r, other, zoo} =
  if has_records do
    r = :records.create(:geo, :pt, [x: 1, y: 2.5], %{is_exported: true})
    other = :records.create(:geo, :pt, [y: 2.5, x: 1], %{is_exported: true})
    if r === other, do: raise("field order should matter")
    {r, other, [r, [r, other], %{r => r, :k => [r]}, {r, {r}}, other]}
  else
    {nil, nil, nil}
  end
"##;
