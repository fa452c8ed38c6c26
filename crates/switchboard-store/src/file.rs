//! The `file` backend: one SQLite file shared by every process on the machine. See [`FileStore`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior};

use crate::{validate_key, CasToken, Result, Store, StoreError};

/// `PRAGMA application_id` of a Switchboard store file ("SWBS").
const APPLICATION_ID: i32 = 0x5357_4253;
/// `PRAGMA user_version`: the schema version this code writes and understands.
const SCHEMA_VERSION: i32 = 1;
/// How long an operation waits for another process's write lock.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How often expired rows are deleted.
pub const PURGE_INTERVAL: Duration = Duration::from_secs(60);
/// Connections kept open for reuse.
const POOL_SIZE: usize = 4;

const SCHEMA: &str = "
    CREATE TABLE kv (
        key        TEXT PRIMARY KEY NOT NULL,
        value      BLOB NOT NULL,
        version    INTEGER NOT NULL,
        expires_at INTEGER
    ) WITHOUT ROWID;
    CREATE INDEX kv_expires_at ON kv (expires_at) WHERE expires_at IS NOT NULL;
    CREATE TABLE meta (
        name  TEXT PRIMARY KEY NOT NULL,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO meta (name, value) VALUES ('version', 0);
";

/// The `file` backend: one SQLite file shared by every process on the machine.
///
/// - The file is an SQLite database in WAL mode, marked as a Switchboard store by its
///   `application_id`; a foreign SQLite database or a file that is not SQLite at all is
///   refused with an error naming the path, and never modified.
/// - Every operation is one short transaction; read-modify-write operations take the
///   write lock up front (`BEGIN IMMEDIATE`), so concurrent processes serialize instead
///   of losing updates. A busy database is waited for up to 5 s (`BUSY_TIMEOUT`).
/// - SQLite's write-ahead log makes a commit atomic: a process killed mid-write leaves
///   either the old or the new value, never a corrupt file.
/// - Expiry is stored as unix milliseconds; expired rows are invisible to reads and are
///   purged lazily (overwritten) and periodically (every minute).
/// - SQLite is blocking, so every operation runs on tokio's blocking pool with a
///   connection from a small pool.
pub struct FileStore {
    pool: Arc<Pool>,
}

struct Pool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// Serializes this process's write transactions: SQLite would serialize them anyway,
    /// but through its busy handler, which sleeps for milliseconds at a time.
    write_lock: Mutex<()>,
}

impl FileStore {
    /// Opens (creating if needed) the store file at `path`; its directory is created too.
    ///
    /// A file that is not a Switchboard store is [`StoreError::Backend`] naming the path.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let pool = Arc::new(Pool {
            path: path.clone(),
            idle: Mutex::new(Vec::new()),
            write_lock: Mutex::new(()),
        });
        let p = Arc::clone(&pool);
        let conn = tokio::task::spawn_blocking(move || p.initialize())
            .await
            .map_err(|e| backend_error(&path, format!("open task failed: {e}")))??;
        pool.put(conn);
        spawn_purger(Arc::downgrade(&pool));
        Ok(FileStore { pool })
    }

    /// The path of the store file.
    pub fn path(&self) -> &Path {
        &self.pool.path
    }

    /// Deletes every expired row now (also done every minute); returns how
    /// many were deleted.
    pub async fn purge_expired(&self) -> Result<usize> {
        self.run("purge", purge).await
    }

    /// Runs `f` in one transaction on the blocking pool; `"get"`-like reads use a
    /// deferred transaction, everything else `BEGIN IMMEDIATE`.
    async fn run<T, F>(&self, op: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<T, OpError> + Send + 'static,
    {
        self.pool.run(op, f).await
    }
}

/// The error of one operation inside the blocking closure: SQLite's, or ours.
enum OpError {
    Sql(rusqlite::Error),
    Store(StoreError),
}

impl From<rusqlite::Error> for OpError {
    fn from(e: rusqlite::Error) -> Self {
        OpError::Sql(e)
    }
}

impl From<StoreError> for OpError {
    fn from(e: StoreError) -> Self {
        OpError::Store(e)
    }
}

fn is_read_only(op: &str) -> bool {
    matches!(op, "get" | "gets" | "scan_prefix")
}

impl Pool {
    fn get(&self) -> Result<Connection> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match idle {
            Some(conn) => Ok(conn),
            None => self.connect().map_err(|e| self.sql_error(e)),
        }
    }

    fn put(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < POOL_SIZE {
            idle.push(conn);
        }
    }

    async fn run<T, F>(self: &Arc<Self>, op: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<T, OpError> + Send + 'static,
    {
        let pool = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let mut conn = pool.get()?;
            let (behavior, _guard) = if is_read_only(op) {
                (TransactionBehavior::Deferred, None)
            } else {
                let guard = pool.write_lock.lock().unwrap_or_else(|p| p.into_inner());
                (TransactionBehavior::Immediate, Some(guard))
            };
            let result = conn
                .transaction_with_behavior(behavior)
                .map_err(OpError::from)
                .and_then(|tx| {
                    let value = f(&tx)?;
                    tx.commit()?;
                    Ok(value)
                });
            match result {
                Ok(value) => {
                    pool.put(conn);
                    Ok(value)
                }
                Err(OpError::Store(e)) => {
                    pool.put(conn);
                    Err(e)
                }
                // A connection that failed at the SQL level is dropped, not reused.
                Err(OpError::Sql(e)) => Err(pool.sql_error(e)),
            }
        })
        .await
        .map_err(|e| backend_error(&self.path, format!("{op} task failed: {e}")))?
    }

    /// Opens a connection and applies per-connection settings.
    fn connect(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // In WAL mode NORMAL never corrupts the file; a power loss (not a process crash)
        // may lose the last commits.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(conn)
    }

    /// Creates the directory and the schema if needed, checks that the file is ours and
    /// switches it to WAL mode. Returns the first connection.
    fn initialize(&self) -> Result<Connection> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                backend_error(
                    &self.path,
                    format!("cannot create directory {}: {e}", dir.display()),
                )
            })?;
        }
        let mut conn = self.connect().map_err(|e| self.sql_error(e))?;
        self.check_or_create_schema(&mut conn)?;
        // Switching to WAL needs a moment alone with the file; retry while another
        // process is doing the same.
        let mut mode = String::new();
        for _ in 0..50 {
            match conn
                .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))
            {
                Ok(m) if m.eq_ignore_ascii_case("wal") => return Ok(conn),
                Ok(m) => mode = m,
                Err(e) if is_busy(&e) => mode = e.to_string(),
                Err(e) => return Err(self.sql_error(e)),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(backend_error(
            &self.path,
            format!("cannot switch to WAL mode (journal mode stays {mode:?})"),
        ))
    }

    fn check_or_create_schema(&self, conn: &mut Connection) -> Result<()> {
        let not_ours = |what: String| {
            backend_error(
                &self.path,
                format!("this file is not a Switchboard store ({what}); refusing to use it"),
            )
        };
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.sql_error(e))?;
        let app_id: i32 = tx
            .pragma_query_value(None, "application_id", |r| r.get(0))
            .map_err(|e| self.sql_error(e))?;
        if app_id == APPLICATION_ID {
            let version: i32 = tx
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .map_err(|e| self.sql_error(e))?;
            if version != SCHEMA_VERSION {
                return Err(backend_error(
                    &self.path,
                    format!(
                        "store schema version {version} is not supported (this build uses {SCHEMA_VERSION})"
                    ),
                ));
            }
            return Ok(());
        }
        if app_id != 0 {
            return Err(not_ours(format!("SQLite application_id {app_id:#x}")));
        }
        let tables: i64 = tx
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(|e| self.sql_error(e))?;
        if tables != 0 {
            return Err(not_ours("an SQLite database of another program".into()));
        }
        tx.execute_batch(SCHEMA).map_err(|e| self.sql_error(e))?;
        tx.pragma_update(None, "application_id", APPLICATION_ID)
            .map_err(|e| self.sql_error(e))?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(|e| self.sql_error(e))?;
        tx.commit().map_err(|e| self.sql_error(e))
    }

    fn sql_error(&self, e: rusqlite::Error) -> StoreError {
        match e.sqlite_error_code() {
            Some(ErrorCode::NotADatabase) => backend_error(
                &self.path,
                "this file is not a Switchboard store (not an SQLite database); refusing to use it"
                    .into(),
            ),
            _ => backend_error(&self.path, e.to_string()),
        }
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

fn backend_error(path: &Path, reason: String) -> StoreError {
    StoreError::Backend {
        backend: "file",
        target: path.display().to_string(),
        reason,
    }
}

/// Deletes expired rows every `PURGE_INTERVAL` while the store is alive.
fn spawn_purger(pool: Weak<Pool>) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    handle.spawn(async move {
        let mut tick = tokio::time::interval(PURGE_INTERVAL);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(pool) = pool.upgrade() else { return };
            let result = pool.run("purge", purge).await;
            if let Err(e) = result {
                tracing::warn!(error = %e, "purging expired store rows failed");
            }
        }
    });
}

fn purge(tx: &rusqlite::Transaction<'_>) -> Result<usize, OpError> {
    Ok(tx.execute(
        "DELETE FROM kv WHERE expires_at IS NOT NULL AND expires_at <= ?1",
        [now_millis()],
    )?)
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn expiry(ttl: Option<Duration>) -> Option<i64> {
    ttl.map(|t| now_millis().saturating_add(i64::try_from(t.as_millis()).unwrap_or(i64::MAX)))
}

/// The next CAS version: a counter that never goes back, shared by all processes.
fn next_version(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<i64> {
    tx.query_row(
        "UPDATE meta SET value = value + 1 WHERE name = 'version' RETURNING value",
        [],
        |r| r.get(0),
    )
}

/// A live row: `(value, version, expires_at)`.
type Row = (Vec<u8>, i64, Option<i64>);

/// Reads a live row.
fn read_live(tx: &rusqlite::Transaction<'_>, key: &str) -> Result<Option<Row>, OpError> {
    let row = tx
        .query_row(
            "SELECT value, version, expires_at FROM kv
             WHERE key = ?1 AND (expires_at IS NULL OR expires_at > ?2)",
            params![key, now_millis()],
            |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0),
                    r.get::<_, i64>(1),
                    r.get::<_, Option<i64>>(2),
                ))
            },
        )
        .optional()?;
    match row {
        None => Ok(None),
        Some((Ok(value), Ok(version), Ok(expires))) => Ok(Some((value, version, expires))),
        Some((Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e))) => Err(corrupt(key, e).into()),
    }
}

fn corrupt(key: &str, e: rusqlite::Error) -> StoreError {
    StoreError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    }
}

fn write(
    tx: &rusqlite::Transaction<'_>,
    key: &str,
    value: &[u8],
    expires_at: Option<i64>,
) -> rusqlite::Result<i64> {
    let version = next_version(tx)?;
    tx.execute(
        "INSERT OR REPLACE INTO kv (key, value, version, expires_at) VALUES (?1, ?2, ?3, ?4)",
        params![key, value, version, expires_at],
    )?;
    Ok(version)
}

/// The smallest string greater than every string starting with `prefix`, if any.
///
/// UTF-8 byte order equals code point order, so bumping the last character that can
/// be bumped gives an exclusive upper bound for a range scan.
fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let mut next = u32::from(last) + 1;
        if next == 0xD800 {
            next = 0xE000;
        }
        if let Some(c) = char::from_u32(next) {
            chars.push(c);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

#[async_trait]
impl Store for FileStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        validate_key(key)?;
        let key = key.to_owned();
        self.run("get", move |tx| Ok(read_live(tx, &key)?.map(|(v, _, _)| v)))
            .await
    }

    async fn gets(&self, key: &str) -> Result<Option<(Vec<u8>, CasToken)>> {
        validate_key(key)?;
        let key = key.to_owned();
        self.run("gets", move |tx| {
            Ok(read_live(tx, &key)?.map(|(v, version, _)| (v, CasToken(version as u64))))
        })
        .await
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        validate_key(key)?;
        let (key, value) = (key.to_owned(), value.to_vec());
        self.run("set", move |tx| {
            write(tx, &key, &value, expiry(ttl))?;
            Ok(())
        })
        .await
    }

    async fn add(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<bool> {
        validate_key(key)?;
        let (key, value) = (key.to_owned(), value.to_vec());
        self.run("add", move |tx| {
            if read_live(tx, &key)?.is_some() {
                return Ok(false);
            }
            write(tx, &key, &value, expiry(ttl))?;
            Ok(true)
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        validate_key(key)?;
        let key = key.to_owned();
        self.run("delete", move |tx| {
            let live = tx.query_row(
                "SELECT count(*) FROM kv WHERE key = ?1 AND (expires_at IS NULL OR expires_at > ?2)",
                params![key, now_millis()],
                |r| r.get::<_, i64>(0),
            )?;
            tx.execute("DELETE FROM kv WHERE key = ?1", [&key])?;
            Ok(live > 0)
        })
        .await
    }

    async fn increment(&self, key: &str, delta: u64) -> Result<u64> {
        validate_key(key)?;
        let key = key.to_owned();
        self.run("increment", move |tx| {
            let (current, expires_at) = match read_live(tx, &key)? {
                None => (0, None),
                Some((value, _, expires_at)) => {
                    let n = std::str::from_utf8(&value)
                        .ok()
                        .and_then(|s| s.trim().parse::<u64>().ok())
                        .ok_or_else(|| StoreError::NotANumber { key: key.clone() })?;
                    (n, expires_at)
                }
            };
            let next = current.wrapping_add(delta);
            write(tx, &key, next.to_string().as_bytes(), expires_at)?;
            Ok(next)
        })
        .await
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        token: CasToken,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool> {
        validate_key(key)?;
        let (key, value) = (key.to_owned(), value.to_vec());
        self.run("compare_and_swap", move |tx| match read_live(tx, &key)? {
            Some((_, version, _)) if version as u64 == token.0 => {
                write(tx, &key, &value, expiry(ttl))?;
                Ok(true)
            }
            _ => Ok(false),
        })
        .await
    }

    async fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let prefix = prefix.to_owned();
        self.run("scan_prefix", move |tx| {
            // Two statements so that both ends of the range use the primary key index.
            let upper = prefix_upper_bound(&prefix);
            let mut stmt = tx.prepare_cached(if upper.is_some() {
                "SELECT key, value FROM kv
                 WHERE key >= ?1 AND key < ?3 AND (expires_at IS NULL OR expires_at > ?2)
                 ORDER BY key"
            } else {
                "SELECT key, value FROM kv
                 WHERE key >= ?1 AND (expires_at IS NULL OR expires_at > ?2) AND ?3 IS NULL
                 ORDER BY key"
            })?;
            let mut rows = stmt.query(params![prefix, now_millis(), upper])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                let key: String = row.get(0).map_err(|e| corrupt(&prefix, e))?;
                let value: Vec<u8> = row.get(1).map_err(|e| corrupt(&key, e))?;
                out.push((key, value));
            }
            Ok(out)
        })
        .await
    }

    fn backend(&self) -> &'static str {
        "file"
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_upper_bound;

    #[test]
    fn upper_bound_bumps_the_last_character() {
        assert_eq!(prefix_upper_bound("abc").as_deref(), Some("abd"));
        assert_eq!(prefix_upper_bound("").as_deref(), None);
        assert_eq!(prefix_upper_bound("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_upper_bound("\u{D7FF}").as_deref(), Some("\u{E000}"));
        assert_eq!(prefix_upper_bound("\u{10FFFF}"), None);
    }
}
