defmodule KVClient.Test.RemoteSubscriber do
  @moduledoc """
  Runs on a peer node (started with `:peer`) to subscribe from another node.
  Uses only Erlang modules, so the peer needs nothing but this module's ebin.
  """

  @doc "Spawns a process that subscribes to `key` on `kv` and then waits forever."
  def start(kv, key) do
    parent = self()

    pid =
      :erlang.spawn(fn ->
        :ok = :gen_server.call({DistributedExample.KVStore, kv}, {:subscribe, key})
        send(parent, {:subscribed, self()})

        receive do
          :stop -> :ok
        end
      end)

    receive do
      {:subscribed, ^pid} -> pid
    after
      5_000 -> exit(:subscribe_timeout)
    end
  end
end
