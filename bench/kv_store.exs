# The reference BEAM implementation of `DistributedExample.KVStore`, the GenServer kvnode
# hosts, with the same wire interface (src/kv/mod.rs) and a plain map as state. Standard
# library only. The benchmark (scripts/bench) starts it on its own node:
#
#   elixir --name beamkv@127.0.0.1 --cookie C --erl "-epmd_port P -start_epmd false" \
#     --no-halt bench/kv_store.exs
#
# and waits for the line `beamkv ready node=... os_pid=...` on stdout.

defmodule DistributedExample.KVStore do
  use GenServer

  # State: {data, subs}. `data` is the plain key => value map. `subs` is nil while nobody is
  # subscribed (the hot path then pays nothing for subscriptions), else
  # %{pids: %{pid => {mref, all?, keys_mapset}}, by_key: %{key => MapSet of pids}, count: n}.

  def start_link(_ \\ []), do: GenServer.start_link(__MODULE__, :ok, name: __MODULE__)

  @impl true
  def init(:ok), do: {:ok, {%{}, nil}}

  @impl true
  def handle_call({:get, k}, _from, {data, _} = s), do: {:reply, Map.get(data, k), s}
  def handle_call({:get, k, default}, _from, {data, _} = s), do: {:reply, Map.get(data, k, default), s}

  def handle_call({:put, k, v}, _from, {data, subs}) do
    notify(subs, k, {:put, v})
    {:reply, :ok, {Map.put(data, k, v), subs}}
  end

  def handle_call({:put_new, k, v}, _from, {data, subs} = s) do
    if Map.has_key?(data, k) do
      {:reply, {:error, :exists}, s}
    else
      notify(subs, k, {:put, v})
      {:reply, :ok, {Map.put(data, k, v), subs}}
    end
  end

  def handle_call({:delete, k}, _from, s), do: {:reply, :ok, delete(s, k)}

  def handle_call({:cas, k, expected, new}, _from, {data, subs} = s) do
    current = Map.get(data, k)

    matches =
      case Map.fetch(data, k) do
        {:ok, v} -> v === expected
        :error -> expected === nil
      end

    if matches do
      notify(subs, k, {:put, new})
      {:reply, :ok, {Map.put(data, k, new), subs}}
    else
      {:reply, {:error, {:mismatch, current}}, s}
    end
  end

  def handle_call({:incr, k}, from, s), do: handle_call({:incr, k, 1}, from, s)

  def handle_call({:incr, k, amount}, _from, {data, subs} = s) do
    case Map.get(data, k, 0) do
      n when is_integer(n) and is_integer(amount) ->
        new = n + amount
        notify(subs, k, {:put, new})
        {:reply, new, {Map.put(data, k, new), subs}}

      _ ->
        {:reply, {:error, :not_integer}, s}
    end
  end

  def handle_call(:keys, _from, {data, _} = s), do: {:reply, Map.keys(data), s}
  def handle_call(:size, _from, {data, _} = s), do: {:reply, map_size(data), s}

  def handle_call({:subscribe, topic}, {pid, _}, {data, subs}) do
    {:reply, :ok, {data, subscribe(subs || %{pids: %{}, by_key: %{}, count: 0}, pid, topic)}}
  end

  def handle_call({:unsubscribe, topic}, {pid, _}, {data, subs}) do
    {:reply, :ok, {data, unsubscribe(subs, pid, topic)}}
  end

  def handle_call(:subscribers, _from, {_, subs} = s),
    do: {:reply, if(subs, do: subs.count, else: 0), s}

  def handle_call(other, _from, s), do: {:reply, {:error, {:unknown_request, other}}, s}

  # Any data request is accepted as a cast; its reply is dropped.
  @impl true
  def handle_cast({:put, k, v}, {data, subs}) do
    notify(subs, k, {:put, v})
    {:noreply, {Map.put(data, k, v), subs}}
  end

  def handle_cast({:delete, k}, s), do: {:noreply, delete(s, k)}

  def handle_cast(req, s) do
    case req do
      {op, _, _} when op in [:put_new, :incr, :get] -> cast_as_call(req, s)
      {op, _} when op in [:incr, :get] -> cast_as_call(req, s)
      {:cas, _, _, _} -> cast_as_call(req, s)
      _ -> {:noreply, s}
    end
  end

  @impl true
  def handle_info({:DOWN, _ref, :process, pid, _reason}, {data, subs}) when subs != nil do
    {:noreply, {data, drop_pid(subs, pid)}}
  end

  def handle_info(_msg, s), do: {:noreply, s}

  defp cast_as_call(req, s) do
    {:reply, _, s} = handle_call(req, {self(), make_ref()}, s)
    {:noreply, s}
  end

  defp delete({data, subs}, k) do
    if Map.has_key?(data, k) do
      notify(subs, k, :delete)
      {Map.delete(data, k), subs}
    else
      {data, subs}
    end
  end

  defp notify(nil, _k, _change), do: :ok

  defp notify(%{pids: pids, by_key: by_key}, k, change) do
    all = for {pid, {_, true, _}} <- pids, do: pid
    keyed = by_key |> Map.get(k, MapSet.new()) |> MapSet.to_list()
    msg = {:kv_event, k, change}
    Enum.each(Enum.uniq(all ++ keyed), &send(&1, msg))
  end

  defp subscribe(subs, pid, topic) do
    {entry, subs} =
      case Map.fetch(subs.pids, pid) do
        {:ok, e} -> {e, subs}
        :error -> {{Process.monitor(pid), false, MapSet.new()}, subs}
      end

    {mref, all, keys} = entry

    case topic do
      :all when all ->
        put_entry(subs, pid, entry)

      :all ->
        %{put_entry(subs, pid, {mref, true, keys}) | count: subs.count + 1}

      k ->
        if MapSet.member?(keys, k) do
          put_entry(subs, pid, entry)
        else
          subs = put_entry(subs, pid, {mref, all, MapSet.put(keys, k)})
          by_key = Map.update(subs.by_key, k, MapSet.new([pid]), &MapSet.put(&1, pid))
          %{subs | by_key: by_key, count: subs.count + 1}
        end
    end
  end

  defp put_entry(subs, pid, entry), do: %{subs | pids: Map.put(subs.pids, pid, entry)}

  defp unsubscribe(nil, _pid, _topic), do: nil

  defp unsubscribe(subs, pid, topic) do
    case Map.fetch(subs.pids, pid) do
      :error ->
        subs

      {:ok, {mref, all, keys}} ->
        case topic do
          :all when all -> %{put_entry(subs, pid, {mref, false, keys}) | count: subs.count - 1}
          :all -> subs
          k ->
            if MapSet.member?(keys, k) do
              subs = put_entry(subs, pid, {mref, all, MapSet.delete(keys, k)})
              %{subs | by_key: drop_from_key(subs.by_key, k, pid), count: subs.count - 1}
            else
              subs
            end
        end
    end
  end

  defp drop_pid(subs, pid) do
    case Map.pop(subs.pids, pid) do
      {nil, _} ->
        subs

      {{_mref, all, keys}, pids} ->
        by_key = Enum.reduce(keys, subs.by_key, &drop_from_key(&2, &1, pid))
        n = MapSet.size(keys) + if(all, do: 1, else: 0)
        %{subs | pids: pids, by_key: by_key, count: subs.count - n}
    end
  end

  defp drop_from_key(by_key, k, pid) do
    case Map.fetch(by_key, k) do
      {:ok, set} ->
        set = MapSet.delete(set, pid)
        if MapSet.size(set) == 0, do: Map.delete(by_key, k), else: Map.put(by_key, k, set)

      :error ->
        by_key
    end
  end
end

if Node.alive?() do
  {:ok, _} = DistributedExample.KVStore.start_link()
  IO.puts("beamkv ready node=#{node()} os_pid=#{System.pid()}")
else
  IO.puts(:stderr, "kv_store.exs: start me on a distributed node (--name ...)")
  System.halt(2)
end
