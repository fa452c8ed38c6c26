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
///
/// `backend = "redis"` takes exactly one of `url` (one server, [`StoreConfig::Redis`])
/// and `cluster` (a list of seed nodes, [`StoreConfig::RedisCluster`]); both or neither
/// is refused when the configuration is read, with the message of a
/// [`crate::StoreError::Config`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawStoreConfig", into = "RawStoreConfig")]
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
    /// A Redis Cluster: `backend = "redis"` with `cluster = ["redis://host:port", ...]`.
    RedisCluster {
        /// Seed nodes (`redis://host:port` each); the client learns the other nodes and
        /// the slot map from them.
        cluster: Vec<String>,
    },
}

/// The `[store]` table as written: `redis` holds both `url` and `cluster`.
#[derive(Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase", deny_unknown_fields)]
enum RawStoreConfig {
    Memory,
    File {
        path: PathBuf,
    },
    Memcached {
        servers: Vec<String>,
    },
    Redis {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cluster: Option<Vec<String>>,
    },
}

impl TryFrom<RawStoreConfig> for StoreConfig {
    type Error = String;

    fn try_from(raw: RawStoreConfig) -> Result<Self, String> {
        Ok(match raw {
            RawStoreConfig::Memory => StoreConfig::Memory,
            RawStoreConfig::File { path } => StoreConfig::File { path },
            RawStoreConfig::Memcached { servers } => StoreConfig::Memcached { servers },
            RawStoreConfig::Redis {
                url: Some(url),
                cluster: None,
            } => StoreConfig::Redis { url },
            RawStoreConfig::Redis {
                url: None,
                cluster: Some(cluster),
            } => StoreConfig::RedisCluster { cluster },
            RawStoreConfig::Redis { .. } => {
                return Err(crate::StoreError::Config(
                    "backend \"redis\" needs exactly one of `url` (one server) and \
                     `cluster` (a list of Redis Cluster nodes)"
                        .to_owned(),
                )
                .to_string())
            }
        })
    }
}

impl From<StoreConfig> for RawStoreConfig {
    fn from(config: StoreConfig) -> Self {
        match config {
            StoreConfig::Memory => RawStoreConfig::Memory,
            StoreConfig::File { path } => RawStoreConfig::File { path },
            StoreConfig::Memcached { servers } => RawStoreConfig::Memcached { servers },
            StoreConfig::Redis { url } => RawStoreConfig::Redis {
                url: Some(url),
                cluster: None,
            },
            StoreConfig::RedisCluster { cluster } => RawStoreConfig::Redis {
                url: None,
                cluster: Some(cluster),
            },
        }
    }
}

impl StoreConfig {
    /// The backend's short name, as in [`crate::Store::backend`].
    pub fn backend_name(&self) -> &'static str {
        match self {
            StoreConfig::Memory => "memory",
            StoreConfig::File { .. } => "file",
            StoreConfig::Memcached { .. } => "memcached",
            StoreConfig::Redis { .. } | StoreConfig::RedisCluster { .. } => "redis",
        }
    }
}

/// How a backend is compiled in: its `switchboard-store` cargo feature, the
/// `switchboard` feature that forwards to it, and whether this build has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendFeature {
    /// The `switchboard-store` feature (`file`, `redis`, `memcached`).
    pub feature: &'static str,
    /// The `switchboard` feature that enables it (`file-store`, `redis`, `memcached`).
    pub switchboard_feature: &'static str,
    /// Whether this binary was built with it.
    pub compiled: bool,
}

impl StoreConfig {
    /// The cargo feature that compiles this backend in; `None` for `memory`, which is
    /// always there.
    ///
    /// ```
    /// use switchboard::store::StoreConfig;
    /// let redis = StoreConfig::Redis { url: "redis://127.0.0.1:6379".into() };
    /// let f = redis.feature().unwrap();
    /// assert_eq!((f.feature, f.switchboard_feature), ("redis", "redis"));
    /// assert_eq!(f.compiled, cfg!(feature = "redis"));
    /// assert!(StoreConfig::Memory.feature().is_none());
    /// ```
    pub fn feature(&self) -> Option<BackendFeature> {
        let (feature, switchboard_feature, compiled) = match self {
            StoreConfig::Memory => return None,
            StoreConfig::File { .. } => ("file", "file-store", cfg!(feature = "file")),
            StoreConfig::Memcached { .. } => {
                ("memcached", "memcached", cfg!(feature = "memcached"))
            }
            StoreConfig::Redis { .. } | StoreConfig::RedisCluster { .. } => {
                ("redis", "redis", cfg!(feature = "redis"))
            }
        };
        Some(BackendFeature {
            feature,
            switchboard_feature,
            compiled,
        })
    }

    /// [`crate::StoreError::NotCompiled`] when this binary was built without the
    /// backend; `Ok` otherwise.
    pub fn check_compiled(&self) -> Result<(), crate::StoreError> {
        match self.feature() {
            Some(f) if !f.compiled => Err(crate::StoreError::NotCompiled {
                backend: self.backend_name(),
                feature: f.feature,
                switchboard_feature: f.switchboard_feature,
            }),
            _ => Ok(()),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<StoreConfig, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn redis_takes_a_url_or_a_cluster() {
        assert_eq!(
            parse(r#"{"backend": "redis", "url": "redis://127.0.0.1:6379"}"#),
            Ok(StoreConfig::Redis {
                url: "redis://127.0.0.1:6379".into()
            })
        );
        assert_eq!(
            parse(r#"{"backend": "redis", "cluster": ["redis://a:7001", "redis://b:7002"]}"#),
            Ok(StoreConfig::RedisCluster {
                cluster: vec!["redis://a:7001".into(), "redis://b:7002".into()]
            })
        );
        for bad in [
            r#"{"backend": "redis"}"#,
            r#"{"backend": "redis", "url": "redis://a:1", "cluster": ["redis://a:1"]}"#,
        ] {
            let err = parse(bad).unwrap_err();
            assert!(
                err.starts_with("invalid store configuration: backend \"redis\" needs exactly one"),
                "{bad}: {err}"
            );
        }
        let err = parse(r#"{"backend": "redis", "url": "redis://a:1", "servers": []}"#);
        assert!(err.unwrap_err().contains("unknown field"));
    }

    #[test]
    fn configurations_round_trip() {
        for config in [
            StoreConfig::Memory,
            StoreConfig::default(),
            StoreConfig::Memcached {
                servers: vec!["127.0.0.1:11211".into()],
            },
            StoreConfig::Redis {
                url: "redis://127.0.0.1:6379".into(),
            },
            StoreConfig::RedisCluster {
                cluster: vec!["redis://127.0.0.1:7001".into()],
            },
        ] {
            let json = serde_json::to_string(&config).unwrap();
            assert_eq!(parse(&json), Ok(config), "{json}");
        }
        let json = serde_json::to_value(StoreConfig::RedisCluster {
            cluster: vec!["redis://127.0.0.1:7001".into()],
        })
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"backend": "redis", "cluster": ["redis://127.0.0.1:7001"]})
        );
    }
}
