//! # Switchboard
//!
//! A framework and runtime for services that hold many long-lived connections (chat,
//! game back ends, enterprise messaging, device links), in the gateway/worker model:
//!
//! - **gateways** hold client connections (text lines, length-prefixed frames) and never
//!   run business code;
//! - stateless **workers** run the application's [`Events`] and push to clients by
//!   client id, uid, group or to everybody through the [`Gateway`] API, which also works
//!   outside workers (a web back end pushing to users);
//! - a **supervisor** starts, watches and stops them; the **store** (file, memcached,
//!   Redis) is how they find each other.
//!
//! An application is one binary: it implements [`Events`] and hands it to [`App`].
//!
//! ```no_run
//! use switchboard::{async_trait, App, Context, Events, HandlerResult, Message};
//!
//! struct Echo;
//!
//! #[async_trait]
//! impl Events for Echo {
//!     async fn on_message(&self, ctx: &mut Context, message: Message) -> HandlerResult {
//!         ctx.reply(message).await?;
//!         Ok(())
//!     }
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     App::new("echo", || Echo)
//!         .version(env!("CARGO_PKG_VERSION"))
//!         .run()
//! }
//! ```
//!
//! See `docs/guide.md` for a tour and `docs/architecture.md` for the design.

pub mod admin;
pub mod alloc;
pub mod auth;
pub mod cli;
pub mod client;
pub mod discovery;
pub mod gateway;
pub mod metrics;
pub mod process;
pub mod statistic;
pub mod stats;
pub mod supervisor;
pub mod transport;
pub mod worker;

pub use async_trait::async_trait;
pub use bytes::Bytes;
pub use cli::App;
pub use client::{ApiError, Gateway};
pub use statistic::Statistic;
pub use switchboard_core::{config, protocol};
pub use switchboard_core::{
    Asset, Assets, ClientId, ClientProtocol, Config, Message, NotText, ParseClientIdError,
    PerProtocol, Refuse, WebSocketRequest,
};
pub use switchboard_db as db;
pub use switchboard_store as store;
pub use worker::{Context, Events, HandlerResult};

/// A client's session: a small JSON object kept on the gateway and shipped with every
/// event of that client.
pub type Session = serde_json::Map<String, serde_json::Value>;

/// Merges `update_session` changes into `session`: a `null` value removes its key.
pub(crate) fn merge_session(session: &mut Session, changes: Session) {
    for (key, value) in changes {
        if value.is_null() {
            session.remove(&key);
        } else {
            session.insert(key, value);
        }
    }
}

/// Errors of the runtime (starting processes, binding sockets, reaching the store).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] switchboard_store::StoreError),
    /// The Db module refused its configuration.
    #[error("db: {0}")]
    Db(#[from] switchboard_db::DbError),
    /// A Gateway API call failed.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// An I/O operation failed; `context` says which.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Anything else, described.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// An I/O error with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// Opens the deployment's store (a relative file path is resolved against `data_dir`),
/// with its calls timed for `/metrics` ([`metrics::store`]).
pub async fn open_store(config: &Config) -> Result<switchboard_store::SharedStore, Error> {
    let store = switchboard_store::open(&config.resolved_store()).await?;
    Ok(if config.metrics.enabled {
        metrics::store::Instrumented::wrap(store)
    } else {
        store
    })
}

/// Sets up the deployment's named database instances (connections are made lazily).
pub fn open_db(config: &Config) -> Result<switchboard_db::Db, Error> {
    Ok(switchboard_db::Db::new(config.db_config()?)?)
}

/// A counting allocator for the unit tests: how many allocations a piece of code makes
/// on this thread (the fan-out path must make none per recipient). The same file as
/// switchboard-core's.
#[cfg(test)]
#[path = "../../switchboard-core/src/alloc_count.rs"]
pub(crate) mod alloc_count;
