//! The one client used against every candidate: tokio-tungstenite with a fixed config,
//! from loopback source addresses 127.0.0.2, 127.0.0.3, … so that no source address
//! runs out of ephemeral ports.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// How long connecting (with the handshake) or waiting for one answer may take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(20);

pub type Ws = WebSocketStream<TcpStream>;

/// The client's config: small read buffer (client memory is not measured, but 10,000
/// clients of 128 KiB each would crowd the machine), eager writes.
pub fn client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(16 << 10)
        .write_buffer_size(0)
        .max_message_size(Some(4 << 20))
}

/// Source address of the connection with global index `index`.
pub fn source_ip(index: usize, sources: usize) -> IpAddr {
    let n = index % sources.clamp(1, 250);
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + n as u8))
}

pub use loadkit::now_micros;

/// A TCP connection to `addr` from `source` (port chosen by the kernel at connect),
/// within [`STEP_TIMEOUT`].
pub async fn tcp_connect(addr: SocketAddr, source: IpAddr) -> anyhow::Result<TcpStream> {
    loadkit::connect_from(addr, source, STEP_TIMEOUT).await
}

/// A WebSocket connection with the handshake done.
pub async fn ws_connect(addr: SocketAddr, source: IpAddr) -> anyhow::Result<Ws> {
    let stream = tcp_connect(addr, source).await?;
    let (ws, _response) = tokio::time::timeout(
        STEP_TIMEOUT,
        tokio_tungstenite::client_async_with_config(
            format!("ws://{addr}/"),
            stream,
            Some(client_config()),
        ),
    )
    .await
    .context("handshake timed out")??;
    Ok(ws)
}

/// One client connection: WebSocket, or raw TCP against the `tcp` baseline.
pub enum Conn {
    Ws(Box<Ws>),
    Raw(TcpStream),
}

impl Conn {
    pub async fn open(addr: SocketAddr, source: IpAddr, raw: bool) -> anyhow::Result<Conn> {
        Ok(if raw {
            Conn::Raw(tcp_connect(addr, source).await?)
        } else {
            Conn::Ws(Box::new(ws_connect(addr, source).await?))
        })
    }

    /// Sends one text message of `size` bytes and waits for its echo.
    pub async fn one_message(&mut self, seq: u64, size: usize) -> anyhow::Result<()> {
        let text = text_payload(seq, now_micros(), size);
        let answer = async {
            match self {
                Conn::Raw(s) => {
                    s.write_all(text.as_bytes()).await?;
                    let mut back = vec![0u8; text.len()];
                    s.read_exact(&mut back).await?;
                    if back != text.as_bytes() {
                        bail!("wrong echo");
                    }
                }
                Conn::Ws(ws) => {
                    ws.send(Message::text(text.clone())).await?;
                    match ws.next().await {
                        Some(Ok(Message::Text(t))) if t.as_str() == text => {}
                        other => bail!("expected the echo, got {other:?}"),
                    }
                }
            }
            Ok(())
        };
        tokio::time::timeout(STEP_TIMEOUT, answer)
            .await
            .context("no echo in time")?
    }
}

/// Header of a measured message: sequence number and send time.
const STAMP: usize = 32;

/// A text message of `size` bytes (at least 32) carrying `seq` and the send time.
pub fn text_payload(seq: u64, micros: u64, size: usize) -> String {
    let mut s = format!("{seq:016x}{micros:016x}");
    s.extend(std::iter::repeat_n('x', size.saturating_sub(STAMP)));
    s
}

/// A binary message of `size` bytes (at least 16) carrying `seq` and the send time.
pub fn binary_payload(seq: u64, micros: u64, size: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(size.max(16));
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend_from_slice(&micros.to_le_bytes());
    v.extend((16..size).map(|i| i as u8));
    v
}

/// The send time of a measured message if it has the expected shape.
pub fn stamp_of(msg: &Message, size: usize, binary: bool) -> Option<u64> {
    match msg {
        Message::Text(t) if !binary && t.len() == size.max(STAMP) => {
            u64::from_str_radix(t.as_str().get(16..STAMP)?, 16).ok()
        }
        Message::Binary(b) if binary && b.len() == size.max(16) => {
            Some(u64::from_le_bytes(b.get(8..16)?.try_into().ok()?))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_carry_their_stamp() {
        let t = text_payload(7, 123_456, 64);
        assert_eq!(t.len(), 64);
        assert_eq!(stamp_of(&Message::text(t), 64, false), Some(123_456));
        let b = binary_payload(7, 99, 65536);
        assert_eq!(b.len(), 65536);
        assert_eq!(stamp_of(&Message::binary(b), 65536, true), Some(99));
        assert_eq!(stamp_of(&Message::text("short"), 64, false), None);
        let big_seq = text_payload(199 << 32 | 5, 42, 64);
        assert_eq!(stamp_of(&Message::text(big_seq), 64, false), Some(42));
    }
}
