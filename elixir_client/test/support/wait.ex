defmodule KVClient.Test.Wait do
  @moduledoc """
  The one place the suite waits for a condition: poll with a deadline, pausing
  briefly between checks, and fail loudly when the deadline passes.
  """

  @doc """
  Calls `fun` until it returns a truthy value, which is returned.

  Options: `:timeout` (ms, default 5000), `:interval` (ms between checks,
  default 10), `:raise` (default `true`; with `false`, returns `false` on
  timeout instead of raising), `:message` (for the failure).
  """
  def until(fun, opts \\ []) do
    timeout = Keyword.get(opts, :timeout, 5_000)
    deadline = System.monotonic_time(:millisecond) + timeout
    loop(fun, deadline, timeout, opts)
  end

  defp loop(fun, deadline, timeout, opts) do
    case fun.() do
      result when result not in [nil, false] ->
        result

      _ ->
        if System.monotonic_time(:millisecond) >= deadline do
          if Keyword.get(opts, :raise, true) do
            message = Keyword.get(opts, :message, "condition")
            raise "#{message} not met within #{timeout} ms"
          else
            false
          end
        else
          interval = Keyword.get(opts, :interval, 10)

          receive do
          after
            interval -> :ok
          end

          loop(fun, deadline, timeout, opts)
        end
    end
  end
end
