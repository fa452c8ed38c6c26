//! The gateway process: owns client connections, runs no business code.
//!
//! It binds every client listener (with SO_REUSEPORT, so several gateway processes share
//! a port) and one internal listener for workers, publishes its internal address in the
//! store, and moves events and commands between clients and workers through [`state`].
//! A listener is an address, a transport (TCP or TLS, [`crate::transport`]), a protocol
//! ([`crate::protocol`]), limits and a heartbeat; every protocol runs over every
//! transport, and the rest of the gateway sees only messages.

mod client;
mod direct;
pub mod limits;
mod link;
pub mod link_queue;
mod outbound;
mod pacer;
pub mod state;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, GatewayConfig, HeartbeatConfig, ListenerConfig};
use crate::discovery::{self, GatewayEntry};
use crate::metrics::gateway as metrics;
use crate::protocol::{websocket, ClientProtocol};
use crate::stats;
use crate::transport::tls::{self, ReloadableCert};
use crate::Assets;
use crate::Error;
use state::{Counters, ListenerMeta, State};

pub use crate::protocol::internal::frame_kind;

/// What every task of a gateway shares.
pub struct Shared {
    state: Mutex<State>,
    counters: Counters,
    config: GatewayConfig,
    secret: String,
    number: u32,
    /// Connections accepted but not registered yet (in their TLS handshake or HTTP
    /// request): they count against `max_clients` too, so a flood of connections that
    /// never finish their handshake cannot grow the process.
    handshaking: std::sync::atomic::AtomicUsize,
    /// Internal connections that have not authenticated yet (at most
    /// `max_unauthenticated`).
    unauthenticated: std::sync::atomic::AtomicUsize,
    /// Every client connection's task, so that a stopping gateway can let them flush.
    clients: TaskTracker,
    /// Connections per source address and their connect rate
    /// (`gateway.max_connections_per_ip`, `gateway.max_connect_rate_per_ip`).
    per_source: Arc<limits::PerSource>,
    /// Client connections cut at accept or in their handshake, per source and reason,
    /// told once a second.
    cuts: limits::CutLog,
    /// Lines per second for refused internal connections (a flood of garbage on the
    /// internal port must not flood the log).
    internal_log: limits::LogBudget,
    /// What the connections' write times count from (`gateway.min_write_interval`).
    epoch: tokio::time::Instant,
    /// With `gateway.min_write_interval` set: the clients held back until it passes.
    pacer: Option<Arc<pacer::Pacer>>,
}

/// Refused internal connections logged one by one per second; the rest are summed up.
const INTERNAL_LOG_PER_SECOND: u32 = 10;

/// Holds a place among the internal connections still in their handshake, until
/// dropped (once the peer has authenticated, or is gone).
pub struct Unauthenticated(Arc<Shared>);

impl Unauthenticated {
    /// Takes a place, or `None` when all `max_unauthenticated` are taken.
    fn take(shared: &Arc<Shared>) -> Option<Self> {
        let max = shared.config.max_unauthenticated;
        shared
            .unauthenticated
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(shared.clone()))
    }
}

impl Drop for Unauthenticated {
    fn drop(&mut self) {
        self.0.unauthenticated.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Holds a place among the connections not yet registered, from accept until dropped:
/// taken in the accept loop itself, so that a burst of connections is counted before
/// any of their tasks has run.
struct Handshaking(Arc<Shared>);

impl Handshaking {
    fn new(shared: &Arc<Shared>) -> Self {
        shared.handshaking.fetch_add(1, Ordering::Relaxed);
        Self(shared.clone())
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        self.0.handshaking.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // State mutations are small and complete; a panic elsewhere cannot leave them
        // half done, so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One client listener as its connections see it.
pub struct Listener {
    /// Its configuration.
    config: ListenerConfig,
    /// Name, protocol and index, shared with every client's routing entry.
    meta: Arc<ListenerMeta>,
    /// The TLS acceptor of a `tls` listener (its certificate is re-read on SIGHUP).
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// Its heartbeat (the listener's own or the gateway's default).
    heartbeat: HeartbeatConfig,
    /// The application's files, served on `websocket` listeners.
    assets: Arc<Assets>,
    /// Its connections open now, handshaking ones included (at most `max_connections`).
    open: std::sync::atomic::AtomicUsize,
}

/// A connection's place in its listener's count, given back when dropped.
struct ListenerPlace(Arc<Listener>);

/// The places a connection holds until it ends: in its listener's count, and in its
/// source address's (none for a trusted proxy).
type Places = (ListenerPlace, Option<limits::SourcePlace>);

impl ListenerPlace {
    /// Takes a place, or `None` when the listener holds its `max_connections`.
    fn take(listener: &Arc<Listener>) -> Option<Self> {
        let max = listener.config.max_connections.unwrap_or(usize::MAX);
        listener
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(listener.clone()))
    }
}

impl std::ops::Deref for ListenerPlace {
    type Target = Listener;

    fn deref(&self) -> &Listener {
        &self.0
    }
}

impl Drop for ListenerPlace {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Loads a certificate and builds the rustls acceptor for it.
fn acceptor(
    files: &crate::config::TlsFiles,
    alpn: &[&[u8]],
    what: &str,
) -> Result<(Arc<ReloadableCert>, tokio_rustls::TlsAcceptor), Error> {
    let cert = Arc::new(
        ReloadableCert::load(files.clone()).map_err(|e| Error::Other(format!("{what}: {e}")))?,
    );
    let config =
        tls::server_config(cert.clone(), alpn).map_err(|e| Error::Other(format!("{what}: {e}")))?;
    Ok((cert, tokio_rustls::TlsAcceptor::from(Arc::new(config))))
}

/// Binds a TCP listener with SO_REUSEADDR and (optionally) SO_REUSEPORT.
pub fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

/// Runs gateway process number `index` (0-based on this machine) until `shutdown`;
/// `websocket` listeners serve `assets`.
pub async fn run(
    config: Config,
    index: usize,
    assets: Arc<Assets>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    // First of all: a SIGHUP (certificate reload) must never kill a gateway that is
    // still starting.
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| Error::io("cannot watch SIGHUP", e))?;
    let gw = config.gateway.clone();
    let store = crate::open_store(&config).await?;
    let number = retry_store("take a gateway number", &shutdown, || {
        discovery::new_gateway_number(store.as_ref(), &config.name)
    })
    .await?;

    let internal_addr = gw.internal_listen_for(index);
    let internal = bind(internal_addr, false).map_err(|e| {
        Error::io(
            format!("cannot bind the internal listener on {internal_addr}"),
            e,
        )
    })?;
    let internal_local = internal
        .local_addr()
        .map_err(|e| Error::io("internal listener address", e))?;
    let internal_tls = match &gw.internal_tls {
        Some(files) => Some(acceptor(
            &config.tls_files(files),
            &[],
            "gateway.internal_tls",
        )?),
        None => None,
    };
    let mut client_listeners = Vec::new();
    let mut certs = Vec::new();
    for (i, l) in gw.listeners.iter().enumerate() {
        let socket = bind(l.listen, true).map_err(|e| {
            Error::io(
                format!("cannot listen on {} (listener {:?})", l.listen, l.name),
                e,
            )
        })?;
        let local = socket
            .local_addr()
            .map_err(|e| Error::io("listener address", e))?;
        let tls = match &l.tls {
            Some(files) => {
                // Browsers ask for http/1.1 on a wss:// connection.
                let alpn: &[&[u8]] = if l.protocol == ClientProtocol::WebSocket {
                    &[b"http/1.1"]
                } else {
                    &[]
                };
                let what = format!("gateway.listeners[{i}].tls");
                let (cert, acc) = acceptor(&config.tls_files(files), alpn, &what)?;
                certs.push((what, cert));
                Some(acc)
            }
            None => None,
        };
        let listener = Listener {
            config: l.clone(),
            meta: Arc::new(ListenerMeta {
                name: l.name.clone(),
                protocol: l.protocol,
                index: i,
            }),
            tls,
            heartbeat: l.heartbeat(&gw.heartbeat).clone(),
            assets: assets.clone(),
            open: Default::default(),
        };
        client_listeners.push((socket, local, Arc::new(listener)));
    }
    if let Some((cert, _)) = &internal_tls {
        certs.push(("gateway.internal_tls".into(), cert.clone()));
    }
    let entry = GatewayEntry {
        number,
        internal: SocketAddr::new(gw.advertise_ip(), internal_local.port()),
        listeners: client_listeners.iter().map(|(_, a, _)| *a).collect(),
        pid: std::process::id(),
        tls: internal_tls.is_some(),
    };
    tracing::info!(number, internal = %entry.internal, listeners = ?entry.listeners, allocator = %crate::alloc::describe(), "gateway started");
    crate::alloc::warn_if_not_installed(config.gateway.allocator);

    let epoch = tokio::time::Instant::now();
    let shared = Arc::new(Shared {
        state: Mutex::new(
            State::new(number, gw.queue_limit, gw.client_queue_limit)
                .with_max_session(gw.max_session)
                .with_routing(gw.routing)
                .with_held_up_after(gw.held_up_after),
        ),
        counters: Counters::default(),
        config: gw.clone(),
        secret: config.secret.clone(),
        number,
        handshaking: Default::default(),
        unauthenticated: Default::default(),
        clients: TaskTracker::new(),
        per_source: Arc::new(limits::PerSource::new(&gw)),
        cuts: limits::CutLog::default(),
        internal_log: limits::LogBudget::new(INTERNAL_LOG_PER_SECOND),
        epoch,
        pacer: (!gw.min_write_interval.is_zero())
            .then(|| Arc::new(pacer::Pacer::new(gw.min_write_interval, epoch))),
    });
    let tasks = TaskTracker::new();
    let stop = shutdown.child_token();
    if let Some(pacer) = shared.pacer.clone() {
        let stop = stop.clone();
        tasks.spawn(async move { pacer.run(stop).await });
    }

    tasks.spawn(accept_internal(
        shared.clone(),
        internal,
        internal_tls.map(|(_, acc)| acc),
        stop.clone(),
    ));
    for (socket, _, listener) in client_listeners {
        tasks.spawn(heartbeat(shared.clone(), listener.clone(), stop.clone()));
        tasks.spawn(accept_clients(
            shared.clone(),
            socket,
            listener,
            stop.clone(),
        ));
    }
    tasks.spawn(reload_certificates_on_sighup(hup, certs, stop.clone()));
    tasks.spawn(expire_held(shared.clone(), stop.clone()));
    tasks.spawn(limits_tick(shared.clone(), stop.clone()));
    tasks.spawn(publish(
        store.clone(),
        config.name.clone(),
        entry.clone(),
        gw.publish_interval,
        stop.clone(),
    ));
    tasks.spawn(write_stats(
        shared.clone(),
        config.run_dir(),
        entry.clone(),
        stop.clone(),
    ));
    tasks.close();

    shutdown.cancelled().await;
    tracing::info!(number, "gateway stopping");
    stop.cancel();
    if let Err(e) = discovery::unpublish(store.as_ref(), &config.name, number).await {
        tracing::warn!(error = %e, "could not remove this gateway from the store; its entry will expire");
    }
    // Every client is written what was queued for it, then closed (a WebSocket client
    // with 1001, going away), within the flush deadline; then whatever is left goes.
    let clients = shared.lock().all_outbounds();
    let closing = clients.len();
    for out in clients {
        out.close_going_away();
    }
    shared.clients.close();
    let flushed = tokio::time::timeout(
        gw.flush_timeout + Duration::from_millis(500),
        shared.clients.wait(),
    )
    .await
    .is_ok();
    tracing::info!(clients = closing, flushed, "clients closed");
    let _ = tokio::time::timeout(Duration::from_secs(2), tasks.wait()).await;
    stats::remove(&config.run_dir(), "gateway", std::process::id());
    Ok(())
}

/// Retries a store operation with backoff until it works or `shutdown`.
async fn retry_store<T, F, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    mut op: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, switchboard_store::StoreError>>,
{
    let mut delay = Duration::from_millis(100);
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "store: cannot {what}");
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(e.into()),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// SIGHUP: every certificate is read again; new connections get the new one, existing
/// ones keep theirs. A file that cannot be used leaves the old certificate in place.
async fn reload_certificates_on_sighup(
    mut hup: tokio::signal::unix::Signal,
    certs: Vec<(String, Arc<ReloadableCert>)>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            got = hup.recv() => if got.is_none() { return },
        }
        for (what, cert) in &certs {
            match cert.reload() {
                Ok(()) => {
                    tracing::info!(%what, cert = %cert.files().cert.display(), "certificate reloaded")
                }
                Err(e) => {
                    tracing::error!(%what, error = %e, "certificate not reloaded; keeping the current one")
                }
            }
        }
    }
}

async fn accept_internal(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: CancellationToken,
) {
    let mut last_refusal_log = Instant::now() - Duration::from_secs(60);
    accept_loop(listener, stop, "internal", move |socket, peer| {
        let (shared, tls) = (shared.clone(), tls.clone());
        let place = Unauthenticated::take(&shared);
        if place.is_none() {
            let max = shared.config.max_unauthenticated;
            metrics::internal_refused(metrics::InternalRefusal::Limit);
            if last_refusal_log.elapsed() > Duration::from_secs(5) {
                tracing::warn!(%peer, max_unauthenticated = max, "refused internal connection: too many unauthenticated connections");
                last_refusal_log = Instant::now();
            }
            if tls.is_none() {
                link::refuse_at_once(
                    &socket,
                    &format!("too many unauthenticated connections (gateway.max_unauthenticated = {max}); try again"),
                );
            }
            return;
        }
        tokio::spawn(async move {
            crate::transport::nodelay(&socket);
            let Some(place) = place else {
                return;
            };
            let stream: crate::transport::LinkStream = match tls {
                None => Box::new(socket),
                Some(acc) => match tokio::time::timeout(Duration::from_secs(5), acc.accept(socket)).await {
                    Ok(Ok(s)) => Box::new(s),
                    Ok(Err(e)) => {
                        metrics::internal_refused(metrics::InternalRefusal::Tls);
                        if shared.internal_log.allow() {
                            tracing::warn!(%peer, error = %e, "refused internal connection: TLS handshake failed");
                        }
                        return;
                    }
                    Err(_) => {
                        metrics::internal_refused(metrics::InternalRefusal::Timeout);
                        if shared.internal_log.allow() {
                            tracing::warn!(%peer, "refused internal connection: no TLS handshake within 5 s");
                        }
                        return;
                    }
                },
            };
            link::serve(shared, stream, peer, place).await
        });
    })
    .await
}

async fn accept_clients(
    shared: Arc<Shared>,
    socket: TcpListener,
    listener: Arc<Listener>,
    stop: CancellationToken,
) {
    let max = shared.config.max_clients;
    let mut last_refusal_log = Instant::now() - Duration::from_secs(60);
    let mut rate = limits::ConnectRate::new(listener.config.max_connect_rate);
    accept_loop(socket, stop, "client", move |socket, peer| {
        let busy = shared.lock().connected() + shared.handshaking.load(Ordering::Relaxed);
        if busy >= max {
            metrics::client_refused_by_limit(&listener.meta.name, "max_clients");
            if last_refusal_log.elapsed() > Duration::from_secs(5) {
                tracing::warn!(%peer, max_clients = max, "refusing client: gateway is full");
                last_refusal_log = Instant::now();
            }
            drop(socket);
            return;
        }
        // The listener's own cap, the source address's limits, then the listener's
        // connect rate (after the address's, so that one address's flood does not
        // spend it): each connection holds its places until it ends. A refused
        // connection is closed before any byte is read, so no event reaches a worker.
        // A trusted reverse proxy carries many users' connections: the per-address
        // limits would cut them all, so they do not apply to it.
        let now = Instant::now();
        let ip = peer.ip().to_canonical();
        let proxy = listener
            .config
            .trusted_proxies
            .iter()
            .any(|n| n.contains(&ip));
        let admitted = ListenerPlace::take(&listener)
            .ok_or(limits::Cut::ListenerFull)
            .and_then(|l| {
                let source = if proxy {
                    None
                } else {
                    shared.per_source.admit(ip, now)?
                };
                Ok((l, source))
            })
            .and_then(|places| rate.admit(now).map(|()| places));
        let places = match admitted {
            Ok(places) => places,
            Err(cut) => {
                if let Some(limit) = cut.limit() {
                    metrics::client_refused_by_limit(&listener.meta.name, limit);
                }
                shared.cuts.note(peer.ip(), cut);
                drop(socket);
                return;
            }
        };
        let place = Handshaking::new(&shared);
        let serve = client::serve(place, places, socket, peer, listener.clone());
        shared.clients.spawn(serve);
    })
    .await
}

/// Accepts until `stop`; on errors (such as running out of file descriptors) backs off
/// instead of spinning.
async fn accept_loop(
    listener: TcpListener,
    stop: CancellationToken,
    what: &str,
    mut on_accept: impl FnMut(TcpStream, SocketAddr),
) {
    let mut backoff = Duration::from_millis(10);
    // One wait for `stop` for the loop's life: a fresh one per accepted connection
    // would enter the token's list of waiters and leave it again every time.
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            res = listener.accept() => match res {
                Ok((socket, peer)) => {
                    backoff = Duration::from_millis(10);
                    on_accept(socket, peer);
                }
                Err(e) => {
                    // Out of file descriptors, say: try again later, but stop at once.
                    tracing::warn!(error = %e, retry_in = ?backoff, "{what} accept failed");
                    tokio::select! {
                        _ = &mut stopped => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

/// One listener's heartbeat: a ping to each client every interval, if configured, and
/// the clients silent for `idle_intervals` closed.
async fn heartbeat(shared: Arc<Shared>, listener: Arc<Listener>, stop: CancellationToken) {
    let hb = listener.heartbeat.clone();
    let index = listener.meta.index;
    let protocol = listener.meta.protocol;
    let ping = hb.ping.as_ref().map(|p| {
        if protocol == ClientProtocol::WebSocket && p == "frame" {
            websocket::encode_ping()
        } else {
            protocol.encode_to_bytes(&crate::Message::from(p.clone()))
        }
    });
    let mut tick = tokio::time::interval(hb.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let outs = shared.lock().outbounds(index);
        for (client, out) in outs {
            // Idle clients give back the queue buffer kept while they were busy (a
            // ping then waits inline, in no buffer).
            out.trim();
            if let Some(ping) = &ping {
                state::push_or_cut(&out, ping.clone(), client, &shared.counters);
            }
        }
        if hb.idle_intervals > 0 {
            let Some(cutoff) = Instant::now().checked_sub(hb.interval * hb.idle_intervals) else {
                continue;
            };
            let idle = shared.lock().idle_since(index, cutoff);
            for (client, addr, out) in idle {
                // A client already closing is not closed (nor logged) again; its close
                // ends within the flush deadline.
                if out.close_for(metrics::CloseReason::Heartbeat) {
                    tracing::info!(%client, %addr, listener = %listener.meta.name, intervals = hb.idle_intervals, "heartbeat: no data from client; closing");
                }
            }
        }
    }
}

/// Once a second: tells what the limits and handshake deadlines cut (one line per
/// source and reason), sums up the refused internal connections that were not logged
/// one by one, and forgets the source addresses with nothing open.
async fn limits_tick(shared: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        shared.cuts.flush();
        let unlogged = shared.internal_log.next_second();
        if unlogged > 0 {
            tracing::warn!(
                count = unlogged,
                "refused {unlogged} more internal connection(s) in the last second (not logged one by one)"
            );
        }
        shared.per_source.sweep(std::time::Instant::now());
    }
}

async fn expire_held(shared: Arc<Shared>, stop: CancellationToken) {
    let timeout = shared.config.hold_timeout;
    let mut tick = tokio::time::interval(
        Duration::from_millis(500).min(timeout.max(Duration::from_millis(10))),
    );
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (log, held) = {
            let mut state = shared.lock();
            let log = state.expire_held(timeout, &shared.counters);
            (log, state.held_events())
        };
        metrics::events_held(held as u64);
        for line in log {
            tracing::warn!("{line}");
        }
    }
}

async fn publish(
    store: switchboard_store::SharedStore,
    ns: String,
    entry: GatewayEntry,
    every: Duration,
    stop: CancellationToken,
) {
    let ttl = (every * 5).max(Duration::from_secs(5));
    let mut failing = false;
    loop {
        match discovery::publish(store.as_ref(), &ns, &entry, ttl).await {
            Ok(()) if failing => {
                tracing::info!("store reachable again; gateway entry republished");
                failing = false;
            }
            Ok(()) => {}
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot publish this gateway in the store; clients stay connected, retrying");
                }
                failing = true;
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

async fn write_stats(
    shared: Arc<Shared>,
    run_dir: std::path::PathBuf,
    entry: GatewayEntry,
    stop: CancellationToken,
) {
    stats::publish_loop(run_dir, "gateway", stop, move || {
        let (clients, workers, in_flight) = {
            let s = shared.lock();
            (
                s.connected() as u64,
                s.worker_links() as u64,
                s.in_flight_by_worker(),
            )
        };
        let c = &shared.counters;
        let mut detail = serde_json::Map::new();
        detail.insert("number".into(), entry.number.into());
        detail.insert("internal".into(), entry.internal.to_string().into());
        let listeners: Vec<String> = entry.listeners.iter().map(|a| a.to_string()).collect();
        detail.insert("listeners".into(), listeners.into());
        detail.insert("workers".into(), workers.into());
        // Events at each worker not yet acknowledged: one that stays up while the
        // worker handles nothing is a worker held up (`switchboard_worker_events_in_flight`).
        let in_flight: serde_json::Map<String, serde_json::Value> = in_flight
            .into_iter()
            .map(|(name, n)| (name, n.into()))
            .collect();
        detail.insert("in_flight".into(), in_flight.into());
        // Source addresses the per-address limits track now (bounded: see limits.rs).
        detail.insert("sources".into(), shared.per_source.tracked().into());
        detail.insert(
            "redispatched".into(),
            c.redispatched.load(Ordering::Relaxed).into(),
        );
        detail.insert("rejected".into(), c.rejected.load(Ordering::Relaxed).into());
        detail.insert(
            "slow_consumers".into(),
            c.slow_consumers.load(Ordering::Relaxed).into(),
        );
        stats::Sample {
            clients,
            events: c.events.load(Ordering::Relaxed),
            detail,
        }
    })
    .await
}
