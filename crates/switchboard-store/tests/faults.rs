//! Faults of the network backends: servers that are down, that never answer, that go
//! away and come back while the store stays open, and foreign values.
// Both network backends are cargo features (on by default); these tests need both.
#![cfg(all(feature = "memcached", feature = "redis"))]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use switchboard_store::{
    open, MemcachedStore, RedisStore, SharedStore, Store, StoreConfig, StoreError,
};

/// Errors must come back this fast (the backends' op timeout is 3 s).
const FAST: Duration = Duration::from_secs(5);

/// Runs `f` and checks it fails with `Backend` within [`FAST`].
async fn assert_backend_error_fast<T: std::fmt::Debug>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, StoreError>>,
) {
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: hung for 30 s"));
    let took = started.elapsed();
    assert!(
        matches!(result, Err(StoreError::Backend { .. })),
        "{what}: expected a Backend error, got {result:?}"
    );
    assert!(took < FAST, "{what}: took {took:?}");
}

async fn assert_all_ops_fail_fast(store: &SharedStore) {
    assert_backend_error_fast("get", store.get("k")).await;
    assert_backend_error_fast("gets", store.gets("k")).await;
    assert_backend_error_fast("set", store.set("k", b"v", None)).await;
    assert_backend_error_fast("add", store.add("k", b"v", None)).await;
    assert_backend_error_fast("delete", store.delete("k")).await;
    assert_backend_error_fast("increment", store.increment("k", 1)).await;
    assert_backend_error_fast("ping", store.ping()).await;
}

#[tokio::test]
async fn memcached_down_is_a_quick_error() {
    let addr = format!("127.0.0.1:{}", common::closed_port());
    let store = open(&StoreConfig::Memcached {
        servers: vec![addr.clone()],
    })
    .await
    .unwrap();
    assert_all_ops_fail_fast(&store).await;
    let err = store.get("k").await.unwrap_err();
    assert!(err.to_string().contains(&addr), "names the server: {err}");
}

#[tokio::test]
async fn redis_down_is_a_quick_error() {
    let url = format!("redis://127.0.0.1:{}", common::closed_port());
    let store = open(&StoreConfig::Redis { url: url.clone() })
        .await
        .unwrap();
    assert_all_ops_fail_fast(&store).await;
    assert_backend_error_fast("scan_prefix", store.scan_prefix("p")).await;
}

#[tokio::test]
async fn redis_cluster_down_is_a_quick_error() {
    let nodes: Vec<String> = (0..2)
        .map(|_| format!("redis://127.0.0.1:{}", common::closed_port()))
        .collect();
    let store = open(&StoreConfig::RedisCluster {
        cluster: nodes.clone(),
    })
    .await
    .unwrap();
    assert_eq!(store.backend(), "redis");
    assert_all_ops_fail_fast(&store).await;
    assert_backend_error_fast("scan_prefix", store.scan_prefix("p")).await;
    let err = store.get("k").await.unwrap_err();
    assert!(
        err.to_string().contains(&nodes[0]),
        "names the nodes: {err}"
    );
}

/// A server that accepts connections and never says a word.
async fn black_hole() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (addr, task)
}

#[tokio::test]
async fn memcached_that_never_answers_times_out() {
    let (addr, task) = black_hole().await;
    let store = open(&StoreConfig::Memcached {
        servers: vec![addr],
    })
    .await
    .unwrap();
    assert_backend_error_fast("get", store.get("k")).await;
    assert_backend_error_fast("set", store.set("k", b"v", None)).await;
    task.abort();
}

#[tokio::test]
async fn redis_that_never_answers_times_out() {
    let (addr, task) = black_hole().await;
    let store = open(&StoreConfig::Redis {
        url: format!("redis://{addr}"),
    })
    .await
    .unwrap();
    assert_backend_error_fast("get", store.get("k")).await;
    assert_backend_error_fast("set", store.set("k", b"v", None)).await;
    task.abort();
}

#[tokio::test]
async fn bad_configurations_are_config_errors() {
    for config in [
        StoreConfig::Memcached { servers: vec![] },
        StoreConfig::Redis {
            url: "not a url".into(),
        },
        StoreConfig::RedisCluster { cluster: vec![] },
        StoreConfig::RedisCluster {
            cluster: vec!["redis://127.0.0.1:7001".into(), "not a url".into()],
        },
        StoreConfig::RedisCluster {
            cluster: vec!["redis://127.0.0.1:7001/2".into()],
        },
    ] {
        let err = open(&config).await.err().expect("must fail");
        assert!(matches!(err, StoreError::Config(_)), "{err:?}");
    }
    assert!(matches!(
        RedisStore::open("http://127.0.0.1:6379"),
        Err(StoreError::Config(_))
    ));
    assert!(matches!(
        RedisStore::open_cluster(&["http://127.0.0.1:7001".into()]),
        Err(StoreError::Config(_))
    ));
}

#[tokio::test]
async fn memcached_with_one_server_down_serves_the_other_half() {
    let Some(servers) = common::memcached_servers() else {
        common::skip_or_fail("no memcached", "set SWITCHBOARD_TEST_MEMCACHED");
        return;
    };
    let dead = format!("127.0.0.1:{}", common::closed_port());
    let store = MemcachedStore::open(&[servers[0].clone(), dead.clone()]).unwrap();
    let prefix = common::unique_prefix();
    let (mut ok, mut failed) = (0, 0);
    for i in 0..40 {
        let started = Instant::now();
        match store.set(&format!("{prefix}{i}"), b"v", None).await {
            Ok(()) => ok += 1,
            Err(StoreError::Backend { target, .. }) => {
                assert_eq!(target, dead);
                failed += 1;
            }
            Err(e) => panic!("{e:?}"),
        }
        assert!(started.elapsed() < FAST);
    }
    assert!(ok > 5 && failed > 5, "ok {ok}, failed {failed}");
}

// --- Outages: a private server stopped and started under an open store. ---

/// A server process this test owns; killed on drop.
struct Private {
    child: Option<Child>,
    program: &'static str,
    args: Vec<String>,
}

impl Private {
    fn start(program: &'static str, args: Vec<String>) -> Option<Self> {
        let mut p = Private {
            child: None,
            program,
            args,
        };
        p.restart().ok()?;
        Some(p)
    }

    fn restart(&mut self) -> std::io::Result<()> {
        let child = Command::new(self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Private {
    fn drop(&mut self) {
        self.stop();
    }
}

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

async fn outage(store: SharedStore, mut server: Private) {
    let prefix = common::unique_prefix();
    let key = format!("{prefix}outage");
    assert!(
        common::eventually(Duration::from_secs(10), || async {
            store.set(&key, b"before", None).await.is_ok()
        })
        .await,
        "server did not come up"
    );
    assert_eq!(store.increment(&format!("{key}-n"), 1).await.unwrap(), 1);

    server.stop();
    assert_backend_error_fast("get while down", store.get(&key)).await;
    assert_backend_error_fast("set while down", store.set(&key, b"x", None)).await;
    assert_backend_error_fast("increment while down", store.increment(&key, 1)).await;

    server.restart().unwrap();
    // The same store object recovers by itself.
    assert!(
        common::eventually(Duration::from_secs(15), || async {
            store.set(&key, b"after", None).await.is_ok()
        })
        .await,
        "{} store did not recover",
        store.backend()
    );
    assert_eq!(
        store.get(&key).await.unwrap().as_deref(),
        Some(&b"after"[..])
    );
    let (_, token) = store.gets(&key).await.unwrap().unwrap();
    assert!(store
        .compare_and_swap(&key, token, b"swapped", None)
        .await
        .unwrap());
    // The private servers keep nothing across a restart: counters start over.
    assert_eq!(store.increment(&format!("{key}-n"), 1).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memcached_outage_and_recovery() {
    if !have("memcached") {
        common::skip_or_fail(
            "no memcached binary for the outage test",
            "install memcached or source scripts/services.sh",
        );
        return;
    }
    let port = common::closed_port();
    let args = ["-u", "root", "-l", "127.0.0.1", "-U", "0", "-m", "16", "-p"]
        .into_iter()
        .map(str::to_owned)
        .chain([port.to_string()])
        .collect();
    let server = Private::start("memcached", args).expect("start memcached");
    let store = open(&StoreConfig::Memcached {
        servers: vec![format!("127.0.0.1:{port}")],
    })
    .await
    .unwrap();
    outage(store, server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_and_recovery() {
    if !have("redis-server") {
        common::skip_or_fail(
            "no redis-server binary for the outage test",
            "install redis-server or source scripts/services.sh",
        );
        return;
    }
    let port = common::closed_port();
    let args = [
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--port",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain([port.to_string()])
    .collect();
    let server = Private::start("redis-server", args).expect("start redis-server");
    let store = open(&StoreConfig::Redis {
        url: format!("redis://127.0.0.1:{port}"),
    })
    .await
    .unwrap();
    outage(store, server).await;
}

// --- Foreign values in Redis: written by someone else, not in our layout. ---

#[tokio::test]
async fn redis_foreign_values_are_corrupt_naming_the_key() {
    let Some(f) = common::redis().await else {
        return;
    };
    let client = redis::Client::open(common::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let string_key = f.key("foreign-string");
    let hash_key = f.key("foreign-hash");
    let version_key = f.key("foreign-version");
    let list_key = f.key("foreign-list");
    let _: () = redis::cmd("SET")
        .arg(&string_key)
        .arg("plain")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(&hash_key)
        .arg("name")
        .arg("x")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(&version_key)
        .arg("v")
        .arg("1")
        .arg("n")
        .arg("not-a-version")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("RPUSH")
        .arg(&list_key)
        .arg("a")
        .query_async(&mut conn)
        .await
        .unwrap();

    for key in [&string_key, &hash_key, &version_key, &list_key] {
        let results = [
            ("get", f.store.get(key).await.map(|_| ())),
            ("gets", f.store.gets(key).await.map(|_| ())),
        ];
        for (op, result) in results {
            match result {
                Err(StoreError::Corrupt { key: k, .. }) => assert_eq!(&k, key, "{op}"),
                other => panic!("{op} {key}: expected Corrupt, got {other:?}"),
            }
        }
    }
    for key in [&string_key, &list_key] {
        match f.store.increment(key, 1).await {
            Err(StoreError::Corrupt { key: k, .. }) => assert_eq!(&k, key),
            other => panic!("increment {key}: expected Corrupt, got {other:?}"),
        }
    }
    // A swap never overwrites a foreign value; set and delete do, as in Redis.
    assert!(!f
        .store
        .compare_and_swap(&string_key, switchboard_store::CasToken(1), b"x", None)
        .await
        .unwrap());
    match f.store.scan_prefix(&f.key("foreign-")).await {
        Err(StoreError::Corrupt { key, .. }) => assert!(key.starts_with(&f.key("foreign-"))),
        other => panic!("scan_prefix: expected Corrupt, got {other:?}"),
    }
    f.store.set(&string_key, b"ours", None).await.unwrap();
    assert_eq!(
        f.store.get(&string_key).await.unwrap().as_deref(),
        Some(&b"ours"[..])
    );
    assert!(f.store.delete(&list_key).await.unwrap());
}

#[tokio::test]
async fn redis_counter_limits() {
    let Some(f) = common::redis().await else {
        return;
    };
    let k = f.key("limits");
    assert!(matches!(
        f.store.increment(&k, u64::MAX).await,
        Err(StoreError::Unsupported { .. })
    ));
    f.store
        .set(&k, i64::MAX.to_string().as_bytes(), None)
        .await
        .unwrap();
    assert!(matches!(
        f.store.increment(&k, 1).await,
        Err(StoreError::Backend { .. })
    ));
    f.store
        .set(&k, b"18446744073709551615", None)
        .await
        .unwrap();
    assert!(matches!(
        f.store.increment(&k, 1).await,
        Err(StoreError::NotANumber { .. })
    ));
}

#[tokio::test]
async fn memcached_store_is_usable_through_the_trait_object() {
    let Some(f) = common::memcached().await else {
        return;
    };
    let k = f.key("sanity");
    f.store.set(&k, b"1", None).await.unwrap();
    assert_eq!(f.store.backend(), "memcached");
    assert!(matches!(
        f.store.scan_prefix(&f.prefix).await,
        Err(StoreError::Unsupported { .. })
    ));
}
