defmodule KVClient.Rebalance do
  @moduledoc """
  Moves keys to their owner after the kvnode list changed (see
  `KVClient.rebalance/1`).

  For every key on every node (the configured ones plus `from:`) whose owner
  under the new list is another node, one at a time per key:

    1. read it on the node that holds it (`{:get, k, absent}`); a key deleted
       meanwhile is skipped;
    2. copy it to the owner with `{:put_new, k, v}`: if the owner already has
       the key, it was written there through the new routing and is newer, so
       the owner's value is kept;
    3. only once the owner acknowledged (`:ok` or `{:error, :exists}`), delete
       it from the old node. A failed read or copy deletes nothing.

  ## The race with concurrent writers

  Rebalancing is safe against writers that already route with the new node
  list (step 2 never overwrites their values). It is **not** atomic against
  writers still using the old list: a write through the old routing between
  steps 1 and 3 is lost (step 3 deletes it), and one after step 3 puts the key
  back on the old node, where readers with the new list do not look (the next
  rebalance moves it, unless the owner has the key by then). Meanwhile,
  readers with the new list see a moving key as absent until it is copied.
  So: give every client the new list, then rebalance (and once more if some
  client may have lagged behind).
  """

  alias KVClient.Shards

  @default_concurrency 8
  @default_timeout 30_000
  @max_failures 100

  @type result :: %{
          moved: non_neg_integer(),
          kept_newer: non_neg_integer(),
          vanished: non_neg_integer(),
          failed: [{node(), term(), term()}]
        }

  @doc false
  @spec run(keyword()) :: {:ok, result()} | {:error, result()}
  def run(opts) do
    nodes = Keyword.get_lazy(opts, :nodes, &configured_nodes/0)
    server = Keyword.get(opts, :server, DistributedExample.KVStore)
    timeout = Keyword.get(opts, :timeout, @default_timeout)
    sources = Enum.uniq(nodes ++ Keyword.get(opts, :from, []))
    empty = %{moved: 0, kept_newer: 0, vanished: 0, failed: []}

    {moves, result} =
      Enum.reduce(sources, {[], empty}, fn source, {moves, result} ->
        case KVClient.keys({server, source}, timeout: timeout) do
          keys when is_list(keys) ->
            mine =
              for key <- keys,
                  (owner = Shards.owner(key, nodes)) != source,
                  do: {source, key, owner}

            {mine ++ moves, result}

          {:error, reason} ->
            {moves, failure(result, source, :keys, reason)}
        end
      end)

    result =
      moves
      |> Task.async_stream(&move(&1, server, timeout),
        max_concurrency: Keyword.get(opts, :concurrency, @default_concurrency),
        ordered: false,
        timeout: :infinity
      )
      |> Enum.reduce(result, fn
        {:ok, {:failed, source, key, reason}}, acc -> failure(acc, source, key, reason)
        {:ok, outcome}, acc -> Map.update!(acc, outcome, &(&1 + 1))
      end)

    result = %{result | failed: Enum.reverse(result.failed)}
    if result.failed == [], do: {:ok, result}, else: {:error, result}
  end

  defp configured_nodes do
    if Process.whereis(DistributedExample.KVStore) do
      try do
        KVClient.Store.info().nodes
      catch
        :exit, _ -> KVClient.Store.nodes()
      end
    else
      KVClient.Store.nodes()
    end
  end

  defp failure(result, source, key, reason) do
    if length(result.failed) < @max_failures,
      do: %{result | failed: [{source, key, reason} | result.failed]},
      else: result
  end

  defp move({source, key, owner}, server, timeout) do
    opts = [timeout: timeout]

    with {:ok, value} <- KVClient.fetch({server, source}, key, opts),
         copied when copied in [:ok, {:error, :exists}] <-
           KVClient.put_new({server, owner}, key, value, opts),
         :ok <- KVClient.delete({server, source}, key, opts) do
      if copied == :ok, do: :moved, else: :kept_newer
    else
      :error -> :vanished
      {:error, reason} -> {:failed, source, key, reason}
      other -> {:failed, source, key, other}
    end
  catch
    :exit, reason -> {:failed, source, key, {:exit, reason}}
  end
end
