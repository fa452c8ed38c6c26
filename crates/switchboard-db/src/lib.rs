//! Named database instances and a fluent query builder, on MySQL/MariaDB and
//! SQLite: the `Db` of the brief, in Rust.
//!
//! - [`Db`] holds the instances named in configuration ([`DbConfig`]);
//!   [`Db::instance`] hands out a cheap, pooled, shareable [`Instance`].
//!   Pools are created on first use; connections as needed.
//! - Builders: [`Instance::select`] (with joins, `where_`/`and_where`/
//!   `or_where`, `group_by`, `having`, `order_by`, `limit`, `offset`, and
//!   the raw `expr`, `group_by_expr`, `order_by_expr`),
//!   [`Instance::insert`], [`Instance::update`], [`Instance::delete`] and raw
//!   SQL with `:name` parameters ([`Instance::sql`]). Terminals: `query`
//!   (all rows), `row`, `column`, `single`, each also `_as::<T>()` for serde
//!   types.
//! - Values are always bound parameters; identifiers are quoted for the
//!   dialect or rejected; a `:name` used but not bound, or bound but not
//!   used, is an error before anything is sent; `update`/`delete` need a
//!   `WHERE` or an explicit [`Update::all_rows`].
//! - A lost connection is replaced; a read is retried once, a write never.
//! - [`Instance::transaction`] commits on `Ok`, rolls back on `Err` or panic.
//!
//! ```
//! use switchboard::db::{Db, DbConfig, InstanceConfig, Value};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), switchboard::db::DbError> {
//! let db = Db::new(DbConfig::default().with("db1", InstanceConfig::sqlite(":memory:")))?;
//! let db1 = db.instance("db1")?;
//! db1.sql("CREATE TABLE Persons (ID INTEGER PRIMARY KEY, Name TEXT, Sex TEXT)").execute().await?;
//! let id = db1.insert("Persons").set("Name", "Ann").set("Sex", "F").query().await?;
//! assert_eq!(id, 1);
//!
//! #[derive(serde::Deserialize)]
//! struct Person { #[serde(rename = "ID")] id: i64, #[serde(rename = "Name")] name: String }
//! let women: Vec<Person> = db1.select("ID,Name").from("Persons")
//!     .where_("Sex = :sex").bind("sex", "F")
//!     .query_as().await?;
//! assert_eq!((women[0].id, women[0].name.as_str()), (1, "Ann"));
//!
//! let n = db1.select_expr("COUNT(*)").from("Persons").single().await?;
//! assert_eq!(n, Some(Value::Int(1)));
//! # Ok(()) }
//! ```
//!
//! The guide, with every builder form and the SQL it generates, is
//! `docs/db.md`.

#![warn(missing_docs)]
// Built without any driver (no `mysql`, no `sqlite` feature), the crate keeps
// its types and configuration, but nothing can run, so the code that runs
// statements is unused.
#![cfg_attr(
    not(any(feature = "mysql", feature = "sqlite")),
    allow(dead_code, unused_imports, unused_variables, unreachable_code)
)]

mod builder;
mod config;
mod error;
mod exec;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod instance;
mod observe;
mod sql;
mod tx;
mod value;

pub use builder::{Delete, Insert, IntoColumns, Raw, Select, Update};
pub use config::{DbConfig, Driver, InstanceConfig};
pub use error::DbError;
pub use exec::Executed;
pub use instance::{Db, Instance, InstanceStats};
pub use observe::{set_observer, Observer};
pub use sql::{Dialect, Statement};
pub use tx::Tx;
pub use value::{Row, Value};

/// Build a list of `(name, Value)` pairs for `bind_values` or `values`,
/// with values of different types.
///
/// ```
/// use switchboard::db::{params, Value};
/// let p = params! { "name" => "abc", "age" => 13, "nick" => None::<String> };
/// assert_eq!(p[1], ("age", Value::Int(13)));
/// assert_eq!(p[2].1, Value::Null);
/// ```
#[macro_export]
macro_rules! params {
    () => { ::std::vec::Vec::<(&str, $crate::Value)>::new() };
    ($($name:expr => $value:expr),+ $(,)?) => {
        ::std::vec![$(($name, $crate::Value::from($value))),+]
    };
}
