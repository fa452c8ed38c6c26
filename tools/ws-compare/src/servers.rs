//! The echo servers, one per candidate. Each runs as a process of its own (so that its
//! RSS is its own) on a multi-thread tokio runtime with one worker thread, the same for
//! every candidate. A server echoes text as text and binary as binary, answers pings,
//! and answers a close before ending the connection.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::BytesMut;
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::handshake;
use switchboard::protocol::websocket::{self as ws, WsCodec, WsEvent};

/// Largest message a server accepts (all candidates are set to this).
pub const MAX_MESSAGE: usize = 1 << 20;
/// Read chunk of the readiness-based loops, as in the gateway (`gateway/client.rs`).
const READ_CHUNK: usize = 16 << 10;

/// One WebSocket implementation (with its configuration) under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Candidate {
    /// Not WebSocket: the gateway's telnet-style read loop echoing raw bytes; the
    /// memory baseline of a TCP connection and its task.
    Tcp,
    /// tokio-tungstenite; `None`: default `WebSocketConfig`; `Some(n)`:
    /// `read_buffer_size` = `write_buffer_size` = n.
    Tungstenite(Option<usize>),
    TokioWebsockets,
    /// fastwebsockets after our own handshake on the raw `TcpStream`.
    Fastwebsockets,
    /// fastwebsockets behind hyper with its `upgrade` helper.
    FastwebsocketsHyper,
    /// Our readiness loop and the gateway's codec (`switchboard::protocol::websocket`).
    SansIo,
}

impl Candidate {
    /// Every WebSocket candidate, with the tungstenite buffer sizes given.
    pub fn all_ws(tungstenite_bufs: &[usize]) -> Vec<Candidate> {
        let mut v = vec![Candidate::Tungstenite(None)];
        v.extend(
            tungstenite_bufs
                .iter()
                .map(|b| Candidate::Tungstenite(Some(*b))),
        );
        v.extend([
            Candidate::TokioWebsockets,
            Candidate::Fastwebsockets,
            Candidate::FastwebsocketsHyper,
            Candidate::SansIo,
        ]);
        v
    }

    pub fn is_websocket(self) -> bool {
        self != Candidate::Tcp
    }
}

impl fmt::Display for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Candidate::Tcp => f.write_str("tcp"),
            Candidate::Tungstenite(None) => f.write_str("tungstenite"),
            Candidate::Tungstenite(Some(n)) => write!(f, "tungstenite@{n}"),
            Candidate::TokioWebsockets => f.write_str("tokio-websockets"),
            Candidate::Fastwebsockets => f.write_str("fastwebsockets"),
            Candidate::FastwebsocketsHyper => f.write_str("fastwebsockets-hyper"),
            Candidate::SansIo => f.write_str("sans-io"),
        }
    }
}

impl FromStr for Candidate {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "tcp" => Candidate::Tcp,
            "tungstenite" => Candidate::Tungstenite(None),
            "tokio-websockets" => Candidate::TokioWebsockets,
            "fastwebsockets" => Candidate::Fastwebsockets,
            "fastwebsockets-hyper" => Candidate::FastwebsocketsHyper,
            "sans-io" => Candidate::SansIo,
            other => match other.strip_prefix("tungstenite@") {
                Some(n) => {
                    let n = parse_size(n)?;
                    if n == 0 {
                        bail!("tungstenite@0: the read buffer must not be empty");
                    }
                    Candidate::Tungstenite(Some(n))
                }
                None => bail!(
                    "unknown candidate {other:?} (tcp, tungstenite, tungstenite@SIZE, \
                     tokio-websockets, fastwebsockets, fastwebsockets-hyper, sans-io)"
                ),
            },
        })
    }
}

/// `4096`, `4k`, `4KiB`, `1m`.
pub fn parse_size(s: &str) -> anyhow::Result<usize> {
    let lower = s.to_ascii_lowercase();
    let (num, mult) = if let Some(n) = lower.strip_suffix("kib").or(lower.strip_suffix('k')) {
        (n, 1 << 10)
    } else if let Some(n) = lower.strip_suffix("mib").or(lower.strip_suffix('m')) {
        (n, 1 << 20)
    } else {
        (lower.as_str(), 1)
    };
    let n: usize = num.parse().with_context(|| format!("size {s:?}"))?;
    Ok(n * mult)
}

/// Runs the server of `candidate` on `addr` until its standard input closes. Prints
/// `listening ADDR` when ready.
pub fn run(candidate: Candidate, addr: SocketAddr) -> anyhow::Result<()> {
    // The parent holds our stdin: when it goes, so do we.
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(addr).await?;
        println!("listening {}", listener.local_addr()?);
        // Everything, the accept loop included, runs on the one worker thread.
        tokio::spawn(accept_loop(listener, candidate)).await?;
        Ok(())
    })
}

async fn accept_loop(listener: TcpListener, candidate: Candidate) {
    loop {
        match listener.accept().await {
            Ok((socket, _)) => {
                let _ = socket.set_nodelay(true);
                tokio::spawn(async move {
                    if let Err(e) = serve(candidate, socket).await {
                        if std::env::var_os("WS_COMPARE_DEBUG").is_some() {
                            eprintln!("{candidate}: {e:#}");
                        }
                    }
                });
            }
            // Out of file descriptors and the like: wait rather than spin.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

async fn serve(candidate: Candidate, socket: TcpStream) -> anyhow::Result<()> {
    match candidate {
        Candidate::Tcp => serve_tcp(socket).await,
        Candidate::Tungstenite(bufs) => serve_tungstenite(socket, bufs).await,
        Candidate::TokioWebsockets => serve_tokio_websockets(socket).await,
        Candidate::Fastwebsockets => serve_fastwebsockets(socket).await,
        Candidate::FastwebsocketsHyper => serve_fastwebsockets_hyper(socket).await,
        Candidate::SansIo => serve_sans_io(socket).await,
    }
}

/// The gateway's loop without a protocol: wait for readiness, read into a buffer that
/// exists only while it holds bytes, write them back.
async fn serve_tcp(mut socket: TcpStream) -> anyhow::Result<()> {
    let mut buf = BytesMut::new();
    loop {
        socket.readable().await?;
        buf.reserve(READ_CHUNK);
        match socket.try_read_buf(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                buf = BytesMut::new();
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        socket.write_all(&buf).await?;
        buf = BytesMut::new();
    }
}

async fn serve_tungstenite(socket: TcpStream, bufs: Option<usize>) -> anyhow::Result<()> {
    use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
    use tokio_tungstenite::tungstenite::Message;
    let mut config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    if let Some(n) = bufs {
        config = config.read_buffer_size(n).write_buffer_size(n);
    }
    let mut ws = tokio_tungstenite::accept_async_with_config(socket, Some(config)).await?;
    while let Some(msg) = ws.next().await {
        let mut msg = msg?;
        // Answer every message already received before one flush, as the gateway's
        // writer batches (`feed` writes once past `write_buffer_size`).
        loop {
            // A pong or close reply is queued by tungstenite; the flush sends it.
            if let m @ (Message::Text(_) | Message::Binary(_)) = msg {
                ws.feed(m).await?;
            }
            // `poll_next` keeps its state in tungstenite: safe to poll once and drop.
            match ws.next().now_or_never() {
                Some(Some(next)) => msg = next?,
                _ => break,
            }
        }
        ws.flush().await?;
    }
    Ok(())
}

async fn serve_tokio_websockets(socket: TcpStream) -> anyhow::Result<()> {
    let (_request, mut ws) = tokio_websockets::ServerBuilder::new()
        .limits(tokio_websockets::Limits::default().max_payload_len(Some(MAX_MESSAGE)))
        .accept(socket)
        .await?;
    while let Some(msg) = ws.next().await {
        let mut msg = msg?;
        // Answer every message already received before one flush (`feed` queues;
        // the stream writes vectored, and by itself past `flush_threshold`).
        loop {
            if msg.is_text() || msg.is_binary() {
                ws.feed(msg).await?;
            }
            // Pongs and the close answer are queued by the stream; the flush sends them.
            match ws.next().now_or_never() {
                Some(Some(next)) => msg = next?,
                _ => break,
            }
        }
        ws.flush().await?;
    }
    Ok(())
}

async fn echo_fastwebsockets<S>(
    mut ws: fastwebsockets::FragmentCollector<S>,
) -> Result<(), fastwebsockets::WebSocketError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use fastwebsockets::{Frame, OpCode};
    // One write per frame: `read_frame` is not cancel-safe (it consumes the header
    // before the payload has arrived), so it cannot be polled just to see whether
    // another frame is already there, and frames cannot be batched before a flush.
    loop {
        // Pings are answered and closes replied to inside `read_frame`.
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Text | OpCode::Binary => {
                ws.write_frame(Frame::new(true, frame.opcode, None, frame.payload))
                    .await?
            }
            OpCode::Close => return Ok(()),
            _ => {}
        }
    }
}

fn fastwebsockets_config<S>(ws: &mut fastwebsockets::WebSocket<S>) {
    ws.set_max_message_size(MAX_MESSAGE);
    ws.set_auto_pong(true);
    ws.set_auto_close(true);
}

async fn serve_fastwebsockets(mut socket: TcpStream) -> anyhow::Result<()> {
    let rest = handshake::accept(&mut socket, handshake::parse_upgrade).await?;
    if !rest.is_empty() {
        // `WebSocket::after_handshake` takes a stream, not bytes already read.
        bail!("frames sent before the handshake's answer");
    }
    drop(rest);
    let mut ws = fastwebsockets::WebSocket::after_handshake(socket, fastwebsockets::Role::Server);
    fastwebsockets_config(&mut ws);
    echo_fastwebsockets(fastwebsockets::FragmentCollector::new(ws)).await?;
    Ok(())
}

async fn serve_fastwebsockets_hyper(socket: TcpStream) -> anyhow::Result<()> {
    use hyper::body::Incoming;
    use hyper::Request;
    let service = hyper::service::service_fn(|mut req: Request<Incoming>| async move {
        let (response, upgrade) = fastwebsockets::upgrade::upgrade(&mut req)?;
        tokio::spawn(async move {
            if let Ok(mut ws) = upgrade.await {
                fastwebsockets_config(&mut ws);
                let _ = echo_fastwebsockets(fastwebsockets::FragmentCollector::new(ws)).await;
            }
        });
        Ok::<_, fastwebsockets::WebSocketError>(response)
    });
    hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
        .with_upgrades()
        .await?;
    Ok(())
}

/// The gateway's own codec (`switchboard::protocol::websocket`) under the gateway's
/// readiness loop: no buffer while idle.
async fn serve_sans_io(mut socket: TcpStream) -> anyhow::Result<()> {
    let mut rbuf = handshake::accept(&mut socket, handshake::tungstenite_upgrade).await?;
    let mut codec = WsCodec::default();
    loop {
        let mut out = BytesMut::new();
        let mut closing = false;
        loop {
            match codec.decode(&mut rbuf, MAX_MESSAGE) {
                Ok(Some(WsEvent::Message(m))) => ws::encode_message(&m, &mut out),
                Ok(Some(WsEvent::Ping(pong))) => out.extend_from_slice(&pong),
                Ok(Some(WsEvent::Pong)) => {}
                Ok(Some(WsEvent::Close { reply, .. })) => {
                    out.extend_from_slice(&reply);
                    closing = true;
                    break;
                }
                Ok(None) => break,
                Err(e) => {
                    out.extend_from_slice(&ws::encode_close(e.code, &e.reason));
                    let _ = socket.write_all(&out).await;
                    return Err(anyhow::anyhow!("protocol violation: {e}"));
                }
            }
        }
        if !out.is_empty() {
            socket.write_all(&out).await?;
        }
        drop(out);
        if closing {
            // RFC 6455 §7.1.1: the server closes the TCP connection first.
            let _ = socket.shutdown().await;
            return Ok(());
        }
        if rbuf.is_empty() {
            // Idle connections hold no read buffer.
            rbuf = BytesMut::new();
        }
        socket.readable().await?;
        rbuf.reserve(READ_CHUNK);
        match socket.try_read_buf(&mut rbuf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let mut all = Candidate::all_ws(&[4096]);
        all.push(Candidate::Tcp);
        for c in all {
            assert_eq!(c.to_string().parse::<Candidate>().unwrap(), c);
        }
        assert_eq!(
            "tungstenite@4k".parse::<Candidate>().unwrap(),
            Candidate::Tungstenite(Some(4096))
        );
        assert!("tungstenite@0".parse::<Candidate>().is_err());
        assert!("nope".parse::<Candidate>().is_err());
    }
}
