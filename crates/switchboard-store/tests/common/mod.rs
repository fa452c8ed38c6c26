//! Helpers shared by the store's integration tests: unique key prefixes, opening each
//! backend from the test environment, and the skip-or-fail rule for missing services.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

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
    _cluster: Option<Arc<RedisCluster>>,
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
        _cluster: None,
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
        _cluster: None,
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
        _cluster: None,
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
        _cluster: None,
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

/// A private 3-master Redis Cluster on free loopback ports (no replicas, no
/// persistence), its files in a temp directory; the servers are killed on drop.
pub struct RedisCluster {
    /// The client ports of the three masters.
    pub ports: Vec<u16>,
    servers: Vec<Child>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Seed-node URLs of the cluster.
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// Starts the cluster, or returns `None` (after `skip_or_fail`) when `redis-server`
    /// or `redis-cli` is not installed. Any other failure panics.
    pub fn start() -> Option<Self> {
        let installed = |program: &str| {
            Command::new(program)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !installed("redis-server") || !installed("redis-cli") {
            skip_or_fail(
                "no redis-server for the cluster test",
                "install redis-server (it brings redis-cli)",
            );
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cluster = RedisCluster {
            ports: Vec::new(),
            servers: Vec::new(),
            _dir: dir,
        };
        let dir = cluster._dir.path().to_owned();
        while cluster.ports.len() < 3 {
            let port = cluster_port(&cluster.ports);
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes", "--cluster-config-file"])
                .arg(dir.join(format!("nodes-{port}.conf")))
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .arg("--dir")
                .arg(&dir)
                .arg("--logfile")
                .arg(dir.join(format!("redis-{port}.log")))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server");
            cluster.servers.push(child);
            cluster.ports.push(port);
        }
        for &port in &cluster.ports {
            let up = wait_until(Duration::from_secs(10), || {
                cli(port, &["ping"]).is_some_and(|out| out.trim() == "PONG")
            });
            assert!(
                up,
                "redis-server on port {port} does not answer: {}",
                log(&dir, port)
            );
        }
        let nodes: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let create = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            create.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&create.stdout),
            String::from_utf8_lossy(&create.stderr)
        );
        // Every node must agree before the client reads the slot map from any of them.
        for &port in &cluster.ports {
            let ok = wait_until(Duration::from_secs(20), || {
                cli(port, &["cluster", "info"]).is_some_and(|out| out.contains("cluster_state:ok"))
            });
            assert!(
                ok,
                "the cluster never reached cluster_state:ok on port {port}"
            );
        }
        Some(cluster)
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for server in &mut self.servers {
            let _ = server.kill();
        }
        for server in &mut self.servers {
            let _ = server.wait();
        }
    }
}

/// A free port below 55536 (the cluster bus listens on port + 10000) whose bus port is
/// free too, not in `taken`.
fn cluster_port(taken: &[u16]) -> u16 {
    loop {
        let port = closed_port();
        if port > 55_000 || taken.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// `redis-cli -p port args...`: its stdout, if it ran and succeeded.
fn cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn log(dir: &Path, port: u16) -> String {
    std::fs::read_to_string(dir.join(format!("redis-{port}.log"))).unwrap_or_default()
}

/// Polls `f` (blocking) until it returns true or `limit` passes.
fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The cluster shared by the tests of this process that run at the same time: started
/// by the first, stopped when the last fixture holding it is dropped.
static SHARED_CLUSTER: Mutex<Weak<RedisCluster>> = Mutex::new(Weak::new());

/// The shared cluster, started if no running test holds it.
pub fn shared_redis_cluster() -> Option<Arc<RedisCluster>> {
    let mut shared = SHARED_CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(cluster) = shared.upgrade() {
        return Some(cluster);
    }
    let cluster = Arc::new(RedisCluster::start()?);
    *shared = Arc::downgrade(&cluster);
    Some(cluster)
}

/// A `redis` store on a private 3-master Redis Cluster started by the test itself.
pub async fn redis_cluster() -> Option<Fixture> {
    let cluster = tokio::task::spawn_blocking(shared_redis_cluster)
        .await
        .expect("start the Redis Cluster")?;
    let config = StoreConfig::RedisCluster {
        cluster: cluster.urls(),
    };
    let store = open(&config).await.expect("open the Redis Cluster store");
    store.ping().await.expect("ping the Redis Cluster");
    Some(Fixture {
        store,
        prefix: unique_prefix(),
        max_key: 250,
        _dir: None,
        _cluster: Some(cluster),
    })
}
