defmodule KVClientRestartTest do
  # Stops and restarts the shared kvnode, so it runs alone (async: false).
  use ExUnit.Case, async: false

  alias KVClient.Test.Cluster

  @moduletag :distributed

  test "the next call works after kvnode restarts" do
    kv = Cluster.kvnode()
    key = {__MODULE__, :before}
    :ok = KVClient.put(kv, key, :stored)
    :ok = KVClient.subscribe(kv, :all)
    assert kv in Node.list(:hidden)
    true = Node.monitor(kv, true)

    assert Cluster.stop_kvnode() == 0
    assert_receive {:nodedown, ^kv}, 5_000
    refute kv in Node.list(:hidden)

    # While it is down: errors, not exits; casts are still fire-and-forget.
    assert KVClient.get(kv, key) == {:error, :noconnection}
    assert KVClient.connect(kv) == {:error, :unreachable}
    assert KVClient.put_async(kv, key, :lost) == :ok
    assert Node.ping(kv) == :pang

    assert Cluster.start_kvnode() == :ok

    # The very next call works (no retry): a new, empty store under the same
    # name, and the client cached nothing.
    assert KVClient.get(kv, key, :absent) == :absent
    assert KVClient.put(kv, key, :after_restart) == :ok
    assert KVClient.get(kv, key) == :after_restart
    assert KVClient.subscribers(kv) == 0
    assert Node.ping(kv) == :pong
    assert KVClient.connect(kv) == :ok
    :ok = KVClient.delete(kv, key)
  end
end
