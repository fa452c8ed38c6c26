//! The crate's one error type.
//!
//! Every error that comes from running a statement carries the SQL that was
//! sent (with `?` placeholders, never the bound values, so secrets and user
//! data stay out of logs) and, for errors the database reported, its own code
//! and message.

use std::time::Duration;

/// Everything that can go wrong in `switchboard-db`.
///
/// Errors found before anything is sent (configuration, identifiers,
/// parameters, a missing `WHERE`) are separate variants from errors the
/// database or the connection reported, so callers can tell a bug in their
/// own code from a runtime failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// `Db::instance` was asked for a name that is not configured.
    #[error("unknown database instance `{name}` (configured: {known})")]
    UnknownInstance {
        /// The name that was asked for.
        name: String,
        /// The configured names, comma separated, so the typo is easy to spot.
        known: String,
    },

    /// An instance's configuration cannot be used.
    #[error("invalid configuration for database instance `{instance}`: {message}")]
    Config {
        /// Instance name.
        instance: String,
        /// What is wrong.
        message: String,
    },

    /// An instance's driver was left out of this binary (a cargo feature).
    #[error(
        "database instance `{instance}` uses driver \"{driver}\", which is not compiled \
         into this binary; enable the switchboard feature \"{feature}\" (or the \
         switchboard-db feature \"{feature}\")"
    )]
    DriverNotCompiled {
        /// Instance name.
        instance: String,
        /// The driver, as written in `driver = ...`.
        driver: &'static str,
        /// The cargo feature that compiles it in (the same name in `switchboard`
        /// and `switchboard-db`).
        feature: &'static str,
    },

    /// A table or column name that cannot be quoted safely for the dialect.
    #[error("invalid identifier {ident:?}: {reason}")]
    InvalidIdentifier {
        /// The identifier as given.
        ident: String,
        /// Why it was rejected.
        reason: String,
    },

    /// The SQL text could not be prepared for sending (an unterminated string
    /// literal, a positional `?` placeholder, a malformed `:name`).
    #[error("cannot prepare `{sql}`: {message}")]
    InvalidSql {
        /// The SQL as written by the caller (with `:name` placeholders).
        sql: String,
        /// What is wrong.
        message: String,
    },

    /// `:name` placeholders that appear in the SQL but were never bound.
    #[error("parameter(s) {} used in `{sql}` but not bound", join_names(.names))]
    UnboundParams {
        /// The SQL as written (with `:name` placeholders).
        sql: String,
        /// The names that are missing a value.
        names: Vec<String>,
    },

    /// Values bound under names that the SQL never uses (usually a typo).
    #[error("parameter(s) {} bound but not used in `{sql}`", join_names(.names))]
    UnusedParams {
        /// The SQL as written (with `:name` placeholders).
        sql: String,
        /// The names that nothing refers to.
        names: Vec<String>,
    },

    /// The same parameter name was bound twice.
    #[error("parameter :{name} bound twice")]
    DuplicateParam {
        /// The name bound twice.
        name: String,
    },

    /// `update`/`delete` without a `WHERE` clause and without `.all_rows()`.
    #[error(
        "refusing to {statement} every row of {table} without a WHERE clause; \
         call .all_rows() to do that on purpose"
    )]
    MissingWhere {
        /// `"UPDATE"` or `"DELETE"`.
        statement: &'static str,
        /// The table as given.
        table: String,
    },

    /// An `insert`/`update` with no columns to write.
    #[error("{statement} {table} has no columns")]
    NoColumns {
        /// `"INSERT"` or `"UPDATE"`.
        statement: &'static str,
        /// The table as given.
        table: String,
    },

    /// A statement that returns no rows (a write without `RETURNING`, or
    /// DDL) was run with a row-fetching terminal (`query`, `row`, `column`,
    /// `single` or their `_as` forms) of [`Raw`](crate::Raw). Those could
    /// only return nothing and hide what the write did, so the statement is
    /// refused before it is sent; [`Raw::execute`](crate::Raw::execute)
    /// returns the affected rows and the insert id.
    #[error(
        "`{keyword}` returns no rows, so fetching rows would hide what it did: \
         run it with execute(), which returns the affected rows and the insert id \
         (in `{sql}`)"
    )]
    NotAQuery {
        /// The statement's keyword, upper case (`INSERT`, `UPDATE`, `CREATE`, ...).
        keyword: String,
        /// The SQL as written (with `:name` placeholders).
        sql: String,
    },

    /// The database rejected the statement.
    #[error("database error {code}{}: {message} (in `{sql}`)", .sqlstate.as_deref().map(|s| format!(" ({s})")).unwrap_or_default())]
    Database {
        /// Instance name.
        instance: String,
        /// The SQL as sent (with `?` placeholders, no values).
        sql: String,
        /// The database's own code: MySQL's error number (e.g. `1146`), or
        /// SQLite's extended result code (e.g. `2067`).
        code: String,
        /// The SQLSTATE, where the database gives one (MySQL).
        sqlstate: Option<String>,
        /// The database's message.
        message: String,
    },

    /// The connection died while the statement was running (server restart,
    /// `KILL`, `wait_timeout`). Reads have already been retried once on a new
    /// connection when you see this; writes never are, because the write may
    /// have been applied before the connection died.
    #[error("connection to database instance `{instance}` lost during `{sql}`: {message}")]
    ConnectionLost {
        /// Instance name.
        instance: String,
        /// The SQL as sent.
        sql: String,
        /// What the driver reported.
        message: String,
    },

    /// No connection could be had: connecting failed, or the pool stayed
    /// exhausted for `connect_timeout`.
    #[error("cannot connect to database instance `{instance}`: {source}")]
    Connect {
        /// Instance name.
        instance: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },

    /// The statement ran longer than the instance's `query_timeout`. The
    /// connection it ran on is closed, not reused.
    #[error("query on database instance `{instance}` timed out after {after:?}: `{sql}`")]
    Timeout {
        /// Instance name.
        instance: String,
        /// The SQL as sent.
        sql: String,
        /// The configured timeout.
        after: Duration,
    },

    /// A result could not be converted to the requested Rust type.
    #[error("cannot decode {what}: {message}")]
    Decode {
        /// Which value (column name, or a description).
        what: String,
        /// Why.
        message: String,
    },

    /// A transaction handle was used after its commit or rollback.
    #[error("the transaction is already finished")]
    TxFinished,

    /// Any other driver error.
    #[error("database instance `{instance}` failed on `{sql}`: {source}")]
    Driver {
        /// Instance name.
        instance: String,
        /// The SQL as sent.
        sql: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
}

impl DbError {
    /// The database's own error code, when the database reported the error.
    ///
    /// ```
    /// # use switchboard::db::DbError;
    /// let e = DbError::TxFinished;
    /// assert_eq!(e.db_code(), None);
    /// ```
    pub fn db_code(&self) -> Option<&str> {
        match self {
            DbError::Database { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The SQL the error is about, where there is one.
    pub fn sql(&self) -> Option<&str> {
        match self {
            DbError::InvalidSql { sql, .. }
            | DbError::NotAQuery { sql, .. }
            | DbError::UnboundParams { sql, .. }
            | DbError::UnusedParams { sql, .. }
            | DbError::Database { sql, .. }
            | DbError::ConnectionLost { sql, .. }
            | DbError::Timeout { sql, .. }
            | DbError::Driver { sql, .. } => Some(sql),
            _ => None,
        }
    }

    /// True when the connection was lost (see [`DbError::ConnectionLost`]).
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, DbError::ConnectionLost { .. })
    }
}

fn join_names(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!(":{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}
