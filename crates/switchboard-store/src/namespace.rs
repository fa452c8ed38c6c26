//! A view of a store under a key prefix, so that application data and Switchboard's
//! own keys (discovery, routes) can share one backend without colliding.

use std::time::Duration;

use async_trait::async_trait;

use crate::{validate_key, CasToken, Result, SharedStore, Store, StoreError};

/// A store whose keys are all prefixed with a fixed namespace.
///
/// Keys passed in, returned by [`Store::scan_prefix`] and named in errors are relative
/// to the namespace. The full key must obey the key rules, so a namespace shortens the
/// longest key allowed.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use std::sync::Arc;
/// use switchboard::store::{MemoryStore, Namespaced, Store};
/// let shared = Arc::new(MemoryStore::new());
/// let app = Namespaced::new(shared.clone(), "app:").unwrap();
/// app.set("greeting", b"hi", None).await.unwrap();
/// assert!(shared.get("app:greeting").await.unwrap().is_some());
/// # });
/// ```
#[derive(Clone)]
pub struct Namespaced {
    inner: SharedStore,
    prefix: String,
}

impl Namespaced {
    /// A view of `inner` under `prefix`; the prefix itself must be a valid key.
    pub fn new(inner: SharedStore, prefix: impl Into<String>) -> Result<Self> {
        let prefix = prefix.into();
        validate_key(&prefix).map_err(|e| StoreError::Config(format!("bad namespace: {e}")))?;
        Ok(Namespaced { inner, prefix })
    }

    /// The namespace prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn full(&self, key: &str) -> Result<String> {
        // An empty relative key would silently address the namespace prefix itself.
        if key.is_empty() {
            return Err(StoreError::InvalidKey {
                key: String::new(),
                reason: "a key must be 1 to 250 bytes long",
            });
        }
        Ok(format!("{}{key}", self.prefix))
    }

    /// Rewrites the key named in an error of the inner store to the relative key.
    fn relative<T>(&self, result: Result<T>) -> Result<T> {
        let strip = |key: String| match key.strip_prefix(&self.prefix) {
            Some(rest) => rest.to_owned(),
            None => key,
        };
        result.map_err(|e| match e {
            StoreError::NotANumber { key } => StoreError::NotANumber { key: strip(key) },
            StoreError::Corrupt { key, reason } => StoreError::Corrupt {
                key: strip(key),
                reason,
            },
            StoreError::InvalidKey { key, reason } => StoreError::InvalidKey {
                key: strip(key),
                reason,
            },
            other => other,
        })
    }
}

#[async_trait]
impl Store for Namespaced {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let result = self.inner.get(&self.full(key)?).await;
        self.relative(result)
    }

    async fn gets(&self, key: &str) -> Result<Option<(Vec<u8>, CasToken)>> {
        let result = self.inner.gets(&self.full(key)?).await;
        self.relative(result)
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        let result = self.inner.set(&self.full(key)?, value, ttl).await;
        self.relative(result)
    }

    async fn add(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<bool> {
        let result = self.inner.add(&self.full(key)?, value, ttl).await;
        self.relative(result)
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let result = self.inner.delete(&self.full(key)?).await;
        self.relative(result)
    }

    async fn increment(&self, key: &str, delta: u64) -> Result<u64> {
        let result = self.inner.increment(&self.full(key)?, delta).await;
        self.relative(result)
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        token: CasToken,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool> {
        let result = self
            .inner
            .compare_and_swap(&self.full(key)?, token, value, ttl)
            .await;
        self.relative(result)
    }

    async fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let found = self.relative(
            self.inner
                .scan_prefix(&format!("{}{prefix}", self.prefix))
                .await,
        )?;
        Ok(found
            .into_iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(&self.prefix)?.to_owned(), v)))
            .collect())
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }
}
