//! Client-facing codecs, one per listener protocol; pure code over `BytesMut`, no I/O.
//!
//! - `text`: one message per line, `\n` or `\r\n` terminated, UTF-8; the brief's
//!   TextProtocol. Outgoing messages get a `\n`.
//! - `frame`: a 4-byte big-endian length (of the payload alone), then the payload.
//! - `json`: the brief's JsonProtocol (Workerman's): a 4-byte big-endian length that
//!   counts itself (the **total** frame length), then a JSON document.
//! - `websocket`: RFC 6455 messages after an HTTP upgrade ([`super::websocket`]).
//!
//! A connection's decoder is a [`ClientCodec`] (WebSocket keeps per-connection state:
//! a message arriving in fragments). It returns `Ok(None)` until a whole message is
//! buffered, and a [`ClientCodecError`] for input that breaks the protocol's rules;
//! whether an error is fatal for the connection is [`ClientCodecError::is_fatal`].
//! Encoding is stateless: [`ClientProtocol::encode`].

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use super::websocket::{self, WsCodec, WsError, WsEvent};
use crate::Message;

/// The wire protocol of a client listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientProtocol {
    /// Newline-delimited UTF-8 lines.
    Text,
    /// 4-byte big-endian payload length + payload.
    Frame,
    /// 4-byte big-endian total length (header included) + JSON (Workerman's JsonProtocol).
    Json,
    /// WebSocket messages, after an HTTP upgrade; HTTP for the application's page on the
    /// same port.
    #[serde(rename = "websocket")]
    WebSocket,
}

/// Input a client codec refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientCodecError {
    /// A text line longer than the listener's limit (fatal: the client is told and closed).
    #[error("line longer than {limit} bytes")]
    LineTooLong {
        /// The listener's limit.
        limit: usize,
    },
    /// A frame longer than the listener's limit (fatal).
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// Announced size.
        size: usize,
        /// The listener's limit.
        limit: usize,
    },
    /// A `json` frame whose total length cannot hold its own header (fatal).
    #[error("frame length {0} is less than the 4 bytes of its own header")]
    FrameTooShort(u32),
    /// A `json` frame whose body is not a JSON document (fatal, as JsonProtocol has it).
    #[error("frame body is not JSON: {0}")]
    NotJson(String),
    /// A text line that is not UTF-8 (not fatal: the line is skipped, the client told).
    #[error("line is not valid UTF-8")]
    InvalidUtf8,
    /// A WebSocket rule broken (fatal: a close frame with the error's code).
    #[error("{0}")]
    WebSocket(#[from] WsError),
}

impl ClientCodecError {
    /// Whether the connection must be closed (the stream can no longer be framed).
    pub fn is_fatal(&self) -> bool {
        !matches!(self, ClientCodecError::InvalidUtf8)
    }
}

/// What a decoder produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A message for the application.
    Message(Message),
    /// Bytes to write back to the client at once (a WebSocket pong).
    Reply(Bytes),
    /// Activity that carries nothing (a WebSocket pong from the client).
    Activity,
    /// The client is closing: write these bytes (the WebSocket close answer), then close.
    Closing(Bytes),
}

/// One connection's decoder.
#[derive(Debug)]
pub enum ClientCodec {
    /// `text` lines.
    Text {
        /// Bytes at the front of the buffer already searched for a newline: a line
        /// that arrives in many reads is searched once, not once per read (a peer
        /// sending a long line a byte at a time would otherwise cost time quadratic in
        /// its length).
        searched: usize,
    },
    /// `frame`s.
    Frame,
    /// `json` frames.
    Json,
    /// WebSocket frames, after the upgrade.
    WebSocket(WsCodec),
}

impl ClientCodec {
    /// A fresh decoder for `protocol` (for `websocket`: after the upgrade).
    pub fn new(protocol: ClientProtocol) -> Self {
        match protocol {
            ClientProtocol::Text => ClientCodec::Text { searched: 0 },
            ClientProtocol::Frame => ClientCodec::Frame,
            ClientProtocol::Json => ClientCodec::Json,
            ClientProtocol::WebSocket => ClientCodec::WebSocket(WsCodec::default()),
        }
    }

    /// Decodes the next item at the front of `src`; `limit` bounds a message.
    pub fn decode(
        &mut self,
        src: &mut BytesMut,
        limit: usize,
    ) -> Result<Option<Decoded>, ClientCodecError> {
        Ok(match self {
            ClientCodec::Text { searched } => decode_line(src, limit, searched)?
                .map(|m| Decoded::Message(Message::from_parts(m, false))),
            ClientCodec::Frame => {
                decode_frame(src, limit)?.map(|m| Decoded::Message(Message::binary(m)))
            }
            ClientCodec::Json => {
                decode_json(src, limit)?.map(|m| Decoded::Message(Message::from_parts(m, false)))
            }
            ClientCodec::WebSocket(ws) => ws.decode(src, limit)?.map(|e| match e {
                WsEvent::Message(m) => Decoded::Message(m),
                WsEvent::Ping(pong) => Decoded::Reply(pong),
                WsEvent::Pong => Decoded::Activity,
                WsEvent::Close { reply, .. } => Decoded::Closing(reply),
            }),
        })
    }
}

impl ClientProtocol {
    /// Every protocol.
    pub const ALL: [ClientProtocol; 4] = [
        ClientProtocol::Text,
        ClientProtocol::Frame,
        ClientProtocol::Json,
        ClientProtocol::WebSocket,
    ];

    /// The protocol's name, as in the configuration (`text`, `frame`, `json`,
    /// `websocket`).
    pub fn name(self) -> &'static str {
        match self {
            ClientProtocol::Text => "text",
            ClientProtocol::Frame => "frame",
            ClientProtocol::Json => "json",
            ClientProtocol::WebSocket => "websocket",
        }
    }

    /// The byte that names this protocol in the internal protocol.
    pub fn wire_byte(self) -> u8 {
        match self {
            ClientProtocol::Text => 1,
            ClientProtocol::Frame => 2,
            ClientProtocol::Json => 3,
            ClientProtocol::WebSocket => 4,
        }
    }

    /// The protocol a [`wire_byte`](Self::wire_byte) names.
    pub fn from_wire_byte(b: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.wire_byte() == b)
    }

    /// Appends the wire form of one message to `dst`.
    pub fn encode(self, msg: &Message, dst: &mut BytesMut) {
        match self {
            ClientProtocol::Text => {
                dst.reserve(msg.len() + 1);
                dst.put_slice(msg);
                dst.put_u8(b'\n');
            }
            ClientProtocol::Frame | ClientProtocol::Json => {
                // json's length counts its own 4 bytes, frame's does not.
                let own = if self == ClientProtocol::Json { 4 } else { 0 };
                dst.reserve(msg.len() + 4);
                dst.put_u32(msg.len() as u32 + own);
                dst.put_slice(msg);
            }
            ClientProtocol::WebSocket => websocket::encode_message(msg, dst),
        }
    }

    /// The wire form of one message, as fresh bytes.
    pub fn encode_to_bytes(self, msg: &Message) -> Bytes {
        let mut buf = BytesMut::new();
        self.encode(msg, &mut buf);
        buf.freeze()
    }

    /// What a client gets when its input is refused: a text line, a JSON frame, or (for
    /// a WebSocket violation) a close frame with its code.
    pub fn error_message(self, err: &ClientCodecError) -> Bytes {
        match err {
            ClientCodecError::WebSocket(e) => websocket::encode_close(e.code, &e.reason),
            _ if self == ClientProtocol::WebSocket => {
                websocket::encode_close(1002, &err.to_string())
            }
            _ => self.notice(&err.to_string()),
        }
    }

    /// An error notice from the gateway itself, in the listener's format:
    /// `error: <text>` as a line, or `{"error":"<text>"}` as a frame, a JSON frame or a
    /// WebSocket text message.
    pub fn notice(self, text: &str) -> Bytes {
        let body = match self {
            ClientProtocol::Text => format!("error: {text}"),
            _ => serde_json::json!({ "error": text }).to_string(),
        };
        self.encode_to_bytes(&Message::from(body))
    }

    /// What the gateway writes before it closes a client itself (`close_client`, the
    /// heartbeat, or — `going_away` — the gateway stopping): a WebSocket close frame
    /// (1000, or 1001 for going away); nothing for the other protocols.
    pub fn goodbye(self, going_away: bool) -> Option<Bytes> {
        (self == ClientProtocol::WebSocket).then(|| {
            if going_away {
                websocket::encode_close(1001, "the server is going away")
            } else {
                websocket::encode_close(1000, "closed by the server")
            }
        })
    }
}

impl std::fmt::Display for ClientProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The next line at the front of `src`; `searched` bytes of it have no newline (from
/// the calls before), and only what follows them is searched.
fn decode_line(
    src: &mut BytesMut,
    limit: usize,
    searched: &mut usize,
) -> Result<Option<Bytes>, ClientCodecError> {
    // A line may be `limit` bytes plus `\r\n`: search no further than that.
    let window = src.len().min(limit + 2);
    let from = (*searched).min(window);
    match src[from..window].iter().position(|&b| b == b'\n') {
        Some(at) => {
            let nl = from + at;
            *searched = 0;
            let mut line = src.split_to(nl + 1);
            line.truncate(nl);
            if line.last() == Some(&b'\r') {
                line.truncate(nl - 1);
            }
            if line.len() > limit {
                return Err(ClientCodecError::LineTooLong { limit });
            }
            if std::str::from_utf8(&line).is_err() {
                return Err(ClientCodecError::InvalidUtf8);
            }
            Ok(Some(line.freeze()))
        }
        None if src.len() > limit + 1 => Err(ClientCodecError::LineTooLong { limit }),
        None => {
            *searched = window;
            Ok(None)
        }
    }
}

/// A 4-byte big-endian length, then a body: `frame` (the length counts the body) and
/// `json` (it counts itself too, as Workerman's JsonProtocol). The limit is checked
/// from the header, before the body is buffered.
fn decode_length_prefixed(
    src: &mut BytesMut,
    limit: usize,
    counts_header: bool,
) -> Result<Option<Bytes>, ClientCodecError> {
    if src.len() < 4 {
        return Ok(None);
    }
    let length = u32::from_be_bytes([src[0], src[1], src[2], src[3]]);
    let size = if counts_header {
        (length as usize)
            .checked_sub(4)
            .ok_or(ClientCodecError::FrameTooShort(length))?
    } else {
        length as usize
    };
    if size > limit {
        return Err(ClientCodecError::FrameTooLarge { size, limit });
    }
    if src.len() < 4 + size {
        // Nothing is reserved for the announced size: the buffer grows with the bytes
        // that actually arrive.
        return Ok(None);
    }
    src.advance(4);
    Ok(Some(src.split_to(size).freeze()))
}

fn decode_frame(src: &mut BytesMut, limit: usize) -> Result<Option<Bytes>, ClientCodecError> {
    decode_length_prefixed(src, limit, false)
}

fn decode_json(src: &mut BytesMut, limit: usize) -> Result<Option<Bytes>, ClientCodecError> {
    let Some(body) = decode_length_prefixed(src, limit, true)? else {
        return Ok(None);
    };
    serde_json::from_slice::<serde::de::IgnoredAny>(&body)
        .map_err(|e| ClientCodecError::NotJson(e.to_string()))?;
    Ok(Some(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every message (as bytes) and error decoded from `input`, up to the first fatal one.
    fn all(p: ClientProtocol, input: &[u8], limit: usize) -> Vec<Result<Bytes, ClientCodecError>> {
        let mut codec = ClientCodec::new(p);
        let mut buf = BytesMut::from(input);
        let mut out = vec![];
        loop {
            match codec.decode(&mut buf, limit) {
                Ok(Some(Decoded::Message(m))) => out.push(Ok(m.into_bytes())),
                Ok(Some(other)) => panic!("unexpected {other:?}"),
                Ok(None) => return out,
                Err(e) => {
                    let fatal = e.is_fatal();
                    out.push(Err(e));
                    if fatal {
                        return out;
                    }
                }
            }
        }
    }

    fn enc(p: ClientProtocol, m: &[u8]) -> Bytes {
        p.encode_to_bytes(&Message::from(Bytes::copy_from_slice(m)))
    }

    #[test]
    fn text_lines_with_lf_and_crlf() {
        let got = all(ClientProtocol::Text, b"hello\r\nworld\n\npartial", 64);
        assert_eq!(
            got,
            vec![Ok("hello".into()), Ok("world".into()), Ok("".into())]
        );
    }

    #[test]
    fn text_line_at_the_limit_passes_and_over_it_fails() {
        let ok = [b"x".repeat(8), b"\r\n".to_vec()].concat();
        assert_eq!(
            all(ClientProtocol::Text, &ok, 8),
            vec![Ok(Bytes::from("x".repeat(8)))]
        );
        let long = [b"x".repeat(9), b"\n".to_vec()].concat();
        assert_eq!(
            all(ClientProtocol::Text, &long, 8),
            vec![Err(ClientCodecError::LineTooLong { limit: 8 })]
        );
        // Without a newline: refused as soon as the limit is passed, not buffered forever.
        assert_eq!(
            all(ClientProtocol::Text, &b"y".repeat(10), 8),
            vec![Err(ClientCodecError::LineTooLong { limit: 8 })]
        );
    }

    #[test]
    fn a_long_line_sent_a_byte_at_a_time_is_searched_once() {
        // Found by the client_text fuzz target (a few hundred executions a second):
        // every read searched the whole buffered line again, so a 64 KiB line sent a
        // byte at a time took 2^31 byte comparisons (seconds of CPU per line). Searched
        // once, the 65,537 reads below take milliseconds.
        let limit = 64 << 10;
        let mut codec = ClientCodec::new(ClientProtocol::Text);
        let mut buf = BytesMut::new();
        let started = std::time::Instant::now();
        for _ in 0..limit {
            buf.extend_from_slice(b"x");
            assert_eq!(codec.decode(&mut buf, limit), Ok(None));
        }
        buf.extend_from_slice(b"\n");
        let Ok(Some(Decoded::Message(line))) = codec.decode(&mut buf, limit) else {
            panic!("the line");
        };
        assert_eq!(line.len(), limit);
        let took = started.elapsed();
        assert!(took < std::time::Duration::from_secs(3), "{took:?}");
        // The next line is searched from its own start.
        buf.extend_from_slice(b"ab\n");
        assert_eq!(all_from(&mut codec, &mut buf, limit), vec![Ok("ab".into())]);
    }

    fn all_from(
        codec: &mut ClientCodec,
        buf: &mut BytesMut,
        limit: usize,
    ) -> Vec<Result<Bytes, ClientCodecError>> {
        let mut out = vec![];
        while let Ok(Some(Decoded::Message(m))) = codec.decode(buf, limit) {
            out.push(Ok(m.into_bytes()));
        }
        out
    }

    #[test]
    fn invalid_utf8_skips_one_line() {
        let got = all(ClientProtocol::Text, b"a\n\xff\xfe\nb\n", 64);
        assert_eq!(
            got,
            vec![
                Ok("a".into()),
                Err(ClientCodecError::InvalidUtf8),
                Ok("b".into())
            ]
        );
    }

    #[test]
    fn frames() {
        let mut input = enc(ClientProtocol::Frame, b"{\"a\":1}").to_vec();
        input.extend_from_slice(&[0, 0, 0, 3, b'x']);
        assert_eq!(
            all(ClientProtocol::Frame, &input, 64),
            vec![Ok(Bytes::from("{\"a\":1}"))]
        );
        assert_eq!(
            all(ClientProtocol::Frame, &[0, 0, 1, 0], 64),
            vec![Err(ClientCodecError::FrameTooLarge {
                size: 256,
                limit: 64
            })]
        );
    }

    #[test]
    fn json_frames_are_workermans_total_length_format() {
        // Workerman's JsonProtocol: pack('N', 4 + strlen($json)) . $json.
        let vector: &[u8] = &[
            0, 0, 0, 0x0f, b'{', b'"', b't', b'y', b'p', b'e', b'"', b':', b'1', b'}', b'\n',
        ];
        assert_eq!(vector.len(), 15);
        assert_eq!(
            all(ClientProtocol::Json, vector, 64),
            vec![Ok(Bytes::from_static(b"{\"type\":1}\n"))]
        );
        assert_eq!(&enc(ClientProtocol::Json, b"{\"type\":1}\n")[..], vector);
        // frame, for comparison, counts the payload only.
        assert_eq!(
            &enc(ClientProtocol::Frame, b"{}")[..],
            &[0, 0, 0, 2, b'{', b'}']
        );
        assert_eq!(
            &enc(ClientProtocol::Json, b"{}")[..],
            &[0, 0, 0, 6, b'{', b'}']
        );
    }

    #[test]
    fn json_limits_and_bad_bodies() {
        // The limit is on the JSON body, checked from the header before buffering.
        assert_eq!(
            all(ClientProtocol::Json, &[0, 0, 1, 4], 64),
            vec![Err(ClientCodecError::FrameTooLarge {
                size: 256,
                limit: 64
            })]
        );
        assert_eq!(
            all(ClientProtocol::Json, &[0, 0, 0, 3, b'x'], 64),
            vec![Err(ClientCodecError::FrameTooShort(3))]
        );
        let not_json = [&[0, 0, 0, 9][..], b"hello"].concat();
        assert!(matches!(
            &all(ClientProtocol::Json, &not_json, 64)[..],
            [Err(ClientCodecError::NotJson(_))]
        ));
        let two = [
            enc(ClientProtocol::Json, b"[1]").to_vec(),
            enc(ClientProtocol::Json, b"\"s\"").to_vec(),
        ]
        .concat();
        assert_eq!(
            all(ClientProtocol::Json, &two, 64),
            vec![Ok(Bytes::from("[1]")), Ok(Bytes::from("\"s\""))]
        );
    }

    #[test]
    fn an_announced_size_reserves_nothing_before_the_bytes_arrive() {
        // A peer announces a message at the limit and sends ten bytes of it: the
        // buffer holds what came, not what was announced.
        for p in [ClientProtocol::Frame, ClientProtocol::Json] {
            let mut codec = ClientCodec::new(p);
            let mut buf = BytesMut::new();
            buf.extend_from_slice(&(1u32 << 20).to_be_bytes());
            buf.extend_from_slice(b"0123456789");
            assert_eq!(codec.decode(&mut buf, 1 << 20), Ok(None));
            assert!(
                buf.capacity() < 64 << 10,
                "{p}: {} bytes reserved for 14 received",
                buf.capacity()
            );
        }
    }

    #[test]
    fn error_messages() {
        let e = ClientCodecError::LineTooLong { limit: 8 };
        assert_eq!(
            &ClientProtocol::Text.error_message(&e)[..],
            b"error: line longer than 8 bytes\n"
        );
        let f = ClientProtocol::Frame.error_message(&e);
        assert_eq!(&f[4..], br#"{"error":"line longer than 8 bytes"}"#);
        let j = ClientProtocol::Json.error_message(&e);
        assert_eq!(
            u32::from_be_bytes([j[0], j[1], j[2], j[3]]) as usize,
            j.len()
        );
        let ws = ClientProtocol::WebSocket.error_message(&ClientCodecError::WebSocket(WsError {
            code: 1009,
            reason: "big".into(),
        }));
        assert_eq!(&ws[..], &[0x88, 5, 0x03, 0xf1, b'b', b'i', b'g']);
    }

    proptest! {
        #[test]
        fn frame_round_trip(msgs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..100), 0..10)) {
            for p in [ClientProtocol::Frame, ClientProtocol::Json] {
                let mut buf = BytesMut::new();
                for m in &msgs {
                    // json bodies must be JSON: wrap the bytes in a JSON array.
                    let body = if p == ClientProtocol::Json { serde_json::to_vec(m).unwrap() } else { m.clone() };
                    buf.extend_from_slice(&enc(p, &body));
                }
                let got: Vec<_> = all(p, &buf, 1000).into_iter().map(|r| r.unwrap().to_vec()).collect();
                let want: Vec<Vec<u8>> = msgs.iter().map(|m| if p == ClientProtocol::Json { serde_json::to_vec(m).unwrap() } else { m.clone() }).collect();
                prop_assert_eq!(got, want);
            }
        }

        #[test]
        fn text_round_trip(msgs in proptest::collection::vec("[^\r\n]{0,50}", 0..10)) {
            let mut buf = BytesMut::new();
            for m in &msgs { ClientProtocol::Text.encode(&Message::from(m.clone()), &mut buf); }
            let got: Vec<_> = all(ClientProtocol::Text, &buf, 200).into_iter().map(|r| String::from_utf8(r.unwrap().to_vec()).unwrap()).collect();
            prop_assert_eq!(got, msgs);
        }

        #[test]
        fn random_input_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300), limit in 0usize..64) {
            for p in ClientProtocol::ALL {
                let mut codec = ClientCodec::new(p);
                let mut buf = BytesMut::from(&data[..]);
                while let Ok(Some(_)) = codec.decode(&mut buf, limit) {}
            }
        }
    }
}
