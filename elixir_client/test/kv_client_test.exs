defmodule KVClientTest do
  # Per-key behaviour of every client function. Each test uses its own keys,
  # so these tests run concurrently against the shared kvnode.
  use ExUnit.Case, async: true

  @moduletag :distributed

  # The examples in KVClient's docs need a live kvnode named kv@127.0.0.1, so
  # they are not run as doctests; the tests below cover the same calls.

  setup context do
    # A key no other test uses: {module, test name, n}.
    key = fn n -> {__MODULE__, context.test, n} end
    %{kv: KVClient.Test.Cluster.kvnode(), key: key}
  end

  describe "put/4, get/4, fetch/3, delete/3" do
    test "round-trip arbitrary terms", %{kv: kv, key: key} do
      value = %{list: [1, 2.5, "three", :four], tuple: {self(), make_ref()}, big: 2 ** 100}
      assert KVClient.put(kv, key.(1), value) == :ok
      assert KVClient.get(kv, key.(1)) == value
      assert KVClient.fetch(kv, key.(1)) == {:ok, value}

      assert KVClient.put(kv, key.(1), "replaced") == :ok
      assert KVClient.get(kv, key.(1)) == "replaced"

      assert KVClient.delete(kv, key.(1)) == :ok
      assert KVClient.get(kv, key.(1)) == nil
      assert KVClient.fetch(kv, key.(1)) == :error
      assert KVClient.delete(kv, key.(1)) == :ok
    end

    test "get/3 returns the default only for absent keys", %{kv: kv, key: key} do
      assert KVClient.get(kv, key.(1), :default) == :default
      assert KVClient.get(kv, key.(1), 0, timeout: 1_000) == 0
      :ok = KVClient.put(kv, key.(1), false)
      assert KVClient.get(kv, key.(1), :default) == false
      :ok = KVClient.put(kv, key.(2), nil)
      assert KVClient.fetch(kv, key.(2)) == {:ok, nil}
      assert KVClient.get(kv, key.(2), :default) == nil
    end

    test "fetch/3 tells stored {:error, _} values from transport errors", %{kv: kv, key: key} do
      :ok = KVClient.put(kv, key.(1), {:error, :noconnection})
      assert KVClient.fetch(kv, key.(1)) == {:ok, {:error, :noconnection}}
    end

    test "keys compare with exact term equality", %{kv: kv, key: key} do
      {_, test, _} = key.(0)
      int_key = {test, 1}
      float_key = {test, 1.0}
      :ok = KVClient.put(kv, int_key, :int)
      :ok = KVClient.put(kv, float_key, :float)
      assert KVClient.get(kv, int_key) == :int
      assert KVClient.get(kv, float_key) == :float

      big_map = Map.new(1..40, &{&1, &1})
      :ok = KVClient.put(kv, {test, big_map}, :map)
      assert KVClient.get(kv, {test, Map.new(40..1//-1, &{&1, &1})}) == :map
    end
  end

  describe "term fidelity" do
    test "values and keys of every external term kind round-trip exactly",
         %{kv: kv, key: key} do
      terms = [
        :"ключ_✓",
        String.to_atom(String.duplicate("a", 255)),
        <<1::3>>,
        <<255, 7::5>>,
        [1, 2 | 3],
        List.to_tuple(Enum.to_list(1..300)),
        Enum.map(1..70_000, &rem(&1, 200)),
        -(2 ** 300),
        2 ** 3000,
        -2_147_483_648,
        2_147_483_648,
        3.141592653589793,
        -0.0,
        fn x -> x + 1 end,
        &Enum.map/2,
        self(),
        make_ref(),
        hd(Port.list()),
        %{%{a: 1} => [b: 2], "k" => {1, 2}},
        {[], %{}, {}, ""}
      ]

      for {term, n} <- Enum.with_index(terms) do
        :ok = KVClient.put(kv, key.(n), term)
        assert KVClient.get(kv, key.(n)) === term
        :ok = KVClient.put(kv, {key.(n), term}, n)
        assert KVClient.get(kv, {key.(n), term}) === n
      end

      :ok = KVClient.put(kv, {key.(:zero), 0.0}, :positive)
      assert KVClient.get(kv, {key.(:zero), -0.0}) == nil
    end

    test "other caller shapes: {:incr, k}, :infinity, multi_call, a plain-ref tag",
         %{kv: kv, key: key} do
      server = {DistributedExample.KVStore, kv}
      assert GenServer.call(server, {:incr, key.(1)}) == 1
      assert GenServer.call(server, {:get, key.(1)}, :infinity) == 1

      assert {[{^kv, size}], []} =
               GenServer.multi_call([kv], DistributedExample.KVStore, :size, 5_000)

      assert is_integer(size)

      # Pre-OTP-24 callers and ei/JInterface clients tag calls with a plain ref.
      ref = make_ref()
      send(server, {:"$gen_call", {self(), ref}, {:get, key.(1)}})
      assert_receive {^ref, 1}
    end
  end

  describe "put_async/3" do
    test "a cast followed by a call from the same process is applied in order",
         %{kv: kv, key: key} do
      for n <- 1..50, do: assert(KVClient.put_async(kv, key.(1), n) == :ok)
      assert KVClient.get(kv, key.(1)) == 50
    end

    test "returns :ok even when the node is down" do
      assert KVClient.put_async(:"nobody_here@127.0.0.1", :k, :v) == :ok
    end
  end

  describe "put_new/4" do
    test "stores only absent keys", %{kv: kv, key: key} do
      assert KVClient.put_new(kv, key.(1), "alice") == :ok
      assert KVClient.put_new(kv, key.(1), "bob") == {:error, :exists}
      assert KVClient.get(kv, key.(1)) == "alice"
    end
  end

  describe "cas/5" do
    test "swaps only on a match and reports the current value", %{kv: kv, key: key} do
      assert KVClient.cas(kv, key.(1), :wrong, :x) == {:error, {:mismatch, nil}}
      assert KVClient.cas(kv, key.(1), nil, :starting) == :ok
      assert KVClient.cas(kv, key.(1), nil, :again) == {:error, {:mismatch, :starting}}
      assert KVClient.cas(kv, key.(1), :starting, :running, timeout: 1_000) == :ok
      assert KVClient.cas(kv, key.(1), :starting, :stopped) == {:error, {:mismatch, :running}}
      assert KVClient.get(kv, key.(1)) == :running
    end
  end

  describe "incr/4" do
    test "counts from zero, by any amount, with big integers", %{kv: kv, key: key} do
      assert KVClient.incr(kv, key.(1)) == 1
      assert KVClient.incr(kv, key.(1), 10) == 11
      assert KVClient.incr(kv, key.(1), -20) == -9
      assert KVClient.incr(kv, key.(2), 2 ** 70) == 2 ** 70
      assert KVClient.incr(kv, key.(2), 2 ** 70, timeout: 1_000) == 2 ** 71
      assert KVClient.get(kv, key.(1)) == -9
    end

    test "refuses non-integer values", %{kv: kv, key: key} do
      :ok = KVClient.put(kv, key.(1), "kv")
      assert KVClient.incr(kv, key.(1)) == {:error, :not_integer}
      :ok = KVClient.put(kv, key.(2), 1.5)
      assert KVClient.incr(kv, key.(2), 1) == {:error, :not_integer}
      assert KVClient.get(kv, key.(1)) == "kv"
    end
  end

  describe "keys/2 and size/2" do
    test "include what was stored", %{kv: kv, key: key} do
      :ok = KVClient.put(kv, key.(1), 1)
      :ok = KVClient.put(kv, key.(2), 2)
      keys = KVClient.keys(kv)
      assert key.(1) in keys and key.(2) in keys
      assert KVClient.size(kv, timeout: 1_000) >= 2
    end
  end

  describe "subscribe/3 and unsubscribe/3" do
    test "the caller receives put and delete events for its key", %{kv: kv, key: key} do
      assert KVClient.subscribe(kv, key.(1)) == :ok
      :ok = KVClient.put(kv, key.(1), "hi")
      :ok = KVClient.put(kv, key.(2), "other key")
      :ok = KVClient.delete(kv, key.(1))
      k1 = key.(1)
      assert_receive {:kv_event, ^k1, {:put, "hi"}}
      assert_receive {:kv_event, ^k1, :delete}

      assert KVClient.unsubscribe(kv, key.(1)) == :ok
      :ok = KVClient.put(kv, key.(1), "after")
      # A call is answered after the events of earlier changes were sent.
      _ = KVClient.get(kv, key.(1))
      refute_received {:kv_event, _, _}
    end

    test "events follow casts too", %{kv: kv, key: key} do
      :ok = KVClient.subscribe(kv, key.(1))
      :ok = KVClient.put_async(kv, key.(1), 42)
      k1 = key.(1)
      assert_receive {:kv_event, ^k1, {:put, 42}}
      :ok = KVClient.unsubscribe(kv, key.(1))
    end
  end

  describe "targets" do
    test "{registered_name, node} works and unknown names are {:error, :noproc}",
         %{kv: kv, key: key} do
      assert KVClient.put({DistributedExample.KVStore, kv}, key.(1), :v) == :ok
      assert KVClient.get(kv, key.(1)) == :v
      assert KVClient.get({NoSuchServer, kv}, key.(1)) == {:error, :noproc}
      assert KVClient.put({NoSuchServer, kv}, key.(1), :v) == {:error, :noproc}
    end

    test "nil is the configured node", %{kv: kv, key: key} do
      assert Application.get_env(:kv_client, :node) == kv
      :ok = KVClient.put(nil, key.(1), :configured)
      assert KVClient.get(kv, key.(1)) == :configured
    end

    test "a node that is not running is {:error, :noconnection}, not an exit" do
      down = :"nobody_here@127.0.0.1"
      assert KVClient.get(down, :k) == {:error, :noconnection}
      assert KVClient.put(down, :k, :v) == {:error, :noconnection}
      assert KVClient.fetch(down, :k) == {:error, :noconnection}
      assert KVClient.keys(down) == {:error, :noconnection}
      assert KVClient.subscribe(down, :all) == {:error, :noconnection}
    end

    test "requests the server does not know are answered, not dropped", %{kv: kv} do
      assert GenServer.call({DistributedExample.KVStore, kv}, :bogus) ==
               {:error, {:unknown_request, :bogus}}
    end
  end

  describe "connect/1" do
    test "connects to the running kvnode", %{kv: kv} do
      assert KVClient.connect(kv) == :ok
      assert KVClient.connect(nil) == :ok
      assert kv in Node.list(:hidden)
      refute kv in Node.list()
    end

    test "reports a node that is not registered as unreachable" do
      assert KVClient.connect(:"nobody_here@127.0.0.1") == {:error, :unreachable}
      assert KVClient.connect(:no_host_part) == {:error, :unreachable}
    end
  end

  describe "call timeouts" do
    test "exit like GenServer.call and leave no stray replies behind", %{kv: kv, key: key} do
      :ok = KVClient.put(kv, key.(1), :value)

      # With a 0 ms timeout the reply may still win the race (OTP 29 was seen to get one of
      # 200 in time): each call either exits as GenServer.call does or returns the value, and
      # most must time out. What matters is below: no late reply is left behind.
      outcomes =
        for _ <- 1..200 do
          try do
            {:value, KVClient.get(kv, key.(1), nil, timeout: 0)}
          catch
            :exit, {:timeout, {GenServer, :call, _}} -> :timeout
          end
        end

      assert Enum.all?(outcomes, &(&1 in [:timeout, {:value, :value}])), inspect(outcomes)
      assert Enum.count(outcomes, &(&1 == :timeout)) > 100

      # The same race: the incr is applied either way.
      try do
        assert KVClient.incr(kv, key.(2), 1, timeout: 0) == 1
      catch
        :exit, {:timeout, _} -> :ok
      end

      # Replies to one caller arrive in order, so once this reply is here any
      # late reply to the calls above would be too.
      assert KVClient.get(kv, key.(1)) == :value
      assert KVClient.get(kv, key.(2)) == 1
      assert KVClient.size(kv) > 0
      assert Process.info(self(), :messages) == {:messages, []}
    end
  end
end
