defmodule KVClient.Test.Cluster do
  @moduledoc """
  Owns the external processes of the interop suite: an EPMD, one kvnode, and
  this VM's distribution.

  ## EPMD port

  OTP's `erl_epmd` reads its port only from the `-epmd_port` boot argument
  (which the `erl` launcher also derives from the `ERL_EPMD_PORT` environment
  variable at start-up); `System.put_env/2` inside a running VM changes
  nothing. So the suite uses the EPMD port this VM was booted with:

    * plain `mix test`: 4369, the standard port;
    * `ERL_EPMD_PORT=4400 mix test`: 4400, fully isolated from other nodes.

  If no EPMD answers on that port, the suite starts a standalone
  `epmd -port P` for the whole run (and stops it afterwards, unless other
  nodes registered with it meanwhile: then it is left running for them); if
  one answers (a system epmd, another run's), it is shared, which is safe
  because every node name is unique. A standalone EPMD rather than kvnode's
  embedded one keeps this VM's registration alive while the restart test
  stops kvnode: the registration lives only as long as the TCP connection to
  the EPMD (OTP 25's `erl_epmd` retries every 2 s after losing it).

  kvnode runs as `kvtest_<random>@127.0.0.1` with a random cookie, and this
  VM as `kvclient_test_<random>@127.0.0.1`.
  """

  use GenServer

  alias KVClient.Test.{OSProcess, Wait}

  @ready_timeout 30_000

  ## API

  @doc "Starts EPMD (if needed), kvnode and this VM's distribution; raises on failure."
  def start!(kvnode_bin) do
    case GenServer.start(__MODULE__, kvnode_bin, name: __MODULE__, timeout: :infinity) do
      {:ok, _pid} -> :ok
      {:error, reason} -> raise "cannot start the kvnode interop cluster:\n#{format(reason)}"
    end
  end

  defp format(reason) when is_binary(reason), do: reason
  defp format(reason), do: inspect(reason)

  @doc "The kvnode's node name."
  def kvnode, do: info().kvnode

  @doc "Name, cookie and EPMD port."
  def info, do: GenServer.call(__MODULE__, :info, :infinity)

  @doc "Stops kvnode with SIGTERM and waits until it has exited."
  def stop_kvnode, do: GenServer.call(__MODULE__, :stop_kvnode, :infinity)

  @doc "Starts kvnode again with the same name, cookie and EPMD port."
  def start_kvnode, do: GenServer.call(__MODULE__, :start_kvnode, :infinity)

  @doc "Stops everything (kvnode, our EPMD, distribution)."
  def shutdown do
    if Process.whereis(__MODULE__), do: GenServer.stop(__MODULE__, :normal, :infinity)
    :ok
  end

  ## Server

  @impl true
  def init(bin) do
    Process.flag(:trap_exit, true)
    suffix = random_token(8)

    state = %{
      bin: bin,
      epmd_port: vm_epmd_port(),
      epmd: nil,
      kv: nil,
      kvnode: :"kvtest_#{suffix}@127.0.0.1",
      cookie: String.upcase(random_token(20)),
      self_name: :"kvclient_test_#{suffix}@127.0.0.1"
    }

    with {:ok, state} <- ensure_epmd(state),
         {:ok, state} <- start_kv(state),
         :ok <- start_distribution(state) do
      {:ok, state}
    else
      {:error, reason, state} ->
        cleanup(state)
        {:stop, reason}
    end
  end

  @impl true
  def handle_call(:info, _from, state) do
    {:reply, Map.take(state, [:kvnode, :cookie, :epmd_port, :self_name, :bin]), state}
  end

  def handle_call(:stop_kvnode, _from, state) do
    status = if state.kv, do: OSProcess.stop(state.kv), else: :not_running
    {:reply, status, %{state | kv: nil}}
  end

  def handle_call(:start_kvnode, _from, %{kv: nil} = state) do
    case start_kv(state) do
      {:ok, state} -> {:reply, :ok, state}
      {:error, reason, state} -> {:reply, {:error, reason}, state}
    end
  end

  @impl true
  def handle_info({port, {:data, {_eol, line}}}, state) do
    cond do
      state.kv && state.kv.port == port ->
        {:noreply, %{state | kv: OSProcess.record(state.kv, line)}}

      state.epmd && state.epmd.port == port ->
        {:noreply, state}

      true ->
        {:noreply, state}
    end
  end

  def handle_info({port, {:exit_status, status}}, state) do
    cond do
      state.kv && state.kv.port == port ->
        IO.puts(:stderr, "kvnode exited unexpectedly (#{status}):\n#{OSProcess.output(state.kv)}")
        {:noreply, %{state | kv: nil}}

      state.epmd && state.epmd.port == port ->
        IO.puts(:stderr, "our epmd exited unexpectedly (#{status})")
        {:noreply, %{state | epmd: nil}}

      true ->
        {:noreply, state}
    end
  end

  def handle_info(_other, state), do: {:noreply, state}

  @impl true
  def terminate(_reason, state), do: cleanup(state)

  defp cleanup(state) do
    if state.kv, do: OSProcess.stop(state.kv)
    if Node.alive?(), do: Node.stop()
    if state.epmd, do: stop_epmd(state)
    :ok
  end

  # Our EPMD may have been adopted by other nodes meanwhile (say, a second
  # `mix test` sharing port 4369). Killing it would unregister them, so leave
  # it running for them, as `erl -name` leaves its `epmd -daemon`.
  defp stop_epmd(state) do
    ours = [state.kvnode, state.self_name] |> Enum.map(&(&1 |> Atom.to_string() |> alive_part()))

    # Our own registrations go away asynchronously once their connections close.
    names = fn ->
      case epmd_names(state.epmd_port) do
        {:ok, names} -> names
        :error -> []
      end
    end

    Wait.until(fn -> not Enum.any?(ours, &(&1 in names.())) end, timeout: 1_000, raise: false)
    foreign = names.() -- ours

    if foreign == [] do
      OSProcess.stop(state.epmd)
    else
      IO.puts(
        :stderr,
        "leaving epmd on port #{state.epmd_port} running: #{Enum.join(foreign, ", ")} still use it"
      )

      OSProcess.detach(state.epmd)
    end
  end

  defp alive_part(node_name), do: node_name |> String.split("@") |> hd()

  ## Steps

  defp random_token(length) do
    alphabet = ~c"abcdefghijklmnopqrstuvwxyz0123456789"
    for _ <- 1..length, into: "", do: <<Enum.random(alphabet)>>
  end

  defp vm_epmd_port do
    case :init.get_argument(:epmd_port) do
      {:ok, [[port | _] | _]} -> port |> List.to_string() |> String.to_integer()
      _ -> 4369
    end
  end

  defp ensure_epmd(state) do
    if epmd_answers?(state.epmd_port) do
      {:ok, state}
    else
      exe = find_epmd() || raise "cannot find the epmd executable"

      epmd =
        OSProcess.start("epmd", exe, ["-port", Integer.to_string(state.epmd_port)], [],
          discard_output: true
        )

      state = %{state | epmd: epmd}

      if wait_for(fn -> epmd_answers?(state.epmd_port) end, 10_000),
        do: {:ok, state},
        else: {:error, "epmd -port #{state.epmd_port} did not come up", state}
    end
  end

  defp epmd_answers?(port), do: epmd_names(port) != :error

  # NAMES_REQ: an EPMD answers with its own port number, then lines
  # "name NAME at port N", and closes.
  defp epmd_names(port) do
    with {:ok, socket} <-
           :gen_tcp.connect({127, 0, 0, 1}, port, [:binary, active: false], 1_000),
         :ok <- :gen_tcp.send(socket, <<1::16, ?n>>),
         {:ok, <<^port::32, rest::binary>>} <- recv_all(socket, <<>>) do
      names =
        for line <- String.split(rest, "\n", trim: true),
            [_, name] <- [Regex.run(~r/^name (\S+) at port/, line)],
            do: name

      {:ok, names}
    else
      _ -> :error
    end
  end

  defp recv_all(socket, acc) do
    case :gen_tcp.recv(socket, 0, 1_000) do
      {:ok, data} ->
        recv_all(socket, acc <> data)

      {:error, :closed} ->
        :gen_tcp.close(socket)
        {:ok, acc}

      {:error, _} = error ->
        :gen_tcp.close(socket)
        error
    end
  end

  defp find_epmd do
    System.find_executable("epmd") ||
      Enum.find(
        [Path.join([:code.root_dir(), "bin", "epmd"])] ++
          Path.wildcard(Path.join([:code.root_dir(), "erts-*", "bin", "epmd"])),
        &File.regular?/1
      )
  end

  defp start_kv(state) do
    args = [
      "--name",
      Atom.to_string(state.kvnode),
      "--cookie",
      state.cookie,
      "--epmd-port",
      Integer.to_string(state.epmd_port)
    ]

    kv = OSProcess.start("kvnode", state.bin, args, [{"RUST_LOG", "info"}])

    case OSProcess.await_line(kv, "kvnode ready", @ready_timeout) do
      {:ok, _line, kv} ->
        {:ok, %{state | kv: kv}}

      {:error, reason, kv} ->
        if kv.port, do: OSProcess.stop(kv)

        {:error,
         "kvnode (#{state.bin} #{Enum.join(args, " ")}) did not become ready: " <>
           "#{inspect(reason)}\n--- its output ---\n#{OSProcess.output(kv)}", state}
    end
  end

  defp start_distribution(state) do
    result =
      if Node.alive?(),
        do: {:ok, :already_alive},
        # The map form (OTP 24.3+) is the one OTP and Elixir keep undeprecated.
        else: :net_kernel.start(state.self_name, %{name_domain: :longnames})

    case result do
      {:ok, _} ->
        Node.set_cookie(String.to_atom(state.cookie))
        :ok

      {:error, reason} ->
        {:error, "Node.start(#{state.self_name}) failed: #{inspect(reason)}", state}
    end
  end

  defp wait_for(fun, timeout_ms) do
    Wait.until(fun, timeout: timeout_ms, raise: false)
  end
end
