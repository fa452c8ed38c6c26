//! Each driver is a cargo feature. Whatever the build, both still parse in
//! configuration; an instance whose driver was compiled out is a clear error
//! naming the feature to enable, and one compiled in is set up as usual.

use switchboard_db::{Db, DbConfig, DbError, Driver, Instance};

#[test]
fn a_driver_compiled_out_names_its_feature() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = format!(
        "[instances.db1]\nhost = \"127.0.0.1\"\ndbname = \"test\"\n\
         [instances.local]\ndriver = \"sqlite\"\npath = {:?}\n",
        dir.path().join("x.sqlite3")
    );
    let config: DbConfig = toml::from_str(&text).expect("both drivers parse in every build");
    for (name, driver, compiled) in [
        ("db1", Driver::Mysql, cfg!(feature = "mysql")),
        ("local", Driver::Sqlite, cfg!(feature = "sqlite")),
    ] {
        let instance = config.instances[name].clone();
        assert_eq!(instance.driver, driver);
        assert_eq!(driver.is_compiled(), compiled, "{name}");
        match Instance::new(name, instance) {
            Ok(i) => {
                assert!(compiled, "{name}: set up without its driver");
                assert_eq!(i.name(), name);
            }
            Err(e @ DbError::DriverNotCompiled { .. }) => {
                assert!(!compiled, "{name}: compiled in, yet {e}");
                let feature = driver.feature();
                assert_eq!(
                    e.to_string(),
                    format!(
                        "database instance `{name}` uses driver \"{feature}\", which is not \
                         compiled into this binary; enable the switchboard feature \
                         \"{feature}\" (or the switchboard-db feature \"{feature}\")"
                    )
                );
            }
            Err(e) => panic!("{name}: {e}"),
        }
    }
    // `Db::new` sets up every instance, so it refuses a missing driver at once.
    let all = Db::new(config);
    assert_eq!(
        all.is_ok(),
        cfg!(all(feature = "mysql", feature = "sqlite")),
        "{all:?}"
    );
}
