//! Chat history, kept through the Db module (`switchboard-db`).
//!
//! Every public chat line is appended to one table with its room; `/history`
//! in the telnet chat prints room `1`'s last lines (the telnet users' room), and
//! the browser chat shows a room's last lines on join. The
//! default store is an SQLite file ([`ChatHistory::default_instance`]); any
//! configured instance works, MySQL/MariaDB included, because the table is
//! created in either dialect and every statement goes through the builder.
//!
//! In use (the `usage` test at the end of this file makes these calls, on a
//! temporary SQLite file; the chat is a binary, so its rustdoc is not a doc-test):
//! [`ChatHistory::default_instance`] for the instance, [`ChatHistory::open`],
//! then [`ChatHistory::append`] for each line and [`ChatHistory::last`] for the
//! last lines of a room, oldest first.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use switchboard_db::{DbError, Dialect, Instance, InstanceConfig};

/// The table used by [`ChatHistory::open`].
pub const DEFAULT_TABLE: &str = "chat_history";

/// The room of lines written before the table had a `room` column: the telnet
/// chat's, which was the only one then.
pub const DEFAULT_ROOM: &str = "1";

/// One line of chat history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryLine {
    /// The room it was said in.
    pub room: String,
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
    /// missing, and adding the `room` column (every older line is in room `1`)
    /// to a table made before rooms existed. Works on SQLite and MySQL/MariaDB
    /// instances.
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
                 room VARCHAR(64) NOT NULL DEFAULT '1', \
                 at BIGINT NOT NULL, name TEXT NOT NULL, client_id VARCHAR(64) NOT NULL, \
                 text TEXT NOT NULL, INDEX room_id (room, id)) \
                 ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
            ),
            Dialect::Sqlite => format!(
                "CREATE TABLE IF NOT EXISTS \"{table}\" (\
                 id INTEGER PRIMARY KEY AUTOINCREMENT, \
                 room TEXT NOT NULL DEFAULT '1', \
                 at INTEGER NOT NULL, name TEXT NOT NULL, client_id TEXT NOT NULL, \
                 text TEXT NOT NULL)"
            ),
        };
        db.sql(&ddl).execute().await?;
        // A table from before rooms: probe for the column, add it if missing.
        let probe = format!(
            "SELECT room FROM {} WHERE 1 = 0",
            quoted(db.dialect(), table)
        );
        if db.sql(&probe).execute().await.is_err() {
            let alter = match db.dialect() {
                Dialect::MySql => format!(
                    "ALTER TABLE `{table}` ADD COLUMN room VARCHAR(64) NOT NULL DEFAULT '1'"
                ),
                Dialect::Sqlite => {
                    format!("ALTER TABLE \"{table}\" ADD COLUMN room TEXT NOT NULL DEFAULT '1'")
                }
            };
            db.sql(&alter).execute().await?;
        }
        if db.dialect() == Dialect::Sqlite {
            let index =
                format!("CREATE INDEX IF NOT EXISTS \"{table}_room\" ON \"{table}\" (room, id)");
            db.sql(&index).execute().await?;
        }
        Ok(ChatHistory {
            db,
            table: table.to_string(),
        })
    }

    /// Append one line said in `room`, stamped with the current time.
    pub async fn append(
        &self,
        room: &str,
        name: &str,
        client_id: &str,
        text: &str,
    ) -> Result<(), DbError> {
        // A clock before 1970 is a broken machine, not a reason to lose the line.
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        self.db
            .insert(&self.table)
            .set("room", room)
            .set("at", at)
            .set("name", name)
            .set("client_id", client_id)
            .set("text", text)
            .query()
            .await?;
        Ok(())
    }

    /// The last `n` lines of `room`, oldest first.
    pub async fn last(&self, room: &str, n: u32) -> Result<Vec<HistoryLine>, DbError> {
        let mut rows: Vec<(i64, String, String, String)> = self
            .db
            .select("at,name,client_id,text")
            .from(&self.table)
            .where_("room = :room")
            .bind("room", room)
            .order_by_desc("id")
            .limit(u64::from(n))
            .query_as()
            .await?;
        rows.reverse();
        Ok(rows
            .into_iter()
            .map(|(at, name, client_id, text)| HistoryLine {
                room: room.to_owned(),
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

/// `table` quoted as an identifier of `dialect` (it is checked to be plain already).
fn quoted(dialect: Dialect, table: &str) -> String {
    match dialect {
        Dialect::MySql => format!("`{table}`"),
        Dialect::Sqlite => format!("\"{table}\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The module's example: a line appended is read back, in its room only.
    #[tokio::test]
    async fn usage() -> Result<(), DbError> {
        let dir = tempfile::tempdir().map_err(|e| DbError::Config {
            instance: "test".into(),
            message: e.to_string(),
        })?;
        let db = ChatHistory::default_instance(dir.path().join("data/chat-history.sqlite3"))?;
        let history = ChatHistory::open(db).await?;
        history.append("1", "ann", "7f000001:0001", "hello").await?;
        history
            .append("2", "bob", "7f000001:0002", "elsewhere")
            .await?;
        let lines = history.last("1", 20).await?;
        assert_eq!(lines.len(), 1);
        let line = &lines[0];
        assert_eq!(
            (
                line.room.as_str(),
                line.name.as_str(),
                line.client_id.as_str()
            ),
            ("1", "ann", "7f000001:0001")
        );
        assert_eq!(line.text, "hello");
        assert!(line.at > 0);
        Ok(())
    }
}
