defmodule KVClient do
  @moduledoc """
  Client API for `DistributedExample.KVStore`, the key-value GenServer served by
  **kvnode** (a Rust program that is a real Erlang node) or by any node that
  registers a compatible server under that name.

  Every function takes the target as its first argument:

    * a node name such as `:"kv@127.0.0.1"`, meaning
      `{DistributedExample.KVStore, node}`;
    * a `{registered_name, node}` tuple, for a kvnode started with
      `--process-name`;
    * `nil`, meaning the configured node (see `default_node/0`).

  Calls accept a `:timeout` option in milliseconds (default `5000`, or
  `:infinity`). The wire shapes are the ones documented in kvnode's
  `src/kv/mod.rs`.

  ## Errors

  Results the server itself reports come back as the server sends them, for
  example `{:error, :exists}` from `put_new/4`, `{:error, {:mismatch, current}}`
  from `cas/5` and `{:error, :not_integer}` from `incr/4`.

  Transport failures do not raise; they come back as `{:error, reason}`:

    * `{:error, :noconnection}` - the node is down, unreachable or refused the
      connection (for example because of a wrong cookie);
    * `{:error, :noproc}` - the node is up but nothing is registered under the
      server's name;
    * `{:error, :not_alive}` - this node is not distributed (start it with
      `--name`/`--sname`, or `Node.start/2`).

  A call that does not get its reply in time **exits** with
  `{:timeout, {GenServer, :call, _}}`, exactly like `GenServer.call/3`,
  because the server may still apply the request (the reply is then dropped
  and never reaches the caller's mailbox). Catch the exit if you want to
  carry on.

  Nothing is cached between calls: every call resolves the target and lets
  `GenServer.call/3` connect on demand, so the next call after a kvnode
  restart works.

  kvnode is a *hidden* node: once connected it is listed by
  `Node.list(:hidden)` (and `Node.list(:connected)`), not by `Node.list/0`.

  The examples below assume a kvnode running as `kv@127.0.0.1` with this
  node connected to it using the same cookie; they are not run as doctests.
  """

  @server DistributedExample.KVStore
  @default_timeout 5000

  @typedoc "Where the store lives: a node, `{registered_name, node}`, or `nil` for `default_node/0`."
  @type target :: node() | {atom(), node()} | nil

  @typedoc "Keys and values are arbitrary terms."
  @type key :: term()
  @type value :: term()

  @typedoc "Call options: `timeout: milliseconds | :infinity`."
  @type opts :: [timeout: timeout()]

  @typedoc "Transport failures returned instead of raising."
  @type transport_error :: {:error, :noconnection | :noproc | :not_alive}

  @typedoc "Messages a subscriber receives."
  @type event :: {:kv_event, key(), {:put, value()} | :delete}

  @doc """
  Returns the configured kvnode name.

  The `KV_NODE` environment variable wins (so it can override a default at
  run time), then `config :kv_client, node: :"kv@127.0.0.1"`. Raises
  `ArgumentError` when neither is set.

  ## Examples

      iex> System.put_env("KV_NODE", "kv@127.0.0.1")
      iex> KVClient.default_node()
      :"kv@127.0.0.1"
  """
  @spec default_node() :: node()
  def default_node do
    case System.get_env("KV_NODE") do
      name when is_binary(name) and name != "" ->
        String.to_atom(name)

      _ ->
        case Application.get_env(:kv_client, :node) do
          node when is_atom(node) and node != nil ->
            node

          _ ->
            raise ArgumentError,
                  "no kvnode configured: pass a node, set KV_NODE, " <>
                    "or `config :kv_client, node: :\"kv@127.0.0.1\"`"
        end
    end
  end

  @doc """
  Connects this node to the kvnode, returning `:ok` or why it could not.

    * `{:error, :not_alive}` - this node is not distributed;
    * `{:error, :unreachable}` - the node is not registered with EPMD on its
      host (not running, wrong name or host, or EPMD unreachable);
    * `{:error, :bad_cookie_or_unreachable}` - the node is registered but the
      handshake failed: most likely a cookie mismatch (the node's logs say so),
      otherwise its distribution port is unreachable.

  Connecting is optional: calls connect on demand. It is useful to get a
  clear diagnosis up front.

  ## Examples

      iex> KVClient.connect(:"kv@127.0.0.1")
      :ok
      iex> KVClient.connect(:"nobody@127.0.0.1")
      {:error, :unreachable}
  """
  @spec connect(node() | nil) ::
          :ok | {:error, :not_alive | :unreachable | :bad_cookie_or_unreachable}
  def connect(node) do
    {_name, node} = server(node)

    cond do
      not Node.alive?() -> {:error, :not_alive}
      node == node() -> :ok
      split_node(node) == :error -> {:error, :unreachable}
      Node.connect(node) == true -> :ok
      true -> diagnose(node)
    end
  end

  # "Not registered with EPMD" is certain; "registered but the handshake
  # failed" is, in practice, a cookie mismatch.
  defp diagnose(node) do
    {:ok, name, host} = split_node(node)

    case epmd_module().port_please(String.to_charlist(name), String.to_charlist(host)) do
      {:port, _port, _version} -> {:error, :bad_cookie_or_unreachable}
      _noport_or_error -> {:error, :unreachable}
    end
  end

  defp split_node(node) do
    case node |> Atom.to_string() |> String.split("@") do
      [name, host] when name != "" and host != "" -> {:ok, name, host}
      _ -> :error
    end
  end

  defp epmd_module do
    if function_exported?(:net_kernel, :epmd_module, 0),
      do: :net_kernel.epmd_module(),
      else: :erl_epmd
  end

  @doc """
  Stores `value` under `key` and waits for the server to confirm.

  ## Examples

      iex> KVClient.put(:"kv@127.0.0.1", :message, "Hello, world!")
      :ok
  """
  @spec put(target(), key(), value(), opts()) :: :ok | transport_error()
  def put(target, key, value, opts \\ []), do: call(target, {:put, key, value}, opts)

  @doc """
  Stores `value` under `key` without waiting (a `GenServer.cast/2`).

  Always returns `:ok`, even when the node is down. A later call from the
  same process sees the effect, since requests from one caller are applied
  in order.

  ## Examples

      iex> KVClient.put_async(:"kv@127.0.0.1", :message, "Hello, world!")
      :ok
      iex> KVClient.get(:"kv@127.0.0.1", :message)
      "Hello, world!"
  """
  @spec put_async(target(), key(), value()) :: :ok
  def put_async(target, key, value), do: GenServer.cast(server(target), {:put, key, value})

  @doc """
  Returns the value stored under `key`, or `default` when it is absent.

  On a transport failure it returns `{:error, reason}` (see the module doc);
  if you store such tuples as values, use `fetch/3` to tell them apart.

  ## Examples

      iex> KVClient.get(:"kv@127.0.0.1", :message)
      "Hello, world!"
      iex> KVClient.get(:"kv@127.0.0.1", :missing)
      nil
      iex> KVClient.get(:"kv@127.0.0.1", :missing, 0)
      0
  """
  @spec get(target(), key(), value(), opts()) :: value() | transport_error()
  def get(target, key, default \\ nil, opts \\ []) do
    request = if default == nil, do: {:get, key}, else: {:get, key, default}

    case do_call(target, request, opts) do
      {:ok, value} -> value
      {:error, _} = error -> error
    end
  end

  @doc """
  Fetches the value under `key`: `{:ok, value}`, `:error` when absent, or a
  transport error.

  ## Examples

      iex> KVClient.fetch(:"kv@127.0.0.1", :message)
      {:ok, "Hello, world!"}
      iex> KVClient.fetch(:"kv@127.0.0.1", :missing)
      :error
  """
  @spec fetch(target(), key(), opts()) :: {:ok, value()} | :error | transport_error()
  def fetch(target, key, opts \\ []) do
    absent = make_ref()

    case do_call(target, {:get, key, absent}, opts) do
      {:ok, ^absent} -> :error
      {:ok, value} -> {:ok, value}
      {:error, _} = error -> error
    end
  end

  @doc """
  Deletes `key`. Deleting an absent key is not an error.

  ## Examples

      iex> KVClient.delete(:"kv@127.0.0.1", :message)
      :ok
  """
  @spec delete(target(), key(), opts()) :: :ok | transport_error()
  def delete(target, key, opts \\ []), do: call(target, {:delete, key}, opts)

  @doc """
  Stores `value` under `key` only if the key is absent.

  ## Examples

      iex> KVClient.put_new(:"kv@127.0.0.1", :owner, "alice")
      :ok
      iex> KVClient.put_new(:"kv@127.0.0.1", :owner, "bob")
      {:error, :exists}
  """
  @spec put_new(target(), key(), value(), opts()) :: :ok | {:error, :exists} | transport_error()
  def put_new(target, key, value, opts \\ []), do: call(target, {:put_new, key, value}, opts)

  @doc """
  Compare-and-swap: sets `key` to `new` only if its current value is
  `expected` (`nil` expects the key to be absent).

  On a mismatch nothing changes and the current value (`nil` when absent)
  comes back.

  ## Examples

      iex> KVClient.cas(:"kv@127.0.0.1", :state, nil, :starting)
      :ok
      iex> KVClient.cas(:"kv@127.0.0.1", :state, :starting, :running)
      :ok
      iex> KVClient.cas(:"kv@127.0.0.1", :state, :starting, :stopped)
      {:error, {:mismatch, :running}}
  """
  @spec cas(target(), key(), value() | nil, value(), opts()) ::
          :ok | {:error, {:mismatch, value() | nil}} | transport_error()
  def cas(target, key, expected, new, opts \\ []),
    do: call(target, {:cas, key, expected, new}, opts)

  @doc """
  Adds `amount` (default 1, may be negative or a big integer) to the integer
  under `key` and returns the new value. An absent key counts as 0.

  ## Examples

      iex> KVClient.incr(:"kv@127.0.0.1", :visits)
      1
      iex> KVClient.incr(:"kv@127.0.0.1", :visits, 10)
      11
      iex> KVClient.put(:"kv@127.0.0.1", :name, "kv")
      :ok
      iex> KVClient.incr(:"kv@127.0.0.1", :name)
      {:error, :not_integer}
  """
  @spec incr(target(), key(), integer(), opts()) ::
          integer() | {:error, :not_integer} | transport_error()
  def incr(target, key, amount \\ 1, opts \\ []) when is_integer(amount),
    do: call(target, {:incr, key, amount}, opts)

  @doc """
  Returns all keys, in no particular order.

  ## Examples

      iex> KVClient.keys(:"kv@127.0.0.1")
      [:message, :visits]
  """
  @spec keys(target(), opts()) :: [key()] | transport_error()
  def keys(target, opts \\ []), do: call(target, :keys, opts)

  @doc """
  Returns the number of keys.

  ## Examples

      iex> KVClient.size(:"kv@127.0.0.1")
      2
  """
  @spec size(target(), opts()) :: non_neg_integer() | transport_error()
  def size(target, opts \\ []), do: call(target, :size, opts)

  @doc """
  Subscribes the **calling process** to changes of `key`, or of every key
  with `:all`.

  The caller then receives `t:event/0` messages:
  `{:kv_event, key, {:put, value}}` and `{:kv_event, key, :delete}`. One
  event per change, even when subscribed both to the key and to `:all`.
  The server monitors the subscriber and drops its subscriptions when it
  exits or its node disconnects. Note that `:all` always means every key.

  ## Examples

      iex> KVClient.subscribe(:"kv@127.0.0.1", :message)
      :ok
      iex> KVClient.put(:"kv@127.0.0.1", :message, "hi")
      :ok
      iex> flush()
      {:kv_event, :message, {:put, "hi"}}
      :ok
  """
  @spec subscribe(target(), key() | :all, opts()) :: :ok | transport_error()
  def subscribe(target, key, opts \\ []), do: call(target, {:subscribe, key}, opts)

  @doc """
  Removes the calling process's subscription to `key` (or to `:all`).

  ## Examples

      iex> KVClient.unsubscribe(:"kv@127.0.0.1", :message)
      :ok
  """
  @spec unsubscribe(target(), key() | :all, opts()) :: :ok | transport_error()
  def unsubscribe(target, key, opts \\ []), do: call(target, {:unsubscribe, key}, opts)

  @doc """
  Returns the number of live subscriptions (over all subscribers).

  ## Examples

      iex> KVClient.subscribers(:"kv@127.0.0.1")
      0
  """
  @spec subscribers(target(), opts()) :: non_neg_integer() | transport_error()
  def subscribers(target, opts \\ []), do: call(target, :subscribers, opts)

  @doc """
  Moves keys to their owner after the kvnode list changed (sharded stores,
  see `KVClient.Store`), and returns what it did:
  `{:ok, %{moved: n, kept_newer: n, vanished: n, failed: []}}`, or
  `{:error, same_map}` when some keys could not be moved (`failed` lists
  `{node, key, reason}`, at most 100; `key` is `:keys` when a node could not
  be listed). Nothing is deleted from a node before its owner acknowledged
  the copy. Running it again is harmless.

  Options:

    * `:nodes` - the new node list (default: the running
      `DistributedExample.KVStore`'s, else `KVClient.Store.nodes/1`);
    * `:from` - nodes no longer in the list to drain as well (default `[]`);
    * `:server` - the kvnodes' registered name (default
      `DistributedExample.KVStore`);
    * `:concurrency` - keys moved at once (default 8);
    * `:timeout` - per request, in ms (default 30000).

  See `KVClient.Rebalance` for the race with concurrent writers.

  ## Examples

      iex> KVClient.rebalance(nodes: [:"kv1@h", :"kv2@h", :"kv3@h", :"kv4@h"])
      {:ok, %{moved: 2496, kept_newer: 0, vanished: 0, failed: []}}
  """
  @spec rebalance(keyword()) ::
          {:ok, KVClient.Rebalance.result()} | {:error, KVClient.Rebalance.result()}
  def rebalance(opts \\ []), do: KVClient.Rebalance.run(opts)

  ## Helpers

  defp call(target, request, opts) do
    case do_call(target, request, opts) do
      {:ok, reply} -> reply
      {:error, _} = error -> error
    end
  end

  # {:ok, reply} on a reply, {:error, reason} on a transport failure; a timeout
  # (or any other exit) propagates like GenServer.call/3.
  defp do_call(target, request, opts) do
    server = server(target)
    timeout = Keyword.get(opts, :timeout, @default_timeout)

    try do
      {:ok, GenServer.call(server, request, timeout)}
    catch
      :exit, {reason, {GenServer, :call, _}} when reason in [:noconnection, :noproc] ->
        {:error, transport_error(reason)}

      :exit, {{:nodedown, _node}, {GenServer, :call, _}} ->
        {:error, transport_error(:noconnection)}
    end
  end

  defp transport_error(reason) do
    if Node.alive?(), do: reason, else: :not_alive
  end

  defp server(nil), do: {@server, default_node()}
  defp server({name, node} = server) when is_atom(name) and is_atom(node), do: server
  defp server(node) when is_atom(node), do: {@server, node}
end
