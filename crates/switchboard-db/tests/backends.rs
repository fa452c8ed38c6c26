//! Every terminal, against real MariaDB and a real SQLite file, on known
//! data; values of every type; injection strings in every value position;
//! database errors; binds checked before anything is sent.
// Each backend's tests are compiled with its driver's feature (both by default).
#![cfg(any(feature = "mysql", feature = "sqlite"))]

#[macro_use]
mod common;

use serde::Deserialize;
use switchboard_db::{params, DbError, Dialect, Instance, Row, Value};

/// `CREATE TABLE` suffix that makes MariaDB store full Unicode.
fn table_opts(db: &Instance) -> &'static str {
    match db.dialect() {
        Dialect::MySql => " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
        Dialect::Sqlite => "",
    }
}

async fn create_persons(db: &Instance, t: &str) {
    db.sql(&format!("DROP TABLE IF EXISTS {t}"))
        .execute()
        .await
        .unwrap();
    db.sql(&format!(
        "CREATE TABLE {t} (ID {pk}, Firstname VARCHAR(64) NOT NULL, Lastname VARCHAR(64), \
         Sex CHAR(1) NOT NULL, Age INT NOT NULL){opts}",
        pk = common::int_pk(db),
        opts = table_opts(db)
    ))
    .execute()
    .await
    .unwrap();
}

async fn drop_table(db: &Instance, t: &str) {
    db.sql(&format!("DROP TABLE IF EXISTS {t}"))
        .execute()
        .await
        .unwrap();
}

#[derive(Debug, Deserialize, PartialEq)]
struct Person {
    #[serde(rename = "ID")]
    id: i64,
    #[serde(rename = "Firstname")]
    first: String,
    #[serde(rename = "Lastname")]
    last: Option<String>,
    #[serde(rename = "Sex")]
    sex: String,
    #[serde(rename = "Age")]
    age: u8,
}

async fn terminals(db: &Instance) {
    let t = common::table("persons");
    create_persons(db, &t).await;

    // insert(..).cols(..) returns the generated id.
    let people = [
        ("Ann", Some("Lee"), "F", 31),
        ("Bob", None, "M", 13),
        ("Cid", Some("Ng"), "M", 47),
        ("Dee", Some("Oh"), "F", 22),
    ];
    for (i, (f, l, s, a)) in people.iter().enumerate() {
        let id = db
            .insert(&t)
            .values(params! { "Firstname" => *f, "Lastname" => *l, "Sex" => *s, "Age" => *a })
            .query()
            .await
            .unwrap();
        assert_eq!(id, i as u64 + 1);
    }

    // query(): all rows, typed values.
    let rows = db
        .select("ID,Firstname,Lastname")
        .from(&t)
        .order_by("ID")
        .query()
        .await
        .unwrap();
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[0].columns(), ["ID", "Firstname", "Lastname"]);
    assert_eq!(
        rows[1].values(),
        [Value::Int(2), Value::Text("Bob".into()), Value::Null]
    );

    // The brief's read: select('ID,Sex')->from('Persons')->where('sex= :sex')->bindValues(['sex'=>'M']).
    let rows = db
        .select("ID,Sex")
        .from(&t)
        .where_("sex= :sex")
        .bind_values(params! { "sex" => "M" })
        .order_by("ID")
        .query()
        .await
        .unwrap();
    let ids: Vec<i64> = rows.iter().map(|r| r.get_as("ID").unwrap()).collect();
    assert_eq!(ids, [2, 3]);

    // row(): first row or None.
    let row = db
        .select("Firstname,Age")
        .from(&t)
        .where_("ID = :id")
        .bind("id", 3)
        .row()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.get("Firstname"), Some(&Value::Text("Cid".into())));
    assert_eq!(row.get_as::<i32>("Age").unwrap(), 47);
    assert!(db
        .select("ID")
        .from(&t)
        .where_("ID = :id")
        .bind("id", 99)
        .row()
        .await
        .unwrap()
        .is_none());

    // column(): first column of every row.
    let names = db
        .select("Firstname")
        .from(&t)
        .where_("Sex = :s")
        .bind("s", "F")
        .order_by_desc("Age")
        .column()
        .await
        .unwrap();
    assert_eq!(names, [Value::from("Ann"), Value::from("Dee")]);

    // single(): one value.
    let n = db.select_expr("COUNT(*)").from(&t).single().await.unwrap();
    assert_eq!(n.and_then(|v| v.as_i64()), Some(4));
    assert_eq!(
        db.select("Lastname")
            .from(&t)
            .where_("ID = 2")
            .single()
            .await
            .unwrap(),
        Some(Value::Null)
    );
    assert_eq!(
        db.select("Lastname")
            .from(&t)
            .where_("ID = 99")
            .single()
            .await
            .unwrap(),
        None
    );

    // Typed forms.
    let all: Vec<Person> = db
        .select("*")
        .from(&t)
        .order_by("ID")
        .query_as()
        .await
        .unwrap();
    assert_eq!(
        all[1],
        Person {
            id: 2,
            first: "Bob".into(),
            last: None,
            sex: "M".into(),
            age: 13
        }
    );
    let p: Option<Person> = db
        .select("*")
        .from(&t)
        .where_("Firstname = :f")
        .bind("f", "Dee")
        .row_as()
        .await
        .unwrap();
    assert_eq!(p.map(|p| p.age), Some(22));
    let ages: Vec<u32> = db
        .select("Age")
        .from(&t)
        .order_by("Age")
        .column_as()
        .await
        .unwrap();
    assert_eq!(ages, [13, 22, 31, 47]);
    let oldest: Option<String> = db
        .select("Firstname")
        .from(&t)
        .order_by_desc("Age")
        .limit(1)
        .single_as()
        .await
        .unwrap();
    assert_eq!(oldest.as_deref(), Some("Cid"));
    let tuples: Vec<(i64, String)> = db
        .select("ID,Firstname")
        .from(&t)
        .order_by("ID")
        .limit(2)
        .offset(1)
        .query_as()
        .await
        .unwrap();
    assert_eq!(tuples, [(2, "Bob".to_string()), (3, "Cid".to_string())]);

    // The same four terminals on raw SQL with :name parameters.
    let sql = format!("SELECT ID, Firstname FROM {t} WHERE Age > :age ORDER BY ID");
    assert_eq!(db.sql(&sql).bind("age", 25).query().await.unwrap().len(), 2);
    assert_eq!(
        db.sql(&sql)
            .bind("age", 25)
            .row()
            .await
            .unwrap()
            .and_then(|r| r.get("ID").cloned()),
        Some(Value::Int(1))
    );
    assert_eq!(
        db.sql(&sql).bind("age", 25).column().await.unwrap(),
        [Value::Int(1), Value::Int(3)]
    );
    assert_eq!(
        db.sql(&sql).bind("age", 40).single().await.unwrap(),
        Some(Value::Int(3))
    );
    let raw: Vec<(i64, String)> = db.sql(&sql).bind("age", 0).query_as().await.unwrap();
    assert_eq!(raw.len(), 4);

    // update: affected rows; the brief's update('Persons')->cols(['sex'])->where('ID=1')->bindValue('sex','F').
    assert_eq!(
        db.update(&t)
            .cols(["Sex"])
            .where_("ID=1")
            .bind("Sex", "F")
            .query()
            .await
            .unwrap(),
        1
    );
    // The count is of rows matched, not changed (as the brief's PHP client has it): the
    // same update again, to the value the row already has, still counts the row. (MySQL
    // alone would say 0 changed; the client asks for rows found.)
    assert_eq!(
        db.update(&t)
            .cols(["Sex"])
            .where_("ID=1")
            .bind("Sex", "F")
            .query()
            .await
            .unwrap(),
        1,
        "an update to the value a row already has counts the row it matched"
    );
    assert_eq!(
        db.update(&t)
            .set("Sex", "F")
            .where_("ID = :id")
            .bind("id", 1)
            .query()
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        db.update(&t)
            .set_expr("Age", "Age + :n")
            .where_("Sex = :s")
            .bind("n", 1)
            .bind("s", "M")
            .query()
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        db.select("Age")
            .from(&t)
            .where_("ID = 2")
            .single_as::<i64>()
            .await
            .unwrap(),
        Some(14)
    );
    assert_eq!(
        db.update(&t)
            .set("Age", 0)
            .where_("ID = 99")
            .query()
            .await
            .unwrap(),
        0
    );

    // delete: affected rows.
    assert_eq!(db.delete(&t).where_("ID=9").query().await.unwrap(), 0);
    assert_eq!(
        db.delete(&t)
            .where_("Sex = :s")
            .bind("s", "F")
            .query()
            .await
            .unwrap(),
        2
    );
    assert_eq!(db.delete(&t).all_rows().query().await.unwrap(), 2);
    assert_eq!(
        db.select_expr("COUNT(*)")
            .from(&t)
            .single_as::<i64>()
            .await
            .unwrap(),
        Some(0)
    );

    drop_table(db, &t).await;
}

/// The brief's complex select, run against real tables.
async fn joins_group_having(db: &Instance) {
    let t1 = common::table("table1");
    let t2 = common::table("table2");
    for t in [&t1, &t2] {
        drop_table(db, t).await;
    }
    db.sql(&format!(
        "CREATE TABLE {t1} (uid INT, age INT, aid INT, did INT)"
    ))
    .execute()
    .await
    .unwrap();
    db.sql(&format!("CREATE TABLE {t2} (uid INT, foo VARCHAR(8))"))
        .execute()
        .await
        .unwrap();
    for (uid, age, aid, did) in [
        (1, 20, 1, 3),
        (2, 30, 1, 2),
        (3, 40, 2, 1),
        (4, 10, 3, 4),
        (5, 50, 2, 5),
    ] {
        db.insert(&t1)
            .values(params! { "uid" => uid, "age" => age, "aid" => aid, "did" => did })
            .query()
            .await
            .unwrap();
        db.insert(&t2)
            .set("uid", uid)
            .set("foo", if uid == 3 { "bar" } else { "foo" })
            .query()
            .await
            .unwrap();
    }
    let rows = db
        .select("aid")
        .expr("COUNT(*) AS n")
        .from(&t1)
        .inner_join(&t2, &format!("{t1}.uid = {t2}.uid"))
        .where_("age > :age")
        .group_by(["aid"])
        .having("MIN(foo) = :foo")
        .order_by(["aid"])
        .limit(10)
        .offset(0)
        .bind_values(params! { "age" => 13, "foo" => "foo" })
        .query_as::<(i64, i64)>()
        .await
        .unwrap();
    // aid 1: uids 1,2 (both foo); aid 2: uids 3 (bar), 5 (foo) → MIN(foo) = "bar", filtered out.
    assert_eq!(rows, [(1, 2)]);

    let left: Vec<(i64, Option<String>)> = db
        .select(format!("{t1}.uid, {t2}.foo").as_str())
        .from(&t1)
        .left_join(&t2, &format!("{t2}.uid = {t1}.uid AND {t2}.foo = :f"))
        .bind("f", "bar")
        .order_by(format!("{t1}.uid").as_str())
        .query_as()
        .await
        .unwrap();
    assert_eq!(left.len(), 5);
    assert_eq!(left[2], (3, Some("bar".into())));
    assert_eq!(left[0], (1, None));
    let paged: Vec<i64> = db
        .select("uid")
        .from(&t1)
        .order_by_desc("age")
        .limit(2)
        .offset(1)
        .column_as()
        .await
        .unwrap();
    assert_eq!(paged, [3, 2]);
    for t in [&t1, &t2] {
        drop_table(db, t).await;
    }
}

/// Numbers and string literals in a join condition are sent as values: the
/// brief's `table2.did > 50` form filters, on both databases.
async fn join_condition_literals(db: &Instance) {
    let t1 = common::table("jl1");
    let t2 = common::table("jl2");
    for t in [&t1, &t2] {
        drop_table(db, t).await;
    }
    db.sql(&format!("CREATE TABLE {t1} (uid INT)"))
        .execute()
        .await
        .unwrap();
    db.sql(&format!(
        "CREATE TABLE {t2} (uid INT, did INT, w DOUBLE, kind VARCHAR(8))"
    ))
    .execute()
    .await
    .unwrap();
    for (uid, did, w, kind) in [(1, 40, 0.5, "a"), (2, 60, 1.5, "b"), (3, 70, 2.5, "a")] {
        db.insert(&t1).set("uid", uid).query().await.unwrap();
        db.insert(&t2)
            .values(params! { "uid" => uid, "did" => did, "w" => w, "kind" => kind })
            .query()
            .await
            .unwrap();
    }
    let uids = |on: String| {
        let (t1, t2) = (t1.clone(), t2.clone());
        async move {
            db.select(format!("{t1}.uid").as_str())
                .from(&t1)
                .inner_join(&t2, &on)
                .order_by(format!("{t1}.uid").as_str())
                .column_as::<i64>()
                .await
                .unwrap_or_else(|e| panic!("ON {on}: {e}"))
        }
    };
    assert_eq!(
        uids(format!("{t1}.uid = {t2}.uid AND {t2}.did > 50")).await,
        [2, 3]
    );
    assert_eq!(
        uids(format!("{t1}.uid = {t2}.uid AND {t2}.w <= 1.5")).await,
        [1, 2]
    );
    assert_eq!(
        uids(format!(
            "{t1}.uid = {t2}.uid AND {t2}.kind = 'a' AND {t2}.did >= -1"
        ))
        .await,
        [1, 3]
    );
    for t in [&t1, &t2] {
        drop_table(db, t).await;
    }
}

/// A misspelt column is an error naming it, on both databases: SQLite must
/// not read a quoted name it cannot find as a string.
async fn misspelt_columns_are_errors(db: &Instance) {
    let t = common::table("typo");
    drop_table(db, &t).await;
    db.sql(&format!("CREATE TABLE {t} (name VARCHAR(8), n INT)"))
        .execute()
        .await
        .unwrap();
    db.insert(&t)
        .set("name", "a")
        .set("n", 1)
        .query()
        .await
        .unwrap();
    let on = format!("{t}.nmae = b.name");
    let attempts = [
        ("select", db.select("nmae").from(&t)),
        (
            "select t.col",
            db.select(format!("{t}.nmae").as_str()).from(&t),
        ),
        ("group_by", db.select("n").from(&t).group_by("nmae")),
        ("order_by", db.select("n").from(&t).order_by("nmae DESC")),
        (
            "join",
            db.select("n").from(&t).inner_join(&format!("{t} b"), &on),
        ),
    ];
    for (what, select) in attempts {
        match select.query().await {
            Err(e @ DbError::Database { .. }) => {
                assert!(e.to_string().contains("nmae"), "{what}: {e}")
            }
            other => panic!("{what}: expected a database error naming `nmae`, got {other:?}"),
        }
    }
    drop_table(db, &t).await;
}

/// `sql(write).query()` cannot say what the write did (no rows come back), so
/// it is refused before anything is sent, naming `execute()`; a write with
/// `RETURNING` does return rows, so it is a query.
async fn raw_writes_need_execute(db: &Instance) {
    let t = common::table("rawwrite");
    drop_table(db, &t).await;
    db.sql(&format!(
        "CREATE TABLE {t} (id {pk}, name VARCHAR(8))",
        pk = common::int_pk(db)
    ))
    .execute()
    .await
    .unwrap();
    let insert = format!("INSERT INTO {t} (name) VALUES (:n)");
    let refused = |e: DbError, keyword: &str| {
        assert!(
            matches!(&e, DbError::NotAQuery { keyword: k, .. } if k == keyword),
            "{keyword}: {e:?}"
        );
        assert!(e.to_string().contains("execute()"), "{e}");
    };
    refused(
        db.sql(&insert).bind("n", "a").query().await.unwrap_err(),
        "INSERT",
    );
    refused(
        db.sql(&insert).bind("n", "a").row().await.unwrap_err(),
        "INSERT",
    );
    refused(
        db.sql(&insert).bind("n", "a").single().await.unwrap_err(),
        "INSERT",
    );
    refused(
        db.sql(&insert).bind("n", "a").column().await.unwrap_err(),
        "INSERT",
    );
    refused(
        db.sql(&format!("  /* c */ update {t} SET name = 'b'"))
            .query_as::<(i64,)>()
            .await
            .unwrap_err(),
        "UPDATE",
    );
    refused(
        db.sql(&format!("DELETE FROM {t}"))
            .query()
            .await
            .unwrap_err(),
        "DELETE",
    );
    refused(
        db.sql(&format!("CREATE TABLE {t}_x (a INT)"))
            .query()
            .await
            .unwrap_err(),
        "CREATE",
    );
    // Nothing was sent.
    let count = || db.select_expr("COUNT(*)").from(&t).single_as::<i64>();
    assert_eq!(count().await.unwrap(), Some(0));
    // In a transaction too.
    let tx = db.begin().await.unwrap();
    refused(
        tx.sql(&insert).bind("n", "a").query().await.unwrap_err(),
        "INSERT",
    );
    tx.rollback().await.unwrap();

    // execute() says what happened.
    let done = db.sql(&insert).bind("n", "a").execute().await.unwrap();
    assert_eq!((done.rows_affected, done.last_insert_id), (1, Some(1)));
    // RETURNING makes a write a query.
    let rows = db
        .sql(&format!(
            "INSERT INTO {t} (name) VALUES (:n) RETURNING id, name"
        ))
        .bind("n", "b")
        .query_as::<(i64, String)>()
        .await
        .unwrap();
    assert_eq!(rows, [(2, "b".to_string())]);
    let gone = db
        .sql(&format!("DELETE FROM {t} WHERE id = :id RETURNING name"))
        .bind("id", 1)
        .single_as::<String>()
        .await
        .unwrap();
    assert_eq!(gone.as_deref(), Some("a"));
    assert_eq!(count().await.unwrap(), Some(1));
    drop_table(db, &t).await;
}

/// Expressions in GROUP BY and ORDER BY, run on real data.
async fn group_and_order_by_expressions(db: &Instance) {
    let t = common::table("gexpr");
    drop_table(db, &t).await;
    db.sql(&format!("CREATE TABLE {t} (name VARCHAR(16), age INT)"))
        .execute()
        .await
        .unwrap();
    for (name, age) in [
        ("ann", 30),
        ("amy", 41),
        ("bob", 25),
        ("abe", 19),
        ("bea", 33),
    ] {
        db.insert(&t)
            .set("name", name)
            .set("age", age)
            .query()
            .await
            .unwrap();
    }
    // Count by first letter, biggest group first.
    let by_letter: Vec<(String, i64)> = db
        .select_expr("SUBSTR(name, 1, 1) AS letter")
        .expr("COUNT(*) AS n")
        .from(&t)
        .group_by_expr("SUBSTR(name, 1, 1)")
        .order_by_expr("COUNT(*) DESC")
        .query_as()
        .await
        .unwrap();
    assert_eq!(by_letter, [("a".to_string(), 3), ("b".to_string(), 2)]);
    // Nearest age to a bound value first.
    let nearest: Vec<String> = db
        .select("name")
        .from(&t)
        .order_by_expr("ABS(age - :target)")
        .order_by("name")
        .bind("target", 32)
        .limit(2)
        .column_as()
        .await
        .unwrap();
    assert_eq!(nearest, ["bea", "ann"]);
    // Random order: the dialect's own function, the caller's choice.
    let random = match db.dialect() {
        Dialect::MySql => "RAND()",
        Dialect::Sqlite => "RANDOM()",
    };
    let mut shuffled: Vec<String> = db
        .select("name")
        .from(&t)
        .order_by_expr(random)
        .column_as()
        .await
        .unwrap();
    shuffled.sort();
    assert_eq!(shuffled, ["abe", "amy", "ann", "bea", "bob"]);
    drop_table(db, &t).await;
}

/// Strings that would break spliced SQL must round-trip as data, in every
/// position a value can take.
async fn injection(db: &Instance) {
    let t = common::table("inj");
    drop_table(db, &t).await;
    db.sql(&format!(
        "CREATE TABLE {t} (id INT PRIMARY KEY, s TEXT, b BLOB){}",
        table_opts(db)
    ))
    .execute()
    .await
    .unwrap();
    let nasty = [
        "'; DROP TABLE persons; --",
        "\" OR \"1\"=\"1",
        "' OR '1'='1",
        "\\'; DROP TABLE x; #",
        "`id`",
        ":id",
        "?",
        "%_*",
        "a\0b",
        "Robert'); DELETE FROM students;--",
        "😀 ünïcødé",
        "\\",
        "/* */ -- #",
    ];
    for (i, s) in nasty.iter().enumerate() {
        let i = i as i64;
        // insert values
        db.insert(&t)
            .set("id", i)
            .set("s", *s)
            .set("b", s.as_bytes())
            .query()
            .await
            .unwrap();
        // where value
        let back: Option<String> = db
            .select("s")
            .from(&t)
            .where_("s = :s")
            .bind("s", *s)
            .single_as()
            .await
            .unwrap();
        assert_eq!(back.as_deref(), Some(*s), "where round trip of {s:?}");
        // update set value and where value
        let n = db
            .update(&t)
            .set("s", format!("{s}{s}"))
            .where_("s = :old")
            .bind("old", *s)
            .query()
            .await
            .unwrap();
        assert_eq!(n, 1, "update of {s:?}");
        // having value + join condition value
        let joined = db
            .select("a.s")
            .from(&format!("{t} a"))
            .inner_join(&format!("{t} b"), "b.id = a.id AND b.s = :js")
            .where_("a.id = :id")
            .group_by("a.s")
            .having("a.s = :hs")
            .bind("js", format!("{s}{s}"))
            .bind("hs", format!("{s}{s}"))
            .bind("id", i)
            .single_as::<String>()
            .await
            .unwrap();
        assert_eq!(joined.as_deref(), Some(format!("{s}{s}").as_str()));
        // raw SQL value, and a value in the select list
        let echoed: Option<String> = db.sql("SELECT :v").bind("v", *s).single_as().await.unwrap();
        assert_eq!(echoed.as_deref(), Some(*s));
        let blob: Option<Vec<u8>> = db
            .select("b")
            .from(&t)
            .where_("id = :id")
            .bind("id", i)
            .single_as()
            .await
            .unwrap();
        assert_eq!(blob.as_deref(), Some(s.as_bytes()));
    }
    // delete value
    let n = db
        .delete(&t)
        .where_("s = :s")
        .bind("s", format!("{0}{0}", nasty[0]))
        .query()
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(
        db.select_expr("COUNT(*)")
            .from(&t)
            .single_as::<i64>()
            .await
            .unwrap(),
        Some(nasty.len() as i64 - 1)
    );
    drop_table(db, &t).await;
}

/// A used-but-unbound or bound-but-unused name stops the statement before it
/// is sent: the insert below would otherwise have written a row.
async fn binds_checked_before_sending(db: &Instance) {
    let t = common::table("binds");
    drop_table(db, &t).await;
    db.sql(&format!("CREATE TABLE {t} (a INT, b INT)"))
        .execute()
        .await
        .unwrap();
    let sql = format!("INSERT INTO {t} (a, b) VALUES (:a, :b)");
    let e = db.sql(&sql).bind("a", 1).execute().await.unwrap_err();
    assert!(
        matches!(&e, DbError::UnboundParams { names, .. } if names == &["b"]),
        "{e}"
    );
    let e = db
        .sql(&sql)
        .bind("a", 1)
        .bind("b", 2)
        .bind("c", 3)
        .execute()
        .await
        .unwrap_err();
    assert!(
        matches!(&e, DbError::UnusedParams { names, .. } if names == &["c"]),
        "{e}"
    );
    let e = db
        .insert(&t)
        .cols("a,b")
        .bind("a", 1)
        .query()
        .await
        .unwrap_err();
    assert!(matches!(e, DbError::UnboundParams { .. }), "{e}");
    let e = db.delete(&t).query().await.unwrap_err();
    assert!(matches!(e, DbError::MissingWhere { .. }), "{e}");
    assert_eq!(
        db.select_expr("COUNT(*)")
            .from(&t)
            .single_as::<i64>()
            .await
            .unwrap(),
        Some(0)
    );
    drop_table(db, &t).await;
}

/// Errors carry the SQL (placeholders, never values) and the database's code.
async fn database_errors(db: &Instance) {
    let t = common::table("missing");
    let e = db
        .select("a")
        .from(&t)
        .where_("a = :a")
        .bind("a", "secret-value")
        .query()
        .await
        .unwrap_err();
    match &e {
        DbError::Database {
            sql, code, message, ..
        } => {
            assert!(sql.contains(&t) && sql.contains('?'), "{sql}");
            assert!(!e.to_string().contains("secret-value"), "{e}");
            match db.dialect() {
                Dialect::MySql => assert_eq!(code, "1146"),
                Dialect::Sqlite => assert_eq!(code, "1"),
            }
            assert!(
                message.contains(&t) || message.contains("no such table"),
                "{message}"
            );
        }
        other => panic!("expected a database error, got {other}"),
    }

    let t = common::table("uniq");
    drop_table(db, &t).await;
    db.sql(&format!("CREATE TABLE {t} (k VARCHAR(16) PRIMARY KEY)"))
        .execute()
        .await
        .unwrap();
    db.insert(&t).set("k", "x").query().await.unwrap();
    let e = db.insert(&t).set("k", "x").query().await.unwrap_err();
    let expected = match db.dialect() {
        Dialect::MySql => "1062",
        Dialect::Sqlite => "1555",
    };
    assert_eq!(e.db_code(), Some(expected), "{e}");
    drop_table(db, &t).await;
}

async fn value_types(db: &Instance) {
    let t = common::table("types");
    drop_table(db, &t).await;
    let ddl = match db.dialect() {
        Dialect::MySql => format!(
            "CREATE TABLE {t} (i BIGINT, u BIGINT UNSIGNED, f DOUBLE, r FLOAT, s VARCHAR(32), \
             b VARBINARY(16), flag BOOLEAN, d DECIMAL(10,2), dt DATETIME(6), day DATE, tm TIME, n INT) \
             DEFAULT CHARSET=utf8mb4"
        ),
        Dialect::Sqlite => format!("CREATE TABLE {t} (i INTEGER, u INTEGER, f REAL, r REAL, s TEXT, b BLOB, flag BOOLEAN, n INTEGER)"),
    };
    db.sql(&ddl).execute().await.unwrap();
    let mut ins = db
        .insert(&t)
        .set("i", -9_007_199_254_740_993_i64)
        .set("u", 42_u64)
        .set("f", 1.5_f64)
        .set("r", 0.25_f32)
        .set("s", "héllo")
        .set("b", &[0_u8, 255, 10, 39][..])
        .set("flag", true)
        .set("n", None::<i64>);
    if db.dialect() == Dialect::MySql {
        ins = ins
            .set("d", "12.34")
            .set("dt", "2024-03-09 13:05:59.123456")
            .set("day", "2024-03-09")
            .set("tm", "-26:03:04");
    }
    ins.query().await.unwrap();
    let row: Row = db.select("*").from(&t).row().await.unwrap().unwrap();
    assert_eq!(row.get("i"), Some(&Value::Int(-9_007_199_254_740_993)));
    assert_eq!(row.get("f"), Some(&Value::Float(1.5)));
    assert_eq!(row.get("r"), Some(&Value::Float(0.25)));
    assert_eq!(row.get("s"), Some(&Value::Text("héllo".into())));
    assert_eq!(row.get("b"), Some(&Value::Bytes(vec![0, 255, 10, 39])));
    assert_eq!(row.get("n"), Some(&Value::Null));
    assert!(row.get_as::<bool>("flag").unwrap());
    match db.dialect() {
        Dialect::MySql => {
            assert_eq!(row.get("u"), Some(&Value::UInt(42)));
            assert_eq!(row.get("flag"), Some(&Value::Bool(true)));
            assert_eq!(row.get("d"), Some(&Value::Text("12.34".into())));
            assert_eq!(row.get_as::<f64>("d").unwrap(), 12.34);
            assert_eq!(
                row.get("dt"),
                Some(&Value::Text("2024-03-09 13:05:59.123456".into()))
            );
            assert_eq!(row.get("day"), Some(&Value::Text("2024-03-09".into())));
            assert_eq!(row.get("tm"), Some(&Value::Text("-26:03:04".into())));
        }
        Dialect::Sqlite => {
            assert_eq!(row.get("u"), Some(&Value::Int(42)));
            assert_eq!(row.get("flag"), Some(&Value::Int(1)));
        }
    }
    // A u64 beyond i64 round-trips on MySQL.
    if db.dialect() == Dialect::MySql {
        let big = db
            .sql("SELECT CAST(:v AS UNSIGNED)")
            .bind("v", u64::MAX)
            .single()
            .await
            .unwrap();
        assert_eq!(big, Some(Value::UInt(u64::MAX)));
    }
    drop_table(db, &t).await;
}

on_both!(
    terminals,
    joins_group_having,
    join_condition_literals,
    misspelt_columns_are_errors,
    raw_writes_need_execute,
    group_and_order_by_expressions,
    injection,
    binds_checked_before_sending,
    database_errors,
    value_types
);
