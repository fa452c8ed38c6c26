//! The configuration loader: `Config::from_toml` (TOML, serde with
//! `deny_unknown_fields`, then `validate`) on arbitrary text, as `config check` and
//! `start` read a file.
//!
//! Checked, beyond "never panics": a configuration that loads prints (`to_toml`) to text
//! that loads back to the same configuration, and its derived views (secrets hidden,
//! the `[db]` section typed, the admin token, the secret warnings) do not panic.
#![no_main]

use switchboard_core::Config;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::from_toml(text, None) else {
        return;
    };
    let printed = config.to_toml();
    match Config::from_toml(&printed, None) {
        Ok(again) => assert_eq!(again, config, "printed as:\n{printed}"),
        Err(e) => panic!("a loaded configuration prints to text that fails: {e}\n{printed}"),
    }
    let _ = config.with_secrets_hidden().to_toml();
    let _ = config.db_config();
    let _ = config.admin_token();
    let _ = config.secret_warning();
    let _ = config.internal_off_loopback();
});
