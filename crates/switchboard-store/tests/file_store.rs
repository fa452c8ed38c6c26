//! File-backend specifics: several real processes on one file, SIGKILL mid-write,
//! foreign files and foreign values.
//!
//! The multi-process tests re-run this test binary as a child with
//! `SWITCHBOARD_STORE_CHILD` set; the child runs only the `child` entry below.
// The file backend is a cargo feature; with it left out there is nothing to test.
#![cfg(feature = "file")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use switchboard_store::{FileStore, Store, StoreError};

const CHILD_ENV: &str = "SWITCHBOARD_STORE_CHILD";

/// Starts this test binary as a child running `child` with the given job.
fn spawn_child(job: &str, path: &Path, arg: u64) -> Child {
    let exe = std::env::current_exe().expect("current exe");
    Command::new(exe)
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{job}|{}|{arg}", path.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn child")
}

/// The child side: a no-op unless started by `spawn_child`.
#[test]
fn child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut parts = spec.splitn(3, '|');
    let (job, path, arg) = (
        parts.next().unwrap_or_default().to_owned(),
        PathBuf::from(parts.next().unwrap_or_default()),
        parts
            .next()
            .and_then(|a| a.parse::<u64>().ok())
            .unwrap_or(0),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let store = FileStore::open(&path).await.expect("child open");
        match job.as_str() {
            "increment" => {
                for _ in 0..arg {
                    store.increment("counter", 1).await.expect("increment");
                }
            }
            "write-loop" => {
                // Writes forever until killed: a counter plus a large value derived
                // from it, each in its own transaction.
                let big = vec![b'x'; 64 * 1024];
                loop {
                    let n = store
                        .increment("crash/counter", 1)
                        .await
                        .expect("increment");
                    let mut value = n.to_string().into_bytes();
                    value.extend_from_slice(&big);
                    store.set("crash/big", &value, None).await.expect("set");
                    store
                        .set(&format!("crash/key/{}", n % 100), &value[..100], None)
                        .await
                        .expect("set");
                }
            }
            other => panic!("unknown child job {other}"),
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_processes_lose_no_increment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.sqlite");
    // The first open creates the file; the children race on the rest.
    let store = FileStore::open(&path).await.unwrap();
    let (processes, per_process) = (4u64, 200u64);
    let children: Vec<Child> = (0..processes)
        .map(|_| spawn_child("increment", &path, per_process))
        .collect();
    // The parent increments too, concurrently.
    for _ in 0..per_process {
        store.increment("counter", 1).await.unwrap();
    }
    for mut c in children {
        let status = tokio::task::spawn_blocking(move || c.wait()).await.unwrap();
        assert!(status.unwrap().success(), "child failed");
    }
    let total = (processes + 1) * per_process;
    assert_eq!(
        store.get("counter").await.unwrap(),
        Some(total.to_string().into_bytes())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_processes_create_one_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new/dir/race.sqlite");
    let children: Vec<Child> = (0..4)
        .map(|_| spawn_child("increment", &path, 20))
        .collect();
    for mut c in children {
        let status = tokio::task::spawn_blocking(move || c.wait()).await.unwrap();
        assert!(status.unwrap().success(), "child failed");
    }
    let store = FileStore::open(&path).await.unwrap();
    assert_eq!(
        store.get("counter").await.unwrap().as_deref(),
        Some(&b"80"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_write_never_corrupts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.sqlite");
    let mut last = 0u64;
    for round in 0..5 {
        let mut child = spawn_child("write-loop", &path, 0);
        // Let it write for a while (and at least once), then kill it without warning.
        let reader = FileStore::open(&path).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let n = counter(&reader).await;
            if n > last + 20 {
                break;
            }
            assert!(Instant::now() < deadline, "child made no progress");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(30 + 17 * round)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        drop(reader);

        // The file opens, passes SQLite's integrity check and reads consistently.
        let conn = rusqlite::Connection::open(&path).unwrap();
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        drop(conn);
        let store = FileStore::open(&path).await.unwrap();
        let n = counter(&store).await;
        assert!(n > last, "round {round}: counter went from {last} to {n}");
        let big = store.get("crash/big").await.unwrap().unwrap();
        assert_eq!(
            big.len() - big.iter().take_while(|b| b.is_ascii_digit()).count(),
            64 * 1024
        );
        assert_eq!(store.increment("crash/counter", 1).await.unwrap(), n + 1);
        last = n + 1;
    }
}

async fn counter(store: &FileStore) -> u64 {
    store
        .get("crash/counter")
        .await
        .unwrap()
        .and_then(|v| String::from_utf8(v).ok()?.parse().ok())
        .unwrap_or(0)
}

fn assert_names_path(err: StoreError, path: &Path) {
    let text = err.to_string();
    assert!(matches!(err, StoreError::Backend { .. }), "{err:?}");
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("not a Switchboard store"), "{text}");
}

#[tokio::test]
async fn garbage_file_is_refused_by_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.sqlite");
    let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 31 % 256) as u8).collect();
    std::fs::write(&path, &garbage).unwrap();
    let err = FileStore::open(&path).await.err().expect("must fail");
    assert_names_path(err, &path);
    assert_eq!(std::fs::read(&path).unwrap(), garbage, "left untouched");
}

#[tokio::test]
async fn text_file_is_refused_by_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "just some notes\n".repeat(100)).unwrap();
    let err = FileStore::open(&path).await.err().expect("must fail");
    assert_names_path(err, &path);
}

#[tokio::test]
async fn foreign_sqlite_database_is_refused_and_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("foreign.sqlite");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT);")
            .unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let err = FileStore::open(&path).await.err().expect("must fail");
    assert_names_path(err, &path);
    assert_eq!(std::fs::read(&path).unwrap(), before, "left untouched");
}

#[tokio::test]
async fn directory_path_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = FileStore::open(dir.path()).await.err().expect("must fail");
    assert!(matches!(err, StoreError::Backend { .. }), "{err:?}");
    assert!(err.to_string().contains(&dir.path().display().to_string()));
}

#[tokio::test]
async fn empty_file_becomes_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.sqlite");
    std::fs::write(&path, b"").unwrap();
    let store = FileStore::open(&path).await.unwrap();
    store.set("k", b"v", None).await.unwrap();
    drop(store);
    let store = FileStore::open(&path).await.unwrap();
    assert_eq!(store.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
}

#[tokio::test]
async fn foreign_value_is_corrupt_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.sqlite");
    let store = FileStore::open(&path).await.unwrap();
    store.set("good", b"1", None).await.unwrap();
    {
        // Another program writes a row of the wrong type behind our back.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute(
            "INSERT INTO kv (key, value, version, expires_at) VALUES ('bad', 'text', 'x', NULL)",
            [],
        )
        .unwrap();
    }
    for result in [
        store.get("bad").await.map(|_| ()),
        store.gets("bad").await.map(|_| ()),
        store.increment("bad", 1).await.map(|_| ()),
    ] {
        match result {
            Err(StoreError::Corrupt { key, .. }) => assert_eq!(key, "bad"),
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }
    // The store stays usable, and the bad value can be overwritten.
    store.set("bad", b"2", None).await.unwrap();
    assert_eq!(store.increment("bad", 1).await.unwrap(), 3);
    assert_eq!(store.get("good").await.unwrap().as_deref(), Some(&b"1"[..]));
}

#[tokio::test]
async fn expired_rows_are_purged() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path().join("s.sqlite")).await.unwrap();
    store
        .set("short", b"x", Some(Duration::from_millis(50)))
        .await
        .unwrap();
    store.set("kept", b"y", None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(store.purge_expired().await.unwrap(), 1);
    assert_eq!(store.purge_expired().await.unwrap(), 0);
    assert_eq!(store.get("kept").await.unwrap().as_deref(), Some(&b"y"[..]));
}

#[tokio::test]
async fn reopen_keeps_data_and_cas_tokens_grow() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sqlite");
    let store = FileStore::open(&path).await.unwrap();
    store.set("k", b"v", None).await.unwrap();
    let (_, t1) = store.gets("k").await.unwrap().unwrap();
    drop(store);
    let store = FileStore::open(&path).await.unwrap();
    store.delete("k").await.unwrap();
    store.set("k", b"v", None).await.unwrap();
    let (_, t2) = store.gets("k").await.unwrap().unwrap();
    assert!(t2.0 > t1.0);
    assert!(!store.compare_and_swap("k", t1, b"w", None).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_held_by_another_process_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("locked.sqlite");
    let store = FileStore::open(&path).await.unwrap();
    store.set("k", b"before", None).await.unwrap();
    // Another "process" takes the write lock and sits on it.
    let holder = rusqlite::Connection::open(&path).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let started = Instant::now();
    let result = store.set("k", b"blocked", None).await;
    let took = started.elapsed();
    assert!(
        matches!(result, Err(StoreError::Backend { .. })),
        "{result:?}"
    );
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(10),
        "{took:?}"
    );
    // Readers are not blocked by a writer (WAL).
    assert_eq!(
        store.get("k").await.unwrap().as_deref(),
        Some(&b"before"[..])
    );
    holder.execute_batch("ROLLBACK").unwrap();
    store.set("k", b"after", None).await.unwrap();
    assert_eq!(
        store.get("k").await.unwrap().as_deref(),
        Some(&b"after"[..])
    );
}
