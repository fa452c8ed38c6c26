//! The client's side of the wire: a TCP or TLS stream, the WebSocket upgrade, and the
//! framing of messages (`text`: one line each; `websocket`: one RFC 6455 frame each).
//!
//! The WebSocket client is this tool's own, not a library: it needs only what a chat
//! client needs (masked text frames out; unfragmented text frames, ping, pong and close
//! in, which is all the gateway sends) and it must cost the load generator as little as
//! possible, since the generator shares the machine with the server it measures. Reading
//! is one buffer per connection, messages are slices of it, and nothing is copied.
//!
//! TLS uses rustls with a verifier that accepts any certificate: verifying the chain
//! would cost the generator CPU and tell nothing about the server (the testkit's tests
//! verify the gateway's certificates). Session resumption is off, so every connection
//! is a full handshake.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use anyhow::{bail, Context as _};
use clap::ValueEnum;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// The client protocol of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Lines (the telnet chat).
    Text,
    /// WebSocket (the browser chat's JSON messages).
    Websocket,
}

impl Protocol {
    /// The listener's `protocol` in the configuration.
    pub fn config_name(self) -> &'static str {
        match self {
            Protocol::Text => "text",
            Protocol::Websocket => "websocket",
        }
    }
}

/// A connected stream, plain or TLS.
pub enum Conn {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The reading half of a connection.
pub type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The writing half of a connection.
pub type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

impl Conn {
    /// Splits into halves that tasks can own (a TCP stream without a lock).
    pub fn split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Conn::Tcp(s) => {
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            }
            Conn::Tls(s) => {
                let (r, w) = tokio::io::split(*s);
                (Box::new(r), Box::new(w))
            }
        }
    }

    /// Whether the server still holds the connection (nothing says it ended).
    pub async fn alive(&mut self) -> bool {
        let mut byte = [0u8; 1];
        // A zero timeout polls the read once: pending means nothing happened.
        match tokio::time::timeout(std::time::Duration::ZERO, self.read(&mut byte)).await {
            Err(_) => true,
            Ok(Ok(n)) => n > 0,
            Ok(Err(_)) => false,
        }
    }
}

/// Accepts any server certificate (see the module documentation).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The TLS client configuration for `protocol` (ALPN `http/1.1` for WebSocket, as
/// browsers ask), made once per process.
fn tls_connector(protocol: Protocol) -> TlsConnector {
    static CONFIGS: OnceLock<[Arc<rustls::ClientConfig>; 2]> = OnceLock::new();
    let configs = CONFIGS.get_or_init(|| {
        let make = |alpn: &[&[u8]]| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("the ring provider supports the default versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth();
            config.resumption = rustls::client::Resumption::disabled();
            config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Arc::new(config)
        };
        [make(&[]), make(&[b"http/1.1"])]
    });
    let i = usize::from(protocol == Protocol::Websocket);
    TlsConnector::from(configs[i].clone())
}

/// Wraps a connected TCP stream in TLS (a full handshake) if `tls`.
pub async fn secure(tcp: TcpStream, tls: bool, protocol: Protocol) -> anyhow::Result<Conn> {
    if !tls {
        return Ok(Conn::Tcp(tcp));
    }
    let ip = tcp.peer_addr()?.ip();
    let stream = tls_connector(protocol)
        .connect(ServerName::IpAddress(ip.into()), tcp)
        .await
        .context("TLS handshake")?;
    Ok(Conn::Tls(Box::new(stream)))
}

/// Sends a WebSocket upgrade request for `/` and reads the `101` answer. Returns the
/// bytes that came after the answer's head (the start of the first frames, if any).
pub async fn upgrade(conn: &mut Conn, host: &str) -> anyhow::Result<Vec<u8>> {
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    conn.write_all(request.as_bytes()).await?;
    conn.flush().await?;
    let mut got = Vec::with_capacity(256);
    let head_end = loop {
        if let Some(i) = memchr::memmem::find(&got, b"\r\n\r\n") {
            break i + 4;
        }
        if got.len() > 8 << 10 {
            bail!("an upgrade answer head over 8 KiB");
        }
        if conn.read_buf(&mut got).await? == 0 {
            bail!("closed during the WebSocket upgrade");
        }
    };
    let status = got.split(|b| *b == b' ').nth(1).unwrap_or_default();
    if status != b"101" {
        let head = String::from_utf8_lossy(&got[..head_end.min(200)]).into_owned();
        bail!("the upgrade was refused: {head:?}");
    }
    Ok(got.split_off(head_end))
}

/// How messages are cut out of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One message per line (`\n`, a `\r` before it dropped).
    Lines,
    /// One message per WebSocket frame from a server (unmasked).
    WebSocket,
}

/// What [`Framing::cut`] found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Cut {
    /// A whole message: its payload is `buf[start..end]`, and `used` bytes are taken.
    Message {
        start: usize,
        end: usize,
        used: usize,
    },
    /// A control frame to skip (`used` bytes).
    Skip(usize),
    /// The server's close frame: the end of the stream.
    Close,
    /// Not enough bytes yet.
    More,
}

impl From<Protocol> for Framing {
    fn from(p: Protocol) -> Self {
        match p {
            Protocol::Text => Framing::Lines,
            Protocol::Websocket => Framing::WebSocket,
        }
    }
}

impl Framing {
    /// Cuts the first message out of `buf`.
    pub fn cut(self, buf: &[u8]) -> anyhow::Result<Cut> {
        match self {
            Framing::Lines => Ok(match memchr::memchr(b'\n', buf) {
                None => Cut::More,
                Some(nl) => {
                    let end = if nl > 0 && buf[nl - 1] == b'\r' {
                        nl - 1
                    } else {
                        nl
                    };
                    Cut::Message {
                        start: 0,
                        end,
                        used: nl + 1,
                    }
                }
            }),
            Framing::WebSocket => cut_frame(buf),
        }
    }

    /// Appends `message` framed: a line with its newline, or a masked text frame.
    pub fn encode(self, message: &[u8], mask: u32, out: &mut Vec<u8>) {
        match self {
            Framing::Lines => {
                out.extend_from_slice(message);
                out.push(b'\n');
            }
            Framing::WebSocket => {
                out.push(0x81); // FIN, text
                let len = message.len();
                if len < 126 {
                    out.push(0x80 | len as u8);
                } else if len <= u16::MAX as usize {
                    out.push(0x80 | 126);
                    out.extend_from_slice(&(len as u16).to_be_bytes());
                } else {
                    out.push(0x80 | 127);
                    out.extend_from_slice(&(len as u64).to_be_bytes());
                }
                let key = mask.to_be_bytes();
                out.extend_from_slice(&key);
                let at = out.len();
                out.extend_from_slice(message);
                for (i, b) in out[at..].iter_mut().enumerate() {
                    *b ^= key[i & 3];
                }
            }
        }
    }
}

/// Cuts one server frame (RFC 6455 §5.2) from the start of `buf`.
fn cut_frame(buf: &[u8]) -> anyhow::Result<Cut> {
    if buf.len() < 2 {
        return Ok(Cut::More);
    }
    let (b0, b1) = (buf[0], buf[1]);
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0f;
    let masked = b1 & 0x80 != 0;
    let (len, start) = match b1 & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(Cut::More);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(Cut::More);
            }
            let mut n = [0u8; 8];
            n.copy_from_slice(&buf[2..10]);
            (usize::try_from(u64::from_be_bytes(n))?, 10)
        }
        n => (n as usize, 2),
    };
    if masked {
        bail!("the server sent a masked frame");
    }
    if !fin || opcode == 0 {
        bail!("the server sent a fragmented message (the gateway never does)");
    }
    let end = start + len;
    if buf.len() < end {
        return Ok(Cut::More);
    }
    Ok(match opcode {
        1 | 2 => Cut::Message {
            start,
            end,
            used: end,
        },
        8 => Cut::Close,
        9 | 10 => Cut::Skip(end),
        other => bail!("the server sent a frame with opcode {other}"),
    })
}

/// A cheap mask-key sequence (xorshift32): clients must mask, nobody checks how.
pub fn next_mask(state: &mut u32) -> u32 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *state = x;
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_of_rfc_6455() {
        // §5.7: an unmasked "Hello", and a masked one.
        let hello = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        assert_eq!(
            Framing::WebSocket.cut(&hello).unwrap(),
            Cut::Message {
                start: 2,
                end: 7,
                used: 7
            }
        );
        assert_eq!(Framing::WebSocket.cut(&hello[..4]).unwrap(), Cut::More);
        let mut out = Vec::new();
        Framing::WebSocket.encode(b"Hello", 0x37fa213d, &mut out);
        assert_eq!(
            out,
            [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
        );
        // A ping (skipped), then a close (the end).
        assert_eq!(
            Framing::WebSocket.cut(&[0x89, 0x00, 0x81]).unwrap(),
            Cut::Skip(2)
        );
        assert_eq!(
            Framing::WebSocket.cut(&[0x88, 0x02, 0x03, 0xe8]).unwrap(),
            Cut::Close
        );
        // 16- and 64-bit lengths.
        let mut long = vec![0x81, 126, 0x01, 0x00];
        long.extend(std::iter::repeat_n(b'x', 256));
        assert_eq!(
            Framing::WebSocket.cut(&long).unwrap(),
            Cut::Message {
                start: 4,
                end: 260,
                used: 260
            }
        );
        let mut out = Vec::new();
        Framing::WebSocket.encode(&[b'y'; 70_000], 0, &mut out);
        assert_eq!(&out[..2], &[0x81, 0x80 | 127]);
        assert_eq!(out.len(), 2 + 8 + 4 + 70_000);
        // Fragments are refused rather than misread.
        assert!(Framing::WebSocket.cut(&[0x01, 0x01, b'a']).is_err());
    }

    #[test]
    fn lines() {
        assert_eq!(
            Framing::Lines.cut(b"ab\r\ncd").unwrap(),
            Cut::Message {
                start: 0,
                end: 2,
                used: 4
            }
        );
        assert_eq!(Framing::Lines.cut(b"ab").unwrap(), Cut::More);
        let mut out = Vec::new();
        Framing::Lines.encode(b"hi", 7, &mut out);
        assert_eq!(out, b"hi\n");
    }
}
