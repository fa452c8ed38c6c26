//! In-process backend: a `HashMap` behind a mutex. For unit tests and single-process use.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::{validate_key, CasToken, Result, Store, StoreError};

/// One stored value with its version and expiry.
struct Entry {
    value: Vec<u8>,
    /// Version for compare-and-swap; bumped on every write.
    version: u64,
    expires: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|t| t > now)
    }
}

/// A store that lives in this process only.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    map: HashMap<String, Entry>,
    /// Source of versions; never reused.
    next_version: u64,
}

impl Inner {
    fn live(&mut self, key: &str) -> Option<&mut Entry> {
        let now = Instant::now();
        if self.map.get(key).is_some_and(|e| !e.live(now)) {
            self.map.remove(key);
        }
        self.map.get_mut(key)
    }

    fn put(&mut self, key: &str, value: &[u8], ttl: Option<Duration>) {
        self.next_version += 1;
        self.map.insert(
            key.to_owned(),
            Entry {
                value: value.to_vec(),
                version: self.next_version,
                expires: ttl.map(|t| Instant::now() + t),
            },
        );
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the map half-written (every
        // mutation is a single insert/remove), so a poisoned lock is safe to reuse.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        validate_key(key)?;
        Ok(self.lock().live(key).map(|e| e.value.clone()))
    }

    async fn gets(&self, key: &str) -> Result<Option<(Vec<u8>, CasToken)>> {
        validate_key(key)?;
        Ok(self
            .lock()
            .live(key)
            .map(|e| (e.value.clone(), CasToken(e.version))))
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        validate_key(key)?;
        self.lock().put(key, value, ttl);
        Ok(())
    }

    async fn add(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<bool> {
        validate_key(key)?;
        let mut inner = self.lock();
        if inner.live(key).is_some() {
            return Ok(false);
        }
        inner.put(key, value, ttl);
        Ok(true)
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        validate_key(key)?;
        let mut inner = self.lock();
        let existed = inner.live(key).is_some();
        inner.map.remove(key);
        Ok(existed)
    }

    async fn increment(&self, key: &str, delta: u64) -> Result<u64> {
        validate_key(key)?;
        let mut inner = self.lock();
        let (current, expires) = match inner.live(key) {
            None => (0, None),
            Some(e) => {
                let n = std::str::from_utf8(&e.value)
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .ok_or_else(|| StoreError::NotANumber {
                        key: key.to_owned(),
                    })?;
                (n, e.expires)
            }
        };
        let next = current.wrapping_add(delta);
        inner.put(key, next.to_string().as_bytes(), None);
        if let Some(e) = inner.map.get_mut(key) {
            e.expires = expires;
        }
        Ok(next)
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        token: CasToken,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool> {
        validate_key(key)?;
        let mut inner = self.lock();
        match inner.live(key) {
            Some(e) if e.version == token.0 => {
                inner.put(key, value, ttl);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let now = Instant::now();
        let inner = self.lock();
        let mut out: Vec<_> = inner
            .map
            .iter()
            .filter(|(k, e)| k.starts_with(prefix) && e.live(now))
            .map(|(k, e)| (k.clone(), e.value.clone()))
            .collect();
        out.sort();
        Ok(out)
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}
