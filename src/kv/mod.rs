//! `DistributedExample.KVStore`: the key-value GenServer kvnode hosts, and the one source of
//! truth for its wire interface (implemented, shapes and replies, in `src/kv/protocol.rs`).
//!
//! Keys and values are arbitrary Erlang terms. Keys compare with exact term equality, as
//! Elixir map keys do: `1` and `1.0` are different keys, maps are equal regardless of encoding
//! order, an atom is the same key however it was encoded (Latin-1 or UTF-8), and `0.0` and
//! `-0.0` are different keys (OTP 27+ `=:=`).
//!
//! Terms eetf cannot hold (OTP 29 native records; maps with both `0.0` and `-0.0` as keys)
//! are kept as bytes on every write path (`get`, `put`, `put_new`, `delete`, `cas`; see
//! `KvServer::raw_lane`) and returned unchanged. A request that would need one as a term (an
//! event for a subscriber, `incr`, `subscribe`, an in-node call reading one) is answered
//! `{:error, :unrepresentable}` and changes nothing.
//!
//! Casts (`GenServer.cast/2`, no reply): `{:put, k, v}`, `{:delete, k}` (any data request is
//! accepted as a cast; its reply is dropped).
//!
//! Calls (`GenServer.call/2,3`):
//!
//! | request                           | reply                                                 |
//! |-----------------------------------|-------------------------------------------------------|
//! | `{:get, k}`                       | value \| `nil`                                        |
//! | `{:get, k, default}`              | value \| `default`                                    |
//! | `{:put, k, v}`                    | `:ok`                                                 |
//! | `{:put_new, k, v}`                | `:ok` \| `{:error, :exists}`                          |
//! | `{:delete, k}`                    | `:ok`                                                 |
//! | `{:cas, k, expected, new}`        | `:ok` \| `{:error, {:mismatch, current}}` (`current` is `nil` when absent; `expected` `nil` matches an absent key) |
//! | `{:incr, k, amount}`, `{:incr, k}`| new integer (absent counts as 0; big integers work) \| `{:error, :not_integer}` |
//! | `:keys`                           | list of keys                                          |
//! | `:size`                           | number of keys                                        |
//! | `{:subscribe, k}`, `{:subscribe, :all}` | `:ok`; the caller then receives `{:kv_event, k, {:put, v}}` / `{:kv_event, k, :delete}` for every change of `k` (or of any key) |
//! | `{:unsubscribe, k \| :all}`       | `:ok`                                                 |
//! | `:subscribers`                    | number of live subscriptions                          |
//! | anything else                     | `{:error, {:unknown_request, request}}`               |
//!
//! The server monitors each subscriber and drops its subscriptions when it exits or its node
//! goes down. A subscriber gets one event per change even when subscribed both to the key and
//! to `:all`. The key `:all` itself cannot be subscribed to individually (`{:subscribe, :all}`
//! means every key). Requests from one caller are applied in the order sent, so a cast followed
//! by a call from the same process sees the cast's effect.

pub(crate) mod durable;
pub(crate) mod key;
pub(crate) mod protocol;
pub(crate) mod rpc;
pub(crate) mod server;
pub(crate) mod store;
#[cfg(test)]
mod test_terms;

use crate::Node;
use crate::storage::{self, StorageError};

/// The default registered name: what `DistributedExample.KVStore` is as an atom.
pub const DEFAULT_PROCESS_NAME: &str = "Elixir.DistributedExample.KVStore";

/// The KV app's settings (the node's own are set on [`crate::NodeBuilder`]). The defaults
/// are the `kvnode` binary's: registered as `Elixir.DistributedExample.KVStore`, in memory.
///
/// ```
/// let mut config = kvnode::kv::KvConfig::default();
/// config.process_name = "Elixir.MyApp.Cache".into();
/// config.data_dir = Some("/var/lib/myapp/kv".into());
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct KvConfig {
    /// Registered name of the key-value GenServer (`--process-name`), also the module its
    /// rpc functions answer under.
    pub process_name: String,
    /// Where the KV state is persisted (`--data-dir`); None keeps it in memory only.
    pub data_dir: Option<std::path::PathBuf>,
    /// `--compaction-floor`: the log is never compacted while smaller than this.
    pub compaction_floor: u64,
    /// Backpressure bound of the storage queue, in bytes not yet durable
    /// (`--max-storage-queue-bytes`).
    pub max_storage_queue_bytes: usize,
}

impl Default for KvConfig {
    fn default() -> Self {
        KvConfig {
            process_name: DEFAULT_PROCESS_NAME.to_owned(),
            data_dir: None,
            compaction_floor: storage::DEFAULT_COMPACTION_FLOOR,
            max_storage_queue_bytes: durable::DEFAULT_MAX_STORAGE_QUEUE_BYTES,
        }
    }
}

/// The KV state read back from `--data-dir` by [`recover`], ready for [`start_recovered`].
pub struct Recovered(Option<(storage::Storage, Vec<storage::Entry>)>);

impl std::fmt::Debug for Recovered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recovered")
            .field(
                "keys",
                &self.0.as_ref().map_or(0, |(_, entries)| entries.len()),
            )
            .finish()
    }
}

/// Why the KV app could not start ([`start`], [`start_recovered`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KvError {
    /// The data directory could not be opened or recovered.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The registered name is taken or invalid.
    #[error(transparent)]
    Spawn(#[from] crate::SpawnError),
}

/// Opens `config.data_dir` (when set) and recovers it, merging records by the store's
/// canonical keys. Needs no node: kvnode recovers before it registers with EPMD, so no peer
/// finds the node before its data is back.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let config = kvnode::kv::KvConfig::default();
/// let recovered = kvnode::kv::recover(&config).await?;
/// let node = kvnode::NodeBuilder::new("kv@127.0.0.1").cookie("secret").start().await?;
/// kvnode::kv::start_recovered(&node, &config, recovered)?;
/// # Ok(())
/// # }
/// ```
pub async fn recover(config: &KvConfig) -> Result<Recovered, StorageError> {
    let Some(dir) = config.data_dir.clone() else {
        return Ok(Recovered(None));
    };
    let shown = dir.display().to_string();
    let options = storage::Options {
        compaction_floor: config.compaction_floor,
        ..storage::Options::default()
    };
    let (storage, recovered) = tokio::task::spawn_blocking(move || {
        storage::Storage::open_with(&dir, options, &durable::key_identity)
    })
    .await
    .map_err(|e| StorageError::Unavailable {
        reason: format!("recovery task failed: {e}"),
    })??;
    // The storage already warned about a dropped torn tail, with file, offset and bytes.
    tracing::info!(
        dir = %shown,
        keys = recovered.entries.len(),
        snapshot_entries = recovered.snapshot_entries,
        records_replayed = recovered.records_replayed,
        ms = recovered.elapsed.as_millis() as u64,
        "recovered {} keys in {} ms",
        recovered.entries.len(),
        recovered.elapsed.as_millis()
    );
    Ok(Recovered(Some((storage, recovered.entries))))
}

/// Starts the KV app on `node` with state [`recover`]ed from `config`: spawns the server
/// under `config.process_name` and registers its rpc functions (`Module.get/1,2`, `put/2`,
/// `delete/1`, `keys/0`, `size/0` under the process name) and its `kvnode:info/0`. See
/// [`recover`] for an example.
pub fn start_recovered(
    node: &Node,
    config: &KvConfig,
    recovered: Recovered,
) -> Result<(), KvError> {
    let name = config.process_name.as_str();
    match recovered.0 {
        Some((storage, entries)) => {
            let max_queued = config.max_storage_queue_bytes;
            node.spawn_server_with(Some(name), move |ctx| {
                server::KvServer::with_storage(
                    durable::Durable::new(storage, ctx, max_queued),
                    entries,
                )
            })?;
        }
        None => {
            node.spawn_server(Some(name), server::KvServer::new())?;
        }
    }
    // The KV server's API, callable through rpc, spawn and rex under its module name.
    rpc::register(node, name, name);
    rpc::register_info(node, name);
    Ok(())
}

/// Starts the KV app on a running `node`: recovers `config.data_dir` (if any), spawns the
/// server and registers its rpc functions. Peers can call it as soon as this returns.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let node = kvnode::NodeBuilder::new("kv@127.0.0.1").cookie("secret").start().await?;
/// kvnode::kv::start(&node, &kvnode::kv::KvConfig::default()).await?;
/// // From Elixir: GenServer.call({DistributedExample.KVStore, :"kv@127.0.0.1"}, {:get, :k})
/// # Ok(())
/// # }
/// ```
pub async fn start(node: &Node, config: &KvConfig) -> Result<(), KvError> {
    let recovered = recover(config).await?;
    start_recovered(node, config, recovered)
}
