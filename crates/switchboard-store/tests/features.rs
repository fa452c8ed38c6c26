//! Every backend but `memory` is a cargo feature. Whatever the build, each one still
//! parses in configuration; opening one that was compiled out is a clear error naming
//! the feature to enable, and opening one compiled in works.

use switchboard_store::{open, StoreConfig, StoreError};

#[tokio::test]
async fn a_backend_compiled_out_names_its_feature() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("store.sqlite");
    let cases = [
        (
            serde_json::json!({"backend": "file", "path": path}),
            "file",
            "file-store",
            cfg!(feature = "file"),
        ),
        (
            serde_json::json!({"backend": "redis", "url": "redis://127.0.0.1:6379"}),
            "redis",
            "redis",
            cfg!(feature = "redis"),
        ),
        (
            serde_json::json!({"backend": "redis", "cluster": ["redis://127.0.0.1:7001"]}),
            "redis",
            "redis",
            cfg!(feature = "redis"),
        ),
        (
            serde_json::json!({"backend": "memcached", "servers": ["127.0.0.1:11211"]}),
            "memcached",
            "memcached",
            cfg!(feature = "memcached"),
        ),
    ];
    for (json, feature, switchboard_feature, compiled) in cases {
        let config: StoreConfig = serde_json::from_value(json.clone())
            .unwrap_or_else(|e| panic!("{json} must parse in every build: {e}"));
        let backend = config.backend_name();
        let info = config.feature().expect("a feature-gated backend");
        assert_eq!(
            (info.feature, info.switchboard_feature, info.compiled),
            (feature, switchboard_feature, compiled),
            "{json}"
        );
        match open(&config).await {
            Ok(store) => {
                assert!(compiled, "{json}: opened without its feature");
                assert_eq!(store.backend(), backend);
            }
            Err(e @ StoreError::NotCompiled { .. }) => {
                assert!(!compiled, "{json}: compiled in, yet {e}");
                assert_eq!(
                    e.to_string(),
                    format!(
                        "store backend \"{backend}\" is not compiled into this binary; \
                         enable the switchboard feature \"{switchboard_feature}\" \
                         (or the switchboard-store feature \"{feature}\")"
                    )
                );
            }
            Err(e) => panic!("{json}: {e}"),
        }
    }
    // The memory backend is always there.
    assert!(StoreConfig::Memory.feature().is_none());
    assert!(open(&StoreConfig::Memory).await.is_ok());
}
