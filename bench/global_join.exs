# Driver of scripts/bench-global-join (node A). Usage:
#   elixir --name A --cookie C bench/global_join.exs KVNODE_BIN ROUNDS B_NODE TAG
# A is connected to B (so A's `global` locker knows one node, as on any real cluster). Each round
# starts a fresh newcomer (kvnode --visible, or a BEAM node), connects A to it, times the first
# and second `:global.sync()` on A, then kills the newcomer by OS pid and waits until A and B no
# longer list it. Kinds alternate round by round. Prints one line per kind with every round's
# first-sync time, the median, and the second-sync median.
[bin, rounds, b, tag] = System.argv()
rounds = String.to_integer(rounds)
b = String.to_atom(b)
cookie = Atom.to_string(Node.get_cookie())
elixir = System.find_executable("elixir")

defmodule Poll do
  def until(what, f, deadline_ms \\ 30_000) do
    deadline = System.monotonic_time(:millisecond) + deadline_ms
    loop(what, f, deadline)
  end

  defp loop(what, f, deadline) do
    cond do
      f.() ->
        :ok

      System.monotonic_time(:millisecond) > deadline ->
        raise "timed out waiting for #{what}"

      true ->
        Process.sleep(20)
        loop(what, f, deadline)
    end
  end
end

# A's own warnings (global's "requested disconnect ... overlapping partitions" after each kill)
# are expected here and would bury the result lines.
Logger.configure(level: :error)
Poll.until("B", fn -> Node.connect(b) end)
:ok = :global.sync()

round = fn kind, i ->
  name = "gjn_#{kind}_#{i}_#{tag}"
  node = :"#{name}@127.0.0.1"

  {exe, args} =
    case kind do
      :kvnode -> {bin, ["--name", "#{node}", "--cookie", cookie, "--visible"]}
      :beam -> {elixir, ["--name", "#{node}", "--cookie", cookie, "-e", "Process.sleep(:infinity)"]}
    end

  # Through `sh -c exec` so the newcomer's stderr goes to /dev/null (a BEAM killed with -9
  # leaves erl_child_setup complaining) while the OS pid stays the newcomer's own.
  port =
    Port.open({:spawn_executable, "/bin/sh"}, [
      :nouse_stdio,
      args: ["-c", ~s(exec "$0" "$@" 2>/dev/null), exe | args],
      env: [{~c"RUST_LOG", ~c"error"}]
    ])
  {:os_pid, os_pid} = Port.info(port, :os_pid)
  Poll.until("#{node} up", fn -> Node.connect(node) end)
  {us1, :ok} = :timer.tc(fn -> :global.sync() end)
  {us2, :ok} = :timer.tc(fn -> :global.sync() end)
  System.cmd("kill", ["-9", Integer.to_string(os_pid)])

  Poll.until("#{node} gone", fn ->
    node not in Node.list() and node not in :erpc.call(b, Node, :list, [])
  end)

  {us1, us2}
end

results =
  for i <- 1..rounds, kind <- [:kvnode, :beam], reduce: %{kvnode: [], beam: []} do
    acc -> Map.update!(acc, kind, &[round.(kind, i) | &1])
  end

median = fn xs ->
  s = Enum.sort(xs)
  Enum.at(s, div(length(s), 2))
end

for kind <- [:kvnode, :beam] do
  rs = Enum.reverse(results[kind])
  firsts = Enum.map(rs, fn {a, _} -> Float.round(a / 1000, 1) end)
  seconds = Enum.map(rs, fn {_, b} -> Float.round(b / 1000, 2) end)

  IO.puts(
    "#{kind}: first :global.sync() ms #{inspect(firsts)}; median #{median.(firsts)} ms; " <>
      "second sync median #{median.(seconds)} ms"
  )
end
