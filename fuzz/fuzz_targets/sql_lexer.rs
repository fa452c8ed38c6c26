//! The Db builder's SQL lexer and identifier quoting (`switchboard_db::sql`, reached
//! through `switchboard_db::fuzzing`): `:name` parameters rewritten to `?`, the read /
//! row-less statement classification, join conditions, and quoted names. Their input
//! is the application's SQL and names, which may come from its users.
//!
//! Input: a byte of options (dialect, `*` allowed, `DESC` by default), then the text.
//! Checked, beyond "never panics":
//! - `:name` rewriting keeps everything else verbatim: the output is the input with
//!   each name replaced by `?`, and the names are ASCII identifiers;
//! - a quoted name holds only letters, digits, `_`, `$`, `.`, `*` and its backtick
//!   quotes, so a name can never end its quote early (no injection through a name).
#![no_main]

use switchboard_db::fuzzing as db;
use switchboard_db::Dialect;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let [options, text @ ..] = data else {
        return;
    };
    let Ok(sql) = std::str::from_utf8(text) else {
        return;
    };
    let dialect = if options & 1 == 0 {
        Dialect::MySql
    } else {
        Dialect::Sqlite
    };
    let allow_star = options & 2 != 0;
    let default_desc = options & 4 != 0;

    if let Ok((positional, names)) = db::to_positional(dialect, sql) {
        for name in &names {
            assert!(!name.is_empty());
            assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
            assert!(!name.as_bytes()[0].is_ascii_digit());
        }
        let removed: usize = names.iter().map(|n| n.len()).sum();
        assert_eq!(
            positional.len(),
            sql.len() - removed,
            "{sql:?} -> {positional:?}"
        );
        if !sql.contains(':') {
            assert_eq!(positional, sql);
        }
    }
    let _ = db::is_read(sql);
    let _ = db::rowless_keyword(dialect, sql);
    let _ = db::join_condition(dialect, sql);
    for quoted in [
        db::quote_ident(sql),
        db::quote_path(sql, allow_star),
        db::quote_aliased(sql, allow_star),
        db::quote_order(sql, default_desc),
    ]
    .into_iter()
    .flatten()
    {
        let name_chars = |c: char| c.is_alphanumeric() || "_$.*` ".contains(c);
        assert!(quoted.chars().all(name_chars), "{sql:?} -> {quoted:?}");
        assert_eq!(quoted.matches('`').count() % 2, 0, "{sql:?} -> {quoted:?}");
    }
    if let Ok(quoted) = db::quote_ident(sql) {
        assert_eq!(quoted, format!("`{sql}`"));
    }
});
