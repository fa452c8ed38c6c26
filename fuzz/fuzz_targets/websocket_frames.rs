//! WebSocket frames after the upgrade: `protocol::websocket::WsCodec` (our reassembly of
//! fragments, limits and close rules over tungstenite's frame header parser), as
//! `ClientCodec::WebSocket` drives it.
//!
//! Input: two bytes of message limit, a byte that picks how the stream is cut into
//! reads, then the stream. Checked, beyond "never panics":
//! - decoding never reserves memory for an announced length (the read buffer's capacity
//!   never grows);
//! - `Ok(None)` leaves an incomplete frame in the buffer (whole fragments before it
//!   are taken in); a message fits the limit; a text message is UTF-8;
//! - a pong or close answer is one unmasked control frame of at most 125 bytes of
//!   payload, and a close code sent back is one a peer may receive;
//! - the stream cut into small reads decodes to exactly what it decodes to whole.
#![no_main]

use bytes::BytesMut;
use switchboard_core::protocol::websocket::{WsCodec, WsError, WsEvent};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let [a, b, cut, stream @ ..] = data else {
        return;
    };
    let limit = usize::from(u16::from_be_bytes([*a, *b]));
    let whole = decode(stream, limit, stream.len().max(1));
    let step = usize::from(*cut % 16) + 1;
    assert_eq!(
        whole,
        decode(stream, limit, step),
        "read {step} bytes at a time"
    );
    for event in whole.iter().flatten() {
        match event {
            WsEvent::Message(m) => {
                assert!(m.len() <= limit, "a message over the limit");
                assert!(m.is_binary() || std::str::from_utf8(m.as_bytes()).is_ok());
            }
            WsEvent::Ping(reply) => control_frame(reply, 0x8a),
            WsEvent::Close { reply, .. } => control_frame(reply, 0x88),
            WsEvent::Pong => {}
        }
    }
    if let Some(Err(e)) = whole.last() {
        assert!(
            matches!(e.code, 1002 | 1007 | 1009),
            "close code {}",
            e.code
        );
        let close = switchboard_core::ClientProtocol::WebSocket.error_message(
            &switchboard_core::protocol::ClientCodecError::WebSocket(e.clone()),
        );
        control_frame(&close, 0x88);
    }
});

/// `frame` is one whole, final, unmasked control frame of opcode byte `first`.
fn control_frame(frame: &[u8], first: u8) {
    assert_eq!(frame[0], first);
    let len = usize::from(frame[1]);
    assert!(len <= 125 && frame.len() == 2 + len, "{frame:?}");
}

/// Decodes `stream` given `step` bytes at a time, up to the first error or close.
fn decode(stream: &[u8], limit: usize, step: usize) -> Vec<Result<WsEvent, WsError>> {
    let mut codec = WsCodec::default();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in stream.chunks(step) {
        buf.extend_from_slice(chunk);
        loop {
            let capacity = buf.capacity();
            let result = codec.decode(&mut buf, limit);
            assert!(buf.capacity() <= capacity, "decode reserved memory");
            match result {
                Ok(None) => break,
                Ok(Some(event)) => {
                    let closing = matches!(event, WsEvent::Close { .. });
                    out.push(Ok(event));
                    if closing {
                        return out;
                    }
                }
                Err(e) => {
                    out.push(Err(e));
                    return out;
                }
            }
        }
    }
    out
}
