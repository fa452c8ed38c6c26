//! Transactions: commit on Ok, roll back on Err and on panic, on both
//! backends; a finished transaction refuses further use.
// Each backend's tests are compiled with its driver's feature (both by default).
#![cfg(any(feature = "mysql", feature = "sqlite"))]

#[macro_use]
mod common;

use std::panic::AssertUnwindSafe;

use futures_util::FutureExt as _;
use switchboard_db::{DbError, Instance};

async fn setup(db: &Instance) -> String {
    let t = common::table("tx");
    db.sql(&format!("DROP TABLE IF EXISTS {t}"))
        .execute()
        .await
        .unwrap();
    db.sql(&format!(
        "CREATE TABLE {t} (id INT PRIMARY KEY, balance INT NOT NULL)"
    ))
    .execute()
    .await
    .unwrap();
    db.insert(&t)
        .set("id", 1)
        .set("balance", 100)
        .query()
        .await
        .unwrap();
    db.insert(&t)
        .set("id", 2)
        .set("balance", 0)
        .query()
        .await
        .unwrap();
    t
}

async fn balances(db: &Instance, t: &str) -> Vec<i64> {
    db.select("balance")
        .from(t)
        .order_by("id")
        .column_as()
        .await
        .unwrap()
}

async fn transfer(tx: &switchboard_db::Tx, t: &str, amount: i64) -> Result<(), DbError> {
    tx.update(t)
        .set_expr("balance", "balance - :n")
        .where_("id = 1")
        .bind("n", amount)
        .query()
        .await?;
    tx.update(t)
        .set_expr("balance", "balance + :n")
        .where_("id = 2")
        .bind("n", amount)
        .query()
        .await?;
    Ok(())
}

async fn commit_on_ok(db: &Instance) {
    let t = setup(db).await;
    let moved = db
        .transaction(|tx| {
            let t = t.clone();
            async move {
                transfer(&tx, &t, 30).await?;
                // Reads inside the transaction see its own writes.
                let inside: Vec<i64> = tx
                    .select("balance")
                    .from(&t)
                    .order_by("id")
                    .column_as()
                    .await?;
                assert_eq!(inside, [70, 30]);
                Ok::<_, DbError>(30)
            }
        })
        .await
        .unwrap();
    assert_eq!(moved, 30);
    assert_eq!(balances(db, &t).await, [70, 30]);
    db.sql(&format!("DROP TABLE {t}")).execute().await.unwrap();
}

#[derive(Debug)]
enum AppError {
    Db(#[allow(dead_code)] DbError),
    Insufficient,
}

impl From<DbError> for AppError {
    fn from(e: DbError) -> Self {
        AppError::Db(e)
    }
}

async fn rollback_on_err(db: &Instance) {
    let t = setup(db).await;
    let r = db
        .transaction(|tx| {
            let t = t.clone();
            async move {
                transfer(&tx, &t, 500).await?;
                let left: Option<i64> = tx
                    .select("balance")
                    .from(&t)
                    .where_("id = 1")
                    .single_as()
                    .await?;
                if left.unwrap_or(0) < 0 {
                    return Err(AppError::Insufficient);
                }
                Ok(())
            }
        })
        .await;
    assert!(matches!(r, Err(AppError::Insufficient)), "{r:?}");
    assert_eq!(balances(db, &t).await, [100, 0]);

    // A database error inside the closure also rolls back what came before it.
    let r = db
        .transaction(|tx| {
            let t = t.clone();
            async move {
                transfer(&tx, &t, 10).await?;
                tx.insert(&t).set("id", 1).set("balance", 1).query().await?; // duplicate key
                Ok::<_, DbError>(())
            }
        })
        .await;
    assert!(matches!(r, Err(DbError::Database { .. })), "{r:?}");
    assert_eq!(balances(db, &t).await, [100, 0]);
    db.sql(&format!("DROP TABLE {t}")).execute().await.unwrap();
}

async fn rollback_on_panic(db: &Instance) {
    let t = setup(db).await;
    let fut = db.transaction(|tx| {
        let t = t.clone();
        async move {
            transfer(&tx, &t, 40).await?;
            if t.starts_with("sbdb") {
                panic!("business code bug");
            }
            Ok::<_, DbError>(())
        }
    });
    let caught = AssertUnwindSafe(fut).catch_unwind().await;
    let panic = caught.expect_err("the panic goes on after the rollback");
    assert_eq!(panic.downcast_ref::<&str>(), Some(&"business code bug"));
    assert_eq!(balances(db, &t).await, [100, 0]);
    // The pool is still usable (the connection came back rolled back).
    transfer_committed(db, &t).await;
    db.sql(&format!("DROP TABLE {t}")).execute().await.unwrap();
}

async fn transfer_committed(db: &Instance, t: &str) {
    let tx = db.begin().await.unwrap();
    transfer(&tx, t, 1).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(balances(db, t).await, [99, 1]);
}

async fn manual_begin_and_finished(db: &Instance) {
    let t = setup(db).await;
    let tx = db.begin().await.unwrap();
    transfer(&tx, &t, 5).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(balances(db, &t).await, [100, 0]);
    assert!(matches!(
        tx.select("id").from(&t).query().await,
        Err(DbError::TxFinished)
    ));
    assert!(matches!(tx.commit().await, Err(DbError::TxFinished)));

    // Dropped without commit: rolled back.
    {
        let tx = db.begin().await.unwrap();
        transfer(&tx, &t, 7).await.unwrap();
    }
    assert_eq!(balances(db, &t).await, [100, 0]);
    db.sql(&format!("DROP TABLE {t}")).execute().await.unwrap();
}

on_both!(
    commit_on_ok,
    rollback_on_err,
    rollback_on_panic,
    manual_begin_and_finished
);
