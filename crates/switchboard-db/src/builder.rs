//! The fluent query builder: the brief's `select(..)->from(..)->where(..)`
//! chain, plus `insert`, `update`, `delete` and raw SQL.
//!
//! Builders are plain values: each method consumes and returns the builder.
//! Mistakes (a bad identifier, a parameter bound twice) are remembered and
//! reported by the terminal method, before anything is sent. Every builder
//! can show the exact statement it would send with `statement()`.

use serde::de::DeserializeOwned;

use crate::exec::{Executed, Mode, Output};
use crate::instance::Instance;
use crate::sql::{self, Dialect, Params, Statement};
use crate::{DbError, Row, Tx, Value};

/// Where a builder's statement runs: the instance's pool, or a transaction.
#[derive(Clone, Debug)]
pub(crate) enum Target {
    Instance(Instance),
    Tx(Tx),
}

impl Target {
    fn dialect(&self) -> Dialect {
        match self {
            Target::Instance(i) => i.dialect(),
            Target::Tx(t) => t.dialect(),
        }
    }

    /// The driver's futures are several KiB; boxed here, every terminal's
    /// future (and so every handler that awaits one) stays a few hundred
    /// bytes. A statement is a round trip to a server: one allocation is
    /// nothing beside it, while a large future is copied whole each time the
    /// future that holds it is moved (boxed, spawned), whatever branch runs.
    async fn run(&self, st: &Statement, mode: Mode) -> Result<Output, DbError> {
        match self {
            Target::Instance(i) => Box::pin(i.run(st, mode)).await,
            Target::Tx(t) => Box::pin(t.run(st, mode)).await,
        }
    }

    async fn rows(&self, st: &Statement, mode: Mode) -> Result<Vec<Row>, DbError> {
        match self.run(st, mode).await? {
            Output::Rows(rows) => Ok(rows),
            Output::Done(_) => Ok(Vec::new()),
        }
    }

    async fn executed(&self, st: &Statement) -> Result<Executed, DbError> {
        match self.run(st, Mode::Execute).await? {
            Output::Done(d) => Ok(d),
            Output::Rows(_) => Ok(Executed {
                rows_affected: 0,
                last_insert_id: None,
            }),
        }
    }
}

/// Column lists: `"a,b"` (split on commas), `["a", "b"]`, `&["a"][..]`,
/// `vec!["a"]` or `Vec<String>`. Items in arrays and vectors are not split.
pub trait IntoColumns {
    /// Call `f` with each column name, trimmed.
    fn each_column(self, f: &mut dyn FnMut(&str));
}

impl IntoColumns for &str {
    fn each_column(self, f: &mut dyn FnMut(&str)) {
        self.split(',').for_each(|c| f(c.trim()));
    }
}

impl IntoColumns for &String {
    fn each_column(self, f: &mut dyn FnMut(&str)) {
        self.as_str().each_column(f);
    }
}

impl<const N: usize> IntoColumns for [&str; N] {
    fn each_column(self, f: &mut dyn FnMut(&str)) {
        self.iter().for_each(|c| f(c.trim()));
    }
}

impl IntoColumns for &[&str] {
    fn each_column(self, f: &mut dyn FnMut(&str)) {
        self.iter().for_each(|c| f(c.trim()));
    }
}

impl IntoColumns for Vec<&str> {
    fn each_column(self, f: &mut dyn FnMut(&str)) {
        self.as_slice().each_column(f);
    }
}

impl IntoColumns for Vec<String> {
    fn each_column(self, f: &mut dyn FnMut(&str)) {
        self.iter().for_each(|c| f(c.trim()));
    }
}

/// How a condition joins the ones before it.
#[derive(Debug, Clone, Copy)]
enum Conj {
    And,
    Or,
}

/// `WHERE`/`HAVING` conditions. One condition is written as given; several
/// are each wrapped in parentheses, so `a OR b` given as one condition keeps
/// its meaning next to the others.
#[derive(Debug, Clone, Default)]
struct Conditions(Vec<(Conj, String)>);

impl Conditions {
    fn push(&mut self, conj: Conj, cond: &str) {
        self.0.push((conj, cond.trim().to_string()));
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn render(&self, keyword: &str, out: &mut String) {
        match self.0.as_slice() {
            [] => {}
            [(_, only)] => {
                out.push_str(keyword);
                out.push_str(only);
            }
            all => {
                out.push_str(keyword);
                for (i, (conj, c)) in all.iter().enumerate() {
                    if i > 0 {
                        out.push_str(match conj {
                            Conj::And => " AND ",
                            Conj::Or => " OR ",
                        });
                    }
                    out.push('(');
                    out.push_str(c);
                    out.push(')');
                }
            }
        }
    }
}

/// The state every builder shares: where it runs, its bindings, the first
/// mistake made while building.
#[derive(Debug, Clone)]
struct Common {
    target: Target,
    dialect: Dialect,
    params: Params,
    error: Option<BuildError>,
}

/// A mistake made while building, kept until a terminal reports it.
/// (`DbError` is not `Clone`, because driver errors are not.)
#[derive(Debug, Clone)]
enum BuildError {
    Identifier { ident: String, reason: String },
    Duplicate { name: String },
}

impl From<BuildError> for DbError {
    fn from(e: BuildError) -> Self {
        match e {
            BuildError::Identifier { ident, reason } => {
                DbError::InvalidIdentifier { ident, reason }
            }
            BuildError::Duplicate { name } => DbError::DuplicateParam { name },
        }
    }
}

impl Common {
    fn new(target: Target) -> Self {
        Common {
            dialect: target.dialect(),
            target,
            params: Params::default(),
            error: None,
        }
    }

    /// Keep the first error; later ones are usually consequences.
    fn ok<T>(&mut self, r: Result<T, DbError>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                if self.error.is_none() {
                    self.error = Some(match e {
                        DbError::DuplicateParam { name } => BuildError::Duplicate { name },
                        DbError::InvalidIdentifier { ident, reason } => {
                            BuildError::Identifier { ident, reason }
                        }
                        other => BuildError::Identifier {
                            ident: String::new(),
                            reason: other.to_string(),
                        },
                    });
                }
                None
            }
        }
    }

    fn bind(&mut self, name: &str, value: Value) {
        let r = self.params.bind(name, value);
        self.ok(r);
    }

    /// The first mistake made while building, if any.
    fn check(&self) -> Result<(), DbError> {
        match &self.error {
            Some(e) => Err(e.clone().into()),
            None => Ok(()),
        }
    }

    fn statement(&self, sql: &str, read: bool) -> Result<Statement, DbError> {
        self.check()?;
        Statement::prepare(self.dialect, sql, &self.params, read)
    }
}

/// A parameter name derived from a column name (`set("Age", 13)` binds
/// `:Age`).
fn param_name(col: &str) -> Result<String, DbError> {
    let ok = col
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && col.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(col.to_string())
    } else {
        Err(DbError::InvalidIdentifier {
            ident: col.to_string(),
            reason: "a column set by value must be a plain ASCII name (letters, digits, `_`); \
                     use set_expr for others"
                .into(),
        })
    }
}

macro_rules! bind_methods {
    () => {
        /// Bind a value to `:name` (the leading `:` is optional). Binding a
        /// name twice is an error.
        pub fn bind(mut self, name: &str, value: impl Into<Value>) -> Self {
            self.common.bind(name, value.into());
            self
        }

        /// Bind several values at once, e.g. with [`params!`](crate::params).
        pub fn bind_values<K, V>(mut self, values: impl IntoIterator<Item = (K, V)>) -> Self
        where
            K: AsRef<str>,
            V: Into<Value>,
        {
            for (k, v) in values {
                self.common.bind(k.as_ref(), v.into());
            }
            self
        }
    };
}

macro_rules! where_methods {
    () => {
        /// Add a `WHERE` condition: raw SQL with `:name` parameters. Called
        /// again, it is the same as [`and_where`](Self::and_where).
        pub fn where_(mut self, condition: &str) -> Self {
            self.wheres.push(Conj::And, condition);
            self
        }

        /// Add a condition joined with `AND`.
        pub fn and_where(self, condition: &str) -> Self {
            self.where_(condition)
        }

        /// Add a condition joined with `OR`.
        pub fn or_where(mut self, condition: &str) -> Self {
            self.wheres.push(Conj::Or, condition);
            self
        }
    };
}

macro_rules! fetch_terminals {
    () => {
        /// All rows.
        pub async fn query(self) -> Result<Vec<Row>, DbError> {
            let (target, st) = self.into_fetch_parts()?;
            target.rows(&st, Mode::All).await
        }

        /// The first row, or `None`.
        pub async fn row(self) -> Result<Option<Row>, DbError> {
            let (target, st) = self.into_fetch_parts()?;
            Ok(target.rows(&st, Mode::First).await?.into_iter().next())
        }

        /// The first column of every row.
        pub async fn column(self) -> Result<Vec<Value>, DbError> {
            let (target, st) = self.into_fetch_parts()?;
            let rows = target.rows(&st, Mode::All).await?;
            Ok(rows
                .into_iter()
                .filter_map(|r| r.into_values().into_iter().next())
                .collect())
        }

        /// The first column of the first row, or `None` when there is no row
        /// (a NULL value is `Some(Value::Null)`).
        pub async fn single(self) -> Result<Option<Value>, DbError> {
            Ok(self
                .row()
                .await?
                .and_then(|r| r.into_values().into_iter().next()))
        }

        /// All rows, each deserialized into `T` (a struct by column name, or
        /// a tuple by position).
        pub async fn query_as<T: DeserializeOwned>(self) -> Result<Vec<T>, DbError> {
            self.query().await?.into_iter().map(Row::decode).collect()
        }

        /// The first row deserialized into `T`, or `None`.
        pub async fn row_as<T: DeserializeOwned>(self) -> Result<Option<T>, DbError> {
            self.row().await?.map(Row::decode).transpose()
        }

        /// The first column of every row, deserialized into `T`.
        pub async fn column_as<T: DeserializeOwned>(self) -> Result<Vec<T>, DbError> {
            self.column()
                .await?
                .into_iter()
                .map(Value::decode)
                .collect()
        }

        /// The first value deserialized into `T`, or `None` when there is no
        /// row. Use `Option<T>` as `T` when the value may be NULL.
        pub async fn single_as<T: DeserializeOwned>(self) -> Result<Option<T>, DbError> {
            self.single().await?.map(Value::decode).transpose()
        }
    };
}

#[derive(Debug, Clone)]
struct Join {
    kind: &'static str,
    table: String,
    on: String,
}

/// A `SELECT` under construction. Start with [`Instance::select`].
///
/// ```
/// # use switchboard::db::Instance;
/// # fn main() -> Result<(), switchboard::db::DbError> {
/// let db = Instance::new("db1", switchboard::db::InstanceConfig::default())?; // MySQL, not connected
/// let st = db.select("*").from("table1")
///     .inner_join("table2", "table1.uid = table2.uid")
///     .where_("age > :age")
///     .group_by(["aid"])
///     .having(r#"foo="foo""#)
///     .order_by(["did"])
///     .limit(10).offset(20)
///     .bind("age", 13)
///     .statement()?;
/// assert_eq!(st.sql(), "SELECT * FROM `table1` INNER JOIN `table2` ON `table1`.`uid` = `table2`.`uid` \
///     WHERE age > ? GROUP BY `aid` HAVING foo=\"foo\" ORDER BY `did` LIMIT 10 OFFSET 20");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until a terminal such as .query() is awaited"]
pub struct Select {
    common: Common,
    distinct: bool,
    columns: Vec<String>,
    from: Option<String>,
    joins: Vec<Join>,
    wheres: Conditions,
    group_by: Vec<String>,
    having: Conditions,
    order_by: Vec<String>,
    limit: Option<u64>,
    offset: Option<u64>,
}

impl Select {
    pub(crate) fn new(target: Target) -> Self {
        Select {
            common: Common::new(target),
            distinct: false,
            columns: Vec::new(),
            from: None,
            joins: Vec::new(),
            wheres: Conditions::default(),
            group_by: Vec::new(),
            having: Conditions::default(),
            order_by: Vec::new(),
            limit: None,
            offset: None,
        }
    }

    /// Add columns to the select list (quoted; `*`, `t.*` and
    /// `col [AS] alias` allowed).
    pub fn columns(mut self, columns: impl IntoColumns) -> Self {
        columns.each_column(&mut |c| {
            if let Some(q) = self.common.ok(sql::quote_aliased(c, true)) {
                self.columns.push(q);
            }
        });
        self
    }

    /// Add a raw expression to the select list, e.g. `COUNT(*) AS n`. Not
    /// quoted or checked: never build it from input (bind `:name` values).
    pub fn expr(mut self, expr: &str) -> Self {
        self.columns.push(expr.trim().to_string());
        self
    }

    /// `SELECT DISTINCT`.
    pub fn distinct(mut self) -> Self {
        self.distinct = true;
        self
    }

    /// The table (`name`, `name alias` or `name AS alias`; quoted).
    pub fn from(mut self, table: &str) -> Self {
        self.from = self.common.ok(sql::quote_aliased(table, false));
        self
    }

    fn join(mut self, kind: &'static str, table: &str, on: &str) -> Self {
        let d = self.common.dialect;
        if let Some(table) = self.common.ok(sql::quote_aliased(table, false)) {
            self.joins.push(Join {
                kind,
                table,
                on: sql::join_condition(d, on),
            });
        }
        self
    }

    /// `INNER JOIN table ON condition`. A condition of the form
    /// `a.x = b.y [AND b.z > 50 ...]` (comparisons joined by `AND`) has its
    /// names quoted, while numbers, string literals (`'x'`; `"x"` on MySQL),
    /// `NULL`/`TRUE`/`FALSE` and `:name` parameters in it stay values; any other condition is raw
    /// SQL (with `:name` parameters), like a `WHERE` clause.
    pub fn inner_join(self, table: &str, on: &str) -> Self {
        self.join("INNER JOIN", table, on)
    }

    /// `LEFT JOIN table ON condition` (see [`inner_join`](Self::inner_join)).
    pub fn left_join(self, table: &str, on: &str) -> Self {
        self.join("LEFT JOIN", table, on)
    }

    /// `RIGHT JOIN table ON condition` (see [`inner_join`](Self::inner_join)).
    pub fn right_join(self, table: &str, on: &str) -> Self {
        self.join("RIGHT JOIN", table, on)
    }

    where_methods!();

    /// `GROUP BY` these columns (quoted); for an expression use
    /// [`group_by_expr`](Self::group_by_expr).
    pub fn group_by(mut self, columns: impl IntoColumns) -> Self {
        columns.each_column(&mut |c| {
            if let Some(q) = self.common.ok(sql::quote_path(c, false)) {
                self.group_by.push(q);
            }
        });
        self
    }

    /// Add one raw SQL expression to `GROUP BY`, after the items before it:
    /// `group_by_expr("SUBSTR(name, 1, 1)")`.
    ///
    /// Raw SQL, like [`expr`](Self::expr): not split on commas, not quoted,
    /// not checked, so it is the caller's responsibility. Never build it
    /// from input; its `:name` parameters are bound as usual.
    pub fn group_by_expr(mut self, expr: &str) -> Self {
        self.group_by.push(expr.trim().to_string());
        self
    }

    /// Add a `HAVING` condition (raw SQL with `:name` parameters).
    pub fn having(mut self, condition: &str) -> Self {
        self.having.push(Conj::And, condition);
        self
    }

    /// Add a `HAVING` condition joined with `AND`.
    pub fn and_having(self, condition: &str) -> Self {
        self.having(condition)
    }

    /// Add a `HAVING` condition joined with `OR`.
    pub fn or_having(mut self, condition: &str) -> Self {
        self.having.push(Conj::Or, condition);
        self
    }

    fn order(mut self, columns: impl IntoColumns, desc: bool) -> Self {
        columns.each_column(&mut |c| {
            if let Some(q) = self.common.ok(sql::quote_order(c, desc)) {
                self.order_by.push(q);
            }
        });
        self
    }

    /// `ORDER BY` these columns, ascending unless an item says `DESC`
    /// (`"did"`, `"did DESC"`, `["a", "b ASC"]`); for an expression use
    /// [`order_by_expr`](Self::order_by_expr).
    pub fn order_by(self, columns: impl IntoColumns) -> Self {
        self.order(columns, false)
    }

    /// `ORDER BY` these columns, descending unless an item says `ASC`.
    pub fn order_by_desc(self, columns: impl IntoColumns) -> Self {
        self.order(columns, true)
    }

    /// Add one raw SQL expression to `ORDER BY`, after the items before it,
    /// with its direction if any: `order_by_expr("COUNT(*) DESC")`,
    /// `order_by_expr("RAND()")` (MySQL) / `order_by_expr("RANDOM()")`
    /// (SQLite), `order_by_expr("ABS(age - :target)")`.
    ///
    /// Raw SQL, like [`expr`](Self::expr): not split on commas, not quoted,
    /// not checked, so it is the caller's responsibility (including the
    /// dialect's function names). Never build it from input; its `:name`
    /// parameters are bound as usual.
    pub fn order_by_expr(mut self, expr: &str) -> Self {
        self.order_by.push(expr.trim().to_string());
        self
    }

    /// `LIMIT n`.
    pub fn limit(mut self, n: u64) -> Self {
        self.limit = Some(n);
        self
    }

    /// `OFFSET n` (with no limit set, the dialect's "no limit" is written).
    pub fn offset(mut self, n: u64) -> Self {
        self.offset = Some(n);
        self
    }

    bind_methods!();

    /// The SQL with `:name` placeholders, before translation.
    fn written_sql(&self) -> String {
        use std::fmt::Write as _;
        fn list(s: &mut String, items: &[String]) {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    s.push_str(", ");
                }
                s.push_str(item);
            }
        }
        let mut s = String::with_capacity(128);
        s.push_str("SELECT ");
        if self.distinct {
            s.push_str("DISTINCT ");
        }
        if self.columns.is_empty() {
            s.push('*');
        } else {
            list(&mut s, &self.columns);
        }
        if let Some(from) = &self.from {
            s.push_str(" FROM ");
            s.push_str(from);
        }
        for j in &self.joins {
            s.push(' ');
            s.push_str(j.kind);
            s.push(' ');
            s.push_str(&j.table);
            s.push_str(" ON ");
            s.push_str(&j.on);
        }
        self.wheres.render(" WHERE ", &mut s);
        if !self.group_by.is_empty() {
            s.push_str(" GROUP BY ");
            list(&mut s, &self.group_by);
        }
        self.having.render(" HAVING ", &mut s);
        if !self.order_by.is_empty() {
            s.push_str(" ORDER BY ");
            list(&mut s, &self.order_by);
        }
        // Writing to a String cannot fail.
        match (self.limit, self.offset) {
            (Some(l), _) => {
                let _ = write!(s, " LIMIT {l}");
            }
            // Both dialects need a LIMIT before OFFSET.
            (None, Some(_)) => s.push_str(match self.common.dialect {
                Dialect::MySql => " LIMIT 18446744073709551615",
                Dialect::Sqlite => " LIMIT -1",
            }),
            (None, None) => {}
        }
        if let Some(o) = self.offset {
            let _ = write!(s, " OFFSET {o}");
        }
        s
    }

    /// The statement this builder would send.
    pub fn statement(&self) -> Result<Statement, DbError> {
        self.common.statement(&self.written_sql(), true)
    }

    fn into_fetch_parts(self) -> Result<(Target, Statement), DbError> {
        let st = self.statement()?;
        Ok((self.common.target, st))
    }

    fetch_terminals!();
}

/// Raw SQL with `:name` parameters. Start with [`Instance::sql`].
///
/// Run statements that return rows with `query`, `row`, `column` or
/// `single` (and their `_as` forms); run writes and DDL with
/// [`execute`](Self::execute), which returns the affected rows and the
/// insert id. A write without `RETURNING` (`INSERT`, `UPDATE`, `DELETE`,
/// `REPLACE`) or DDL (`CREATE`, `DROP`, `ALTER`, `TRUNCATE`, `RENAME`) given
/// to a row-fetching terminal is refused with [`DbError::NotAQuery`] before
/// it is sent: those return `Vec<Row>`/`Option<..>`, which has no room for
/// the affected count or insert id, and an empty result would hide what the
/// write did.
///
/// Statements whose first keyword is `SELECT` are retried once if the
/// connection is lost; anything else never is.
///
/// ```
/// # use switchboard::db::{Instance, Value};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), switchboard::db::DbError> {
/// let db = Instance::sqlite_memory("doc")?;
/// let v = db.sql("SELECT :a + :b").bind("a", 40).bind("b", 2).single().await?;
/// assert_eq!(v, Some(Value::Int(42)));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until a terminal such as .query() is awaited"]
pub struct Raw {
    common: Common,
    sql: String,
}

impl Raw {
    pub(crate) fn new(target: Target, sql: &str) -> Self {
        Raw {
            common: Common::new(target),
            sql: sql.to_string(),
        }
    }

    bind_methods!();

    /// The statement this builder would send.
    pub fn statement(&self) -> Result<Statement, DbError> {
        self.common.statement(&self.sql, sql::is_read(&self.sql))
    }

    fn into_parts(self) -> Result<(Target, Statement), DbError> {
        let st = self.statement()?;
        Ok((self.common.target, st))
    }

    /// For the row-fetching terminals: a statement that returns no rows is
    /// refused ([`DbError::NotAQuery`]) before it is sent.
    fn into_fetch_parts(self) -> Result<(Target, Statement), DbError> {
        if let Some(keyword) = sql::rowless_keyword(self.common.dialect, &self.sql) {
            return Err(DbError::NotAQuery {
                keyword,
                sql: self.sql,
            });
        }
        self.into_parts()
    }

    fetch_terminals!();

    /// Run a statement that returns no rows (DDL, writes): affected rows and
    /// insert id.
    pub async fn execute(self) -> Result<Executed, DbError> {
        let (target, st) = self.into_parts()?;
        target.executed(&st).await
    }
}

/// A column's value in an `INSERT`/`UPDATE`: a bound parameter or a raw
/// expression.
#[derive(Debug, Clone)]
struct Assignment {
    column: String,
    value: String,
}

/// A column whose value is the parameter of the same name.
fn add_param_column(common: &mut Common, out: &mut Vec<Assignment>, column: &str) {
    let quoted = common.ok(sql::quote_ident(column));
    let param = common.ok(param_name(column));
    if let (Some(column), Some(p)) = (quoted, param) {
        out.push(Assignment {
            column,
            value: format!(":{p}"),
        });
    }
}

fn add_set(common: &mut Common, out: &mut Vec<Assignment>, column: &str, value: Value) {
    add_param_column(common, out, column);
    common.bind(column, value);
}

fn add_expr(common: &mut Common, out: &mut Vec<Assignment>, column: &str, expr: &str) {
    if let Some(column) = common.ok(sql::quote_ident(column)) {
        out.push(Assignment {
            column,
            value: expr.trim().to_string(),
        });
    }
}

macro_rules! assignment_methods {
    () => {
        /// Columns whose values are bound by name: `cols(["sex"])` writes
        /// `` `sex` = :sex ``, to be filled with `.bind("sex", ..)`.
        pub fn cols(mut self, columns: impl IntoColumns) -> Self {
            columns
                .each_column(&mut |c| add_param_column(&mut self.common, &mut self.assignments, c));
            self
        }

        /// One column and its value (bound as `:column`).
        pub fn set(mut self, column: &str, value: impl Into<Value>) -> Self {
            add_set(
                &mut self.common,
                &mut self.assignments,
                column,
                value.into(),
            );
            self
        }

        /// Several columns and values, e.g. from [`params!`](crate::params).
        pub fn values<K, V>(mut self, values: impl IntoIterator<Item = (K, V)>) -> Self
        where
            K: AsRef<str>,
            V: Into<Value>,
        {
            for (k, v) in values {
                add_set(
                    &mut self.common,
                    &mut self.assignments,
                    k.as_ref(),
                    v.into(),
                );
            }
            self
        }

        /// A column set to a raw SQL expression (with `:name` parameters),
        /// e.g. `set_expr("hits", "hits + 1")`. Not checked: never build it
        /// from input.
        pub fn set_expr(mut self, column: &str, expr: &str) -> Self {
            add_expr(&mut self.common, &mut self.assignments, column, expr);
            self
        }
    };
}

/// An `INSERT` under construction. Start with [`Instance::insert`].
///
/// ```
/// # use switchboard::db::{Instance, params};
/// # fn main() -> Result<(), switchboard::db::DbError> {
/// let db = Instance::sqlite_memory("doc")?;
/// let st = db.insert("Persons")
///     .values(params! { "Firstname" => "abc", "Lastname" => "efg", "Sex" => "M", "Age" => 13 })
///     .statement()?;
/// assert_eq!(st.sql(), "INSERT INTO `Persons` (`Firstname`, `Lastname`, `Sex`, `Age`) VALUES (?, ?, ?, ?)");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until a terminal such as .query() is awaited"]
pub struct Insert {
    common: Common,
    table: String,
    assignments: Vec<Assignment>,
}

impl Insert {
    pub(crate) fn new(target: Target, table: &str) -> Self {
        Insert {
            common: Common::new(target),
            table: table.trim().to_string(),
            assignments: Vec::new(),
        }
    }

    assignment_methods!();
    bind_methods!();

    /// The statement this builder would send.
    pub fn statement(&self) -> Result<Statement, DbError> {
        self.common.check()?;
        let table = sql::quote_path(&self.table, false)?;
        if self.assignments.is_empty() {
            return Err(DbError::NoColumns {
                statement: "INSERT",
                table: self.table.clone(),
            });
        }
        let cols: Vec<&str> = self.assignments.iter().map(|a| a.column.as_str()).collect();
        let vals: Vec<&str> = self.assignments.iter().map(|a| a.value.as_str()).collect();
        let sql = format!(
            "INSERT INTO {table} ({}) VALUES ({})",
            cols.join(", "),
            vals.join(", ")
        );
        self.common.statement(&sql, false)
    }

    /// Run it; returns the generated id (MySQL `AUTO_INCREMENT`, SQLite
    /// rowid), or 0 when the table generates none.
    pub async fn query(self) -> Result<u64, DbError> {
        Ok(self.execute().await?.last_insert_id.unwrap_or(0))
    }

    /// Run it; returns affected rows and the insert id.
    pub async fn execute(self) -> Result<Executed, DbError> {
        let st = self.statement()?;
        self.common.target.executed(&st).await
    }
}

/// An `UPDATE` under construction. Start with [`Instance::update`].
///
/// Without a `WHERE` condition it refuses to run unless
/// [`all_rows`](Self::all_rows) is called.
///
/// ```
/// # use switchboard::db::Instance;
/// # fn main() -> Result<(), switchboard::db::DbError> {
/// let db = Instance::new("db1", Default::default())?;
/// let st = db.update("Persons").cols(["sex"]).where_("ID=1").bind("sex", "F").statement()?;
/// assert_eq!(st.sql(), "UPDATE `Persons` SET `sex` = ? WHERE ID=1");
/// assert!(db.update("Persons").set("sex", "F").statement().is_err()); // no WHERE
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until a terminal such as .query() is awaited"]
pub struct Update {
    common: Common,
    table: String,
    assignments: Vec<Assignment>,
    wheres: Conditions,
    all_rows: bool,
}

impl Update {
    pub(crate) fn new(target: Target, table: &str) -> Self {
        Update {
            common: Common::new(target),
            table: table.trim().to_string(),
            assignments: Vec::new(),
            wheres: Conditions::default(),
            all_rows: false,
        }
    }

    assignment_methods!();
    where_methods!();
    bind_methods!();

    /// Allow running without a `WHERE` clause: every row is updated.
    pub fn all_rows(mut self) -> Self {
        self.all_rows = true;
        self
    }

    /// The statement this builder would send.
    pub fn statement(&self) -> Result<Statement, DbError> {
        self.common.check()?;
        let table = sql::quote_path(&self.table, false)?;
        if self.assignments.is_empty() {
            return Err(DbError::NoColumns {
                statement: "UPDATE",
                table: self.table.clone(),
            });
        }
        if self.wheres.is_empty() && !self.all_rows {
            return Err(DbError::MissingWhere {
                statement: "UPDATE",
                table: self.table.clone(),
            });
        }
        let sets: Vec<String> = self
            .assignments
            .iter()
            .map(|a| format!("{} = {}", a.column, a.value))
            .collect();
        let mut sql = format!("UPDATE {table} SET {}", sets.join(", "));
        self.wheres.render(" WHERE ", &mut sql);
        self.common.statement(&sql, false)
    }

    /// Run it; returns the number of rows matched.
    pub async fn query(self) -> Result<u64, DbError> {
        let st = self.statement()?;
        Ok(self.common.target.executed(&st).await?.rows_affected)
    }
}

/// A `DELETE` under construction. Start with [`Instance::delete`].
///
/// Without a `WHERE` condition it refuses to run unless
/// [`all_rows`](Self::all_rows) is called.
///
/// ```
/// # use switchboard::db::Instance;
/// # fn main() -> Result<(), switchboard::db::DbError> {
/// let db = Instance::new("db1", Default::default())?;
/// assert_eq!(db.delete("Persons").where_("ID=9").statement()?.sql(), "DELETE FROM `Persons` WHERE ID=9");
/// assert_eq!(db.delete("Persons").all_rows().statement()?.sql(), "DELETE FROM `Persons`");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until a terminal such as .query() is awaited"]
pub struct Delete {
    common: Common,
    table: String,
    wheres: Conditions,
    all_rows: bool,
}

impl Delete {
    pub(crate) fn new(target: Target, table: &str) -> Self {
        Delete {
            common: Common::new(target),
            table: table.trim().to_string(),
            wheres: Conditions::default(),
            all_rows: false,
        }
    }

    where_methods!();
    bind_methods!();

    /// Allow running without a `WHERE` clause: every row is deleted.
    pub fn all_rows(mut self) -> Self {
        self.all_rows = true;
        self
    }

    /// The statement this builder would send.
    pub fn statement(&self) -> Result<Statement, DbError> {
        self.common.check()?;
        let table = sql::quote_path(&self.table, false)?;
        if self.wheres.is_empty() && !self.all_rows {
            return Err(DbError::MissingWhere {
                statement: "DELETE",
                table: self.table.clone(),
            });
        }
        let mut sql = format!("DELETE FROM {table}");
        self.wheres.render(" WHERE ", &mut sql);
        self.common.statement(&sql, false)
    }

    /// Run it; returns the number of rows deleted.
    pub async fn query(self) -> Result<u64, DbError> {
        let st = self.statement()?;
        Ok(self.common.target.executed(&st).await?.rows_affected)
    }
}
