# Checks that the reference BEAM server (bench/kv_store.exs) and kvnode answer the same
# request sequence with the same replies and events, so the benchmark compares like with like.
# Run on a node connected to both (scripts/bench --check does this):
#
#   elixir --name c@127.0.0.1 --cookie C --erl "-epmd_port P -start_epmd false" \
#     bench/conformance.exs kv@127.0.0.1 beamkv@127.0.0.1

defmodule Bench.Conformance do
  @name DistributedExample.KVStore

  def requests do
    [
      {:get, :a},
      {:get, :a, 0},
      {:put, :a, "x"},
      {:get, :a},
      {:put_new, :a, "y"},
      {:put_new, :b, 1},
      {:incr, :b},
      {:incr, :b, 41},
      {:incr, :a},
      {:incr, :c, 123_456_789_012_345_678_901_234_567_890},
      {:cas, :a, "x", "z"},
      {:cas, :a, "x", "w"},
      {:cas, :nope, nil, 1},
      {:cas, :nope2, 5, 1},
      {:put, 1, :int},
      {:put, 1.0, :float},
      {:get, 1},
      {:get, 1.0},
      {:put, %{x: 1, y: [1, 2]}, {:tuple, "v"}},
      {:get, %{y: [1, 2], x: 1}},
      {:delete, :b},
      {:delete, :missing},
      :size,
      :subscribers,
      :bogus,
      {:get},
      {:frobnicate, 1, 2}
    ]
  end

  def run(target) do
    dest = {@name, target}
    # Start from a clean slate for the keys used here.
    for k <- [:a, :b, :c, :nope, :nope2, 1, 1.0, %{x: 1, y: [1, 2]}, :s],
        do: GenServer.call(dest, {:delete, k})

    base = GenServer.call(dest, :size)
    replies = for r <- requests(), do: {r, fix_size(GenServer.call(dest, r), r, base)}
    # Subscriptions: events for a key and for :all, one per change.
    :ok = GenServer.call(dest, {:subscribe, :s})
    :ok = GenServer.call(dest, {:subscribe, :all})
    subs = GenServer.call(dest, :subscribers)
    GenServer.cast(dest, {:put, :s, 1})
    GenServer.cast(dest, {:delete, :s})
    :ok = GenServer.call(dest, {:put, :other, 2})
    events = for _ <- 1..3, do: receive(do: ({:kv_event, _, _} = e -> e), after: (2000 -> :timeout))
    extra = receive(do: ({:kv_event, _, _} = e -> e), after: (300 -> :none))
    :ok = GenServer.call(dest, {:unsubscribe, :all})
    :ok = GenServer.call(dest, {:unsubscribe, :s})
    subs_after = GenServer.call(dest, :subscribers)
    GenServer.call(dest, {:delete, :other})
    replies ++ [subscribers: subs, events: events, extra_event: extra, subscribers_after: subs_after]
  end

  defp fix_size(n, :size, base), do: {:size_delta, n - base}
  defp fix_size(v, _, _), do: v

  def main([kv, beam]) do
    [kv, beam] = Enum.map([kv, beam], &String.to_atom/1)
    for n <- [kv, beam], Node.connect(n) != true, do: raise("cannot connect to #{n}")
    a = run(kv)
    b = run(beam)

    diffs = for {x, y} <- Enum.zip(a, b), x != y, do: {x, y}

    if diffs == [] do
      IO.puts("conformance: kvnode and the BEAM server agree on #{length(a)} checks")
    else
      IO.puts("conformance: #{length(diffs)} DIFFERENCES (kvnode vs BEAM):")
      for {x, y} <- diffs, do: IO.puts("  kvnode #{inspect(x)}\n  beam   #{inspect(y)}")
      System.halt(1)
    end
  end
end

Bench.Conformance.main(System.argv())
