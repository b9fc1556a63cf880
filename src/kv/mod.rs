//! `DistributedExample.KVStore`: the key-value GenServer kvnode hosts, and the one source of
//! truth for its wire interface (implemented, shapes and replies, in [`protocol`]).
//!
//! Keys and values are arbitrary Erlang terms. Keys compare with exact term equality, as
//! Elixir map keys do: `1` and `1.0` are different keys, maps are equal regardless of encoding
//! order, an atom is the same key however it was encoded, and `0.0` and `-0.0` are different
//! keys (OTP 27+ `=:=`).
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

pub mod durable;
pub mod key;
pub mod protocol;
pub mod rpc;
pub mod server;
pub mod store;
#[cfg(test)]
mod test_terms;
