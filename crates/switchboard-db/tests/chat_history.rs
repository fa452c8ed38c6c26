//! The chat demo's history module (`apps/chat/src/history.rs`, compiled here
//! as-is) on a real SQLite file and on MariaDB: kept across reopening the
//! file, last lines oldest first, any text stored as data, rooms kept apart, a
//! table from before rooms migrated.
// The chat history runs on SQLite and MariaDB: both drivers (the default).
#![cfg(all(feature = "mysql", feature = "sqlite"))]

mod common;

#[allow(dead_code)]
#[path = "../../../apps/chat/src/history.rs"]
mod history;

use history::{ChatHistory, HistoryLine};

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[tokio::test]
async fn sqlite_history_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    // A parent directory that does not exist yet is created.
    let path = dir.path().join("data").join("chat-history.sqlite3");
    let before = now();
    {
        let db = ChatHistory::default_instance(&path).unwrap();
        let h = ChatHistory::open(db.clone()).await.unwrap();
        h.append("1", "ann", "0001", "hello").await.unwrap();
        h.append("1", "bob", "0002", "hi ann").await.unwrap();
        h.append("1", "ann", "0001", "'; DROP TABLE chat_history; --")
            .await
            .unwrap();
        db.close().await; // the process "exits"
    }
    let after = now();
    assert!(path.exists());

    // A new process opens the same file: the table exists, the lines are there.
    let db = ChatHistory::default_instance(&path).unwrap();
    let h = ChatHistory::open(db).await.unwrap();
    let lines = h.last("1", 20).await.unwrap();
    let plain: Vec<(&str, &str, &str)> = lines
        .iter()
        .map(|l| (l.name.as_str(), l.client_id.as_str(), l.text.as_str()))
        .collect();
    assert_eq!(
        plain,
        [
            ("ann", "0001", "hello"),
            ("bob", "0002", "hi ann"),
            ("ann", "0001", "'; DROP TABLE chat_history; --")
        ]
    );
    for HistoryLine { at, .. } in &lines {
        assert!(
            (before..=after).contains(at),
            "{at} not in {before}..={after}"
        );
    }
    h.append("1", "cid", "0003", "back again").await.unwrap();
    assert_eq!(h.last("1", 1).await.unwrap()[0].text, "back again");
}

async fn last_n_oldest_first(h: &ChatHistory) {
    for i in 0..25 {
        h.append("1", &format!("user{i}"), "c1", &format!("line {i} 😀"))
            .await
            .unwrap();
    }
    let lines = h.last("1", 20).await.unwrap();
    assert_eq!(lines.len(), 20);
    assert_eq!(lines.first().map(|l| l.text.as_str()), Some("line 5 😀"));
    assert_eq!(lines.last().map(|l| l.text.as_str()), Some("line 24 😀"));
    assert!(lines.windows(2).all(|w| w[0].at <= w[1].at));
    assert_eq!(h.last("1", 0).await.unwrap(), []);
    assert_eq!(h.last("1", 100).await.unwrap().len(), 25);
}

#[tokio::test]
async fn sqlite_last_n() {
    let dir = tempfile::tempdir().unwrap();
    let db = ChatHistory::default_instance(dir.path().join("h.sqlite3")).unwrap();
    last_n_oldest_first(&ChatHistory::open(db).await.unwrap()).await;
}

#[tokio::test]
async fn mysql_history() {
    let Some(db) = common::mysql(2).await else {
        return;
    };
    let table = common::table("chat_history");
    let h = ChatHistory::open_table(db.clone(), &table).await.unwrap();
    last_n_oldest_first(&h).await;
    // Reopening finds the existing table and its lines.
    let again = ChatHistory::open_table(db.clone(), &table).await.unwrap();
    assert_eq!(again.last("1", 30).await.unwrap().len(), 25);
    db.sql(&format!("DROP TABLE {table}"))
        .execute()
        .await
        .unwrap();
}

#[tokio::test]
async fn rooms_are_kept_apart() {
    let db = switchboard_db::Instance::sqlite_memory("rooms").unwrap();
    let h = ChatHistory::open(db).await.unwrap();
    h.append("1", "ann", "c1", "in one").await.unwrap();
    h.append("2", "bob", "c2", "in two").await.unwrap();
    h.append("1", "ann", "c1", "one again").await.unwrap();
    let one: Vec<String> = h
        .last("1", 20)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.text)
        .collect();
    assert_eq!(one, ["in one", "one again"]);
    let two = h.last("2", 20).await.unwrap();
    assert_eq!(
        (two.len(), two[0].room.as_str(), two[0].name.as_str()),
        (1, "2", "bob")
    );
    assert_eq!(h.last("3", 20).await.unwrap(), []);
}

#[tokio::test]
async fn a_table_from_before_rooms_gets_the_room_column() {
    let dir = tempfile::tempdir().unwrap();
    let db = ChatHistory::default_instance(dir.path().join("old.sqlite3")).unwrap();
    // The table as the chat created it before rooms, with one line in it.
    db.sql(
        "CREATE TABLE chat_history (id INTEGER PRIMARY KEY AUTOINCREMENT, \
         at INTEGER NOT NULL, name TEXT NOT NULL, client_id TEXT NOT NULL, text TEXT NOT NULL)",
    )
    .execute()
    .await
    .unwrap();
    db.sql("INSERT INTO chat_history (at, name, client_id, text) VALUES (1, 'ann', 'c1', 'old')")
        .execute()
        .await
        .unwrap();
    let h = ChatHistory::open(db.clone()).await.unwrap();
    h.append("2", "bob", "c2", "new").await.unwrap();
    let one = h.last(history::DEFAULT_ROOM, 20).await.unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!((one[0].text.as_str(), one[0].room.as_str()), ("old", "1"));
    assert_eq!(h.last("2", 20).await.unwrap()[0].text, "new");
    // Opening it again changes nothing.
    let again = ChatHistory::open(db).await.unwrap();
    assert_eq!(again.last("1", 20).await.unwrap().len(), 1);
}

#[tokio::test]
async fn bad_table_names_are_refused() {
    let db = switchboard_db::Instance::sqlite_memory("h").unwrap();
    assert!(ChatHistory::open_table(db, "x; DROP TABLE y")
        .await
        .is_err());
}

/// The chat's two workers open one new history file at the same moment. SQLite answered
/// one of them "database is locked" at once (switching the new file to WAL ignores the
/// busy timeout), in ~15 % of such starts here: that worker's history stayed closed,
/// and the lines said meanwhile were not kept. Both open now, both can write and read,
/// and the file is in WAL mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_opening_a_new_history_file_at_once_both_open_it() {
    let mut failures = Vec::new();
    for round in 0..100 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.sqlite");
        let a = ChatHistory::default_instance(&path).unwrap();
        let b = ChatHistory::default_instance(&path).unwrap();
        let (ha, hb) = tokio::join!(ChatHistory::open(a.clone()), ChatHistory::open(b.clone()));
        match (ha, hb) {
            (Ok(ha), Ok(hb)) => {
                let (wa, wb) = tokio::join!(
                    ha.append("1", "ann", "0001", "hello"),
                    hb.append("1", "bob", "0002", "hi")
                );
                if let Err(e) = wa.and(wb) {
                    failures.push(format!("round {round}: append: {e}"));
                }
                match hb.last("1", 20).await {
                    Ok(lines) if lines.len() == 2 => {}
                    other => failures.push(format!("round {round}: last: {other:?}")),
                }
            }
            (ha, hb) => failures.push(format!(
                "round {round}: open: {:?} / {:?}",
                ha.err().map(|e| e.to_string()),
                hb.err().map(|e| e.to_string())
            )),
        }
        if round == 0 {
            let mode: Option<String> = a.sql("PRAGMA journal_mode").single_as().await.unwrap();
            assert_eq!(
                mode.map(|m| m.to_lowercase()).as_deref(),
                Some("wal"),
                "the history file is not in WAL mode"
            );
        }
        a.close().await;
        b.close().await;
    }
    assert!(
        failures.is_empty(),
        "{} of 100 rounds failed: {failures:#?}",
        failures.len()
    );
}
