//! Helpers shared by the store's integration tests: unique key prefixes, opening each
//! backend from the test environment, and the skip-or-fail rule for missing services.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use switchboard_store::{open, SharedStore, StoreConfig};

/// A store under test plus whatever must live as long as it (a temp directory).
pub struct Fixture {
    /// The store.
    pub store: SharedStore,
    /// A key prefix unique to this test run.
    pub prefix: String,
    /// The longest key the store accepts (less than 250 under a namespace).
    pub max_key: usize,
    _dir: Option<tempfile::TempDir>,
}

impl Fixture {
    /// A key unique to this run.
    pub fn key(&self, name: &str) -> String {
        format!("{}{}", self.prefix, name)
    }
}

/// A prefix no other run uses, so runs against shared servers never collide.
pub fn unique_prefix() -> String {
    let n: u64 = rand::thread_rng().gen();
    format!("sbtest:{n:016x}:")
}

/// Fails the test under CI, otherwise prints a loud skip line; returns `None` either way
/// the caller must stop.
pub fn skip_or_fail(what: &str, hint: &str) -> Option<Fixture> {
    if std::env::var_os("CI").is_some() {
        panic!("{what} is required under CI ({hint})");
    }
    eprintln!("SKIPPED ({what}: {hint})");
    None
}

pub fn memory() -> Option<Fixture> {
    Some(Fixture {
        store: Arc::new(switchboard_store::MemoryStore::new()),
        prefix: unique_prefix(),
        max_key: 250,
        _dir: None,
    })
}

pub async fn file() -> Option<Fixture> {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = StoreConfig::File {
        path: dir.path().join("sub/dir/store.sqlite"),
    };
    let store = open(&config).await.expect("open file store");
    Some(Fixture {
        store,
        prefix: unique_prefix(),
        max_key: 250,
        _dir: Some(dir),
    })
}

/// A file store seen through a namespace.
pub async fn namespaced_file() -> Option<Fixture> {
    let mut f = file().await?;
    let ns = "app:";
    f.store = Arc::new(switchboard_store::Namespaced::new(f.store, ns).expect("namespace"));
    f.max_key = 250 - ns.len();
    Some(f)
}

/// The memcached servers of the test environment, if any.
pub fn memcached_servers() -> Option<Vec<String>> {
    let list = std::env::var("SWITCHBOARD_TEST_MEMCACHED").ok()?;
    let servers: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    (!servers.is_empty()).then_some(servers)
}

pub async fn memcached() -> Option<Fixture> {
    let hint = "set SWITCHBOARD_TEST_MEMCACHED";
    let Some(servers) = memcached_servers() else {
        return skip_or_fail("no memcached", hint);
    };
    let config = StoreConfig::Memcached {
        servers: servers.clone(),
    };
    let store = match open(&config).await {
        Ok(store) => store,
        Err(e) => return skip_or_fail(&format!("cannot open memcached {servers:?}: {e}"), hint),
    };
    if let Err(e) = store.ping().await {
        return skip_or_fail(&format!("memcached at {servers:?} unreachable: {e}"), hint);
    }
    Some(Fixture {
        store,
        prefix: unique_prefix(),
        max_key: 250,
        _dir: None,
    })
}

/// The Redis URL of the test environment.
pub fn redis_url() -> String {
    std::env::var("SWITCHBOARD_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub async fn redis() -> Option<Fixture> {
    let hint = "set SWITCHBOARD_TEST_REDIS_URL";
    let url = redis_url();
    let config = StoreConfig::Redis { url: url.clone() };
    let store = match open(&config).await {
        Ok(store) => store,
        Err(e) => return skip_or_fail(&format!("cannot open redis {url}: {e}"), hint),
    };
    if let Err(e) = store.ping().await {
        return skip_or_fail(&format!("no redis at {url}: {e}"), hint);
    }
    Some(Fixture {
        store,
        prefix: unique_prefix(),
        max_key: 250,
        _dir: None,
    })
}

/// A loopback TCP port nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    port
}

/// Polls `f` until it returns true or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
