//! Wire protocols: the internal gateway↔worker protocol and the client-facing codecs.

pub mod client;
pub mod internal;
pub mod websocket;

pub use client::{ClientCodec, ClientCodecError, ClientProtocol, Decoded};
