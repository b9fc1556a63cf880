defmodule KVClientInteropTest do
  # Tests that look at the whole store (keys, size, subscriber counts), mutate
  # global state (the environment, cookies) or load it heavily. They run one
  # at a time, after the async tests.
  use ExUnit.Case, async: false

  alias KVClient.Test.{Cluster, OSProcess, Wait}

  @moduletag :distributed

  setup do
    %{kv: Cluster.kvnode()}
  end

  defp clear!(kv) do
    for key <- KVClient.keys(kv), do: :ok = KVClient.delete(kv, key)
    assert KVClient.size(kv) == 0
  end

  test "the README iex session", %{kv: kv} do
    assert Node.connect(kv) == true

    assert GenServer.cast({DistributedExample.KVStore, kv}, {:put, :message, "Hello, world!"}) ==
             :ok

    assert GenServer.call({DistributedExample.KVStore, kv}, {:get, :message}) ==
             "Hello, world!"

    assert Node.ping(kv) == :pong
    assert kv in Node.list(:hidden)
    assert KVClient.get(kv, :message) == "Hello, world!"
  end

  test "keys/2 and size/2 list exactly the stored keys", %{kv: kv} do
    clear!(kv)
    assert KVClient.keys(kv) == []
    keys = [:a, "b", {:c, 1}, 1, 1.0]
    for k <- keys, do: :ok = KVClient.put(kv, k, k)
    assert Enum.sort(KVClient.keys(kv)) == Enum.sort(keys)
    assert KVClient.size(kv) == 5
    :ok = KVClient.delete(kv, :a)
    assert KVClient.size(kv) == 4
    clear!(kv)
  end

  test "KV_NODE overrides the application config", %{kv: kv} do
    System.put_env("KV_NODE", Atom.to_string(kv))
    Application.put_env(:kv_client, :node, :"elsewhere@127.0.0.1")

    try do
      assert KVClient.default_node() == kv
      assert KVClient.put(nil, {__MODULE__, :env}, 1) == :ok
    after
      System.delete_env("KV_NODE")
      Application.put_env(:kv_client, :node, kv)
    end

    assert KVClient.default_node() == kv
    Application.delete_env(:kv_client, :node)

    try do
      assert_raise ArgumentError, ~r/no kvnode configured/, fn -> KVClient.get(nil, :k) end
    after
      Application.put_env(:kv_client, :node, kv)
    end
  end

  describe "subscriptions" do
    test ":all delivers every change, once even with a key subscription too", %{kv: kv} do
      base = KVClient.subscribers(kv)
      :ok = KVClient.subscribe(kv, :all)
      :ok = KVClient.subscribe(kv, {__MODULE__, :both})
      assert KVClient.subscribers(kv) == base + 2

      :ok = KVClient.put(kv, {__MODULE__, :both}, 1)
      :ok = KVClient.put(kv, {__MODULE__, :other}, 2)
      :ok = KVClient.delete(kv, {__MODULE__, :other})
      assert_receive {:kv_event, {__MODULE__, :both}, {:put, 1}}
      assert_receive {:kv_event, {__MODULE__, :other}, {:put, 2}}
      assert_receive {:kv_event, {__MODULE__, :other}, :delete}
      _ = KVClient.size(kv)
      refute_received {:kv_event, _, _}

      :ok = KVClient.unsubscribe(kv, :all)
      :ok = KVClient.unsubscribe(kv, {__MODULE__, :both})
      assert KVClient.subscribers(kv) == base
    end

    test "a subscriber that dies is dropped", %{kv: kv} do
      base = KVClient.subscribers(kv)
      test = self()

      subscribers =
        for n <- 1..5 do
          spawn(fn ->
            :ok = KVClient.subscribe(kv, {__MODULE__, :dies, n})
            :ok = KVClient.subscribe(kv, :all)
            send(test, {:subscribed, self()})

            receive do
              :never -> :ok
            end
          end)
        end

      for pid <- subscribers, do: assert_receive({:subscribed, ^pid})
      assert KVClient.subscribers(kv) == base + 10

      [first | rest] = subscribers
      Process.exit(first, :kill)

      Wait.until(fn -> KVClient.subscribers(kv) == base + 8 end, message: "one subscriber dropped")

      Enum.each(rest, &Process.exit(&1, :kill))
      Wait.until(fn -> KVClient.subscribers(kv) == base end, message: "all subscribers dropped")
    end

    test "subscribers on a node that dies are dropped", %{kv: kv} do
      info = Cluster.info()
      ebin = KVClient |> :code.which() |> List.to_string() |> Path.dirname()

      args = [
        "-epmd_port",
        Integer.to_string(info.epmd_port),
        "-setcookie",
        info.cookie,
        "-pa",
        ebin
      ]

      {:ok, peer, peer_node} =
        :peer.start(%{
          name: String.to_charlist("kvsub_#{System.unique_integer([:positive])}"),
          host: String.to_charlist("127.0.0.1"),
          longnames: true,
          args: Enum.map(args, &String.to_charlist/1)
        })

      base = KVClient.subscribers(kv)

      for key <- [:all, {__MODULE__, :remote}] do
        :erpc.call(peer_node, KVClient.Test.RemoteSubscriber, :start, [kv, key])
      end

      assert KVClient.subscribers(kv) == base + 2

      # Kill the peer's VM outright: kvnode only sees its connection drop.
      os_pid = :erpc.call(peer_node, :os, :getpid, [])
      {_, 0} = System.cmd("kill", ["-KILL", List.to_string(os_pid)])

      Wait.until(fn -> KVClient.subscribers(kv) == base end, message: "remote subscribers dropped")

      # The peer's controller may or may not have noticed the kill yet.
      try do
        :peer.stop(peer)
      catch
        :exit, _ -> :ok
      end
    end
  end

  test "1,000 concurrent clients", %{kv: kv} do
    counter = {__MODULE__, :counter}
    :ok = KVClient.delete(kv, counter)
    incrs = 10

    results =
      1..1_000
      |> Enum.map(fn n ->
        Task.async(fn ->
          own = {__MODULE__, :client, n}
          :ok = KVClient.put(kv, own, n)
          n = KVClient.get(kv, own)
          :ok = KVClient.put_async(kv, {__MODULE__, :async, n}, n)
          for _ <- 1..incrs, do: true = is_integer(KVClient.incr(kv, counter))
          KVClient.incr(kv, own, n)
        end)
      end)
      |> Task.await_many(30_000)

    assert results == Enum.map(1..1_000, &(&1 * 2))
    assert KVClient.get(kv, counter) == 1_000 * incrs

    assert Enum.sum(for n <- 1..1_000, do: KVClient.get(kv, {__MODULE__, :client, n})) ==
             2 * Enum.sum(1..1_000)

    Wait.until(fn -> KVClient.get(kv, {__MODULE__, :async, 1_000}) == 1_000 end)
    assert Enum.all?(1..1_000, &(KVClient.get(kv, {__MODULE__, :async, &1}) == &1))
  end

  test "8 MiB values round-trip", %{kv: kv} do
    big = :binary.copy(<<0, 1, 2, 3, 255, 254, 253, 252>>, 1024 * 1024)
    assert byte_size(big) == 8 * 1024 * 1024
    assert KVClient.put(kv, {__MODULE__, :big}, big, timeout: 30_000) == :ok
    assert KVClient.get(kv, {__MODULE__, :big}, nil, timeout: 30_000) == big

    # As a key too, and through a cast.
    :ok = KVClient.put_async(kv, big, :big_key)
    assert KVClient.get(kv, big, nil, timeout: 30_000) == :big_key
    :ok = KVClient.delete(kv, big, timeout: 30_000)

    # Replies that arrive after a 1 ms timeout never reach the mailbox.
    for _ <- 1..5 do
      try do
        assert KVClient.get(kv, {__MODULE__, :big}, nil, timeout: 1) == big
      catch
        :exit, {:timeout, {GenServer, :call, _}} -> :ok
      end
    end

    :ok = KVClient.delete(kv, {__MODULE__, :big})
    assert Process.info(self(), :messages) == {:messages, []}
  end

  test "connect/1 tells a wrong cookie from a missing node", %{kv: kv} do
    other = :"kvtest_other_#{System.unique_integer([:positive])}@127.0.0.1"
    info = Cluster.info()

    proc =
      OSProcess.start("kvnode", info.bin, [
        "--name",
        Atom.to_string(other),
        "--cookie",
        "a-different-cookie",
        "--epmd-port",
        Integer.to_string(info.epmd_port)
      ])

    try do
      assert {:ok, _, _} = OSProcess.await_line(proc, "kvnode ready", 20_000)
      assert KVClient.connect(other) == {:error, :bad_cookie_or_unreachable}
      assert KVClient.get(other, :k) == {:error, :noconnection}

      Node.set_cookie(other, :"a-different-cookie")
      assert KVClient.connect(other) == :ok
      assert KVClient.put(other, :k, :other) == :ok
      assert KVClient.get(other, :k) == :other
      assert KVClient.get(kv, :k) != :other
    after
      OSProcess.stop(proc)
    end
  end

  test "a node that is not distributed gets {:error, :not_alive}" do
    ebin = KVClient |> :code.which() |> List.to_string() |> Path.dirname()
    elixir = System.find_executable("elixir") || flunk("no elixir on PATH")

    script = """
    IO.inspect({KVClient.connect(:"kv@127.0.0.1"), KVClient.get(:"kv@127.0.0.1", :k)})
    """

    {out, 0} = System.cmd(elixir, ["-pa", ebin, "-e", script], stderr_to_stdout: true)
    assert out =~ "{{:error, :not_alive}, {:error, :not_alive}}"
  end
end
