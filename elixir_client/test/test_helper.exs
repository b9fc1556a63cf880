# The interop suite runs against a live kvnode that this helper starts (see
# KVClient.Test.Cluster for how EPMD, kvnode and this VM's distribution are set
# up, and KVClient.Test.OSProcess for how the OS processes are cleaned up).
#
# kvnode binary: $KVNODE_BIN, else ../target/release/kvnode, else
# ../target/debug/kvnode, else `cargo build --release` in the parent directory.

kvnode_bin =
  case System.get_env("KVNODE_BIN") do
    bin when is_binary(bin) and bin != "" ->
      path = Path.expand(bin)
      File.regular?(path) || raise "KVNODE_BIN=#{bin}: no such file"
      path

    _ ->
      root = Path.expand("..", File.cwd!())
      candidates = Enum.map(["release", "debug"], &Path.join([root, "target", &1, "kvnode"]))

      Enum.find(candidates, &File.regular?/1) ||
        (
          IO.puts(:stderr, "kvnode not built yet: running `cargo build --release` in #{root}")
          cargo = System.find_executable("cargo") || raise "no kvnode binary and no cargo on PATH"

          {_, 0} =
            System.cmd(cargo, ["build", "--release"], cd: root, into: IO.stream(:stderr, :line))

          hd(candidates)
        )
  end

KVClient.Test.Cluster.start!(kvnode_bin)
ExUnit.after_suite(fn _results -> KVClient.Test.Cluster.shutdown() end)

# As in the Mix/OTP guide: distributed tests need a distributed VM. The
# cluster above made this VM distributed (or raised), so nothing is excluded;
# the check stays so a broken setup can never skip them silently.
Node.alive?() || raise "the test VM is not distributed; the interop suite cannot run"
exclude = if Node.alive?(), do: [], else: [distributed: true]

Application.put_env(:kv_client, :node, KVClient.Test.Cluster.kvnode())
ExUnit.start(exclude: exclude)
