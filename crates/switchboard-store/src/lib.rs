//! The key/value **store** Switchboard uses for discovery and shared state.
//!
//! A store is chosen by configuration ([`StoreConfig`]) and opened with [`open`]:
//! - `memory`: one process only; for unit tests;
//! - `file`: the embedded default, one local file shared safely by several processes;
//! - `memcached`: one or more servers, consistent hashing across them;
//! - `redis`: one server, or a Redis Cluster (`scan_prefix` covers every master).
//!
//! Each backend but `memory` is a cargo feature, all on by default: `file` (rusqlite),
//! `redis`, `memcached`. A configuration naming a backend left out still parses, and
//! [`open`] answers [`StoreError::NotCompiled`] naming the feature to enable.
//!
//! [`Namespaced`] gives a view of any store under a key prefix (application data).
//! `docs/store.md` describes each backend's design and its limits.
//!
//! Every backend implements the same async [`Store`] trait, and one contract test suite
//! runs against all of them.
//!
//! ```
//! # tokio_test_block_on(async {
//! use switchboard::store::{open, StoreConfig};
//! let store = open(&StoreConfig::Memory).await.unwrap();
//! store.set("greeting", b"hello", None).await.unwrap();
//! assert_eq!(store.get("greeting").await.unwrap().as_deref(), Some(&b"hello"[..]));
//! # });
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Runtime::new().unwrap().block_on(f)
//! # }
//! ```

mod config;
mod error;
#[cfg(feature = "file")]
mod file;
#[cfg(feature = "memcached")]
mod memcached_store;
mod memory;
mod namespace;
#[cfg(feature = "redis")]
mod redis_store;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{de::DeserializeOwned, Serialize};

pub use config::{BackendFeature, StoreConfig};
pub use error::StoreError;
#[cfg(feature = "file")]
pub use file::FileStore;
#[cfg(feature = "memcached")]
pub use memcached_store::MemcachedStore;
pub use memory::MemoryStore;
pub use namespace::Namespaced;
#[cfg(feature = "redis")]
pub use redis_store::RedisStore;

/// Result type of every store operation.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Opaque token returned by [`Store::gets`] and consumed by [`Store::compare_and_swap`].
///
/// It names the version of a value that was read; a swap succeeds only if the value has
/// not changed since.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CasToken(pub u64);

/// The operations every backend offers.
///
/// Keys are UTF-8 strings of at most 250 bytes with no whitespace or control characters
/// (memcached's rule, applied everywhere so that code moves between backends unchanged);
/// a bad key is [`StoreError::InvalidKey`]. Values are bytes; [`StoreExt`] adds serde
/// helpers.
///
/// A TTL of `None` means "never expires". TTLs have one-second resolution on memcached.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads a value; `None` if absent or expired.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;

    /// Reads a value with a token for [`Store::compare_and_swap`].
    async fn gets(&self, key: &str) -> Result<Option<(Vec<u8>, CasToken)>>;

    /// Writes a value, replacing any previous one.
    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()>;

    /// Writes a value only if the key is absent; returns whether it was written.
    async fn add(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<bool>;

    /// Removes a key; returns whether it existed.
    async fn delete(&self, key: &str) -> Result<bool>;

    /// Adds `delta` to the decimal integer stored at `key` and returns the new value.
    ///
    /// An absent key counts as 0 and is created (without TTL). A value that is not a
    /// decimal integer is [`StoreError::NotANumber`].
    async fn increment(&self, key: &str, delta: u64) -> Result<u64>;

    /// Writes `value` only if the key still holds the version named by `token`;
    /// returns whether it was written.
    async fn compare_and_swap(
        &self,
        key: &str,
        token: CasToken,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool>;

    /// Lists the live keys starting with `prefix` with their values.
    ///
    /// Backends that cannot list keys (memcached) return [`StoreError::Unsupported`];
    /// code that must run on every backend keeps its own index key instead.
    async fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>>;

    /// A short name of the backend, for logs: `memory`, `file`, `memcached`, `redis`.
    fn backend(&self) -> &'static str;

    /// Checks that the backend answers (every server of it, for memcached); an
    /// unreachable backend is [`StoreError::Backend`] within a few seconds.
    ///
    /// The default reads a key that is never written.
    async fn ping(&self) -> Result<()> {
        self.get("switchboard:ping").await.map(|_| ())
    }
}

/// Serde helpers on top of any [`Store`]: values are stored as JSON.
#[async_trait]
pub trait StoreExt: Store {
    /// Reads and decodes a JSON value; a value that does not decode is
    /// [`StoreError::Corrupt`] naming the key.
    async fn get_json<T: DeserializeOwned + Send>(&self, key: &str) -> Result<Option<T>> {
        match self.get(key).await? {
            None => Ok(None),
            Some(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| StoreError::Corrupt {
                        key: key.to_owned(),
                        reason: e.to_string(),
                    })
            }
        }
    }

    /// Encodes a value as JSON and writes it.
    async fn set_json<T: Serialize + Sync>(
        &self,
        key: &str,
        value: &T,
        ttl: Option<Duration>,
    ) -> Result<()> {
        let bytes = serde_json::to_vec(value).map_err(|e| StoreError::Corrupt {
            key: key.to_owned(),
            reason: e.to_string(),
        })?;
        self.set(key, &bytes, ttl).await
    }
}

impl<S: Store + ?Sized> StoreExt for S {}

/// A shareable handle to any backend.
pub type SharedStore = Arc<dyn Store>;

/// Checks a key against the rules of [`Store`].
pub fn validate_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > 250 {
        return Err(StoreError::InvalidKey {
            key: key.chars().take(64).collect(),
            reason: "a key must be 1 to 250 bytes long",
        });
    }
    if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(StoreError::InvalidKey {
            key: key.escape_debug().to_string(),
            reason: "a key may not contain whitespace or control characters",
        });
    }
    Ok(())
}

/// Opens the backend named by `config`.
///
/// The file store is opened (and created) here, so a bad path or a foreign file fails
/// now. The network backends only check their configuration and connect on first use
/// (a Redis Cluster too: its slot map is fetched by the first operation):
/// a process may start before its memcached or Redis, whose absence then shows as
/// [`StoreError::Backend`] from each operation (or [`Store::ping`]) until it is back.
///
/// A backend this binary was built without (see the crate's cargo features) is
/// [`StoreError::NotCompiled`], naming the feature to enable.
pub async fn open(config: &StoreConfig) -> Result<SharedStore> {
    config.check_compiled()?;
    match config {
        StoreConfig::Memory => Ok(Arc::new(MemoryStore::new())),
        #[cfg(feature = "file")]
        StoreConfig::File { path } => Ok(Arc::new(FileStore::open(path).await?)),
        #[cfg(feature = "memcached")]
        StoreConfig::Memcached { servers } => Ok(Arc::new(MemcachedStore::open(servers)?)),
        #[cfg(feature = "redis")]
        StoreConfig::Redis { url } => Ok(Arc::new(RedisStore::open(url)?)),
        #[cfg(feature = "redis")]
        StoreConfig::RedisCluster { cluster } => Ok(Arc::new(RedisStore::open_cluster(cluster)?)),
        // A backend compiled out, already refused by `check_compiled` above.
        #[allow(unreachable_patterns)]
        _ => Err(StoreError::Config(format!(
            "store backend \"{}\" is not compiled into this binary",
            config.backend_name()
        ))),
    }
}
