//! A measuring prototype of a sans-IO WebSocket codec for the server side: bytes in,
//! events out; events in, bytes out. It holds no buffer of its own: the caller owns
//! the read buffer (and may drop it when empty, as the gateway does).
//!
//! Built on tungstenite's public frame primitives:
//! - `tungstenite::protocol::frame::FrameHeader::parse` (reads a header from a
//!   `Cursor`, consumes nothing when incomplete, returns the payload length),
//!   `FrameHeader::format` and `FrameHeader::len` for the reply header;
//! - `tungstenite::protocol::frame::coding::{OpCode, Data, Control, CloseCode}`
//!   (`CloseCode::is_allowed` for received close codes);
//! - for the upgrade (in `handshake.rs`): `tungstenite::handshake::machine::TryParse`
//!   for `tungstenite::handshake::server::Request`, `create_response`,
//!   `write_response` (or `derive_accept_key` with `httparse`).
//!
//! Not public in tungstenite 0.30, so done here: unmasking (`frame::mask::apply_mask`
//! is private), the close payload parser (`Frame::into_close` is `pub(crate)`), the
//! reading codec with its limits (`FrameCodec` is `pub(super)`), message assembly
//! from fragments and the protocol checks of `WebSocketContext`.

use std::io::Cursor;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// What a client sent, one complete message or control frame at a time.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A text message (valid UTF-8).
    Text(Bytes),
    Binary(Bytes),
    Ping(Bytes),
    Pong,
    /// A close frame with its status code, if any.
    Close(Option<u16>),
}

/// A violation that ends the connection; the close code to send with it.
#[derive(Debug, PartialEq, Eq)]
pub enum CodecError {
    Protocol(&'static str),
    Utf8,
    TooBig,
}

impl CodecError {
    pub fn close_code(&self) -> u16 {
        match self {
            Self::Protocol(_) => 1002,
            Self::Utf8 => 1007,
            Self::TooBig => 1009,
        }
    }
}

/// The decoding state of one connection: 72 bytes, no heap while idle.
#[derive(Debug)]
pub struct Decoder {
    /// Header of a frame whose payload has not fully arrived, with its length.
    header: Option<(FrameHeader, usize)>,
    /// A fragmented message being assembled: text?, payload so far.
    partial: Option<(bool, BytesMut)>,
    max_message: usize,
}

impl Decoder {
    pub fn new(max_message: usize) -> Self {
        Self {
            header: None,
            partial: None,
            max_message,
        }
    }

    /// Bytes the frame being read still needs beyond what `buf` holds (a hint for how
    /// much to reserve before the next read).
    pub fn wanted(&self, buf: &BytesMut) -> usize {
        self.header
            .as_ref()
            .map_or(0, |(_, len)| len.saturating_sub(buf.len()))
    }

    /// Is the decoder between frames and messages (nothing to keep but this struct)?
    #[cfg(test)]
    pub fn is_idle(&self) -> bool {
        self.header.is_none() && self.partial.is_none()
    }

    /// Decodes the next event from `buf`, consuming its bytes; `Ok(None)` when more
    /// bytes are needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Event>, CodecError> {
        loop {
            let (header, len) = match self.header.take() {
                Some(h) => h,
                None => {
                    let mut cursor = Cursor::new(&buf[..]);
                    let parsed = FrameHeader::parse(&mut cursor)
                        .map_err(|_| CodecError::Protocol("bad opcode"))?;
                    let Some((header, len)) = parsed else {
                        return Ok(None);
                    };
                    let used = cursor.position() as usize;
                    buf.advance(used);
                    let len = self.check(&header, len)?;
                    (header, len)
                }
            };
            if buf.len() < len {
                self.header = Some((header, len));
                return Ok(None);
            }
            let mut payload = buf.split_to(len);
            if let Some(mask) = header.mask {
                unmask(&mut payload, mask);
            }
            if let Some(event) = self.frame(&header, payload)? {
                return Ok(Some(event));
            }
        }
    }

    /// Checks a frame header against RFC 6455 and the size limit; the payload length.
    fn check(&self, header: &FrameHeader, len: u64) -> Result<usize, CodecError> {
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(CodecError::Protocol("reserved bits set"));
        }
        if header.mask.is_none() {
            return Err(CodecError::Protocol("unmasked client frame"));
        }
        if matches!(header.opcode, OpCode::Control(_)) && (!header.is_final || len > 125) {
            return Err(CodecError::Protocol("bad control frame"));
        }
        let so_far = self.partial.as_ref().map_or(0, |(_, p)| p.len());
        usize::try_from(len)
            .ok()
            .filter(|l| so_far.saturating_add(*l) <= self.max_message)
            .ok_or(CodecError::TooBig)
    }

    /// One complete frame; an event when it completes a message or is a control frame.
    fn frame(
        &mut self,
        header: &FrameHeader,
        payload: BytesMut,
    ) -> Result<Option<Event>, CodecError> {
        let fin = header.is_final;
        match header.opcode {
            OpCode::Data(Data::Continue) => {
                let Some((text, mut so_far)) = self.partial.take() else {
                    return Err(CodecError::Protocol("continuation without a message"));
                };
                so_far.extend_from_slice(&payload);
                if fin {
                    message(text, so_far).map(Some)
                } else {
                    self.partial = Some((text, so_far));
                    Ok(None)
                }
            }
            OpCode::Data(d @ (Data::Text | Data::Binary)) => {
                if self.partial.is_some() {
                    return Err(CodecError::Protocol("new message inside a fragmented one"));
                }
                let text = d == Data::Text;
                if fin {
                    message(text, payload).map(Some)
                } else {
                    self.partial = Some((text, payload));
                    Ok(None)
                }
            }
            OpCode::Control(Control::Ping) => Ok(Some(Event::Ping(payload.freeze()))),
            OpCode::Control(Control::Pong) => Ok(Some(Event::Pong)),
            OpCode::Control(Control::Close) => close(&payload).map(|c| Some(Event::Close(c))),
            OpCode::Data(Data::Reserved(_)) | OpCode::Control(Control::Reserved(_)) => {
                Err(CodecError::Protocol("reserved opcode"))
            }
        }
    }
}

fn message(text: bool, payload: BytesMut) -> Result<Event, CodecError> {
    if text {
        std::str::from_utf8(&payload).map_err(|_| CodecError::Utf8)?;
        Ok(Event::Text(payload.freeze()))
    } else {
        Ok(Event::Binary(payload.freeze()))
    }
}

/// The status code of a close payload (RFC 6455 §5.5.1, §7.4).
fn close(payload: &[u8]) -> Result<Option<u16>, CodecError> {
    match payload {
        [] => Ok(None),
        [_] => Err(CodecError::Protocol("one-byte close payload")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !CloseCode::from(code).is_allowed() {
                return Err(CodecError::Protocol("close code not allowed"));
            }
            std::str::from_utf8(reason).map_err(|_| CodecError::Utf8)?;
            Ok(Some(code))
        }
    }
}

/// XORs a client frame's payload with its mask (RFC 6455 §5.3).
pub fn unmask(buf: &mut [u8], mask: [u8; 4]) {
    let mut wide = [0u8; 8];
    wide[..4].copy_from_slice(&mask);
    wide[4..].copy_from_slice(&mask);
    let wide = u64::from_ne_bytes(wide);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(c);
        c.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Appends one unmasked, final server frame to `out`.
pub fn encode(out: &mut BytesMut, opcode: OpCode, payload: &[u8]) {
    let header = FrameHeader {
        is_final: true,
        opcode,
        ..FrameHeader::default()
    };
    let len = payload.len() as u64;
    out.reserve(header.len(len) + payload.len());
    // Writing into a BytesMut cannot fail.
    let _ = header.format(len, &mut out.writer());
    out.put_slice(payload);
}

/// Appends a close frame with `code` (none: an empty close payload).
pub fn encode_close(out: &mut BytesMut, code: Option<u16>) {
    let payload = code.map(u16::to_be_bytes);
    encode(
        out,
        OpCode::Control(Control::Close),
        payload.as_ref().map_or(&[][..], |p| &p[..]),
    );
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
        let mut body = payload.to_vec();
        unmask(&mut body, mask);
        out.extend_from_slice(&body);
        out
    }

    fn decode_all(bytes: &[u8]) -> Result<Vec<Event>, CodecError> {
        let mut dec = Decoder::new(1 << 20);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        // One byte at a time: every partial state is visited.
        for b in bytes {
            buf.extend_from_slice(&[*b]);
            while let Some(e) = dec.decode(&mut buf)? {
                out.push(e);
            }
        }
        assert!(buf.is_empty());
        assert!(dec.is_idle());
        Ok(out)
    }

    #[test]
    fn rfc_masked_hello() {
        // RFC 6455 §5.7: a single-frame masked text message "Hello".
        let frame = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        assert_eq!(
            decode_all(&frame).unwrap(),
            vec![Event::Text(Bytes::from_static(b"Hello"))]
        );
    }

    #[test]
    fn fragments_controls_and_lengths() {
        let mut bytes = client_frame(0x01, b"Hel");
        bytes.extend(client_frame(0x89, b"ping!"));
        bytes.extend(client_frame(0x80, b"lo"));
        let big = vec![7u8; 70_000];
        bytes.extend(client_frame(0x82, &big));
        let mid = vec![9u8; 300];
        bytes.extend(client_frame(0x82, &mid));
        bytes.extend(client_frame(0x8a, b""));
        bytes.extend(client_frame(0x88, &[0x03, 0xe8, b'b', b'y', b'e']));
        assert_eq!(
            decode_all(&bytes).unwrap(),
            vec![
                Event::Ping(Bytes::from_static(b"ping!")),
                Event::Text(Bytes::from_static(b"Hello")),
                Event::Binary(Bytes::from(big)),
                Event::Binary(Bytes::from(mid)),
                Event::Pong,
                Event::Close(Some(1000)),
            ]
        );
    }

    #[test]
    fn violations() {
        let unmasked = [0x81, 0x01, b'a'];
        assert!(matches!(
            decode_all(&unmasked),
            Err(CodecError::Protocol(_))
        ));
        assert_eq!(
            decode_all(&client_frame(0x81, &[0xff])),
            Err(CodecError::Utf8)
        );
        assert!(decode_all(&client_frame(0x80, b"x")).is_err());
        assert!(
            decode_all(&client_frame(0x09, b"x")).is_err(),
            "fragmented ping"
        );
        assert!(
            decode_all(&client_frame(0x83, b"x")).is_err(),
            "reserved opcode"
        );
        assert!(decode_all(&client_frame(0xc1, b"x")).is_err(), "rsv1");
        assert!(decode_all(&client_frame(0x88, &[3])).is_err());
        assert!(
            decode_all(&client_frame(0x88, &[0x03, 0xed])).is_err(),
            "1005"
        );
        let mut dec = Decoder::new(10);
        let mut buf = BytesMut::from(&client_frame(0x82, &[0; 11])[..]);
        assert_eq!(dec.decode(&mut buf), Err(CodecError::TooBig));
    }

    #[test]
    fn decoder_is_small() {
        assert!(
            std::mem::size_of::<Decoder>() <= 72,
            "{}",
            std::mem::size_of::<Decoder>()
        );
    }

    #[test]
    fn encodes_server_frames() {
        let mut out = BytesMut::new();
        encode(&mut out, OpCode::Data(Data::Text), b"hi");
        assert_eq!(&out[..], &[0x81, 2, b'h', b'i']);
        out.clear();
        encode(&mut out, OpCode::Data(Data::Binary), &[0; 200]);
        assert_eq!(&out[..4], &[0x82, 126, 0, 200]);
        assert_eq!(out.len(), 204);
        out.clear();
        encode_close(&mut out, Some(1000));
        assert_eq!(&out[..], &[0x88, 2, 0x03, 0xe8]);
    }
}
