//! One client connection, whatever its transport and protocol: the TLS handshake (on
//! `tls` listeners), the HTTP request and the application's verdict (on `websocket`
//! listeners), then one task that reads and decodes messages into the routing state
//! and writes the client's byte-bounded outbound queue.
//!
//! After the handshakes the connection is a [`Conn`] polled by hand: one future, one
//! task and one waker per client (the outbound queue wakes it for data to write, a
//! close, a cut-off or room in the client's event queue), which keeps an idle client
//! small and a delivered message free of allocations. Every close ends within
//! `gateway.flush_timeout`: what is queued is written until then, and the socket is
//! aborted after, so a client that does not read cannot hold a close open.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use super::limits::Cut;
use super::limits::SourcePlace;
use super::outbound::{Written, FULL_WRITE};
use super::state::{Opening, Outbound, Rejected, Verdict};
use super::{Handshaking, Listener, ListenerPlace, Places, Shared};
use crate::metrics::gateway::{self as metrics, CloseReason};
use crate::protocol::websocket::{self, HttpError};
use crate::protocol::{ClientCodec, ClientProtocol, Decoded};
use crate::transport::{self, ClientStream};
use crate::ClientId;
use switchboard_core::http::{answer_request, HttpAnswer, Refusal};

/// How long a last answer of the handshake phase (an HTTP error, a refusal) may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Reads a connection makes in a row before it lets other tasks run.
const READS_PER_TURN: usize = 16;

/// Serves one accepted connection until it ends; `place` counts it against
/// `max_clients` until it is registered (or gone), `places` against the listener's and
/// the source address's limits until it ends.
///
/// The handshakes run in a boxed future of their own, freed once they are done, and the
/// connection is then a [`Conn`], which is its own future: a task holds room for the
/// largest state its future can be in, and what a TLS handshake or an upgrade needs
/// must not be what every idle client pays for as long as it stays (a test below keeps
/// the steady state small).
pub fn serve(
    place: Handshaking,
    places: Places,
    tcp: TcpStream,
    peer: SocketAddr,
    listener: Arc<Listener>,
) -> impl Future<Output = ()> + Send {
    Serving::Opening(Box::pin(open(place, places, tcp, peer, listener)))
}

/// A connection's future: its handshakes, boxed, then its [`Conn`] in place (an `async`
/// block awaiting one then the other would hold room for two `Conn`s).
// The connection in place is the point: it is the state a client stays in.
#[allow(clippy::large_enum_variant)]
enum Serving<H> {
    Opening(Pin<Box<H>>),
    Open(Conn),
    Ended,
}

impl<H: Future<Output = Option<Conn>>> Future for Serving<H> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match &mut *self {
                Serving::Opening(opening) => match opening.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(conn)) => *self = Serving::Open(conn),
                    Poll::Ready(None) => *self = Serving::Ended,
                },
                Serving::Open(conn) => {
                    std::task::ready!(Pin::new(conn).poll(cx));
                    *self = Serving::Ended;
                }
                Serving::Ended => return Poll::Ready(()),
            }
        }
    }
}

/// The TLS handshake (on `tls` listeners) and the WebSocket upgrade (on `websocket`
/// listeners), then the registration: the connection as a client, or `None` when it
/// ended before (counted and logged here).
async fn open(
    place: Handshaking,
    places: Places,
    tcp: TcpStream,
    peer: SocketAddr,
    listener: Arc<Listener>,
) -> Option<Conn> {
    let (listener_place, source_place) = places;
    let shared = place.0.clone();
    transport::nodelay(&tcp);
    // The TLS handshake and the WebSocket upgrade together have `handshake_timeout`.
    let deadline = Instant::now() + listener.config.handshake_timeout;
    let mut stream = match &listener.tls {
        None => ClientStream::Tcp(tcp),
        Some(acceptor) => match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => ClientStream::Tls(Box::new(tls)),
            Ok(Err(e)) => {
                tracing::debug!(%peer, listener = %listener.meta.name, error = %e, "TLS handshake failed");
                metrics::client_refused(&listener.meta.name, CloseReason::ProtocolError);
                shared.cuts.note(peer.ip(), Cut::HandshakeFailed);
                return None;
            }
            Err(_) => {
                tracing::debug!(%peer, listener = %listener.meta.name, "TLS handshake timed out");
                metrics::client_refused(&listener.meta.name, CloseReason::ProtocolError);
                shared.cuts.note(peer.ip(), Cut::HandshakeTimeout);
                return None;
            }
        },
    };
    let out = Outbound::new(shared.config.outbound_limit);
    let mut buf = BytesMut::new();
    let id = if listener.meta.protocol == ClientProtocol::WebSocket {
        match upgrade(
            &shared,
            &listener,
            peer,
            &mut stream,
            &mut buf,
            &out,
            deadline,
        )
        .await
        {
            Ok(id) => id,
            Err(ended) => {
                if let Some(reason) = ended {
                    metrics::client_refused(&listener.meta.name, reason);
                }
                let _ = tokio::time::timeout(ANSWER_TIMEOUT, stream.shutdown()).await;
                return None;
            }
        }
    } else {
        shared.lock().add_client(
            peer,
            listener.meta.clone(),
            out.clone(),
            Opening::Connect,
            &shared.counters,
        )
    };
    drop(place);
    if buf.is_empty() {
        // What the upgrade request was read into, with its free room: an idle client
        // holds no read buffer.
        buf = BytesMut::new();
    }
    let protocol = listener.meta.protocol;
    metrics::client_connected(&listener.meta.name, protocol);
    tracing::debug!(client = %id, %peer, listener = %listener.meta.name, "client connected");
    // Never written to: the first message goes out at once.
    out.wrote_at(
        millis_since(&shared, Instant::now())
            .wrapping_sub(shared.config.min_write_interval.as_millis() as u16),
    );
    if let ClientStream::Tcp(tcp) = &stream {
        // Plain TCP: the routing task may write to it (`super::direct`); the `Conn`
        // ends the queue before it drops the socket.
        out.write_directly(tcp.as_raw_fd());
    }
    Some(Conn {
        shared,
        listener: listener_place,
        conn: id.connection,
        io: stream,
        buf,
        codec: ClientCodec::new(protocol),
        out,
        paused: false,
        closing: false,
        timer: None,
        source: source_place.map(SourcePlace::keep),
    })
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
    io: &mut ClientStream,
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
                shared.cuts.note(peer.ip(), Cut::HandshakeFailed);
                answer(io, websocket::error_response(&e)).await;
                return Err(Some(CloseReason::ProtocolError));
            }
        }
        match tokio::time::timeout_at(deadline, io.read_some(buf)).await {
            Ok(Ok(n)) if n > 0 => metrics::bytes_in(n),
            Ok(_) => return Err(None),
            Err(_) => {
                tracing::debug!(%peer, listener = %name, "no complete HTTP request within the handshake timeout; closing");
                shared.cuts.note(peer.ip(), Cut::HandshakeTimeout);
                return Err(Some(CloseReason::ProtocolError));
            }
        }
    };
    let (accept, json) = match answer_request(&listener.config, &listener.assets, peer, request) {
        HttpAnswer::Page(page) => {
            answer(io, page).await;
            return Err(None);
        }
        HttpAnswer::Refused { response, refusal } => {
            let reason = match refusal {
                Refusal::BadUpgrade => CloseReason::ProtocolError,
                Refusal::Origin => {
                    tracing::info!(%peer, listener = %name, error = %response, "WebSocket upgrade refused");
                    CloseReason::Refused
                }
            };
            answer(io, websocket::error_response(&response)).await;
            return Err(Some(reason));
        }
        HttpAnswer::Upgrade { accept, json } => (accept, json),
    };
    let (tx, mut rx) = oneshot::channel();
    let id = shared.lock().add_client(
        peer,
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
    let refuse = |status: u16, reason: String| HttpError { status, reason };
    match verdict {
        Verdict::Accepted => {
            let response = websocket::upgrade_response(&accept);
            metrics::bytes_out(response.len());
            if io.write_all(&response).await.is_err() {
                // Registered and live: the reader finds the connection gone and the
                // close event follows the connect event.
                tracing::debug!(client = %id, "client left before the upgrade answer");
            }
            Ok(id)
        }
        Verdict::Refused { status, reason } => {
            tracing::info!(client = %id, %peer, status, %reason, "WebSocket upgrade refused by the application");
            answer(io, websocket::error_response(&refuse(status, reason))).await;
            Err(Some(CloseReason::Refused))
        }
    }
}

/// Writes a last answer (bounded in time: the client may not read).
async fn answer(io: &mut ClientStream, bytes: bytes::Bytes) {
    metrics::bytes_out(bytes.len());
    let _ = tokio::time::timeout(ANSWER_TIMEOUT, io.write_all(&bytes)).await;
}

/// Sets the connection's timer to `deadline`, making it the first time.
fn set_timer(timer: &mut Option<Pin<Box<Sleep>>>, deadline: Instant) {
    match timer {
        Some(t) => t.as_mut().reset(deadline),
        None => *timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
    }
}

/// Polls the connection's timer (ready if there is none: nothing to wait for).
fn poll_timer(timer: &mut Option<Pin<Box<Sleep>>>, cx: &mut Context<'_>) -> Poll<()> {
    match timer {
        Some(t) => t.as_mut().poll(cx),
        None => Poll::Ready(()),
    }
}

/// Milliseconds from the gateway's epoch to `at`, in 16 wrapping bits (as
/// [`Outbound::last_write`]).
fn millis_since(shared: &Shared, at: Instant) -> u16 {
    // Truncated on purpose: only differences of recent times are used.
    at.saturating_duration_since(shared.epoch).as_millis() as u16
}

/// A registered client's connection after its handshakes: the future that reads,
/// decodes and writes until the connection ends, then unregisters the client.
///
/// Every connected client's task holds one for as long as the client stays, so it is
/// kept small (a test bounds its size): its id is the gateway's number and `conn`, its
/// peer address is asked of the socket when a warning needs it.
struct Conn {
    shared: Arc<Shared>,
    /// Its listener, and its place in the listener's count.
    listener: ListenerPlace,
    /// Its connection number.
    conn: u64,
    io: ClientStream,
    /// Bytes read and not decoded yet; released whenever empty.
    buf: BytesMut,
    codec: ClientCodec,
    out: Outbound,
    /// Not reading: the client's event queue is over its bound (back-pressure).
    paused: bool,
    /// Closing: what is queued is written out, nothing more is read.
    closing: bool,
    /// The connection's one timer (boxed: made the first time it is needed, and kept):
    /// once closing, when the flush gives up; before, with `gateway.min_write_interval`,
    /// when what is held back goes out. One slot for both keeps `Conn` within its
    /// task's 256 bytes (a test bounds it).
    timer: Option<Pin<Box<Sleep>>>,
    /// The source address whose per-address count it has a place in (none for
    /// loopback, trusted proxies or without per-address limits), given back on drop.
    source: Option<IpAddr>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Before the socket closes (the fields drop after this): no write from the
        // routing task reaches its descriptor from now on.
        self.out.end();
        if let Some(ip) = self.source {
            self.shared.per_source.release(ip);
        }
    }
}

impl Future for Conn {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Poll::Ready(reason) = self.poll_conn(cx) else {
            return Poll::Pending;
        };
        let Self {
            shared,
            listener,
            conn,
            out,
            ..
        } = &*self;
        out.end();
        shared.lock().client_closed(*conn, &shared.counters);
        let protocol = listener.meta.protocol;
        metrics::client_disconnected(&listener.meta.name, protocol, reason);
        tracing::debug!(client = %self.id(), reason = reason.as_str(), "client disconnected");
        Poll::Ready(())
    }
}

impl Conn {
    /// Drives the connection; ready, with the reason, when it has ended.
    fn poll_conn(&mut self, cx: &mut Context<'_>) -> Poll<CloseReason> {
        self.out.register(cx);
        let mut reads = 0;
        loop {
            if self.out.is_killed() {
                // Cut off for not reading: nothing more is written.
                return Poll::Ready(CloseReason::SlowConsumer);
            }
            if !self.closing {
                if let Some(closing) = self.out.closing() {
                    if closing.goodbye {
                        let protocol = self.listener.meta.protocol;
                        if let Some(bye) = protocol.goodbye(closing.going_away) {
                            self.out.push_own(bye);
                        }
                    }
                    let flush = self.shared.config.flush_timeout;
                    self.closing = true;
                    set_timer(&mut self.timer, Instant::now() + flush);
                }
            }
            let drained = if self.holds_back(cx) {
                false
            } else {
                match self.out.poll_write(cx, &mut self.io) {
                    Ok(Written::Idle) => true,
                    Ok(Written::Drained) => {
                        self.wrote();
                        true
                    }
                    Ok(Written::Blocked) => false,
                    // The client is gone: nothing more can be written to it.
                    Err(_) => return Poll::Ready(self.server_reason(CloseReason::ClientClosed)),
                }
            };
            if self.closing {
                // Closing: no more reading, the queue is written out, then the stream
                // is shut down — or, at the deadline, dropped as it is.
                if drained && Pin::new(&mut self.io).poll_shutdown(cx).is_ready() {
                    return Poll::Ready(self.server_reason(CloseReason::ServerClose));
                }
                if poll_timer(&mut self.timer, cx).is_ready() {
                    tracing::debug!(client = %self.id(), "gave up flushing to a closing client");
                    return Poll::Ready(self.server_reason(CloseReason::ServerClose));
                }
                return Poll::Pending;
            }
            if drained && matches!(self.io, ClientStream::Tls(_)) {
                // TLS records rustls still holds go out now.
                if let Poll::Ready(Err(_)) = Pin::new(&mut self.io).poll_flush(cx) {
                    return Poll::Ready(CloseReason::ClientClosed);
                }
            }
            if self.paused {
                if !(self.out.take_drained() && self.shared.lock().client_can_read(self.conn)) {
                    return Poll::Pending;
                }
                self.paused = false;
                // What was read before the pause comes first.
                self.decode();
                continue;
            }
            if reads == READS_PER_TURN {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            match self.io.poll_read_some(cx, &mut self.buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    // The client closed its side: what is queued for it is still
                    // written, within the flush deadline.
                    self.out.close_with(CloseReason::ClientClosed, true);
                }
                Poll::Ready(Ok(n)) => {
                    reads += 1;
                    metrics::bytes_in(n);
                    self.decode();
                }
                // A reset: the client is gone.
                Poll::Ready(Err(_)) => return Poll::Ready(CloseReason::ClientClosed),
            }
        }
    }

    /// Whether what is queued waits for `gateway.min_write_interval` to pass since the
    /// last write (then the pacing timer is armed and wakes the task): only with the
    /// interval set, something queued but less than [`FULL_WRITE`], and the connection
    /// not closing.
    fn holds_back(&mut self, cx: &mut Context<'_>) -> bool {
        let interval = self.shared.config.min_write_interval;
        if interval.is_zero() || self.closing {
            return false;
        }
        let queued = self.out.queued_bytes();
        if queued == 0 || queued >= FULL_WRITE {
            return false;
        }
        let now = Instant::now();
        let since = u128::from(self.millis(now).wrapping_sub(self.out.last_write()));
        let Some(wait) = interval.as_millis().checked_sub(since).filter(|w| *w > 0) else {
            return false;
        };
        // Unless armed for this batch already (and woken by something else meanwhile).
        if self.timer.as_ref().is_none_or(|t| t.deadline() <= now) {
            set_timer(&mut self.timer, now + Duration::from_millis(wait as u64));
        }
        poll_timer(&mut self.timer, cx).is_pending()
    }

    /// Notes a write, for `gateway.min_write_interval`.
    fn wrote(&mut self) {
        if !self.shared.config.min_write_interval.is_zero() {
            self.out.wrote_at(self.millis(Instant::now()));
        }
    }

    fn millis(&self, at: Instant) -> u16 {
        millis_since(&self.shared, at)
    }

    /// The client's id.
    fn id(&self) -> ClientId {
        ClientId::new(self.shared.number, self.conn)
    }

    /// Why the connection ended, when the server closed it: the reason its closer gave.
    fn server_reason(&self, otherwise: CloseReason) -> CloseReason {
        self.out.closed_for().unwrap_or(otherwise)
    }

    /// Decodes what is buffered into events, answers and closes.
    fn decode(&mut self) {
        let id = self.id();
        let Self {
            shared,
            listener,
            conn,
            io,
            buf,
            codec,
            out,
            paused,
            ..
        } = self;
        let peer = || {
            io.peer_addr()
                .map_or_else(|| "?".to_owned(), |a| a.to_string())
        };
        let protocol = listener.meta.protocol;
        let limit = listener.config.max_message();
        let mut activity_only = true;
        loop {
            match codec.decode(buf, limit) {
                Ok(Some(Decoded::Message(msg))) => {
                    activity_only = false;
                    let binary = msg.is_binary();
                    let result = shared.lock().client_message(
                        *conn,
                        msg.into_bytes(),
                        binary,
                        &shared.counters,
                    );
                    match result {
                        Ok(false) => {}
                        Ok(true) => {
                            // Back-pressure: no more until this client's queue drains.
                            *paused = true;
                            break;
                        }
                        Err(Rejected::QueueFull) => {
                            tracing::warn!(client = %id, peer = %peer(), "gateway event queue full; message rejected");
                            let _ =
                                out.push(protocol.notice(
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
                    out.push_own(bytes);
                    out.close_with(CloseReason::ClientClosed, false);
                    break;
                }
                Ok(None) => break,
                Err(e) if e.is_fatal() => {
                    tracing::warn!(client = %id, peer = %peer(), listener = %listener.meta.name, error = %e, "closing client: protocol violation");
                    out.push_own(protocol.error_message(&e));
                    out.close_with(CloseReason::ProtocolError, false);
                    break;
                }
                Err(e) => {
                    tracing::info!(client = %id, peer = %peer(), error = %e, "skipping a bad message");
                    let _ = out.push(protocol.error_message(&e));
                }
            }
        }
        if activity_only {
            shared.lock().touch(*conn);
        }
        if buf.is_empty() {
            // Idle clients hold no read buffer: this is most of a gateway's memory.
            *buf = BytesMut::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every connected client's task holds its connection's future for as long as it
    /// stays: once the handshakes are done, that is the [`Conn`] and nothing more (an
    /// `async fn` holding both phases measured 488 bytes, and its task 1,152).
    #[test]
    fn a_connection_future_holds_only_the_connection() {
        fn future_size<F, A, B, C, D, E>(_: fn(A, B, C, D, E) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let size = future_size(serve);
        assert_eq!(size, std::mem::size_of::<Conn>());
        // What a client's task takes: tokio's task cell, aligned to 128 bytes, around
        // the connection's future wrapped by the task tracker. In a release build 144
        // bytes of `Conn` made a 256-byte task; 152 (the pacing timer in a slot of its
        // own) made it 384, and the gateway's memory per idle client grew by as much
        // (bench connect: 938 to 1,089 bytes net per client). Tokio's `TcpStream` is 8
        // bytes larger in a debug build (so is the task there), so what is bounded in
        // every build is what `Conn` holds besides the stream...
        let ours = size - std::mem::size_of::<ClientStream>();
        assert!(ours <= 112, "`Conn` holds {ours} bytes besides its stream");
        // ...and the task itself in a release build, measured on the real future type
        // (its handshake future only changes what a box points to):
        // `cargo test --release -p switchboard --lib a_connection_future`.
        if cfg!(not(debug_assertions)) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime");
            let tracker = tokio_util::task::TaskTracker::new();
            let task = crate::alloc_count::largest(|| {
                let _guard = rt.enter();
                drop(tracker.spawn(Serving::<std::future::Pending<Option<Conn>>>::Ended));
            });
            assert!(
                task <= 256,
                "a client's task takes {task} bytes ({size} of them `Conn`)"
            );
        }
    }
}
