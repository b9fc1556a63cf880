# Turns the per-run results of scripts/bench (Erlang terms, one map per cell × server × run, as
# written by bench/load.exs) into the Markdown tables, the target check and one JSON line per
# cell and server. Standard library only.
#
#   elixir bench/report.exs --in results.terms --jsonl bench/results/DATE.jsonl

defmodule Bench.Report do
  @cells ~w(get1 get64 put64 mixed64 cast64 big8 bigmix load1m scale1 scale2 scale4 scale8)
  @servers ["kvnode", "beam"]

  @labels %{
    "get1" => {"call get", "1", "ops/s"},
    "get64" => {"call get", "64", "ops/s"},
    "put64" => {"call put", "64", "ops/s"},
    "mixed64" => {"90% get / 10% put", "64", "ops/s"},
    "cast64" => {"cast put (then one call)", "64", "casts/s"},
    "big8" => {"call put/get of 1 MiB", "8", "MiB/s"},
    "bigmix" => {"small gets while 1 MiB puts flow (1 node)", "4+4", "gets/s"},
    "load1m" => {"load 1,000,000 keys by cast", "4", "keys/s"}
  }

  def main(argv) do
    {o, _, _} = OptionParser.parse(argv, strict: [in: :string, jsonl: :string, note: :string])

    rows =
      case :file.consult(String.to_charlist(o[:in])) do
        {:ok, rows} -> rows
        {:error, e} -> raise "cannot read #{o[:in]}: #{inspect(e)}"
      end

    by = Enum.group_by(rows, &{to_string(&1.cell), to_string(&1.server)})
    cells = Enum.filter(@cells, fn c -> Enum.any?(@servers, &Map.has_key?(by, {c, &1})) end)
    agg = for c <- cells, s <- @servers, into: %{}, do: {{c, s}, aggregate(Map.get(by, {c, s}, []))}

    if o[:note], do: IO.puts(o[:note] <> "\n")
    main_table(cells, agg)
    extras(cells, agg)
    scale_table(cells, agg)
    targets(cells, agg)
    problems(cells, by, agg)
    json(cells, by, agg, o[:jsonl])
  end

  # ---- aggregation --------------------------------------------------------------------------

  @fields [:ops_per_s, :p50_us, :p99_us, :cpu_us_per_op, :server_cpu_pct, :client_cpu_pct,
           :machine_cpu_pct, :other_cpu_pct,
           :rss_mb, :mib_per_s, :put_mib_per_s, :duration_s]

  defp aggregate(runs) do
    ok = Enum.reject(runs, &Map.has_key?(&1, :failed))

    med =
      for f <- @fields, into: %{} do
        {f, median(for r <- ok, v = Map.get(r, f), is_number(v), do: v)}
      end

    med
    |> Map.put(:runs_ok, length(ok))
    |> Map.put(:runs_failed, length(runs) - length(ok))
    |> Map.put(:errors, Enum.sum(for r <- ok, do: Map.get(r, :errors, 0)))
    |> Map.put(:sizes, Enum.uniq(for r <- ok, do: Map.get(r, :size)))
  end

  defp median([]), do: nil

  defp median(l) do
    s = Enum.sort(l)
    n = length(s)
    if rem(n, 2) == 1, do: Enum.at(s, div(n, 2)), else: (Enum.at(s, div(n, 2) - 1) + Enum.at(s, div(n, 2))) / 2
  end

  # ---- formatting ---------------------------------------------------------------------------

  defp num(nil), do: "–"
  defp num(v) when is_float(v) and v >= 100, do: num(round(v))
  defp num(v) when is_float(v), do: :erlang.float_to_binary(v, decimals: if(v >= 10, do: 1, else: 2))

  defp num(v) when is_integer(v) do
    v
    |> Integer.to_string()
    |> String.reverse()
    |> String.replace(~r/(\d{3})(?=\d)/, "\\1,")
    |> String.reverse()
  end

  defp ratio(a, b) when is_number(a) and is_number(b) and b != 0,
    do: :erlang.float_to_binary(a / b, decimals: 2) <> "×"

  defp ratio(_, _), do: "–"

  defp pp(m), do: "#{num(m.p50_us)} / #{num(m.p99_us)}"

  defp rate(c, m), do: if(c == "big8", do: m.mib_per_s, else: m.ops_per_s)

  defp main_table(cells, agg) do
    IO.puts("| scenario | callers | unit | kvnode | BEAM | ratio | kvnode p50 / p99 µs | BEAM p50 / p99 µs | kvnode CPU µs/op | BEAM CPU µs/op | CPU ratio |")
    IO.puts("|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|")

    for c <- cells, Map.has_key?(@labels, c) do
      {label, callers, unit} = @labels[c]
      k = agg[{c, "kvnode"}]
      b = agg[{c, "beam"}]

      IO.puts(
        "| #{label} | #{callers} | #{unit} | #{num(rate(c, k))} | #{num(rate(c, b))} | " <>
          "#{ratio(rate(c, k), rate(c, b))} | #{pp(k)} | #{pp(b)} | #{num(k.cpu_us_per_op)} | " <>
          "#{num(b.cpu_us_per_op)} | #{ratio(k.cpu_us_per_op, b.cpu_us_per_op)} |"
      )
    end

    IO.puts("")
  end

  defp extras(cells, agg) do
    if "load1m" in cells do
      k = agg[{"load1m", "kvnode"}]
      b = agg[{"load1m", "beam"}]

      IO.puts(
        "Resident memory after 1,000,000 keys (fresh server each run): kvnode #{num(k.rss_mb)} MB, " <>
          "BEAM #{num(b.rss_mb)} MB, ratio #{ratio(k.rss_mb, b.rss_mb)}"
      )
    end

    if "bigmix" in cells do
      k = agg[{"bigmix", "kvnode"}]
      b = agg[{"bigmix", "beam"}]

      IO.puts(
        "bigmix 1 MiB puts alongside the small gets: kvnode #{num(k.put_mib_per_s)} MiB/s, " <>
          "BEAM #{num(b.put_mib_per_s)} MiB/s"
      )
    end

    rss =
      for c <- cells, c != "load1m", s <- @servers, m = agg[{c, s}], m.rss_mb, do: {s, m.rss_mb}

    if rss != [] do
      mx = fn s -> rss |> Enum.filter(&(elem(&1, 0) == s)) |> Enum.map(&elem(&1, 1)) |> Enum.max(fn -> nil end) end
      IO.puts("Largest server RSS seen in the other cells: kvnode #{num(mx.("kvnode"))} MB, BEAM #{num(mx.("beam"))} MB")
    end

    IO.puts("")
  end

  defp scale_table(cells, agg) do
    sc = Enum.filter(cells, &String.starts_with?(&1, "scale"))

    if sc != [] do
      IO.puts("Scaling: 64 `get` callers spread over N client nodes (one connection each)\n")
      IO.puts("| client nodes | kvnode ops/s | kvnode server CPU % | kvnode p99 µs | clients CPU % | BEAM ops/s | BEAM server CPU % | BEAM p99 µs | clients CPU % | ratio |")
      IO.puts("|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")

      for c <- sc do
        "scale" <> n = c
        k = agg[{c, "kvnode"}]
        b = agg[{c, "beam"}]

        IO.puts(
          "| #{n} | #{num(k.ops_per_s)} | #{num(k.server_cpu_pct)} | #{num(k.p99_us)} | " <>
            "#{num(k.client_cpu_pct)} | #{num(b.ops_per_s)} | #{num(b.server_cpu_pct)} | " <>
            "#{num(b.p99_us)} | #{num(b.client_cpu_pct)} | " <>
            "#{ratio(k.ops_per_s, b.ops_per_s)} |"
        )
      end

      IO.puts("\n(CPU % is of one core: above 100 means more than one core in use; clients CPU % is the load nodes' total, on the same machine)\n")
    end
  end

  # The issue's targets, kvnode vs BEAM, evaluated on the medians.
  defp targets(cells, agg) do
    g = fn c, s, f -> (m = agg[{c, s}]) && Map.get(m, f) end
    r = fn c, f ->
      k = g.(c, "kvnode", f)
      b = g.(c, "beam", f)
      if is_number(k) and is_number(b) and b != 0, do: k / b
    end

    checks =
      for(c <- ~w(get1 get64 put64 mixed64), c in cells, do: {"server CPU per call ≤ 0.25× BEAM (#{c})", r.(c, :cpu_us_per_op), &(&1 <= 0.25)}) ++
        for(c <- ~w(get64 put64 mixed64), c in cells, do: {"throughput ≥ 1.6× BEAM (#{c})", r.(c, :ops_per_s), &(&1 >= 1.6)}) ++
        for(c <- ~w(get64 put64 mixed64), c in cells, do: {"p99 ≤ 0.6× BEAM (#{c})", r.(c, :p99_us), &(&1 <= 0.6)}) ++
        if("get1" in cells, do: [{"one caller p50 ≤ 0.8× BEAM (get1)", r.("get1", :p50_us), &(&1 <= 0.8)}], else: []) ++
        if("cast64" in cells,
          do: [
            {"casts/s ≥ 1.3× BEAM (cast64)", r.("cast64", :ops_per_s), &(&1 >= 1.3)},
            {"server CPU per cast ≤ 1.8 µs (C node) (cast64), µs", g.("cast64", "kvnode", :cpu_us_per_op), &(&1 <= 1.8)}
          ],
          else: []
        ) ++
        if("big8" in cells, do: [{"1 MiB MiB/s ≥ 1.5× BEAM (big8)", r.("big8", :mib_per_s), &(&1 >= 1.5)}], else: []) ++
        if("bigmix" in cells, do: [{"small-get p99 during 1 MiB puts ≤ BEAM's (bigmix)", r.("bigmix", :p99_us), &(&1 <= 1.0)}], else: []) ++
        if("load1m" in cells,
          do: [
            {"RSS after 1M keys ≤ 0.2× BEAM (load1m)", r.("load1m", :rss_mb), &(&1 <= 0.2)},
            {"1M-key load rate ≥ 1.4× BEAM (load1m)", r.("load1m", :ops_per_s), &(&1 >= 1.4)}
          ],
          else: []
        ) ++
        for(c <- ~w(scale2 scale4), c in cells, do: {"kvnode uses > 1 core (#{c}), server CPU %", g.(c, "kvnode", :server_cpu_pct), &(&1 > 100)})

    if checks != [] do
      IO.puts("Targets (kvnode vs BEAM, on the medians):\n")
      IO.puts("| target | value | met |")
      IO.puts("|---|--:|:-:|")

      for {name, v, ok?} <- checks do
        {val, met} =
          if is_number(v) do
            {:erlang.float_to_binary(v / 1, decimals: 2), if(ok?.(v), do: "yes", else: "no")}
          else
            {"–", "?"}
          end

        IO.puts("| #{name} | #{val} | #{met} |")
      end

      IO.puts("")
    end
  end

  defp problems(cells, by, agg) do
    lines =
      for c <- cells, s <- @servers, m = agg[{c, s}], reduce: [] do
        acc ->
          runs = Map.get(by, {c, s}, [])
          failed = for r <- runs, Map.has_key?(r, :failed), do: "run #{r.run}: #{r.failed}"
          errs = for r <- runs, Map.get(r, :errors, 0) > 0, do: "run #{r.run}: #{r.errors} failed calls (first: #{r.first_error})"

          size =
            case {c, m.sizes} do
              {"load1m", sizes} when sizes not in [[], [1_000_000]] -> ["size after load: #{inspect(sizes)} (want 1,000,000)"]
              {_, sizes} -> for {:error, e} <- sizes, do: "final :size call failed: #{inspect(e)}"
            end

          acc ++ Enum.map(failed ++ errs ++ size, &"- #{c} #{s}: #{&1}")
      end

    noisy =
      for c <- cells, s <- @servers, r <- Map.get(by, {c, s}, []), is_number(Map.get(r, :other_cpu_pct)),
          r.other_cpu_pct > 25,
          do: "#{c} #{s} run #{r.run} (#{r.other_cpu_pct}%)"

    if noisy != [] do
      IO.puts(
        "Noise: other user-space processes on the machine used more than 25% of a core during " <>
          "#{length(noisy)} measurement(s): " <>
          Enum.join(noisy, ", ") <>
          ". (A busy machine also keeps idle cores awake, which makes single-caller latency look better.)\n"
      )
    end

    if lines != [] do
      IO.puts("PROBLEMS:\n")
      Enum.each(lines, &IO.puts/1)
      IO.puts("")
    end
  end

  # ---- JSON ---------------------------------------------------------------------------------

  defp json(cells, by, agg, path) do
    lines =
      for c <- cells, s <- @servers, runs = Map.get(by, {c, s}, []), runs != [] do
        m = agg[{c, s}]

        %{
          "cell" => c,
          "server" => s,
          "ops_per_s" => m.ops_per_s,
          "p50_us" => m.p50_us,
          "p99_us" => m.p99_us,
          "cpu_us_per_op" => m.cpu_us_per_op,
          "server_cpu_pct" => m.server_cpu_pct,
          "rss_mb" => m.rss_mb,
          "mib_per_s" => m.mib_per_s,
          "put_mib_per_s" => m.put_mib_per_s,
          "errors" => m.errors,
          "runs_failed" => m.runs_failed,
          "runs" => Enum.map(runs, &Map.drop(&1, [:cell, :server]))
        }
        |> Enum.reject(fn {_, v} -> v == nil end)
        |> Map.new()
        |> encode()
      end

    IO.puts("JSON (one line per cell and server):\n")
    Enum.each(lines, &IO.puts/1)

    if path do
      File.mkdir_p!(Path.dirname(path))
      File.write!(path, Enum.map(lines, &[&1, "\n"]))
      IO.puts("\n(also written to #{path})")
    end
  end

  # Keys in a fixed order: cell and server first.
  @first ["cell", "server", "ops_per_s", "p50_us", "p99_us", "cpu_us_per_op"]

  def encode(nil), do: "null"
  def encode(true), do: "true"
  def encode(false), do: "false"
  def encode(v) when is_atom(v), do: encode(Atom.to_string(v))
  def encode(v) when is_integer(v), do: Integer.to_string(v)
  def encode(v) when is_float(v), do: :erlang.float_to_binary(v, [:short])
  def encode(v) when is_binary(v), do: "\"" <> escape(v) <> "\""
  def encode(v) when is_list(v), do: "[" <> Enum.map_join(v, ",", &encode/1) <> "]"
  def encode(v) when is_tuple(v), do: encode(inspect(v))

  def encode(%{} = m) do
    keys = m |> Map.keys() |> Enum.map(&to_string/1)
    order = Enum.filter(@first, &(&1 in keys)) ++ Enum.sort(keys -- @first)
    get = fn k -> Map.get(m, k, Map.get(m, String.to_atom(k))) end
    "{" <> Enum.map_join(order, ",", &(encode(&1) <> ":" <> encode(get.(&1)))) <> "}"
  end

  defp escape(s) do
    for <<c::utf8 <- s>>, into: "" do
      case c do
        ?" -> "\\\""
        ?\\ -> "\\\\"
        c when c < 0x20 -> "\\u" <> String.pad_leading(Integer.to_string(c, 16), 4, "0")
        c -> <<c::utf8>>
      end
    end
  end
end

Bench.Report.main(System.argv())
