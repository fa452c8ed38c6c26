//! Wire protocols: the internal gateway↔worker protocol and the client-facing codecs.

pub mod client;
pub mod internal;

pub use client::{ClientCodecError, ClientProtocol};
