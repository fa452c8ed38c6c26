//! One client codec fed a hostile byte stream.
//!
//! Input: two bytes of message limit (0 to 65,535), a byte that picks how the stream is
//! cut into reads, then the stream. Checked, beyond "never panics":
//! - decoding never reserves memory: the buffer's capacity never grows (a peer's
//!   announced size is not allocated before its bytes arrive);
//! - `Ok(None)` consumes nothing; every message fits the limit; a text line holds no
//!   newline and is UTF-8;
//! - the stream cut into small reads decodes to exactly what it decodes to whole;
//! - encode(decode(x)) gives back the bytes consumed for `frame` and `json`, and for
//!   `text` a line that decodes to the same message (unless it ends in `\r`).

use bytes::{Bytes, BytesMut};
use switchboard_core::protocol::{ClientCodec, ClientCodecError, Decoded};
use switchboard_core::ClientProtocol;

/// What one stream decoded to: messages (with the bytes each consumed) and errors, up to
/// the first fatal error.
type Outcome = Vec<Result<(Bytes, Bytes), ClientCodecError>>;

pub fn run(protocol: ClientProtocol, data: &[u8]) {
    let [a, b, cut, stream @ ..] = data else {
        return;
    };
    let limit = usize::from(u16::from_be_bytes([*a, *b]));
    let whole = decode(protocol, limit, stream, stream.len().max(1));
    let step = usize::from(*cut % 16) + 1;
    let pieces = decode(protocol, limit, stream, step);
    assert_eq!(whole, pieces, "the same stream read {step} bytes at a time");
    for item in &whole {
        let Ok((message, consumed)) = item else {
            continue;
        };
        assert!(message.len() <= limit, "a message over the limit");
        let encoded = protocol.encode_to_bytes(&switchboard_core::Message::from(message.clone()));
        match protocol {
            ClientProtocol::Text => {
                assert!(!message.contains(&b'\n'));
                assert!(std::str::from_utf8(message).is_ok());
                // A line's `\r\n` ending is taken whole: a message that ends in `\r`
                // loses it on the way back (the text protocol cannot carry one).
                if message.last() != Some(&b'\r') {
                    let again = decode(protocol, limit, &encoded, encoded.len());
                    assert_eq!(again, vec![Ok((message.clone(), encoded.clone()))]);
                }
            }
            _ => assert_eq!(&encoded, consumed, "encode(decode(x)) != x"),
        }
    }
}

/// Decodes `stream` given to the codec `step` bytes at a time.
fn decode(protocol: ClientProtocol, limit: usize, stream: &[u8], step: usize) -> Outcome {
    let mut codec = ClientCodec::new(protocol);
    let mut buf = BytesMut::new();
    let mut out = Outcome::new();
    // Bytes of `stream` the codec has consumed so far.
    let mut consumed = 0;
    for chunk in stream.chunks(step) {
        buf.extend_from_slice(chunk);
        loop {
            let (len, capacity) = (buf.len(), buf.capacity());
            let result = codec.decode(&mut buf, limit);
            assert!(buf.capacity() <= capacity, "decode reserved memory");
            let used = len - buf.len();
            let bytes = Bytes::copy_from_slice(&stream[consumed..consumed + used]);
            consumed += used;
            match result {
                Ok(None) => {
                    assert_eq!(used, 0, "Ok(None) consumed bytes");
                    break;
                }
                Ok(Some(Decoded::Message(m))) => out.push(Ok((m.into_bytes(), bytes))),
                Ok(Some(other)) => panic!("{protocol} decoded {other:?}"),
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
    out
}
