//! The push API's OpenAPI document (`docs/openapi.json`, served at `/openapi.json`):
//! it parses as OpenAPI 3 (the `openapiv3` crate's typed model, and the reference
//! validator `openapi-spec-validator` where it is installed), and it lists exactly the
//! routes the server dispatches — [`switchboard::admin::push::ROUTES`], the one table
//! the admin listener routes push requests from — with the same methods.

use std::collections::BTreeSet;

use openapiv3::{OpenAPI, ReferenceOr};
use switchboard::admin::push::{OPENAPI, ROUTES};

fn document() -> OpenAPI {
    serde_json::from_str(OPENAPI)
        .unwrap_or_else(|e| panic!("docs/openapi.json is not OpenAPI 3: {e}"))
}

#[test]
fn the_document_is_openapi_3_and_lists_every_route_of_the_server() {
    let doc = document();
    assert!(doc.openapi.starts_with("3.0"), "{}", doc.openapi);
    let mut documented = BTreeSet::new();
    for (path, item) in doc.paths.paths.iter() {
        let ReferenceOr::Item(item) = item else {
            panic!("{path}: a $ref path item");
        };
        for (method, op) in item.iter() {
            documented.insert((method.to_uppercase(), path.clone()));
            assert!(
                op.responses
                    .responses
                    .contains_key(&openapiv3::StatusCode::Code(200)),
                "{method} {path} documents no 200"
            );
            assert!(
                op.operation_id.is_some(),
                "{method} {path} has no operationId"
            );
        }
    }
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    let missing: Vec<_> = served.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&served).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "served but not documented: {missing:?}; documented but not served: {extra:?}"
    );
}

#[test]
fn every_reference_resolves() {
    let doc = document();
    let components = doc.components.as_ref().expect("components");
    let text = OPENAPI;
    let mut rest = text;
    let mut refs = BTreeSet::new();
    while let Some(i) = rest.find("\"$ref\": \"") {
        rest = &rest[i + 9..];
        let end = rest.find('"').unwrap();
        refs.insert(rest[..end].to_string());
        rest = &rest[end..];
    }
    assert!(!refs.is_empty());
    for r in refs {
        let name = |prefix: &str| r.strip_prefix(prefix).map(str::to_string);
        let found = if let Some(n) = name("#/components/schemas/") {
            components.schemas.contains_key(&n)
        } else if let Some(n) = name("#/components/responses/") {
            components.responses.contains_key(&n)
        } else {
            false
        };
        assert!(found, "{r} does not resolve");
    }
}

/// The reference validator (Python's `openapi-spec-validator`, on this project's
/// machines) checks the document against the OpenAPI 3 schema, where it is installed.
#[test]
fn the_reference_validator_accepts_the_document() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
    match std::process::Command::new("openapi-spec-validator")
        .arg(path)
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "openapi-spec-validator refuses docs/openapi.json:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("openapi-spec-validator is not installed in CI: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED: openapi-spec-validator not found ({e}); the typed parse still ran")
        }
    }
}
