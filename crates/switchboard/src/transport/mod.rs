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

thread_local! {
    /// Where a plain TCP read lands before its bytes are appended to the client's
    /// buffer (one per thread: a read never waits while holding it).
    static SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; READ_CHUNK].into_boxed_slice());
}

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
    /// On TCP the bytes are read into the thread's scratch buffer and appended, so the
    /// buffer grows by what came and never by a whole read chunk: an idle client costs no buffer, one in a
    /// WebSocket handshake costs its request, and a message split from the buffer
    /// keeps no spare room alive.
    pub fn poll_read_some(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        match self {
            ClientStream::Tcp(tcp) => {
                // Read into the thread's scratch buffer and keep only what came: the
                // buffer (and every message split from it, until its event is done)
                // holds the bytes read, not a whole read chunk per client. Through
                // `poll_read`, which takes a short read as the socket drained: the
                // next read waits for readiness instead of costing a system call
                // that says `EAGAIN`.
                SCRATCH.with_borrow_mut(|scratch| {
                    let mut read = ReadBuf::new(&mut scratch[..]);
                    ready!(Pin::new(tcp).poll_read(cx, &mut read))?;
                    buf.extend_from_slice(read.filled());
                    Poll::Ready(Ok(read.filled().len()))
                })
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// A read keeps what came and no spare room: every message split from the buffer
    /// shares its allocation until the message's event is done, and a WebSocket
    /// handshake's buffer is freed after it (it used to be a whole read chunk, 16 KiB,
    /// per read).
    #[tokio::test]
    async fn a_read_keeps_only_what_came() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peer = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (socket, _) = listener.accept().await.unwrap();
        let mut stream = ClientStream::Tcp(socket);
        peer.write_all(b"hello\n").await.unwrap();
        let mut buf = BytesMut::new();
        assert_eq!(stream.read_some(&mut buf).await.unwrap(), 6);
        assert_eq!(&buf[..], b"hello\n");
        assert!(buf.capacity() < 1024, "{} bytes reserved", buf.capacity());
        // A second read appends.
        peer.write_all(b"world\n").await.unwrap();
        assert_eq!(stream.read_some(&mut buf).await.unwrap(), 6);
        assert_eq!(&buf[..], b"hello\nworld\n");
        // More than one chunk arrives over several reads, whole.
        let big = vec![7u8; 3 * READ_CHUNK + 5];
        peer.write_all(&big).await.unwrap();
        drop(peer);
        let mut got = BytesMut::new();
        while stream.read_some(&mut got).await.unwrap() > 0 {}
        assert_eq!(got.len(), big.len());
        assert!(got.iter().all(|&b| b == 7));
    }
}
