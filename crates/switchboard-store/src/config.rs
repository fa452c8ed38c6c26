//! Which backend to use, and its settings (the `[store]` table of the config file).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Store selection, deserialized from `[store]` with a `backend` tag.
///
/// ```toml
/// [store]
/// backend = "file"
/// path = "data/store.sqlite"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase", deny_unknown_fields)]
pub enum StoreConfig {
    /// In-process only: for unit tests.
    Memory,
    /// One local file shared by every process on the machine (embedded default).
    File {
        /// Path of the store file; its directory is created if missing.
        path: PathBuf,
    },
    /// One or more memcached servers, `host:port` each.
    Memcached {
        /// Server addresses; keys are spread over them by consistent hashing.
        servers: Vec<String>,
    },
    /// A Redis server, as a `redis://host:port/db` URL.
    Redis {
        /// Connection URL.
        url: String,
    },
}

impl StoreConfig {
    /// The backend's short name, as in [`crate::Store::backend`].
    pub fn backend_name(&self) -> &'static str {
        match self {
            StoreConfig::Memory => "memory",
            StoreConfig::File { .. } => "file",
            StoreConfig::Memcached { .. } => "memcached",
            StoreConfig::Redis { .. } => "redis",
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig::File {
            path: PathBuf::from("data/store.sqlite"),
        }
    }
}
