defmodule DistributedExample.KVStore do
  @moduledoc """
  The article's module, as an app would now write it: one line makes
  `DistributedExample.KVStore.start_link([])` start a `KVClient.Store`
  registered under this name.
  """
  use KVClient.Store
end

defmodule KVClient.Test.Sharding do
  @moduledoc """
  Extra kvnodes and client peer nodes for the sharded-store tests.

  kvnodes run under `KVClient.Test.OSProcess`, owned by the calling (test)
  process: when it exits, their Ports close and the watchers stop them.
  Peer nodes are started with `:peer` and get Elixir's and this project's
  code paths, so they run `KVClient.Store` like any client node.
  """

  alias KVClient.Test.{Cluster, OSProcess}

  @doc "Starts `count` kvnodes with fresh names; returns `[%{node: name, proc: proc}]`."
  def start_kvnodes(count, prefix \\ "kvshard") do
    info = Cluster.info()
    run = System.unique_integer([:positive])

    procs =
      for i <- 1..count do
        node = :"#{prefix}#{i}_#{run}@127.0.0.1"
        %{node: node, proc: start_kvnode_proc(info, node)}
      end

    for %{node: node, proc: proc} = kv <- procs do
      case OSProcess.await_line(proc, "kvnode ready", 30_000) do
        {:ok, _line, proc} ->
          %{kv | proc: proc}

        {:error, reason, proc} ->
          raise "kvnode #{node} did not start: #{inspect(reason)}\n#{OSProcess.output(proc)}"
      end
    end
  end

  @doc "Starts a kvnode again under the same name (after `kill/1`)."
  def restart(%{node: node} = kv) do
    proc = start_kvnode_proc(Cluster.info(), node)

    case OSProcess.await_line(proc, "kvnode ready", 30_000) do
      {:ok, _line, proc} ->
        %{kv | proc: proc}

      {:error, reason, proc} ->
        raise "kvnode #{node} did not restart: #{inspect(reason)}\n#{OSProcess.output(proc)}"
    end
  end

  defp start_kvnode_proc(info, node) do
    OSProcess.start("kvnode", info.bin, [
      "--name",
      Atom.to_string(node),
      "--cookie",
      info.cookie,
      "--epmd-port",
      Integer.to_string(info.epmd_port)
    ])
  end

  @doc "Kills a kvnode with SIGKILL (no orderly shutdown) and waits for it to exit."
  def kill(%{proc: %OSProcess{os_pid: os_pid, port: port}}) do
    {_, 0} = System.cmd("kill", ["-KILL", Integer.to_string(os_pid)])

    receive do
      {^port, {:exit_status, status}} -> status
    after
      10_000 -> raise "kvnode #{os_pid} did not exit after SIGKILL"
    end
  end

  @doc "Stops kvnodes started by `start_kvnodes/2` (SIGTERM)."
  def stop_all(kvs), do: Enum.each(kvs, &OSProcess.stop(&1.proc))

  @doc "Starts a client peer node that can run Elixir and this project's code."
  def start_peer(prefix \\ "kvpeer") do
    info = Cluster.info()
    own = KVClient |> :code.which() |> List.to_string() |> Path.dirname()

    paths =
      for app <- [:elixir, :logger],
          dir = :code.lib_dir(app),
          is_list(dir),
          do: Path.join(List.to_string(dir), "ebin")

    # Hidden, as kvnode is: no `global` partition bookkeeping between peers.
    args =
      ["-hidden", "-epmd_port", Integer.to_string(info.epmd_port), "-setcookie", info.cookie] ++
        Enum.flat_map([own | paths], &["-pa", &1])

    {:ok, peer, node} =
      :peer.start(%{
        name: String.to_charlist("#{prefix}_#{System.unique_integer([:positive])}"),
        host: ~c"127.0.0.1",
        longnames: true,
        args: Enum.map(args, &String.to_charlist/1)
      })

    {:ok, _} = :erpc.call(node, Application, :ensure_all_started, [:elixir])
    {peer, node}
  end

  @doc "Stops a peer node."
  def stop_peer(peer) do
    :peer.stop(peer)
  catch
    :exit, _ -> :ok
  end

  ## Run on peer nodes (through :erpc)

  @doc """
  Calls `fun.()` (e.g. `DistributedExample.KVStore.start_link([])`) and
  unlinks the started process from the short-lived erpc process.
  """
  def start_unlinked(module, function, args) do
    {:ok, pid} = apply(module, function, args)
    Process.unlink(pid)
    {:ok, pid}
  end

  @doc "The owner of each key among `nodes`."
  def owners(keys, nodes), do: Enum.map(keys, &KVClient.Shards.owner(&1, nodes))

  @doc "The canonical encodings of `keys`."
  def canonical(keys), do: Enum.map(keys, &KVClient.Shards.canonical_key/1)

  @doc "`GenServer.call(store, {:get, key})` for every key."
  def get_all(store, keys), do: Enum.map(keys, &GenServer.call(store, {:get, &1}))
end
