//! WebSocket (RFC 6455) for `websocket` listeners: the HTTP request that opens a
//! connection, and the frame codec after the upgrade. Pure code over `BytesMut`; the
//! gateway's connection task does the I/O.
//!
//! Frame headers, opcodes, close codes and the `Sec-WebSocket-Accept` key come from
//! tungstenite's public frame layer (`tungstenite::protocol::frame`), the HTTP request
//! from `httparse`. What is ours is the state around them, kept small because most
//! clients are idle: the reassembly of fragmented messages (a buffer that exists only
//! while a fragmented message is arriving), the limits, and the close rules. The read
//! buffer belongs to the connection task, which frees it whenever it is empty, so an
//! idle WebSocket client holds no buffer at all.

use std::io::Cursor;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

use crate::Message;

/// Largest HTTP request head (request line + headers) accepted before the upgrade.
pub const MAX_REQUEST_HEAD: usize = 16 << 10;
/// Most headers in that request.
const MAX_HEADERS: usize = 64;
/// Largest control frame payload (RFC 6455 5.5).
const MAX_CONTROL: u64 = 125;

/// The HTTP request a client opened its connection with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// `GET`, `HEAD`, ...
    pub method: String,
    /// The path, without the query string (`/chat`).
    pub path: String,
    /// The query string without `?` (`room_id=2&token=x`), empty when there is none.
    pub query: String,
    /// Headers in order, names as sent.
    pub headers: Vec<(String, String)>,
}

impl HttpRequest {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether a comma-separated header holds `token` (case-insensitive), as
    /// `Connection: keep-alive, Upgrade` holds `upgrade`.
    fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// Whether this asks for a WebSocket upgrade (`Upgrade: websocket`).
    pub fn wants_upgrade(&self) -> bool {
        self.header_has_token("upgrade", "websocket")
    }

    /// Checks an upgrade request (RFC 6455 4.2.1) and returns the
    /// `Sec-WebSocket-Accept` value for it.
    pub fn upgrade_key(&self) -> Result<String, HttpError> {
        if self.method != "GET" {
            return Err(HttpError::new(405, "a WebSocket upgrade is a GET request"));
        }
        if !self.header_has_token("connection", "upgrade") {
            return Err(HttpError::new(400, "missing \"Connection: Upgrade\""));
        }
        if self.header("sec-websocket-version").map(str::trim) != Some("13") {
            return Err(HttpError::new(
                426,
                "only WebSocket version 13 is supported",
            ));
        }
        let key = self
            .header("sec-websocket-key")
            .map(str::trim)
            .ok_or_else(|| HttpError::new(400, "missing Sec-WebSocket-Key"))?;
        // 16 random bytes, base64: 24 characters ending in "==".
        if key.len() != 24 || !key.ends_with("==") {
            return Err(HttpError::new(400, "malformed Sec-WebSocket-Key"));
        }
        Ok(tungstenite::handshake::derive_accept_key(key.as_bytes()))
    }
}

/// A request that cannot be served: the HTTP status to answer and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("HTTP {status}: {reason}")]
pub struct HttpError {
    /// Status code of the answer.
    pub status: u16,
    /// Why, also the body of the answer.
    pub reason: String,
}

impl HttpError {
    fn new(status: u16, reason: &str) -> Self {
        Self {
            status,
            reason: reason.into(),
        }
    }
}

/// Parses the request head at the front of `src`. `Ok(None)` until the head is
/// complete; the head (and only the head) is consumed when it is. A head over
/// [`MAX_REQUEST_HEAD`] is refused before it is buffered further.
pub fn parse_request(src: &mut BytesMut) -> Result<Option<HttpRequest>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let status = match req.parse(src) {
        Ok(s) => s,
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HttpError::new(431, "too many request headers"))
        }
        Err(e) => return Err(HttpError::new(400, &format!("malformed request: {e}"))),
    };
    let len = match status {
        httparse::Status::Partial if src.len() > MAX_REQUEST_HEAD => {
            return Err(HttpError::new(431, "request head too large"))
        }
        httparse::Status::Partial => return Ok(None),
        httparse::Status::Complete(len) => len,
    };
    if len > MAX_REQUEST_HEAD {
        return Err(HttpError::new(431, "request head too large"));
    }
    if req.version != Some(1) {
        return Err(HttpError::new(505, "HTTP/1.1 is required"));
    }
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut out = HttpRequest {
        method: req.method.unwrap_or("").to_string(),
        path: path.to_string(),
        query: query.to_string(),
        headers: Vec::with_capacity(req.headers.len()),
    };
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| HttpError::new(400, &format!("header {} is not UTF-8", h.name)))?;
        out.headers.push((h.name.to_string(), value.to_string()));
    }
    src.advance(len);
    Ok(Some(out))
}

/// The `101 Switching Protocols` answer to an upgrade.
pub fn upgrade_response(accept: &str) -> Bytes {
    Bytes::from(format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    ))
}

/// The reason phrase of the statuses this module answers with.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

/// A complete HTTP/1.1 response that closes the connection. `headers` are extra
/// `Name: value` lines; `body` is sent unless `head_only` (a `HEAD` request).
pub fn http_response(
    status: u16,
    content_type: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    head_only: bool,
) -> Bytes {
    let mut out = BytesMut::with_capacity(256 + body.len());
    out.put_slice(
        format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
             Connection: close\r\n",
            reason_phrase(status),
            body.len()
        )
        .as_bytes(),
    );
    for (name, value) in headers {
        out.put_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.put_slice(b"\r\n");
    if !head_only {
        out.put_slice(body);
    }
    out.freeze()
}

/// An error response with a plain-text body.
pub fn error_response(err: &HttpError) -> Bytes {
    let body = format!("{}\n", err.reason);
    let allow = [("Allow", "GET, HEAD")];
    let headers: &[(&str, &str)] = if err.status == 405 { &allow } else { &[] };
    http_response(
        err.status,
        "text/plain; charset=utf-8",
        headers,
        body.as_bytes(),
        false,
    )
}

/// What a WebSocket peer did wrong: the close code it is told, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} (close {code})")]
pub struct WsError {
    /// Close code sent to the client: 1002 protocol error, 1007 invalid UTF-8, 1009
    /// message too big.
    pub code: u16,
    /// Why, also the close frame's reason.
    pub reason: String,
}

impl WsError {
    fn protocol(reason: impl Into<String>) -> Self {
        Self {
            code: 1002,
            reason: reason.into(),
        }
    }
}

/// What one decoded frame means for the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsEvent {
    /// A whole message (fragments reassembled).
    Message(Message),
    /// A ping: answer with this pong frame.
    Ping(Bytes),
    /// A pong (only counts as activity).
    Pong,
    /// The client closes: send this close frame back, then close the connection.
    Close {
        /// The code the client gave, if any.
        code: Option<u16>,
        /// The close frame to answer with.
        reply: Bytes,
    },
}

/// The state of one WebSocket connection after the upgrade.
#[derive(Debug, Default)]
pub struct WsCodec {
    /// A fragmented message being received: whether it is text, and its bytes so far.
    /// `None` between messages (an idle client holds nothing here).
    partial: Option<Box<Partial>>,
}

#[derive(Debug)]
struct Partial {
    text: bool,
    data: BytesMut,
}

impl WsCodec {
    /// Decodes the next frame at the front of `src`. `Ok(None)` until a whole frame is
    /// buffered (the incomplete frame is left in `src`; whole fragments of a message
    /// before it are taken in); `limit` bounds a message (a single frame, or the
    /// fragments of one message together) and is checked before the payload is
    /// buffered.
    pub fn decode(&mut self, src: &mut BytesMut, limit: usize) -> Result<Option<WsEvent>, WsError> {
        loop {
            let mut cursor = Cursor::new(&src[..]);
            let (header, len) = match FrameHeader::parse(&mut cursor) {
                Ok(Some(h)) => h,
                Ok(None) => return Ok(None),
                Err(e) => return Err(WsError::protocol(e.to_string())),
            };
            let head = cursor.position() as usize;
            if header.rsv1 || header.rsv2 || header.rsv3 {
                return Err(WsError::protocol(
                    "reserved bits set (no extension was negotiated)",
                ));
            }
            let Some(mask) = header.mask else {
                return Err(WsError::protocol("client frames must be masked"));
            };
            let so_far = self.partial.as_ref().map_or(0, |p| p.data.len()) as u64;
            let control = matches!(header.opcode, OpCode::Control(_));
            if control && (len > MAX_CONTROL || !header.is_final) {
                return Err(WsError::protocol(
                    "control frames must be whole and at most 125 bytes",
                ));
            }
            if !control && so_far.saturating_add(len) > limit as u64 {
                return Err(WsError {
                    code: 1009,
                    reason: format!("message larger than {limit} bytes"),
                });
            }
            let total = head + len as usize;
            if src.len() < total {
                // Nothing reserved for the announced length: the buffer grows with
                // the bytes that arrive.
                return Ok(None);
            }
            src.advance(head);
            let mut payload = src.split_to(len as usize);
            unmask(&mut payload, mask);
            match header.opcode {
                OpCode::Control(Control::Ping) => {
                    return Ok(Some(WsEvent::Ping(encode_control(Control::Pong, &payload))))
                }
                OpCode::Control(Control::Pong) => return Ok(Some(WsEvent::Pong)),
                OpCode::Control(Control::Close) => return close_event(&payload).map(Some),
                OpCode::Control(Control::Reserved(op)) | OpCode::Data(Data::Reserved(op)) => {
                    return Err(WsError::protocol(format!("reserved opcode {op}")))
                }
                OpCode::Data(Data::Continue) => {
                    let Some(partial) = self.partial.as_mut() else {
                        return Err(WsError::protocol(
                            "continuation frame with no message to continue",
                        ));
                    };
                    partial.data.extend_from_slice(&payload);
                    if header.is_final {
                        if let Some(p) = self.partial.take() {
                            return finish(p.text, p.data.freeze()).map(Some);
                        }
                    }
                }
                OpCode::Data(kind) => {
                    if self.partial.is_some() {
                        return Err(WsError::protocol(
                            "a new message began before the last one ended",
                        ));
                    }
                    let text = kind == Data::Text;
                    if header.is_final {
                        return finish(text, payload.freeze()).map(Some);
                    }
                    self.partial = Some(Box::new(Partial {
                        text,
                        data: payload,
                    }));
                }
            }
            // A fragment was taken in: go on with the next frame, if buffered.
        }
    }
}

fn unmask(data: &mut [u8], mask: [u8; 4]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

fn finish(text: bool, data: Bytes) -> Result<WsEvent, WsError> {
    if text && std::str::from_utf8(&data).is_err() {
        return Err(WsError {
            code: 1007,
            reason: "text message is not valid UTF-8".into(),
        });
    }
    Ok(WsEvent::Message(if text {
        Message::from_parts(data, false)
    } else {
        Message::binary(data)
    }))
}

fn close_event(payload: &[u8]) -> Result<WsEvent, WsError> {
    match payload.len() {
        0 => Ok(WsEvent::Close {
            code: None,
            reply: encode_close(1000, ""),
        }),
        1 => Err(WsError::protocol("close frame with a 1-byte payload")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !CloseCode::from(code).is_allowed() {
                return Err(WsError::protocol(format!(
                    "close code {code} is not allowed"
                )));
            }
            if std::str::from_utf8(&payload[2..]).is_err() {
                return Err(WsError {
                    code: 1007,
                    reason: "close reason is not valid UTF-8".into(),
                });
            }
            Ok(WsEvent::Close {
                code: Some(code),
                reply: encode_close(code, ""),
            })
        }
    }
}

fn header(opcode: OpCode) -> FrameHeader {
    FrameHeader {
        is_final: true,
        rsv1: false,
        rsv2: false,
        rsv3: false,
        opcode,
        mask: None,
    }
}

fn put_frame(opcode: OpCode, payload: &[u8], dst: &mut BytesMut) {
    let h = header(opcode);
    dst.reserve(h.len(payload.len() as u64) + payload.len());
    let mut w = dst.writer();
    // Writing into memory cannot fail.
    let _ = h.format(payload.len() as u64, &mut w);
    w.into_inner().put_slice(payload);
}

fn encode_control(control: Control, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    put_frame(OpCode::Control(control), payload, &mut out);
    out.freeze()
}

/// Appends one unfragmented server frame carrying `msg`: a text frame for a text
/// message, a binary frame otherwise.
pub fn encode_message(msg: &Message, dst: &mut BytesMut) {
    let kind = if msg.is_binary() {
        Data::Binary
    } else {
        Data::Text
    };
    put_frame(OpCode::Data(kind), msg.as_bytes(), dst);
}

/// A close frame with `code` and `reason` (cut to fit the 125-byte control limit on
/// a character boundary).
pub fn encode_close(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(MAX_CONTROL as usize - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode_control(Control::Close, &payload)
}

/// A ping frame (the heartbeat's `ping = "frame"`).
pub fn encode_ping() -> Bytes {
    encode_control(Control::Ping, b"")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n < 65536 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[test]
    fn an_announced_length_reserves_nothing_before_the_bytes_arrive() {
        let mut frame = client_frame(0x82, &vec![7u8; 1 << 20]);
        frame.truncate(100);
        let mut buf = BytesMut::from(&frame[..]);
        let mut codec = WsCodec::default();
        assert_eq!(codec.decode(&mut buf, 1 << 20), Ok(None));
        assert!(
            buf.capacity() < 64 << 10,
            "{} bytes reserved for 100 received",
            buf.capacity()
        );
    }

    fn decode_all(input: &[u8], limit: usize) -> Vec<Result<WsEvent, WsError>> {
        let mut codec = WsCodec::default();
        let mut buf = BytesMut::from(input);
        let mut out = vec![];
        loop {
            match codec.decode(&mut buf, limit) {
                Ok(Some(e)) => out.push(Ok(e)),
                Ok(None) => return out,
                Err(e) => {
                    out.push(Err(e));
                    return out;
                }
            }
        }
    }

    #[test]
    fn rfc_6455_examples() {
        // 5.7: a single-frame masked text message "Hello".
        let hello = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        assert_eq!(
            decode_all(&hello, 1024),
            vec![Ok(WsEvent::Message(Message::from("Hello")))]
        );
        // The server's unmasked "Hello".
        let mut out = BytesMut::new();
        encode_message(&Message::from("Hello"), &mut out);
        assert_eq!(&out[..], &[0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        // 1.3: the accept key of the RFC's sample nonce.
        let req = HttpRequest {
            method: "GET".into(),
            path: "/chat".into(),
            query: String::new(),
            headers: vec![
                ("Upgrade".into(), "websocket".into()),
                ("Connection".into(), "Upgrade".into()),
                (
                    "Sec-WebSocket-Key".into(),
                    "dGhlIHNhbXBsZSBub25jZQ==".into(),
                ),
                ("Sec-WebSocket-Version".into(), "13".into()),
            ],
        };
        assert_eq!(req.upgrade_key().unwrap(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn fragments_are_reassembled_around_control_frames() {
        let mut input = client_frame(0x01, b"Hel"); // text, not final
        input.extend(client_frame(0x89, b"p")); // ping in between
        input.extend(client_frame(0x80, b"lo")); // final continuation
        let got = decode_all(&input, 1024);
        assert_eq!(got.len(), 2);
        assert!(matches!(&got[0], Ok(WsEvent::Ping(pong)) if pong[..] == [0x8a, 0x01, b'p']));
        assert_eq!(got[1], Ok(WsEvent::Message(Message::from("Hello"))));
    }

    #[test]
    fn every_byte_boundary_is_incomplete_not_an_error() {
        let whole = client_frame(0x82, &[1, 2, 3, 4, 5]);
        for cut in 0..whole.len() {
            let mut codec = WsCodec::default();
            let mut buf = BytesMut::from(&whole[..cut]);
            assert_eq!(codec.decode(&mut buf, 1024), Ok(None), "cut at {cut}");
            assert_eq!(buf.len(), cut);
        }
    }

    #[test]
    fn limits_and_violations_get_their_close_codes() {
        let code = |input: &[u8], limit| match decode_all(input, limit).pop() {
            Some(Err(e)) => e.code,
            other => panic!("no error: {other:?}"),
        };
        // Too big, as one frame (refused from its header alone) or as fragments.
        assert_eq!(code(&client_frame(0x82, &[0; 200])[..8], 100), 1009);
        let mut two = client_frame(0x02, &[0; 60]);
        two.extend(client_frame(0x80, &[0; 60]));
        assert_eq!(code(&two, 100), 1009);
        // Text that is not UTF-8, also across fragments.
        assert_eq!(code(&client_frame(0x81, &[0xff, 0xfe]), 100), 1007);
        // Protocol errors.
        let mut unmasked = client_frame(0x81, b"x");
        unmasked[1] &= 0x7f;
        unmasked.drain(2..6);
        assert_eq!(code(&unmasked, 100), 1002, "unmasked");
        assert_eq!(code(&client_frame(0xc1, b"x"), 100), 1002, "rsv1");
        assert_eq!(
            code(&client_frame(0x83, b"x"), 100),
            1002,
            "reserved opcode"
        );
        assert_eq!(
            code(&client_frame(0x80, b"x"), 100),
            1002,
            "lone continuation"
        );
        assert_eq!(
            code(&client_frame(0x09, b"x"), 100),
            1002,
            "fragmented ping"
        );
        assert_eq!(
            code(&client_frame(0x89, &[0; 126]), 1000),
            1002,
            "long ping"
        );
        let mut interleaved = client_frame(0x01, b"a");
        interleaved.extend(client_frame(0x81, b"b"));
        assert_eq!(code(&interleaved, 100), 1002, "new message mid-fragment");
        assert_eq!(
            code(&client_frame(0x88, &[0x03]), 100),
            1002,
            "1-byte close"
        );
        assert_eq!(
            code(&client_frame(0x88, &[0x03, 0xed]), 100),
            1002,
            "close 1005"
        );
    }

    #[test]
    fn close_is_echoed() {
        let got = decode_all(&client_frame(0x88, &[0x03, 0xe8, b'b', b'y', b'e']), 100);
        assert_eq!(
            got,
            vec![Ok(WsEvent::Close {
                code: Some(1000),
                reply: encode_close(1000, "")
            })]
        );
        assert_eq!(
            &encode_close(1009, "big")[..],
            &[0x88, 0x05, 0x03, 0xf1, b'b', b'i', b'g']
        );
    }

    #[test]
    fn binary_and_large_frames() {
        let data = vec![7u8; 70_000];
        let got = decode_all(&client_frame(0x82, &data), 100_000);
        assert_eq!(
            got,
            vec![Ok(WsEvent::Message(Message::binary(data.clone())))]
        );
        let mut out = BytesMut::new();
        encode_message(&Message::binary(data), &mut out);
        assert_eq!(&out[..2], &[0x82, 127]);
        assert_eq!(out.len(), 10 + 70_000);
    }

    #[test]
    fn requests() {
        let mut buf = BytesMut::from(
            &b"GET /chat?room_id=2 HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\n\r\nrest"[..],
        );
        let req = parse_request(&mut buf).unwrap().unwrap();
        assert_eq!(req.path, "/chat");
        assert_eq!(req.query, "room_id=2");
        assert!(req.wants_upgrade());
        assert_eq!(req.header("host"), Some("x"));
        assert_eq!(&buf[..], b"rest", "only the head is consumed");
        let mut partial = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: x\r\n"[..]);
        assert_eq!(parse_request(&mut partial), Ok(None));
        let mut huge = BytesMut::from(&b"GET / HTTP/1.1\r\nX: "[..]);
        huge.extend_from_slice(&vec![b'a'; MAX_REQUEST_HEAD]);
        assert_eq!(parse_request(&mut huge).unwrap_err().status, 431);
        let mut junk = BytesMut::from(&b"\x16\x03\x01 hello\r\n\r\n"[..]);
        assert_eq!(parse_request(&mut junk).unwrap_err().status, 400);
        let mut old = BytesMut::from(&b"GET / HTTP/1.0\r\n\r\n"[..]);
        assert_eq!(parse_request(&mut old).unwrap_err().status, 505);
    }
}
