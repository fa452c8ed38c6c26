//! The one error type of the store crate.

/// What can go wrong in a store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The key breaks the key rules (length, whitespace, control characters).
    #[error("invalid store key {key:?}: {reason}")]
    InvalidKey {
        /// The offending key (shortened / escaped for logs).
        key: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// `increment` met a value that is not a decimal integer.
    #[error("store key {key:?} does not hold a number")]
    NotANumber {
        /// The key whose value is not a number.
        key: String,
    },
    /// A stored value could not be decoded (corrupt or written by someone else).
    #[error("store key {key:?} holds a value that does not decode: {reason}")]
    Corrupt {
        /// The key whose value is bad.
        key: String,
        /// The decoder's complaint.
        reason: String,
    },
    /// The backend cannot do this operation.
    #[error("the {backend} store does not support {operation}")]
    Unsupported {
        /// Backend name.
        backend: &'static str,
        /// The operation asked for.
        operation: &'static str,
    },
    /// The backend could not be reached or answered with an error.
    #[error("{backend} store at {target} failed: {reason}")]
    Backend {
        /// Backend name.
        backend: &'static str,
        /// Server address or file path.
        target: String,
        /// What the backend or the network said.
        reason: String,
    },
    /// The configuration is invalid.
    #[error("invalid store configuration: {0}")]
    Config(String),
    /// The configuration names a backend that this binary was built without.
    #[error(
        "store backend \"{backend}\" is not compiled into this binary; enable the \
         switchboard feature \"{switchboard_feature}\" (or the switchboard-store \
         feature \"{feature}\")"
    )]
    NotCompiled {
        /// The backend, as written in `[store] backend = ...`.
        backend: &'static str,
        /// The `switchboard-store` cargo feature that compiles it in.
        feature: &'static str,
        /// The `switchboard` cargo feature that forwards to it.
        switchboard_feature: &'static str,
    },
}
