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
mod assets;
pub mod auth;
pub mod cli;
pub mod client;
mod client_id;
pub mod config;
pub mod discovery;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
mod message;
pub mod metrics;
pub mod process;
pub mod protocol;
mod request;
pub mod statistic;
pub mod stats;
pub mod supervisor;
pub mod transport;
pub mod worker;

pub use assets::{Asset, Assets};
pub use async_trait::async_trait;
pub use bytes::Bytes;
pub use cli::App;
pub use client::{ApiError, Gateway};
pub use client_id::{ClientId, ParseClientIdError};
pub use config::Config;
pub use message::{Message, NotText, PerProtocol};
pub use protocol::ClientProtocol;
pub use request::{Refuse, WebSocketRequest};
pub use statistic::Statistic;
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
/// on this thread (the fan-out path must make none per recipient).
#[cfg(test)]
pub(crate) mod alloc_count {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    struct Counting;

    thread_local! {
        static COUNT: Cell<u64> = const { Cell::new(0) };
        static LARGEST: Cell<usize> = const { Cell::new(0) };
    }

    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let _ = COUNT.try_with(|c| c.set(c.get() + 1));
            let _ = LARGEST.try_with(|l| l.set(l.get().max(layout.size())));
            // SAFETY: forwarded unchanged to the system allocator.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: forwarded unchanged to the system allocator.
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            let _ = COUNT.try_with(|c| c.set(c.get() + 1));
            // SAFETY: forwarded unchanged to the system allocator.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;

    /// Runs `f`; returns the allocations (and reallocations) it made on this thread,
    /// and its result.
    pub fn count<T>(f: impl FnOnce() -> T) -> (u64, T) {
        let before = COUNT.with(Cell::get);
        let out = f();
        (COUNT.with(Cell::get) - before, out)
    }

    /// Runs `f`; returns the size of the largest allocation it made on this thread.
    pub fn largest(f: impl FnOnce()) -> usize {
        LARGEST.with(|l| l.set(0));
        f();
        LARGEST.with(Cell::get)
    }
}
