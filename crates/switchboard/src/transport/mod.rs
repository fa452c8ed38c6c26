//! Transports: the byte streams under every protocol — plain TCP or TLS — for client
//! connections and internal links alike.
//!
//! Protocols (`crate::protocol`) turn bytes into messages and never see a socket; the
//! gateway's connection task reads through a [`ReadHalf`] and writes through a
//! [`WriteHalf`], whatever the transport. Reading a TCP client waits for readiness
//! before it takes a buffer, so an idle client holds none; a TLS client keeps a small
//! one (rustls holds its own records anyway).

pub mod tls;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// Largest read from a socket at once.
pub const READ_CHUNK: usize = 16 << 10;
/// What a TLS read reserves while nothing is buffered (grown while a message arrives).
const TLS_IDLE_READ: usize = 512;

type ServerTls = tokio_rustls::server::TlsStream<TcpStream>;

/// An accepted client connection.
pub enum ClientStream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS over TCP, handshake done.
    Tls(Box<ServerTls>),
}

impl ClientStream {
    /// Splits into a reader and a writer that can be used from two tasks.
    pub fn split(self) -> (ReadHalf, WriteHalf) {
        match self {
            ClientStream::Tcp(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
            }
            ClientStream::Tls(s) => {
                let (r, w) = tokio::io::split(*s);
                (ReadHalf::Tls(r), WriteHalf::Tls(w))
            }
        }
    }
}

/// The reading side of a client connection.
pub enum ReadHalf {
    /// Plain TCP.
    Tcp(OwnedReadHalf),
    /// TLS.
    Tls(tokio::io::ReadHalf<ServerTls>),
}

impl ReadHalf {
    /// Waits for data and appends what is there to `buf`; `Ok(0)` at the end of the
    /// stream. Cancel-safe (nothing is lost when a `select!` drops it).
    ///
    /// On TCP the buffer grows only once the socket is readable, and an empty buffer
    /// is released while waiting, so an idle client costs no buffer.
    pub async fn read_some(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            ReadHalf::Tcp(rd) => loop {
                rd.readable().await?;
                buf.reserve(READ_CHUNK);
                match rd.try_read_buf(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        // A spurious wake-up: give the buffer back if it holds nothing.
                        if buf.is_empty() {
                            *buf = BytesMut::new();
                        }
                    }
                    Err(e) => return Err(e),
                }
            },
            ReadHalf::Tls(rd) => {
                buf.reserve(if buf.is_empty() {
                    TLS_IDLE_READ
                } else {
                    READ_CHUNK
                });
                rd.read_buf(buf).await
            }
        }
    }
}

/// The writing side of a client connection.
pub enum WriteHalf {
    /// Plain TCP.
    Tcp(OwnedWriteHalf),
    /// TLS.
    Tls(tokio::io::WriteHalf<ServerTls>),
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Tcp(w) => Pin::new(w).poll_write(cx, buf),
            WriteHalf::Tls(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(w) => Pin::new(w).poll_flush(cx),
            WriteHalf::Tls(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(w) => Pin::new(w).poll_shutdown(cx),
            WriteHalf::Tls(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

/// A byte stream of any transport, for internal links (few connections, so one
/// allocation and dynamic dispatch per link are nothing).
pub trait LinkIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> LinkIo for T {}

/// An internal link's stream: TCP, or TLS (server side on gateways, client side on
/// workers).
pub type LinkStream = Box<dyn LinkIo>;

/// Sets `TCP_NODELAY` (messages are small and latency matters); a failure is harmless.
pub fn nodelay(s: &TcpStream) {
    let _ = s.set_nodelay(true);
}
