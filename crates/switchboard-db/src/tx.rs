//! Transactions.
//!
//! A [`Tx`] owns one pooled connection with an open transaction. It is an
//! owned, cloneable handle (so the closure given to
//! [`Instance::transaction`] can move it into an `async` block); statements
//! from clones run one at a time on the same connection.

use std::sync::Arc;

#[cfg(feature = "mysql")]
use sqlx::mysql::MySql;
#[cfg(feature = "sqlite")]
use sqlx::sqlite::Sqlite;
use tokio::sync::Mutex;

use crate::builder::{Delete, Insert, Raw, Select, Target, Update};
use crate::exec::{self, Backend, Mode, Output};
use crate::instance::with_timeout;
use crate::{DbError, Dialect, Instance, IntoColumns, Statement};

/// An open transaction: the same builders as [`Instance`], run on the
/// transaction's connection.
///
/// Finish it with [`commit`](Self::commit) or [`rollback`](Self::rollback);
/// dropped without either, it is rolled back. After it is finished, every
/// use fails with [`DbError::TxFinished`].
#[derive(Clone)]
pub struct Tx {
    inner: Arc<TxInner>,
}

impl std::fmt::Debug for Tx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx")
            .field("instance", &self.inner.instance.name())
            .finish()
    }
}

struct TxInner {
    instance: Instance,
    /// `None` once committed or rolled back.
    conn: Mutex<Option<TxConn>>,
}

pub(crate) enum TxConn {
    #[cfg(feature = "mysql")]
    MySql(sqlx::Transaction<'static, MySql>),
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::Transaction<'static, Sqlite>),
}

impl Tx {
    pub(crate) async fn begin(instance: &Instance) -> Result<Tx, DbError> {
        let conn = instance.begin_raw().await?;
        Ok(Tx {
            inner: Arc::new(TxInner {
                instance: instance.clone(),
                conn: Mutex::new(Some(conn)),
            }),
        })
    }

    /// The instance this transaction runs on.
    pub fn instance(&self) -> &Instance {
        &self.inner.instance
    }

    /// The SQL dialect.
    pub fn dialect(&self) -> Dialect {
        self.inner.instance.dialect()
    }

    fn target(&self) -> Target {
        Target::Tx(self.clone())
    }

    /// `SELECT` in this transaction (see [`Instance::select`]).
    pub fn select(&self, columns: impl IntoColumns) -> Select {
        Select::new(self.target()).columns(columns)
    }

    /// `SELECT` of a raw expression in this transaction.
    pub fn select_expr(&self, expr: &str) -> Select {
        Select::new(self.target()).expr(expr)
    }

    /// `INSERT` in this transaction.
    pub fn insert(&self, table: &str) -> Insert {
        Insert::new(self.target(), table)
    }

    /// `UPDATE` in this transaction.
    pub fn update(&self, table: &str) -> Update {
        Update::new(self.target(), table)
    }

    /// `DELETE` in this transaction.
    pub fn delete(&self, table: &str) -> Delete {
        Delete::new(self.target(), table)
    }

    /// Raw SQL with `:name` parameters in this transaction.
    pub fn sql(&self, sql: &str) -> Raw {
        Raw::new(self.target(), sql)
    }

    /// Commit. Fails with [`DbError::TxFinished`] if already finished.
    pub async fn commit(&self) -> Result<(), DbError> {
        let conn = self.inner.conn.lock().await.take();
        let name = self.inner.instance.name();
        match conn {
            #[cfg(feature = "mysql")]
            Some(TxConn::MySql(t)) => Box::pin(finish(name, t, true)).await,
            #[cfg(feature = "sqlite")]
            Some(TxConn::Sqlite(t)) => Box::pin(finish(name, t, true)).await,
            // `None`: already finished (`_`, for builds without a driver).
            _ => Err(DbError::TxFinished),
        }
    }

    /// Roll back. Fails with [`DbError::TxFinished`] if already finished.
    pub async fn rollback(&self) -> Result<(), DbError> {
        let conn = self.inner.conn.lock().await.take();
        let name = self.inner.instance.name();
        match conn {
            #[cfg(feature = "mysql")]
            Some(TxConn::MySql(t)) => Box::pin(finish(name, t, false)).await,
            #[cfg(feature = "sqlite")]
            Some(TxConn::Sqlite(t)) => Box::pin(finish(name, t, false)).await,
            // `None`: already finished (`_`, for builds without a driver).
            _ => Err(DbError::TxFinished),
        }
    }

    /// Run a statement on the transaction's connection. Never retried: a
    /// lost connection means the transaction is gone.
    pub(crate) async fn run(&self, st: &Statement, mode: Mode) -> Result<Output, DbError> {
        let mut guard = self.inner.conn.lock().await;
        let timeout = self.inner.instance.query_timeout();
        let name = self.inner.instance.name();
        let result: Result<Output, DbError> = match guard.as_mut() {
            #[cfg(feature = "mysql")]
            Some(TxConn::MySql(t)) => run_on::<MySql>(name, &mut **t, st, mode, timeout).await,
            #[cfg(feature = "sqlite")]
            Some(TxConn::Sqlite(t)) => run_on::<Sqlite>(name, &mut **t, st, mode, timeout).await,
            // `None`: already finished (`_`, for builds without a driver).
            _ => return Err(DbError::TxFinished),
        };
        if matches!(&result, Err(e) if e.is_connection_lost() || matches!(e, DbError::Timeout { .. }))
        {
            // The transaction cannot go on: drop it (which rolls back, or
            // closes the dead connection) so later statements fail clearly.
            *guard = None;
        }
        result
    }
}

/// Commit (`commit`) or roll back a transaction.
async fn finish<D: Backend>(
    name: &str,
    t: sqlx::Transaction<'static, D>,
    commit: bool,
) -> Result<(), DbError> {
    let (result, sql) = if commit {
        (t.commit().await, "COMMIT")
    } else {
        (t.rollback().await, "ROLLBACK")
    };
    result.map_err(|e| exec::map_err::<D>(name, sql, e))
}

async fn run_on<D: Backend>(
    name: &str,
    conn: &mut D::Connection,
    st: &Statement,
    mode: Mode,
    timeout: Option<std::time::Duration>,
) -> Result<Output, DbError>
where
    for<'c> &'c mut D::Connection: sqlx::Executor<'c, Database = D>,
    for<'q> <D as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, D>,
{
    crate::observe::timed(name, async {
        match with_timeout(timeout, exec::run::<D>(conn, st, mode)).await {
            Some(r) => r.map_err(|e| exec::map_err::<D>(name, &st.sql, e)),
            None => Err(DbError::Timeout {
                instance: name.to_string(),
                sql: st.sql.clone(),
                after: timeout.unwrap_or_default(),
            }),
        }
    })
    .await
}
