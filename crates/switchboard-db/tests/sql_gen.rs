//! The exact SQL every builder form generates, in both dialects, and the
//! errors raised before anything is sent. No database is contacted: an
//! instance connects only when a statement runs.
// Builds statements for both dialects, so it needs both drivers (the default).
#![cfg(all(feature = "mysql", feature = "sqlite"))]

use switchboard_db::{params, DbError, Instance, InstanceConfig, Value};

fn mysql() -> Instance {
    Instance::new("m", InstanceConfig::default()).expect("config")
}

fn sqlite() -> Instance {
    Instance::sqlite_memory("s").expect("config")
}

/// Both dialects. They quote identifiers alike (backticks; see
/// `sqlite_names_are_quoted_with_backticks`), so one expected string serves
/// both.
fn both() -> [Instance; 2] {
    [mysql(), sqlite()]
}

/// SQLite names are quoted with backticks, never double quotes: SQLite
/// reads a double-quoted name that matches no column as a string.
#[test]
fn sqlite_names_are_quoted_with_backticks() {
    let st = sqlite()
        .select("p.Name AS n")
        .from("Persons p")
        .inner_join("Sexes s", "s.id = p.sex")
        .group_by("p.Name")
        .order_by("n DESC")
        .statement()
        .unwrap();
    assert_eq!(
        st.sql(),
        "SELECT `p`.`Name` AS `n` FROM `Persons` AS `p` INNER JOIN `Sexes` AS `s` \
         ON `s`.`id` = `p`.`sex` GROUP BY `p`.`Name` ORDER BY `n` DESC"
    );
    assert!(!st.sql().contains('"'));
}

#[test]
fn select_from_where_bind() {
    for db in both() {
        let st = db
            .select("ID,Sex")
            .from("Persons")
            .where_("sex= :sex")
            .bind_values(params! { "sex" => "M" })
            .statement()
            .unwrap();
        assert_eq!(st.sql(), "SELECT `ID`, `Sex` FROM `Persons` WHERE sex= ?");
        assert_eq!(st.params(), &[Value::from("M")]);
        assert!(st.is_read());
    }
}

#[test]
fn the_briefs_complex_select() {
    for db in both() {
        let st = db
            .select("*")
            .from("table1")
            .inner_join("table2", "table1.uid = table2.uid")
            .where_("age > :age")
            .group_by(["aid"])
            .having(r#"foo="foo""#)
            .order_by(["did"])
            .limit(10)
            .offset(20)
            .bind_values(params! { "age" => 13 })
            .statement()
            .unwrap();
        assert_eq!(
            st.sql(),
            "SELECT * FROM `table1` INNER JOIN `table2` ON `table1`.`uid` = `table2`.`uid` \
                 WHERE age > ? GROUP BY `aid` HAVING foo=\"foo\" ORDER BY `did` LIMIT 10 OFFSET 20"
        );
        assert_eq!(st.params(), &[Value::Int(13)]);
    }
}

#[test]
fn select_list_forms() {
    for db in both() {
        let sql = |s: switchboard_db::Select| s.statement().unwrap().sql().to_string();
        assert_eq!(
            sql(db.select("p.*").from("Persons p")),
            "SELECT `p`.* FROM `Persons` AS `p`"
        );
        assert_eq!(
            sql(db.select(["p.Name AS n", "Age a"]).from("Persons AS p")),
            "SELECT `p`.`Name` AS `n`, `Age` AS `a` FROM `Persons` AS `p`"
        );
        assert_eq!(
            sql(db.select("Sex").distinct().from("Persons")),
            "SELECT DISTINCT `Sex` FROM `Persons`"
        );
        assert_eq!(
            sql(db
                .select("Sex")
                .expr("COUNT(*) AS n")
                .from("Persons")
                .group_by("Sex")),
            "SELECT `Sex`, COUNT(*) AS n FROM `Persons` GROUP BY `Sex`"
        );
        assert_eq!(sql(db.select_expr("1 + 1")), "SELECT 1 + 1");
        assert_eq!(
            sql(db.select(vec!["a".to_string()]).from("db.t")),
            "SELECT `a` FROM `db`.`t`"
        );
    }
}

#[test]
fn joins() {
    for db in both() {
        let st = db
            .select("a.id, b.name")
            .from("a")
            .left_join("b", "a.bid = b.id")
            .right_join("c AS cc", "cc.aid = a.id AND cc.kind <> a.kind")
            .inner_join("d", "d.aid = a.id + :off")
            .bind("off", 1)
            .statement()
            .unwrap();
        assert_eq!(
            st.sql(),
            "SELECT `a`.`id`, `b`.`name` FROM `a` LEFT JOIN `b` ON `a`.`bid` = `b`.`id` \
                 RIGHT JOIN `c` AS `cc` ON `cc`.`aid` = `a`.`id` AND `cc`.`kind` <> `a`.`kind` \
                 INNER JOIN `d` ON d.aid = a.id + ?"
        );
    }
}

/// Numbers and string literals in a join condition are values, never quoted
/// as names (the brief's `table2.did > 50` would otherwise be the column `50`).
#[test]
fn join_condition_literals_stay_values() {
    for db in both() {
        let st = db
            .select("*")
            .from("table1")
            .inner_join("table2", "table1.uid = table2.uid AND table2.did > 50")
            .statement()
            .unwrap();
        assert_eq!(
            st.sql(),
            "SELECT * FROM `table1` INNER JOIN `table2` ON `table1`.`uid` = `table2`.`uid` \
                 AND `table2`.`did` > 50"
        );
        let on = |cond: &str| {
            let st = db
                .select("*")
                .from("a")
                .left_join("b", cond)
                .bind_values((cond.contains(":k")).then_some(("k", 1)))
                .statement()
                .unwrap();
            let sql = st.sql().to_string();
            let (_, on) = sql.split_once(" ON ").unwrap();
            on.to_string()
        };
        assert_eq!(on("b.x >= -2.5"), "`b`.`x` >= -2.5");
        assert_eq!(on("b.x<>.5"), "`b`.`x` <> .5");
        assert_eq!(on("b.x = 1e3 and 7 < a.y"), "`b`.`x` = 1e3 AND 7 < `a`.`y`");
        assert_eq!(
            on("b.s = 'x' AND a.id = b.id"),
            "`b`.`s` = 'x' AND `a`.`id` = `b`.`id`"
        );
        // An operator or `AND` inside a string literal is part of the value.
        assert_eq!(on("b.s != 'p <> q and r'"), "`b`.`s` != 'p <> q and r'");
        assert_eq!(on("b.s = 'it''s'"), "`b`.`s` = 'it''s'");
        // So are NULL, TRUE and FALSE.
        assert_eq!(
            on("b.x = TRUE AND b.y <> null"),
            "`b`.`x` = TRUE AND `b`.`y` <> null"
        );
        // A parameter is a value too.
        assert_eq!(
            on("b.k = :k AND a.id = b.id"),
            "`b`.`k` = ? AND `a`.`id` = `b`.`id`"
        );
        // Anything else is kept as written.
        assert_eq!(on("b.x = a.x + 1"), "b.x = a.x + 1");
        assert_eq!(on("b.x = 50abc"), "b.x = 50abc");
        assert_eq!(on("b.x IS NULL"), "b.x IS NULL");
    }
    // `"x"` is a string on MySQL, a quoted name on SQLite (kept as written).
    let on = |db: Instance| {
        db.select("*")
            .from("a")
            .inner_join("b", r#"b.s = "x" AND a.id = b.id"#)
            .statement()
            .unwrap()
            .sql()
            .to_string()
    };
    assert!(
        on(mysql()).ends_with(r#"ON `b`.`s` = "x" AND `a`.`id` = `b`.`id`"#),
        "{}",
        on(mysql())
    );
    assert!(
        on(sqlite()).ends_with(r#"ON b.s = "x" AND a.id = b.id"#),
        "{}",
        on(sqlite())
    );
}

/// A name made only of digits is a number, not a column: refused where a
/// name is expected rather than sent as a quoted name the database rejects.
#[test]
fn digit_only_names_are_refused() {
    for db in both() {
        for e in [
            db.select("50").from("t").statement().unwrap_err(),
            db.select("a")
                .from("t")
                .order_by("1")
                .statement()
                .unwrap_err(),
            db.select("a").from("t.2").statement().unwrap_err(),
            db.insert("t").set("7", 1).statement().unwrap_err(),
        ] {
            match &e {
                DbError::InvalidIdentifier { reason, .. } => {
                    assert!(reason.contains("number"), "{e}")
                }
                other => panic!("expected InvalidIdentifier, got {other}"),
            }
        }
    }
}

#[test]
fn where_and_or_having_variants() {
    for db in both() {
        let st = db
            .select("id")
            .from("t")
            .where_("a = :a")
            .and_where("b = :b OR b IS NULL")
            .or_where("c = :c")
            .group_by("g1, g2")
            .having("COUNT(*) > :n")
            .and_having("MAX(x) < 5")
            .or_having("MIN(x) = 0")
            .bind("a", 1)
            .bind(":b", 2)
            .bind("c", 3)
            .bind("n", 4)
            .statement()
            .unwrap();
        assert_eq!(
            st.sql(),
            "SELECT `id` FROM `t` WHERE (a = ?) AND (b = ? OR b IS NULL) OR (c = ?) \
                 GROUP BY `g1`, `g2` HAVING (COUNT(*) > ?) AND (MAX(x) < 5) OR (MIN(x) = 0)"
        );
        assert_eq!(st.params(), &[1.into(), 2.into(), 3.into(), 4.into()]);
    }
}

#[test]
fn order_limit_offset() {
    for db in both() {
        let sql = |s: switchboard_db::Select| s.statement().unwrap().sql().to_string();
        assert_eq!(
            sql(db
                .select("id")
                .from("t")
                .order_by("a, b DESC")
                .order_by_desc(["c", "d asc"])),
            "SELECT `id` FROM `t` ORDER BY `a`, `b` DESC, `c` DESC, `d` ASC"
        );
        assert_eq!(
            sql(db.select("id").from("t").limit(5)),
            "SELECT `id` FROM `t` LIMIT 5"
        );
    }
    assert_eq!(
        mysql()
            .select("id")
            .from("t")
            .offset(7)
            .statement()
            .unwrap()
            .sql(),
        "SELECT `id` FROM `t` LIMIT 18446744073709551615 OFFSET 7"
    );
    assert_eq!(
        sqlite()
            .select("id")
            .from("t")
            .offset(7)
            .statement()
            .unwrap()
            .sql(),
        "SELECT `id` FROM `t` LIMIT -1 OFFSET 7"
    );
}

/// `group_by_expr` / `order_by_expr` take one raw expression each, in order
/// with the quoted forms; their `:name` parameters are bound like any other.
#[test]
fn group_and_order_by_expressions() {
    for db in both() {
        let st = db
            .select("a")
            .expr("COUNT(*) AS n")
            .from("t")
            .where_("b > :b")
            .group_by("a")
            .group_by_expr("SUBSTR(name, 1, 1)")
            .having("COUNT(*) > :n")
            .order_by_expr("COUNT(*) DESC")
            .order_by("a")
            .order_by_expr("ABS(a - :target)")
            .bind("target", 7)
            .bind("n", 1)
            .bind("b", 2)
            .statement()
            .unwrap();
        assert_eq!(
            st.sql(),
            "SELECT `a`, COUNT(*) AS n FROM `t` WHERE b > ? GROUP BY `a`, SUBSTR(name, 1, 1) \
             HAVING COUNT(*) > ? ORDER BY COUNT(*) DESC, `a`, ABS(a - ?)"
        );
        assert_eq!(st.params(), &[2.into(), 1.into(), 7.into()]);
        // An unbound parameter in an expression is caught like any other.
        let e = db
            .select("a")
            .from("t")
            .order_by_expr("ABS(a - :target)")
            .statement()
            .unwrap_err();
        assert!(matches!(e, DbError::UnboundParams { .. }), "{e}");
    }
}

#[test]
fn insert_forms() {
    for db in both() {
        let st = db
            .insert("Persons")
            .values(
                params! { "Firstname" => "abc", "Lastname" => "efg", "Sex" => "M", "Age" => 13 },
            )
            .statement()
            .unwrap();
        assert_eq!(
            st.sql(),
            "INSERT INTO `Persons` (`Firstname`, `Lastname`, `Sex`, `Age`) VALUES (?, ?, ?, ?)"
        );
        assert_eq!(
            st.params(),
            &["abc".into(), "efg".into(), "M".into(), 13.into()]
        );
        assert!(!st.is_read());

        let st = db
            .insert("Persons")
            .cols("Firstname, Age")
            .set("Sex", "F")
            .set_expr("Created", "CURRENT_TIMESTAMP")
            .bind("Age", 30)
            .bind("Firstname", "x")
            .statement()
            .unwrap();
        assert_eq!(
            st.sql(),
            "INSERT INTO `Persons` (`Firstname`, `Age`, `Sex`, `Created`) VALUES (?, ?, ?, CURRENT_TIMESTAMP)"
        );
        assert_eq!(st.params(), &["x".into(), 30.into(), "F".into()]);
    }
}

#[test]
fn update_forms() {
    for db in both() {
        let st = db
            .update("Persons")
            .cols(["sex"])
            .where_("ID=1")
            .bind("sex", "F")
            .statement()
            .unwrap();
        assert_eq!(st.sql(), "UPDATE `Persons` SET `sex` = ? WHERE ID=1");
        let st = db
            .update("Persons")
            .set("Name", "z")
            .set_expr("Age", "Age + :inc")
            .where_("ID = :id")
            .or_where("Name IS NULL")
            .bind("inc", 1)
            .bind("id", 5)
            .statement()
            .unwrap();
        assert_eq!(
            st.sql(),
            "UPDATE `Persons` SET `Name` = ?, `Age` = Age + ? WHERE (ID = ?) OR (Name IS NULL)"
        );
        assert_eq!(st.params(), &["z".into(), 1.into(), 5.into()]);
        let st = db
            .update("Persons")
            .set("Age", 0)
            .all_rows()
            .statement()
            .unwrap();
        assert_eq!(st.sql(), "UPDATE `Persons` SET `Age` = ?");
    }
}

#[test]
fn delete_forms() {
    for db in both() {
        let sql = db.delete("Persons").where_("ID=9").statement().unwrap();
        assert_eq!(sql.sql(), "DELETE FROM `Persons` WHERE ID=9");
        let sql = db
            .delete("Persons")
            .where_("a = :a")
            .and_where("b = 2")
            .bind("a", 1)
            .statement()
            .unwrap();
        assert_eq!(sql.sql(), "DELETE FROM `Persons` WHERE (a = ?) AND (b = 2)");
        assert_eq!(
            db.delete("Persons").all_rows().statement().unwrap().sql(),
            "DELETE FROM `Persons`"
        );
    }
}

#[test]
fn update_and_delete_need_where_or_opt_in() {
    for db in both() {
        let e = db.delete("Persons").statement().unwrap_err();
        assert!(
            matches!(
                e,
                DbError::MissingWhere {
                    statement: "DELETE",
                    ..
                }
            ),
            "{e}"
        );
        let e = db.update("Persons").set("a", 1).statement().unwrap_err();
        assert!(
            matches!(
                e,
                DbError::MissingWhere {
                    statement: "UPDATE",
                    ..
                }
            ),
            "{e}"
        );
        let e = db.update("Persons").where_("1=1").statement().unwrap_err();
        assert!(matches!(e, DbError::NoColumns { .. }), "{e}");
        let e = db.insert("Persons").statement().unwrap_err();
        assert!(matches!(e, DbError::NoColumns { .. }), "{e}");
    }
}

#[test]
fn raw_sql_parameters() {
    for db in both() {
        let st = db
            .sql("SELECT ':skip', '::', x::text FROM t WHERE a = :a AND b = :a AND c = :c -- :d")
            .bind("a", 1)
            .bind("c", "x")
            .statement()
            .unwrap();
        assert_eq!(
            st.sql(),
            "SELECT ':skip', '::', x::text FROM t WHERE a = ? AND b = ? AND c = ? -- :d"
        );
        assert_eq!(st.params(), &[1.into(), 1.into(), "x".into()]);
        assert!(st.is_read());
        assert!(!db.sql("DELETE FROM t").statement().unwrap().is_read());
    }
}

#[test]
fn missing_extra_and_duplicate_binds_are_errors() {
    for db in both() {
        let e = db
            .select("a")
            .from("t")
            .where_("a = :a AND b = :b")
            .bind("a", 1)
            .statement()
            .unwrap_err();
        match e {
            DbError::UnboundParams { names, .. } => assert_eq!(names, ["b"]),
            other => panic!("{other}"),
        }
        let e = db
            .select("a")
            .from("t")
            .where_("a = :a")
            .bind("a", 1)
            .bind("typo", 2)
            .statement()
            .unwrap_err();
        match e {
            DbError::UnusedParams { names, .. } => assert_eq!(names, ["typo"]),
            other => panic!("{other}"),
        }
        let e = db
            .sql("SELECT :a")
            .bind("a", 1)
            .bind("a", 2)
            .statement()
            .unwrap_err();
        assert!(matches!(e, DbError::DuplicateParam { .. }), "{e}");
        // A `:name` inside a string literal is not a parameter, so binding it is "unused".
        let e = db.sql("SELECT ':a'").bind("a", 1).statement().unwrap_err();
        assert!(matches!(e, DbError::UnusedParams { .. }), "{e}");
        let e = db.sql("SELECT ?").statement().unwrap_err();
        assert!(matches!(e, DbError::InvalidSql { .. }), "{e}");
    }
}

#[test]
fn unquotable_identifiers_are_rejected() {
    for db in both() {
        let bad = [
            "t`; DROP TABLE x; --",
            "t\"x",
            "a b c d",
            "",
            "x;y",
            "t.*.x",
            "(SELECT 1)",
        ];
        for b in bad {
            let e = db.select("a").from(b).statement().unwrap_err();
            assert!(
                matches!(e, DbError::InvalidIdentifier { .. }),
                "from {b:?}: {e}"
            );
            let e = db.select(b).from("t").statement().unwrap_err();
            assert!(
                matches!(e, DbError::InvalidIdentifier { .. }),
                "select {b:?}: {e}"
            );
            let e = db
                .select("a")
                .from("t")
                .inner_join(b, "1=1")
                .statement()
                .unwrap_err();
            assert!(
                matches!(e, DbError::InvalidIdentifier { .. }),
                "join {b:?}: {e}"
            );
            let e = db.insert("t").set(b, 1).statement().unwrap_err();
            assert!(
                matches!(e, DbError::InvalidIdentifier { .. }),
                "insert col {b:?}: {e}"
            );
            let e = db.insert(b).set("a", 1).statement().unwrap_err();
            assert!(
                matches!(e, DbError::InvalidIdentifier { .. }),
                "insert table {b:?}: {e}"
            );
            let e = db.update(b).set("a", 1).all_rows().statement().unwrap_err();
            assert!(
                matches!(e, DbError::InvalidIdentifier { .. }),
                "update {b:?}: {e}"
            );
            let e = db.delete(b).all_rows().statement().unwrap_err();
            assert!(
                matches!(e, DbError::InvalidIdentifier { .. }),
                "delete {b:?}: {e}"
            );
            let e = db
                .select("a")
                .from("t")
                .order_by(b)
                .statement()
                .unwrap_err();
            assert!(
                matches!(e, DbError::InvalidIdentifier { .. }),
                "order {b:?}: {e}"
            );
            let e = db
                .select("a")
                .from("t")
                .group_by(b)
                .statement()
                .unwrap_err();
            assert!(
                matches!(e, DbError::InvalidIdentifier { .. }),
                "group {b:?}: {e}"
            );
        }
    }
}

#[test]
fn unknown_instance_is_a_clear_error() {
    let db = switchboard_db::Db::new(
        switchboard_db::DbConfig::default()
            .with("db1", InstanceConfig::default())
            .with("db2", InstanceConfig::sqlite(":memory:")),
    )
    .unwrap();
    let e = db.instance("db3").unwrap_err();
    assert_eq!(
        e.to_string(),
        "unknown database instance `db3` (configured: db1, db2)"
    );
    assert_eq!(db.instance("db2").unwrap().name(), "db2");
}

#[test]
fn config_from_toml_with_defaults_and_unknown_fields() {
    #[derive(serde::Deserialize)]
    struct App {
        db: switchboard_db::DbConfig,
    }
    let app: App = toml::from_str(
        r#"
        [db.instances.db1]
        host = "10.0.0.5"
        port = 3307
        user = "chat"
        password = "secret"
        dbname = "chat"
        charset = "utf8mb4"
        pool_size = 4
        connect_timeout = 2
        query_timeout = 0.5

        [db.instances.local]
        driver = "sqlite"
        path = "data/chat.sqlite3"
        "#,
    )
    .unwrap();
    let db1 = &app.db.instances["db1"];
    assert_eq!(
        (db1.host.as_str(), db1.port, db1.pool_size),
        ("10.0.0.5", 3307, 4)
    );
    assert_eq!(db1.database.as_deref(), Some("chat"));
    assert_eq!(db1.query_timeout, 0.5);
    assert!(
        !format!("{db1:?}").contains("secret"),
        "Debug must not show the password"
    );
    let local = &app.db.instances["local"];
    assert_eq!(local.idle_timeout, 600.0);
    assert_eq!(local.pool_size, 10);

    let e = toml::from_str::<App>("[db.instances.x]\nhots = \"typo\"\n");
    assert!(e.is_err(), "unknown fields are refused");
    let bad = switchboard_db::Db::new(switchboard_db::DbConfig::default().with(
        "x",
        InstanceConfig {
            driver: switchboard_db::Driver::Sqlite,
            ..Default::default()
        },
    ));
    assert!(matches!(bad, Err(DbError::Config { .. })));
}
