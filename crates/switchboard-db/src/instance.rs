//! Named instances and their connection pools.
//!
//! [`Db`] holds every configured instance; [`Instance`] is a cheap, cloneable
//! handle to one of them. The pool behind an instance is created on first
//! use, and connections are opened as statements need them.

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
#[cfg(feature = "sqlite")]
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::FutureExt as _;
#[cfg(feature = "mysql")]
use sqlx::mysql::{MySql, MySqlConnectOptions, MySqlPoolOptions, MySqlSslMode};
use sqlx::pool::PoolOptions;
#[cfg(feature = "sqlite")]
use sqlx::sqlite::{Sqlite, SqliteConnectOptions, SqlitePoolOptions};
use sqlx::Connection as _;

use crate::builder::{Delete, Insert, Raw, Select, Target, Update};
use crate::exec::{self, Backend, Mode, Output};
use crate::tx::Tx;
use crate::{DbConfig, DbError, Dialect, Driver, InstanceConfig, IntoColumns, Statement};

/// Every configured database instance, by name: the brief's `Db`.
///
/// Cheap to clone; clones share the instances and their pools.
///
/// ```
/// use switchboard::db::{Db, DbConfig, InstanceConfig};
/// # fn main() -> Result<(), switchboard::db::DbError> {
/// let db = Db::new(DbConfig::default().with("db1", InstanceConfig::sqlite(":memory:")))?;
/// let db1 = db.instance("db1")?;           // no connection made yet
/// assert_eq!(db1.name(), "db1");
/// assert!(db.instance("db2").is_err());    // unknown names are an error
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Db {
    instances: Arc<BTreeMap<String, Instance>>,
}

impl Db {
    /// Validate the configuration and set up (but do not connect) every
    /// instance.
    pub fn new(config: DbConfig) -> Result<Self, DbError> {
        let mut instances = BTreeMap::new();
        for (name, cfg) in config.instances {
            let inst = Instance::new(&name, cfg)?;
            instances.insert(name, inst);
        }
        Ok(Db {
            instances: Arc::new(instances),
        })
    }

    /// The instance with this name (a cheap clone of its handle).
    pub fn instance(&self, name: &str) -> Result<Instance, DbError> {
        self.instances
            .get(name)
            .cloned()
            .ok_or_else(|| DbError::UnknownInstance {
                name: name.to_string(),
                known: if self.instances.is_empty() {
                    "none".to_string()
                } else {
                    self.instances
                        .keys()
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            })
    }

    /// The configured instance names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.instances.keys().map(String::as_str)
    }

    /// Close every instance's pool (waits for connections in use).
    pub async fn close(&self) {
        for inst in self.instances.values() {
            inst.close().await;
        }
    }
}

/// One named database instance: a pooled, shareable handle.
///
/// Cheap to clone (an `Arc`); clones share one pool. Builders start here:
/// [`select`](Self::select), [`insert`](Self::insert),
/// [`update`](Self::update), [`delete`](Self::delete), [`sql`](Self::sql),
/// and [`transaction`](Self::transaction).
#[derive(Clone)]
pub struct Instance {
    inner: Arc<InstanceInner>,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("name", &self.inner.name)
            .field("config", &self.inner.config)
            .finish()
    }
}

struct InstanceInner {
    /// The configured name, used in every error message.
    name: String,
    config: InstanceConfig,
    dialect: Dialect,
    /// The configured driver, known to be compiled in.
    driver: CompiledDriver,
    /// Created on first use, because creating a pool needs a running tokio
    /// runtime and `Db::new` should not.
    pool: OnceLock<Pool>,
    /// After a lost connection, this many idle connections are pinged before
    /// use, so that a server restart costs one failed statement, not one per
    /// pooled connection.
    recheck: Arc<AtomicUsize>,
    /// Connections found dead while running a statement.
    lost: AtomicU64,
    /// Reads run a second time after a lost connection.
    retried: AtomicU64,
}

/// Counters of an instance's connection trouble, for logs and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InstanceStats {
    /// Connections found dead while a statement ran on them.
    pub connections_lost: u64,
    /// Reads retried on a new connection after that.
    pub reads_retried: u64,
    /// Connections open now (in use or idle).
    pub open_connections: u32,
    /// Idle connections now.
    pub idle_connections: usize,
}

/// A driver this binary was built with (each is a cargo feature). An
/// [`Instance`] exists only for one of these, so nothing past
/// [`Instance::new`] has to handle a missing driver.
#[derive(Debug, Clone, Copy)]
enum CompiledDriver {
    #[cfg(feature = "mysql")]
    MySql,
    #[cfg(feature = "sqlite")]
    Sqlite,
}

impl CompiledDriver {
    /// The configured driver, or [`DbError::DriverNotCompiled`] when it was
    /// left out of this build.
    fn of(instance: &str, driver: Driver) -> Result<Self, DbError> {
        match driver {
            #[cfg(feature = "mysql")]
            Driver::Mysql => Ok(CompiledDriver::MySql),
            #[cfg(feature = "sqlite")]
            Driver::Sqlite => Ok(CompiledDriver::Sqlite),
            // Only reached for a driver compiled out.
            #[allow(unreachable_patterns)]
            other => Err(DbError::DriverNotCompiled {
                instance: instance.to_string(),
                driver: other.name(),
                feature: other.feature(),
            }),
        }
    }
}

/// An instance's pool, one variant per compiled driver.
enum Pool {
    #[cfg(feature = "mysql")]
    MySql(sqlx::Pool<MySql>),
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::Pool<Sqlite>),
}

/// Evaluate `$body` with `$p` bound to the sqlx pool inside `$pool` (a
/// `&Pool`), whichever driver it is: the body is written once, generic over
/// the database.
macro_rules! with_pool {
    ($pool:expr, $p:ident => $body:expr) => {
        match *$pool {
            #[cfg(feature = "mysql")]
            Pool::MySql(ref $p) => $body,
            #[cfg(feature = "sqlite")]
            Pool::Sqlite(ref $p) => $body,
        }
    };
}

impl Instance {
    /// Set up one instance from its configuration (validated; no connection
    /// is made). `name` appears in errors. A driver left out of this build
    /// (see the crate's cargo features) is [`DbError::DriverNotCompiled`].
    pub fn new(name: &str, config: InstanceConfig) -> Result<Self, DbError> {
        config.validate(name)?;
        let driver = CompiledDriver::of(name, config.driver)?;
        let dialect = match config.driver {
            Driver::Mysql => Dialect::MySql,
            Driver::Sqlite => Dialect::Sqlite,
        };
        Ok(Instance {
            inner: Arc::new(InstanceInner {
                name: name.to_string(),
                config,
                dialect,
                driver,
                pool: OnceLock::new(),
                recheck: Arc::new(AtomicUsize::new(0)),
                lost: AtomicU64::new(0),
                retried: AtomicU64::new(0),
            }),
        })
    }

    /// A private in-memory SQLite instance (handy in tests and examples).
    pub fn sqlite_memory(name: &str) -> Result<Self, DbError> {
        Instance::new(name, InstanceConfig::sqlite(":memory:"))
    }

    /// The instance's configured name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The instance's SQL dialect.
    pub fn dialect(&self) -> Dialect {
        self.inner.dialect
    }

    /// The instance's configuration.
    pub fn config(&self) -> &InstanceConfig {
        &self.inner.config
    }

    /// Start a `SELECT` of these columns: `"ID,Sex"`, `["ID", "Sex"]`,
    /// `"*"`, `"t.*"`, `"name AS n"`. Each is quoted for the dialect; use
    /// [`Select::expr`] (or [`select_expr`](Self::select_expr)) for
    /// expressions such as `COUNT(*)`.
    pub fn select(&self, columns: impl IntoColumns) -> Select {
        Select::new(Target::Instance(self.clone())).columns(columns)
    }

    /// Start a `SELECT` of a raw expression (not quoted: never put input in
    /// it; bind values with `:name` instead).
    pub fn select_expr(&self, expr: &str) -> Select {
        Select::new(Target::Instance(self.clone())).expr(expr)
    }

    /// Start an `INSERT INTO table`.
    pub fn insert(&self, table: &str) -> Insert {
        Insert::new(Target::Instance(self.clone()), table)
    }

    /// Start an `UPDATE table`.
    pub fn update(&self, table: &str) -> Update {
        Update::new(Target::Instance(self.clone()), table)
    }

    /// Start a `DELETE FROM table`.
    pub fn delete(&self, table: &str) -> Delete {
        Delete::new(Target::Instance(self.clone()), table)
    }

    /// Raw SQL with `:name` parameters, run with the same terminals as a
    /// select (`query`, `row`, `column`, `single`) when it returns rows, or
    /// with `execute` for writes and DDL (see [`Raw`]).
    pub fn sql(&self, sql: &str) -> Raw {
        Raw::new(Target::Instance(self.clone()), sql)
    }

    /// Start a transaction by hand. Prefer [`transaction`](Self::transaction);
    /// a `Tx` dropped without `commit` is rolled back.
    pub async fn begin(&self) -> Result<Tx, DbError> {
        // Boxed, as a statement's run is (`builder::Target::run`).
        Box::pin(Tx::begin(self)).await
    }

    /// Run `f` in a transaction: committed when it returns `Ok`, rolled back
    /// when it returns `Err` or panics (the panic then continues).
    ///
    /// The closure gets an owned [`Tx`] handle with the same builders as the
    /// instance. Statements in a transaction are never retried.
    ///
    /// ```
    /// # use switchboard::db::{DbError, Instance};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), DbError> {
    /// let db = Instance::sqlite_memory("doc")?;
    /// db.sql("CREATE TABLE acct (id INTEGER PRIMARY KEY, balance INTEGER)").execute().await?;
    /// db.insert("acct").set("id", 1).set("balance", 100).query().await?;
    /// db.transaction(|tx| async move {
    ///     tx.update("acct").set_expr("balance", "balance - :n").where_("id = 1").bind("n", 30).query().await?;
    ///     Ok::<_, DbError>(())
    /// }).await?;
    /// let balance = db.select("balance").from("acct").single_as::<i64>().await?;
    /// assert_eq!(balance, Some(70));
    /// # Ok(()) }
    /// ```
    pub async fn transaction<F, Fut, T, E>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(Tx) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: From<DbError>,
    {
        let tx = self.begin().await?;
        let outcome = AssertUnwindSafe(f(tx.clone())).catch_unwind().await;
        match outcome {
            Ok(Ok(value)) => {
                tx.commit().await?;
                Ok(value)
            }
            Ok(Err(e)) => {
                if let Err(re) = tx.rollback().await {
                    tracing::warn!(instance = %self.name(), error = %re, "rollback failed");
                }
                Err(e)
            }
            Err(panic) => {
                if let Err(re) = tx.rollback().await {
                    tracing::warn!(instance = %self.name(), error = %re, "rollback after panic failed");
                }
                std::panic::resume_unwind(panic)
            }
        }
    }

    /// The underlying sqlx pool of a MySQL instance (`None` for SQLite): an
    /// escape hatch for what the builder does not cover. Statements run on it
    /// bypass this crate's checks and retry. Creates the pool if needed, so
    /// call it inside a tokio runtime. Only with the `mysql` feature.
    #[cfg(feature = "mysql")]
    pub fn mysql_pool(&self) -> Option<sqlx::MySqlPool> {
        match self.pool() {
            Pool::MySql(p) => Some(p.clone()),
            #[cfg(feature = "sqlite")]
            Pool::Sqlite(_) => None,
        }
    }

    /// The underlying sqlx pool of an SQLite instance (`None` for MySQL);
    /// an escape hatch like `mysql_pool`. Only with the `sqlite` feature.
    #[cfg(feature = "sqlite")]
    pub fn sqlite_pool(&self) -> Option<sqlx::SqlitePool> {
        match self.pool() {
            Pool::Sqlite(p) => Some(p.clone()),
            #[cfg(feature = "mysql")]
            Pool::MySql(_) => None,
        }
    }

    /// Connection counters (see [`InstanceStats`]).
    pub fn stats(&self) -> InstanceStats {
        let (open, idle) = match self.inner.pool.get() {
            Some(pool) => with_pool!(pool, p => (p.size(), p.num_idle())),
            None => (0, 0),
        };
        InstanceStats {
            connections_lost: self.inner.lost.load(Ordering::Relaxed),
            reads_retried: self.inner.retried.load(Ordering::Relaxed),
            open_connections: open,
            idle_connections: idle,
        }
    }

    /// Check that the database answers (opens a connection if needed).
    pub async fn ping(&self) -> Result<(), DbError> {
        with_pool!(self.pool(), p => Box::pin(ping_pool(self.name(), p)).await)
    }

    /// Close the pool: wait for connections in use, close them all. Later
    /// statements on this instance fail with [`DbError::Connect`].
    pub async fn close(&self) {
        if let Some(pool) = self.inner.pool.get() {
            with_pool!(pool, p => p.close().await)
        }
    }

    pub(crate) fn query_timeout(&self) -> Option<Duration> {
        self.inner.config.query_timeout()
    }

    /// Run a statement on a pooled connection; a read whose connection is
    /// lost is retried once on another connection.
    pub(crate) async fn run(&self, st: &Statement, mode: Mode) -> Result<Output, DbError> {
        with_pool!(self.pool(), p => self.run_with_retry(p, st, mode).await)
    }

    async fn run_with_retry<D: Backend>(
        &self,
        pool: &sqlx::Pool<D>,
        st: &Statement,
        mode: Mode,
    ) -> Result<Output, DbError>
    where
        for<'c> &'c mut D::Connection: sqlx::Executor<'c, Database = D>,
        for<'q> <D as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, D>,
    {
        match crate::observe::timed(self.name(), self.run_once(pool, st, mode)).await {
            Err(e) if e.is_connection_lost() => {
                self.inner.lost.fetch_add(1, Ordering::Relaxed);
                self.suspect_idle(pool);
                if !st.read {
                    tracing::warn!(instance = %self.name(), sql = %st.sql, error = %e,
                        "connection lost during a write; not retried");
                    return Err(e);
                }
                tracing::warn!(instance = %self.name(), sql = %st.sql, error = %e,
                    "connection lost during a read; retrying once");
                self.inner.retried.fetch_add(1, Ordering::Relaxed);
                crate::observe::timed(self.name(), self.run_once(pool, st, mode)).await
            }
            other => other,
        }
    }

    async fn run_once<D: Backend>(
        &self,
        pool: &sqlx::Pool<D>,
        st: &Statement,
        mode: Mode,
    ) -> Result<Output, DbError>
    where
        for<'c> &'c mut D::Connection: sqlx::Executor<'c, Database = D>,
        for<'q> <D as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, D>,
    {
        let mut conn = pool.acquire().await.map_err(|source| DbError::Connect {
            instance: self.name().to_string(),
            source,
        })?;
        let result = with_timeout(self.query_timeout(), exec::run::<D>(&mut conn, st, mode)).await;
        match result {
            Some(Ok(out)) => Ok(out),
            Some(Err(e)) => {
                let e = exec::map_err::<D>(self.name(), &st.sql, e);
                if e.is_connection_lost() {
                    // Never hand a dead connection to the next caller.
                    conn.close_on_drop();
                }
                Err(e)
            }
            None => {
                // The statement was abandoned half way; the connection's
                // state is unknown, so it is not reused.
                conn.close_on_drop();
                Err(DbError::Timeout {
                    instance: self.name().to_string(),
                    sql: st.sql.clone(),
                    after: self.query_timeout().unwrap_or_default(),
                })
            }
        }
    }

    /// A connection died: the idle ones probably died with it (server
    /// restart), so check each of them once before it is next used.
    fn suspect_idle<D: sqlx::Database>(&self, pool: &sqlx::Pool<D>) {
        self.inner.recheck.store(pool.num_idle(), Ordering::Relaxed);
    }

    pub(crate) async fn begin_raw(&self) -> Result<crate::tx::TxConn, DbError> {
        let err = |source| DbError::Connect {
            instance: self.name().to_string(),
            source,
        };
        Ok(match *self.pool() {
            #[cfg(feature = "mysql")]
            Pool::MySql(ref p) => crate::tx::TxConn::MySql(p.begin().await.map_err(err)?),
            #[cfg(feature = "sqlite")]
            Pool::Sqlite(ref p) => crate::tx::TxConn::Sqlite(p.begin().await.map_err(err)?),
        })
    }

    fn pool(&self) -> &Pool {
        self.inner.pool.get_or_init(|| self.build_pool())
    }

    fn build_pool(&self) -> Pool {
        let c = &self.inner.config;
        match self.inner.driver {
            #[cfg(feature = "mysql")]
            CompiledDriver::MySql => {
                let mut opts = MySqlConnectOptions::new()
                    .host(&c.host)
                    .port(c.port)
                    .username(&c.user)
                    .charset(&c.charset)
                    .ssl_mode(MySqlSslMode::Disabled)
                    // Keep the server's meaning of `||` (logical OR).
                    .pipes_as_concat(false);
                // An empty password means "none", not an empty one.
                if !c.password.is_empty() {
                    opts = opts.password(&c.password);
                }
                if let Some(db) = &c.database {
                    opts = opts.database(db);
                }
                let pool = self
                    .pool_options(MySqlPoolOptions::new())
                    .connect_lazy_with(opts);
                Pool::MySql(pool)
            }
            #[cfg(feature = "sqlite")]
            CompiledDriver::Sqlite => {
                let path = c
                    .path
                    .as_deref()
                    .unwrap_or(std::path::Path::new(":memory:"));
                let memory = path.as_os_str() == ":memory:";
                let opts = if memory {
                    // A named, shared-cache in-memory database, so every
                    // connection of the pool sees the same data.
                    SqliteConnectOptions::from_str("sqlite::memory:")
                        .unwrap_or_else(|_| SqliteConnectOptions::new().in_memory(true))
                } else {
                    // WAL is set once connected (`wal_after_connect`), not among the
                    // connect options: there a busy database fails the connect.
                    SqliteConnectOptions::new()
                        .filename(path)
                        .create_if_missing(true)
                }
                .busy_timeout(c.busy_timeout());
                let mut po = self.pool_options(SqlitePoolOptions::new());
                if memory {
                    // The database lives only while a connection is open.
                    po = po.idle_timeout(None).max_lifetime(None);
                } else {
                    let patience = c.busy_timeout();
                    po = po.after_connect(move |conn, _meta| {
                        Box::pin(wal_after_connect(conn, patience))
                    });
                }
                Pool::Sqlite(po.connect_lazy_with(opts))
            }
        }
    }

    fn pool_options<D: sqlx::Database>(&self, po: PoolOptions<D>) -> PoolOptions<D> {
        let c = &self.inner.config;
        let recheck = self.inner.recheck.clone();
        po.max_connections(c.pool_size)
            .acquire_timeout(c.connect_timeout())
            .idle_timeout(c.idle_timeout())
            .max_lifetime(c.max_lifetime())
            .test_before_acquire(c.ping_before_use)
            .before_acquire(move |conn, _meta| {
                let check = take_one(&recheck);
                Box::pin(async move {
                    if check {
                        // `false` makes the pool close it and try another.
                        return Ok(conn.ping().await.is_ok());
                    }
                    Ok(true)
                })
            })
    }
}

/// Puts a new connection's database in WAL mode (readers never wait for the writer),
/// waiting up to `patience` while another connection holds the database: SQLite
/// answers "database is locked" at once, without its busy handler, when connections
/// of several processes switch a new file to WAL together (the chat's two workers
/// starting on one history file), and a connect that fails for it would leave the
/// instance unusable until its next try.
#[cfg(feature = "sqlite")]
async fn wal_after_connect(
    conn: &mut sqlx::SqliteConnection,
    patience: Duration,
) -> Result<(), sqlx::Error> {
    use sqlx::Executor as _;
    let deadline = std::time::Instant::now() + patience;
    let mut pause = Duration::from_millis(2);
    loop {
        match conn.execute("PRAGMA journal_mode = WAL").await {
            Ok(_) => return Ok(()),
            Err(sqlx::Error::Database(e))
                if is_sqlite_busy(e.code().as_deref())
                    && std::time::Instant::now() + pause < deadline =>
            {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            Err(e) => return Err(e),
        }
    }
}

/// SQLITE_BUSY (5) or SQLITE_LOCKED (6), with or without an extended code.
#[cfg(feature = "sqlite")]
fn is_sqlite_busy(code: Option<&str>) -> bool {
    code.and_then(|c| c.parse::<i32>().ok())
        .is_some_and(|c| matches!(c & 0xff, 5 | 6))
}

/// Decrement the recheck counter if it is positive; true if it was.
fn take_one(counter: &AtomicUsize) -> bool {
    counter
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
}

async fn ping_pool<D: sqlx::Database>(name: &str, pool: &sqlx::Pool<D>) -> Result<(), DbError> {
    let mut conn = pool.acquire().await.map_err(|source| DbError::Connect {
        instance: name.to_string(),
        source,
    })?;
    conn.ping().await.map_err(|source| DbError::Connect {
        instance: name.to_string(),
        source,
    })
}

/// `Some(result)`, or `None` if `limit` passed first.
pub(crate) async fn with_timeout<F: Future>(limit: Option<Duration>, f: F) -> Option<F::Output> {
    match limit {
        Some(d) => tokio::time::timeout(d, f).await.ok(),
        None => Some(f.await),
    }
}
