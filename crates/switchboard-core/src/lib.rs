//! # Switchboard's core: everything that does no I/O
//!
//! The message and client id types, the wire codecs (the client protocols, WebSocket
//! framing, the internal gateway↔worker protocol), the HTTP answer of a `websocket`
//! listener, and the configuration: bytes or text in, values out, no socket, no task,
//! no clock. The runtime (`switchboard`) does the I/O around them and re-exports all of
//! it; applications use it from there (`switchboard::Message`,
//! `switchboard::protocol::…`, `switchboard::config::…`).
//!
//! It is a crate of its own so that what needs only the codecs and the configuration
//! builds without the runtime: the fuzz targets (`fuzz/`) drive every decoder here.
//!
//! ```
//! use switchboard_core::protocol::{ClientCodec, ClientProtocol, Decoded};
//!
//! let mut codec = ClientCodec::new(ClientProtocol::Text);
//! let mut buf = bytes::BytesMut::from(&b"hello\r\nwor"[..]);
//! match codec.decode(&mut buf, 1024) {
//!     Ok(Some(Decoded::Message(m))) => assert_eq!(m.text(), Ok("hello")),
//!     other => panic!("{other:?}"),
//! }
//! // The rest of the stream waits for its line's end.
//! assert!(matches!(codec.decode(&mut buf, 1024), Ok(None)));
//! ```

mod assets;
mod client_id;
pub mod config;
mod duration;
pub mod http;
mod message;
pub mod protocol;
mod request;

pub use assets::{Asset, Assets};
pub use client_id::{ClientId, ParseClientIdError};
pub use config::Config;
pub use message::{Message, NotText, PerProtocol};
pub use protocol::ClientProtocol;
pub use request::{Refuse, WebSocketRequest};

/// A counting allocator for the unit tests: how many allocations a piece of code makes
/// on this thread (the encoders must make one per frame, or none).
#[cfg(test)]
pub(crate) mod alloc_count;
