defmodule KVClient.MixProject do
  use Mix.Project

  def project do
    [
      app: :kv_client,
      version: "0.1.0",
      elixir: "~> 1.14",
      elixirc_paths: elixirc_paths(Mix.env()),
      start_permanent: Mix.env() == :prod,
      deps: deps()
    ]
  end

  # Run "mix help compile.app" to learn about applications.
  def application do
    [
      extra_applications: [:logger]
    ]
  end

  # The interop suite's helpers (kvnode and EPMD management) live in test/support.
  defp elixirc_paths(:test), do: ["lib", "test/support"]
  defp elixirc_paths(_), do: ["lib"]

  # No dependencies: the client uses only Elixir and OTP.
  defp deps do
    []
  end
end
