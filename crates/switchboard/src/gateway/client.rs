//! One client connection, whatever its transport and protocol: the TLS handshake (on
//! `tls` listeners), the HTTP request and the application's verdict (on `websocket`
//! listeners), then a reader that decodes messages into the routing state and a writer
//! that drains the client's byte-bounded outbound queue.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::outbound::AfterBatch;
use super::state::{Opening, Outbound, Rejected, Verdict};
use super::{http, Handshaking, Listener, Shared};
use crate::metrics::gateway::{self as metrics, CloseReason};
use crate::protocol::websocket::{self, HttpError, HttpRequest};
use crate::protocol::{ClientCodec, ClientProtocol, Decoded};
use crate::transport::{self, ClientStream, ReadHalf, WriteHalf};
use crate::{ClientId, WebSocketRequest};

/// Largest batch the writer gathers before one write.
const WRITE_BATCH: usize = 64 << 10;
/// How long a closing connection may take to flush its last messages.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves one accepted connection until it ends; `place` counts it against
/// `max_clients` until it is registered (or gone).
pub async fn serve(place: Handshaking, tcp: TcpStream, peer: SocketAddr, listener: Arc<Listener>) {
    let shared = place.0.clone();
    transport::nodelay(&tcp);
    // The TLS handshake and the WebSocket upgrade together have `handshake_timeout`.
    let deadline = Instant::now() + listener.config.handshake_timeout;
    let stream = match &listener.tls {
        None => ClientStream::Tcp(tcp),
        Some(acceptor) => match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => ClientStream::Tls(Box::new(tls)),
            Ok(Err(e)) => {
                tracing::debug!(%peer, listener = %listener.meta.name, error = %e, "TLS handshake failed");
                metrics::client_refused(&listener.meta.name, CloseReason::ProtocolError);
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, listener = %listener.meta.name, "TLS handshake timed out");
                metrics::client_refused(&listener.meta.name, CloseReason::ProtocolError);
                return;
            }
        },
    };
    let (mut rd, mut wr) = stream.split();
    let out = Outbound::new(shared.config.outbound_limit);
    let mut buf = BytesMut::new();
    let protocol = listener.meta.protocol;
    let id = if protocol == ClientProtocol::WebSocket {
        match upgrade(
            &shared, &listener, peer, &mut rd, &mut wr, &mut buf, &out, deadline,
        )
        .await
        {
            Ok(id) => id,
            Err(ended) => {
                if let Some(reason) = ended {
                    metrics::client_refused(&listener.meta.name, reason);
                }
                let _ = tokio::time::timeout(FLUSH_TIMEOUT, wr.shutdown()).await;
                return;
            }
        }
    } else {
        shared.lock().add_client(
            peer.to_string(),
            listener.meta.clone(),
            out.clone(),
            Opening::Connect,
            &shared.counters,
        )
    };
    drop(place);
    metrics::client_connected(&listener.meta.name, protocol);
    tracing::debug!(client = %id, %peer, listener = %listener.meta.name, "client connected");
    run(&shared, id, peer, &listener, rd, wr, buf, out).await;
}

/// The HTTP phase of a `websocket` listener: reads the request, serves a file or an
/// error for anything but an upgrade, and asks the application (`on_websocket_connect`)
/// whether this client may upgrade. Returns the client, registered and upgraded, or
/// the reason to count the connection under when it is to close (its answer written):
/// none for a plain HTTP request or a client gone before asking anything.
#[allow(clippy::too_many_arguments)]
async fn upgrade(
    shared: &Shared,
    listener: &Listener,
    peer: SocketAddr,
    rd: &mut ReadHalf,
    wr: &mut WriteHalf,
    buf: &mut BytesMut,
    out: &Outbound,
    deadline: Instant,
) -> Result<ClientId, Option<CloseReason>> {
    let name = &listener.meta.name;
    let request = loop {
        match websocket::parse_request(buf) {
            Ok(Some(req)) => break req,
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(%peer, listener = %name, error = %e, "bad HTTP request");
                answer(wr, websocket::error_response(&e)).await;
                return Err(Some(CloseReason::ProtocolError));
            }
        }
        match tokio::time::timeout_at(deadline, rd.read_some(buf)).await {
            Ok(Ok(n)) if n > 0 => metrics::bytes_in(n),
            Ok(_) => return Err(None),
            Err(_) => {
                tracing::debug!(%peer, listener = %name, "no complete HTTP request within the handshake timeout; closing");
                return Err(Some(CloseReason::ProtocolError));
            }
        }
    };
    if !request.wants_upgrade() {
        answer(wr, http::respond(&request, &listener.assets)).await;
        return Err(None);
    }
    let refuse = |status: u16, reason: String| HttpError { status, reason };
    let accept = match request.upgrade_key() {
        Ok(key) => key,
        Err(e) => {
            answer(wr, websocket::error_response(&e)).await;
            return Err(Some(CloseReason::ProtocolError));
        }
    };
    if let Err(e) = check_origin(&listener.config.allowed_origins, &request) {
        tracing::info!(%peer, listener = %name, error = %e, "WebSocket upgrade refused");
        answer(wr, websocket::error_response(&e)).await;
        return Err(Some(CloseReason::Refused));
    }
    let ws_request = WebSocketRequest {
        path: request.path.clone(),
        query: request.query.clone(),
        forwarded_for: forwarded_for(&listener.config.trusted_proxies, peer, &request),
        headers: request.headers,
        peer: peer.to_string(),
    };
    let json = match serde_json::to_vec(&ws_request) {
        Ok(j) => j,
        Err(e) => {
            answer(wr, websocket::error_response(&refuse(400, e.to_string()))).await;
            return Err(Some(CloseReason::ProtocolError));
        }
    };
    let (tx, mut rx) = oneshot::channel();
    let id = shared.lock().add_client(
        peer.to_string(),
        listener.meta.clone(),
        out.clone(),
        Opening::WebSocket {
            request: json.into(),
            verdict: tx,
        },
        &shared.counters,
    );
    let verdict = match tokio::time::timeout_at(deadline, &mut rx).await {
        Ok(Ok(v)) => v,
        Ok(Err(_)) => Verdict::Refused {
            status: 503,
            reason: "the gateway is stopping".into(),
        },
        Err(_) => {
            if shared.lock().abandon_upgrade(id.connection) {
                tracing::info!(client = %id, %peer, "no verdict on the WebSocket upgrade in time; refused");
                Verdict::Refused {
                    status: 503,
                    reason: "the application did not answer in time; try again later".into(),
                }
            } else {
                // The verdict came as the time ran out.
                rx.try_recv().unwrap_or(Verdict::Refused {
                    status: 503,
                    reason: "the application did not answer in time; try again later".into(),
                })
            }
        }
    };
    match verdict {
        Verdict::Accepted => {
            let response = websocket::upgrade_response(&accept);
            metrics::bytes_out(response.len());
            if wr.write_all(&response).await.is_err() {
                // Registered and live: the reader finds the connection gone and the
                // close event follows the connect event.
                tracing::debug!(client = %id, "client left before the upgrade answer");
            }
            Ok(id)
        }
        Verdict::Refused { status, reason } => {
            tracing::info!(client = %id, %peer, status, %reason, "WebSocket upgrade refused by the application");
            answer(wr, websocket::error_response(&refuse(status, reason))).await;
            Err(Some(CloseReason::Refused))
        }
    }
}

/// Writes a last answer (bounded in time: the client may not read).
async fn answer(wr: &mut WriteHalf, bytes: bytes::Bytes) {
    metrics::bytes_out(bytes.len());
    let _ = tokio::time::timeout(FLUSH_TIMEOUT, wr.write_all(&bytes)).await;
}

/// With a non-empty list, an `Origin` header must be in it. A request without one is not
/// from a browser, and is not checked (it could send any value).
fn check_origin(allowed: &[String], req: &HttpRequest) -> Result<(), HttpError> {
    match req.header("origin") {
        Some(origin) if !allowed.is_empty() => {
            if allowed
                .iter()
                .any(|a| a.eq_ignore_ascii_case(origin.trim()))
            {
                Ok(())
            } else {
                Err(HttpError {
                    status: 403,
                    reason: format!("origin {origin} is not allowed"),
                })
            }
        }
        _ => Ok(()),
    }
}

/// The client's address from `X-Forwarded-For`, believed only from trusted proxies:
/// the right-most address that is not itself a trusted proxy.
fn forwarded_for(trusted: &[ipnet::IpNet], peer: SocketAddr, req: &HttpRequest) -> Option<String> {
    let is_trusted = |ip: std::net::IpAddr| trusted.iter().any(|net| net.contains(&ip));
    if !is_trusted(peer.ip()) {
        return None;
    }
    let chain: Vec<&str> = req
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("x-forwarded-for"))
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .collect();
    chain
        .iter()
        .rev()
        .filter_map(|s| s.parse::<std::net::IpAddr>().ok())
        .find(|ip| !is_trusted(*ip))
        .map(|ip| ip.to_string())
}

/// The life of a registered client: read and decode until the connection ends, while
/// a writer task drains its outbound queue.
#[allow(clippy::too_many_arguments)]
async fn run(
    shared: &Shared,
    id: ClientId,
    peer: SocketAddr,
    listener: &Listener,
    mut rd: ReadHalf,
    wr: WriteHalf,
    mut buf: BytesMut,
    out: Outbound,
) {
    let protocol = listener.meta.protocol;
    let limit = listener.config.max_message();
    let mut codec = ClientCodec::new(protocol);
    let mut writer = tokio::spawn(write_loop(wr, out.clone(), protocol));
    // Set once `writer` has completed (a JoinHandle must not be polled again after).
    let mut writer_ended = false;
    let mut reason = CloseReason::ClientClosed;
    // Bytes may already be buffered (after a WebSocket upgrade request).
    let mut fresh = !buf.is_empty();
    'read: loop {
        if fresh {
            let mut activity_only = true;
            loop {
                match codec.decode(&mut buf, limit) {
                    Ok(Some(Decoded::Message(msg))) => {
                        activity_only = false;
                        let binary = msg.is_binary();
                        let result = shared.lock().client_message(
                            id.connection,
                            msg.into_bytes(),
                            binary,
                            &shared.counters,
                        );
                        match result {
                            Ok(false) => {}
                            Ok(true) => {
                                // Back-pressure: stop reading until this client's queue drains.
                                while !shared.lock().client_can_read(id.connection) {
                                    tokio::select! {
                                        _ = out.drained() => {}
                                        _ = out.killed() => { reason = CloseReason::SlowConsumer; break 'read; }
                                        _ = &mut writer => { writer_ended = true; reason = CloseReason::ServerClose; break 'read; }
                                    }
                                }
                            }
                            Err(Rejected::QueueFull) => {
                                tracing::warn!(client = %id, %peer, "gateway event queue full; message rejected");
                                let _ = out.push(protocol.notice(
                                    "server busy; your message was rejected, try again later",
                                ));
                            }
                        }
                    }
                    Ok(Some(Decoded::Reply(bytes))) => {
                        let _ = out.push(bytes);
                    }
                    Ok(Some(Decoded::Activity)) => {}
                    Ok(Some(Decoded::Closing(bytes))) => {
                        let _ = out.push(bytes);
                        out.close_quietly();
                        writer_ended = tokio::time::timeout(FLUSH_TIMEOUT, &mut writer)
                            .await
                            .is_ok();
                        break 'read;
                    }
                    Ok(None) => break,
                    Err(e) if e.is_fatal() => {
                        tracing::warn!(client = %id, %peer, listener = %listener.meta.name, error = %e, "closing client: protocol violation");
                        let _ = out.push(protocol.error_message(&e));
                        out.close_quietly();
                        reason = CloseReason::ProtocolError;
                        writer_ended = tokio::time::timeout(FLUSH_TIMEOUT, &mut writer)
                            .await
                            .is_ok();
                        break 'read;
                    }
                    Err(e) => {
                        tracing::info!(client = %id, %peer, error = %e, "skipping a bad message");
                        let _ = out.push(protocol.error_message(&e));
                    }
                }
            }
            if activity_only {
                shared.lock().touch(id.connection);
            }
            if buf.is_empty() {
                // Idle clients hold no read buffer: this is most of a gateway's memory.
                buf = BytesMut::new();
            }
        }
        tokio::select! {
            _ = out.killed() => { reason = CloseReason::SlowConsumer; break; }
            _ = &mut writer => { writer_ended = true; reason = CloseReason::ServerClose; break; }
            read = rd.read_some(&mut buf) => match read {
                Ok(0) => break,
                Ok(n) => {
                    metrics::bytes_in(n);
                    fresh = true;
                }
                Err(_) => break, // a reset: the client is gone
            }
        }
    }

    shared.lock().client_closed(id.connection, &shared.counters);
    if reason == CloseReason::ServerClose {
        // The heartbeat or a limit says so when it closes a client.
        reason = out.closed_for().unwrap_or(reason);
    }
    metrics::client_disconnected(&listener.meta.name, protocol, reason);
    tracing::debug!(client = %id, %peer, reason = reason.as_str(), "client disconnected");
    // The writer flushes what is queued, then ends (at once for a client cut off for
    // not reading).
    out.close();
    if writer_ended {
        return;
    }
    if out.is_killed() {
        writer.abort();
    } else if tokio::time::timeout(FLUSH_TIMEOUT, &mut writer)
        .await
        .is_err()
    {
        // A peer that stopped reading must not keep a task (and its queue) alive.
        tracing::debug!(client = %id, "gave up flushing to a closed client");
        writer.abort();
    }
}

async fn write_loop(mut wr: WriteHalf, out: Outbound, protocol: ClientProtocol) {
    let mut buf = BytesMut::new();
    loop {
        let after = out.next_batch(&mut buf, WRITE_BATCH).await;
        if let AfterBatch::Close { goodbye: true } = after {
            if let Some(bye) = protocol.goodbye() {
                buf.extend_from_slice(&bye);
            }
        }
        if !buf.is_empty() {
            if wr.write_all(&buf).await.is_err() {
                return;
            }
            metrics::bytes_out(buf.len());
            // Idle clients hold no write buffer either.
            buf = BytesMut::new();
        }
        if after != AfterBatch::Continue {
            let _ = wr.shutdown().await;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> HttpRequest {
        HttpRequest {
            method: "GET".into(),
            path: "/".into(),
            query: String::new(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let from_proxy: SocketAddr = "10.1.2.3:4000".parse().unwrap();
        let from_client: SocketAddr = "203.0.113.5:4000".parse().unwrap();
        let r = req(&[("X-Forwarded-For", "198.51.100.7, 10.9.9.9")]);
        assert_eq!(
            forwarded_for(&trusted, from_proxy, &r).as_deref(),
            Some("198.51.100.7"),
            "the right-most untrusted hop"
        );
        assert_eq!(forwarded_for(&trusted, from_client, &r), None);
        assert_eq!(forwarded_for(&[], from_proxy, &r), None);
    }

    #[test]
    fn origins() {
        let allowed = vec!["https://chat.example.com".to_string()];
        assert!(check_origin(&allowed, &req(&[("Origin", "https://chat.example.com")])).is_ok());
        assert_eq!(
            check_origin(&allowed, &req(&[("Origin", "https://evil.example")]))
                .unwrap_err()
                .status,
            403
        );
        assert!(check_origin(&allowed, &req(&[])).is_ok(), "not a browser");
        assert!(check_origin(&[], &req(&[("Origin", "https://any")])).is_ok());
    }
}
