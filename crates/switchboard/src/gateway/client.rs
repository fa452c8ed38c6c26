//! One client connection: a reader that decodes messages and feeds them to the routing
//! state, and a writer that drains the client's byte-bounded outbound queue.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;

use super::state::{Outbound, Rejected};
use super::Shared;
use crate::config::ListenerConfig;
use crate::protocol::ClientProtocol;

/// Largest read from a client socket at once.
const READ_CHUNK: usize = 16 << 10;
/// Largest batch the writer gathers before one write.
const WRITE_BATCH: usize = 64 << 10;
/// How long a closing connection may take to flush its last messages.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves one accepted client until it disconnects or is closed.
pub async fn serve(
    shared: Arc<Shared>,
    socket: TcpStream,
    peer: SocketAddr,
    listener: Arc<ListenerConfig>,
    listener_name: Arc<str>,
) {
    let _ = socket.set_nodelay(true);
    let protocol = listener.protocol;
    let limit = listener.max_message();
    let out = Outbound::new(shared.config.outbound_limit);
    let id = shared.lock().add_client(
        peer.to_string(),
        listener_name,
        protocol,
        out.clone(),
        &shared.counters,
    );
    tracing::debug!(client = %id, %peer, listener = %listener.name, "client connected");

    let (rd, wr) = socket.into_split();
    let mut writer = tokio::spawn(write_loop(wr, out.clone()));
    // Set once `writer` has completed (a JoinHandle must not be polled again after).
    let mut writer_ended = false;

    // Read until EOF, error, kill (slow consumer) or the writer closing (kick).
    let mut buf = BytesMut::new();
    let mut reason = "client closed the connection";
    'read: loop {
        tokio::select! {
            _ = out.killed() => { reason = "slow consumer"; break; }
            _ = &mut writer => { writer_ended = true; reason = "closed by the server"; break; }
            ready = rd.readable() => {
                if ready.is_err() { reason = "socket error"; break; }
            }
        }
        buf.reserve(READ_CHUNK);
        match rd.try_read_buf(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // A spurious wake-up: give the buffer back if it holds nothing.
                if buf.is_empty() {
                    buf = BytesMut::new();
                }
                continue;
            }
            Err(_) => {
                reason = "read error";
                break;
            }
        }
        let mut got_message = false;
        loop {
            match protocol.decode(&mut buf, limit) {
                Ok(Some(msg)) => {
                    got_message = true;
                    let binary = protocol == ClientProtocol::Frame;
                    let result =
                        shared
                            .lock()
                            .client_message(id.connection, msg, binary, &shared.counters);
                    match result {
                        Ok(false) => {}
                        Ok(true) => {
                            // Back-pressure: stop reading until this client's queue drains.
                            while !shared.lock().client_can_read(id.connection) {
                                tokio::select! {
                                    _ = out.drained() => {}
                                    _ = out.killed() => { reason = "slow consumer"; break 'read; }
                                    _ = &mut writer => { writer_ended = true; reason = "closed by the server"; break 'read; }
                                }
                            }
                        }
                        Err(Rejected::QueueFull) => {
                            tracing::warn!(client = %id, %peer, "gateway event queue full; message rejected");
                            let _ =
                                out.push(protocol.notice(
                                    "server busy; your message was rejected, try again later",
                                ));
                        }
                    }
                }
                Ok(None) => break,
                Err(e) if e.is_fatal() => {
                    tracing::warn!(client = %id, %peer, listener = %listener.name, error = %e, "closing client: protocol violation");
                    let _ = out.push(protocol.error_message(&e));
                    out.close();
                    reason = "protocol violation";
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
        if !got_message {
            shared.lock().touch(id.connection);
        }
        if buf.is_empty() {
            // Idle clients hold no read buffer: this is most of a gateway's memory.
            buf = BytesMut::new();
        }
    }

    shared.lock().client_closed(id.connection, &shared.counters);
    tracing::debug!(client = %id, %peer, reason, "client disconnected");
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

async fn write_loop(mut wr: OwnedWriteHalf, out: Outbound) {
    let mut buf = BytesMut::new();
    loop {
        let close = out.next_batch(&mut buf, WRITE_BATCH).await;
        if !buf.is_empty() {
            if wr.write_all(&buf).await.is_err() {
                return;
            }
            // Idle clients hold no write buffer either.
            buf = BytesMut::new();
        }
        if close {
            let _ = wr.shutdown().await;
            return;
        }
    }
}
