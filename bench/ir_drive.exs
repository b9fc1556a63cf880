# The load of one client node for scripts/bench-ir: connect to the kvnode (retrying while it
# starts under valgrind), preload 1,000 keys, then CALLERS processes each do OPS requests of
# KIND, and print "done". Counts are fixed (not timed): the instructions kvnode executes are
# what scripts/bench-ir measures.
#
#   elixir --name d@127.0.0.1 --cookie c --erl "-epmd_port P -start_epmd false" \
#     bench/ir_drive.exs NODE KIND CALLERS OPS
# KIND: get | put | mixed (9 gets, 1 put) | cast (then one call each) | big (put + get of 1 MiB)
[node, kind, callers, ops] = System.argv()
node = String.to_atom(node)
callers = String.to_integer(callers)
ops = String.to_integer(ops)
dest = {DistributedExample.KVStore, node}
deadline = System.monotonic_time(:millisecond) + 300_000

up? = fn ->
  Node.connect(node) == true and
    (try do
       GenServer.call(dest, {:get, :x}, 60_000)
       true
     catch
       _, _ -> false
     end)
end

wait = fn wait ->
  cond do
    up?.() -> :ok
    System.monotonic_time(:millisecond) > deadline -> raise "kvnode #{node} never answered"
    true -> Process.sleep(200); wait.(wait)
  end
end

wait.(wait)
small = "value-0123456789"
big = :binary.copy(<<7>>, 1_048_576)
for i <- 1..1000, do: GenServer.call(dest, {:put, {:k, i}, small}, 60_000)

1..callers
|> Enum.map(fn c ->
  Task.async(fn ->
    for i <- 1..ops do
      k = {:k, rem(c * 7919 + i, 1000) + 1}

      case kind do
        "get" -> GenServer.call(dest, {:get, k}, 120_000)
        "put" -> GenServer.call(dest, {:put, k, small}, 120_000)
        "mixed" when rem(i, 10) == 0 -> GenServer.call(dest, {:put, k, small}, 120_000)
        "mixed" -> GenServer.call(dest, {:get, k}, 120_000)
        "cast" -> GenServer.cast(dest, {:put, k, small})
        "big" ->
          :ok = GenServer.call(dest, {:put, {:big, c}, big}, 120_000)
          ^big = GenServer.call(dest, {:get, {:big, c}}, 120_000)
      end
    end

    if kind == "cast", do: GenServer.call(dest, {:get, :x}, 120_000)
  end)
end)
|> Enum.each(&Task.await(&1, :infinity))

IO.puts("done")
