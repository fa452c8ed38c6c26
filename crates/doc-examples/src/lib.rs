//! Every Rust example of the README and of `docs/`, compiled (and, where they do not
//! start servers, run) as doc-tests of a crate that depends on `switchboard` and on
//! nothing an application would not have: `cargo test --doc -p doc-examples`.
//!
//! The rustdoc examples of `switchboard` itself are doc-tests of that crate, which sees
//! its own dependencies; `tests/rustdoc_uses_only_the_public_api.rs` checks that they
//! name no crate an application lacks.

#![doc = include_str!("../../../README.md")]
// The included pages are written for GitHub's markdown, not rustdoc's house style.
#![allow(clippy::doc_lazy_continuation, clippy::doc_overindented_list_items)]

#[doc = include_str!("../../../docs/guide.md")]
pub mod guide {}

#[doc = include_str!("../../../docs/architecture.md")]
pub mod architecture {}

#[doc = include_str!("../../../docs/db.md")]
pub mod db {}
