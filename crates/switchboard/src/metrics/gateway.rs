//! Gateway-side metrics: what a gateway process calls when clients come and go and
//! bytes move. Each call is cheap (an atomic add; connection-level calls also look up
//! the listener in a small map) and does nothing when metrics are off.
//!
//! | call | when | metric |
//! |---|---|---|
//! | [`client_connected`]`(listener, protocol)` | a client was accepted and registered | `switchboard_clients{listener,protocol}` +1, `switchboard_connections_accepted_total{listener,protocol}` +1 |
//! | [`client_disconnected`]`(listener, protocol, reason)` | a registered client is gone, for `reason` | `switchboard_clients` −1, `switchboard_connections_total{listener,reason}` +1 |
//! | [`client_refused`]`(listener, reason)` | a connection was closed before it became a client: at accept (`max_clients`: `limit`), a failed TLS handshake or a bad upgrade request (`protocol_error`), a refused upgrade (`refused`) | `switchboard_connections_total{listener,reason}` +1 |
//! | [`client_refused_by_limit`]`(listener, limit)` | a connection was closed at accept by a limit: `max_clients`, the listener's `max_connections` and `max_connect_rate`, `max_connections_per_ip`, `max_connect_rate_per_ip` | `switchboard_connections_total{listener,reason="limit"}` +1, `switchboard_connections_refused_total{listener,limit}` +1 |
//! | [`internal_refused`]`(reason)` | a connection on the internal listener was refused before it authenticated | `switchboard_internal_refused_total{reason}` +1 |
//! | [`bytes_in`]`(n)` / [`bytes_out`]`(n)` | bytes read from / written to a client socket | `switchboard_received_bytes_total` / `switchboard_sent_bytes_total` |
//! | [`outbound_queued`]`(n)` / [`outbound_written`]`(n)` | bytes put on / taken off a client's outbound queue (or dropped with it) | `switchboard_outbound_queue_bytes` |
//! | [`events_held`]`(n)` | the number of events waiting for a worker changed (set, not add) | `switchboard_events_held` |
//!
//! The gateway's existing counters (`events`, `redispatched`, `rejected`,
//! `slow_consumers`) and its link count are read from its stats file and need no call
//! (see [`crate::stats::publish_loop`]). [`set_listeners`] gives each listener its
//! `switchboard_clients` series from the start.

use std::sync::atomic::{AtomicBool, Ordering};

use super::{Counter, DynCounters, DynGauges, Gauge, Series};
use crate::protocol::ClientProtocol;

/// Why a client connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed it (EOF, reset).
    ClientClosed,
    /// Closed by the heartbeat: nothing from the client for `idle_intervals`.
    Heartbeat,
    /// Its outbound queue passed `gateway.outbound_limit`.
    SlowConsumer,
    /// A limit: `max_clients` at accept, or events rejected with the client cut.
    Limit,
    /// It broke its protocol (too long a message, a bad frame, not UTF-8), or did not
    /// complete its TLS handshake or WebSocket upgrade request (malformed, or not
    /// within `handshake_timeout`).
    ProtocolError,
    /// The server closed it: `close_client`, a gateway stop.
    ServerClose,
    /// A WebSocket upgrade refused: by the application (`on_websocket_connect`), the
    /// origin check, or for want of a verdict within `handshake_timeout`.
    Refused,
}

impl CloseReason {
    const ALL: [CloseReason; 7] = [
        CloseReason::ClientClosed,
        CloseReason::Heartbeat,
        CloseReason::SlowConsumer,
        CloseReason::Limit,
        CloseReason::ProtocolError,
        CloseReason::ServerClose,
        CloseReason::Refused,
    ];

    /// The reason whose `as u8` is `i`.
    pub(crate) fn from_index(i: u8) -> Option<Self> {
        Self::ALL.get(usize::from(i)).copied()
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::ClientClosed => "client_closed",
            CloseReason::Heartbeat => "heartbeat",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::Limit => "limit",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::ServerClose => "server_close",
            CloseReason::Refused => "refused",
        }
    }
}

/// Why a connection on the internal listener was refused before it authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InternalRefusal {
    /// `gateway.max_unauthenticated` connections were in their handshake already.
    Limit,
    /// A wrong answer to the challenge (wrong secret, or a replayed answer).
    Auth,
    /// A protocol version this gateway does not speak.
    Version,
    /// Not a handshake: garbage, a frame over the handshake limit, another frame.
    ProtocolError,
    /// No answer (or no TLS handshake) within 5 s.
    Timeout,
    /// A failed TLS handshake.
    Tls,
    /// The peer closed the connection during the handshake.
    Closed,
}

impl InternalRefusal {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            InternalRefusal::Limit => "limit",
            InternalRefusal::Auth => "auth",
            InternalRefusal::Version => "version",
            InternalRefusal::ProtocolError => "protocol_error",
            InternalRefusal::Timeout => "timeout",
            InternalRefusal::Tls => "tls",
            InternalRefusal::Closed => "closed",
        }
    }
}

fn protocol_name(p: ClientProtocol) -> String {
    // The protocol's configuration spelling (`text`, `frame`, ...).
    serde_json::to_value(p)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{p:?}").to_lowercase())
}

static CLIENTS: DynGauges = DynGauges::new();
static ACCEPTED: DynCounters = DynCounters::new();
static ENDED: DynCounters = DynCounters::new();
static REFUSED: DynCounters = DynCounters::new();
static INTERNAL_REFUSED: DynCounters = DynCounters::new();
static BYTES_IN: Counter = Counter::new();
static BYTES_OUT: Counter = Counter::new();
static OUTBOUND: Gauge = Gauge::new();
static HELD: Gauge = Gauge::new();
/// Set once this process reports clients itself (the stats fallback then stops).
static REPORTS_CLIENTS: AtomicBool = AtomicBool::new(false);
/// Set once this process reports held events itself.
static REPORTS_HELD: AtomicBool = AtomicBool::new(false);

/// A client was accepted on `listener` (the listener's `name`).
pub fn client_connected(listener: &str, protocol: ClientProtocol) {
    REPORTS_CLIENTS.store(true, Ordering::Relaxed);
    let p = protocol_name(protocol);
    CLIENTS.add(&[listener, &p], 1);
    ACCEPTED.add(&[listener, &p], 1);
}

/// A client accepted with [`client_connected`] is gone.
pub fn client_disconnected(listener: &str, protocol: ClientProtocol, reason: CloseReason) {
    let p = protocol_name(protocol);
    CLIENTS.add(&[listener, &p], -1);
    ENDED.add(&[listener, reason.as_str()], 1);
}

/// A connection was closed before it became a client: at accept (`max_clients`), in
/// its TLS handshake, or in its WebSocket upgrade.
pub fn client_refused(listener: &str, reason: CloseReason) {
    ENDED.add(&[listener, reason.as_str()], 1);
}

/// A connection was closed at accept because it was over `limit` (the limit's key:
/// `max_clients`, `max_connections`, `max_connect_rate`, `max_connections_per_ip`,
/// `max_connect_rate_per_ip`); it is also counted as a `limit` close.
pub fn client_refused_by_limit(listener: &str, limit: &str) {
    ENDED.add(&[listener, CloseReason::Limit.as_str()], 1);
    REFUSED.add(&[listener, limit], 1);
}

/// A connection on the internal listener was refused before it authenticated.
pub fn internal_refused(reason: InternalRefusal) {
    INTERNAL_REFUSED.add(&[reason.as_str()], 1);
}

/// Bytes read from a client socket.
#[inline]
pub fn bytes_in(n: usize) {
    BYTES_IN.add(n as u64)
}

/// Bytes written to a client socket.
#[inline]
pub fn bytes_out(n: usize) {
    BYTES_OUT.add(n as u64)
}

/// Bytes put on a client's outbound queue.
#[inline]
pub fn outbound_queued(n: usize) {
    OUTBOUND.add(n as i64)
}

/// Bytes taken off a client's outbound queue (written, or dropped with the client).
#[inline]
pub fn outbound_written(n: usize) {
    OUTBOUND.add(-(n as i64))
}

/// Events waiting for a worker in this gateway now.
pub fn events_held(n: u64) {
    REPORTS_HELD.store(true, Ordering::Relaxed);
    HELD.set(n as i64)
}

/// Whether this process calls [`client_connected`] itself.
pub(crate) fn reports_clients() -> bool {
    REPORTS_CLIENTS.load(Ordering::Relaxed)
}

pub(super) fn collect(out: &mut Vec<Series>) {
    for (k, v) in CLIENTS.values() {
        out.push(Series::gauge(
            "switchboard_clients",
            &[("listener", &k[0]), ("protocol", &k[1])],
            v as f64,
        ));
    }
    for (k, v) in ACCEPTED.values() {
        out.push(Series::counter(
            "switchboard_connections_accepted",
            &[("listener", &k[0]), ("protocol", &k[1])],
            v,
        ));
    }
    for (k, v) in ENDED.values() {
        out.push(Series::counter(
            "switchboard_connections",
            &[("listener", &k[0]), ("reason", &k[1])],
            v,
        ));
    }
    for (k, v) in REFUSED.values() {
        out.push(Series::counter(
            "switchboard_connections_refused",
            &[("listener", &k[0]), ("limit", &k[1])],
            v,
        ));
    }
    for (k, v) in INTERNAL_REFUSED.values() {
        out.push(Series::counter(
            "switchboard_internal_refused",
            &[("reason", &k[0])],
            v,
        ));
    }
    if BYTES_IN.get() > 0 || BYTES_OUT.get() > 0 {
        out.push(Series::counter(
            "switchboard_received_bytes",
            &[],
            BYTES_IN.get(),
        ));
        out.push(Series::counter(
            "switchboard_sent_bytes",
            &[],
            BYTES_OUT.get(),
        ));
        out.push(Series::gauge(
            "switchboard_outbound_queue_bytes",
            &[],
            OUTBOUND.get() as f64,
        ));
    }
    if REPORTS_HELD.load(Ordering::Relaxed) {
        out.push(Series::gauge(
            "switchboard_events_held",
            &[],
            HELD.get() as f64,
        ));
    }
}

/// Registers this gateway process's listeners, so that each has its
/// `switchboard_clients` series (0 until a client connects). The CLI calls it for the
/// gateway role.
pub fn set_listeners(listeners: &[crate::config::ListenerConfig]) {
    REPORTS_CLIENTS.store(true, Ordering::Relaxed);
    for l in listeners {
        CLIENTS.add(&[&l.name, &protocol_name(l.protocol)], 0);
    }
}

/// Series derived from a gateway's stats sample, for what the gateway does not report
/// through this module: its counters, links and (until it calls [`client_connected`])
/// its client count.
pub(crate) fn from_stats(sample: &crate::stats::Sample, out: &mut Vec<Series>) {
    let d = &sample.detail;
    let get = |k: &str| d.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
    out.push(Series::counter(
        "switchboard_gateway_events_dispatched",
        &[],
        sample.events,
    ));
    out.push(Series::counter(
        "switchboard_events_redispatched",
        &[],
        get("redispatched"),
    ));
    out.push(Series::counter(
        "switchboard_events_rejected",
        &[],
        get("rejected"),
    ));
    out.push(Series::counter(
        "switchboard_slow_consumers",
        &[],
        get("slow_consumers"),
    ));
    let number = get("number").to_string();
    out.push(Series::gauge(
        "switchboard_gateway_links",
        &[("gateway", &number)],
        get("workers") as f64,
    ));
    let in_flight = d.get("in_flight").and_then(|v| v.as_object());
    for (worker, n) in in_flight.into_iter().flatten() {
        out.push(Series::gauge(
            "switchboard_worker_events_in_flight",
            &[("worker", worker)],
            n.as_u64().unwrap_or(0) as f64,
        ));
    }
    if !reports_clients() {
        // A gateway that registered no listener (not started by the CLI).
        out.push(Series::gauge(
            "switchboard_clients",
            &[("listener", "all"), ("protocol", "all")],
            sample.clients as f64,
        ));
    }
}
