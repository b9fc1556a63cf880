defmodule KVClient.Shards do
  @moduledoc """
  Which kvnode owns a key when the store is spread over several kvnodes.

  ## Rendezvous hashing

  Every key has one owner among the configured nodes: the node with the
  highest weight, where

      digest = md5(canonical_key(key))
      weight(node) = first 64 bits (big-endian) of md5(digest <> Atom.to_string(node))

  and ties (never seen in practice) go to the greater node name. Each client
  node computes this on its own from the key and the node list, so all of them
  agree without coordination, whatever order they list the nodes in. Adding a
  node moves only the keys the new node now wins (about `1/(n+1)` of them);
  removing one moves only its own keys.

  `:erlang.md5/1` is a BIF that exists in every OTP release (no `:crypto`
  application needed); it is used as a well-mixed, stable hash, not for
  security.

  ## The canonical key

  Two keys are the same key for kvnode exactly when they are `=:=` (see
  "The KV interface" in kvnode's README): `1` and `1.0` are different keys,
  `0.0` and `-0.0` are different keys, maps are equal whatever their order,
  atoms and charlists are equal however they were encoded on the wire. The
  hash must follow the same rules, so it is taken over a documented canonical
  encoding, **the one kvnode itself uses** for its store keys
  (`src/kv/key.rs`), never over `:erlang.term_to_binary/2`, whose output
  (even with `:deterministic`) OTP does not promise to keep across releases.

  Each encoded term starts with a tag byte and is self-delimiting; `varint` is
  unsigned LEB128:

  | term | encoding |
  |---|---|
  | integer `0..255` | `1`, the byte |
  | other integer in `i64` | `2`, varint of the zigzag value (`(n <<< 1) ^^^ (n >>> 63)`) |
  | other integer | `3`, sign byte (0 negative, 1 positive), varint length, magnitude big-endian |
  | float | `4`, 8 bytes: IEEE-754 bits, little-endian (so `-0.0` differs from `0.0`) |
  | atom | `5`, varint length, UTF-8 name |
  | pid | `6`, node atom, varint id, varint serial, varint creation |
  | port | `7`, node atom, varint id, varint creation |
  | reference | `8`, node atom, varint creation, varint word count, varint words |
  | `fun M.F/A` | `9`, module atom, function atom, arity byte |
  | other fun | `17`, varint length, `:erlang.term_to_binary(fun, minor_version: 2)` (kvnode encodes these field by field; a fun as a key is hashed consistently by the client nodes of one OTP release) |
  | bitstring | `12`, varint whole-byte count, bytes, tail bit count (0..7), the tail bits as a byte if any |
  | non-empty list | `13`, varint cell count, the heads, then the tail (`14` if proper) |
  | `[]` | `14` |
  | tuple | `15`, varint arity, elements |
  | map | `16`, varint size, entries (key then value) sorted by encoded key bytes |

  The test suite checks fixed digests and owner assignments on every OTP row
  it runs on (OTP 25, 27 and 29).
  """

  @typedoc "A kvnode's node name."
  @type shard :: node()

  @doc """
  The node that owns `key` among `nodes` (a non-empty list of node names).

  With one node, that node (no hashing).

  ## Examples

      iex> KVClient.Shards.owner(:message, [:"kv1@127.0.0.1"])
      :"kv1@127.0.0.1"
  """
  @spec owner(term(), [shard(), ...]) :: shard()
  def owner(_key, [node]), do: node

  def owner(key, [_, _ | _] = nodes) do
    digest = key_digest(key)

    {node, _weight} =
      nodes
      |> Enum.map(&{&1, weight(digest, &1)})
      |> Enum.max_by(fn {node, weight} -> {weight, node} end)

    node
  end

  @doc "The 16-byte MD5 digest of `key`'s canonical encoding."
  @spec key_digest(term()) :: <<_::128>>
  def key_digest(key), do: :erlang.md5(canonical_key(key))

  @doc "The rendezvous weight of `node` for a key digest: a 64-bit unsigned integer."
  @spec weight(<<_::128>>, shard()) :: non_neg_integer()
  def weight(digest, node) do
    <<weight::64, _::64>> = :erlang.md5([digest, Atom.to_string(node)])
    weight
  end

  @doc """
  The canonical encoding of `term` (see the module doc), as a binary: equal
  for two terms exactly when they are `=:=`.
  """
  @spec canonical_key(term()) :: binary()
  def canonical_key(term), do: IO.iodata_to_binary(encode(term))

  ## Encoding

  defp encode(n) when is_integer(n) and n >= 0 and n <= 255, do: [1, n]

  defp encode(n) when is_integer(n) and n >= -0x8000000000000000 and n <= 0x7FFFFFFFFFFFFFFF do
    zigzag =
      Bitwise.bxor(Bitwise.bsl(n, 1), Bitwise.bsr(n, 63)) |> Bitwise.band(0xFFFFFFFFFFFFFFFF)

    [2 | varint(zigzag)]
  end

  defp encode(n) when is_integer(n) do
    magnitude = :binary.encode_unsigned(abs(n))
    [3, if(n < 0, do: 0, else: 1) | bytes(magnitude)]
  end

  defp encode(f) when is_float(f), do: [4, <<f::float-64-little>>]
  defp encode(a) when is_atom(a), do: atom(a)
  defp encode(b) when is_binary(b), do: [12, bytes(b), 0]

  defp encode(b) when is_bitstring(b) do
    whole = div(bit_size(b), 8)
    tail_bits = rem(bit_size(b), 8)
    <<bytes::binary-size(whole), tail::size(tail_bits)>> = b
    [12, bytes(bytes), tail_bits, tail]
  end

  defp encode([]), do: [14]

  defp encode([_ | _] = list) do
    {heads, count, tail} = cells(list, [], 0)
    [13, varint(count), heads, encode(tail)]
  end

  defp encode(t) when is_tuple(t) do
    elements = Tuple.to_list(t)
    [15, varint(tuple_size(t)) | Enum.map(elements, &encode/1)]
  end

  defp encode(m) when is_map(m) do
    entries =
      m
      |> Enum.map(fn {k, v} -> {canonical_key(k), v} end)
      |> Enum.sort_by(fn {k, _v} -> k end)

    [16, varint(map_size(m)) | Enum.map(entries, fn {k, v} -> [k, encode(v)] end)]
  end

  defp encode(p) when is_pid(p) do
    # NEW_PID_EXT (88): node, ID, Serial, Creation (32 bits each), what OTP 23+ always writes.
    <<131, 88, rest::binary>> = :erlang.term_to_binary(p, minor_version: 2)
    {node, <<id::32, serial::32, creation::32>>} = ext_atom(rest)
    [6, atom(node), varint(id), varint(serial), varint(creation)]
  end

  defp encode(p) when is_port(p) do
    {node, id, creation} =
      case :erlang.term_to_binary(p, minor_version: 2) do
        # V4_PORT_EXT (120): 64-bit ID; NEW_PORT_EXT (89): 32-bit ID.
        <<131, 120, rest::binary>> ->
          {node, <<id::64, creation::32>>} = ext_atom(rest)
          {node, id, creation}

        <<131, 89, rest::binary>> ->
          {node, <<id::32, creation::32>>} = ext_atom(rest)
          {node, id, creation}
      end

    [7, atom(node), varint(id), varint(creation)]
  end

  defp encode(r) when is_reference(r) do
    # NEWER_REFERENCE_EXT (90): Len (16 bits), node, Creation, Len 32-bit words.
    <<131, 90, len::16, rest::binary>> = :erlang.term_to_binary(r, minor_version: 2)
    {node, <<creation::32, words::binary-size(len * 4)>>} = ext_atom(rest)
    [8, atom(node), varint(creation), varint(len) | for(<<w::32 <- words>>, do: varint(w))]
  end

  defp encode(f) when is_function(f) do
    case Function.info(f, :type) do
      {:type, :external} ->
        {:module, m} = Function.info(f, :module)
        {:name, name} = Function.info(f, :name)
        {:arity, arity} = Function.info(f, :arity)
        [9, atom(m), atom(name), arity]

      {:type, :local} ->
        [17 | bytes(:erlang.term_to_binary(f, minor_version: 2))]
    end
  end

  # Collects the heads of a (possibly improper) list iteratively.
  defp cells([head | rest], acc, count), do: cells(rest, [encode(head) | acc], count + 1)
  defp cells(tail, acc, count), do: {Enum.reverse(acc), count, tail}

  defp atom(a) when is_atom(a), do: [5 | bytes(Atom.to_string(a))]

  # The node atom at the start of an external-format fragment, and what follows it.
  defp ext_atom(<<118, len::16, name::binary-size(len), rest::binary>>),
    do: {:erlang.binary_to_atom(name, :utf8), rest}

  defp ext_atom(<<119, len::8, name::binary-size(len), rest::binary>>),
    do: {:erlang.binary_to_atom(name, :utf8), rest}

  defp ext_atom(<<100, len::16, name::binary-size(len), rest::binary>>),
    do: {:erlang.binary_to_atom(name, :latin1), rest}

  defp ext_atom(<<115, len::8, name::binary-size(len), rest::binary>>),
    do: {:erlang.binary_to_atom(name, :latin1), rest}

  defp bytes(b), do: [varint(byte_size(b)), b]

  defp varint(v) when v < 0x80, do: [v]
  defp varint(v), do: [Bitwise.bor(Bitwise.band(v, 0x7F), 0x80) | varint(Bitwise.bsr(v, 7))]
end
