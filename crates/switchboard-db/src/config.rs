//! Configuration of named database instances.
//!
//! The types deserialize straight from the application's TOML, so a
//! `[db.instances.db1]` table becomes one [`InstanceConfig`]:
//!
//! ```toml
//! [db.instances.db1]            # the brief's MySQL instance
//! host = "127.0.0.1"
//! port = 3306
//! user = "root"
//! password = ""
//! database = "test"             # `dbname` is accepted too
//!
//! [db.instances.history]        # an embedded SQLite file
//! driver = "sqlite"
//! path = "data/history.sqlite3"
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::DbError;

/// All configured instances, by name: the `[db]` section of the configuration file.
///
/// ```
/// use switchboard::db::Driver;
/// let config = switchboard::Config::from_toml(r#"
///     [db.instances.db1]
///     host = "127.0.0.1"
///     dbname = "test"
///     [db.instances.local]
///     driver = "sqlite"
///     path = "/tmp/x.sqlite3"
/// "#, None).unwrap();
/// let cfg = config.db_config().unwrap();
/// assert_eq!(cfg.instances["db1"].driver, Driver::Mysql);
/// assert_eq!(cfg.instances["db1"].port, 3306);
/// assert_eq!(cfg.instances["local"].driver, Driver::Sqlite);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbConfig {
    /// Instance name → its configuration (`[db.instances.NAME]`).
    #[serde(default)]
    pub instances: BTreeMap<String, InstanceConfig>,
}

impl DbConfig {
    /// Add one instance (builder style, handy in code and tests).
    pub fn with(mut self, name: impl Into<String>, instance: InstanceConfig) -> Self {
        self.instances.insert(name.into(), instance);
        self
    }
}

/// Which database an instance talks to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// MySQL or MariaDB over TCP (the default, as in the brief).
    #[default]
    #[serde(alias = "mariadb")]
    Mysql,
    /// An SQLite file (or `:memory:`).
    Sqlite,
}

impl Driver {
    /// The driver's name in configuration: `mysql` or `sqlite`.
    pub fn name(self) -> &'static str {
        match self {
            Driver::Mysql => "mysql",
            Driver::Sqlite => "sqlite",
        }
    }

    /// The cargo feature that compiles the driver in (the same name in
    /// `switchboard` and `switchboard-db`).
    pub fn feature(self) -> &'static str {
        self.name()
    }

    /// Whether this binary was built with the driver.
    ///
    /// ```
    /// use switchboard::db::Driver;
    /// assert_eq!(Driver::Mysql.is_compiled(), cfg!(feature = "mysql"));
    /// ```
    pub fn is_compiled(self) -> bool {
        match self {
            Driver::Mysql => cfg!(feature = "mysql"),
            Driver::Sqlite => cfg!(feature = "sqlite"),
        }
    }
}

/// One named instance. Every field has a default except `path` for SQLite.
///
/// Durations are in seconds (fractions allowed); `0` means "no limit" for
/// `query_timeout`, `idle_timeout` and `max_lifetime`.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    /// `mysql` (default; `mariadb` is accepted) or `sqlite`.
    #[serde(default)]
    pub driver: Driver,
    /// MySQL host. Default `127.0.0.1`.
    #[serde(default = "default_host")]
    pub host: String,
    /// MySQL port. Default `3306`.
    #[serde(default = "default_port")]
    pub port: u16,
    /// MySQL user. Default `root`.
    #[serde(default = "default_user")]
    pub user: String,
    /// MySQL password. Default empty. Never printed by `Debug`.
    #[serde(default)]
    pub password: String,
    /// MySQL database (schema) to use; `dbname` is accepted as in the brief.
    /// Default none.
    #[serde(default, alias = "dbname")]
    pub database: Option<String>,
    /// MySQL connection character set. Default `utf8mb4`.
    #[serde(default = "default_charset")]
    pub charset: String,
    /// SQLite file, created if missing; `:memory:` for a private in-memory
    /// database shared by the instance's pool. Required for SQLite, refused
    /// for MySQL.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Most connections open at once. Default 10.
    #[serde(default = "default_pool_size")]
    pub pool_size: u32,
    /// How long to wait for a connection (connecting, or a free one when the
    /// pool is busy). Default 5 s.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: f64,
    /// Longest a single statement may run; its connection is then closed.
    /// Default 30 s; 0 = no limit.
    #[serde(default = "default_query_timeout")]
    pub query_timeout: f64,
    /// Close connections idle this long. Default 600 s; 0 = never.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: f64,
    /// Replace connections older than this. Default 1800 s; 0 = never.
    #[serde(default = "default_max_lifetime")]
    pub max_lifetime: f64,
    /// Ping every pooled connection before use. Default `false`: it costs a
    /// round trip per statement, and a dead connection is detected anyway
    /// (reads are retried; writes report [`DbError::ConnectionLost`]). Turn
    /// it on when the server often drops idle connections and failed writes
    /// are costly.
    #[serde(default)]
    pub ping_before_use: bool,
    /// SQLite: how long a statement waits for another connection's lock.
    /// Default 5 s.
    #[serde(default = "default_busy_timeout")]
    pub busy_timeout: f64,
}

fn default_host() -> String {
    "127.0.0.1".into()
}
fn default_port() -> u16 {
    3306
}
fn default_user() -> String {
    "root".into()
}
fn default_charset() -> String {
    "utf8mb4".into()
}
fn default_pool_size() -> u32 {
    10
}
fn default_connect_timeout() -> f64 {
    5.0
}
fn default_query_timeout() -> f64 {
    30.0
}
fn default_idle_timeout() -> f64 {
    600.0
}
fn default_max_lifetime() -> f64 {
    1800.0
}
fn default_busy_timeout() -> f64 {
    5.0
}

impl Default for InstanceConfig {
    /// A MySQL instance with every default: `root@127.0.0.1:3306`.
    fn default() -> Self {
        InstanceConfig {
            driver: Driver::Mysql,
            host: default_host(),
            port: default_port(),
            user: default_user(),
            password: String::new(),
            database: None,
            charset: default_charset(),
            path: None,
            pool_size: default_pool_size(),
            connect_timeout: default_connect_timeout(),
            query_timeout: default_query_timeout(),
            idle_timeout: default_idle_timeout(),
            max_lifetime: default_max_lifetime(),
            ping_before_use: false,
            busy_timeout: default_busy_timeout(),
        }
    }
}

impl fmt::Debug for InstanceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstanceConfig")
            .field("driver", &self.driver)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field(
                "password",
                &if self.password.is_empty() { "" } else { "***" },
            )
            .field("database", &self.database)
            .field("charset", &self.charset)
            .field("path", &self.path)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("query_timeout", &self.query_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_lifetime", &self.max_lifetime)
            .field("ping_before_use", &self.ping_before_use)
            .field("busy_timeout", &self.busy_timeout)
            .finish()
    }
}

impl InstanceConfig {
    /// An SQLite file instance with default settings.
    ///
    /// ```
    /// # use switchboard::db::{InstanceConfig, Driver};
    /// let c = InstanceConfig::sqlite("data/chat.sqlite3");
    /// assert_eq!(c.driver, Driver::Sqlite);
    /// ```
    pub fn sqlite(path: impl Into<PathBuf>) -> Self {
        InstanceConfig {
            driver: Driver::Sqlite,
            path: Some(path.into()),
            ..Default::default()
        }
    }

    /// A MySQL instance from a URL `mysql://user:password@host:port/database`
    /// (user, password, port and database optional; percent-encoding is
    /// decoded).
    ///
    /// ```
    /// # use switchboard::db::InstanceConfig;
    /// let c = InstanceConfig::mysql_url("mysql://root@127.0.0.1:3306/test").unwrap();
    /// assert_eq!((c.host.as_str(), c.port, c.database.as_deref()), ("127.0.0.1", 3306, Some("test")));
    /// ```
    pub fn mysql_url(url: &str) -> Result<Self, DbError> {
        let bad = |message: String| DbError::Config {
            instance: url.split('@').next_back().unwrap_or_default().to_string(),
            message,
        };
        let parsed = url::Url::parse(url).map_err(|e| bad(format!("bad URL: {e}")))?;
        if !matches!(parsed.scheme(), "mysql" | "mariadb") {
            return Err(bad(format!("scheme `{}` is not mysql://", parsed.scheme())));
        }
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|e| bad(format!("bad percent-encoding: {e}")))
        };
        let mut c = InstanceConfig::default();
        if let Some(host) = parsed.host_str() {
            c.host = host.to_string();
        }
        if let Some(port) = parsed.port() {
            c.port = port;
        }
        if !parsed.username().is_empty() {
            c.user = decode(parsed.username())?;
        }
        if let Some(p) = parsed.password() {
            c.password = decode(p)?;
        }
        let db = parsed.path().trim_start_matches('/');
        if !db.is_empty() {
            c.database = Some(decode(db)?);
        }
        Ok(c)
    }

    /// Check the configuration; `name` is used in the error.
    pub fn validate(&self, name: &str) -> Result<(), DbError> {
        let bad = |message: &str| {
            Err(DbError::Config {
                instance: name.to_string(),
                message: message.to_string(),
            })
        };
        match self.driver {
            Driver::Mysql if self.path.is_some() => {
                return bad("`path` is for SQLite; set driver = \"sqlite\" or remove it")
            }
            Driver::Sqlite if self.path.is_none() => return bad("SQLite needs `path`"),
            _ => {}
        }
        if self.pool_size == 0 {
            return bad("`pool_size` must be at least 1");
        }
        if self.connect_timeout <= 0.0 || !self.connect_timeout.is_finite() {
            return bad("`connect_timeout` must be a positive number of seconds");
        }
        for (field, v) in [
            ("query_timeout", self.query_timeout),
            ("idle_timeout", self.idle_timeout),
            ("max_lifetime", self.max_lifetime),
            ("busy_timeout", self.busy_timeout),
        ] {
            if v < 0.0 || !v.is_finite() || v > 1e9 {
                return bad(&format!("`{field}` must be a number of seconds >= 0"));
            }
        }
        if self.charset.is_empty()
            || !self
                .charset
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return bad("`charset` must be a character set name such as utf8mb4");
        }
        Ok(())
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.connect_timeout)
    }

    pub(crate) fn query_timeout(&self) -> Option<Duration> {
        non_zero(self.query_timeout)
    }

    pub(crate) fn idle_timeout(&self) -> Option<Duration> {
        non_zero(self.idle_timeout)
    }

    pub(crate) fn max_lifetime(&self) -> Option<Duration> {
        non_zero(self.max_lifetime)
    }

    #[cfg(feature = "sqlite")]
    pub(crate) fn busy_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.busy_timeout)
    }
}

fn non_zero(secs: f64) -> Option<Duration> {
    (secs > 0.0).then(|| Duration::from_secs_f64(secs))
}
