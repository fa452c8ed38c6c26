//! Store (and database) call metrics: [`Instrumented`] wraps any [`Store`] and times
//! each call, so every process that opens the store through [`crate::open_store`]
//! (gateways publishing, workers' discovery and application calls, API clients)
//! records `switchboard_store_duration_seconds{backend,op}` and
//! `switchboard_store_errors_total{backend,op}` with no change to the backends.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use switchboard_store::{CasToken, Result, SharedStore, Store};

use super::{Counter, Histogram, Series};

const OPS: [&str; 9] = [
    "get",
    "gets",
    "set",
    "add",
    "delete",
    "increment",
    "compare_and_swap",
    "scan_prefix",
    "ping",
];

static DURATION: [Histogram; 9] = [const { Histogram::new() }; 9];
static ERRORS: [Counter; 9] = [const { Counter::new() }; 9];
static BACKEND: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// A store whose calls are timed and counted.
pub struct Instrumented(pub SharedStore);

impl Instrumented {
    /// Wraps a store.
    pub fn wrap(store: SharedStore) -> SharedStore {
        let _ = BACKEND.set(store.backend());
        std::sync::Arc::new(Instrumented(store))
    }
}

#[inline]
fn done<T>(op: usize, started: Instant, r: Result<T>) -> Result<T> {
    DURATION[op].observe(started.elapsed());
    if r.is_err() {
        ERRORS[op].inc();
    }
    r
}

#[async_trait]
impl Store for Instrumented {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let t = Instant::now();
        done(0, t, self.0.get(key).await)
    }
    async fn gets(&self, key: &str) -> Result<Option<(Vec<u8>, CasToken)>> {
        let t = Instant::now();
        done(1, t, self.0.gets(key).await)
    }
    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        let t = Instant::now();
        done(2, t, self.0.set(key, value, ttl).await)
    }
    async fn add(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<bool> {
        let t = Instant::now();
        done(3, t, self.0.add(key, value, ttl).await)
    }
    async fn delete(&self, key: &str) -> Result<bool> {
        let t = Instant::now();
        done(4, t, self.0.delete(key).await)
    }
    async fn increment(&self, key: &str, delta: u64) -> Result<u64> {
        let t = Instant::now();
        done(5, t, self.0.increment(key, delta).await)
    }
    async fn compare_and_swap(
        &self,
        key: &str,
        token: CasToken,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool> {
        let t = Instant::now();
        done(6, t, self.0.compare_and_swap(key, token, value, ttl).await)
    }
    async fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let t = Instant::now();
        done(7, t, self.0.scan_prefix(prefix).await)
    }
    fn backend(&self) -> &'static str {
        self.0.backend()
    }
    async fn ping(&self) -> Result<()> {
        let t = Instant::now();
        done(8, t, self.0.ping().await)
    }
}

/// Database calls, by instance: recorded by [`db_call`].
static DB: std::sync::Mutex<Vec<(String, Histogram, Counter)>> = std::sync::Mutex::new(Vec::new());

/// Records one database call of instance `instance` (how long, whether it failed);
/// the Db module calls it for every statement once metrics are on
/// ([`super::set_enabled`]).
pub fn db_call(instance: &str, took: Duration, ok: bool) {
    if !super::enabled() {
        return;
    }
    let mut v = DB.lock().unwrap_or_else(|p| p.into_inner());
    let i = match v.iter().position(|(n, _, _)| n == instance) {
        Some(i) => i,
        None => {
            v.push((instance.to_owned(), Histogram::new(), Counter::new()));
            v.len() - 1
        }
    };
    v[i].1.observe(took);
    if !ok {
        v[i].2.inc();
    }
}

pub(super) fn collect(out: &mut Vec<Series>) {
    if let Some(backend) = BACKEND.get() {
        for (i, op) in OPS.iter().enumerate() {
            let v = DURATION[i].value();
            if let super::Value::Histogram { counts, .. } = &v {
                if counts.iter().all(|c| *c == 0) {
                    continue;
                }
            }
            out.push(Series::new(
                "switchboard_store_duration_seconds",
                &[("backend", backend), ("op", op)],
                v,
            ));
            out.push(Series::counter(
                "switchboard_store_errors",
                &[("backend", backend), ("op", op)],
                ERRORS[i].get(),
            ));
        }
    }
    let v = DB.lock().unwrap_or_else(|p| p.into_inner());
    for (name, h, errors) in v.iter() {
        out.push(Series::new(
            "switchboard_db_duration_seconds",
            &[("instance", name)],
            h.value(),
        ));
        out.push(Series::counter(
            "switchboard_db_errors",
            &[("instance", name)],
            errors.get(),
        ));
    }
}
