//! Client-facing codecs, one per listener protocol; pure code over `BytesMut`, no I/O.
//!
//! - `text`: one message per line, `\n` or `\r\n` terminated, UTF-8; the brief's
//!   TextProtocol. Outgoing messages get a `\n`.
//! - `frame`: a 4-byte big-endian length, then that many payload bytes (typically JSON).
//!
//! Each decoder returns `Ok(None)` until a whole message is buffered, and a
//! [`ClientCodecError`] for input that breaks the protocol's rules. Whether an error is
//! fatal for the connection is [`ClientCodecError::is_fatal`].

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// The wire protocol of a client listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientProtocol {
    /// Newline-delimited UTF-8 lines.
    Text,
    /// 4-byte big-endian length + payload.
    Frame,
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
    /// A text line that is not UTF-8 (not fatal: the line is skipped, the client told).
    #[error("line is not valid UTF-8")]
    InvalidUtf8,
}

impl ClientCodecError {
    /// Whether the connection must be closed (the stream can no longer be framed).
    pub fn is_fatal(&self) -> bool {
        !matches!(self, ClientCodecError::InvalidUtf8)
    }
}

impl ClientProtocol {
    /// Every protocol.
    pub const ALL: [ClientProtocol; 2] = [ClientProtocol::Text, ClientProtocol::Frame];

    /// The protocol's name, as in the configuration (`text`, `frame`).
    pub fn name(self) -> &'static str {
        match self {
            ClientProtocol::Text => "text",
            ClientProtocol::Frame => "frame",
        }
    }

    /// The byte that names this protocol in the internal protocol.
    pub fn wire_byte(self) -> u8 {
        match self {
            ClientProtocol::Text => 1,
            ClientProtocol::Frame => 2,
        }
    }

    /// The protocol a [`wire_byte`](Self::wire_byte) names.
    pub fn from_wire_byte(b: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.wire_byte() == b)
    }

    /// Decodes one message from the front of `src`.
    pub fn decode(
        self,
        src: &mut BytesMut,
        limit: usize,
    ) -> Result<Option<Bytes>, ClientCodecError> {
        match self {
            ClientProtocol::Text => decode_line(src, limit),
            ClientProtocol::Frame => decode_frame(src, limit),
        }
    }

    /// Appends the wire form of one message to `dst`.
    pub fn encode(self, msg: &[u8], dst: &mut BytesMut) {
        match self {
            ClientProtocol::Text => {
                dst.reserve(msg.len() + 1);
                dst.put_slice(msg);
                dst.put_u8(b'\n');
            }
            ClientProtocol::Frame => {
                dst.reserve(msg.len() + 4);
                dst.put_u32(msg.len() as u32);
                dst.put_slice(msg);
            }
        }
    }

    /// The wire form of one message, as fresh bytes.
    pub fn encode_to_bytes(self, msg: &[u8]) -> Bytes {
        let mut buf = BytesMut::new();
        self.encode(msg, &mut buf);
        buf.freeze()
    }

    /// The message a client gets when its input is refused: a text line or a JSON frame.
    pub fn error_message(self, err: &ClientCodecError) -> Bytes {
        self.notice(&err.to_string())
    }

    /// An error notice from the gateway itself, in the listener's format:
    /// `error: <text>` as a line, or `{"error":"<text>"}` as a frame.
    pub fn notice(self, text: &str) -> Bytes {
        let body = match self {
            ClientProtocol::Text => format!("error: {text}"),
            ClientProtocol::Frame => serde_json::json!({ "error": text }).to_string(),
        };
        self.encode_to_bytes(body.as_bytes())
    }
}

fn decode_line(src: &mut BytesMut, limit: usize) -> Result<Option<Bytes>, ClientCodecError> {
    // A line may be `limit` bytes plus `\r\n`: search no further than that.
    let window = src.len().min(limit + 2);
    match src[..window].iter().position(|&b| b == b'\n') {
        Some(nl) => {
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
        None => Ok(None),
    }
}

fn decode_frame(src: &mut BytesMut, limit: usize) -> Result<Option<Bytes>, ClientCodecError> {
    if src.len() < 4 {
        return Ok(None);
    }
    let size = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
    if size > limit {
        return Err(ClientCodecError::FrameTooLarge { size, limit });
    }
    if src.len() < 4 + size {
        src.reserve(4 + size - src.len());
        return Ok(None);
    }
    src.advance(4);
    Ok(Some(src.split_to(size).freeze()))
}

impl std::fmt::Display for ClientProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all(p: ClientProtocol, input: &[u8], limit: usize) -> Vec<Result<Bytes, ClientCodecError>> {
        let mut buf = BytesMut::from(input);
        let mut out = vec![];
        loop {
            match p.decode(&mut buf, limit) {
                Ok(Some(m)) => out.push(Ok(m)),
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
        let mut input = ClientProtocol::Frame.encode_to_bytes(b"{\"a\":1}").to_vec();
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
    fn error_messages() {
        let e = ClientCodecError::LineTooLong { limit: 8 };
        assert_eq!(
            &ClientProtocol::Text.error_message(&e)[..],
            b"error: line longer than 8 bytes\n"
        );
        let f = ClientProtocol::Frame.error_message(&e);
        assert_eq!(&f[4..], br#"{"error":"line longer than 8 bytes"}"#);
    }

    proptest! {
        #[test]
        fn frame_round_trip(msgs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..100), 0..10)) {
            let mut buf = BytesMut::new();
            for m in &msgs { ClientProtocol::Frame.encode(m, &mut buf); }
            let got: Vec<_> = all(ClientProtocol::Frame, &buf, 100).into_iter().map(|r| r.unwrap().to_vec()).collect();
            prop_assert_eq!(got, msgs);
        }

        #[test]
        fn text_round_trip(msgs in proptest::collection::vec("[^\r\n]{0,50}", 0..10)) {
            let mut buf = BytesMut::new();
            for m in &msgs { ClientProtocol::Text.encode(m.as_bytes(), &mut buf); }
            let got: Vec<_> = all(ClientProtocol::Text, &buf, 200).into_iter().map(|r| String::from_utf8(r.unwrap().to_vec()).unwrap()).collect();
            prop_assert_eq!(got, msgs);
        }

        #[test]
        fn random_input_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300), limit in 0usize..64) {
            let _ = all(ClientProtocol::Text, &data, limit);
            let _ = all(ClientProtocol::Frame, &data, limit);
        }
    }
}
