# The load generator of scripts/bench (standard library only). One invocation measures one
# cell against one server and appends one result (an Erlang term) to --out:
#
#   elixir --name load_1@127.0.0.1 --cookie C --hidden --erl "-epmd_port P -start_epmd false" \
#     bench/load.exs --target kv@127.0.0.1 --server kvnode --server-pid 1234 --cell get64 \
#     --duration 5 --out results.terms
#
# Closed-loop callers: each process does GenServer.call({DistributedExample.KVStore, target},
# req) in a loop; per-call latency is taken with :erlang.monotonic_time (native units) and kept
# in a log-linear histogram (:counters, ~3% resolution). Only calls *started* inside the timed
# window are counted. The server's CPU is the utime+stime delta of /proc/<server-pid>/stat over
# the window; its RSS is VmRSS of /proc/<server-pid>/status at the end. The `scale<N>` cells run
# the callers on N extra client nodes (:peer), each with its own connection to the server.

{:module, _, load_bin, _} =
  defmodule Bench.Load do
  @name DistributedExample.KVStore
  @nb 1200
  @nkeys 10_000
  @small "value-0123456789"
  @mib 1_048_576
  @call_timeout 30_000
  @final_timeout 120_000

  def nkeys, do: @nkeys
  def small, do: @small
  def mib, do: @mib

  # ---- histogram (native time units, i.e. ns on Linux) -----------------------------------

  def bucket(v) when v < 64, do: max(v, 0)
  def bucket(v), do: bucket(v, 0)
  defp bucket(v, shift) when v < 64, do: min(64 + (shift - 1) * 32 + (v - 32), @nb - 1)
  defp bucket(v, shift), do: bucket(Bitwise.bsr(v, 1), shift + 1)

  # Midpoint of a bucket, native units.
  def bucket_value(b) when b < 64, do: b

  def bucket_value(b) do
    shift = div(b - 64, 32) + 1
    m = rem(b - 64, 32) + 32
    Bitwise.bsl(m, shift) + div(Bitwise.bsl(1, shift), 2)
  end

  def merge_hists([h]), do: h
  def merge_hists([h | t]), do: Enum.zip_with(h, merge_hists(t), &(&1 + &2))

  def percentile(hist, p) do
    total = Enum.sum(hist)

    if total == 0 do
      nil
    else
      want = max(1, ceil(total * p))

      {b, _} =
        hist
        |> Enum.with_index()
        |> Enum.reduce_while(0, fn {c, i}, acc ->
          if acc + c >= want, do: {:halt, {i, acc}}, else: {:cont, acc + c}
        end)

      System.convert_time_unit(bucket_value(b), :native, :nanosecond) / 1000
    end
  end

  # ---- one client node: runs groups of processes, returns counts and the histogram --------

  # opts: %{target, groups: [{kind, n}], t0: system_time (native), tend: system_time,
  #         warm: bool}. Returns %{hist, ops: %{kind => n}, errors, first_error, done: sys_time}
  def run(opts) do
    ctr = :counters.new(@nb, [:write_concurrency])
    off = :erlang.time_offset()
    t0 = opts.t0 - off
    tend = opts.tend - off
    parent = self()
    big = :binary.copy(<<7>>, @mib)

    procs =
      for {kind, n} <- opts.groups, i <- 1..n//1 do
        ctx = %{
          target: opts.target,
          kind: kind,
          idx: i,
          n: n,
          t0: t0,
          tend: tend,
          ctr: ctr,
          big: big,
          load_keys: Map.get(opts, :load_keys, 0)
        }

        {pid, ref} = spawn_monitor(fn -> send(parent, {:done, self(), worker(ctx)}) end)
        {pid, ref, kind}
      end

    results =
      for {pid, ref, kind} <- procs do
        receive do
          {:done, ^pid, r} ->
            Process.demonitor(ref, [:flush])
            Map.put(r, :kind, kind)

          {:DOWN, ^ref, :process, ^pid, reason} ->
            %{kind: kind, ops: 0, errors: 1, first_error: {:worker_crashed, reason}}
        end
      end

    done = :erlang.system_time()

    ops =
      Enum.reduce(results, %{}, fn r, acc -> Map.update(acc, r.kind, r.ops, &(&1 + r.ops)) end)

    errors = Enum.sum(Enum.map(results, & &1.errors))
    first_error = Enum.find_value(results, fn r -> Map.get(r, :first_error) end)
    hist = for i <- 1..@nb, do: :counters.get(ctr, i)
    %{hist: hist, ops: ops, errors: errors, first_error: first_error, done: done}
  end

  defp worker(%{kind: kind} = c) when kind in [:cast, :load] do
    sleep_until(c.t0)
    dest = {@name, c.target}

    ops =
      case kind do
        :cast -> cast_loop(dest, c.tend, 0)
        :load -> load_loop(dest, c.idx, c.n, c.load_keys, 0)
      end

    # One call from the same process: it returns after every cast above was processed.
    case safe_call(dest, :size, @final_timeout) do
      {:ok, _} -> %{ops: ops, errors: 0}
      {:error, e} -> %{ops: ops, errors: 1, first_error: {:final_call, e}}
    end
  end

  defp worker(c) do
    call_loop(c, {@name, c.target}, 0, 0, nil)
  end

  defp cast_loop(dest, tend, n) do
    # Check the clock every 64 casts.
    for _ <- 1..64 do
      GenServer.cast(dest, {:put, {:k, :rand.uniform(@nkeys)}, @small})
    end

    n = n + 64
    if :erlang.monotonic_time() < tend, do: cast_loop(dest, tend, n), else: n
  end

  defp load_loop(dest, i, step, max, n) when i <= max do
    GenServer.cast(dest, {:put, {:k, i}, @small})
    load_loop(dest, i + step, step, max, n + 1)
  end

  defp load_loop(_dest, _i, _step, _max, n), do: n

  defp call_loop(c, dest, ops, errors, first_error) do
    req = request(c)
    s = :erlang.monotonic_time()
    r = safe_call(dest, req, @call_timeout)
    e = :erlang.monotonic_time()

    {ops, errors, first_error} =
      if s >= c.t0 do
        if c.kind in [:get, :put, :mixed, :big], do: :counters.add(c.ctr, bucket(e - s) + 1, 1)

        case r do
          {:ok, _} -> {ops + 1, errors, first_error}
          {:error, why} -> {ops, errors + 1, first_error || {req_name(req), why}}
        end
      else
        {ops, errors, first_error}
      end

    if e < c.tend do
      # Back off a little after an error so a dead server does not spin the client.
      if match?({:error, _}, r), do: Process.sleep(10)
      call_loop(c, dest, ops, errors, first_error)
    else
      %{ops: ops, errors: errors, first_error: first_error}
    end
  end

  defp req_name(req) when is_tuple(req), do: elem(req, 0)
  defp req_name(req), do: req

  defp request(%{kind: :get}), do: {:get, {:k, :rand.uniform(@nkeys)}}
  defp request(%{kind: :put}), do: {:put, {:k, :rand.uniform(@nkeys)}, @small}

  defp request(%{kind: :mixed}) do
    if :rand.uniform(10) == 1,
      do: {:put, {:k, :rand.uniform(@nkeys)}, @small},
      else: {:get, {:k, :rand.uniform(@nkeys)}}
  end

  # big8: each caller alternates a put of 1 MiB and a get of it back.
  defp request(%{kind: :big, idx: i} = c) do
    if :erlang.get(:big_turn) == :get do
      :erlang.put(:big_turn, :put)
      {:get, {:big, i}}
    else
      :erlang.put(:big_turn, :get)
      {:put, {:big, i}, c.big}
    end
  end

  defp request(%{kind: :bigput, idx: i} = c), do: {:put, {:bigput, i}, c.big}

  def safe_call(dest, req, timeout) do
    {:ok, GenServer.call(dest, req, timeout)}
  catch
    :exit, reason -> {:error, short_reason(reason)}
  end

  defp short_reason({reason, {GenServer, :call, _}}), do: reason
  defp short_reason(reason), do: reason

  def sleep_until(mono) do
    ms = System.convert_time_unit(mono - :erlang.monotonic_time(), :native, :millisecond)
    if ms > 0, do: Process.sleep(ms)
  end

  # ---- /proc -------------------------------------------------------------------------------

  # utime + stime in clock ticks, or nil if the process is gone.
  def cpu_ticks(pid) do
    case File.read("/proc/#{pid}/stat") do
      {:ok, s} ->
        # The command name (field 2) may contain spaces; fields after ")" are fixed.
        [_, rest] = String.split(s, ") ", parts: 2)
        f = String.split(rest, " ")
        String.to_integer(Enum.at(f, 11)) + String.to_integer(Enum.at(f, 12))

      _ ->
        nil
    end
  end

  # {busy, total} jiffies of the whole machine (all cores), from /proc/stat.
  def machine_ticks do
    case File.read("/proc/stat") do
      {:ok, s} ->
        ["cpu" | f] = s |> String.split("\n") |> hd() |> String.split()
        v = Enum.map(f, &String.to_integer/1)
        # user nice system idle iowait irq softirq steal (guest is already in user)
        [_u, _n, _s, idle, iowait | _] = v
        total = v |> Enum.take(8) |> Enum.sum()
        {total - idle - iowait, total}

      _ ->
        nil
    end
  end

  # utime + stime of every user-space process (not kernel threads) except `except`:
  # %{pid => ticks}. What other processes on the machine used during a window (noise).
  def others_ticks(except) do
    case File.ls("/proc") do
      {:ok, names} ->
        for name <- names, Integer.parse(name) != :error, pid = String.to_integer(name),
            pid not in except, pid != 2, t = user_ticks(pid), into: %{}, do: {pid, t}

      _ ->
        %{}
    end
  end

  defp user_ticks(pid) do
    with {:ok, s} <- File.read("/proc/#{pid}/stat"),
         [_, rest] <- String.split(s, ") ", parts: 2),
         f = String.split(rest, " "),
         ppid when ppid != "2" <- Enum.at(f, 1) do
      String.to_integer(Enum.at(f, 11)) + String.to_integer(Enum.at(f, 12))
    else
      _ -> nil
    end
  end

  def others_delta(a, b) do
    Enum.reduce(b, 0, fn {pid, t}, acc -> acc + max(t - Map.get(a, pid, 0), 0) end)
  end

  def rss_kb(pid) do
    case File.read("/proc/#{pid}/status") do
      {:ok, s} ->
        case Regex.run(~r/VmRSS:\s+(\d+)/, s) do
          [_, kb] -> String.to_integer(kb)
          _ -> nil
        end

      _ ->
        nil
    end
  end
end

defmodule Bench.Main do
  alias Bench.Load

  @switches [
    target: :string,
    server: :string,
    server_pid: :integer,
    cell: :string,
    duration: :float,
    run: :integer,
    out: :string,
    epmd_port: :integer,
    cookie: :string,
    clk_tck: :integer
  ]

  def main(argv, mod_bin) do
    {o, _, bad} = OptionParser.parse(argv, strict: @switches)
    if bad != [], do: die("bad arguments: #{inspect(bad)}")
    for k <- [:target, :server, :server_pid, :cell, :out], o[k] == nil, do: die("missing --#{k}")

    target = String.to_atom(o[:target])
    duration = o[:duration] || 5.0
    cell = o[:cell]
    spid = o[:server_pid]
    clk = o[:clk_tck] || 100

    unless Node.connect(target) == true,
      do: die("cannot connect to #{target} (is it running? same cookie and EPMD port?)")

    spec = cell_spec(cell)
    nodes = start_clients(spec, o, mod_bin, target)

    try do
      if spec.preload, do: preload(target)
      measure(cell, spec, nodes, target, spid, duration, clk, o)
    after
      for {:peer, p, _} <- nodes, do: :peer.stop(p)
    end
  end

  defp die(msg) do
    IO.puts(:stderr, "load.exs: " <> msg)
    System.halt(3)
  end

  # groups per client node; warm: warm-up before the window; peers: how many client nodes (0 =
  # this node)
  defp cell_spec("get1"), do: %{groups: [{:get, 1}], warm: true, peers: 0, preload: true}
  defp cell_spec("get64"), do: %{groups: [{:get, 64}], warm: true, peers: 0, preload: true}
  defp cell_spec("put64"), do: %{groups: [{:put, 64}], warm: true, peers: 0, preload: true}
  defp cell_spec("mixed64"), do: %{groups: [{:mixed, 64}], warm: true, peers: 0, preload: true}
  defp cell_spec("cast64"), do: %{groups: [{:cast, 64}], warm: false, peers: 0, preload: true}
  defp cell_spec("big8"), do: %{groups: [{:big, 8}], warm: true, peers: 0, preload: false}

  defp cell_spec("bigmix"),
    do: %{groups: [{:bigput, 4}, {:get, 4}], warm: true, peers: 0, preload: true}

  defp cell_spec("load1m"),
    do: %{groups: [{:load, 4}], warm: false, peers: 0, preload: false, load_keys: 1_000_000}

  defp cell_spec("scale" <> n) do
    case Integer.parse(n) do
      {k, ""} when k in [1, 2, 4, 8] ->
        %{groups: [{:get, div(64, k)}], warm: true, peers: k, preload: true}

      _ ->
        die("unknown cell scale#{n} (scale1, scale2, scale4, scale8)")
    end
  end

  defp cell_spec(c), do: die("unknown cell #{inspect(c)}")

  defp start_clients(%{peers: 0}, _o, _bin, _target), do: [{:local, node(), System.pid()}]

  defp start_clients(%{peers: k}, o, {mod, bin}, target) do
    elixir_ebin = :code.lib_dir(:elixir, :ebin)
    base = node() |> Atom.to_string() |> String.split("@") |> hd()

    args =
      [~c"-hidden", ~c"-setcookie", String.to_charlist(o[:cookie] || "")] ++
        if(o[:epmd_port],
          do: [~c"-epmd_port", ~c"#{o[:epmd_port]}", ~c"-start_epmd", ~c"false"],
          else: []
        ) ++ [~c"-pa", elixir_ebin]

    for i <- 1..k do
      {:ok, p, n} =
        :peer.start(%{
          name: String.to_atom("#{base}_c#{i}"),
          host: ~c"127.0.0.1",
          longnames: true,
          args: args,
          wait_boot: 30_000
        })

      {:module, ^mod} = :erpc.call(n, :code, :load_binary, [mod, ~c"load.exs", bin])
      true = :erpc.call(n, Node, :connect, [target])
      {:peer, p, n}
    end
  end

  defp preload(target) do
    dest = {DistributedExample.KVStore, target}
    for i <- 1..Load.nkeys(), do: GenServer.cast(dest, {:put, {:k, i}, Load.small()})
    _ = GenServer.call(dest, :size, 60_000)
  end

  defp measure(cell, spec, nodes, target, spid, duration, clk, o) do
    now = :erlang.system_time()
    native = fn ms -> System.convert_time_unit(round(ms), :millisecond, :native) end
    warm_ms = if spec.warm, do: min(1000, duration * 100), else: 0
    t0 = now + native.(300 + warm_ms)
    tend = t0 + native.(duration * 1000)

    opts = %{
      target: target,
      groups: spec.groups,
      t0: t0,
      tend: tend,
      load_keys: Map.get(spec, :load_keys, 0)
    }

    client_pids =
      for {_, _, n} = c <- nodes do
        case c do
          {:local, _, p} -> p
          {:peer, _, _} -> :erpc.call(n, System, :pid, [])
        end
      end

    tasks =
      for {kind, _, n} <- nodes do
        Task.async(fn ->
          if kind == :local,
            do: Load.run(opts),
            else: :erpc.call(n, Load, :run, [opts], :infinity)
        end)
      end

    Load.sleep_until(t0 - :erlang.time_offset())
    c0 = Load.cpu_ticks(spid)
    cc0 = Enum.map(client_pids, &Load.cpu_ticks/1)
    m0 = Load.machine_ticks()
    except = [spid, String.to_integer(System.pid()) | Enum.map(client_pids, &String.to_integer/1)]
    o0 = Load.others_ticks(except)
    w0 = :erlang.monotonic_time()
    results = Task.await_many(tasks, :infinity)
    w1 = :erlang.monotonic_time()
    c1 = Load.cpu_ticks(spid)
    cc1 = Enum.map(client_pids, &Load.cpu_ticks/1)
    m1 = Load.machine_ticks()
    o1 = Load.others_ticks(except)

    # The window: from t0 to when the last client finished (its last call returned).
    elapsed = System.convert_time_unit(w1 - w0, :native, :microsecond) / 1.0e6
    hist = Load.merge_hists(Enum.map(results, & &1.hist))

    ops =
      Enum.reduce(results, %{}, fn r, acc -> Map.merge(acc, r.ops, fn _, a, b -> a + b end) end)

    errors = Enum.sum(Enum.map(results, & &1.errors))
    first_error = Enum.find_value(results, & &1.first_error)

    # The main count: small gets in bigmix, every call/cast otherwise.
    main_ops =
      case cell do
        "bigmix" -> Map.get(ops, :get, 0)
        _ -> ops |> Map.values() |> Enum.sum()
      end

    us_per_tick = 1.0e6 / clk
    server_cpu_us = if c0 && c1, do: (c1 - c0) * us_per_tick, else: nil

    client_cpu_us =
      Enum.zip(cc0, cc1)
      |> Enum.map(fn {a, b} -> if a && b, do: b - a, else: 0 end)
      |> Enum.sum()
      |> Kernel.*(us_per_tick)

    rss = Load.rss_kb(spid)
    # The cores /proc/stat sums over.
    cores =
      case File.read("/proc/stat") do
        {:ok, st} -> length(Regex.scan(~r/^cpu\d+ /m, st))
        _ -> 1
      end

    # Whole-machine CPU over the window, in % of one core (up to 100 × cores); what neither the
    # server nor the load nodes used is other processes' (noise).
    machine_pct =
      case {m0, m1} do
        {{b0, t0}, {b1, t1}} when t1 > t0 -> Float.round((b1 - b0) / (t1 - t0) * 100 * cores, 1)
        _ -> nil
      end

    size =
      case Load.safe_call({DistributedExample.KVStore, target}, :size, 60_000) do
        {:ok, n} -> n
        {:error, e} -> {:error, e}
      end

    p50 = Load.percentile(hist, 0.50)
    p99 = Load.percentile(hist, 0.99)

    r = %{
      cell: cell,
      server: o[:server],
      run: o[:run] || 1,
      duration_s: Float.round(elapsed, 3),
      ops: main_ops,
      ops_by_kind: ops,
      ops_per_s: round(main_ops / elapsed),
      p50_us: p50 && Float.round(p50, 1),
      p99_us: p99 && Float.round(p99, 1),
      cpu_us_per_op:
        if(server_cpu_us && main_ops > 0, do: Float.round(server_cpu_us / main_ops, 2)),
      server_cpu_pct: server_cpu_us && Float.round(server_cpu_us / elapsed / 1.0e4, 1),
      client_cpu_pct: Float.round(client_cpu_us / elapsed / 1.0e4, 1),
      machine_cpu_pct: machine_pct,
      other_cpu_pct: Float.round(Load.others_delta(o0, o1) * us_per_tick / elapsed / 1.0e4, 1),
      cores: cores,
      client_nodes: length(nodes),
      rss_mb: rss && Float.round(rss / 1024, 1),
      size: size,
      errors: errors,
      first_error: first_error && inspect(first_error, limit: 10, printable_limit: 200)
    }

    r =
      case cell do
        "big8" ->
          Map.put(r, :mib_per_s, Float.round(main_ops / elapsed, 1))

        "bigmix" ->
          Map.put(r, :put_mib_per_s, Float.round(Map.get(ops, :bigput, 0) / elapsed, 1))

        _ ->
          r
      end

    File.write!(o[:out], :io_lib.format(~c"~p.~n", [r]), [:append])

    IO.puts(
      :stderr,
      "  #{cell} #{o[:server]} run #{r.run}: #{r.ops_per_s} ops/s p50 #{p50 && round(p50)} " <>
        "p99 #{p99 && round(p99)} us, server CPU #{r.cpu_us_per_op} us/op " <>
        "(#{r.server_cpu_pct}%; clients #{r.client_cpu_pct}%, machine #{machine_pct}% of " <>
        "#{cores * 100}%, other processes #{r.other_cpu_pct}%), RSS #{r.rss_mb} MB" <>
        if(errors > 0, do: ", #{errors} ERRORS (first: #{r.first_error})", else: "")
    )
  end
end

Bench.Main.main(System.argv(), {Bench.Load, load_bin})
