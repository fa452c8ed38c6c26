//! Shared helpers for the integration tests: where the test databases are,
//! the skip rule for a missing MariaDB, and unique table names.
#![allow(dead_code)] // each test binary uses a different subset

use std::sync::atomic::{AtomicU32, Ordering};

use switchboard_db::{Instance, InstanceConfig};

/// Default MariaDB for tests; override with `SWITCHBOARD_TEST_MYSQL_URL`.
pub const DEFAULT_MYSQL_URL: &str = "mysql://root@127.0.0.1:3306/test";

pub fn mysql_url() -> String {
    std::env::var("SWITCHBOARD_TEST_MYSQL_URL").unwrap_or_else(|_| DEFAULT_MYSQL_URL.to_string())
}

/// The test MariaDB config with a given pool size.
pub fn mysql_config(pool_size: u32) -> InstanceConfig {
    let mut c = InstanceConfig::mysql_url(&mysql_url())
        .expect("SWITCHBOARD_TEST_MYSQL_URL is a mysql:// URL");
    c.pool_size = pool_size;
    c.connect_timeout = 3.0;
    c
}

/// A MariaDB instance, or `None` (after a loud SKIPPED line) when the server
/// is unreachable outside CI. In CI (`CI` set) an unreachable server fails
/// the test.
pub async fn mysql(pool_size: u32) -> Option<Instance> {
    let inst = Instance::new("test-mysql", mysql_config(pool_size)).expect("valid config");
    match inst.ping().await {
        Ok(()) => Some(inst),
        // The server answered but refused us: a setup error, never a skip.
        Err(
            e @ switchboard_db::DbError::Connect {
                source: sqlx::Error::Database(_),
                ..
            },
        ) => {
            panic!("MariaDB at {} refused the connection: {e}", mysql_url())
        }
        Err(e) => {
            let url = mysql_url();
            if std::env::var_os("CI").is_some() {
                panic!("no MariaDB at {url} (CI is set, so this fails): {e}");
            }
            // Written to the real stderr, not through `eprintln!`, which the
            // test harness captures and hides for passing tests.
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "\n!!!!!!!! SKIPPED (no MariaDB at {url}): {e} !!!!!!!!\n"
            );
            None
        }
    }
}

/// An SQLite file instance in a fresh temporary directory (kept alive by the
/// returned guard).
pub fn sqlite() -> (Instance, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let inst = Instance::new(
        "test-sqlite",
        InstanceConfig::sqlite(dir.path().join("test.sqlite3")),
    )
    .expect("valid config");
    (inst, dir)
}

/// A table name no other test (or concurrent test run) uses.
pub fn table(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "sbdb_{prefix}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Both backends with the same table-creating SQL, for tests that run the
/// same assertions on each. Type names that differ are given per dialect.
pub fn int_pk(inst: &Instance) -> &'static str {
    match inst.dialect() {
        switchboard_db::Dialect::MySql => "BIGINT PRIMARY KEY AUTO_INCREMENT",
        switchboard_db::Dialect::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
    }
}

/// Runs each named `async fn(&Instance)` as two tests: on MariaDB (skipped loudly
/// outside CI when it is unreachable) and on a fresh SQLite file. Each half is
/// compiled with its driver's cargo feature (both are on by default).
#[allow(unused_macros)]
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        #[cfg(feature = "mysql")]
        mod mysql {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(db) = crate::common::mysql(4).await else { return };
                    super::$name(&db).await;
                }
            )*
        }
        #[cfg(feature = "sqlite")]
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let (db, _dir) = crate::common::sqlite();
                    super::$name(&db).await;
                }
            )*
        }
    };
}
