//! Chat history, kept through the Db module (`switchboard-db`).
//!
//! Every chat line is appended to one table; `/history` in the telnet chat
//! prints the last lines, and the browser chat shows them on join. The
//! default store is an SQLite file ([`ChatHistory::default_instance`]); any
//! configured instance works, MySQL/MariaDB included, because the table is
//! created in either dialect and every statement goes through the builder.
//!
//! ```ignore
//! # async fn demo() -> Result<(), switchboard_db::DbError> {
//! let db = ChatHistory::default_instance("data/chat-history.sqlite3")?;
//! let history = ChatHistory::open(db).await?;
//! history.append("ann", "7f000001:0001", "hello").await?;
//! for line in history.last(20).await? {
//!     println!("{} {}[{}]: {}", line.at, line.name, line.client_id, line.text);
//! }
//! # Ok(()) }
//! ```

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use switchboard_db::{DbError, Dialect, Instance, InstanceConfig};

/// The table used by [`ChatHistory::open`].
pub const DEFAULT_TABLE: &str = "chat_history";

/// One line of chat history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryLine {
    /// When it was said, in Unix seconds.
    pub at: i64,
    /// The sender's nickname at the time.
    pub name: String,
    /// The sender's client_id.
    pub client_id: String,
    /// What was said.
    pub text: String,
}

/// The chat's message history, stored in one table of a database instance.
/// Cheap to clone (the instance handle is shared).
#[derive(Debug, Clone)]
pub struct ChatHistory {
    db: Instance,
    /// Table name, checked to be a plain identifier in [`open_table`](Self::open_table).
    table: String,
}

impl ChatHistory {
    /// The default history store: an SQLite file at `path` (created with its
    /// parent directories if missing). No connection is made yet.
    pub fn default_instance(path: impl AsRef<Path>) -> Result<Instance, DbError> {
        let path = path.as_ref();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| DbError::Config {
                instance: "chat-history".into(),
                message: format!("cannot create {}: {e}", dir.display()),
            })?;
        }
        Instance::new("chat-history", InstanceConfig::sqlite(path))
    }

    /// Open the history in `db`, creating its table (`chat_history`) if
    /// missing. Works on SQLite and MySQL/MariaDB instances.
    pub async fn open(db: Instance) -> Result<Self, DbError> {
        Self::open_table(db, DEFAULT_TABLE).await
    }

    /// Like [`open`](Self::open), with another table name (letters, digits
    /// and `_` only).
    pub async fn open_table(db: Instance, table: &str) -> Result<Self, DbError> {
        let plain = table
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && table
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && table.len() <= 64;
        if !plain {
            return Err(DbError::InvalidIdentifier {
                ident: table.into(),
                reason: "history table names are letters, digits and `_`".into(),
            });
        }
        // The id orders lines exactly (several lines can share one second).
        let ddl = match db.dialect() {
            Dialect::MySql => format!(
                "CREATE TABLE IF NOT EXISTS `{table}` (\
                 id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY, \
                 at BIGINT NOT NULL, name TEXT NOT NULL, client_id VARCHAR(64) NOT NULL, \
                 text TEXT NOT NULL) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
            ),
            Dialect::Sqlite => format!(
                "CREATE TABLE IF NOT EXISTS \"{table}\" (\
                 id INTEGER PRIMARY KEY AUTOINCREMENT, \
                 at INTEGER NOT NULL, name TEXT NOT NULL, client_id TEXT NOT NULL, \
                 text TEXT NOT NULL)"
            ),
        };
        db.sql(&ddl).execute().await?;
        Ok(ChatHistory {
            db,
            table: table.to_string(),
        })
    }

    /// Append one line, stamped with the current time.
    pub async fn append(&self, name: &str, client_id: &str, text: &str) -> Result<(), DbError> {
        // A clock before 1970 is a broken machine, not a reason to lose the line.
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        self.db
            .insert(&self.table)
            .set("at", at)
            .set("name", name)
            .set("client_id", client_id)
            .set("text", text)
            .query()
            .await?;
        Ok(())
    }

    /// The last `n` lines, oldest first.
    pub async fn last(&self, n: u32) -> Result<Vec<HistoryLine>, DbError> {
        let mut rows: Vec<(i64, String, String, String)> = self
            .db
            .select("at,name,client_id,text")
            .from(&self.table)
            .order_by_desc("id")
            .limit(u64::from(n))
            .query_as()
            .await?;
        rows.reverse();
        Ok(rows
            .into_iter()
            .map(|(at, name, client_id, text)| HistoryLine {
                at,
                name,
                client_id,
                text,
            })
            .collect())
    }

    /// The database instance the history lives in.
    pub fn instance(&self) -> &Instance {
        &self.db
    }
}
