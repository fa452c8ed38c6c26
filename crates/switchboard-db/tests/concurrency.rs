//! Many tasks sharing one instance (cloned handles, one pool) at once.
// Each backend's tests are compiled with its driver's feature (both by default).
#![cfg(any(feature = "mysql", feature = "sqlite"))]

mod common;

use switchboard_db::Instance;

const TASKS: i64 = 32;
const PER_TASK: i64 = 25;

async fn many_tasks(db: Instance) {
    let t = common::table("conc");
    db.sql(&format!("DROP TABLE IF EXISTS {t}"))
        .execute()
        .await
        .unwrap();
    db.sql(&format!(
        "CREATE TABLE {t} (task INT NOT NULL, n INT NOT NULL, PRIMARY KEY (task, n))"
    ))
    .execute()
    .await
    .unwrap();
    let mut handles = Vec::new();
    for task in 0..TASKS {
        let db = db.clone();
        let t = t.clone();
        handles.push(tokio::spawn(async move {
            for n in 0..PER_TASK {
                db.insert(&t)
                    .set("task", task)
                    .set("n", n)
                    .query()
                    .await
                    .unwrap();
                // Read back this task's own rows: sees exactly what it wrote.
                let count: Option<i64> = db
                    .select_expr("COUNT(*)")
                    .from(&t)
                    .where_("task = :task")
                    .bind("task", task)
                    .single_as()
                    .await
                    .unwrap();
                assert_eq!(count, Some(n + 1));
            }
            let sum: Option<i64> = db
                .select_expr("SUM(n)")
                .from(&t)
                .where_("task = :task")
                .bind("task", task)
                .single_as()
                .await
                .unwrap();
            assert_eq!(sum, Some(PER_TASK * (PER_TASK - 1) / 2));
        }));
    }
    for h in handles {
        h.await.expect("task panicked");
    }
    let total = db
        .select_expr("COUNT(*)")
        .from(&t)
        .single_as::<i64>()
        .await
        .unwrap();
    assert_eq!(total, Some(TASKS * PER_TASK));
    db.sql(&format!("DROP TABLE {t}")).execute().await.unwrap();
}

/// Transactions from many tasks (their futures are `Send`, so they can be
/// spawned): every increment lands exactly once.
async fn concurrent_transactions(db: Instance) {
    let t = common::table("ctx");
    db.sql(&format!("DROP TABLE IF EXISTS {t}"))
        .execute()
        .await
        .unwrap();
    db.sql(&format!(
        "CREATE TABLE {t} (id INT PRIMARY KEY, n INT NOT NULL)"
    ))
    .execute()
    .await
    .unwrap();
    db.insert(&t)
        .set("id", 1)
        .set("n", 0)
        .query()
        .await
        .unwrap();
    let mut handles = Vec::new();
    for _ in 0..8 {
        let db = db.clone();
        let t = t.clone();
        handles.push(tokio::spawn(async move {
            for _ in 0..10 {
                db.transaction(|tx| {
                    let t = t.clone();
                    async move {
                        tx.update(&t)
                            .set_expr("n", "n + 1")
                            .where_("id = 1")
                            .query()
                            .await?;
                        Ok::<_, switchboard_db::DbError>(())
                    }
                })
                .await
                .unwrap();
            }
        }));
    }
    for h in handles {
        h.await.expect("task panicked");
    }
    let n = db
        .select("n")
        .from(&t)
        .where_("id = 1")
        .single_as::<i64>()
        .await
        .unwrap();
    assert_eq!(n, Some(80));
    db.sql(&format!("DROP TABLE {t}")).execute().await.unwrap();
}

#[cfg(feature = "mysql")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mysql_concurrent_transactions() {
    let Some(db) = common::mysql(4).await else {
        return;
    };
    concurrent_transactions(db).await;
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_concurrent_transactions() {
    let (db, _dir) = common::sqlite();
    concurrent_transactions(db).await;
}

#[cfg(feature = "mysql")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mysql_many_tasks() {
    let Some(db) = common::mysql(8).await else {
        return;
    };
    many_tasks(db).await;
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_many_tasks() {
    let (db, _dir) = common::sqlite();
    many_tasks(db).await;
}
