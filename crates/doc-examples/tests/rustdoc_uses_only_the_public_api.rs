//! The rustdoc examples of the framework's crates are compiled as doc-tests of those
//! crates, which can name every dependency of theirs; an application that depends only
//! on `switchboard` cannot. This test reads every example in `///` and `//!` comments
//! and fails on a path into a crate an application does not have, so an example copied
//! into an application compiles there. That covers `switchboard` and the two crates it
//! re-exports: their examples say `switchboard::db::…` and `switchboard::store::…`, never
//! `switchboard_db::…` or `switchboard_store::…` (those crates have `switchboard` as a
//! dev-dependency so their doc-tests can).

use std::path::{Path, PathBuf};

/// Crates the framework depends on that an application using only `switchboard` (plus
/// serde, tokio and anyhow, as docs/guide.md says) does not have. What it needs of them
/// is re-exported (`switchboard::Bytes`, `switchboard::async_trait`, ...).
const NOT_IN_AN_APPLICATION: &[&str] = &[
    "bytes",
    "futures",
    "futures_util",
    "tokio_util",
    "async_trait",
    "serde_json",
    "tracing",
    "toml",
    "rand",
    "sqlx",
    "rusqlite",
    "redis",
    "switchboard_store",
    "switchboard_db",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code lines of every example in the doc comments of `text`, with their line
/// numbers.
fn example_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_code = false;
    let mut rust = false;
    for (n, line) in text.lines().enumerate() {
        let t = line.trim_start();
        let Some(doc) = t.strip_prefix("///").or_else(|| t.strip_prefix("//!")) else {
            in_code = false;
            continue;
        };
        let doc = doc.strip_prefix(' ').unwrap_or(doc);
        if let Some(info) = doc.trim_start().strip_prefix("```") {
            if in_code {
                in_code = false;
            } else {
                in_code = true;
                // A fence with no language, or a Rust one, is compiled by rustdoc.
                rust = info.is_empty()
                    || info.split(',').any(|w| {
                        matches!(
                            w.trim(),
                            "rust" | "no_run" | "should_panic" | "compile_fail"
                        )
                    });
            }
            continue;
        }
        if in_code && rust {
            let code = doc.trim_start();
            let code = code.strip_prefix("# ").unwrap_or(code);
            out.push((n + 1, code.to_string()));
        }
    }
    out
}

#[test]
fn rustdoc_examples_name_no_crate_an_application_lacks() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    // The crate applications depend on, and the two it re-exports, which an application
    // reaches only through it, as `switchboard::db` and `switchboard::store`.
    let mut files = Vec::new();
    for krate in ["switchboard", "switchboard-db", "switchboard-store"] {
        let before = files.len();
        rust_files(&root.join("crates").join(krate).join("src"), &mut files);
        assert!(
            files.len() - before >= 3,
            "found only {} source files in crates/{krate}/src",
            files.len() - before
        );
    }
    let mut bad = Vec::new();
    let mut examples = 0;
    let mut examples_of = std::collections::BTreeMap::<&str, usize>::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let krate = ["switchboard-db", "switchboard-store", "switchboard"]
            .into_iter()
            .find(|k| file.to_string_lossy().contains(&format!("crates/{k}/")))
            .unwrap();
        for (n, code) in example_lines(&text) {
            examples += 1;
            *examples_of.entry(krate).or_default() += 1;
            for krate in NOT_IN_AN_APPLICATION {
                let used = code.contains(&format!("{krate}::"))
                    && !code.contains(&format!("switchboard::{krate}::"))
                    && !code.contains(&format!("_{krate}::"));
                if used {
                    bad.push(format!("{}:{n}: `{krate}::` in {code:?}", file.display()));
                }
            }
        }
    }
    assert!(examples > 10, "found only {examples} example lines");
    for krate in ["switchboard", "switchboard-db", "switchboard-store"] {
        assert!(
            examples_of.get(krate).is_some_and(|&n| n >= 5),
            "found only {:?} example lines in crates/{krate}/src",
            examples_of.get(krate)
        );
    }
    assert!(
        bad.is_empty(),
        "rustdoc examples name crates an application does not depend on (use the \
         re-exports, e.g. switchboard::Bytes):\n{}",
        bad.join("\n")
    );
}
