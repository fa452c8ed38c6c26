//! The store contract: one suite of cases, run against every backend.
//!
//! Each case is an `async fn(&Fixture)`; the `contract!` macro instantiates every case
//! for one backend. Network backends read their addresses from the environment
//! (`SWITCHBOARD_TEST_MEMCACHED`, `SWITCHBOARD_TEST_REDIS_URL`); a missing service fails
//! under `CI` and is skipped loudly otherwise. `redis_cluster` starts its own 3-master
//! Redis Cluster (`redis-server` and `redis-cli` must be installed, same rule).

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Fixture;
use switchboard_store::{CasToken, StoreError, StoreExt};

/// The TTL of keys that must expire during a test: long enough that a loaded CI
/// machine still reads them back before they expire.
const SHORT_TTL: Duration = Duration::from_secs(2);

/// How long to wait for [`SHORT_TTL`] to have run out: memcached's TTLs are whole
/// seconds plus one (never early), so it needs a second more.
fn after_short_ttl(f: &Fixture) -> Duration {
    if f.store.backend() == "memcached" {
        Duration::from_millis(4300)
    } else {
        Duration::from_millis(3200)
    }
}

mod cases {
    use super::*;

    pub async fn get_set_delete(f: &Fixture) {
        let s = &f.store;
        let k = f.key("basic");
        assert_eq!(s.get(&k).await.unwrap(), None);
        s.set(&k, b"one", None).await.unwrap();
        assert_eq!(s.get(&k).await.unwrap().as_deref(), Some(&b"one"[..]));
        s.set(&k, b"two", None).await.unwrap();
        assert_eq!(s.get(&k).await.unwrap().as_deref(), Some(&b"two"[..]));
        assert!(s.delete(&k).await.unwrap());
        assert!(!s.delete(&k).await.unwrap());
        assert_eq!(s.get(&k).await.unwrap(), None);
        assert_eq!(s.gets(&k).await.unwrap(), None);
    }

    pub async fn empty_and_binary_values(f: &Fixture) {
        let s = &f.store;
        let empty = f.key("empty");
        s.set(&empty, b"", None).await.unwrap();
        assert_eq!(s.get(&empty).await.unwrap().as_deref(), Some(&b""[..]));
        let bin = f.key("binary");
        let all: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
        s.set(&bin, &all, None).await.unwrap();
        assert_eq!(s.get(&bin).await.unwrap(), Some(all));
        let crlf = f.key("crlf");
        s.set(&crlf, b"a\r\nEND\r\nb", None).await.unwrap();
        assert_eq!(
            s.get(&crlf).await.unwrap().as_deref(),
            Some(&b"a\r\nEND\r\nb"[..])
        );
    }

    pub async fn add_only_if_absent(f: &Fixture) {
        let s = &f.store;
        let k = f.key("add");
        assert!(s.add(&k, b"first", None).await.unwrap());
        assert!(!s.add(&k, b"second", None).await.unwrap());
        assert_eq!(s.get(&k).await.unwrap().as_deref(), Some(&b"first"[..]));
        assert!(s.delete(&k).await.unwrap());
        assert!(s.add(&k, b"third", None).await.unwrap());
        assert_eq!(s.get(&k).await.unwrap().as_deref(), Some(&b"third"[..]));
    }

    pub async fn add_race_has_one_winner(f: &Fixture) {
        let k = f.key("add-race");
        let mut tasks = Vec::new();
        for i in 0..8u8 {
            let (s, k) = (Arc::clone(&f.store), k.clone());
            tasks.push(tokio::spawn(async move { s.add(&k, &[i], None).await }));
        }
        let mut winners = 0;
        for t in tasks {
            if t.await.unwrap().unwrap() {
                winners += 1;
            }
        }
        assert_eq!(winners, 1);
    }

    pub async fn ttl_expiry(f: &Fixture) {
        let s = &f.store;
        let short = f.key("ttl-short");
        let long = f.key("ttl-long");
        let cleared = f.key("ttl-cleared");
        let added = f.key("ttl-add");
        let sub_second = f.key("ttl-sub-second");
        s.set(&short, b"x", Some(SHORT_TTL)).await.unwrap();
        s.set(&long, b"y", Some(Duration::from_secs(60)))
            .await
            .unwrap();
        s.set(&cleared, b"z", Some(SHORT_TTL)).await.unwrap();
        s.set(&cleared, b"z", None).await.unwrap();
        assert!(s.add(&added, b"a", Some(SHORT_TTL)).await.unwrap());
        s.set(&sub_second, b"s", Some(Duration::from_millis(300)))
            .await
            .unwrap();
        assert_eq!(s.get(&short).await.unwrap().as_deref(), Some(&b"x"[..]));
        assert!(s.gets(&added).await.unwrap().is_some());

        tokio::time::sleep(after_short_ttl(f)).await;
        assert_eq!(s.get(&short).await.unwrap(), None, "short TTL expired");
        assert_eq!(s.gets(&short).await.unwrap(), None);
        assert_eq!(s.get(&sub_second).await.unwrap(), None, "sub-second TTL");
        assert_eq!(s.get(&long).await.unwrap().as_deref(), Some(&b"y"[..]));
        assert_eq!(
            s.get(&cleared).await.unwrap().as_deref(),
            Some(&b"z"[..]),
            "set without TTL clears the TTL"
        );
        assert!(!s.delete(&short).await.unwrap(), "expired keys are absent");
        assert!(
            s.add(&added, b"b", None).await.unwrap(),
            "add succeeds over an expired key"
        );
        assert_eq!(
            s.increment(&short, 5).await.unwrap(),
            5,
            "expired counts as 0"
        );
    }

    pub async fn compare_and_swap(f: &Fixture) {
        let s = &f.store;
        let k = f.key("cas");
        assert!(!s
            .compare_and_swap(&k, CasToken(1), b"x", None)
            .await
            .unwrap());
        s.set(&k, b"v1", None).await.unwrap();
        let (v, t1) = s.gets(&k).await.unwrap().unwrap();
        assert_eq!(v, b"v1");
        assert!(s.compare_and_swap(&k, t1, b"v2", None).await.unwrap());
        assert_eq!(s.get(&k).await.unwrap().as_deref(), Some(&b"v2"[..]));
        // The old token is spent.
        assert!(!s.compare_and_swap(&k, t1, b"v3", None).await.unwrap());
        // A write by someone else between gets and cas makes the cas fail.
        let (_, t2) = s.gets(&k).await.unwrap().unwrap();
        assert_ne!(t1, t2);
        s.set(&k, b"other", None).await.unwrap();
        assert!(!s.compare_and_swap(&k, t2, b"v4", None).await.unwrap());
        assert_eq!(s.get(&k).await.unwrap().as_deref(), Some(&b"other"[..]));
        // Even rewriting the same bytes is a new version.
        let (_, t3) = s.gets(&k).await.unwrap().unwrap();
        s.set(&k, b"other", None).await.unwrap();
        assert!(!s.compare_and_swap(&k, t3, b"v5", None).await.unwrap());
        // Delete and re-create: the old token does not match the new value.
        let (_, t4) = s.gets(&k).await.unwrap().unwrap();
        s.delete(&k).await.unwrap();
        assert!(!s.compare_and_swap(&k, t4, b"v6", None).await.unwrap());
        s.set(&k, b"again", None).await.unwrap();
        assert!(!s.compare_and_swap(&k, t4, b"v7", None).await.unwrap());
        // An increment is a write too.
        let c = f.key("cas-counter");
        s.increment(&c, 1).await.unwrap();
        let (_, t5) = s.gets(&c).await.unwrap().unwrap();
        s.increment(&c, 1).await.unwrap();
        assert!(!s.compare_and_swap(&c, t5, b"0", None).await.unwrap());
        // A swap may set a TTL.
        let (_, t6) = s.gets(&k).await.unwrap().unwrap();
        assert!(s
            .compare_and_swap(&k, t6, b"brief", Some(SHORT_TTL))
            .await
            .unwrap());
        tokio::time::sleep(after_short_ttl(f)).await;
        assert_eq!(s.get(&k).await.unwrap(), None);
    }

    pub async fn cas_race_loses_no_update(f: &Fixture) {
        let k = f.key("cas-race");
        f.store.set_json(&k, &0u64, None).await.unwrap();
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (s, k) = (Arc::clone(&f.store), k.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..10 {
                    loop {
                        let (bytes, token) = s.gets(&k).await.unwrap().unwrap();
                        let n: u64 = serde_json::from_slice(&bytes).unwrap();
                        let next = serde_json::to_vec(&(n + 1)).unwrap();
                        if s.compare_and_swap(&k, token, &next, None).await.unwrap() {
                            break;
                        }
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(f.store.get_json::<u64>(&k).await.unwrap(), Some(40));
    }

    pub async fn increment(f: &Fixture) {
        let s = &f.store;
        let k = f.key("incr");
        assert_eq!(s.increment(&k, 3).await.unwrap(), 3);
        assert_eq!(s.increment(&k, 4).await.unwrap(), 7);
        assert_eq!(s.increment(&k, 0).await.unwrap(), 7);
        assert_eq!(s.get(&k).await.unwrap().as_deref(), Some(&b"7"[..]));
        let set = f.key("incr-set");
        s.set(&set, b"40", None).await.unwrap();
        assert_eq!(s.increment(&set, 2).await.unwrap(), 42);
        assert_eq!(s.get_json::<u64>(&set).await.unwrap(), Some(42));
        let big = f.key("incr-big");
        s.set(&big, b"4000000000", None).await.unwrap();
        assert_eq!(s.increment(&big, 1).await.unwrap(), 4_000_000_001);
    }

    pub async fn increment_keeps_ttl(f: &Fixture) {
        let s = &f.store;
        let k = f.key("incr-ttl");
        s.set(&k, b"1", Some(SHORT_TTL)).await.unwrap();
        assert_eq!(s.increment(&k, 1).await.unwrap(), 2);
        tokio::time::sleep(after_short_ttl(f)).await;
        assert_eq!(s.get(&k).await.unwrap(), None);
    }

    pub async fn increment_not_a_number(f: &Fixture) {
        let s = &f.store;
        let k = f.key("incr-nan");
        s.set(&k, b"not a number", None).await.unwrap();
        match s.increment(&k, 1).await {
            Err(StoreError::NotANumber { key }) => assert_eq!(key, k),
            other => panic!("expected NotANumber, got {other:?}"),
        }
        assert_eq!(
            s.get(&k).await.unwrap().as_deref(),
            Some(&b"not a number"[..])
        );
    }

    pub async fn increment_race(f: &Fixture) {
        let k = f.key("incr-race");
        let (tasks_n, per_task) = (8u64, 50u64);
        let mut tasks = Vec::new();
        for _ in 0..tasks_n {
            let (s, k) = (Arc::clone(&f.store), k.clone());
            tasks.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..per_task {
                    seen.push(s.increment(&k, 1).await.unwrap());
                }
                seen
            }));
        }
        let mut all = HashSet::new();
        for t in tasks {
            for n in t.await.unwrap() {
                assert!(all.insert(n), "increment returned {n} twice");
            }
        }
        assert_eq!(all.len() as u64, tasks_n * per_task);
        let total = tasks_n * per_task;
        assert_eq!(
            f.store.get(&k).await.unwrap(),
            Some(total.to_string().into_bytes())
        );
    }

    pub async fn invalid_keys(f: &Fixture) {
        let s = &f.store;
        let long = "k".repeat(251);
        for key in [
            "",
            "has space",
            "new\nline",
            "tab\t",
            "nul\0",
            long.as_str(),
        ] {
            let bad = |r: Result<(), StoreError>| {
                assert!(
                    matches!(r, Err(StoreError::InvalidKey { .. })),
                    "{key:?}: {r:?}"
                )
            };
            bad(s.get(key).await.map(|_| ()));
            bad(s.gets(key).await.map(|_| ()));
            bad(s.set(key, b"v", None).await);
            bad(s.add(key, b"v", None).await.map(|_| ()));
            bad(s.delete(key).await.map(|_| ()));
            bad(s.increment(key, 1).await.map(|_| ()));
            bad(s
                .compare_and_swap(key, CasToken(1), b"v", None)
                .await
                .map(|_| ()));
        }
        // 250 bytes is the longest key allowed, and non-ASCII is fine.
        let max = format!("{}{}", f.prefix, "m".repeat(f.max_key - f.prefix.len()));
        s.set(&max, b"v", None).await.unwrap();
        assert_eq!(s.get(&max).await.unwrap().as_deref(), Some(&b"v"[..]));
        let too_long = format!("{max}m");
        assert!(matches!(
            s.set(&too_long, b"v", None).await,
            Err(StoreError::InvalidKey { .. })
        ));
        let unicode = f.key("ключ/鍵");
        s.set(&unicode, b"u", None).await.unwrap();
        assert_eq!(s.get(&unicode).await.unwrap().as_deref(), Some(&b"u"[..]));
    }

    pub async fn large_values(f: &Fixture) {
        let s = &f.store;
        let k = f.key("large");
        // 900 KiB: below memcached's default 1 MiB item limit, with room for overhead.
        let value: Vec<u8> = (0..900 * 1024).map(|i| (i * 7 % 251) as u8).collect();
        s.set(&k, &value, None).await.unwrap();
        assert_eq!(s.get(&k).await.unwrap(), Some(value.clone()));
        let (got, token) = s.gets(&k).await.unwrap().unwrap();
        assert_eq!(got.len(), value.len());
        assert!(s
            .compare_and_swap(&k, token, &value[..10], None)
            .await
            .unwrap());
        assert_eq!(s.get(&k).await.unwrap().as_deref(), Some(&value[..10]));
    }

    pub async fn json_helpers(f: &Fixture) {
        let s = &f.store;
        let k = f.key("json");
        s.set_json(&k, &vec!["a", "b"], None).await.unwrap();
        assert_eq!(
            s.get_json::<Vec<String>>(&k).await.unwrap(),
            Some(vec!["a".to_owned(), "b".to_owned()])
        );
        s.set(&k, b"{not json", None).await.unwrap();
        match s.get_json::<Vec<String>>(&k).await {
            Err(StoreError::Corrupt { key, .. }) => assert_eq!(key, k),
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    pub async fn scan_prefix(f: &Fixture) {
        let s = &f.store;
        let base = f.key("scan/");
        for (name, value) in [("b", "2"), ("a", "1"), ("c/d", "3")] {
            s.set(&format!("{base}{name}"), value.as_bytes(), None)
                .await
                .unwrap();
        }
        s.set(&f.key("scan"), b"not under the prefix", None)
            .await
            .unwrap();
        s.set(&f.key("scan0"), b"not under the prefix", None)
            .await
            .unwrap();
        s.set(&format!("{base}gone"), b"x", Some(SHORT_TTL))
            .await
            .unwrap();
        // Glob and LIKE characters in a prefix are literal.
        let globby = f.key("g*[?]%_\\/");
        s.set(&format!("{globby}1"), b"g", None).await.unwrap();
        s.set(&f.key("gX[?]%_\\/2"), b"h", None).await.unwrap();
        s.set(&f.key("g*a%_\\/3"), b"i", None).await.unwrap();

        let result = s.scan_prefix(&base).await;
        if s.backend() == "memcached" {
            assert!(
                matches!(result, Err(StoreError::Unsupported { .. })),
                "{result:?}"
            );
            return;
        }
        tokio::time::sleep(after_short_ttl(f)).await;
        let found = s.scan_prefix(&base).await.unwrap();
        let expected: Vec<(String, Vec<u8>)> = [("a", "1"), ("b", "2"), ("c/d", "3")]
            .into_iter()
            .map(|(k, v)| (format!("{base}{k}"), v.as_bytes().to_vec()))
            .collect();
        assert_eq!(found, expected);
        let found = s.scan_prefix(&globby).await.unwrap();
        assert_eq!(found, vec![(format!("{globby}1"), b"g".to_vec())]);
        assert_eq!(s.scan_prefix(&f.key("nothing/")).await.unwrap(), vec![]);
        let all = s.scan_prefix(&f.prefix).await.unwrap();
        assert!(all.len() >= 7, "{all:?}");
    }

    pub async fn many_keys(f: &Fixture) {
        let s = &f.store;
        // Enough keys to land on every memcached server.
        for i in 0..200 {
            s.set(&f.key(&format!("many/{i}")), i.to_string().as_bytes(), None)
                .await
                .unwrap();
        }
        for i in 0..200 {
            assert_eq!(
                s.get(&f.key(&format!("many/{i}"))).await.unwrap(),
                Some(i.to_string().into_bytes())
            );
        }
        if s.backend() != "memcached" {
            assert_eq!(s.scan_prefix(&f.key("many/")).await.unwrap().len(), 200);
        }
    }

    pub async fn ping(f: &Fixture) {
        let started = Instant::now();
        f.store.ping().await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}

/// Instantiates every contract case for one backend.
macro_rules! contract {
    ($backend:ident, $open:expr) => {
        mod $backend {
            use super::*;

            macro_rules! case {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        #[allow(clippy::redundant_closure_call)]
                        let Some(fixture) = ($open)().await
                        else {
                            return;
                        };
                        cases::$name(&fixture).await;
                    }
                };
            }

            case!(get_set_delete);
            case!(empty_and_binary_values);
            case!(add_only_if_absent);
            case!(add_race_has_one_winner);
            case!(ttl_expiry);
            case!(compare_and_swap);
            case!(cas_race_loses_no_update);
            case!(increment);
            case!(increment_keeps_ttl);
            case!(increment_not_a_number);
            case!(increment_race);
            case!(invalid_keys);
            case!(large_values);
            case!(json_helpers);
            case!(scan_prefix);
            case!(many_keys);
            case!(ping);
        }
    };
}

// Each backend but `memory` is a cargo feature (all on by default).
contract!(memory, || async { common::memory() });
#[cfg(feature = "file")]
contract!(file, common::file);
#[cfg(feature = "file")]
contract!(namespaced_file, common::namespaced_file);
#[cfg(feature = "memcached")]
contract!(memcached, common::memcached);
#[cfg(feature = "redis")]
contract!(redis, common::redis);
#[cfg(feature = "redis")]
contract!(redis_cluster, common::redis_cluster);
