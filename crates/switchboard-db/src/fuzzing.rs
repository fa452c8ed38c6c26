//! Entry points for the fuzz targets (`fuzz/fuzz_targets/sql_lexer.rs`), built only with
//! the `fuzzing` feature: the SQL lexer and identifier quoting are crate-private, and
//! the fuzzer needs them without a database behind them. Not an API: hidden from the
//! docs, and free to change with the lexer.

use crate::sql;
use crate::{DbError, Dialect};

/// [`sql::to_positional`]: the SQL with `?` placeholders and the parameter names in
/// order.
pub fn to_positional(dialect: Dialect, sql: &str) -> Result<(String, Vec<&str>), DbError> {
    sql::to_positional(dialect, sql).map(|p| (p.sql, p.names))
}

/// [`sql::is_read`].
pub fn is_read(sql: &str) -> bool {
    sql::is_read(sql)
}

/// [`sql::rowless_keyword`].
pub fn rowless_keyword(dialect: Dialect, sql: &str) -> Option<String> {
    sql::rowless_keyword(dialect, sql)
}

/// [`sql::join_condition`].
pub fn join_condition(dialect: Dialect, on: &str) -> String {
    sql::join_condition(dialect, on)
}

/// [`sql::quote_ident`].
pub fn quote_ident(part: &str) -> Result<String, DbError> {
    sql::quote_ident(part)
}

/// [`sql::quote_path`].
pub fn quote_path(path: &str, allow_star: bool) -> Result<String, DbError> {
    sql::quote_path(path, allow_star)
}

/// [`sql::quote_aliased`].
pub fn quote_aliased(item: &str, allow_star: bool) -> Result<String, DbError> {
    sql::quote_aliased(item, allow_star)
}

/// [`sql::quote_order`].
pub fn quote_order(item: &str, default_desc: bool) -> Result<String, DbError> {
    sql::quote_order(item, default_desc)
}
