//! SQL text handling: dialects, identifier quoting and `:name` parameters.
//!
//! Everything here is pure string work, done before a statement is sent, so
//! that a bad identifier or a missing parameter never reaches the database.

use crate::{DbError, Value};

/// The SQL dialect of an instance: decides a few lexical rules.
///
/// Identifiers are quoted with backticks in both dialects. SQLite accepts
/// them too, and unlike its standard double quotes they are never read as a
/// string literal: SQLite takes a double-quoted name that matches no column
/// for a string, so a misspelt `"nmae"` would quietly return the text
/// `nmae` for every row instead of failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// MySQL and MariaDB: `\` escapes inside string literals, `#` starts a
    /// comment, `"x"` is a string literal.
    MySql,
    /// SQLite: `"x"` and `[x]` are identifiers.
    Sqlite,
}

/// The identifier quote of both dialects.
const QUOTE: char = '`';

/// Longest identifier MySQL accepts; we apply it to SQLite too.
const MAX_IDENT_LEN: usize = 64;

/// Check one identifier part (no dots).
///
/// Only letters, digits, `_` and `$` are accepted: those can never end the
/// quoted name early, in either dialect, whatever the server's SQL mode.
/// Anything else is rejected rather than escaped. A part made only of digits
/// is rejected too: it is a number that would be sent as a column name.
fn check_ident(part: &str) -> Result<(), DbError> {
    let reject = |reason: String| {
        Err(DbError::InvalidIdentifier {
            ident: part.to_string(),
            reason,
        })
    };
    if part.is_empty() {
        return reject("empty name".into());
    }
    if part.bytes().all(|b| b.is_ascii_digit()) {
        return reject(
            "only digits: that is a number, not a name (write values in a condition or an \
             `_expr` form)"
                .into(),
        );
    }
    let mut count = 0;
    for c in part.chars() {
        if !(c.is_alphanumeric() || c == '_' || c == '$') {
            return reject(format!(
                "character {c:?} is not allowed (letters, digits, `_` and `$` only)"
            ));
        }
        count += 1;
    }
    if count > MAX_IDENT_LEN {
        return reject("longer than 64 characters".into());
    }
    Ok(())
}

/// Append one quoted identifier part to `out`.
fn push_ident(out: &mut String, part: &str) -> Result<(), DbError> {
    check_ident(part)?;
    out.push(QUOTE);
    out.push_str(part);
    out.push(QUOTE);
    Ok(())
}

/// Quote one identifier part (no dots).
pub(crate) fn quote_ident(part: &str) -> Result<String, DbError> {
    let mut out = String::with_capacity(part.len() + 2);
    push_ident(&mut out, part)?;
    Ok(out)
}

/// Append `name`, `table.name` or `schema.table.name`, quoted; with
/// `allow_star`, the last part may be `*` (`*`, `t.*`).
fn push_path(out: &mut String, path: &str, allow_star: bool) -> Result<(), DbError> {
    let path = path.trim();
    if allow_star && path == "*" {
        out.push('*');
        return Ok(());
    }
    let parts = path.split('.').count();
    if parts > 3 {
        return Err(DbError::InvalidIdentifier {
            ident: path.into(),
            reason: "too many dots".into(),
        });
    }
    for (i, part) in path.split('.').enumerate() {
        if i > 0 {
            out.push('.');
        }
        if allow_star && part == "*" && i == parts - 1 && i > 0 {
            out.push('*');
        } else {
            push_ident(out, part)?;
        }
    }
    Ok(())
}

/// Quote `name`, `table.name` or `schema.table.name`; with `allow_star`, the
/// last part may be `*` (`*`, `t.*`).
pub(crate) fn quote_path(path: &str, allow_star: bool) -> Result<String, DbError> {
    let mut out = String::with_capacity(path.len() + 6);
    push_path(&mut out, path, allow_star)?;
    Ok(out)
}

/// Quote `name`, `name alias` or `name AS alias` (tables in `FROM`/`JOIN`,
/// and select-list columns when `allow_star`).
pub(crate) fn quote_aliased(item: &str, allow_star: bool) -> Result<String, DbError> {
    let mut words = item.split_whitespace();
    let shape = (words.next(), words.next(), words.next(), words.next());
    let (name, alias) = match shape {
        (Some(name), None, None, None) => (name, None),
        (Some(name), Some(alias), None, None) => (name, Some(alias)),
        (Some(name), Some(kw), Some(alias), None) if kw.eq_ignore_ascii_case("as") => {
            (name, Some(alias))
        }
        _ => {
            return Err(DbError::InvalidIdentifier {
                ident: item.into(),
                reason: "expected `name`, `name alias` or `name AS alias`".into(),
            })
        }
    };
    let mut out = String::with_capacity(item.len() + 10);
    push_path(&mut out, name, allow_star)?;
    match alias {
        None => Ok(out),
        Some(_) if out.ends_with('*') => Err(DbError::InvalidIdentifier {
            ident: item.into(),
            reason: "`*` cannot have an alias".into(),
        }),
        Some(a) => {
            out.push_str(" AS ");
            push_ident(&mut out, a)?;
            Ok(out)
        }
    }
}

/// Quote an `ORDER BY` item: `col`, `t.col`, optionally followed by `ASC` or
/// `DESC`.
pub(crate) fn quote_order(item: &str, default_desc: bool) -> Result<String, DbError> {
    let words: Vec<&str> = item.split_whitespace().collect();
    let (name, dir) = match words.as_slice() {
        [name] => (*name, if default_desc { Some("DESC") } else { None }),
        [name, d] if d.eq_ignore_ascii_case("asc") => (*name, Some("ASC")),
        [name, d] if d.eq_ignore_ascii_case("desc") => (*name, Some("DESC")),
        _ => {
            return Err(DbError::InvalidIdentifier {
                ident: item.into(),
                reason: "expected `column`, `column ASC` or `column DESC`".into(),
            })
        }
    };
    let name = quote_path(name, false)?;
    Ok(match dir {
        Some(d) => format!("{name} {d}"),
        None => name,
    })
}

/// A join condition of the simple form `a.x = b.y [AND c.z > 50 ...]` gets
/// its names quoted (as the brief shows); anything else is kept as a raw
/// expression, like a `WHERE` clause.
///
/// In the simple form each side of a comparison is a name (`col`, `t.col`,
/// `s.t.col`: quoted) or a value kept as written: a number (`50`, `-2.5`,
/// `.5`, `1e3`), a string literal (`'x'`, and `"x"` on MySQL, where double
/// quotes make a string), `NULL`, `TRUE`, `FALSE`, or a `:name` parameter.
pub(crate) fn join_condition(dialect: Dialect, on: &str) -> String {
    match simple_condition(dialect, on) {
        Some(quoted) => quoted,
        None => on.trim().to_string(),
    }
}

/// Comparison operators of the simple form; longer ones first, so `<=` is not
/// taken for `<`.
const COMPARISONS: [&str; 7] = ["<>", "!=", "<=", ">=", "=", "<", ">"];

/// `operand op operand [AND operand op operand ...]`, with names quoted, or
/// `None` when `on` is anything else.
fn simple_condition(dialect: Dialect, on: &str) -> Option<String> {
    let mut cur = Cursor { s: on, i: 0 };
    let mut out = String::with_capacity(on.len() + 16);
    loop {
        push_operand(&mut out, dialect, &mut cur)?;
        cur.skip_space();
        let op = COMPARISONS.iter().find(|op| cur.rest().starts_with(**op))?;
        cur.i += op.len();
        out.push(' ');
        out.push_str(op);
        out.push(' ');
        push_operand(&mut out, dialect, &mut cur)?;
        cur.skip_space();
        if cur.rest().is_empty() {
            return Some(out);
        }
        // The next word must be `AND`, followed by a space.
        let rest = cur.rest().as_bytes();
        if rest.len() > 3 && rest[..3].eq_ignore_ascii_case(b"and") && rest[3].is_ascii_whitespace()
        {
            cur.i += 3;
            out.push_str(" AND ");
        } else {
            return None;
        }
    }
}

/// A position in a condition being read.
struct Cursor<'a> {
    s: &'a str,
    i: usize,
}

impl<'a> Cursor<'a> {
    fn rest(&self) -> &'a str {
        self.s.get(self.i..).unwrap_or_default()
    }

    fn skip_space(&mut self) {
        let rest = self.rest();
        self.i += rest.len() - rest.trim_start().len();
    }

    /// Take bytes while `f` holds; returns what was taken.
    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a str {
        let rest = self.rest();
        let n = rest.bytes().take_while(|&b| f(b)).count();
        self.i += n;
        rest.get(..n).unwrap_or_default()
    }
}

/// Read one operand and append it: a name quoted, a value as written.
fn push_operand(out: &mut String, dialect: Dialect, cur: &mut Cursor<'_>) -> Option<()> {
    cur.skip_space();
    let b = cur.rest().as_bytes();
    let first = *b.first()?;
    let start = cur.i;
    match first {
        b'\'' | b'"' if first == b'\'' || dialect == Dialect::MySql => {
            let backslash = dialect == Dialect::MySql;
            let end = skip_quoted(cur.s.as_bytes(), start, first, backslash)?;
            cur.i = end;
            out.push_str(cur.s.get(start..end)?);
        }
        b':' if b.get(1).is_some_and(|&c| is_name_start(c)) => {
            cur.i += 1;
            cur.take_while(is_name_char);
            out.push_str(cur.s.get(start..cur.i)?);
        }
        b'0'..=b'9' | b'.' | b'-' | b'+' => {
            let len = number_len(b)?;
            cur.i += len;
            // `50abc` is neither a number nor a name.
            if cur.rest().chars().next().is_some_and(is_ident_char) {
                return None;
            }
            out.push_str(cur.s.get(start..cur.i)?);
        }
        _ => {
            let rest = cur.rest();
            let len: usize = rest
                .chars()
                .take_while(|&c| is_ident_char(c) || c == '.')
                .map(char::len_utf8)
                .sum();
            if len == 0 {
                return None;
            }
            cur.i += len;
            let word = rest.get(..len)?;
            if LITERAL_WORDS.iter().any(|w| word.eq_ignore_ascii_case(w)) {
                out.push_str(word);
            } else {
                push_path(out, word, false).ok()?;
            }
        }
    }
    Some(())
}

/// Bare words that are values, not names, in a join condition.
const LITERAL_WORDS: [&str; 3] = ["NULL", "TRUE", "FALSE"];

/// A character allowed in an identifier part (see [`check_ident`]).
fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$'
}

/// Length of the numeric literal at the start of `b`: an optional sign,
/// digits with an optional fraction (or a fraction alone, `.5`), and an
/// optional exponent. `None` when there is no digit.
fn number_len(b: &[u8]) -> Option<usize> {
    let digits = |from: usize| {
        b.get(from..)
            .map_or(0, |r| r.iter().take_while(|c| c.is_ascii_digit()).count())
    };
    let mut i = usize::from(matches!(b.first(), Some(b'-' | b'+')));
    let int = digits(i);
    i += int;
    let mut frac = 0;
    if b.get(i) == Some(&b'.') {
        frac = digits(i + 1);
        i += 1 + frac;
    }
    if int == 0 && frac == 0 {
        return None;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(b.get(i + 1), Some(b'-' | b'+')));
        let exp = digits(i + 1 + sign);
        if exp > 0 {
            i += 1 + sign + exp;
        }
    }
    Some(i)
}

/// SQL with `:name` placeholders rewritten to the driver's positional `?`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Positional<'a> {
    /// The SQL with `?` placeholders.
    pub sql: String,
    /// The parameter name for each `?`, in order (a name used twice appears
    /// twice), borrowed from the written SQL.
    pub names: Vec<&'a str>,
}

fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Rewrite `:name` placeholders to `?`.
///
/// Skipped (never parameters): string literals `'...'`, `"..."`, quoted
/// identifiers `` `...` `` (and `[...]` on SQLite), `-- ...`, `# ...`
/// (MySQL) and `/* ... */` comments, and `::` (a cast in some dialects).
/// Rejected: positional `?` (use names), `:1`-style numbered parameters, and
/// on SQLite its other parameter forms `@name` / `$name`, because SQLite would
/// silently bind those to NULL.
pub(crate) fn to_positional(dialect: Dialect, sql: &str) -> Result<Positional<'_>, DbError> {
    let err = |message: String| DbError::InvalidSql {
        sql: sql.to_string(),
        message,
    };
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut names = Vec::new();
    // `copied` marks how much of `sql` has been copied to `out`; everything
    // is copied verbatim except the `:name` placeholders.
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            q @ (b'\'' | b'"' | b'`') => {
                let backslash = dialect == Dialect::MySql && q != b'`';
                i = skip_quoted(b, i, q, backslash)
                    .ok_or_else(|| err(format!("unterminated {} quote", q as char)))?;
            }
            b'[' if dialect == Dialect::Sqlite => {
                i = match b[i + 1..].iter().position(|&c| c == b']') {
                    Some(p) => i + 1 + p + 1,
                    None => return Err(err("unterminated [ quote".into())),
                };
            }
            b'-' if b.get(i + 1) == Some(&b'-')
                && (dialect == Dialect::Sqlite
                    || !matches!(b.get(i + 2), Some(c) if !c.is_ascii_whitespace())) =>
            {
                i = skip_line(b, i);
            }
            b'#' if dialect == Dialect::MySql => i = skip_line(b, i),
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = match find(b, i + 2, b"*/") {
                    Some(p) => p + 2,
                    None => return Err(err("unterminated /* comment".into())),
                };
            }
            b':' if b.get(i + 1) == Some(&b':') => i += 2,
            b':' if b.get(i + 1).is_some_and(|&c| is_name_start(c)) => {
                let start = i + 1;
                let mut end = start;
                while end < b.len() && is_name_char(b[end]) {
                    end += 1;
                }
                if b.get(end).is_some_and(|&c| c >= 0x80) {
                    return Err(err("parameter names must be ASCII".into()));
                }
                out.push_str(&sql[copied..i]);
                out.push('?');
                names.push(&sql[start..end]);
                copied = end;
                i = end;
            }
            b':' if b
                .get(i + 1)
                .is_some_and(|&c| c.is_ascii_digit() || c >= 0x80) =>
            {
                return Err(err(
                    "parameter names must start with an ASCII letter or `_`".into(),
                ));
            }
            b'?' => {
                return Err(err(
                    "positional `?` placeholders are not supported; use :name".into(),
                ))
            }
            b'@' | b'$'
                if dialect == Dialect::Sqlite
                    && (i == 0 || !is_name_char(b[i - 1]))
                    && b.get(i + 1).is_some_and(|&c| is_name_start(c)) =>
            {
                return Err(err(format!(
                    "`{}name` is a parameter in SQLite; use :name",
                    b[i] as char
                )));
            }
            _ => i += 1,
        }
    }
    out.push_str(&sql[copied..]);
    Ok(Positional { sql: out, names })
}

/// Index just past the closing quote, or None when unterminated. A doubled
/// quote is an escaped quote; with `backslash`, `\` escapes the next byte.
fn skip_quoted(b: &[u8], open: usize, q: u8, backslash: bool) -> Option<usize> {
    let mut i = open + 1;
    while i < b.len() {
        if backslash && b[i] == b'\\' {
            i += 2;
            continue;
        }
        if b[i] == q {
            if b.get(i + 1) == Some(&q) {
                i += 2;
                continue;
            }
            return Some(i + 1);
        }
        i += 1;
    }
    None
}

fn skip_line(b: &[u8], from: usize) -> usize {
    match b[from..].iter().position(|&c| c == b'\n') {
        Some(p) => from + p + 1,
        None => b.len(),
    }
}

fn find(b: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    b.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| from + p)
}

/// True when the statement is a plain read (its first keyword is `SELECT`),
/// so that running it twice is harmless. Used to decide whether a query may
/// be retried after a lost connection.
pub(crate) fn is_read(sql: &str) -> bool {
    let b = sql.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            c if c.is_ascii_whitespace() || c == b'(' => i += 1,
            b'-' if b.get(i + 1) == Some(&b'-') => i = skip_line(b, i),
            b'#' => i = skip_line(b, i),
            b'/' if b.get(i + 1) == Some(&b'*') => match find(b, i + 2, b"*/") {
                Some(p) => i = p + 2,
                None => return false,
            },
            _ => break,
        }
    }
    // Compare bytes: slicing the str could split a multi-byte character.
    let rest = &b[i..];
    rest.len() >= 6
        && rest[..6].eq_ignore_ascii_case(b"select")
        && !matches!(rest.get(6), Some(&c) if is_name_char(c))
}

/// The words of `sql` outside string literals, quoted names, comments,
/// parentheses and `:name` parameters, in order: the statement's own
/// keywords (and the bare names between them).
fn top_level_words(dialect: Dialect, sql: &str) -> Vec<&str> {
    let b = sql.as_bytes();
    let mut words = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            q @ (b'\'' | b'"' | b'`') => {
                let backslash = dialect == Dialect::MySql && q != b'`';
                match skip_quoted(b, i, q, backslash) {
                    Some(end) => i = end,
                    None => break,
                }
            }
            b'[' if dialect == Dialect::Sqlite => match b[i..].iter().position(|&c| c == b']') {
                Some(p) => i += p + 1,
                None => break,
            },
            b'-' if b.get(i + 1) == Some(&b'-') => i = skip_line(b, i),
            b'#' if dialect == Dialect::MySql => i = skip_line(b, i),
            b'/' if b.get(i + 1) == Some(&b'*') => match find(b, i + 2, b"*/") {
                Some(p) => i = p + 2,
                None => break,
            },
            b'(' => {
                depth += 1;
                i += 1;
            }
            b')' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            c if is_name_char(c) || c >= 0x80 => {
                let start = i;
                while i < b.len() && (is_name_char(b[i]) || b[i] >= 0x80) {
                    i += 1;
                }
                // A parameter's or a qualified name's word is not a keyword.
                let after_sigil = start > 0 && matches!(b[start - 1], b':' | b'.' | b'@' | b'$');
                if depth == 0 && !after_sigil {
                    if let Some(w) = sql.get(start..i) {
                        words.push(w);
                    }
                }
            }
            _ => i += 1,
        }
    }
    words
}

/// Keywords that start a statement which returns no rows unless it has a
/// `RETURNING` clause.
const WRITES: [&str; 4] = ["INSERT", "UPDATE", "DELETE", "REPLACE"];

/// Keywords that start a statement which never returns rows.
const DDL: [&str; 5] = ["CREATE", "DROP", "ALTER", "TRUNCATE", "RENAME"];

/// When `sql` is a statement that returns no rows (a write without
/// `RETURNING`, or DDL), its keyword in upper case; `None` for anything that
/// may return rows (`SELECT`, `SHOW`, `PRAGMA`, `EXPLAIN`, `CALL`, a write
/// with `RETURNING`, ...). A `WITH` clause is looked past, to the statement
/// it prefixes.
pub(crate) fn rowless_keyword(dialect: Dialect, sql: &str) -> Option<String> {
    let words = top_level_words(dialect, sql);
    let is = |w: &str, list: &[&str]| list.iter().any(|k| w.eq_ignore_ascii_case(k));
    let first = *words.first()?;
    let keyword = if first.eq_ignore_ascii_case("with") {
        // The CTE bodies are in parentheses, so the first statement keyword
        // at the top level is the statement itself.
        *words
            .iter()
            .find(|w| is(w, &WRITES) || is(w, &["SELECT", "VALUES"]))?
    } else {
        first
    };
    let returning = words.iter().any(|w| w.eq_ignore_ascii_case("returning"));
    if (is(keyword, &WRITES) && !returning) || is(keyword, &DDL) {
        Some(keyword.to_ascii_uppercase())
    } else {
        None
    }
}

/// Bound parameters: `name → value`, in bind order.
#[derive(Debug, Clone, Default)]
pub(crate) struct Params {
    entries: Vec<(String, Value)>,
}

impl Params {
    /// Add a binding; a name may be given with or without its leading `:`.
    pub(crate) fn bind(&mut self, name: &str, value: Value) -> Result<(), DbError> {
        let name = name.strip_prefix(':').unwrap_or(name);
        if self.entries.iter().any(|(n, _)| n == name) {
            return Err(DbError::DuplicateParam { name: name.into() });
        }
        self.entries.push((name.to_string(), value));
        Ok(())
    }

    /// Values in placeholder order, after checking that every placeholder is
    /// bound and every binding is used.
    pub(crate) fn resolve(&self, written_sql: &str, names: &[&str]) -> Result<Vec<Value>, DbError> {
        let mut missing: Vec<String> = Vec::new();
        let mut args = Vec::with_capacity(names.len());
        for &name in names {
            match self.entries.iter().find(|(n, _)| n == name) {
                Some((_, v)) => args.push(v.clone()),
                None => {
                    if !missing.iter().any(|m| m == name) {
                        missing.push(name.to_string());
                    }
                }
            }
        }
        if !missing.is_empty() {
            return Err(DbError::UnboundParams {
                sql: written_sql.to_string(),
                names: missing,
            });
        }
        let unused: Vec<String> = self
            .entries
            .iter()
            .filter(|(n, _)| !names.contains(&n.as_str()))
            .map(|(n, _)| n.clone())
            .collect();
        if !unused.is_empty() {
            return Err(DbError::UnusedParams {
                sql: written_sql.to_string(),
                names: unused,
            });
        }
        Ok(args)
    }
}

/// A statement ready to send: SQL with `?` placeholders and the values in
/// placeholder order.
///
/// Get one from any builder's `statement()` to see exactly what would be
/// sent:
///
/// ```
/// use switchboard::db::{Dialect, Instance};
/// # fn main() -> Result<(), switchboard::db::DbError> {
/// let db = Instance::sqlite_memory("doc")?;
/// let st = db.select("id,name").from("users").where_("id = :id").bind("id", 7).statement()?;
/// assert_eq!(st.sql(), "SELECT `id`, `name` FROM `users` WHERE id = ?");
/// assert_eq!(st.params(), &[7.into()]);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub(crate) sql: String,
    pub(crate) params: Vec<Value>,
    /// Whether it may be retried once after a lost connection.
    pub(crate) read: bool,
}

impl Statement {
    /// Build from SQL with `:name` placeholders and its bindings.
    pub(crate) fn prepare(
        dialect: Dialect,
        sql: &str,
        params: &Params,
        read: bool,
    ) -> Result<Self, DbError> {
        let p = to_positional(dialect, sql)?;
        let params = params.resolve(sql, &p.names)?;
        Ok(Statement {
            sql: p.sql,
            params,
            read,
        })
    }

    /// The SQL as sent, with `?` placeholders.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// The values bound to the placeholders, in order.
    pub fn params(&self) -> &[Value] {
        &self.params
    }

    /// True when the statement is a read, retried once if the connection is
    /// lost while it runs.
    pub fn is_read(&self) -> bool {
        self.read
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(d: Dialect, sql: &str) -> (String, Vec<String>) {
        let p = to_positional(d, sql).expect("parse");
        (p.sql, p.names.iter().map(|n| n.to_string()).collect())
    }

    #[test]
    fn placeholders_become_positional() {
        let (sql, names) = pos(Dialect::MySql, "a = :a AND b = :b_2 OR c = :a");
        assert_eq!(sql, "a = ? AND b = ? OR c = ?");
        assert_eq!(names, ["a", "b_2", "a"]);
    }

    #[test]
    fn quoted_and_commented_colons_are_not_parameters() {
        for d in [Dialect::MySql, Dialect::Sqlite] {
            let (sql, names) = pos(
                d,
                "SELECT ':x', \"a:b\", `c:d` /* :e */ FROM t WHERE x::int = :y",
            );
            assert_eq!(
                sql,
                "SELECT ':x', \"a:b\", `c:d` /* :e */ FROM t WHERE x::int = ?"
            );
            assert_eq!(names, ["y"]);
            let (_, names) = pos(d, "SELECT 1 -- :z\n, :w");
            assert_eq!(names, ["w"]);
            let (_, names) = pos(d, "SELECT 'it''s :not' , :yes");
            assert_eq!(names, ["yes"]);
        }
        // MySQL: backslash escapes and # comments.
        let (_, names) = pos(
            Dialect::MySql,
            r"SELECT 'a\' :no' # :no2
            , :yes",
        );
        assert_eq!(names, ["yes"]);
        // SQLite: backslash is an ordinary character.
        let (_, names) = pos(Dialect::Sqlite, r"SELECT 'a\', :yes");
        assert_eq!(names, ["yes"]);
    }

    #[test]
    fn rejects_what_would_be_silently_null() {
        for d in [Dialect::MySql, Dialect::Sqlite] {
            assert!(to_positional(d, "SELECT ?").is_err());
            assert!(to_positional(d, "SELECT :1").is_err());
            assert!(to_positional(d, "SELECT 'open").is_err());
        }
        assert!(to_positional(Dialect::Sqlite, "SELECT @x").is_err());
        assert!(to_positional(Dialect::Sqlite, "SELECT $x").is_err());
        assert!(to_positional(Dialect::MySql, "SELECT @x").is_ok());
        assert!(to_positional(Dialect::MySql, "SELECT 1 := 2").is_ok());
    }

    #[test]
    fn identifiers() {
        assert_eq!(quote_path("t.c", false).unwrap(), "`t`.`c`");
        assert_eq!(quote_path("t.*", true).unwrap(), "`t`.*");
        assert_eq!(
            quote_aliased("Persons AS p", false).unwrap(),
            "`Persons` AS `p`"
        );
        for bad in ["", "a`b", "a\"b", "a b;", "x--", "a.b.c.d", "*x", "t.*"] {
            assert!(quote_path(bad, false).is_err(), "{bad}");
        }
        assert_eq!(quote_order("did desc", false).unwrap(), "`did` DESC");
    }

    #[test]
    fn join_conditions() {
        assert_eq!(
            join_condition(Dialect::MySql, "table1.uid = table2.uid"),
            "`table1`.`uid` = `table2`.`uid`"
        );
        assert_eq!(
            join_condition(Dialect::Sqlite, "a.x=b.x and a.y <= b.y"),
            "`a`.`x` = `b`.`x` AND `a`.`y` <= `b`.`y`"
        );
        assert_eq!(
            join_condition(Dialect::MySql, "a.x = b.x + 1"),
            "a.x = b.x + 1"
        );
        assert_eq!(
            join_condition(Dialect::MySql, "a.x > 50 AND a.y = 'q' AND a.z < -1.5e-3"),
            "`a`.`x` > 50 AND `a`.`y` = 'q' AND `a`.`z` < -1.5e-3"
        );
        // Not the simple form: kept as written.
        for raw in [
            "a.x = b.x AND",
            "a.x = 1e",
            "a.x = -",
            "a.x = .",
            "a.x = 'open",
        ] {
            assert_eq!(join_condition(Dialect::Sqlite, raw), raw);
        }
    }

    #[test]
    fn numbers() {
        for (text, len) in [
            ("50", Some(2)),
            ("-2.5)", Some(4)),
            (".5", Some(2)),
            ("1.", Some(2)),
            ("1e3", Some(3)),
            ("1E+3x", Some(4)),
            ("1e", Some(1)),
            ("+", None),
            (".", None),
            ("-.e", None),
        ] {
            assert_eq!(number_len(text.as_bytes()), len, "{text}");
        }
    }

    /// Arbitrary text (quotes, colons, comments, multi-byte characters in any
    /// order) never panics the lexer, and whatever it accepts has exactly
    /// one `?` per name outside the skipped regions.
    #[test]
    fn lexer_never_panics() {
        let pieces = [
            "'", "\"", "`", "[", "]", ":", "::", ":a", ":_b1", "?", "@x", "$y", "--", "-- ", "#",
            "/*", "*/", "\\", "\n", " ", "x", "é", "😀", "SELECT", "=", "1",
        ];
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..20_000 {
            let mut sql = String::new();
            for _ in 0..(seed % 12) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                sql.push_str(pieces[(seed % pieces.len() as u64) as usize]);
            }
            for d in [Dialect::MySql, Dialect::Sqlite] {
                if let Ok(p) = to_positional(d, &sql) {
                    let marks = p.sql.matches('?').count() - sql.matches('?').count();
                    assert_eq!(marks, p.names.len(), "{sql:?} -> {p:?}");
                }
                let _ = is_read(&sql);
                let _ = join_condition(d, &sql);
                let _ = rowless_keyword(d, &sql);
            }
        }
    }

    #[test]
    fn rowless_statements() {
        for d in [Dialect::MySql, Dialect::Sqlite] {
            for (sql, kw) in [
                ("INSERT INTO t (a) VALUES (:a)", Some("INSERT")),
                ("  /* x */ update t set a = 1", Some("UPDATE")),
                ("-- c\nDELETE FROM t WHERE a = 'returning'", Some("DELETE")),
                ("REPLACE INTO t VALUES (1)", Some("REPLACE")),
                ("create table t (returning int)", Some("CREATE")),
                ("DROP TABLE t", Some("DROP")),
                (
                    "WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x",
                    Some("INSERT"),
                ),
                ("INSERT INTO t (a) VALUES (1) RETURNING id", None),
                ("DELETE FROM t RETURNING *", None),
                ("WITH d AS (DELETE FROM t) SELECT 1", None),
                ("SELECT 1", None),
                ("(SELECT 1)", None),
                ("SHOW TABLES", None),
                ("PRAGMA table_info(t)", None),
                ("EXPLAIN UPDATE t SET a = 1", None),
                ("UPDATE t SET a = :returning", Some("UPDATE")),
                ("", None),
            ] {
                assert_eq!(rowless_keyword(d, sql).as_deref(), kw, "{d:?}: {sql}");
            }
        }
    }

    #[test]
    fn reads() {
        assert!(is_read("SELECT 1"));
        assert!(is_read("  /* c */ (select 1)"));
        assert!(!is_read("UPDATE t SET a = 1"));
        assert!(!is_read("selector"));
        assert!(!is_read("INSERT INTO t SELECT 1"));
        assert!(!is_read("selec😀"));
        assert!(!is_read("😀😀😀"));
    }
}
