//! The internal gateway↔worker protocol: `protocol::internal::decode` over a hostile
//! byte stream, as a gateway reads an unauthenticated peer (frames up to
//! `MAX_HANDSHAKE_FRAME`) or an authenticated link (up to a 16 MiB `max_internal_frame`).
//!
//! Input: a byte that picks the frame bound and how the stream is cut into reads, then
//! the stream. Checked, beyond "never panics":
//! - decoding never reserves memory (the capacity never grows: a 4-byte header
//!   announcing 16 MiB allocates nothing);
//! - `Ok(None)` consumes nothing; a frame consumes its header and announced length;
//! - the stream cut into small reads decodes to exactly what it decodes to whole;
//! - the encoding is canonical: encode(decode(x)) == x, byte for byte.
#![no_main]

use bytes::{Bytes, BytesMut};
use switchboard_core::protocol::internal::{self, Frame, ProtocolError, MAX_HANDSHAKE_FRAME};

type Outcome = Vec<Result<(Frame, Bytes), ProtocolError>>;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let [choice, stream @ ..] = data else {
        return;
    };
    let max_frame = if choice & 0x80 == 0 {
        MAX_HANDSHAKE_FRAME
    } else {
        16 << 20
    };
    let whole = decode(stream, max_frame, stream.len().max(1));
    let step = usize::from(choice % 32) + 1;
    assert_eq!(
        whole,
        decode(stream, max_frame, step),
        "read {step} bytes at a time"
    );
    for (frame, bytes) in whole.iter().flatten() {
        assert_eq!(
            &internal::encode_to_bytes(frame),
            bytes,
            "encode(decode(x)) != x"
        );
        // Every decoded frame has a name for the logs.
        assert!(!switchboard_core::protocol::internal::frame_kind(frame).is_empty());
    }
});

/// Decodes `stream` given `step` bytes at a time, up to the first error (a link is
/// dropped on any).
fn decode(stream: &[u8], max_frame: usize, step: usize) -> Outcome {
    let mut buf = BytesMut::new();
    let mut out = Outcome::new();
    let mut consumed = 0;
    for chunk in stream.chunks(step) {
        buf.extend_from_slice(chunk);
        loop {
            let (len, capacity) = (buf.len(), buf.capacity());
            let result = internal::decode(&mut buf, max_frame);
            assert!(buf.capacity() <= capacity, "decode reserved memory");
            let used = len - buf.len();
            let bytes = Bytes::copy_from_slice(&stream[consumed..consumed + used]);
            consumed += used;
            match result {
                Ok(None) => {
                    assert_eq!(used, 0, "Ok(None) consumed bytes");
                    break;
                }
                Ok(Some(frame)) => {
                    assert!(used <= 4 + max_frame, "a frame over the bound");
                    out.push(Ok((frame, bytes)));
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
