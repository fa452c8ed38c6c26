//! Entry points for the fuzz targets (`fuzz/`), built only with the `fuzzing` feature:
//! the code they reach is private, or needs a listener around it. Not an API: hidden
//! from the docs, and free to change with the code it drives.
//!
//! The decoders that are public already ([`crate::protocol::internal::decode`],
//! [`crate::protocol::ClientCodec`], [`crate::protocol::websocket`], [`crate::Config`],
//! [`crate::config::apply_override`]) are fuzzed through their public API.

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};

use crate::config::ListenerConfig;
use crate::gateway::{answer_request, HttpAnswer};
use crate::protocol::websocket::{self, HttpError};
use crate::{Assets, WebSocketRequest};

pub use switchboard_db::fuzzing as db;

/// The page the fuzzed listener serves at `/` (and `/index.html`).
pub const PAGE: &[u8] = b"<!doctype html><title>chat</title>";

/// What the HTTP phase of a `websocket` listener answered one request with.
#[derive(Debug)]
pub enum HttpOutcome {
    /// A file or an HTTP error, then close.
    Page(Bytes),
    /// An upgrade refused (status and reason) before the application is asked.
    Refused(HttpError),
    /// An upgrade put to the application: the `101` answer, and the request as the
    /// application gets it.
    Upgrade(Bytes, WebSocketRequest),
}

/// Runs the HTTP phase of a `websocket` listener over the bytes at the front of `buf`,
/// as the gateway's connection task does: [`websocket::parse_request`], then the
/// answer (a page, a refusal, or the upgrade to put to the application). The listener
/// allows the origin `https://chat.example.com` and trusts the proxies of 10.0.0.0/8;
/// the peer is `10.1.2.3:4000`, one of them, so `X-Forwarded-For` is read.
///
/// `Ok(None)` while the request head is incomplete.
pub fn websocket_http(buf: &mut BytesMut) -> Result<Option<HttpOutcome>, HttpError> {
    let Some(request) = websocket::parse_request(buf)? else {
        return Ok(None);
    };
    let config = ListenerConfig {
        protocol: crate::ClientProtocol::WebSocket,
        allowed_origins: vec!["https://chat.example.com".into()],
        trusted_proxies: vec!["10.0.0.0/8".parse().expect("a valid network")],
        ..ListenerConfig::default()
    };
    let mut assets = Assets::default();
    assets.add("/", PAGE);
    let peer = SocketAddr::from(([10, 1, 2, 3], 4000));
    Ok(Some(
        match answer_request(&config, &assets, peer, request) {
            HttpAnswer::Page(page) => HttpOutcome::Page(page),
            HttpAnswer::Refused { response, .. } => HttpOutcome::Refused(response),
            HttpAnswer::Upgrade { accept, json } => {
                let request = serde_json::from_slice(&json)
                    .expect("the handshake event's JSON is read back by the worker");
                HttpOutcome::Upgrade(websocket::upgrade_response(&accept), request)
            }
        },
    ))
}
