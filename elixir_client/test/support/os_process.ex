defmodule KVClient.Test.OSProcess do
  @moduledoc """
  Runs an external program (kvnode, epmd) under a Port so that it can never
  outlive the test VM.

  The program is started through a tiny `sh` wrapper:

      exec 3<&0
      ( if read -r l <&3 && [ "$l" = detach ]; then exit 0; fi; kill -TERM $$ ) \
        </dev/null >/dev/null 2>&1 &
      exec "$@" </dev/null 3<&-

  The shell keeps the Port's stdin (fd 3) in a background watcher and then
  `exec`s the program, so the program keeps the shell's OS pid: that is the
  pid `Port.info(port, :os_pid)` reports, and the `$$` the watcher kills.
  When the VM closes the Port or dies (even with SIGKILL), the pipe closes,
  `read` returns and the watcher sends SIGTERM to the program. Normal
  shutdown sends SIGTERM by pid (`kill -TERM <os_pid>`) and waits for the
  Port's `:exit_status`, escalating to SIGKILL after a deadline. `detach/1`
  writes `detach` first, which makes the watcher leave the program running.

  All functions must be called by the process that owns the Port.
  """

  @wrapper ~S"""
  exec 3<&0
  ( if read -r l <&3 && [ "$l" = detach ]; then exit 0; fi; kill -TERM $$ ) </dev/null >/dev/null 2>&1 &
  if [ "$KVTEST_DISCARD_OUTPUT" = 1 ]; then exec "$@" </dev/null >/dev/null 2>&1 3<&-; fi
  exec "$@" </dev/null 3<&-
  """

  defstruct [:port, :os_pid, :name, lines: []]

  @type t :: %__MODULE__{
          port: port(),
          os_pid: pos_integer(),
          name: String.t(),
          lines: [String.t()]
        }

  @doc """
  Starts `exe args` with extra environment `env` (a list of `{name, value}`
  strings). With `discard_output: true` the program's output goes to
  `/dev/null` instead of the Port (needed for programs that may be detached).
  """
  @spec start(String.t(), Path.t(), [String.t()], [{String.t(), String.t()}], keyword()) :: t()
  def start(name, exe, args, env \\ [], opts \\ []) do
    sh = System.find_executable("sh") || raise "no sh on PATH"
    discard = if Keyword.get(opts, :discard_output, false), do: "1", else: "0"
    env = [{"KVTEST_DISCARD_OUTPUT", discard} | env]

    port =
      Port.open({:spawn_executable, sh}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        {:line, 16_384},
        args: ["-c", @wrapper, "sh", exe | args],
        env: Enum.map(env, fn {k, v} -> {String.to_charlist(k), String.to_charlist(v)} end)
      ])

    {:os_pid, os_pid} = Port.info(port, :os_pid)
    %__MODULE__{port: port, os_pid: os_pid, name: name}
  end

  @doc """
  Waits until a line of output contains `needle`. Returns `{:ok, line, proc}`,
  or `{:error, reason, proc}` when the program exits or the deadline passes.
  """
  @spec await_line(t(), String.t(), non_neg_integer()) ::
          {:ok, String.t(), t()} | {:error, term(), t()}
  def await_line(%__MODULE__{port: port} = proc, needle, timeout_ms) do
    deadline = System.monotonic_time(:millisecond) + timeout_ms
    do_await(proc, port, needle, deadline)
  end

  defp do_await(proc, port, needle, deadline) do
    left = max(deadline - System.monotonic_time(:millisecond), 0)

    receive do
      {^port, {:data, {_eol, line}}} ->
        proc = record(proc, line)

        if String.contains?(line, needle),
          do: {:ok, line, proc},
          else: do_await(proc, port, needle, deadline)

      {^port, {:exit_status, status}} ->
        {:error, {:exited, status}, %{proc | port: nil}}
    after
      left -> {:error, :timeout, proc}
    end
  end

  @doc "Records a line of output (the last 200 are kept for diagnostics)."
  @spec record(t(), String.t()) :: t()
  def record(proc, line), do: %{proc | lines: Enum.take([line | proc.lines], 200)}

  @doc "The recorded output, oldest first."
  @spec output(t()) :: String.t()
  def output(proc), do: proc.lines |> Enum.reverse() |> Enum.join("\n")

  @doc """
  Stops the program: SIGTERM by OS pid, wait up to `timeout_ms` for it to
  exit, then SIGKILL. Returns the exit status (or `:killed`).
  """
  @spec stop(t(), non_neg_integer()) :: integer() | :killed | :already_exited
  def stop(proc, timeout_ms \\ 10_000)
  def stop(%__MODULE__{port: nil}, _timeout_ms), do: :already_exited

  def stop(%__MODULE__{port: port, os_pid: os_pid}, timeout_ms) do
    System.cmd("kill", ["-TERM", Integer.to_string(os_pid)], stderr_to_stdout: true)

    case await_exit(port, timeout_ms) do
      {:ok, status} ->
        status

      :timeout ->
        System.cmd("kill", ["-KILL", Integer.to_string(os_pid)], stderr_to_stdout: true)
        _ = await_exit(port, 5_000)
        close(port)
        :killed
    end
  end

  @doc """
  Leaves the program running on its own and closes the Port: the watcher
  exits without signalling it. For an EPMD that other nodes still use.
  """
  @spec detach(t()) :: :ok
  def detach(%__MODULE__{port: nil}), do: :ok

  def detach(%__MODULE__{port: port}) do
    Port.command(port, "detach\n")
    close(port)
    :ok
  end

  defp await_exit(port, timeout_ms) do
    do_await_exit(port, System.monotonic_time(:millisecond) + timeout_ms)
  end

  defp do_await_exit(port, deadline) do
    left = max(deadline - System.monotonic_time(:millisecond), 0)

    receive do
      {^port, {:exit_status, status}} -> {:ok, status}
      {^port, {:data, _}} -> do_await_exit(port, deadline)
    after
      left -> :timeout
    end
  end

  defp close(port) do
    Port.close(port)
  rescue
    ArgumentError -> :ok
  end
end
