//! Transports: the byte streams under every protocol — plain TCP or TLS — for client
//! connections and internal links alike.
//!
//! Protocols (`crate::protocol`) turn bytes into messages and never see a socket; the
//! gateway's connection task reads and writes one [`ClientStream`], whatever the
//! transport. Reading a TCP client waits for readiness before it takes a buffer, so an
//! idle client holds none; a TLS client keeps a small one (rustls holds its own records
//! anyway).

pub mod tls;

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
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
    /// TLS over TCP, handshake done (boxed: rustls' state is large, and most clients
    /// of a gateway may be plain TCP).
    Tls(Box<ServerTls>),
}

impl ClientStream {
    /// The peer's address, asked of the socket (`None` once it is disconnected).
    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            Self::Tcp(tcp) => tcp.peer_addr().ok(),
            Self::Tls(tls) => tls.get_ref().0.peer_addr().ok(),
        }
    }

    /// Waits for data and appends what is there to `buf`; `Ready(Ok(0))` at the end of
    /// the stream.
    ///
    /// On TCP the buffer grows only once the socket is readable, and an empty buffer is
    /// released after a spurious wake-up, so an idle client costs no buffer.
    pub fn poll_read_some(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        match self {
            ClientStream::Tcp(tcp) => loop {
                ready!(tcp.poll_read_ready(cx))?;
                buf.reserve(READ_CHUNK);
                match tcp.try_read_buf(buf) {
                    Ok(n) => return Poll::Ready(Ok(n)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if buf.is_empty() {
                            *buf = BytesMut::new();
                        }
                    }
                    Err(e) => return Poll::Ready(Err(e)),
                }
            },
            ClientStream::Tls(tls) => {
                buf.reserve(if buf.is_empty() {
                    TLS_IDLE_READ
                } else {
                    READ_CHUNK
                });
                tokio_util::io::poll_read_buf(Pin::new(tls.as_mut()), cx, buf)
            }
        }
    }

    /// [`poll_read_some`](Self::poll_read_some) as a future (the HTTP phase of a
    /// WebSocket client).
    pub async fn read_some(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_read_some(cx, buf)).await
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ClientStream::Tcp(s) => s.is_write_vectored(),
            ClientStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
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
