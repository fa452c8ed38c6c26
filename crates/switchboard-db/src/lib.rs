//! Db (placeholder until the Db crate lands).
