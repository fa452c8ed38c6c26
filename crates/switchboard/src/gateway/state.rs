//! The gateway's routing state: clients, uid and group indexes, worker links, and the
//! event pipeline between them. Pure bookkeeping behind one `std::sync::Mutex`, held
//! briefly and never across an `.await`; the I/O tasks call in and out through channels.
//!
//! ## The event pipeline
//! Each client has a FIFO `queue` of events not yet sent and at most one event
//! `inflight` at a worker. The next event is sent only when the worker acknowledges the
//! previous one, which gives three guarantees cheaply:
//! - one client's events are handled in order, one at a time (whatever the worker does
//!   concurrently for other clients);
//! - each event carries the session as it is when the event is sent, so a handler sees
//!   the session changes made by the handler of the previous event;
//! - when a worker dies, at most one event per client is lost in it, and that one is put
//!   back at the front of the client's queue and sent to another worker (at-least-once).
//!
//! A client sticks to the worker its first event went to, until that worker drains or
//! disconnects. With no worker connected, events wait in the queues, bounded in bytes
//! (`queue_limit`) and age (`hold_timeout`); past either bound they are rejected: the
//! client is told, the rejection logged and counted.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Map, Value};
use tokio::sync::oneshot;

use super::link_queue::LinkTx;
use crate::config::Routing;
use crate::protocol::internal::{ClientInfo, Command, EventKind, EventRef, Query, Reply, Role};
use crate::protocol::ClientProtocol;
use crate::{ClientId, PerProtocol};

pub use super::outbound::{Outbound, Push};

/// An event waiting in a client's queue.
#[derive(Debug, Clone)]
struct Pending {
    kind: EventKind,
    body: Bytes,
    /// Whether `body` is a binary message.
    binary: bool,
    /// When the client produced it (for `hold_timeout`).
    at: Instant,
}

/// The event a client has at a worker.
#[derive(Debug)]
struct InFlight {
    link: u64,
    seq: u64,
    event: Pending,
}

/// What every client of one listener shares: its name, protocol and place in the
/// gateway's list of listeners.
#[derive(Debug)]
pub struct ListenerMeta {
    /// The listener's name.
    pub name: String,
    /// Its protocol.
    pub protocol: ClientProtocol,
    /// Its index in `gateway.listeners`.
    pub index: usize,
}

/// How a client's life begins.
#[derive(Debug)]
pub enum Opening {
    /// A connect event at once.
    Connect,
    /// A WebSocket upgrade the application must accept first (`on_websocket_connect`):
    /// the request as JSON, and where the verdict goes.
    WebSocket {
        /// The upgrade request, as JSON (the event's body).
        request: Bytes,
        /// Receives the verdict.
        verdict: oneshot::Sender<Verdict>,
    },
}

/// The application's answer to a WebSocket upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Upgrade; the connect event follows.
    Accepted,
    /// Answer with this HTTP status and reason, and close.
    Refused {
        /// HTTP status.
        status: u16,
        /// Why.
        reason: String,
    },
}

/// One connected (or closing) client. Kept small: a gateway holds one per connection,
/// and most of them are idle (a test bounds its size).
struct Client {
    /// Its address, as numbers (formatted only into its events and query answers).
    ip: IpAddr,
    port: u16,
    /// The listener it connected to (shared by all its clients).
    listener: Arc<ListenerMeta>,
    /// `None` once the connection is gone (the close event may still be pending), and
    /// while a WebSocket upgrade waits for the application's verdict (the queue is then
    /// in `State::upgrades`).
    out: Option<Outbound>,
    /// Its uid, groups and session; `None` until the application gives it one of them
    /// (boxed: a client that has none pays a pointer).
    bound: Option<Box<Bound>>,
    last_seen: Seen,
    /// Worker link this client sticks to (link ids start at 1).
    worker: Option<NonZeroU64>,
    /// Its events on their way to the application; `None` while it has none (boxed:
    /// only a client with an event waiting or at a worker needs it, and the inline
    /// form would cost every idle client its size).
    events: Option<Box<Events>>,
    /// Its connect event was rejected (no worker in time): the application never saw
    /// it connect, so it hears nothing more of it — no message, no close.
    silenced: bool,
}

/// A client's events on their way to the application.
#[derive(Debug, Default)]
struct Events {
    /// The one at a worker.
    inflight: Option<InFlight>,
    /// The ones waiting for it to be acknowledged (or for a worker).
    queue: VecDeque<Pending>,
    /// Bytes of the bodies in `queue`.
    queue_bytes: usize,
}

/// When a client was last seen: centiseconds since the state's epoch in 32 bits. It
/// wraps after 497 days, so only differences are read, and a difference is right up
/// to 248 days (signed) — past [`crate::config::MAX_SILENCE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen(u32);

impl Seen {
    /// How long before `now` this was.
    fn before(self, now: Seen) -> Duration {
        Duration::from_millis(u64::from(now.0.wrapping_sub(self.0)) * 10)
    }

    /// Whether this is earlier than `other`.
    fn precedes(self, other: Seen) -> bool {
        (other.0.wrapping_sub(self.0) as i32) > 0
    }
}

/// A client's address as text, formatted on the stack for an event's frame.
struct AddrText {
    buf: [u8; 56],
    len: usize,
}

impl AddrText {
    fn new(addr: SocketAddr) -> Self {
        let mut buf = [0; 56];
        let mut rest = &mut buf[..];
        // The longest form, `[` + 45 characters of IPv6 + `]:65535`, fits: a write
        // cannot fail for want of room.
        let _ = write!(rest, "{addr}");
        let len = 56 - rest.len();
        Self { buf, len }
    }

    fn as_str(&self) -> &str {
        // `SocketAddr`'s text is ASCII.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

/// What the application bound to a client.
struct Bound {
    uid: Option<String>,
    groups: BTreeSet<String>,
    session: Map<String, Value>,
    /// `session` as JSON, cached because every event carries it.
    session_json: Bytes,
}

impl Default for Bound {
    fn default() -> Self {
        Self {
            uid: None,
            groups: BTreeSet::new(),
            session: Map::new(),
            session_json: EMPTY_SESSION.clone(),
        }
    }
}

/// The session of a client that has none.
static EMPTY_SESSION: Bytes = Bytes::from_static(b"{}");
/// The groups of a client that has none.
static NO_GROUPS: BTreeSet<String> = BTreeSet::new();

impl Client {
    fn uid(&self) -> Option<&str> {
        self.bound.as_ref()?.uid.as_deref()
    }

    fn groups(&self) -> &BTreeSet<String> {
        self.bound.as_ref().map_or(&NO_GROUPS, |b| &b.groups)
    }

    fn session_json(&self) -> &Bytes {
        self.bound
            .as_ref()
            .map_or(&EMPTY_SESSION, |b| &b.session_json)
    }

    /// What is bound to it, made on first use.
    fn bound_mut(&mut self) -> &mut Bound {
        self.bound.get_or_insert_with(Box::default)
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }

    fn inflight(&self) -> Option<&InFlight> {
        self.events.as_ref()?.inflight.as_ref()
    }

    /// Events waiting (not at a worker).
    fn queued(&self) -> usize {
        self.events.as_ref().map_or(0, |e| e.queue.len())
    }

    /// Bytes of the events waiting.
    fn queue_bytes(&self) -> usize {
        self.events.as_ref().map_or(0, |e| e.queue_bytes)
    }

    /// Whether it has an event waiting and none at a worker.
    fn waits(&self) -> bool {
        self.events
            .as_ref()
            .is_some_and(|e| e.inflight.is_none() && !e.queue.is_empty())
    }

    /// Its events, made on first use.
    fn events_mut(&mut self) -> &mut Events {
        self.events.get_or_insert_with(Box::default)
    }

    /// Gives back the events' box once nothing is in it.
    fn tidy(&mut self) {
        if self
            .events
            .as_ref()
            .is_some_and(|e| e.inflight.is_none() && e.queue.is_empty())
        {
            self.events = None;
        }
    }

    /// The worker link it sticks to.
    fn worker(&self) -> Option<u64> {
        self.worker.map(NonZeroU64::get)
    }
}

/// One authenticated peer on the internal listener.
struct Link {
    name: String,
    role: Role,
    tx: LinkTx,
    draining: bool,
    /// Clients with their event in flight here: what a lost link re-dispatches, found
    /// without visiting every client.
    inflight: HashSet<u64>,
    /// Under least-busy routing, when the worker last made progress: acknowledged an
    /// event, or got one while it had none in flight (read only while events are in
    /// flight). A worker that makes none for `gateway.held_up_after` is passed over.
    progress: Instant,
}

/// Counters published in stats.
#[derive(Debug, Default)]
pub struct Counters {
    /// Events sent to workers (re-sends included).
    pub events: AtomicU64,
    /// Events re-sent after a worker died.
    pub redispatched: AtomicU64,
    /// Events rejected (no worker in time, queue full).
    pub rejected: AtomicU64,
    /// Clients cut off for not reading.
    pub slow_consumers: AtomicU64,
}

/// Everything the gateway knows, behind the mutex of [`Shared`](super::Shared).
pub struct State {
    number: u32,
    /// Boxed: a hash table keeps room for about half as many entries again as it holds,
    /// and that room costs a pointer each this way, not a whole `Client`. Hashed with
    /// foldhash, not SipHash: a fan-out looks up every recipient here, and the keys are
    /// the gateway's own connection numbers (nothing a peer chooses to collide).
    clients: HashMap<u64, Box<Client>, foldhash::fast::RandomState>,
    uids: HashMap<String, HashSet<u64>>,
    groups: HashMap<String, HashSet<u64>>,
    links: BTreeMap<u64, Link>,
    next_link: u64,
    /// Round-robin cursor over links: for a client's first event (sticky routing),
    /// for ties (least busy).
    cursor: u64,
    /// How a client's event finds its worker (`gateway.routing`).
    routing: Routing,
    /// When a worker with events in flight counts as held up (`gateway.held_up_after`;
    /// least-busy routing only, `None` when off).
    held_up_after: Option<Duration>,
    next_seq: u64,
    next_conn: u64,
    /// Bytes of events queued or in flight, all clients together.
    queued_bytes: usize,
    /// Events in client queues (not yet at a worker), all clients together: kept as
    /// the queues change so that the held-events tick reads it instead of visiting
    /// every client, and skips its expiry scan when nothing waits.
    held: usize,
    queue_limit: usize,
    client_queue_limit: usize,
    /// Largest session JSON a client may have (`gateway.max_session`).
    max_session: usize,
    /// Count of clients with a live connection (upgrades waiting for a verdict
    /// included).
    connected: usize,
    /// WebSocket upgrades waiting for the application's verdict: the client's
    /// outbound queue (not usable before the upgrade) and where the verdict goes.
    upgrades: HashMap<u64, (Outbound, oneshot::Sender<Verdict>)>,
    /// What clients' [`Seen`] count from.
    epoch: Instant,
}

/// A query's answer as read under the state lock. [`Answer::finish`] makes the
/// reply (sorts the lists, formats the client rows) after the lock is released: a
/// list of 19,000 clients held the lock 9 ms when it was all done under it.
#[derive(Debug)]
pub enum Answer {
    /// The reply, its lists not sorted yet.
    Ready(Reply),
    /// The rows of [`Query::Clients`].
    Clients(Vec<ClientRow>),
}

/// A client's row of [`Query::Clients`], as read under the lock.
#[derive(Debug)]
pub struct ClientRow {
    client: ClientId,
    addr: SocketAddr,
    listener: Arc<ListenerMeta>,
    uid: Option<String>,
    groups: Vec<String>,
    idle_ms: u64,
}

impl Answer {
    /// The reply, its lists in order (by client id, or by name).
    pub fn finish(self) -> Reply {
        match self {
            Answer::Ready(mut reply) => {
                match &mut reply {
                    Reply::ClientIds(v) => v.sort_unstable(),
                    Reply::Strings(v) => v.sort_unstable(),
                    Reply::Sessions(v) => v.sort_unstable_by_key(|(k, _)| *k),
                    Reply::Clients(v) => v.sort_unstable_by_key(|i| i.client),
                    Reply::Bool(_)
                    | Reply::Count(_)
                    | Reply::OptString(_)
                    | Reply::OptBytes(_)
                    | Reply::Error(_) => {}
                }
                reply
            }
            Answer::Clients(mut rows) => {
                rows.sort_unstable_by_key(|r| r.client);
                Reply::Clients(
                    rows.into_iter()
                        .map(|r| ClientInfo {
                            client: r.client,
                            addr: r.addr.to_string(),
                            listener: r.listener.name.clone(),
                            protocol: r.listener.protocol,
                            uid: r.uid,
                            groups: r.groups,
                            idle_ms: r.idle_ms,
                        })
                        .collect(),
                )
            }
        }
    }
}

/// Why an event was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejected {
    /// The gateway-wide queue bound is reached.
    QueueFull,
}

impl State {
    /// Empty state for gateway `number`.
    pub fn new(number: u32, queue_limit: usize, client_queue_limit: usize) -> Self {
        Self {
            number,
            clients: HashMap::default(),
            uids: HashMap::new(),
            groups: HashMap::new(),
            links: BTreeMap::new(),
            next_link: 1,
            cursor: 0,
            routing: Routing::Sticky,
            held_up_after: None,
            next_seq: 1,
            next_conn: 1,
            queued_bytes: 0,
            held: 0,
            queue_limit,
            client_queue_limit,
            max_session: usize::MAX,
            connected: 0,
            upgrades: HashMap::new(),
            epoch: Instant::now(),
        }
    }

    fn seen_at(&self, at: Instant) -> Seen {
        // Truncated to 32 bits on purpose: see `Seen`.
        Seen((at.saturating_duration_since(self.epoch).as_millis() / 10) as u32)
    }

    fn now(&self) -> Seen {
        self.seen_at(Instant::now())
    }

    /// Bounds every client's session to `bytes` of JSON (`gateway.max_session`).
    pub fn with_max_session(mut self, bytes: usize) -> Self {
        self.max_session = bytes;
        self
    }

    /// Whether links keep when they last made progress: for least-busy routing with
    /// `held_up_after` on (a clock read per event and per ack, spared otherwise).
    fn watches_progress(&self) -> bool {
        self.routing == Routing::LeastBusy && self.held_up_after.is_some()
    }

    /// Chooses workers for events the way `routing` says (sticky by default).
    pub fn with_routing(mut self, routing: Routing) -> Self {
        self.routing = routing;
        self
    }

    /// Under least-busy routing, passes over a worker that has events in flight and has
    /// acknowledged none for `after` (`gateway.held_up_after`; zero: never).
    pub fn with_held_up_after(mut self, after: Duration) -> Self {
        self.held_up_after = (!after.is_zero()).then_some(after);
        self
    }

    /// This gateway's number.
    pub fn number(&self) -> u32 {
        self.number
    }

    /// Clients with a live connection.
    pub fn connected(&self) -> usize {
        self.connected
    }

    /// Registers a new client and queues its first event: connect, or the WebSocket
    /// upgrade the application must accept first.
    pub fn add_client(
        &mut self,
        addr: SocketAddr,
        listener: Arc<ListenerMeta>,
        out: Outbound,
        opening: Opening,
        counters: &Counters,
    ) -> ClientId {
        let conn = self.next_conn;
        self.next_conn += 1;
        let (out, first, body) = match opening {
            Opening::Connect => (Some(out), EventKind::Connect, Bytes::new()),
            Opening::WebSocket { request, verdict } => {
                self.upgrades.insert(conn, (out, verdict));
                (None, EventKind::WebSocketConnect, request)
            }
        };
        let last_seen = self.now();
        self.clients.insert(
            conn,
            Box::new(Client {
                ip: addr.ip(),
                port: addr.port(),
                listener,
                out,
                bound: None,
                last_seen,
                worker: None,
                events: None,
                silenced: false,
            }),
        );
        self.connected += 1;
        // A connect event has no body: it never hits the byte bounds. A WebSocket
        // request is bounded by the size of an HTTP request head.
        self.enqueue(conn, first, body, false, counters);
        ClientId::new(self.number, conn)
    }

    /// Queues a message event. Returns whether the client's queue is over its bound (the
    /// caller then waits on the client's `drained` notify before reading more).
    pub fn client_message(
        &mut self,
        conn: u64,
        body: Bytes,
        binary: bool,
        counters: &Counters,
    ) -> Result<bool, Rejected> {
        let now = self.now();
        let Some(client) = self.clients.get_mut(&conn) else {
            return Ok(false);
        };
        client.last_seen = now;
        if self.queued_bytes + body.len() > self.queue_limit {
            counters.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(Rejected::QueueFull);
        }
        self.enqueue(conn, EventKind::Message, body, binary, counters);
        Ok(self
            .clients
            .get(&conn)
            .is_some_and(|c| c.queue_bytes() > self.client_queue_limit))
    }

    /// Whether the client's queue is back under its bound.
    pub fn client_can_read(&self, conn: u64) -> bool {
        self.clients
            .get(&conn)
            .is_none_or(|c| c.queue_bytes() <= self.client_queue_limit)
    }

    /// The connection is gone: unindex the client and queue its close event. The entry
    /// itself stays until the close event is handled.
    pub fn client_closed(&mut self, conn: u64, counters: &Counters) {
        let Some(client) = self.clients.get_mut(&conn) else {
            return;
        };
        if client.out.take().is_none() {
            return; // already closed
        }
        self.connected -= 1;
        // Out of the indexes at once; the client keeps its uid and groups only so that
        // its close event can tell the application what it had.
        if let Some(uid) = client.uid() {
            remove_from_index(&mut self.uids, uid, conn);
        }
        for g in client.groups() {
            remove_from_index(&mut self.groups, g, conn);
        }
        if client.silenced {
            // Never announced: no close event either.
            if client.events.is_none() {
                self.clients.remove(&conn);
            }
            return;
        }
        self.enqueue(conn, EventKind::Close, Bytes::new(), false, counters);
    }

    /// Marks activity from a client (heartbeat bookkeeping).
    pub fn touch(&mut self, conn: u64) {
        let now = self.now();
        if let Some(c) = self.clients.get_mut(&conn) {
            c.last_seen = now;
        }
    }

    fn enqueue(
        &mut self,
        conn: u64,
        kind: EventKind,
        body: Bytes,
        binary: bool,
        counters: &Counters,
    ) {
        let Some(client) = self.clients.get_mut(&conn) else {
            return;
        };
        if client.silenced {
            return;
        }
        let event = Pending {
            kind,
            body,
            binary,
            at: Instant::now(),
        };
        self.queued_bytes += event.body.len();
        if client.events.is_none() {
            // Nothing waits before it and nothing is in flight: straight to a worker
            // when one is there, without passing through the queue (no queue buffer).
            let route = (self.routing, self.held_up_after);
            if let Some(link_id) = next_link(client, &self.links, &mut self.cursor, route) {
                return self.dispatch(conn, link_id, event, counters);
            }
        }
        let events = client.events_mut();
        events.queue_bytes += event.body.len();
        self.held += 1;
        events.queue.push_back(event);
        self.pump(conn, counters);
    }

    /// Sends the client's next event if none is in flight and a worker is available.
    fn pump(&mut self, conn: u64, counters: &Counters) {
        let Some(client) = self.clients.get_mut(&conn) else {
            return;
        };
        if !client.waits() {
            return;
        }
        let route = (self.routing, self.held_up_after);
        let Some(link_id) = next_link(client, &self.links, &mut self.cursor, route) else {
            return; // no worker: the event waits (bounded by hold_timeout)
        };
        let events = client.events_mut();
        let Some(event) = events.queue.pop_front() else {
            return;
        };
        self.held -= 1;
        events.queue_bytes -= event.body.len();
        self.dispatch(conn, link_id, event, counters);
    }

    /// Sends `event` of client `conn` to worker link `link_id`: it is the client's
    /// event in flight until the worker acknowledges it.
    fn dispatch(&mut self, conn: u64, link_id: u64, event: Pending, counters: &Counters) {
        let watch_progress = self.watches_progress();
        let Some(client) = self.clients.get_mut(&conn) else {
            return;
        };
        client.worker = NonZeroU64::new(link_id);
        let seq = self.next_seq;
        self.next_seq += 1;
        // Encoded from the client's own fields: nothing copied but into the frame.
        let addr = AddrText::new(client.addr());
        let frame = EventRef {
            seq,
            kind: event.kind,
            client: ClientId::new(self.number, conn),
            addr: addr.as_str(),
            listener: &client.listener.name,
            protocol: client.listener.protocol,
            uid: client.uid(),
            groups: client.groups(),
            session: client.session_json(),
            body: &event.body,
            binary: event.binary,
        }
        .encode_to_bytes();
        client.events_mut().inflight = Some(InFlight {
            link: link_id,
            seq,
            event,
        });
        if let Some(link) = self.links.get_mut(&link_id) {
            if link.inflight.is_empty() && watch_progress {
                link.progress = Instant::now(); // idle until now: not held up
            }
            link.inflight.insert(conn);
            // A failed send means the link task is ending; `link_closed` will requeue.
            let _ = link.tx.send(frame);
        }
        counters.events.fetch_add(1, Ordering::Relaxed);
        if let Some(out) = &client.out {
            // Room in the queue: a back-pressured reader may go on.
            out.notify_drained();
        }
    }

    /// Takes the event in flight for `client` when it is `seq` on `link_id` (anything
    /// else is stale: the event was re-dispatched meanwhile), releasing its bytes.
    fn finish_inflight(
        &mut self,
        link_id: u64,
        seq: u64,
        client: ClientId,
    ) -> Option<(u64, Pending)> {
        if client.gateway != self.number {
            return None;
        }
        let watch_progress = self.watches_progress();
        let conn = client.connection;
        let c = self.clients.get_mut(&conn)?;
        if !c
            .inflight()
            .is_some_and(|f| f.link == link_id && f.seq == seq)
        {
            return None;
        }
        let f = c.events_mut().inflight.take()?;
        c.tidy();
        self.queued_bytes -= f.event.body.len();
        if let Some(link) = self.links.get_mut(&link_id) {
            link.inflight.remove(&conn);
            if watch_progress {
                link.progress = Instant::now();
            }
        }
        Some((conn, f.event))
    }

    /// A worker finished an event.
    pub fn ack(&mut self, link_id: u64, seq: u64, client: ClientId, counters: &Counters) {
        let Some((conn, event)) = self.finish_inflight(link_id, seq, client) else {
            return;
        };
        if event.kind == EventKind::WebSocketConnect {
            // A plain ack of an upgrade: nothing refused it.
            return self.settle_upgrade(conn, event, Verdict::Accepted, counters);
        }
        self.next_event(conn, counters);
    }

    /// A worker answered a WebSocket upgrade (the ack of a `WebSocketConnect` event).
    pub fn verdict(
        &mut self,
        link_id: u64,
        seq: u64,
        client: ClientId,
        verdict: Verdict,
        counters: &Counters,
    ) {
        let Some((conn, event)) = self.finish_inflight(link_id, seq, client) else {
            return;
        };
        if event.kind != EventKind::WebSocketConnect {
            // A verdict for an ordinary event acknowledges it.
            return self.next_event(conn, counters);
        }
        self.settle_upgrade(conn, event, verdict, counters);
    }

    /// After an event is done: the client's next one goes out, or, once its close event
    /// was the last, the client is gone for good.
    fn next_event(&mut self, conn: u64, counters: &Counters) {
        if self
            .clients
            .get(&conn)
            .is_some_and(|c| c.out.is_none() && c.queued() == 0)
        {
            self.clients.remove(&conn);
            return;
        }
        self.pump(conn, counters);
    }

    /// Accepted: the client becomes live and its connect event is queued, carrying the
    /// request again. Refused: the client is forgotten (no close event: the application
    /// never saw it connect).
    fn settle_upgrade(&mut self, conn: u64, event: Pending, verdict: Verdict, counters: &Counters) {
        let Some((out, tx)) = self.upgrades.remove(&conn) else {
            return;
        };
        match verdict {
            Verdict::Accepted => {
                let now = self.now();
                if let Some(c) = self.clients.get_mut(&conn) {
                    c.out = Some(out);
                    // The time the application took is not the client's silence.
                    c.last_seen = now;
                }
                let _ = tx.send(Verdict::Accepted);
                self.enqueue(conn, EventKind::Connect, event.body, false, counters);
            }
            refused => {
                let _ = tx.send(refused);
                self.forget(conn);
            }
        }
    }

    /// The connection of a client whose upgrade is still waiting for its verdict went
    /// away (or waited too long): forget it, with no event. Returns false when the
    /// verdict has come meanwhile (then it is in the client's receiver).
    pub fn abandon_upgrade(&mut self, conn: u64) -> bool {
        if self.upgrades.remove(&conn).is_some() {
            self.forget(conn);
            true
        } else {
            false
        }
    }

    /// Removes a client that never became live, with whatever it had queued.
    fn forget(&mut self, conn: u64) {
        let Some(c) = self.clients.remove(&conn) else {
            return;
        };
        self.connected -= 1;
        self.queued_bytes -= c.queue_bytes();
        self.held -= c.queued();
        if let Some(f) = c.events.and_then(|e| e.inflight) {
            self.queued_bytes -= f.event.body.len();
            if let Some(link) = self.links.get_mut(&f.link) {
                link.inflight.remove(&conn);
            }
        }
    }

    /// Registers an authenticated link; returns its id.
    pub fn add_link(&mut self, name: String, role: Role, tx: LinkTx, counters: &Counters) -> u64 {
        let id = self.next_link;
        self.next_link += 1;
        self.links.insert(
            id,
            Link {
                name,
                role,
                tx,
                draining: false,
                inflight: HashSet::new(),
                progress: Instant::now(),
            },
        );
        if role == Role::Worker {
            // Clients that waited for a worker can go now.
            self.pump_waiting(counters);
        }
        id
    }

    /// Sends the next event of every client that waits for a worker. Visits every
    /// client, so only when some event waits (`held`): with a worker connected,
    /// nothing does.
    fn pump_waiting(&mut self, counters: &Counters) {
        if self.held == 0 {
            return;
        }
        let waiting: Vec<u64> = self
            .clients
            .iter()
            .filter(|(_, c)| c.waits())
            .map(|(k, _)| *k)
            .collect();
        for conn in waiting {
            self.pump(conn, counters);
        }
    }

    /// A link is gone: every event in flight there goes back to the front of its
    /// client's queue and on to another worker.
    pub fn link_closed(&mut self, link_id: u64, counters: &Counters) -> usize {
        let Some(link) = self.links.remove(&link_id) else {
            return 0;
        };
        // Only the clients with an event in flight there: a client that merely sticks
        // to the link finds it gone at its next event (`next_link`; ids are not reused).
        let mut requeued = Vec::new();
        for conn in link.inflight {
            let Some(c) = self.clients.get_mut(&conn) else {
                continue;
            };
            if c.inflight().is_none_or(|f| f.link != link_id) {
                continue;
            }
            let events = c.events_mut();
            if let Some(f) = events.inflight.take() {
                events.queue_bytes += f.event.body.len();
                events.queue.push_front(f.event);
                self.held += 1;
                requeued.push(conn);
            }
        }
        let n = requeued.len();
        if n > 0 {
            tracing::warn!(link = %link.name, events = n, "worker link lost with events in flight; re-dispatching them");
            counters.redispatched.fetch_add(n as u64, Ordering::Relaxed);
        }
        for conn in requeued {
            self.pump(conn, counters);
        }
        n
    }

    /// A worker asked for no new events.
    pub fn link_draining(&mut self, link_id: u64, counters: &Counters) {
        let Some(link) = self.links.get_mut(&link_id) else {
            return;
        };
        link.draining = true;
        // No client is visited: one that sticks to this link goes to another at its
        // next event (`next_link` passes over a draining link), and one with an
        // event in flight here, once it is acknowledged. Only events that wait for a
        // worker (none while one is usable) are sent again.
        self.pump_waiting(counters);
    }

    /// The link's outgoing channel (for replies).
    pub fn link_tx(&self, link_id: u64) -> Option<LinkTx> {
        self.links.get(&link_id).map(|l| l.tx.clone())
    }

    /// Number of worker links (not draining).
    pub fn worker_links(&self) -> usize {
        self.links
            .values()
            .filter(|l| l.role == Role::Worker && !l.draining)
            .count()
    }

    /// Events at each worker (sent, not yet acknowledged), by the worker's name: its
    /// links' sets of clients with an event in flight, draining links included.
    pub fn in_flight_by_worker(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for link in self.links.values().filter(|l| l.role == Role::Worker) {
            *out.entry(link.name.clone()).or_default() += link.inflight.len();
        }
        out
    }

    /// Events waiting in client queues (not yet at a worker).
    pub fn held_events(&self) -> usize {
        // Every test that runs a gateway built with debug assertions checks the count.
        debug_assert_eq!(
            self.held,
            self.clients.values().map(|c| c.queued()).sum::<usize>(),
            "held events miscounted"
        );
        debug_assert_eq!(
            self.links.values().map(|l| l.inflight.len()).sum::<usize>(),
            self.clients
                .values()
                .filter(|c| c
                    .inflight()
                    .is_some_and(|f| self.links.contains_key(&f.link)))
                .count(),
            "events in flight misindexed"
        );
        self.held
    }

    /// Rejects events that waited longer than `timeout` for a worker. Returns messages
    /// to log.
    pub fn expire_held(&mut self, timeout: Duration, counters: &Counters) -> Vec<String> {
        if self.held == 0 {
            // Nothing waits: no client to visit (this runs every tick, under the lock).
            return Vec::new();
        }
        let now = Instant::now();
        let mut log = Vec::new();
        let mut remove = Vec::new();
        for (conn, c) in self.clients.iter_mut() {
            let Some(events) = c.events.as_mut() else {
                continue;
            };
            if events.inflight.is_some()
                || events.queue.front().is_none_or(|e| now - e.at < timeout)
            {
                continue;
            }
            let dropped = events.queue.len();
            let had_connect = events.queue.iter().any(|e| e.kind == EventKind::Connect);
            self.held -= dropped;
            self.queued_bytes -= events.queue_bytes;
            c.events = None;
            if let Some(out) = &c.out {
                out.notify_drained();
            }
            counters
                .rejected
                .fetch_add(dropped as u64, Ordering::Relaxed);
            log.push(format!(
                "rejected {dropped} event(s) of client {} ({}) after waiting {:?} for a worker",
                ClientId::new(self.number, *conn),
                c.addr(),
                timeout
            ));
            match &c.out {
                Some(out) => {
                    let notice = c.listener.protocol.notice(
                        "no worker is available; your message was not processed, try again later",
                    );
                    if out.push(notice) == Push::CutOff {
                        counters.slow_consumers.fetch_add(1, Ordering::Relaxed);
                    }
                    if had_connect {
                        // The application never saw this client connect: start over,
                        // and tell the application nothing of it.
                        c.silenced = true;
                        out.close_for(crate::metrics::gateway::CloseReason::Limit);
                    }
                }
                None => remove.push(*conn),
            }
        }
        for conn in remove {
            self.clients.remove(&conn);
            if let Some((_, verdict)) = self.upgrades.remove(&conn) {
                // An upgrade no worker answered: the client is told 503 and was live.
                self.connected -= 1;
                let _ = verdict.send(Verdict::Refused {
                    status: 503,
                    reason: "no worker is available; try again later".into(),
                });
            }
        }
        log
    }

    // ---- commands -------------------------------------------------------------------

    fn out_of(&self, id: ClientId) -> Option<(&Outbound, ClientProtocol)> {
        if id.gateway != self.number {
            return None;
        }
        let c = self.clients.get(&id.connection)?;
        Some((c.out.as_ref()?, c.listener.protocol))
    }

    /// Executes a command from a worker or API client. Returns how many clients a send
    /// reached (its message was queued for them); 0 for the other commands.
    pub fn command(&mut self, cmd: Command, counters: &Counters) -> usize {
        match cmd {
            Command::SendToClient { client, data } => match self.out_of(client) {
                Some((out, p)) => usize::from(push_or_cut(
                    out,
                    p.encode_to_bytes(data.for_protocol(p)),
                    client,
                    counters,
                )),
                None => 0,
            },
            Command::SendOrTell {
                client,
                data,
                sender,
                sent,
                offline,
            } => {
                let reached = match self.out_of(client) {
                    Some((out, p)) => push_or_cut(
                        out,
                        p.encode_to_bytes(data.for_protocol(p)),
                        client,
                        counters,
                    ),
                    None => false,
                };
                // The sender hears after the recipient got it, in the same batch.
                let tell = if reached { sent } else { offline };
                if let (Some(tell), Some((out, p))) = (tell, self.out_of(sender)) {
                    push_or_cut(
                        out,
                        p.encode_to_bytes(tell.for_protocol(p)),
                        sender,
                        counters,
                    );
                }
                usize::from(reached)
            }
            Command::SendToAll {
                data,
                only,
                exclude,
            } => {
                let exclude: HashSet<u64> = self.own(&exclude).collect();
                match only {
                    Some(list) => {
                        let conns = self.own(&list).filter(|c| !exclude.contains(c));
                        self.send_conns(conns, &data, counters)
                    }
                    // Straight over the table: no list of recipients, no lookups.
                    None => self.send_clients(
                        self.clients
                            .iter()
                            .filter(|(k, _)| !exclude.contains(k))
                            .map(|(k, c)| (*k, &**c)),
                        &data,
                        counters,
                    ),
                }
            }
            Command::SendToUid { uids, data } => {
                let none = HashSet::new();
                let sets = key_sets(&self.uids, &uids);
                let conns = members_once(&sets, &none);
                self.send_conns(conns, &data, counters)
            }
            Command::SendToGroup {
                groups,
                data,
                exclude,
            } => {
                let exclude: HashSet<u64> = self.own(&exclude).collect();
                let sets = key_sets(&self.groups, &groups);
                let conns = members_once(&sets, &exclude);
                self.send_conns(conns, &data, counters)
            }
            other => {
                self.manage(other);
                0
            }
        }
    }

    /// Executes a command that sends nothing: uids, groups, sessions, closing.
    fn manage(&mut self, cmd: Command) {
        match cmd {
            Command::BindUid { client, uid } => {
                let Some(conn) = self.live_conn(client) else {
                    return;
                };
                if let Some(old) = self
                    .clients
                    .get_mut(&conn)
                    .and_then(|c| c.bound_mut().uid.replace(uid.clone()))
                {
                    remove_from_index(&mut self.uids, &old, conn);
                }
                self.uids.entry(uid).or_default().insert(conn);
            }
            Command::UnbindUid { client, uid } => {
                let Some(conn) = self.live_conn(client) else {
                    return;
                };
                if let Some(c) = self.clients.get_mut(&conn) {
                    if c.uid() == Some(uid.as_str()) {
                        c.bound_mut().uid = None;
                        remove_from_index(&mut self.uids, &uid, conn);
                    }
                }
            }
            Command::JoinGroup { client, group } => {
                let Some(conn) = self.live_conn(client) else {
                    return;
                };
                if let Some(c) = self.clients.get_mut(&conn) {
                    c.bound_mut().groups.insert(group.clone());
                    self.groups.entry(group).or_default().insert(conn);
                }
            }
            Command::LeaveGroup { client, group } => {
                let Some(conn) = self.live_conn(client) else {
                    return;
                };
                if let Some(b) = self.clients.get_mut(&conn).and_then(|c| c.bound.as_mut()) {
                    b.groups.remove(&group);
                    remove_from_index(&mut self.groups, &group, conn);
                }
            }
            Command::Ungroup { group } => {
                if let Some(members) = self.groups.remove(&group) {
                    for conn in members {
                        if let Some(b) = self.clients.get_mut(&conn).and_then(|c| c.bound.as_mut())
                        {
                            b.groups.remove(&group);
                        }
                    }
                }
            }
            Command::SetSession { client, session } => {
                self.change_session(client, &session, |s, new| *s = new);
            }
            Command::UpdateSession { client, session } => {
                self.change_session(client, &session, crate::merge_session);
            }
            Command::CloseClient { client, last } => {
                if let Some((out, p)) = self.out_of(client) {
                    if let Some(last) = last {
                        // Pushed without the slow-consumer bookkeeping: the client is
                        // being closed either way.
                        let _ = out.push(p.encode_to_bytes(&last));
                    }
                    out.close();
                }
            }
            Command::SendToClient { .. }
            | Command::SendOrTell { .. }
            | Command::SendToAll { .. }
            | Command::SendToUid { .. }
            | Command::SendToGroup { .. } => {}
        }
    }

    fn change_session(
        &mut self,
        client: ClientId,
        json: &[u8],
        apply: impl FnOnce(&mut Map<String, Value>, Map<String, Value>),
    ) {
        // A client whose upgrade waits for its verdict has a session already (the
        // `on_websocket_connect` hook may write it).
        let upgrading =
            client.gateway == self.number && self.upgrades.contains_key(&client.connection);
        let Some(conn) = self
            .live_conn(client)
            .or(upgrading.then_some(client.connection))
        else {
            return;
        };
        let new: Map<String, Value> = match serde_json::from_slice(json) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(%client, error = %e, "session update is not a JSON object; ignored");
                return;
            }
        };
        let max = self.max_session;
        if let Some(c) = self.clients.get_mut(&conn) {
            let bound = c.bound_mut();
            let mut session = bound.session.clone();
            apply(&mut session, new);
            let json = serde_json::to_vec(&session).unwrap_or_else(|_| b"{}".to_vec());
            if json.len() > max {
                tracing::warn!(
                    %client,
                    size = json.len(),
                    max,
                    "session over gateway.max_session; the change is refused and the session kept as it was"
                );
                return;
            }
            bound.session = session;
            bound.session_json = Bytes::from(json);
        }
    }

    /// Connection numbers of ids that belong to this gateway.
    fn own<'a>(&self, ids: &'a [ClientId]) -> impl Iterator<Item = u64> + 'a {
        let number = self.number;
        ids.iter()
            .filter(move |c| c.gateway == number)
            .map(|c| c.connection)
    }

    fn live_conn(&self, id: ClientId) -> Option<u64> {
        self.out_of(id).map(|_| id.connection)
    }

    /// Sends one message to several clients, encoded once per protocol; returns how
    /// many it reached.
    fn send_conns(
        &self,
        conns: impl IntoIterator<Item = u64>,
        data: &PerProtocol,
        counters: &Counters,
    ) -> usize {
        let clients = conns
            .into_iter()
            .filter_map(|conn| Some((conn, &**self.clients.get(&conn)?)));
        self.send_clients(clients, data, counters)
    }

    /// [`Self::send_conns`] to clients at hand.
    fn send_clients<'c>(
        &self,
        clients: impl Iterator<Item = (u64, &'c Client)>,
        data: &PerProtocol,
        counters: &Counters,
    ) -> usize {
        let mut cache = EncodeCache::new(data);
        let mut reached = 0;
        let mut push = |conn: u64, c: &Client| {
            if let Some(out) = &c.out {
                let id = ClientId::new(self.number, conn);
                let data = cache.get(c.listener.protocol);
                reached += usize::from(push_or_cut(out, data, id, counters));
            }
        };
        // A fan-out touches memory no recent send touched, per recipient: its entry
        // here, its queue, and the slot of the queue's buffer the message goes in.
        // Loaded one after the other, each waits for the one before (the queue lock's
        // atomic instructions keep them from overlapping), so the recipients pass
        // through three stages `AHEAD` recipients apart, each asking the CPU for the
        // next one's memory (`outbound::prefetch`): the entry when found, its queue
        // `AHEAD` recipients later, the queue's next slot (read from the queue, in
        // cache by then) `AHEAD` later, and the push `AHEAD` after that: each
        // recipient once, in the order found.
        const AHEAD: usize = 6;
        const RING: usize = 3 * AHEAD;
        let mut ring: [Option<(u64, &Client)>; RING] = [None; RING];
        let mut found = 0;
        for (conn, c) in clients {
            super::outbound::prefetch(c);
            let queue_of =
                |back: usize| ring[(found + RING - back) % RING].and_then(|(_, c)| c.out.as_ref());
            if let Some(out) = queue_of(AHEAD) {
                out.prefetch();
            }
            if let Some(out) = queue_of(2 * AHEAD) {
                out.prefetch_slot();
            }
            if let Some((conn, c)) = ring[found % RING].replace((conn, c)) {
                push(conn, c);
            }
            found += 1;
        }
        for k in 0..RING {
            if let Some((conn, c)) = ring[(found + k) % RING].take() {
                push(conn, c);
            }
        }
        reached
    }

    // ---- queries --------------------------------------------------------------------

    /// Answers a query about this gateway's clients.
    pub fn query(&mut self, q: Query, counters: &Counters) -> Answer {
        if let Query::Counted(cmd) = q {
            return Answer::Ready(Reply::Count(self.command(cmd, counters) as u64));
        }
        let id = |conn: u64| ClientId::new(self.number, conn);
        let members = |index: &HashMap<String, HashSet<u64>>, key: &str| -> Vec<ClientId> {
            index
                .get(key)
                .into_iter()
                .flatten()
                .map(|c| id(*c))
                .collect()
        };
        // Only what must be read under the lock is done here: the lists are sorted,
        // and the client rows formatted, by `Answer::finish` once it is released.
        Answer::Ready(match q {
            Query::IsOnline(c) => Reply::Bool(self.out_of(c).is_some()),
            Query::ClientIdsByUid(uid) => Reply::ClientIds(members(&self.uids, &uid)),
            Query::UidByClientId(c) => Reply::OptString(
                self.live_conn(c)
                    .and_then(|conn| self.clients.get(&conn))
                    .and_then(|c| c.uid().map(str::to_owned)),
            ),
            Query::ClientIdsByGroup(g) => Reply::ClientIds(members(&self.groups, &g)),
            Query::ClientCountByGroup(g) => {
                Reply::Count(self.groups.get(&g).map_or(0, |s| s.len() as u64))
            }
            // `connected` also holds the upgrades waiting for their verdict (they count
            // against max_clients), which are no clients of the application yet.
            Query::AllClientCount => Reply::Count((self.connected - self.upgrades.len()) as u64),
            Query::AllClientIds => {
                Reply::ClientIds(sized(self.clients.len(), self.live().map(|(k, _)| id(k))))
            }
            Query::AllUids => Reply::Strings(self.uids.keys().cloned().collect()),
            Query::AllGroups => Reply::Strings(self.groups.keys().cloned().collect()),
            Query::Sessions(group) => {
                let v: Vec<(ClientId, Bytes)> = match group {
                    None => sized(
                        self.clients.len(),
                        self.live().map(|(k, c)| (id(k), c.session_json().clone())),
                    ),
                    Some(g) => self
                        .groups
                        .get(&g)
                        .into_iter()
                        .flatten()
                        .filter_map(|k| {
                            self.clients
                                .get(k)
                                .map(|c| (id(*k), c.session_json().clone()))
                        })
                        .collect(),
                };
                Reply::Sessions(v)
            }
            Query::GetSession(c) => Reply::OptBytes(
                self.live_conn(c)
                    .and_then(|conn| self.clients.get(&conn))
                    .map(|c| c.session_json().clone()),
            ),
            Query::Clients => {
                let now = self.now();
                return Answer::Clients(sized(
                    self.clients.len(),
                    self.live().map(|(k, c)| ClientRow {
                        client: id(k),
                        addr: c.addr(),
                        listener: c.listener.clone(),
                        uid: c.uid().map(str::to_owned),
                        groups: c.groups().iter().cloned().collect(),
                        idle_ms: c.last_seen.before(now).as_millis() as u64,
                    }),
                ));
            }
            Query::UidsByGroup(g) => {
                let uids: BTreeSet<&str> = self
                    .groups
                    .get(&g)
                    .into_iter()
                    .flatten()
                    .filter_map(|k| self.clients.get(k)?.uid())
                    .collect();
                Reply::Strings(uids.into_iter().map(str::to_owned).collect())
            }
            Query::Counted(_) => Reply::Error("a counted command out of place".into()),
        })
    }

    fn live(&self) -> impl Iterator<Item = (u64, &Client)> {
        self.clients
            .iter()
            .filter(|(_, c)| c.out.is_some())
            .map(|(k, c)| (*k, &**c))
    }

    /// Outbound queues of every live client of listener `index` (for heartbeat pings).
    pub fn outbounds(&self, index: usize) -> Vec<(ClientId, Outbound)> {
        self.live()
            .filter(|(_, c)| c.listener.index == index)
            .filter_map(|(k, c)| c.out.clone().map(|o| (ClientId::new(self.number, k), o)))
            .collect()
    }

    /// Outbound queues of every live client.
    pub fn all_outbounds(&self) -> Vec<Outbound> {
        self.live().filter_map(|(_, c)| c.out.clone()).collect()
    }

    /// Clients of listener `index` silent since before `cutoff`.
    pub fn idle_since(&self, index: usize, cutoff: Instant) -> Vec<(ClientId, String, Outbound)> {
        if cutoff < self.epoch {
            return Vec::new(); // nobody was seen before the gateway began
        }
        let cutoff = self.seen_at(cutoff);
        self.live()
            .filter(|(_, c)| c.listener.index == index && c.last_seen.precedes(cutoff))
            .filter_map(|(k, c)| {
                c.out
                    .clone()
                    .map(|o| (ClientId::new(self.number, k), c.addr().to_string(), o))
            })
            .collect()
    }
}

/// Queues data for a client; a client that is cut off for it is counted and logged.
/// Returns whether the data was queued.
pub fn push_or_cut(out: &Outbound, data: Bytes, client: ClientId, counters: &Counters) -> bool {
    match out.push(data) {
        Push::Queued => true,
        Push::CutOff => {
            counters.slow_consumers.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%client, limit = out.limit(), "slow consumer: outbound queue over its limit; disconnecting");
            false
        }
        Push::Gone => false,
    }
}

/// The sets of `keys` in an index (uids or groups), each looked up once per send; a
/// key named twice is `None` the second time (sent to once).
fn key_sets<'a>(
    index: &'a HashMap<String, HashSet<u64>>,
    keys: &[String],
) -> Vec<Option<&'a HashSet<u64>>> {
    keys.iter()
        .enumerate()
        .map(|(i, key)| {
            if keys[..i].contains(key) {
                None
            } else {
                index.get(key)
            }
        })
        .collect()
}

/// The members of the [`key_sets`], each once however many of the sets it is in, and
/// none of `exclude`: each member of a set is skipped when an earlier set has it (no
/// set of recipients is built, nothing sorted: the usual send names one key, and each
/// earlier key costs a lookup per member).
fn members_once<'a>(
    sets: &'a [Option<&'a HashSet<u64>>],
    exclude: &'a HashSet<u64>,
) -> impl Iterator<Item = u64> + 'a {
    sets.iter().enumerate().flat_map(move |(i, set)| {
        let earlier = &sets[..i];
        set.iter().copied().flatten().copied().filter(move |c| {
            !exclude.contains(c) && !earlier.iter().flatten().any(|set| set.contains(c))
        })
    })
}

fn remove_from_index(index: &mut HashMap<String, HashSet<u64>>, key: &str, conn: u64) {
    if let Some(set) = index.get_mut(key) {
        set.remove(&conn);
        if set.is_empty() {
            index.remove(key);
        }
    }
}

/// Collects `items` into a vector allocated once for `at_most` of them (a filtered
/// iterator's own hint would make it grow by doubling, under the state lock).
fn sized<T>(at_most: usize, items: impl Iterator<Item = T>) -> Vec<T> {
    let mut v = Vec::with_capacity(at_most);
    v.extend(items);
    v
}

/// The worker link for a client's next event, by `route` (the routing and its
/// `held_up_after`). Sticky: the one it sticks to while that one takes events, else the
/// next in turn. Least busy: the one with the fewest events in flight, the first in
/// turn among equals, after every link that is not held up.
fn next_link(
    client: &Client,
    links: &BTreeMap<u64, Link>,
    cursor: &mut u64,
    route: (Routing, Option<Duration>),
) -> Option<u64> {
    match route {
        (Routing::Sticky, _) => client
            .worker()
            .filter(|l| links.get(l).is_some_and(|l| !l.draining))
            .or_else(|| choose_link(links, cursor, |_| 0)),
        (Routing::LeastBusy, None) => choose_link(links, cursor, |l| (false, l.inflight.len())),
        (Routing::LeastBusy, Some(after)) => {
            let now = Instant::now();
            choose_link(links, cursor, |l| {
                let held = !l.inflight.is_empty() && now.duration_since(l.progress) >= after;
                (held, l.inflight.len())
            })
        }
    }
}

/// The usable worker link, in turn from the one after `cursor`, with the least `load`
/// (the first of those equally loaded); `cursor` moves to it. The least load there can
/// be is the default (`0`, `(false, 0)`): a link with it ends the search.
fn choose_link<L: Ord + Default>(
    links: &BTreeMap<u64, Link>,
    cursor: &mut u64,
    load: impl Fn(&Link) -> L,
) -> Option<u64> {
    let usable = |l: &Link| l.role == Role::Worker && !l.draining;
    let mut best: Option<(u64, L)> = None;
    for (id, link) in links
        .range(*cursor + 1..)
        .chain(links.range(..=*cursor))
        .filter(|(_, l)| usable(l))
    {
        let load = load(link);
        if best.as_ref().is_none_or(|(_, least)| load < *least) {
            let idle = load == L::default();
            best = Some((*id, load));
            if idle {
                break; // nothing is less busy than idle: the rest need not be seen
            }
        }
    }
    let (next, _) = best?;
    *cursor = next;
    Some(next)
}

/// Encodes a broadcast message once per protocol, each in its own rendering.
struct EncodeCache<'a> {
    data: &'a PerProtocol,
    encoded: [Option<Bytes>; ClientProtocol::ALL.len()],
}

impl<'a> EncodeCache<'a> {
    fn new(data: &'a PerProtocol) -> Self {
        Self {
            data,
            encoded: Default::default(),
        }
    }
    /// The message for clients of `p` (its own rendering, or the default), framed.
    fn get(&mut self, p: ClientProtocol) -> Bytes {
        let slot = &mut self.encoded[usize::from(p.wire_byte() - 1)];
        slot.get_or_insert_with(|| p.encode_to_bytes(self.data.for_protocol(p)))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::super::link_queue::{self, LinkRx};
    use super::*;

    /// A gateway holds one boxed `Client` per connection: what a client has only once
    /// the application binds something to it, or while it has events on their way,
    /// stays out of line, and its address is kept as numbers (232 bytes, then 128 and
    /// a text address on the heap, before that was so). 64 bytes is a 80-byte chunk of
    /// the allocator.
    #[test]
    fn a_client_entry_stays_small() {
        let size = std::mem::size_of::<Client>();
        assert!(size <= 64, "{size} bytes");
    }
    use crate::protocol::internal::{self, Event, Frame};
    use crate::Message;
    use bytes::BytesMut;

    fn decode_event(b: &Bytes) -> Event {
        let mut buf = BytesMut::from(&b[..]);
        match internal::decode(&mut buf, 1 << 20) {
            Ok(Some(Frame::Event(e))) => e,
            other => panic!("not an event: {other:?}"),
        }
    }

    struct Fixture {
        state: State,
        counters: Counters,
    }

    fn text_listener() -> Arc<ListenerMeta> {
        Arc::new(ListenerMeta {
            name: "main".into(),
            protocol: ClientProtocol::Text,
            index: 0,
        })
    }

    impl State {
        fn query_for_test(&mut self, q: Query) -> Reply {
            self.query(q, &Counters::default()).finish()
        }
    }

    impl Fixture {
        fn new() -> Self {
            Self {
                state: State::new(7, 1 << 20, 1 << 16),
                counters: Counters::default(),
            }
        }
        fn client(&mut self) -> (ClientId, Outbound) {
            let out = Outbound::new(1 << 16);
            (self.text_client("1.2.3.4:5", out.clone()), out)
        }
        /// A telnet client from `addr` whose outbound queue is `out`.
        fn text_client(&mut self, addr: &str, out: Outbound) -> ClientId {
            self.state.add_client(
                addr.parse().unwrap(),
                text_listener(),
                out,
                Opening::Connect,
                &self.counters,
            )
        }
        /// `client` sends `line`; it is the event that `rx`'s worker gets next.
        fn line_to(&mut self, client: ClientId, line: &'static str, rx: &mut LinkRx) -> Event {
            self.state
                .client_message(client.connection, line.into(), false, &self.counters)
                .unwrap();
            let event = decode_event(&rx.try_recv().expect("an event for this worker"));
            assert_eq!((event.client, &event.body[..]), (client, line.as_bytes()));
            event
        }

        fn worker(&mut self) -> (u64, LinkRx) {
            let (tx, rx) = link_queue::channel(usize::MAX);
            (
                self.state
                    .add_link("w".into(), Role::Worker, tx, &self.counters),
                rx,
            )
        }
    }

    #[test]
    fn a_session_change_over_the_bound_is_refused_and_the_session_kept() {
        let mut f = Fixture::new();
        f.state = State::new(7, 1 << 20, 1 << 16).with_max_session(64);
        let (id, _rx) = f.client();
        let set = |json: &str| Command::SetSession {
            client: id,
            session: Bytes::from(json.to_owned()),
        };
        let update = |json: &str| Command::UpdateSession {
            client: id,
            session: Bytes::from(json.to_owned()),
        };
        let session = |f: &mut Fixture| match f.state.query_for_test(Query::GetSession(id)) {
            Reply::OptBytes(Some(b)) => String::from_utf8(b.to_vec()).unwrap(),
            other => panic!("{other:?}"),
        };
        f.state.command(set(r#"{"a":"0123456789"}"#), &f.counters);
        assert_eq!(session(&mut f), r#"{"a":"0123456789"}"#);
        // 60 more bytes would take it over 64: refused, kept as it was.
        let long = format!(r#"{{"b":"{}"}}"#, "x".repeat(60));
        f.state.command(update(&long), &f.counters);
        assert_eq!(session(&mut f), r#"{"a":"0123456789"}"#);
        f.state.command(set(&long), &f.counters);
        assert_eq!(session(&mut f), r#"{"a":"0123456789"}"#);
        f.state.command(update(r#"{"c":1}"#), &f.counters);
        assert_eq!(session(&mut f), r#"{"a":"0123456789","c":1}"#);
    }

    #[test]
    fn a_broadcast_allocates_nothing_per_recipient() {
        let mut f = Fixture::new();
        let clients: Vec<_> = (0..1000).map(|_| f.client()).collect();
        let send = || Command::SendToAll {
            data: "a line for everybody".into(),
            only: None,
            exclude: vec![],
        };
        let drain = |clients: &[(ClientId, Outbound)]| {
            for (_, out) in clients {
                while out.try_pop().is_some() {}
            }
        };
        let measure = |f: &mut Fixture| {
            let cmd = send();
            let (allocations, reached) =
                crate::alloc_count::count(|| f.state.command(cmd, &f.counters));
            assert_eq!(reached, 1000);
            allocations
        };
        // Each recipient's queue empty (written out since the line before): the
        // recipient list and one encoding of the line, nothing per recipient.
        let written_out = measure(&mut f);
        drain(&clients);
        // A backlog (each queue still holds the line before): the first time, each
        // queue takes a buffer for the lines after its head, and the box that holds it
        // (an idle queue keeps neither)...
        f.state.command(send(), &f.counters);
        let first_backlog = measure(&mut f);
        drain(&clients);
        // ...which it keeps while the client is busy (until the heartbeat's trim of an
        // idle queue): the next backlog allocates nothing per recipient either.
        f.state.command(send(), &f.counters);
        let next_backlog = measure(&mut f);
        drain(&clients);
        assert!(
            written_out <= 4,
            "{written_out} allocations for 1,000 deliveries"
        );
        assert!(
            first_backlog <= 2 * 1000 + 4,
            "{first_backlog} allocations for 1,000 deliveries, a first backlog"
        );
        assert!(
            next_backlog <= 4,
            "{next_backlog} allocations for 1,000 deliveries, a later backlog"
        );
    }

    /// The chat's line to a room: two groups (the room, and every telnet client), the
    /// sender excluded. Each recipient once, and no set of recipients built: until
    /// the send to groups and uids stopped collecting them into a `BTreeSet`, one
    /// allocation per ~11 recipients.
    #[test]
    fn a_send_to_groups_allocates_nothing_per_recipient() {
        let mut f = Fixture::new();
        let clients: Vec<_> = (0..1000).map(|_| f.client()).collect();
        for (i, (client, _)) in clients.iter().enumerate() {
            for group in ["room", "telnet"].into_iter().take(1 + i % 2) {
                f.state.command(
                    Command::JoinGroup {
                        client: *client,
                        group: group.into(),
                    },
                    &f.counters,
                );
            }
        }
        let cmd = Command::SendToGroup {
            groups: vec!["room".into(), "telnet".into()],
            data: "a line for the room".into(),
            exclude: vec![clients[0].0],
        };
        let (allocations, reached) =
            crate::alloc_count::count(|| f.state.command(cmd, &f.counters));
        assert_eq!(reached, 999);
        assert!(
            allocations <= 4,
            "{allocations} allocations for 999 deliveries"
        );
    }

    #[test]
    fn an_event_to_a_worker_copies_nothing_of_the_client() {
        let mut f = Fixture::new();
        let (_w, mut wrx) = f.worker();
        let (id, _rx) = f.client();
        f.state.command(
            Command::BindUid {
                client: id,
                uid: "alice".into(),
            },
            &f.counters,
        );
        for group in ["a", "bb", "ccc"] {
            f.state.command(
                Command::JoinGroup {
                    client: id,
                    group: group.into(),
                },
                &f.counters,
            );
        }
        let connect = wrx.try_recv().expect("the connect event");
        f.state.ack(1, decode_event(&connect).seq, id, &f.counters);
        let body = Bytes::from_static(b"hello");
        let (allocations, queued) = crate::alloc_count::count(|| {
            f.state
                .client_message(id.connection, body, false, &f.counters)
        });
        assert!(queued.is_ok());
        let event = decode_event(&wrx.try_recv().expect("the message event"));
        assert_eq!(event.groups, ["a", "bb", "ccc"]);
        assert_eq!(event.uid.as_deref(), Some("alice"));
        // The frame and the client's events box (the event goes to the worker without
        // passing through the queue): no copy of its address, listener name, uid or
        // groups.
        assert!(allocations <= 2, "{allocations} allocations for one event");
    }

    #[test]
    fn an_event_carries_the_clients_address_as_text() {
        for addr in ["1.2.3.4:5", "[2001:db8::1]:443", "[::ffff:10.0.0.1]:65535"] {
            let mut f = Fixture::new();
            let (_w, mut wrx) = f.worker();
            let id = f.text_client(addr, Outbound::new(1 << 16));
            let connect = decode_event(&wrx.try_recv().unwrap());
            assert_eq!(connect.addr, addr);
            let Reply::Clients(list) = f.state.query_for_test(Query::Clients) else {
                panic!("not a client list");
            };
            assert_eq!((list[0].client, list[0].addr.as_str()), (id, addr));
        }
        let longest: SocketAddr = "[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255]:65535"
            .parse()
            .unwrap();
        assert_eq!(AddrText::new(longest).as_str(), longest.to_string());
    }

    #[test]
    fn a_silence_is_measured_across_the_wrap_of_its_clock() {
        let before_wrap = Seen(u32::MAX - 99);
        let after_wrap = Seen(100);
        assert_eq!(before_wrap.before(after_wrap), Duration::from_secs(2));
        assert!(before_wrap.precedes(after_wrap));
        assert!(!after_wrap.precedes(before_wrap));
        assert!(!after_wrap.precedes(after_wrap));
        // The longest silence the configuration allows reads right.
        let max = crate::config::MAX_SILENCE;
        let seen = Seen(7);
        let later = Seen(7u32.wrapping_add((max.as_millis() / 10) as u32));
        assert_eq!(seen.before(later), max);
        assert!(seen.precedes(later));
    }

    #[test]
    fn one_event_in_flight_per_client_and_order_kept() {
        let mut f = Fixture::new();
        let (w, mut wrx) = f.worker();
        let (id, _rx) = f.client();
        f.state
            .client_message(id.connection, "a".into(), false, &f.counters)
            .unwrap();
        f.state
            .client_message(id.connection, "b".into(), false, &f.counters)
            .unwrap();
        let connect = decode_event(&wrx.try_recv().unwrap());
        assert_eq!(connect.kind, EventKind::Connect);
        assert!(wrx.try_recv().is_err(), "next event waits for the ack");
        f.state.ack(w, connect.seq, id, &f.counters);
        let a = decode_event(&wrx.try_recv().unwrap());
        assert_eq!(a.body, "a");
        f.state.ack(w, a.seq, id, &f.counters);
        assert_eq!(decode_event(&wrx.try_recv().unwrap()).body, "b");
    }

    #[test]
    fn events_wait_for_a_worker_and_are_redispatched_when_one_dies() {
        let mut f = Fixture::new();
        let (id, _rx) = f.client();
        f.state
            .client_message(id.connection, "hello".into(), false, &f.counters)
            .unwrap();
        // Held without a worker: the connect and the line (`held_events` checks its
        // running count against the queues in debug builds).
        assert_eq!(f.state.held_events(), 2);
        let (w1, mut rx1) = f.worker();
        assert_eq!(f.state.held_events(), 1, "the connect went out");
        let (w2, mut rx2) = f.worker();
        let connect = decode_event(&rx1.try_recv().unwrap());
        f.state.ack(w1, connect.seq, id, &f.counters);
        let hello = decode_event(&rx1.try_recv().unwrap());
        assert_eq!(hello.body, "hello");
        // w1 dies before acknowledging: the event moves to w2.
        assert_eq!(f.state.link_closed(w1, &f.counters), 1);
        assert_eq!(f.state.held_events(), 0, "re-queued, then sent to w2");
        let again = decode_event(&rx2.try_recv().unwrap());
        assert_eq!(
            (again.kind, again.body),
            (EventKind::Message, Bytes::from("hello"))
        );
        // A second line waits behind the one in flight on w2.
        f.state
            .client_message(id.connection, "second".into(), false, &f.counters)
            .unwrap();
        assert!(rx2.try_recv().is_err(), "one event in flight per client");
        assert_eq!(f.state.held_events(), 1);
        let queued = f.state.queued_bytes;
        // A late ack from the dead link is ignored: the event stays in flight on w2, so
        // the next one is not released and nothing is counted as done.
        f.state.ack(w1, hello.seq, id, &f.counters);
        assert!(
            rx2.try_recv().is_err(),
            "a late ack from a dead link released the next event"
        );
        assert_eq!(
            f.state.queued_bytes, queued,
            "the in-flight event is still held"
        );
        // w2's own ack is what releases it.
        f.state.ack(w2, again.seq, id, &f.counters);
        assert_eq!(decode_event(&rx2.try_recv().unwrap()).body, "second");
        assert_eq!(f.state.held_events(), 0);
    }

    #[test]
    fn a_lost_link_redispatches_only_its_own_events_and_sticky_clients_move_on() {
        let mut f = Fixture::new();
        let (w1, mut rx1) = f.worker();
        // Three clients stick to w1, the only worker when they connect.
        let ids: Vec<ClientId> = (0..3).map(|_| f.client().0).collect();
        let connects: Vec<Event> = (0..3)
            .map(|_| decode_event(&rx1.try_recv().unwrap()))
            .collect();
        let (_w2, mut rx2) = f.worker();
        // The first two are acknowledged; the third's connect stays in flight on w1.
        f.state.ack(w1, connects[0].seq, ids[0], &f.counters);
        f.state.ack(w1, connects[1].seq, ids[1], &f.counters);
        f.state
            .client_message(ids[0].connection, "a1".into(), false, &f.counters)
            .unwrap();
        let a1 = decode_event(&rx1.try_recv().unwrap());
        assert_eq!(a1.body, "a1", "a client sticks to its worker");
        f.state.ack(w1, a1.seq, ids[0], &f.counters);
        // w1 is lost: only the event in flight there is sent again, to w2.
        assert_eq!(f.state.link_closed(w1, &f.counters), 1);
        let again = decode_event(&rx2.try_recv().unwrap());
        assert_eq!((again.client, again.kind), (ids[2], EventKind::Connect));
        assert!(rx2.try_recv().is_err());
        // The clients that stuck to w1 go to w2 with their next lines.
        for (id, line) in [(ids[0], "a2"), (ids[1], "b2")] {
            f.state
                .client_message(id.connection, Bytes::from(line), false, &f.counters)
                .unwrap();
            let event = decode_event(&rx2.try_recv().unwrap());
            assert_eq!((event.client, event.body), (id, Bytes::from(line)));
        }
        // Debug builds check the per-link index of events in flight here.
        assert_eq!(f.state.held_events(), 0);
    }

    #[test]
    fn sticky_routing_keeps_a_client_on_its_busy_worker() {
        let mut f = Fixture::new();
        let (w1, mut rx1) = f.worker();
        let (w2, mut rx2) = f.worker();
        // In turn: a to w1, b to w2, c to w1 again.
        let (a, _) = f.client();
        let (b, _) = f.client();
        let (c, _) = f.client();
        let ca = decode_event(&rx1.try_recv().unwrap());
        let cb = decode_event(&rx2.try_recv().unwrap());
        let cc = decode_event(&rx1.try_recv().unwrap());
        assert_eq!((ca.client, cb.client, cc.client), (a, b, c));
        f.state.ack(w1, ca.seq, a, &f.counters);
        f.state.ack(w2, cb.seq, b, &f.counters);
        // c's connect is still in flight at w1, yet a's line goes there: a sticks.
        f.line_to(a, "a1", &mut rx1);
        assert!(rx2.try_recv().is_err());
        f.state.ack(w1, cc.seq, c, &f.counters);
    }

    #[test]
    fn least_busy_routing_passes_over_a_worker_with_events_in_flight() {
        let mut f = Fixture::new();
        f.state = State::new(7, 1 << 20, 1 << 16).with_routing(Routing::LeastBusy);
        let (w1, mut rx1) = f.worker();
        let (w2, mut rx2) = f.worker();
        // Idle workers take first events in turn, as with sticky routing.
        let (a, _) = f.client();
        let (b, _) = f.client();
        let ca = decode_event(&rx1.try_recv().unwrap());
        let cb = decode_event(&rx2.try_recv().unwrap());
        assert_eq!((ca.client, cb.client), (a, b));
        f.state.ack(w2, cb.seq, b, &f.counters);
        // w1 still has a's connect in flight: b's line, and then a new client's
        // connect, go to w2, the one with none.
        let b1 = f.line_to(b, "b1", &mut rx2);
        f.state.ack(w2, b1.seq, b, &f.counters);
        let (c, _) = f.client();
        let cc = decode_event(&rx2.try_recv().unwrap());
        assert_eq!(cc.client, c);
        assert!(rx1.try_recv().is_err(), "nothing more for the busy worker");
        // With one in flight on each, the next in turn after w2 (w1) takes a third.
        let (d, _) = f.client();
        assert_eq!(decode_event(&rx1.try_recv().unwrap()).client, d);
        // a's connect is acknowledged at last; a's next line goes where fewest wait:
        // w2 (c's connect) and w1 (d's connect) are even, and the turn is w2's.
        f.state.ack(w1, ca.seq, a, &f.counters);
        let a1 = f.line_to(a, "a1", &mut rx2);
        // A draining worker is passed over however idle it is.
        f.state.ack(w2, cc.seq, c, &f.counters);
        f.state.ack(w2, a1.seq, a, &f.counters);
        f.state.link_draining(w2, &f.counters);
        f.line_to(c, "c1", &mut rx1);
        assert!(rx2.try_recv().is_err());
        // d's connect and c's line are in flight at w1, nothing at w2 (both named "w").
        assert_eq!(
            f.state
                .in_flight_by_worker()
                .into_iter()
                .collect::<Vec<_>>(),
            [("w".to_string(), 2)]
        );
    }

    #[test]
    fn least_busy_routing_passes_over_a_held_up_worker() {
        let mut f = Fixture::new();
        // Long enough that no pause of the test between two steps reaches it.
        let after = Duration::from_millis(100);
        let past_it = || std::thread::sleep(after + Duration::from_millis(50));
        f.state = State::new(7, 1 << 20, 1 << 16)
            .with_routing(Routing::LeastBusy)
            .with_held_up_after(after);
        let (w1, mut rx1) = f.worker();
        let (w2, mut rx2) = f.worker();
        let (a, _) = f.client();
        let (b, _) = f.client();
        let ca = decode_event(&rx1.try_recv().unwrap());
        let cb = decode_event(&rx2.try_recv().unwrap());
        f.state.ack(w2, cb.seq, b, &f.counters);
        // w1 holds a's connect and acknowledges nothing for longer than `after`.
        past_it();
        // Three new clients all go to w2, which keeps making progress, although w1
        // has fewer in flight from the second on (without `held_up_after`, the second
        // would go to w1 in turn and the third as the least busy).
        let mut at_w2 = Vec::new();
        for _ in 0..3 {
            let (c, _) = f.client();
            let e = decode_event(&rx2.try_recv().expect("w2 takes it"));
            assert_eq!(e.client, c);
            at_w2.push(e);
        }
        assert!(rx1.try_recv().is_err(), "nothing for the held-up worker");
        // w1 acknowledges at last: idle, it is the least busy again.
        f.state.ack(w1, ca.seq, a, &f.counters);
        f.line_to(a, "a1", &mut rx1);
        // Both go silent: both are held up, and the least busy of them is chosen.
        f.state.ack(w2, at_w2[0].seq, at_w2[0].client, &f.counters);
        past_it();
        let (d, _) = f.client();
        assert_eq!(decode_event(&rx1.try_recv().unwrap()).client, d);
        assert!(rx2.try_recv().is_err());
    }

    /// Not a test but a measurement: how long a worker link's drain and loss hold
    /// the routing state (the gateway's one lock) with 19,000 idle clients. Run by
    /// hand: `cargo test --release -p switchboard --lib link_loss_with_many -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, run by hand in release mode"]
    fn link_loss_with_many_idle_clients() {
        let mut f = Fixture::new();
        let (w1, mut rx1) = f.worker();
        for _ in 0..19_000 {
            f.client();
        }
        while let Ok(frame) = rx1.try_recv() {
            let e = decode_event(&frame);
            f.state.ack(w1, e.seq, e.client, &f.counters);
        }
        let (_w2, _rx2) = f.worker();
        let t = Instant::now();
        f.state.link_draining(w1, &f.counters);
        let draining = t.elapsed();
        let t = Instant::now();
        f.state.link_closed(w1, &f.counters);
        let closed = t.elapsed();
        println!("19,000 idle clients: link_draining {draining:?}, link_closed {closed:?}");
        for (name, q) in [
            ("Clients", Query::Clients),
            ("AllClientIds", Query::AllClientIds),
            ("Sessions", Query::Sessions(None)),
        ] {
            let t = Instant::now();
            let answer = f.state.query(q, &f.counters);
            let held = t.elapsed();
            let t = Instant::now();
            drop(answer.finish());
            let after = t.elapsed();
            println!("19,000 idle clients: query {name} holds the state {held:?}, then {after:?} without it");
        }
    }

    #[test]
    fn draining_worker_gets_no_new_events() {
        let mut f = Fixture::new();
        let (w1, mut rx1) = f.worker();
        let (id, _rx) = f.client();
        let c = decode_event(&rx1.try_recv().unwrap());
        let (_w2, mut rx2) = f.worker();
        f.state.link_draining(w1, &f.counters);
        f.state
            .client_message(id.connection, "x".into(), false, &f.counters)
            .unwrap();
        assert!(
            rx2.try_recv().is_err(),
            "still waiting for the in-flight ack"
        );
        f.state.ack(w1, c.seq, id, &f.counters);
        assert!(rx1.try_recv().is_err());
        assert_eq!(decode_event(&rx2.try_recv().unwrap()).body, "x");
    }

    /// A client in several of the groups (or with a uid named twice) gets a send once;
    /// the excluded get nothing, and a group or uid named twice counts once.
    #[test]
    fn a_send_to_overlapping_groups_or_uids_reaches_each_client_once() {
        let mut f = Fixture::new();
        let clients: Vec<_> = (0..4).map(|_| f.client()).collect();
        let join = |f: &mut Fixture, client: ClientId, group: &str| {
            f.state.command(
                Command::JoinGroup {
                    client,
                    group: group.into(),
                },
                &f.counters,
            );
        };
        // 0 in a, 1 in a and b, 2 in b, 3 in b but excluded.
        join(&mut f, clients[0].0, "a");
        join(&mut f, clients[1].0, "a");
        join(&mut f, clients[1].0, "b");
        join(&mut f, clients[2].0, "b");
        join(&mut f, clients[3].0, "b");
        let send = Command::SendToGroup {
            groups: vec!["a".into(), "b".into(), "a".into(), "none".into()],
            data: "hi".into(),
            exclude: vec![clients[3].0],
        };
        assert_eq!(f.state.command(send, &f.counters), 3);
        for (i, (_, out)) in clients.iter().enumerate() {
            let got = std::iter::from_fn(|| out.try_pop()).count();
            assert_eq!(got, usize::from(i < 3), "client {i}");
        }
        for (client, uid) in [
            (clients[0].0, "u"),
            (clients[1].0, "u"),
            (clients[2].0, "v"),
        ] {
            f.state.command(
                Command::BindUid {
                    client,
                    uid: uid.into(),
                },
                &f.counters,
            );
        }
        let send = Command::SendToUid {
            uids: vec!["u".into(), "v".into(), "u".into()],
            data: "hi".into(),
        };
        assert_eq!(f.state.command(send, &f.counters), 3);
        for (i, (_, out)) in clients.iter().enumerate() {
            let got = std::iter::from_fn(|| out.try_pop()).count();
            assert_eq!(got, usize::from(i < 3), "client {i}");
        }
    }

    /// The fan-out pushes to each recipient three stages of a few recipients after
    /// finding it (so that the CPU can load its memory meanwhile): around each
    /// stage's distance, and with some clients excluded in between, every recipient
    /// gets the message once, the rest none.
    #[test]
    fn a_fan_out_reaches_each_recipient_once_whatever_the_count() {
        for n in [0, 1, 2, 5, 6, 7, 11, 12, 13, 17, 18, 19, 100] {
            let mut f = Fixture::new();
            let clients: Vec<_> = (0..n).map(|_| f.client()).collect();
            for (client, _) in &clients {
                f.state.command(
                    Command::JoinGroup {
                        client: *client,
                        group: "g".into(),
                    },
                    &f.counters,
                );
            }
            let excluded = |i: usize| i % 5 == 3;
            let exclude: Vec<_> = (0..n)
                .filter(|i| excluded(*i))
                .map(|i| clients[i].0)
                .collect();
            let to_all = Command::SendToAll {
                data: "hi".into(),
                only: None,
                exclude: exclude.clone(),
            };
            let to_group = Command::SendToGroup {
                groups: vec!["g".into()],
                data: "hi".into(),
                exclude,
            };
            for send in [to_all, to_group] {
                let reached = f.state.command(send, &f.counters);
                assert_eq!(
                    reached,
                    (0..n).filter(|i| !excluded(*i)).count(),
                    "{n} clients"
                );
                for (i, (_, out)) in clients.iter().enumerate() {
                    let got = std::iter::from_fn(|| out.try_pop()).count();
                    assert_eq!(got, usize::from(!excluded(i)), "client {i} of {n}");
                }
            }
        }
    }

    #[test]
    fn uid_group_and_queries() {
        let mut f = Fixture::new();
        let (a, arx) = f.client();
        let (b, brx) = f.client();
        f.state.command(
            Command::BindUid {
                client: a,
                uid: "u1".into(),
            },
            &f.counters,
        );
        f.state.command(
            Command::JoinGroup {
                client: a,
                group: "g".into(),
            },
            &f.counters,
        );
        f.state.command(
            Command::JoinGroup {
                client: b,
                group: "g".into(),
            },
            &f.counters,
        );
        f.state.command(
            Command::SendToGroup {
                groups: vec!["g".into()],
                data: "hi".into(),
                exclude: vec![b],
            },
            &f.counters,
        );
        assert!(matches!(arx.try_pop(), Some(d) if d == "hi\n"));
        assert!(brx.try_pop().is_none());
        assert_eq!(
            f.state.query_for_test(Query::ClientIdsByUid("u1".into())),
            Reply::ClientIds(vec![a])
        );
        assert_eq!(
            f.state
                .query_for_test(Query::ClientCountByGroup("g".into())),
            Reply::Count(2)
        );
        f.state.client_closed(a.connection, &f.counters);
        assert_eq!(
            f.state
                .query_for_test(Query::ClientCountByGroup("g".into())),
            Reply::Count(1)
        );
        assert_eq!(
            f.state.query_for_test(Query::AllUids),
            Reply::Strings(vec![])
        );
        assert_eq!(
            f.state.query_for_test(Query::IsOnline(a)),
            Reply::Bool(false)
        );
    }

    #[test]
    fn send_or_tell_tells_the_sender_what_became_of_the_message() {
        let mut f = Fixture::new();
        let (alice, arx) = f.client();
        let (bob, brx) = f.client();
        let tell = |to: ClientId, sender: ClientId| Command::SendOrTell {
            client: to,
            data: "psst".into(),
            sender,
            sent: Some("sent".into()),
            offline: Some("offline".into()),
        };
        let drain = |out: &Outbound| std::iter::from_fn(|| out.try_pop()).collect::<Vec<_>>();
        // Online: bob gets it, then alice the notice; one client reached.
        assert_eq!(f.state.command(tell(bob, alice), &f.counters), 1);
        assert_eq!(drain(&brx), vec!["psst\n"]);
        assert_eq!(drain(&arx), vec!["sent\n"]);
        // Not online (closed, or a number never given): alice hears so, nothing else
        // is sent.
        f.state.client_closed(bob.connection, &f.counters);
        assert_eq!(f.state.command(tell(bob, alice), &f.counters), 0);
        let never = ClientId::new(7, 999);
        assert_eq!(f.state.command(tell(never, alice), &f.counters), 0);
        assert_eq!(drain(&arx), vec!["offline\n", "offline\n"]);
        assert!(drain(&brx).is_empty());
        // A sender of another gateway is not told here; without notices, nobody is.
        let (carol, crx) = f.client();
        assert_eq!(
            f.state
                .command(tell(carol, ClientId::new(8, alice.connection)), &f.counters),
            1
        );
        assert!(drain(&arx).is_empty());
        let quiet = Command::SendOrTell {
            client: never,
            data: "psst".into(),
            sender: alice,
            sent: None,
            offline: None,
        };
        assert_eq!(f.state.command(quiet, &f.counters), 0);
        assert!(drain(&arx).is_empty());
        assert_eq!(drain(&crx), vec!["psst\n"]);
        // Counted, as the library asks it when it wants the outcome.
        assert_eq!(
            f.state.query_for_test(Query::Counted(tell(carol, alice))),
            Reply::Count(1)
        );
    }

    #[test]
    fn slow_consumer_is_cut_off() {
        let mut f = Fixture::new();
        let out = Outbound::new(10);
        let kill = out.clone();
        let id = f.text_client("10.0.0.1:1", out);
        f.state.command(
            Command::SendToClient {
                client: id,
                data: "12345678901".into(),
            },
            &f.counters,
        );
        assert!(kill.is_killed());
        assert_eq!(f.counters.slow_consumers.load(Ordering::Relaxed), 1);
    }

    fn upgrading(f: &mut Fixture) -> (ClientId, Outbound, oneshot::Receiver<Verdict>) {
        let out = Outbound::new(1 << 16);
        let (tx, rx) = oneshot::channel();
        let id = f.state.add_client(
            "9.9.9.9:9".parse().unwrap(),
            text_listener(),
            out.clone(),
            Opening::WebSocket {
                request: Bytes::from_static(b"{\"path\":\"/\"}"),
                verdict: tx,
            },
            &f.counters,
        );
        (id, out, rx)
    }

    #[test]
    fn an_accepted_upgrade_becomes_a_live_client_with_a_connect_event() {
        let mut f = Fixture::new();
        let (w, mut wrx) = f.worker();
        let (id, out, mut verdict) = upgrading(&mut f);
        let hs = decode_event(&wrx.try_recv().unwrap());
        assert_eq!(hs.kind, EventKind::WebSocketConnect);
        // Not live yet: not counted by queries, not reachable by sends.
        assert_eq!(
            f.state.query_for_test(Query::IsOnline(id)),
            Reply::Bool(false)
        );
        assert_eq!(
            f.state.query_for_test(Query::AllClientCount),
            Reply::Count(0)
        );
        assert_eq!(
            f.state.query_for_test(Query::AllClientIds),
            Reply::ClientIds(vec![])
        );
        assert_eq!(
            f.state.command(
                Command::SendToAll {
                    data: "early".into(),
                    only: None,
                    exclude: vec![]
                },
                &f.counters
            ),
            0
        );
        assert_eq!(f.state.connected(), 1, "it counts against max_clients");
        // The application takes its time...
        std::thread::sleep(Duration::from_millis(2));
        let asked = Instant::now();
        f.state
            .verdict(w, hs.seq, id, Verdict::Accepted, &f.counters);
        // ...which the heartbeat does not hold against the client.
        assert!(f.state.idle_since(0, asked).is_empty());
        assert_eq!(verdict.try_recv(), Ok(Verdict::Accepted));
        let connect = decode_event(&wrx.try_recv().unwrap());
        assert_eq!(connect.kind, EventKind::Connect);
        assert_eq!(connect.body, hs.body, "on_connect sees the request too");
        assert_eq!(
            f.state.query_for_test(Query::IsOnline(id)),
            Reply::Bool(true)
        );
        f.state.command(
            Command::SendToClient {
                client: id,
                data: "hi".into(),
            },
            &f.counters,
        );
        assert!(matches!(out.try_pop(), Some(d) if d == "hi\n"));
        assert_eq!(
            f.state.query_for_test(Query::AllClientCount),
            Reply::Count(1)
        );
    }

    #[test]
    fn a_refused_or_abandoned_upgrade_leaves_nothing_behind() {
        let mut f = Fixture::new();
        let (w, mut wrx) = f.worker();
        let (id, _out, mut verdict) = upgrading(&mut f);
        let hs = decode_event(&wrx.try_recv().unwrap());
        let refused = Verdict::Refused {
            status: 401,
            reason: "token".into(),
        };
        f.state.verdict(w, hs.seq, id, refused.clone(), &f.counters);
        assert_eq!(verdict.try_recv(), Ok(refused));
        assert!(
            wrx.try_recv().is_err(),
            "no connect, and no close event either"
        );
        assert_eq!(f.state.connected(), 0);
        assert_eq!(f.state.queued_bytes, 0);
        // Abandoned while the event waits for a worker.
        let mut g = Fixture::new();
        let (id, _out, _rx) = upgrading(&mut g);
        assert!(g.state.abandon_upgrade(id.connection));
        assert_eq!((g.state.connected(), g.state.queued_bytes), (0, 0));
        assert!(g.state.clients.is_empty());
        // Expired with no worker: 503.
        let mut h = Fixture::new();
        let (_id, _out, mut rx) = upgrading(&mut h);
        h.state.expire_held(Duration::ZERO, &h.counters);
        assert!(matches!(
            rx.try_recv(),
            Ok(Verdict::Refused { status: 503, .. })
        ));
        assert_eq!((h.state.connected(), h.state.queued_bytes), (0, 0));
    }

    #[test]
    fn a_client_whose_connect_was_rejected_is_never_heard_of_by_the_application() {
        let mut f = Fixture::new();
        // No worker: the connect event waits, then is rejected, which closes the client.
        let (id, _out) = f.client();
        f.state.expire_held(Duration::ZERO, &f.counters);
        // What it sent before the close took effect, and its end.
        f.state
            .client_message(id.connection, "late".into(), false, &f.counters)
            .unwrap();
        f.state.client_closed(id.connection, &f.counters);
        let (_, mut rx) = f.worker();
        let sent: Vec<EventKind> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|b| decode_event(&b).kind)
            .collect();
        assert_eq!(
            sent,
            vec![],
            "on_close (or on_message) for a client the application never saw connect"
        );
        assert!(f.state.clients.is_empty(), "the client is forgotten");
    }

    #[test]
    fn held_events_expire_with_an_error_to_the_client() {
        let mut f = Fixture::new();
        let (id, rx) = f.client();
        f.state
            .client_message(id.connection, "x".into(), false, &f.counters)
            .unwrap();
        assert_eq!(f.state.held_events(), 2);
        let log = f.state.expire_held(Duration::ZERO, &f.counters);
        assert_eq!(log.len(), 1);
        assert_eq!(f.counters.rejected.load(Ordering::Relaxed), 2);
        assert_eq!(f.state.held_events(), 0);
        assert!(
            f.state.expire_held(Duration::ZERO, &f.counters).is_empty(),
            "nothing held, nothing to expire"
        );
        assert!(matches!(rx.try_pop(), Some(d) if d.starts_with(b"error: no worker")));
    }

    #[test]
    fn each_recipient_gets_the_rendering_of_its_protocol() {
        let mut f = Fixture::new();
        let mut add = |protocol: ClientProtocol| {
            let out = Outbound::new(1 << 16);
            let listener = Arc::new(ListenerMeta {
                name: protocol.to_string(),
                protocol,
                index: 0,
            });
            let id = f.state.add_client(
                "1.2.3.4:5".parse().unwrap(),
                listener,
                out.clone(),
                Opening::Connect,
                &f.counters,
            );
            f.state.command(
                Command::JoinGroup {
                    client: id,
                    group: "room".into(),
                },
                &f.counters,
            );
            (id, out)
        };
        let (_, line) = add(ClientProtocol::Text);
        let (browser_id, browser) = add(ClientProtocol::WebSocket);
        let (_, json) = add(ClientProtocol::Json);
        let data = PerProtocol::new("a line").with(ClientProtocol::WebSocket, "{\"a\":1}");
        let pop = |out: &Outbound| out.try_pop().expect("nothing sent");
        let framed = |p: ClientProtocol, m: &'static str| p.encode_to_bytes(&Message::from(m));
        let group = Command::SendToGroup {
            groups: vec!["room".into()],
            data: data.clone(),
            exclude: vec![],
        };
        assert_eq!(f.state.command(group, &f.counters), 3);
        assert_eq!(pop(&line), "a line\n");
        assert_eq!(
            pop(&browser),
            framed(ClientProtocol::WebSocket, "{\"a\":1}")
        );
        assert_eq!(pop(&json), framed(ClientProtocol::Json, "a line"));
        let one = Command::SendToClient {
            client: browser_id,
            data,
        };
        assert_eq!(f.state.command(one, &f.counters), 1);
        assert_eq!(
            pop(&browser),
            framed(ClientProtocol::WebSocket, "{\"a\":1}")
        );
        assert!(line.try_pop().is_none() && json.try_pop().is_none());
    }
}
