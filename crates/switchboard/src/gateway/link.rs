//! One connection on the internal listener: the handshake, then events out and
//! acknowledgements, commands and queries in.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, SinkExt, StreamExt};
use tokio_util::codec::Framed;

use super::direct;
use super::link_queue::{self, LinkRx, LinkTx};
use super::state::Verdict;
use super::Shared;
use crate::auth;
use crate::metrics::gateway::{self as metrics, InternalRefusal};
use crate::protocol::internal::{self, frame_kind, Frame, InternalCodec, PROTOCOL_VERSION};
use crate::transport::LinkStream;

/// Frames routed in one batch at most (see `serve`): the link's pings and its queue's
/// limit are looked at between batches.
const BATCH_FRAMES: usize = 64;

/// How long a peer has to answer the challenge.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Writes a refusal to a connection that gets no handshake at all (too many peers are
/// in theirs): one frame, without waiting — a peer that does not read gets nothing.
pub fn refuse_at_once(socket: &tokio::net::TcpStream, reason: &str) {
    let frame = internal::encode_to_bytes(&Frame::Refused {
        reason: reason.to_owned(),
    });
    let _ = socket.try_write(&frame);
}

/// Serves one internal connection (TCP, or TLS already accepted) until it closes;
/// `unauthenticated` holds its place among the connections still in their handshake.
pub async fn serve(
    shared: Arc<Shared>,
    socket: LinkStream,
    peer: SocketAddr,
    unauthenticated: super::Unauthenticated,
) {
    // Until the peer has proved the secret, it may send no frame over a few KiB.
    let codec = InternalCodec {
        max_frame: internal::MAX_HANDSHAKE_FRAME,
    };
    let mut framed = Framed::new(socket, codec);
    let nonce = auth::nonce();
    let hello = Frame::Hello {
        version: PROTOCOL_VERSION,
        gateway: shared.number,
        nonce,
    };
    if framed.send(hello).await.is_err() {
        return;
    }
    let (role, name, peer_nonce) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, framed.next())
        .await
    {
        Ok(Some(Ok(Frame::Auth {
            version,
            role,
            name,
            mac,
            nonce: peer_nonce,
        }))) => {
            if version != PROTOCOL_VERSION {
                refuse(&shared, &mut framed, peer, InternalRefusal::Version, &format!("protocol version {version} is not supported (this gateway speaks {PROTOCOL_VERSION})")).await;
                return;
            }
            if !auth::verify(&shared.secret, &nonce, role, &name, &mac) {
                refuse(
                    &shared,
                    &mut framed,
                    peer,
                    InternalRefusal::Auth,
                    "wrong secret",
                )
                .await;
                return;
            }
            (role, name, peer_nonce)
        }
        Ok(Some(Ok(other))) => {
            refuse(
                &shared,
                &mut framed,
                peer,
                InternalRefusal::ProtocolError,
                &format!("expected auth, got {}", frame_kind(&other)),
            )
            .await;
            return;
        }
        Ok(Some(Err(e))) => {
            refuse(
                &shared,
                &mut framed,
                peer,
                InternalRefusal::ProtocolError,
                &format!("bad handshake frame: {e}"),
            )
            .await;
            return;
        }
        Ok(None) => {
            metrics::internal_refused(InternalRefusal::Closed);
            if shared.internal_log.allow() {
                tracing::warn!(%peer, "internal connection closed during the handshake");
            }
            return;
        }
        Err(_) => {
            refuse(
                &shared,
                &mut framed,
                peer,
                InternalRefusal::Timeout,
                "no auth within 5 s",
            )
            .await;
            return;
        }
    };
    drop(unauthenticated);
    framed.codec_mut().max_frame = shared.config.max_internal_frame;
    let welcome = Frame::Welcome {
        mac: auth::gateway_answer(&shared.secret, &peer_nonce, shared.number),
    };
    if framed.send(welcome).await.is_err() {
        return;
    }
    let (tx, rx) = link_queue::channel(shared.config.link_queue_limit);
    let link = shared
        .lock()
        .add_link(name.clone(), role, tx.clone(), &shared.counters);
    tracing::info!(%peer, %name, ?role, "peer authenticated");

    let (sink, mut stream) = framed.split();
    let writer = tokio::spawn(write_loop(sink, rx));
    let mut reason = String::from("closed by peer");
    // Liveness: ping every interval; a peer silent for three intervals is gone (its
    // machine may have vanished without closing the connection).
    let every = shared.config.link_ping_interval;
    let mut ping = tokio::time::interval(every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = tokio::time::Instant::now();
    'read: loop {
        let first = tokio::select! {
            f = stream.next() => match f {
                Some(f) => f,
                None => break,
            },
            _ = tx.overflowed() => {
                reason = format!(
                    "link queue over its limit of {} bytes (gateway.link_queue_limit): the peer does not read; closing",
                    tx.limit()
                );
                tracing::warn!(%peer, %name, "{reason}");
                break;
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > every * 3 {
                    reason = format!("no frame for {:?} (3 ping intervals)", last_heard.elapsed());
                    break;
                }
                let _ = tx.send(internal::encode_to_bytes(&Frame::Ping));
                continue;
            }
        };
        last_heard = tokio::time::Instant::now();
        // The frames read so far are routed in one batch, and the clients they are
        // for written to once it ends (`super::direct`): frames already buffered (or
        // in the socket) are taken without waiting, up to `BATCH_FRAMES`.
        let _batch = direct::Batch::open(shared.pacer.as_deref());
        let mut frame = first;
        for handled in 1.. {
            if let Err(why) = handle(&shared, link, &tx, peer, &name, frame) {
                reason = why;
                break 'read;
            }
            if handled == BATCH_FRAMES {
                break;
            }
            frame = match stream.next().now_or_never() {
                Some(Some(f)) => f,
                Some(None) => break 'read,
                None => break,
            };
        }
    }
    let redispatched = shared.lock().link_closed(link, &shared.counters);
    tracing::info!(%peer, %name, %reason, redispatched, "peer disconnected");
    writer.abort();
}

/// Handles one frame from an authenticated peer; an error is why the link closes.
fn handle(
    shared: &Shared,
    link: u64,
    tx: &LinkTx,
    peer: SocketAddr,
    name: &str,
    frame: Result<Frame, internal::LinkError>,
) -> Result<(), String> {
    match frame {
        Ok(Frame::Ack { seq, client }) => shared.lock().ack(link, seq, client, &shared.counters),
        Ok(Frame::Verdict {
            seq,
            client,
            status,
            reason,
        }) => {
            let verdict = if status == 0 {
                Verdict::Accepted
            } else {
                Verdict::Refused { status, reason }
            };
            shared
                .lock()
                .verdict(link, seq, client, verdict, &shared.counters)
        }
        Ok(Frame::Command(cmd)) => {
            shared.lock().command(cmd, &shared.counters);
        }
        Ok(Frame::Query { id, query }) => {
            let answer = shared.lock().query(query, &shared.counters);
            // Sorted and formatted once the state's lock is released (the guard
            // is a temporary of the statement above).
            let reply = answer.finish();
            let max = shared.config.max_internal_frame;
            for frame in internal::reply_frames(id, reply, max) {
                if !tx.send(frame) {
                    break;
                }
            }
        }
        Ok(Frame::Draining) => {
            shared.lock().link_draining(link, &shared.counters);
            tracing::info!(%peer, %name, "worker is draining; no new events go to it");
            let _ = tx.send(internal::encode_to_bytes(&Frame::DrainAck));
        }
        Ok(Frame::Ping) => {
            let _ = tx.send(internal::encode_to_bytes(&Frame::Pong));
        }
        Ok(Frame::Pong) => {}
        Ok(other) => return Err(format!("unexpected {} frame", frame_kind(&other))),
        Err(e) => return Err(format!("protocol error: {e}")),
    }
    Ok(())
}

/// Refuses a peer in its handshake: counted, logged (within the per-second budget, so
/// a flood does not flood the log) and told why in a `refused` frame.
async fn refuse(
    shared: &Shared,
    framed: &mut Framed<LinkStream, InternalCodec>,
    peer: SocketAddr,
    kind: InternalRefusal,
    reason: &str,
) {
    metrics::internal_refused(kind);
    if shared.internal_log.allow() {
        tracing::warn!(%peer, reason, "refused internal connection");
    }
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        framed.send(Frame::Refused {
            reason: reason.to_owned(),
        }),
    )
    .await;
}

type LinkSink = futures::stream::SplitSink<Framed<LinkStream, InternalCodec>, Bytes>;

async fn write_loop(mut sink: LinkSink, mut rx: LinkRx) {
    while let Some(first) = rx.recv().await {
        if sink.feed(first).await.is_err() {
            return;
        }
        // Gather what else is ready into the same write: what is queued now, and,
        // after one yield, what the tasks already woken add (the connections whose
        // messages came in the same poll of the sockets: a woken task runs before
        // them, so without the yield each write would carry one frame).
        if !feed_ready(&mut sink, &mut rx).await {
            return;
        }
        tokio::task::yield_now().await;
        if !feed_ready(&mut sink, &mut rx).await || sink.flush().await.is_err() {
            return;
        }
    }
}

/// Feeds every frame queued now into the sink's buffer; false once the link fails.
async fn feed_ready(sink: &mut LinkSink, rx: &mut LinkRx) -> bool {
    while let Ok(more) = rx.try_recv() {
        if sink.feed(more).await.is_err() {
            return false;
        }
    }
    true
}
