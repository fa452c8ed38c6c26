//! A pooled MariaDB connection killed under us (`KILL CONNECTION`): a read
//! is retried once on a new connection and succeeds; a write reports the
//! lost connection instead of being silently sent again.
// MariaDB only.
#![cfg(feature = "mysql")]

mod common;

use switchboard_db::{DbError, Instance};

async fn connection_id(db: &Instance) -> u64 {
    db.sql("SELECT CONNECTION_ID()")
        .single_as::<u64>()
        .await
        .unwrap()
        .unwrap()
}

async fn kill(admin: &Instance, id: u64) {
    // sqlx pings a connection when it goes back to the pool; let that finish
    // first, so the kill hits an idle pooled connection (as `wait_timeout`
    // or a server restart would) rather than racing with the ping.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    admin
        .sql("KILL CONNECTION :id")
        .bind("id", id)
        .execute()
        .await
        .unwrap();
    // Let the server finish closing the socket.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
}

#[tokio::test]
async fn read_is_retried_write_is_not() {
    // One connection, so we know which one the next statement uses.
    let Some(db) = common::mysql(1).await else {
        return;
    };
    let Some(admin) = common::mysql(1).await else {
        return;
    };
    let t = common::table("reconnect");
    db.sql(&format!("DROP TABLE IF EXISTS {t}"))
        .execute()
        .await
        .unwrap();
    db.sql(&format!("CREATE TABLE {t} (id INT PRIMARY KEY)"))
        .execute()
        .await
        .unwrap();
    db.insert(&t).set("id", 1).query().await.unwrap();

    // Read after kill: retried on a fresh connection, succeeds.
    let first = connection_id(&db).await;
    kill(&admin, first).await;
    let n = db
        .select_expr("COUNT(*)")
        .from(&t)
        .single_as::<i64>()
        .await
        .unwrap();
    assert_eq!(n, Some(1));
    assert_eq!(
        db.stats().connections_lost,
        1,
        "the read hit the dead connection"
    );
    assert_eq!(db.stats().reads_retried, 1, "and was retried");
    let second = connection_id(&db).await;
    assert_ne!(first, second, "the dead connection was replaced");

    // Raw SELECT is a read too.
    kill(&admin, second).await;
    let ids: Vec<i64> = db
        .sql(&format!("SELECT id FROM {t}"))
        .column_as()
        .await
        .unwrap();
    assert_eq!(ids, [1]);
    assert_eq!(db.stats().reads_retried, 2);

    // Write after kill: an error, not a silent retry.
    let third = connection_id(&db).await;
    kill(&admin, third).await;
    let e = db.insert(&t).set("id", 2).query().await.unwrap_err();
    assert!(
        matches!(e, DbError::ConnectionLost { .. }),
        "expected ConnectionLost, got {e}"
    );
    assert!(
        e.to_string().contains("INSERT INTO"),
        "the error names the statement: {e}"
    );
    assert_eq!(db.stats().connections_lost, 3);
    assert_eq!(db.stats().reads_retried, 2, "writes are never retried");
    // ...and it was not applied behind our back.
    assert_eq!(
        db.select_expr("COUNT(*)")
            .from(&t)
            .single_as::<i64>()
            .await
            .unwrap(),
        Some(1)
    );

    // The instance recovered: the next write works on a new connection.
    db.insert(&t).set("id", 2).query().await.unwrap();
    assert_eq!(
        db.select_expr("COUNT(*)")
            .from(&t)
            .single_as::<i64>()
            .await
            .unwrap(),
        Some(2)
    );

    // Raw UPDATE after kill: not retried either.
    let fourth = connection_id(&db).await;
    kill(&admin, fourth).await;
    let e = db
        .sql(&format!("UPDATE {t} SET id = id + 10"))
        .execute()
        .await
        .unwrap_err();
    assert!(e.is_connection_lost(), "{e}");
    assert_eq!(
        db.select("id")
            .from(&t)
            .order_by("id")
            .column_as::<i64>()
            .await
            .unwrap(),
        [1, 2]
    );

    db.sql(&format!("DROP TABLE {t}")).execute().await.unwrap();
}

#[tokio::test]
async fn every_idle_connection_killed_costs_at_most_one_failure() {
    // A server restart kills every pooled connection at once. Reads all
    // succeed; after the first lost connection, the other idle ones are
    // checked before use, so later writes do not fail.
    let Some(db) = common::mysql(4).await else {
        return;
    };
    let Some(admin) = common::mysql(1).await else {
        return;
    };
    // Open 4 connections by holding them at once.
    let ids = futures_util::future::join_all((0..4).map(|_| {
        let db = db.clone();
        async move {
            db.sql("SELECT CONNECTION_ID(), SLEEP(0.2)")
                .single_as::<u64>()
                .await
                .unwrap()
                .unwrap()
        }
    }))
    .await;
    let mut distinct = ids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 4, "four pooled connections: {ids:?}");
    for id in distinct {
        kill(&admin, id).await;
    }
    // First read: fails on a dead connection, retried, succeeds.
    assert_eq!(
        db.sql("SELECT 1").single_as::<i64>().await.unwrap(),
        Some(1)
    );
    // Everything after that finds live connections.
    for _ in 0..8 {
        db.sql("DO 1")
            .execute()
            .await
            .expect("no dead connection handed out after the first loss");
    }
    let stats = db.stats();
    assert_eq!(
        (stats.connections_lost, stats.reads_retried),
        (1, 1),
        "{stats:?}"
    );
}

#[tokio::test]
async fn transaction_on_a_killed_connection_fails_cleanly() {
    let Some(db) = common::mysql(2).await else {
        return;
    };
    let Some(admin) = common::mysql(1).await else {
        return;
    };
    let tx = db.begin().await.unwrap();
    let id: u64 = tx
        .sql("SELECT CONNECTION_ID()")
        .single_as()
        .await
        .unwrap()
        .unwrap();
    kill(&admin, id).await;
    // Inside a transaction even a read is not retried: the transaction is gone.
    let e = tx.sql("SELECT 1").single().await.unwrap_err();
    assert!(e.is_connection_lost(), "{e}");
    assert!(matches!(tx.commit().await, Err(DbError::TxFinished)));
    // The pool still works.
    assert_eq!(
        db.sql("SELECT 2").single_as::<i64>().await.unwrap(),
        Some(2)
    );
}
