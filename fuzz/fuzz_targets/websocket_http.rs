//! The HTTP phase of a `websocket` listener: the request head parsed from a hostile byte
//! stream (`protocol::websocket::parse_request`), then what the gateway answers (the
//! page, an HTTP error, a refused upgrade, or the upgrade with the request the
//! application sees), through `switchboard_core::http::answer_request`.
//!
//! Input: a byte that picks how the stream is cut into reads, then the stream. Checked,
//! beyond "never panics":
//! - the parser consumes nothing until the head is complete, then the head only, and
//!   never reserves memory;
//! - the stream cut into small reads parses to exactly what it parses to whole;
//! - every answer is a well-formed HTTP/1.1 response head with a known status, and an
//!   error's status is a client error or 505;
//! - the request as the application gets it (its JSON read back by the worker) keeps
//!   the path, query and headers, and its helpers do not panic.
#![no_main]

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use switchboard_core::config::ListenerConfig;
use switchboard_core::http::{answer_request, HttpAnswer};
use switchboard_core::protocol::websocket::{self, HttpError, HttpRequest, MAX_REQUEST_HEAD};
use switchboard_core::{Assets, ClientProtocol, WebSocketRequest};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let [cut, stream @ ..] = data else {
        return;
    };
    let whole = parse(stream, stream.len().max(1));
    let step = usize::from(*cut % 64) + 1;
    assert_eq!(whole, parse(stream, step), "read {step} bytes at a time");

    let mut buf = BytesMut::from(stream);
    match websocket_http(&mut buf) {
        Ok(None) => assert_eq!(whole, Ok(None)),
        Ok(Some(HttpOutcome::Page(page))) => response(&page),
        Ok(Some(HttpOutcome::Refused(e))) | Err(e) => error(&e),
        Ok(Some(HttpOutcome::Upgrade(answer, request))) => {
            response(&answer);
            assert!(answer.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
            let Ok(Some(parsed)) = &whole else {
                panic!("an upgrade from {whole:?}");
            };
            assert_eq!(
                (&request.path, &request.query, &request.headers),
                (&parsed.path, &parsed.query, &parsed.headers)
            );
            let _ = request.query_param("token");
            let _ = request.client_ip();
            if let Some(ip) = &request.forwarded_for {
                assert!(ip.parse::<std::net::IpAddr>().is_ok(), "{ip}");
            }
        }
    }
});

/// The page the fuzzed listener serves at `/` (and `/index.html`).
const PAGE: &[u8] = b"<!doctype html><title>chat</title>";

/// What the HTTP phase of a `websocket` listener answered one request with.
#[derive(Debug)]
enum HttpOutcome {
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
fn websocket_http(buf: &mut BytesMut) -> Result<Option<HttpOutcome>, HttpError> {
    let Some(request) = websocket::parse_request(buf)? else {
        return Ok(None);
    };
    let config = ListenerConfig {
        protocol: ClientProtocol::WebSocket,
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

/// An HTTP error answer: a client error (or 505), written as a response.
fn error(e: &HttpError) {
    assert!(
        (400..500).contains(&e.status) || e.status == 505,
        "status {}",
        e.status
    );
    response(&websocket::error_response(e));
}

/// A response starts with a status line of a known status and has a complete head.
fn response(bytes: &[u8]) {
    let head_end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response head");
    let head = std::str::from_utf8(&bytes[..head_end]).expect("a UTF-8 head");
    let status: u16 = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    if status != 101 {
        assert_ne!(websocket::reason_phrase(status), "Error", "status {status}");
    }
    // Every line of the head is a status line or a `Name: value` header: nothing from
    // the request can end a header early.
    for line in head.split("\r\n").skip(1) {
        assert!(line.contains(": ") && !line.contains('\n'), "{line:?}");
    }
}

/// Parses the head of `stream` given `step` bytes at a time.
fn parse(stream: &[u8], step: usize) -> Result<Option<HttpRequest>, HttpError> {
    let mut buf = BytesMut::new();
    for chunk in stream.chunks(step) {
        buf.extend_from_slice(chunk);
        let (len, capacity) = (buf.len(), buf.capacity());
        let result = websocket::parse_request(&mut buf);
        assert!(buf.capacity() <= capacity, "parse reserved memory");
        match result {
            Ok(None) => {
                assert_eq!(buf.len(), len, "Ok(None) consumed bytes");
                assert!(len <= MAX_REQUEST_HEAD, "an incomplete head over the bound");
            }
            Ok(Some(req)) => {
                assert!(len - buf.len() <= MAX_REQUEST_HEAD, "a head over the bound");
                return Ok(Some(req));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}
