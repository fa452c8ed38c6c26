//! Configuration overrides (`--set key=value`, `SWITCHBOARD__…` variables):
//! `config::apply_override` on arbitrary keys and values over an arbitrary document, and
//! `Config::from_toml_with`, which applies them and loads the result.
//!
//! Input: NUL-separated fields: the TOML document, then key, value, key, value, ...
//! Checked, beyond "never panics": an override that applies puts its value at its key
//! (read back through the dotted path), and the document still prints as TOML.
#![no_main]

use switchboard_core::config::apply_override;
use switchboard_core::Config;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut fields = text.split('\0');
    let doc_text = fields.next().unwrap_or_default();
    let rest: Vec<&str> = fields.collect();
    let overrides: Vec<(String, String)> = rest
        .chunks(2)
        .map(|kv| {
            (
                kv[0].to_owned(),
                kv.get(1).copied().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let _ = Config::from_toml_with(doc_text, None, &overrides);

    let Ok(mut doc) = toml::from_str::<toml::Table>(doc_text) else {
        return;
    };
    for (key, value) in &overrides {
        if apply_override(&mut doc, key, value).is_ok() {
            let got = lookup(&doc, key).expect("an applied override is at its key");
            if let toml::Value::String(s) = got {
                // A value that is not TOML is taken as a string, as written.
                let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"));
                assert!(parsed.is_ok() || s == value, "{s:?} != {value:?}");
            }
        }
    }
    let _ = toml::to_string(&doc);
});

/// The value at a dotted path (list elements by index).
fn lookup<'a>(doc: &'a toml::Table, key: &str) -> Option<&'a toml::Value> {
    let mut parts = key.split('.');
    let mut node = doc.get(parts.next()?)?;
    for part in parts {
        node = match node {
            toml::Value::Table(t) => t.get(part)?,
            toml::Value::Array(a) => a.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(node)
}
