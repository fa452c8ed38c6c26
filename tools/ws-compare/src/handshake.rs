//! The server side of the WebSocket opening handshake (RFC 6455 §4.2), over a
//! readiness-based read that holds a buffer only while a request is arriving. Two
//! parsers of the same bytes:
//! - [`tungstenite_upgrade`]: tungstenite's own, sans-IO through its public API
//!   (`handshake::machine::TryParse::try_parse` for `handshake::server::Request`,
//!   `handshake::server::create_response`, `handshake::server::write_response`); used
//!   by the sans-IO prototype;
//! - [`parse_upgrade`]: `httparse` directly, the accept key from
//!   `tungstenite::handshake::derive_accept_key`; used by fastwebsockets without hyper.

use anyhow::{bail, Context};
use bytes::{Buf, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Largest upgrade request accepted (browsers send well under 2 KiB).
pub const MAX_REQUEST: usize = 8 << 10;
/// First read of a request.
const FIRST_READ: usize = 2 << 10;

const BAD_REQUEST: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

/// Why an upgrade request was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    TooLarge,
    Malformed,
    NotGet,
    NotUpgrade,
    Version,
    NoKey,
}

/// Does the comma-separated header value `value` hold `token` (case-insensitive)?
fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Parses the upgrade request at the start of `buf`. `Ok(None)`: incomplete.
/// `Ok(Some((response, consumed)))`: the 101 response to send and the request's length.
pub fn parse_upgrade(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, Refused> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let consumed = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_REQUEST => return Err(Refused::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(Refused::Malformed),
    };
    if req.method != Some("GET") || req.version != Some(1) {
        return Err(Refused::NotGet);
    }
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    let upgrade = header("upgrade").is_some_and(|v| has_token(v, "websocket"));
    let connection = header("connection").is_some_and(|v| has_token(v, "upgrade"));
    if !upgrade || !connection {
        return Err(Refused::NotUpgrade);
    }
    if header("sec-websocket-version").map(<[u8]>::trim_ascii) != Some(b"13") {
        return Err(Refused::Version);
    }
    // A base64 nonce of 16 bytes is 24 characters.
    let key = header("sec-websocket-key")
        .map(<[u8]>::trim_ascii)
        .filter(|k| k.len() == 24)
        .ok_or(Refused::NoKey)?;
    let accept = tungstenite::handshake::derive_accept_key(key);
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    Ok(Some((response.into_bytes(), consumed)))
}

/// [`parse_upgrade`] with tungstenite's handshake functions instead: they check the same
/// (GET, HTTP/1.1, `Connection: Upgrade`, `Upgrade: websocket`, version 13, a key of 16
/// base64 bytes) and build the response through the `http` crate.
pub fn tungstenite_upgrade(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, Refused> {
    use tungstenite::handshake::machine::TryParse;
    use tungstenite::handshake::server::{create_response, write_response, Request};
    let (consumed, request) = match Request::try_parse(buf) {
        Ok(Some(parsed)) => parsed,
        Ok(None) if buf.len() >= MAX_REQUEST => return Err(Refused::TooLarge),
        Ok(None) => return Ok(None),
        Err(_) => return Err(Refused::Malformed),
    };
    let response = create_response(&request).map_err(|_| Refused::NotUpgrade)?;
    let mut out = Vec::with_capacity(160);
    write_response(&mut out, &response).map_err(|_| Refused::Malformed)?;
    Ok(Some((out, consumed)))
}

/// A parser of upgrade requests: `Ok(None)` incomplete, else the response and the
/// request's length.
pub type Parser = fn(&[u8]) -> Result<Option<(Vec<u8>, usize)>, Refused>;

/// Reads the upgrade request from `stream` (holding a buffer only while it arrives),
/// answers it, and returns the bytes that followed the request (frames the client
/// sent at once), usually none.
pub async fn accept(stream: &mut TcpStream, parse: Parser) -> anyhow::Result<BytesMut> {
    let mut buf = BytesMut::new();
    loop {
        stream.readable().await?;
        buf.reserve(if buf.is_empty() {
            FIRST_READ
        } else {
            buf.len()
        });
        match stream.try_read_buf(&mut buf) {
            Ok(0) => bail!("closed during the handshake"),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e).context("read the upgrade request"),
        }
        match parse(&buf) {
            Ok(None) => {}
            Ok(Some((response, consumed))) => {
                stream.write_all(&response).await?;
                buf.advance(consumed);
                return Ok(buf);
            }
            Err(why) => {
                let _ = stream.write_all(BAD_REQUEST).await;
                bail!("upgrade refused: {why:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQ: &str = "GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n\
        Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn rfc_example_key() {
        let (resp, n) = parse_upgrade(REQ.as_bytes()).unwrap().unwrap();
        assert_eq!(n, REQ.len());
        let resp = String::from_utf8(resp).unwrap();
        assert!(resp.starts_with("HTTP/1.1 101 "));
        assert!(resp.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    }

    #[test]
    fn tungstenite_parser_agrees() {
        let (resp, n) = tungstenite_upgrade(REQ.as_bytes()).unwrap().unwrap();
        assert_eq!(n, REQ.len());
        let resp = String::from_utf8(resp).unwrap();
        assert!(resp.starts_with("HTTP/1.1 101 "), "{resp}");
        assert!(resp.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{resp}");
        assert_eq!(tungstenite_upgrade(&REQ.as_bytes()[..40]), Ok(None));
        let no_version = REQ.replace("Sec-WebSocket-Version: 13\r\n", "");
        assert!(tungstenite_upgrade(no_version.as_bytes()).is_err());
        let bad_key = REQ.replace("dGhlIHNhbXBsZSBub25jZQ==", "not-a-key");
        assert!(tungstenite_upgrade(bad_key.as_bytes()).is_err());
    }

    #[test]
    fn partial_and_refused() {
        assert_eq!(parse_upgrade(&REQ.as_bytes()[..40]), Ok(None));
        let no_version = REQ.replace("Sec-WebSocket-Version: 13\r\n", "");
        assert_eq!(parse_upgrade(no_version.as_bytes()), Err(Refused::Version));
        let post = REQ.replace("GET", "POST");
        assert_eq!(parse_upgrade(post.as_bytes()), Err(Refused::NotGet));
        let plain = REQ.replace("Upgrade: websocket\r\n", "");
        assert_eq!(parse_upgrade(plain.as_bytes()), Err(Refused::NotUpgrade));
        assert_eq!(
            parse_upgrade(b"\x01\x02garbage\r\n\r\n"),
            Err(Refused::Malformed)
        );
        let huge = vec![b'a'; MAX_REQUEST];
        assert!(parse_upgrade(&huge).is_err());
    }
}
