//! A statement's future is small: the driver's own futures (several KiB in
//! sqlx) are boxed where the builder hands the statement to an instance or a
//! transaction. An application's handler that awaits a Db call holds the
//! call's future inline, and a handler's future is moved (copied) whole when
//! it is boxed or spawned — for every event, whichever branch it takes. The
//! futures are measured, not run; the only database touched is SQLite in
//! memory, for a transaction to measure.
#![cfg(all(feature = "mysql", feature = "sqlite"))]

use std::mem::size_of_val;

use switchboard_db::Instance;

/// Measured in a debug build: 1,456–4,008 bytes before the driver's futures were
/// boxed, 24–752 after (the builder itself, moved into its terminal's future).
const MAX_FUTURE: usize = 1024;

/// Every future measured, then one assertion naming all that are too large.
#[derive(Default)]
struct Sizes(Vec<(String, usize)>);

impl Sizes {
    fn check(&mut self, what: &str, size: usize) {
        println!("{what}: {size} bytes");
        self.0.push((what.to_owned(), size));
    }

    fn assert_small(&self) {
        let large: Vec<_> = self.0.iter().filter(|(_, s)| *s > MAX_FUTURE).collect();
        assert!(
            large.is_empty(),
            "futures larger than {MAX_FUTURE} bytes: {large:?}"
        );
    }
}

#[tokio::test]
async fn statement_futures_stay_small() {
    // Sizes are the types', the same for every instance; SQLite in memory
    // lets a real transaction be begun.
    let db = Instance::sqlite_memory("s").expect("config");
    let mut sizes = Sizes::default();
    let select = || db.select("a,b").from("t").where_("a = :a").bind("a", 1);
    sizes.check("Select::query", size_of_val(&select().query()));
    sizes.check("Select::row", size_of_val(&select().row()));
    sizes.check("Select::single", size_of_val(&select().single()));
    sizes.check("Select::column", size_of_val(&select().column()));
    sizes.check(
        "Insert::query",
        size_of_val(&db.insert("t").set("a", 1).query()),
    );
    sizes.check(
        "Insert::execute",
        size_of_val(&db.insert("t").set("a", 1).execute()),
    );
    sizes.check(
        "Update::query",
        size_of_val(&db.update("t").set("a", 1).query()),
    );
    sizes.check(
        "Delete::query",
        size_of_val(&db.delete("t").where_("a = 1").query()),
    );
    sizes.check("Raw::query", size_of_val(&db.sql("SELECT 1").query()));
    sizes.check("Raw::execute", size_of_val(&db.sql("SELECT 1").execute()));
    sizes.check("Instance::ping", size_of_val(&db.ping()));
    sizes.check("Instance::begin", size_of_val(&db.begin()));
    let tx = db.begin().await.expect("a transaction on SQLite in memory");
    sizes.check("Tx select", size_of_val(&tx.select("a").from("t").query()));
    sizes.check("Tx::commit", size_of_val(&tx.commit()));
    sizes.check("Tx::rollback", size_of_val(&tx.rollback()));
    tx.rollback().await.expect("rolled back");
    sizes.assert_small();
}
