defmodule KVClient.Store do
  @moduledoc """
  A drop-in, local `DistributedExample.KVStore` whose data lives in kvnode.

  Start it where an app would start its own key-value GenServer:

      children = [KVClient.Store]                      # registered as DistributedExample.KVStore
      children = [{KVClient.Store, name: MyApp.KV, nodes: [:"kv@10.0.0.5"]}]

  or give the app's module the article's API with one line:

      defmodule DistributedExample.KVStore do
        use KVClient.Store
      end

      DistributedExample.KVStore.start_link([])

  Then, on any client node, the article's calls act on the one shared store:

      GenServer.cast(DistributedExample.KVStore, {:put, :message, "Hello, world!"})
      GenServer.call(DistributedExample.KVStore, {:get, :message})

  ## Forwarding, not relaying

  A call reaches this process, which sends `{:"$gen_call", from, request}`,
  with the **caller's own `from`**, to `{DistributedExample.KVStore, owner}`
  and moves on: kvnode replies straight to the caller. So a call costs one
  local message more than a direct call of kvnode, the caller's timeout is
  its own, and a late reply is dropped by the caller's runtime exactly as for
  a direct call. Casts are forwarded as casts. Requests from one process reach
  each kvnode in the order sent.

  ## Options

    * `:name` - the local registered name (default `DistributedExample.KVStore`);
    * `:nodes` - the kvnodes: a non-empty list of node names. Default:
      `config :kv_client, nodes: [...]`, else `[KVClient.default_node()]`;
    * `:server` - the name the kvnodes serve under (kvnode's `--process-name`,
      default `DistributedExample.KVStore`);
    * `:fanout_timeout` - how long a request that combines every shard
      (`:keys`, `:size`, `:subscribers`, `{:subscribe, :all}`) waits for the
      shards before answering `{:error, :timeout}` (default #{30_000} ms).

  ## One node or many

  With one node every request is forwarded as is. With several, each key
  belongs to one node (`KVClient.Shards.owner/2`, rendezvous hashing of the
  canonical key), so every client node agrees on it:

    * key requests (`{:get, k}`, `{:put, k, v}`, `{:cas, ...}`, `{:incr, ...}`,
      `{:subscribe, k}`, ...) go to the key's owner, forwarded as above;
    * `:keys` answers every shard's keys, `:size` and `:subscribers` their
      sums (a `{:subscribe, :all}` counts once per shard); these are gathered
      by this process (one more local hop) and answer `{:error, :noconnection}`
      if any shard is down, rather than a silently partial answer;
    * `{:subscribe, :all}` / `{:unsubscribe, :all}` act on every shard, for
      the calling process (events then come straight from each kvnode). They
      must come from a process on this node; from another node they answer
      `{:error, :remote_caller}`;
    * a request it does not know goes to the first node, which answers
      `{:error, {:unknown_request, request}}` as kvnode does.

  ## When a kvnode is down

  Requests for the keys of a kvnode that is down (or not reachable) are
  answered `{:error, :noconnection}` - a value, where a direct
  `GenServer.call/3` would exit - and casts to it are dropped; keys of the
  other kvnodes are not affected, and a key is **never** re-routed to another
  node (its history would split). Calls in flight when its connection drops
  are answered `{:error, :noconnection}` as well (for the last
  #{10_000} calls sent to that node; an older one still waiting times out as
  its caller set). Nothing is cached: the next request after the node comes
  back connects again. A node that is up but does not serve the name answers
  `{:error, :noproc}`.

  Requests are forwarded only once the connection is up; while it is being
  set up, requests for that node wait here in order (other nodes' requests do
  not wait).
  """

  use GenServer

  alias KVClient.Shards

  @default_name DistributedExample.KVStore
  @default_fanout_timeout 30_000
  # Calls remembered per node to answer `{:error, :noconnection}` if it drops them.
  @inflight_cap 10_000

  # Requests held for a node while its connection is being set up; past this,
  # requests for that node answer {:error, :overloaded} until it connects.
  @max_connect_queue 10_000

  @doc false
  defmacro __using__(defaults) do
    quote do
      @doc "Starts a `KVClient.Store` registered under this module's name (see its options)."
      def start_link(opts \\ []) do
        opts = Keyword.merge(unquote(defaults), opts)
        KVClient.Store.start_link(Keyword.put_new(opts, :name, __MODULE__))
      end

      @doc "A child spec starting `start_link/1` with `opts`."
      def child_spec(opts) do
        %{id: __MODULE__, start: {__MODULE__, :start_link, [opts]}, type: :worker}
      end
    end
  end

  @doc "Starts the store process, linked to the caller. See the module doc for options."
  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts \\ []) do
    name = Keyword.get(opts, :name, @default_name)
    GenServer.start_link(__MODULE__, opts, name: name)
  end

  @doc "A child spec; the id is the registered name, so several stores can be supervised."
  @spec child_spec(keyword()) :: Supervisor.child_spec()
  def child_spec(opts) do
    %{
      id: Keyword.get(opts, :name, @default_name),
      start: {__MODULE__, :start_link, [opts]},
      type: :worker
    }
  end

  @doc """
  The store's configuration and state: `%{nodes: [...], server: name, up: [...]}`.
  """
  @spec info(GenServer.server()) :: map()
  def info(store \\ @default_name), do: GenServer.call(store, {__MODULE__, :info})

  @doc """
  The kvnodes a store started with `opts` uses: `opts[:nodes]`, else
  `config :kv_client, nodes: [...]`, else `[KVClient.default_node()]`.
  """
  @spec nodes(keyword()) :: [node(), ...]
  def nodes(opts \\ []) do
    case Keyword.get(opts, :nodes) || Application.get_env(:kv_client, :nodes) do
      nodes when is_list(nodes) and nodes != [] -> nodes
      _ -> [KVClient.default_node()]
    end
  end

  ## Server

  @impl true
  def init(opts) do
    nodes = nodes(opts)
    server = Keyword.get(opts, :server, @default_name)

    cond do
      not Enum.all?(nodes, &(is_atom(&1) and &1 != nil)) ->
        {:stop, {:bad_nodes, nodes}}

      length(Enum.uniq(nodes)) != length(nodes) ->
        {:stop, {:duplicate_nodes, nodes}}

      not is_atom(server) ->
        {:stop, {:bad_server, server}}

      true ->
        :ok = :net_kernel.monitor_nodes(true, node_type: :all)

        {:ok,
         %{
           nodes: nodes,
           server: server,
           fanout_timeout: Keyword.get(opts, :fanout_timeout, @default_fanout_timeout),
           # node => :up | :down | {:connecting, queue of pending items}
           conn: Map.new(nodes, &{&1, :down}),
           # node => {count, queue of froms}: calls sent, answered by us if it drops them
           inflight: Map.new(nodes, &{&1, {0, :queue.new()}}),
           # fan-out ref => %{from, op, waiting, replies, timer}
           fanouts: %{}
         }}
    end
  end

  @impl true
  def handle_call({__MODULE__, :info}, _from, state) do
    up = for {node, :up} <- state.conn, do: node
    {:reply, %{nodes: state.nodes, server: state.server, up: Enum.sort(up)}, state}
  end

  def handle_call(request, from, %{nodes: [node]} = state) do
    {:noreply, deliver(state, node, {:call, from, request})}
  end

  def handle_call(request, from, state) do
    case route(request, state.nodes) do
      {:key, key} ->
        {:noreply, deliver(state, Shards.owner(key, state.nodes), {:call, from, request})}

      {:all, op} ->
        {:noreply, start_fanout(state, op, request, from)}

      :unknown ->
        {:noreply, deliver(state, hd(state.nodes), {:call, from, request})}
    end
  end

  @impl true
  def handle_cast(request, %{nodes: [node]} = state) do
    {:noreply, deliver(state, node, {:cast, request})}
  end

  def handle_cast(request, state) do
    node =
      case route(request, state.nodes) do
        {:key, key} -> Shards.owner(key, state.nodes)
        _ -> hd(state.nodes)
      end

    {:noreply, deliver(state, node, {:cast, request})}
  end

  @impl true
  def handle_info({[[:alias | ref] | node], reply}, state) when is_reference(ref) do
    {:noreply, fanout_reply(state, ref, node, {:ok, reply})}
  end

  def handle_info({:connect_result, node, result}, state) do
    {:noreply, connected(state, node, result)}
  end

  def handle_info({:nodedown, node, _info}, state) do
    case state.conn do
      %{^node => :up} -> {:noreply, node_down(state, node)}
      _ -> {:noreply, state}
    end
  end

  def handle_info({:fanout_timeout, ref}, state) do
    case Map.pop(state.fanouts, ref) do
      {nil, _} ->
        {:noreply, state}

      {fanout, fanouts} ->
        :erlang.unalias(ref)
        GenServer.reply(fanout.from, {:error, :timeout})
        {:noreply, %{state | fanouts: fanouts}}
    end
  end

  def handle_info(_other, state), do: {:noreply, state}

  ## Routing

  # Which node(s) a request of the KV interface concerns.
  defp route({:subscribe, :all}, _nodes), do: {:all, :subscribe_all}
  defp route({:unsubscribe, :all}, _nodes), do: {:all, :unsubscribe_all}
  defp route(:keys, _nodes), do: {:all, :keys}
  defp route(:size, _nodes), do: {:all, :size}
  defp route(:subscribers, _nodes), do: {:all, :subscribers}

  defp route({op, key}, _nodes) when op in [:get, :delete, :incr, :subscribe, :unsubscribe],
    do: {:key, key}

  defp route({op, key, _}, _nodes) when op in [:get, :put, :put_new, :incr], do: {:key, key}
  defp route({:cas, key, _, _}, _nodes), do: {:key, key}
  defp route(_request, _nodes), do: :unknown

  ## Connections

  # Sends an item to `node` now if connected, else queues it until the
  # connection attempt (started here if none runs) succeeds or fails.
  defp deliver(state, node, item) do
    case Map.fetch!(state.conn, node) do
      :up ->
        send_item(state, node, item)

      {:connecting, queue} ->
        # Bounded: a node that takes long to connect (up to net_setuptime) must not
        # make this process hold every request sent meanwhile.
        if :queue.len(queue) >= @max_connect_queue do
          fail_item(state, node, item, :overloaded)
        else
          put_conn(state, node, {:connecting, :queue.in(item, queue)})
        end

      :down ->
        start_connect(node, state.server)
        put_conn(state, node, {:connecting, :queue.in(item, :queue.new())})
    end
  end

  defp send_item(state, node, {:call, from, request}) do
    send({state.server, node}, {:"$gen_call", from, request})
    track(state, node, from)
  end

  defp send_item(state, node, {:cast, request}) do
    send({state.server, node}, {:"$gen_cast", request})
    state
  end

  defp send_item(state, node, {:part, ref, pid, request}) do
    send({state.server, node}, {:"$gen_call", {pid, [[:alias | ref] | node]}, request})
    state
  end

  # Only alias-tagged calls (OTP 24+ `gen:call`) are remembered: an answer to
  # a call that already got its reply then goes to a dead alias and is
  # dropped by the caller's runtime, never left in its mailbox.
  defp track(state, node, {_pid, [:alias | ref]} = from) when is_reference(ref) do
    {count, queue} = Map.fetch!(state.inflight, node)
    queue = :queue.in(from, queue)

    entry =
      if count >= @inflight_cap,
        do: {count, :queue.drop(queue)},
        else: {count + 1, queue}

    %{state | inflight: Map.put(state.inflight, node, entry)}
  end

  defp track(state, _node, _from), do: state

  defp put_conn(state, node, value), do: %{state | conn: Map.put(state.conn, node, value)}

  # Connecting may take a while (an unreachable host); it runs apart so that
  # requests for other nodes keep flowing.
  defp start_connect(node, server) do
    parent = self()

    spawn(fn ->
      result =
        cond do
          not Node.alive?() -> {:error, :not_alive}
          node == node() -> check_server(node, server)
          Node.connect(node) == true -> check_server(node, server)
          true -> {:error, :noconnection}
        end

      send(parent, {:connect_result, node, result})
    end)
  end

  # A forwarded message to a name nobody holds would vanish silently (the
  # caller would time out); a direct caller would get `:noproc`, so check once
  # per connection. A node that does not answer rpc is assumed to serve it.
  defp check_server(node, server) do
    case :erpc.call(node, :erlang, :whereis, [server], 5_000) do
      :undefined -> {:error, :noproc}
      _pid -> :ok
    end
  catch
    :error, {:erpc, :noconnection} -> {:error, :noconnection}
    _kind, _reason -> :ok
  end

  defp connected(state, node, result) do
    case Map.fetch!(state.conn, node) do
      {:connecting, queue} ->
        items = :queue.to_list(queue)

        # A :nodedown that came while connecting was not acted on: check the
        # connection is still there before marking the node up.
        result =
          if result == :ok and node != node() and node not in Node.list([:visible, :hidden]),
            do: {:error, :noconnection},
            else: result

        case result do
          :ok ->
            state = put_conn(state, node, :up)
            Enum.reduce(items, state, &send_item(&2, node, &1))

          {:error, reason} ->
            state = put_conn(state, node, :down)
            Enum.reduce(items, state, &fail_item(&2, node, &1, reason))
        end

      _other ->
        state
    end
  end

  defp fail_item(state, _node, {:call, from, _request}, reason) do
    GenServer.reply(from, {:error, reason})
    state
  end

  defp fail_item(state, _node, {:cast, _request}, _reason), do: state

  defp fail_item(state, node, {:part, ref, _pid, _request}, reason),
    do: fanout_reply(state, ref, node, {:error, reason})

  defp node_down(state, node) do
    {_count, queue} = Map.fetch!(state.inflight, node)
    for from <- :queue.to_list(queue), do: GenServer.reply(from, {:error, :noconnection})

    state = %{
      put_conn(state, node, :down)
      | inflight: Map.put(state.inflight, node, {0, :queue.new()})
    }

    waiting = for {ref, %{waiting: waiting}} <- state.fanouts, node in waiting, do: ref
    Enum.reduce(waiting, state, &fanout_reply(&2, &1, node, {:error, :noconnection}))
  end

  ## Requests over every shard

  defp start_fanout(state, op, request, {pid, _tag} = from) do
    if op in [:subscribe_all, :unsubscribe_all] and node(pid) != node() do
      GenServer.reply(from, {:error, :remote_caller})
      state
    else
      # Replies come to this alias, tagged with the node that sent them. For
      # (un)subscriptions the caller's pid is the subscriber.
      ref = :erlang.alias()
      subscriber = if op in [:subscribe_all, :unsubscribe_all], do: pid, else: self()
      timer = Process.send_after(self(), {:fanout_timeout, ref}, state.fanout_timeout)

      fanout = %{from: from, op: op, waiting: state.nodes, replies: [], timer: timer}
      state = %{state | fanouts: Map.put(state.fanouts, ref, fanout)}

      Enum.reduce(state.nodes, state, &deliver(&2, &1, {:part, ref, subscriber, request}))
    end
  end

  defp fanout_reply(state, ref, node, reply) do
    with %{^ref => fanout} <- state.fanouts,
         true <- node in fanout.waiting do
      fanout = %{
        fanout
        | waiting: List.delete(fanout.waiting, node),
          replies: [reply | fanout.replies]
      }

      if fanout.waiting == [] do
        :erlang.unalias(ref)
        Process.cancel_timer(fanout.timer)
        GenServer.reply(fanout.from, combine(fanout.op, fanout.replies))
        %{state | fanouts: Map.delete(state.fanouts, ref)}
      else
        %{state | fanouts: Map.put(state.fanouts, ref, fanout)}
      end
    else
      _ -> state
    end
  end

  # Transport errors first; then any reply of an unexpected shape, as the
  # shard sent it; else the combination.
  defp combine(op, replies) do
    case Enum.find(replies, &match?({:error, _}, &1)) do
      {:error, _} = error ->
        error

      nil ->
        replies = Enum.map(replies, fn {:ok, reply} -> reply end)

        case {op, Enum.find(replies, &(not expected?(op, &1)))} do
          {_, nil} -> merge(op, replies)
          {_, odd} -> odd
        end
    end
  end

  defp expected?(:keys, reply), do: is_list(reply)
  defp expected?(op, reply) when op in [:size, :subscribers], do: is_integer(reply)
  defp expected?(_op, reply), do: reply == :ok

  defp merge(:keys, replies), do: Enum.concat(replies)
  defp merge(op, replies) when op in [:size, :subscribers], do: Enum.sum(replies)
  defp merge(_op, _replies), do: :ok
end
