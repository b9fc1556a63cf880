# The driver of scripts/soak (read that script first). Environment: KV_NODE (kvnode's node
# name), KV_PID (its OS pid, for /proc), SOAK_SECONDS, SOAK_COOKIE, ERL_EPMD_PORT; SOAK_DEBUG
# prints each churn round's subscription count. Standard library only. Prints a table of
# samples and a verdict; exits 1 on a leak.

defmodule Soak do
  @kvs DistributedExample.KVStore
  @keys 1_000
  @workers 8
  @mib 1024 * 1024

  def kvs, do: @kvs

  # ---- polling helper: the only way this script waits for a condition ----
  def until(what, fun, ms) do
    deadline = System.monotonic_time(:millisecond) + ms
    poll(what, fun, deadline, ms)
  end

  defp poll(what, fun, deadline, ms) do
    case fun.() do
      v when v not in [nil, false] ->
        v

      _ ->
        if System.monotonic_time(:millisecond) > deadline do
          raise "timed out after #{ms} ms waiting for #{what}"
        end

        Process.sleep(20)
        poll(what, fun, deadline, ms)
    end
  end

  # ---- samples ----
  def sample(kv, kv_pid, phase, t0, calls, rounds) do
    info =
      case :rpc.call(kv, :kvnode, :info, [], 10_000) do
        %{} = m -> m
        other -> raise "kvnode:info failed: #{inspect(other)}"
      end

    status = File.read!("/proc/#{kv_pid}/status")

    kib = fn field ->
      String.to_integer(Regex.run(~r/#{field}:\s+(\d+) kB/, status) |> List.last())
    end

    fds = length(File.ls!("/proc/#{kv_pid}/fd"))

    Map.merge(info, %{
      phase: phase,
      t: div(System.monotonic_time(:millisecond) - t0, 1000),
      vmrss: kib.("VmRSS") * 1024,
      vmhwm: kib.("VmHWM") * 1024,
      proc_fds: fds,
      calls: :counters.get(calls, 1),
      rounds: rounds
    })
  end

  def header do
    IO.puts(
      "| t (s) | phase | connections | monitors | subscriptions | keys | processes | open fds | RSS (MiB) | peak RSS (MiB) | calls | churn rounds |"
    )

    IO.puts("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
  end

  def row(s) do
    mib = fn b -> :erlang.float_to_binary(b / @mib, decimals: 1) end

    IO.puts(
      "| #{s.t} | #{s.phase} | #{s.connections} | #{s.monitors} | #{s.subscriptions} | #{s.keys} | #{s.processes} | #{s.open_fds} | #{mib.(s.vmrss)} | #{mib.(s.vmhwm)} | #{s.calls} | #{s.rounds} |"
    )
  end

  # ---- long-lived clients on the driver ----
  def start_workers(kv, calls) do
    for i <- 1..@workers do
      spawn_link(fn ->
        :rand.seed(:exsss, {i, 42, 7})
        worker(kv, calls, MapSet.new())
      end)
    end
  end

  defp worker(kv, calls, held) do
    flush_events()

    receive do
      {:stop, from} ->
        for k <- held, do: :ok = GenServer.call({@kvs, kv}, {:unsubscribe, k})
        flush_events()
        send(from, {:stopped, self()})
    after
      0 ->
        key = "k#{:rand.uniform(@keys) - 1}"
        holding = MapSet.size(held)

        held =
          case :rand.uniform(10) do
            n when n <= 4 ->
              GenServer.call({@kvs, kv}, {:get, key})
              held

            n when n <= 7 ->
              :ok =
                GenServer.call(
                  {@kvs, kv},
                  {:put, key, :crypto.strong_rand_bytes(:rand.uniform(200))}
                )

              held

            8 ->
              GenServer.call({@kvs, kv}, {:delete, key})
              held

            9 when holding < 5 ->
              :ok = GenServer.call({@kvs, kv}, {:subscribe, key})
              MapSet.put(held, key)

            _ ->
              case Enum.take(held, 1) do
                [k] ->
                  :ok = GenServer.call({@kvs, kv}, {:unsubscribe, k})
                  MapSet.delete(held, k)

                [] ->
                  held
              end
          end

        :counters.add(calls, 1, 1)
        # Rate limit (about 100 calls/s per worker), not a wait for a condition.
        Process.sleep(10)
        worker(kv, calls, held)
    end
  end

  defp flush_events do
    receive do
      {:kv_event, _, _} -> flush_events()
    after
      0 -> :ok
    end
  end

  # ---- churn nodes ----
  def start_churn(n, churn_bin) do
    cookie = String.to_charlist(System.fetch_env!("SOAK_COOKIE"))
    port = String.to_charlist(System.fetch_env!("ERL_EPMD_PORT"))
    ebin = :code.lib_dir(:elixir) |> Path.join("ebin") |> String.to_charlist()

    {:ok, peer, node} =
      :peer.start(%{
        name: ~c"soakc_#{System.pid()}_#{n}",
        host: ~c"127.0.0.1",
        longnames: true,
        args: [
          ~c"-setcookie",
          cookie,
          ~c"-epmd_port",
          port,
          ~c"-start_epmd",
          ~c"false",
          ~c"-pa",
          ebin
        ]
      })

    {:module, SoakChurn} =
      :erpc.call(node, :code, :load_binary, [SoakChurn, ~c"soak_churn", churn_bin])

    {peer, node}
  end
end

{:module, SoakChurn, churn_bin, _} =
  defmodule SoakChurn do
    @moduledoc "Runs on a churn node: one connect / subscribe / disconnect round."
    @kvs DistributedExample.KVStore

    def round(kv, n) do
      true = Node.connect(kv)
      parent = self()

      pids =
        for i <- 1..5 do
          spawn(fn ->
            key = "churn_#{i}"
            if i == 1, do: :ok = GenServer.call({@kvs, kv}, {:subscribe, :all})
            :ok = GenServer.call({@kvs, kv}, {:subscribe, key})
            :ok = GenServer.call({@kvs, kv}, {:put, key, n})

            receive do
              {:kv_event, ^key, {:put, ^n}} -> :ok
            after
              10_000 -> exit(:no_event)
            end

            send(parent, {:ready, self()})

            receive do
              :never -> :ok
            end
          end)
        end

      for p <- pids do
        receive do
          {:ready, ^p} -> :ok
        after
          15_000 -> raise "churn subscriber #{inspect(p)} not ready"
        end
      end

      subs = GenServer.call({@kvs, kv}, :subscribers)
      # The connection goes while the subscribers are alive: kvnode's node-down path must
      # drop their subscriptions and monitors.
      true = Node.disconnect(kv)
      for p <- pids, do: Process.exit(p, :kill)
      subs
    end
  end

kv = String.to_atom(System.fetch_env!("KV_NODE"))
kv_pid = System.fetch_env!("KV_PID")
seconds = String.to_integer(System.fetch_env!("SOAK_SECONDS"))
kvs = Soak.kvs()

Soak.until("a connection to #{kv}", fn -> Node.connect(kv) end, 30_000)
for i <- 0..999, do: :ok = GenServer.call({kvs, kv}, {:put, "k#{i}", i})

calls = :counters.new(1, [:write_concurrency])
t0 = System.monotonic_time(:millisecond)
base = Soak.sample(kv, kv_pid, "baseline", t0, calls, 0)
Soak.header()
Soak.row(base)

workers = Soak.start_workers(kv, calls)
churn = Soak.start_churn(0, churn_bin)
deadline = t0 + seconds * 1000

{churn, rounds, peak_subs} =
  Stream.iterate(0, &(&1 + 1))
  |> Enum.reduce_while({churn, 0, 0, t0 + 30_000}, fn _,
                                                      {{peer, node} = churn, rounds, peak,
                                                       next_sample} ->
    now = System.monotonic_time(:millisecond)

    if now >= deadline do
      {:halt, {churn, rounds, peak}}
    else
      started = now
      subs = :erpc.call(node, SoakChurn, :round, [kv, rounds], 30_000)

      if System.get_env("SOAK_DEBUG"),
        do: IO.puts(:stderr, "round #{rounds}: #{subs} subscriptions")

      rounds = rounds + 1

      churn =
        if rem(rounds, 30) == 0 do
          :ok = :peer.stop(peer)
          Soak.start_churn(rounds, churn_bin)
        else
          churn
        end

      next_sample =
        if System.monotonic_time(:millisecond) >= next_sample do
          Soak.row(Soak.sample(kv, kv_pid, "churn", t0, calls, rounds))
          next_sample + 30_000
        else
          next_sample
        end

      # One round per second: the rest of the second is idle time for the churn loop.
      left = 1000 - (System.monotonic_time(:millisecond) - started)
      if left > 0, do: Process.sleep(left)
      {:cont, {churn, rounds, max(peak, subs), next_sample}}
    end
  end)

# Stop the churn and the clients, then wait for kvnode to settle back.
{peer, _} = churn
:ok = :peer.stop(peer)
for w <- workers, do: send(w, {:stop, self()})

for w <- workers do
  receive do
    {:stopped, ^w} -> :ok
  after
    30_000 -> raise "worker #{inspect(w)} did not stop"
  end
end

settled =
  try do
    Soak.until(
      "kvnode's connections, monitors and subscriptions to return to the baseline",
      fn ->
        s = Soak.sample(kv, kv_pid, "end", t0, calls, rounds)

        s.connections == base.connections and s.monitors == base.monitors and
          s.subscriptions == base.subscriptions and s
      end,
      30_000
    )
  rescue
    e in RuntimeError ->
      IO.puts("did not settle: #{e.message}")
      Soak.sample(kv, kv_pid, "end", t0, calls, rounds)
  end

Soak.row(settled)

mib = 1024 * 1024
rss_allowed = base.vmrss + max(16 * mib, div(base.vmrss, 4))

failures =
  [
    {settled.connections != base.connections,
     "connections #{settled.connections} != baseline #{base.connections}"},
    {settled.monitors != base.monitors,
     "monitors #{settled.monitors} != baseline #{base.monitors}"},
    {settled.subscriptions != base.subscriptions,
     "subscriptions #{settled.subscriptions} != baseline #{base.subscriptions}"},
    {settled.open_fds > base.open_fds + 5,
     "open fds #{settled.open_fds} > baseline #{base.open_fds} + 5"},
    {settled.vmrss > rss_allowed,
     "RSS #{settled.vmrss} > baseline #{base.vmrss} + max(16 MiB, 25%) = #{rss_allowed}"},
    {rounds < div(seconds, 2), "only #{rounds} churn rounds in #{seconds} s"},
    {peak_subs < 6, "churn rounds never held their subscriptions (peak #{peak_subs})"}
  ]
  |> Enum.filter(&elem(&1, 0))
  |> Enum.map(&elem(&1, 1))

summary =
  "#{seconds} s, #{settled.calls} calls, #{rounds} connect/disconnect rounds " <>
    "(peak #{peak_subs} subscriptions in a round), " <>
    "RSS #{Float.round(base.vmrss / mib, 1)} -> #{Float.round(settled.vmrss / mib, 1)} MiB " <>
    "(peak #{Float.round(settled.vmhwm / mib, 1)}), fds #{base.open_fds} -> #{settled.open_fds}"

case failures do
  [] ->
    IO.puts("VERDICT: PASS: #{summary}")

  _ ->
    IO.puts("VERDICT: FAIL: #{Enum.join(failures, "; ")} (#{summary})")
    System.halt(1)
end