defmodule KVClientStoreTest do
  # The drop-in DistributedExample.KVStore (KVClient.Store): real kvnodes, real
  # client peer nodes. Starts and kills its own kvnodes, so it runs alone.
  use ExUnit.Case, async: false

  alias KVClient.Store
  alias KVClient.Shards, as: Owner
  alias KVClient.Test.{Cluster, Sharding, Wait}

  @moduletag :distributed
  @moduletag timeout: 120_000

  # Built from bits: an Elixir `-0.0` literal may be folded to 0.0 on OTP 25.
  defp neg_zero do
    <<f::float>> = <<0x8000000000000000::64>>
    f
  end

  defp unique_name, do: :"kvstore_test_#{System.unique_integer([:positive])}"

  defp start_store(opts) do
    name = unique_name()
    {:ok, pid} = Store.start_link(Keyword.put(opts, :name, name))
    on_exit(fn -> if Process.alive?(pid), do: Process.exit(pid, :kill) end)
    name
  end

  defp key(i) do
    case rem(i, 4) do
      0 -> i
      1 -> "key-#{i}"
      2 -> {:user, i}
      3 -> %{id: i, tags: [:a, :b]}
    end
  end

  describe "canonical keys" do
    # Computed once (OTP 25) and checked in: every OTP row must agree, or
    # client nodes on different releases would route keys differently.
    @vectors [
      {:message, "7f5e07bf8cb2b981bacca802cbcc9dc7", 2},
      {"Hello, world!", "0759b443a9d044cac5862a3d7a50738c", 1},
      {1, "249ba6277758050695e8f5909bacd6d3", 2},
      {1.0, "35d88023272acc26dd173634802e3e78", 1},
      {0.0, "793f8fc2ef51d558a6cd17022f751801", 2},
      {:neg_zero, "5b67645215585a9aa8b00fb356113bc4", 2},
      {255, "90b82cfd67e3a72ceb8d642b3085f86d", 3},
      {256, "8550e2c1c623734371cf51c817ddac43", 2},
      {-1, "050d144172d916d0846f839e0412e929", 2},
      {9_223_372_036_854_775_807, "bf6474ce39e0e8c778742682f3215ad7", 2},
      {9_223_372_036_854_775_808, "e8961995ca91d90fa0b85750264c35fa", 1},
      {-1_180_591_620_717_411_303_424, "82db6c9e6d94d1614bb75fe1c92818dd", 3},
      {{:user, 42}, "f213e857bd03a8cb60851ae07f0befe5", 2},
      {%{a: 1, b: [1, 2]}, "f464103524a072fca1e3cce69e24dac8", 2},
      {~c"abc", "339854981f6e5546545c6f97508ff03e", 3},
      {[1 | 2], "2c96892d23c864bf020c9a5ac1b1edff", 2},
      {<<5::3>>, "eb8d5ab48e6ba1dc3db76d3b2bb3ae63", 2},
      {:héllo, "c770582b8c85fdc5dee5b6b1e2d73c41", 1},
      {{}, "1880bbffb2b7ce86005e0256c523bc64", 2},
      {[], "4dedb2240a1e0f038dcdc8b3de92264c", 3},
      {%{}, "d479436bd32066b25886f9920c7b7ccf", 1},
      {:big_map, "208e1881187d6e2052dded002b0ecc16", 2},
      {[[]], "268212e6f145aa3f9b12a06b09ac81c1", 2},
      {{:a, "b", ~c"c"}, "8c581445cae7e5254f5d9f576d9250af", 3}
    ]

    @three [:"kv1@127.0.0.1", :"kv2@127.0.0.1", :"kv3@127.0.0.1"]

    defp vector_key(:neg_zero), do: neg_zero()
    defp vector_key(:big_map), do: Map.new(1..40, &{&1, :v})
    defp vector_key(key), do: key

    test "digests and owners match the checked-in vectors on this OTP release" do
      for {key, digest, owner} <- @vectors do
        key = vector_key(key)
        assert Base.encode16(Owner.key_digest(key), case: :lower) == digest, inspect(key)
        assert Owner.owner(key, @three) == Enum.at(@three, owner - 1), inspect(key)
        # The order nodes are listed in does not matter.
        assert Owner.owner(key, Enum.reverse(@three)) == Enum.at(@three, owner - 1)
      end
    end

    test "equal keys (=:=) encode equally, different keys differently" do
      assert Owner.canonical_key(1) != Owner.canonical_key(1.0)
      assert Owner.canonical_key(0.0) != Owner.canonical_key(neg_zero())
      assert Owner.canonical_key(<<1::3>>) != Owner.canonical_key(<<0::3>>)
      assert Owner.canonical_key([1 | 2]) != Owner.canonical_key([1, 2])
      assert Owner.canonical_key({}) != Owner.canonical_key([])

      # Maps: any insertion order, small (flatmap) and large (HAMT) alike.
      for n <- [3, 40] do
        up = Enum.reduce(1..n, %{}, &Map.put(&2, &1, &1))
        down = Enum.reduce(n..1//-1, %{}, &Map.put(&2, &1, &1))
        assert Owner.canonical_key(up) == Owner.canonical_key(down)
      end

      # A round trip through the external format (atoms as latin1 or UTF-8,
      # charlists as STRING_EXT) does not change the key.
      for key <- [:abc, ~c"abc", {:a, [1, 2, 3]}, %{"x" => 1.5}, self(), make_ref()] do
        assert Owner.canonical_key(:erlang.binary_to_term(:erlang.term_to_binary(key))) ==
                 Owner.canonical_key(key)
      end
    end
  end

  test "the article's calls from two client nodes see one store" do
    kv = Cluster.kvnode()
    {peer1, node1} = Sharding.start_peer("kvarticle")
    {peer2, node2} = Sharding.start_peer("kvarticle")

    try do
      for node <- [node1, node2] do
        :ok = :erpc.call(node, Application, :put_env, [:kv_client, :nodes, [kv]])
        # The article: DistributedExample.KVStore.start_link([])
        {:ok, _} =
          :erpc.call(node, Sharding, :start_unlinked, [
            DistributedExample.KVStore,
            :start_link,
            [[]]
          ])
      end

      # Node 1: the article's cast; node 2: the article's call.
      assert :erpc.call(node1, GenServer, :cast, [
               DistributedExample.KVStore,
               {:put, :message, "Hello, world!"}
             ]) == :ok

      # Node 1's store forwards in order, so its own call sees the cast...
      assert :erpc.call(node1, GenServer, :call, [DistributedExample.KVStore, {:get, :message}]) ==
               "Hello, world!"

      # ...and node 2, with its own local DistributedExample.KVStore, sees it too.
      assert :erpc.call(node2, GenServer, :call, [DistributedExample.KVStore, {:get, :message}]) ==
               "Hello, world!"

      # It is kvnode's store: a direct call sees the same value.
      assert GenServer.call({DistributedExample.KVStore, kv}, {:get, :message}) == "Hello, world!"

      # Every request of the KV interface passes through unchanged.
      call = fn node, request ->
        :erpc.call(node, GenServer, :call, [DistributedExample.KVStore, request])
      end

      k = {__MODULE__, :article}
      assert call.(node2, {:put_new, k, 1}) == :ok
      assert call.(node1, {:put_new, k, 2}) == {:error, :exists}
      assert call.(node1, {:cas, k, 1, 5}) == :ok
      assert call.(node2, {:cas, k, 1, 6}) == {:error, {:mismatch, 5}}
      assert call.(node2, {:incr, k, 10}) == 15
      assert call.(node1, {:incr, k}) == 16
      assert call.(node1, {:get, {__MODULE__, :absent}, :dflt}) == :dflt
      assert call.(node2, {:delete, k}) == :ok
      assert call.(node1, {:get, k}) == nil
      assert call.(node1, :size) == KVClient.size(kv)
      assert Enum.sort(call.(node2, :keys)) == Enum.sort(KVClient.keys(kv))
      assert call.(node1, :what) == {:error, {:unknown_request, :what}}
    after
      Sharding.stop_peer(peer1)
      Sharding.stop_peer(peer2)
    end
  end

  test "replies, timeouts and subscriptions as a direct caller gets them" do
    kv = Cluster.kvnode()
    store = start_store(nodes: [kv])
    k = {__MODULE__, :direct}

    :ok = GenServer.call(store, {:subscribe, k})
    :ok = GenServer.cast(store, {:put, k, 1})
    assert_receive {:kv_event, ^k, {:put, 1}}
    :ok = GenServer.call(store, {:unsubscribe, k})

    # A timed-out call exits like a direct one; its late reply never arrives.
    big = :binary.copy("x", 4 * 1024 * 1024)
    :ok = GenServer.call(store, {:put, k, big}, 30_000)

    for _ <- 1..3 do
      try do
        assert GenServer.call(store, {:get, k}, 1) == big
      catch
        :exit, {:timeout, {GenServer, :call, [^store, {:get, ^k}, 1]}} -> :ok
      end
    end

    :ok = GenServer.call(store, {:delete, k}, 30_000)
    assert Process.info(self(), :messages) == {:messages, []}

    # A name nobody serves: :noproc; a node nobody runs: :noconnection.
    nope = start_store(nodes: [kv], server: :"no such server")
    assert GenServer.call(nope, {:get, k}) == {:error, :noproc}
    gone = start_store(nodes: [:"kvnobody@127.0.0.1"])
    assert GenServer.call(gone, {:get, k}) == {:error, :noconnection}
    assert GenServer.cast(gone, {:put, k, 1}) == :ok
    assert GenServer.call(gone, :size) == {:error, :noconnection}
  end

  test "added latency of the local store: 10,000 sequential gets" do
    kv = Cluster.kvnode()
    store = start_store(nodes: [kv])
    k = {__MODULE__, :latency}
    :ok = GenServer.call(store, {:put, k, "v"})
    direct = {DistributedExample.KVStore, kv}
    n = 10_000

    measure = fn server ->
      for _ <- 1..1_000, do: "v" = GenServer.call(server, {:get, k})

      {us, :ok} =
        :timer.tc(fn -> Enum.each(1..n, fn _ -> "v" = GenServer.call(server, {:get, k}) end) end)

      us / n
    end

    [d1, s1, d2, s2] = [measure.(direct), measure.(store), measure.(direct), measure.(store)]
    direct_us = min(d1, d2)
    store_us = min(s1, s2)

    IO.puts(
      "\n[latency] #{n} sequential gets: direct #{Float.round(direct_us, 1)} us/call, " <>
        "through KVClient.Store #{Float.round(store_us, 1)} us/call " <>
        "(added #{Float.round(store_us - direct_us, 1)} us)"
    )

    :ok = GenServer.call(store, {:delete, k})
  end

  describe "three kvnodes" do
    setup do
      kvs = Sharding.start_kvnodes(3)
      %{kvs: kvs, nodes: Enum.map(kvs, & &1.node)}
    end

    test "share 10,000 keys evenly; every client node routes every key alike",
         %{kvs: kvs, nodes: nodes} do
      store = start_store(nodes: nodes)
      keys = Enum.map(1..10_000, &key/1)

      for k <- keys, do: :ok = GenServer.call(store, {:put, k, {:value, k}})

      assert GenServer.call(store, :size) == 10_000
      assert Enum.sort(GenServer.call(store, :keys)) == Enum.sort(keys)

      spread = for n <- nodes, do: KVClient.size(n)
      IO.puts("\n[spread] 10,000 keys over 3 kvnodes: #{inspect(spread)}")
      assert Enum.sum(spread) == 10_000
      # Expected 3,333 each (standard deviation about 47).
      for count <- spread, do: assert(count in 3_000..3_700, inspect(spread))

      # Each kvnode holds exactly the keys this node's hashing gives it.
      owners = Enum.map(keys, &Owner.owner(&1, nodes))

      for n <- nodes do
        mine = for {k, ^n} <- Enum.zip(keys, owners), do: k
        assert Enum.sort(KVClient.keys(n)) == Enum.sort(mine)
      end

      # Two other client nodes (listing the nodes in other orders) compute the
      # same owners and read every key through their own store.
      for {prefix, order} <- [
            {"kvroute_a", Enum.reverse(nodes)},
            {"kvroute_b", tl(nodes) ++ [hd(nodes)]}
          ] do
        {peer, peer_node} = Sharding.start_peer(prefix)

        try do
          assert :erpc.call(peer_node, Sharding, :canonical, [Enum.take(keys, 100)]) ==
                   Enum.map(Enum.take(keys, 100), &Owner.canonical_key/1)

          assert :erpc.call(peer_node, Sharding, :owners, [keys, order], 60_000) == owners
          name = unique_name()

          {:ok, _} =
            :erpc.call(peer_node, Sharding, :start_unlinked, [
              Store,
              :start_link,
              [[name: name, nodes: order]]
            ])

          assert :erpc.call(peer_node, Sharding, :get_all, [name, keys], 60_000) ==
                   Enum.map(keys, &{:value, &1})
        after
          Sharding.stop_peer(peer)
        end
      end

      Sharding.stop_all(kvs)
    end

    test "subscriptions to :all cover every shard", %{kvs: kvs, nodes: nodes} do
      store = start_store(nodes: nodes)
      # One key per shard.
      keys =
        Enum.map(nodes, fn n -> Enum.find(1..1_000, &(Owner.owner({:sub, &1}, nodes) == n)) end)
        |> Enum.map(&{:sub, &1})

      assert GenServer.call(store, {:subscribe, :all}) == :ok
      assert GenServer.call(store, :subscribers) == 3

      for k <- keys, do: :ok = GenServer.call(store, {:put, k, :x})
      for k <- keys, do: assert_receive({:kv_event, ^k, {:put, :x}})

      assert GenServer.call(store, {:unsubscribe, :all}) == :ok
      assert GenServer.call(store, :subscribers) == 0
      for k <- keys, do: :ok = GenServer.call(store, {:delete, k})
      refute_receive {:kv_event, _, _}, 100

      # From another node, :all cannot be split over the shards for its caller.
      {peer, peer_node} = Sharding.start_peer("kvsuball")

      try do
        assert :erpc.call(peer_node, GenServer, :call, [{store, node()}, {:subscribe, :all}]) ==
                 {:error, :remote_caller}
      after
        Sharding.stop_peer(peer)
      end

      Sharding.stop_all(kvs)
    end

    test "a kvnode killed mid-run affects only its keys", %{kvs: kvs, nodes: nodes} do
      store = start_store(nodes: nodes)
      keys = Enum.map(1..3_000, &key/1)
      for k <- keys, do: :ok = GenServer.call(store, {:put, k, {:value, k}})
      [victim | _] = kvs
      dead = victim.node
      test = self()

      # Readers run while the kvnode dies: every answer is the value, or
      # {:error, :noconnection} for the dead node's keys only; none times out.
      readers =
        for r <- 1..4 do
          Task.async(fn ->
            Stream.cycle(keys)
            |> Stream.drop(r * 700)
            |> Enum.reduce_while(0, fn k, count ->
              reply = GenServer.call(store, {:get, k})

              cond do
                reply == {:value, k} -> :ok
                reply == {:error, :noconnection} and Owner.owner(k, nodes) == dead -> :ok
                true -> send(test, {:bad_reply, k, reply})
              end

              receive do
                :stop -> {:halt, count + 1}
              after
                0 -> {:cont, count + 1}
              end
            end)
          end)
        end

      Wait.until(fn -> GenServer.call(store, {:get, hd(keys)}) == {:value, hd(keys)} end)
      Sharding.kill(victim)

      Wait.until(
        fn ->
          Enum.all?(keys, fn k ->
            reply = GenServer.call(store, {:get, k})

            if Owner.owner(k, nodes) == dead,
              do: reply == {:error, :noconnection},
              else: reply == {:value, k}
          end)
        end,
        timeout: 20_000,
        message: "the dead kvnode's keys fail, the others answer"
      )

      for task <- readers, do: send(task.pid, :stop)
      counts = Task.await_many(readers, 30_000)
      refute_received {:bad_reply, _, _}
      IO.puts("\n[kill] readers made #{inspect(counts)} calls across the kill")

      # Writes to live shards still work; combined requests say a shard is down.
      live = Enum.find(keys, &(Owner.owner(&1, nodes) != dead))
      down = Enum.find(keys, &(Owner.owner(&1, nodes) == dead))
      assert GenServer.call(store, {:put, live, :after}) == :ok
      assert GenServer.call(store, {:put, down, :after}) == {:error, :noconnection}
      assert GenServer.call(store, :size) == {:error, :noconnection}
      assert GenServer.call(store, :keys) == {:error, :noconnection}

      # Back again (empty): the next request just works, no re-routing ever happened.
      victim = Sharding.restart(victim)
      assert GenServer.call(store, {:get, down}) == nil
      assert GenServer.call(store, {:put, down, :back}) == :ok
      assert KVClient.get(dead, down) == :back
      assert GenServer.call(store, {:get, live}) == :after

      Sharding.stop_all([victim | tl(kvs)])
    end

    test "rebalance after adding a fourth kvnode moves about a quarter of the keys",
         %{kvs: kvs, nodes: nodes} do
      store = start_store(nodes: nodes)
      keys = Enum.map(1..10_000, &key/1)
      for k <- keys, do: :ok = GenServer.call(store, {:put, k, {:value, k}})

      [fourth] = Sharding.start_kvnodes(1, "kvshard_new")
      four = nodes ++ [fourth.node]
      expected = Enum.count(keys, &(Owner.owner(&1, four) == fourth.node))

      # Keys only ever move to the new node.
      assert Enum.all?(keys, fn k ->
               o = Owner.owner(k, four)
               o == fourth.node or o == Owner.owner(k, nodes)
             end)

      # A writer with the new list wrote one key before the rebalance: kept.
      newer = Enum.find(keys, &(Owner.owner(&1, four) == fourth.node))
      :ok = KVClient.put(fourth.node, newer, :newer)

      {us, {:ok, result}} = :timer.tc(fn -> KVClient.rebalance(nodes: four) end)

      IO.puts(
        "\n[rebalance] 10,000 keys, 3 -> 4 kvnodes: #{inspect(result)} " <>
          "in #{div(us, 1000)} ms; sizes #{inspect(Enum.map(four, &KVClient.size/1))}"
      )

      assert result == %{moved: expected - 1, kept_newer: 1, vanished: 0, failed: []}
      assert expected in 2_000..3_000

      store4 = start_store(nodes: four)
      assert GenServer.call(store4, :size) == 10_000

      for k <- keys do
        want = if k == newer, do: :newer, else: {:value, k}
        assert GenServer.call(store4, {:get, k}) == want
      end

      for n <- four do
        mine = for k <- keys, Owner.owner(k, four) == n, do: k
        assert Enum.sort(KVClient.keys(n)) == Enum.sort(mine)
      end

      # Idempotent.
      assert KVClient.rebalance(nodes: four) ==
               {:ok, %{moved: 0, kept_newer: 0, vanished: 0, failed: []}}

      _ = store
      Sharding.stop_all([fourth | kvs])
    end
  end
end
