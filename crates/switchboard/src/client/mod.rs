//! The client library: the Gateway API for any program — a worker's handlers, a web
//! back end, a cron job, the `push` command — what GatewayWorker users know as
//! `GatewayClient`.
//!
//! (Not to be confused with [`crate::gateway`], the *server* process that holds client
//! connections. A [`Gateway`] handle is a client of every such process.)
//!
//! # Connecting from a program that is not a worker
//!
//! A worker gets its handle from the runtime ([`Context::gateway`](crate::Context::gateway)).
//! Any other program makes one, with the deployment's configuration file…
//!
//! ```no_run
//! use switchboard::{Config, Gateway};
//!
//! #[tokio::main]
//! async fn main() -> anyhow::Result<()> {
//!     let config = Config::load("/etc/chat/chat.toml".as_ref())?;
//!     let gateway = Gateway::connect(&config).await?;
//!     let reached = gateway.send_to_uid(&["alice"], "your order has shipped").await?;
//!     println!("told alice on {reached} device(s)");
//!     gateway.close().await;
//!     Ok(())
//! }
//! ```
//!
//! …or with only the deployment's name, secret and store, through a [`Builder`]:
//!
//! ```no_run
//! use switchboard::store::StoreConfig;
//! use switchboard::Gateway;
//!
//! # async fn demo() -> Result<(), switchboard::Error> {
//! let gateway = Gateway::builder()
//!     .name("chat")
//!     .secret("the deployment's secret")
//!     .store(StoreConfig::Redis { url: "redis://10.0.0.5:6379".into() })
//!     .connect()
//!     .await?;
//! if !gateway.is_uid_online("alice").await? {
//!     println!("alice is offline");
//! }
//! # Ok(()) }
//! ```
//!
//! Either way the program needs a Tokio runtime. Keep one handle for the life of the
//! program and clone it freely: every clone shares the same connections.
//!
//! # What the handle does for you
//!
//! - **Discovery.** It reads the deployment's gateway list from the store (every
//!   `worker.discovery_interval`) and keeps **one authenticated connection per
//!   gateway**, reused by every call and every clone. A gateway that appears is
//!   connected within one interval; one that leaves the store (stopped, or its entry
//!   expired) is dropped; a broken connection is re-opened with backoff.
//!   [`connect`](Gateway::connect) returns once the gateways published at that moment
//!   are connected.
//! - **Routing.** A call about one client goes to the gateway named in its client id,
//!   with no lookup; fan-out sends and queries go to every gateway and gather the
//!   answers. A query over all gateways (counts, lists, sessions) does not leave out
//!   one that is published but whose connection is down for the moment: it waits for
//!   it to reconnect, at most `worker.query_timeout`, then fails with
//!   [`ApiError::Disconnected`] naming it.
//! - **Timeouts.** Every call is bounded by `worker.query_timeout` (3 s): waiting for
//!   room on a gateway's link ([`ApiError::SendTimeout`]) and waiting for its answer
//!   ([`ApiError::Timeout`]) each take at most that long, and both errors name the
//!   gateway. A stalled gateway delays a fan-out by one timeout, however many gateways
//!   there are; the others get the command.
//! - **No gateway.** When no gateway at all is connected — none is published under
//!   this `name` in this store, the secret is wrong, or none answers — every call
//!   fails with [`ApiError::NoGateway`] instead of reaching nobody in silence. Workers
//!   get the same error: a worker with no gateway link has nobody to reach either
//!   (its handlers only run for events that came over a link, so in a worker this
//!   happens only in background tasks, `on_worker_start`, or a handler still running
//!   when its gateways went away).
//! - **One client's gateway gone.** When other gateways are connected but not the one
//!   a client id names, the client is offline as far as this program can tell:
//!   [`send_to_client`](Gateway::send_to_client) and [`is_online`](Gateway::is_online)
//!   answer `false`, [`get_session`](Gateway::get_session) `None`, and commands about it
//!   ([`bind_uid`](Gateway::bind_uid), ...) fail with [`ApiError::GatewayUnavailable`].
//!
//! Commands are fire-and-forget (`Ok` once queued on the link); targeted sends and the
//! `_counted` fan-out sends wait for the gateways' count of clients reached. Pushing
//! needs no worker: gateways execute the commands themselves, so pushes arrive while
//! workers are reloaded, restarted or all down.
//!
//! The admin listener's HTTP push API (`docs/push-api.md`) and the `push`, `online`
//! and `kick` commands are built on this library.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, SinkExt, StreamExt};
use serde_json::{Map, Value};
use switchboard_store::SharedStore;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::discovery::{self, GatewayEntry};
use crate::protocol::internal::{
    self, ClientInfo, Command, Event, Frame, InternalCodec, Query, Reply, Role, PROTOCOL_VERSION,
};
use crate::transport::LinkStream;
use crate::{auth, ClientId, Message, PerProtocol, Session};

mod builder;
mod tell;
pub use builder::Builder;
pub use tell::Tell;

/// Frames a link may have waiting to be written before senders wait (back-pressure).
const LINK_QUEUE: usize = 65_536;

/// The most frames a link's reader handles before it looks at its timer and `stop`
/// again (the gateway's link reader takes as many).
const BATCH_FRAMES: usize = 64;

/// What can go wrong in a Gateway API call.
///
/// Every variant that concerns one gateway names it (its number, and its internal
/// address where known), so a log line or an HTTP error says which process to look at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// No gateway is connected at all: none is published in the store under this
    /// deployment's name, none could be reached, or discovery has not found them yet.
    /// Every call gives it then, whatever it is about (a fan-out send, a query, a
    /// command about one client), so a wrong `name`, `secret` or `[store]` is an error
    /// instead of a push that silently reached nobody.
    #[error("no gateway of deployment {deployment:?} is connected (none is published in the store, or none could be reached)")]
    NoGateway {
        /// The deployment name (`name` of the configuration).
        deployment: String,
    },
    /// No connection to the gateway that holds this client (it is gone, or not yet
    /// discovered).
    #[error("gateway {gateway} (of client {client}) is not connected")]
    GatewayUnavailable {
        /// Gateway number.
        gateway: u32,
        /// The client asked about.
        client: ClientId,
    },
    /// A gateway did not answer a query in time.
    #[error("gateway {gateway} at {addr} did not answer within {timeout:?}")]
    Timeout {
        /// Gateway number.
        gateway: u32,
        /// Its internal address.
        addr: SocketAddr,
        /// The configured query timeout.
        timeout: Duration,
    },
    /// The link to a gateway had no room for the command for this long (the link's
    /// queue stayed full: the gateway reads too slowly or not at all). The command
    /// was not sent to that gateway.
    #[error("gateway {gateway} at {addr} did not take the command within {timeout:?} (its link is full)")]
    SendTimeout {
        /// Gateway number.
        gateway: u32,
        /// Its internal address.
        addr: SocketAddr,
        /// The configured timeout (`worker.query_timeout`).
        timeout: Duration,
    },
    /// The connection to a gateway was lost while waiting — or, for a query gathered
    /// from every gateway, a gateway discovery follows had no connection and did not
    /// get one back within `worker.query_timeout`.
    #[error("connection to gateway {gateway} at {addr} was lost")]
    Disconnected {
        /// Gateway number.
        gateway: u32,
        /// Its internal address.
        addr: SocketAddr,
    },
    /// A gateway answered something this version does not expect.
    #[error("gateway {gateway} answered {detail}")]
    BadReply {
        /// Gateway number.
        gateway: u32,
        /// What came back.
        detail: String,
    },
    /// A session value that is not a JSON object.
    #[error("invalid session: {0}")]
    Session(String),
    /// A session larger than the gateways keep (`gateway.max_session`); nothing was
    /// changed.
    #[error("session of {size} bytes exceeds gateway.max_session of {max} bytes")]
    SessionTooLarge {
        /// Encoded size (JSON).
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A command larger than the gateways accept (`gateway.max_internal_frame`).
    #[error("command of {size} bytes exceeds the internal frame limit of {max} bytes")]
    TooLarge {
        /// Encoded size.
        size: usize,
        /// The limit.
        max: usize,
    },
}

/// Messages to a link's writer.
enum LinkOut {
    Frame(Bytes),
    /// Flush everything before, then answer.
    Flush(oneshot::Sender<()>),
}

/// A live, authenticated connection to one gateway.
#[derive(Clone)]
struct LinkHandle {
    number: u32,
    addr: SocketAddr,
    /// Largest frame the gateway accepts; a bigger one would make it drop the link.
    max_frame: usize,
    /// How long a command may wait for room on the link before it fails.
    send_timeout: Duration,
    tx: mpsc::Sender<LinkOut>,
    pending: Pending,
    drained: Arc<Notify>,
}

/// Queries waiting for their answers, by request id.
type Pending = Arc<Mutex<PendingMap>>;

/// The queries of one link waiting for their answers.
#[derive(Default)]
struct PendingMap {
    waiting: HashMap<u64, Waiting>,
    /// The link has ended: its queries have been answered with an error, and a query
    /// added now would never be answered.
    closed: bool,
}

/// One query waiting for its answer.
struct Waiting {
    /// The pages received so far of an answer that comes in several
    /// ([`Frame::ReplyPart`]).
    pages: Option<Reply>,
    /// Where the whole answer goes.
    answer: Answer,
}

/// Where a query's answer goes.
enum Answer {
    /// To the task that asked, which waits for it (and times it out).
    Task(oneshot::Sender<Reply>),
    /// To a callback, called by the link's reader; nobody waits. The reader calls it
    /// with an error when the answer has not come by `deadline` or the link ends.
    Then {
        done: Box<dyn FnOnce(Result<Reply, ApiError>) + Send>,
        deadline: tokio::time::Instant,
    },
}

impl PendingMap {
    /// Takes the callbacks whose answer is overdue at `now`.
    fn overdue(&mut self, now: tokio::time::Instant) -> Vec<Waiting> {
        let ids: Vec<u64> = self
            .waiting
            .iter()
            .filter(|(_, w)| matches!(w.answer, Answer::Then { deadline, .. } if deadline <= now))
            .map(|(id, _)| *id)
            .collect();
        ids.iter()
            .filter_map(|id| self.waiting.remove(id))
            .collect()
    }

    /// Ends the link: takes every query, and refuses those added later.
    fn close(&mut self) -> Vec<Waiting> {
        self.closed = true;
        self.waiting.drain().map(|(_, w)| w).collect()
    }
}

impl Waiting {
    /// Gives the query of `link` its outcome: the gateway's answer, or why there is
    /// none.
    fn finish(self, outcome: Result<Reply, ApiError>, link: &LinkHandle) {
        match self.answer {
            // The task reads the answer itself ([`Gateway::ask`]); given an error, it
            // sees its channel closed. One that stopped waiting hears nothing.
            Answer::Task(tx) => {
                if let Ok(reply) = outcome {
                    let _ = tx.send(reply);
                }
            }
            Answer::Then { done, .. } => done(outcome.and_then(|r| link.answer(r))),
        }
    }
}

/// Forgets a query when its caller stops waiting, whatever the reason: the answer,
/// an error, a timeout, or the caller dropping the future (a `select!`, its own
/// timeout). A gateway that never answers leaves nothing behind.
struct Forget<'a> {
    pending: &'a Pending,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        lock(self.pending).waiting.remove(&self.id);
    }
}

impl LinkHandle {
    async fn send(&self, frame: &Frame) -> Result<(), ApiError> {
        let bytes = encode_checked(frame, self.max_frame)?;
        self.send_encoded(bytes).await
    }

    /// Queues an encoded frame; waits at most `send_timeout` for room on the link.
    async fn send_encoded(&self, bytes: Bytes) -> Result<(), ApiError> {
        match self.tx.try_send(LinkOut::Frame(bytes)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(self.disconnected()),
            Err(mpsc::error::TrySendError::Full(out)) => self.send_slow(out).await,
        }
    }

    /// The queue was full: wait for room, but not for ever.
    async fn send_slow(&self, out: LinkOut) -> Result<(), ApiError> {
        match tokio::time::timeout(self.send_timeout, self.tx.send(out)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(self.disconnected()),
            Err(_) => Err(ApiError::SendTimeout {
                gateway: self.number,
                addr: self.addr,
                timeout: self.send_timeout,
            }),
        }
    }

    fn disconnected(&self) -> ApiError {
        ApiError::Disconnected {
            gateway: self.number,
            addr: self.addr,
        }
    }

    /// A query's answer, or the error the gateway answered with.
    fn answer(&self, reply: Reply) -> Result<Reply, ApiError> {
        match reply {
            Reply::Error(e) => Err(ApiError::BadReply {
                gateway: self.number,
                detail: format!("an error: {e}"),
            }),
            reply => Ok(reply),
        }
    }

    fn timed_out(&self, timeout: Duration) -> ApiError {
        ApiError::Timeout {
            gateway: self.number,
            addr: self.addr,
            timeout,
        }
    }
}

/// Encodes a frame, refusing one larger than the gateways accept.
fn encode_checked(frame: &Frame, max_frame: usize) -> Result<Bytes, ApiError> {
    let bytes = internal::encode_to_bytes(frame);
    let size = bytes.len().saturating_sub(4);
    if size > max_frame {
        return Err(ApiError::TooLarge {
            size,
            max: max_frame,
        });
    }
    Ok(bytes)
}

/// Receives the events a worker's links deliver.
pub(crate) type EventSink = Arc<dyn Fn(Event, Acker) + Send + Sync>;

/// Acknowledges one event on the link it came from.
pub(crate) struct Acker {
    tx: mpsc::Sender<LinkOut>,
    gateway: u32,
}

impl Acker {
    pub(crate) async fn ack(self, seq: u64, client: ClientId) {
        self.send(Frame::Ack { seq, client }, seq).await
    }

    /// Acknowledges a WebSocket upgrade event with the application's verdict.
    pub(crate) async fn verdict(self, seq: u64, client: ClientId, status: u16, reason: String) {
        self.send(
            Frame::Verdict {
                seq,
                client,
                status,
                reason,
            },
            seq,
        )
        .await
    }

    async fn send(self, frame: Frame, seq: u64) {
        let frame = internal::encode_to_bytes(&frame);
        // If the link is gone the gateway has already re-dispatched the event.
        if self.tx.send(LinkOut::Frame(frame)).await.is_err() {
            tracing::debug!(
                gateway = self.gateway,
                seq,
                "link gone before the ack; the gateway re-dispatches"
            );
        }
    }
}

/// Settings of a [`Gateway`] handle.
#[derive(Clone)]
pub struct GatewayOptions {
    /// Deployment name (store key prefix).
    pub namespace: String,
    /// Shared secret.
    pub secret: String,
    /// Name shown in gateway logs.
    pub name: String,
    /// Query timeout.
    pub query_timeout: Duration,
    /// How often the gateway list is re-read.
    pub discovery_interval: Duration,
    /// Largest internal frame accepted (and sent).
    pub max_frame: usize,
    /// Largest session the gateways keep (`gateway.max_session`); larger ones are
    /// refused before they are sent.
    pub max_session: usize,
    /// A link silent for this long is reconnected.
    pub link_timeout: Duration,
    /// Where `statistic(..)` guards report ([`crate::statistic`]); a disabled
    /// collector makes them do nothing.
    pub statistics: Arc<crate::statistic::Collector>,
    /// TLS for the links to gateways whose internal listener speaks it.
    pub tls: Option<crate::transport::tls::LinkTls>,
}

struct Inner {
    links: RwLock<HashMap<u32, LinkHandle>>,
    next_id: AtomicU64,
    options: GatewayOptions,
    /// The deployment's store, as discovery uses it.
    discovery_store: SharedStore,
    /// The same store seen under `app/{namespace}/`: the application's own keys can
    /// never collide with (or overwrite) discovery keys.
    app_store: SharedStore,
    db: switchboard_db::Db,
    role: Role,
    /// Set once, before discovery starts, so no event can arrive without a sink.
    sink: std::sync::OnceLock<EventSink>,
    stop: CancellationToken,
    /// Woken whenever the set of links changes.
    changed: Notify,
    /// The gateways discovery follows (listed in the store, or linked) and their
    /// internal addresses: a query gathering from all gateways waits for the link of
    /// one of them that is reconnecting, rather than answering without it.
    known: Mutex<HashMap<u32, SocketAddr>>,
    /// The statistics flusher of an API client, awaited by `close` so that its last
    /// reports reach the spool before the program exits.
    flusher: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Handle to every gateway of a deployment: the Gateway API (see the [module
/// documentation](self) for connecting, timeouts and errors).
///
/// Cheap to clone; every clone shares the same connections.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use switchboard::{Config, Gateway};
/// // From a web back end: discover the gateways through the deployment's store and push.
/// let config = Config::load("chat.toml".as_ref())?;
/// let gateway = Gateway::connect(&config).await?;
/// gateway.send_to_uid(&["alice"], "you have mail").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

impl Gateway {
    /// Connects as an API client (no events) to the gateways of `config`'s deployment.
    ///
    /// Returns once the gateways published in the store at this moment are connected
    /// (or after `worker.query_timeout`, for those that do not answer); gateways that
    /// appear later are connected by discovery in the background. With no gateway in
    /// the store it returns at once, and calls fail with [`ApiError::NoGateway`] until
    /// one appears.
    ///
    /// Its `statistic(..)` reports go to the spool of `config`'s data directory, where
    /// the supervisor of this machine picks them up; [`close`](Self::close) flushes the
    /// last ones. To connect without a configuration file, see
    /// [`Gateway::builder`].
    pub async fn connect(config: &crate::Config) -> Result<Self, crate::Error> {
        crate::metrics::set_enabled(config.metrics.enabled);
        Self::connect_as(config, format!("api-{}", std::process::id()), true).await
    }

    /// [`connect`](Self::connect) with the name gateways log for this peer, and
    /// statistics on or off.
    pub(crate) async fn connect_as(
        config: &crate::Config,
        name: String,
        statistics: bool,
    ) -> Result<Self, crate::Error> {
        let store = crate::open_store(config).await?;
        let db = crate::open_db(config)?;
        let stop = CancellationToken::new();
        let (statistics, flusher) = if statistics {
            crate::statistic::start(config, stop.clone())
        } else {
            (Arc::new(crate::statistic::Collector::disabled()), None)
        };
        let gateway = Self::start(
            GatewayOptions {
                namespace: config.name.clone(),
                secret: config.secret.clone(),
                name,
                query_timeout: config.worker.query_timeout,
                discovery_interval: config.worker.discovery_interval,
                max_frame: config.gateway.max_internal_frame,
                max_session: config.gateway.max_session,
                link_timeout: config.worker.link_timeout,
                statistics,
                tls: link_tls(config)?,
            },
            store,
            db,
            Role::Api,
            |_| None,
        );
        // The flusher stops (flushing once more) when the gateway handle closes.
        let inner_stop = gateway.inner.stop.clone();
        tokio::spawn(async move {
            inner_stop.cancelled().await;
            stop.cancel();
        });
        *lock(&gateway.inner.flusher) = flusher;
        gateway.wait_for_published().await;
        Ok(gateway)
    }

    /// Waits (at most the query timeout) until the gateways published in the store
    /// right now are connected.
    async fn wait_for_published(&self) {
        let inner = &self.inner;
        let published =
            match discovery::list(inner.discovery_store.as_ref(), &inner.options.namespace).await {
                Ok(list) => list.len(),
                Err(_) => 0,
            };
        if published > 0 {
            self.wait_for_gateways(published, inner.options.query_timeout)
                .await;
        }
    }

    pub(crate) fn start(
        options: GatewayOptions,
        store: SharedStore,
        db: switchboard_db::Db,
        role: Role,
        make_sink: impl FnOnce(&Gateway) -> Option<EventSink>,
    ) -> Self {
        let app_store: SharedStore = match switchboard_store::Namespaced::new(
            store.clone(),
            format!("app/{}/", options.namespace),
        ) {
            Ok(ns) => Arc::new(ns),
            // The deployment name is validated to be key-safe; this cannot happen.
            Err(_) => store.clone(),
        };
        let gateway = Gateway {
            inner: Arc::new(Inner {
                app_store,
                links: RwLock::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                options,
                discovery_store: store,
                db,
                role,
                sink: std::sync::OnceLock::new(),
                stop: CancellationToken::new(),
                changed: Notify::new(),
                known: Mutex::new(HashMap::new()),
                flusher: Mutex::new(None),
            }),
        };
        if let Some(sink) = make_sink(&gateway) {
            let _ = gateway.inner.sink.set(sink);
        }
        tokio::spawn(discover(gateway.clone()));
        gateway
    }

    /// The application's view of the deployment's store: keys live under
    /// `app/{name}/`, apart from Switchboard's own (`sb/{name}/`).
    pub fn store(&self) -> &SharedStore {
        &self.inner.app_store
    }

    /// The store as discovery uses it (no prefix).
    pub(crate) fn raw_store(&self) -> &SharedStore {
        &self.inner.discovery_store
    }

    /// The deployment's named database instances (`[db.instances.NAME]`).
    pub fn db(&self) -> &switchboard_db::Db {
        &self.inner.db
    }

    /// Numbers of the gateways currently connected.
    pub fn gateways(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.read_links().keys().copied().collect();
        v.sort();
        v
    }

    /// Waits until at least `n` gateways are connected, or `timeout`; returns whether
    /// they are.
    pub async fn wait_for_gateways(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.inner.changed.notified();
            if self.read_links().len() >= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.read_links().len() >= n;
            }
        }
    }

    /// Stops discovery and closes every link after flushing what was sent (and, for
    /// an API client, the last statistics).
    pub async fn close(&self) {
        self.flush().await;
        self.inner.stop.cancel();
        let flusher = lock(&self.inner.flusher).take();
        if let Some(f) = flusher {
            let _ = f.await;
        }
    }

    /// A guard measuring one call of business code, reported to this machine's
    /// statistics (the brief's `StatisticClient`): call
    /// [`success`](crate::Statistic::success) or [`fail`](crate::Statistic::fail) on
    /// it; dropped without either it reports a failure with code
    /// [`UNREPORTED`](crate::statistic::UNREPORTED).
    ///
    /// ```no_run
    /// # async fn demo(gateway: &switchboard::Gateway) {
    /// let call = gateway.statistic("billing", "charge");
    /// // ... the call ...
    /// call.success();
    /// # }
    /// ```
    pub fn statistic(
        &self,
        module: impl Into<std::borrow::Cow<'static, str>>,
        interface: impl Into<std::borrow::Cow<'static, str>>,
    ) -> crate::Statistic {
        self.inner.options.statistics.start(module, interface)
    }

    fn read_links(&self) -> std::sync::RwLockReadGuard<'_, HashMap<u32, LinkHandle>> {
        self.inner.links.read().unwrap_or_else(|p| p.into_inner())
    }

    fn all_links(&self) -> Vec<LinkHandle> {
        self.read_links().values().cloned().collect()
    }

    /// Every link, or [`ApiError::NoGateway`] when there is none.
    fn some_links(&self) -> Result<Vec<LinkHandle>, ApiError> {
        let links = self.all_links();
        if links.is_empty() {
            return Err(self.no_gateway());
        }
        Ok(links)
    }

    /// Every gateway's link, for a query that gathers from all of them. A gateway that
    /// discovery follows but whose link is down for the moment (reconnecting) is waited
    /// for, at most `query_timeout`, then named in the error: an answer that left it
    /// out in silence would be wrong (a count, a list of clients).
    async fn gathering_links(&self) -> Result<Vec<LinkHandle>, ApiError> {
        let deadline = tokio::time::Instant::now() + self.inner.options.query_timeout;
        loop {
            let changed = self.inner.changed.notified();
            let missing = {
                let links = self.read_links();
                if links.is_empty() {
                    // None at all: the deployment is unreachable, as for every call.
                    return Err(self.no_gateway());
                }
                let known = lock(&self.inner.known);
                match known.iter().find(|(n, _)| !links.contains_key(n)) {
                    Some((gateway, addr)) => (*gateway, *addr),
                    None => return Ok(links.values().cloned().collect()),
                }
            };
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                let (gateway, addr) = missing;
                return Err(ApiError::Disconnected { gateway, addr });
            }
        }
    }

    fn no_gateway(&self) -> ApiError {
        ApiError::NoGateway {
            deployment: self.inner.options.namespace.clone(),
        }
    }

    /// The link to a client's gateway: `None` when that gateway is not connected (the
    /// client is offline as far as this process can tell), [`ApiError::NoGateway`]
    /// when no gateway at all is.
    fn link_for(&self, client: ClientId) -> Result<Option<LinkHandle>, ApiError> {
        let links = self.read_links();
        if links.is_empty() {
            return Err(self.no_gateway());
        }
        Ok(links.get(&client.gateway).cloned())
    }

    fn link_of(&self, client: ClientId) -> Result<LinkHandle, ApiError> {
        self.link_for(client)?.ok_or(ApiError::GatewayUnavailable {
            gateway: client.gateway,
            client,
        })
    }

    async fn to_client(&self, client: ClientId, cmd: Command) -> Result<(), ApiError> {
        crate::metrics::worker::command(command_kind(&cmd));
        self.link_of(client)?.send(&Frame::Command(cmd)).await
    }

    /// Sends a command to every gateway. It is encoded once; links with room take it
    /// at once, and only full ones are waited for (all together, each at most the send
    /// timeout), so one stalled gateway delays a broadcast by one timeout, not by one
    /// per gateway. A gateway lost mid-broadcast is skipped (its clients are gone with
    /// it); one whose link stayed full is an error naming it, after every other
    /// gateway got the command.
    async fn to_all(&self, cmd: Command) -> Result<(), ApiError> {
        crate::metrics::worker::command(command_kind(&cmd));
        let links = self.some_links()?;
        let max = links
            .iter()
            .map(|l| l.max_frame)
            .min()
            .unwrap_or(usize::MAX);
        let bytes = encode_checked(&Frame::Command(cmd), max)?;
        let mut full = Vec::new();
        for link in &links {
            match link.tx.try_send(LinkOut::Frame(bytes.clone())) {
                Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
                Err(mpsc::error::TrySendError::Full(out)) => full.push((link, out)),
            }
        }
        if full.is_empty() {
            return Ok(());
        }
        let results =
            futures::future::join_all(full.into_iter().map(|(l, out)| l.send_slow(out))).await;
        results
            .into_iter()
            .find_map(|r| match r {
                Err(e @ ApiError::SendTimeout { .. }) => Some(Err(e)),
                _ => None,
            })
            .unwrap_or(Ok(()))
    }

    // ---- sending ---------------------------------------------------------------------
    //
    // Targeted sends (`send_to_client`, `send_to_uid`) wait for the gateways to say how
    // many clients they reached: one round trip, which also tells "offline" from
    // "delivered" with no race between the two. Fan-out sends (`send_to_all`,
    // `send_to_group`) are fire-and-forget, so a broadcast never waits for replies;
    // their `_counted` forms wait and count. Every send takes a `PerProtocol` (or
    // anything that is a `Message`): each recipient's gateway picks the rendering for
    // that client's protocol, so sending to clients of several kinds needs no query.

    /// Sends a message to one client; returns whether it reached the client (it was
    /// connected and the message was queued for it). `false` also when the client's
    /// gateway is not connected to this process, as for [`is_online`](Self::is_online);
    /// [`ApiError::NoGateway`] when no gateway is.
    /// A [`PerProtocol`] gives clients of some protocols their own rendering: the
    /// client's gateway picks the one for the client's listener, in the same round trip.
    ///
    /// ```no_run
    /// # use switchboard::{ClientId, Gateway};
    /// # async fn demo(gateway: &Gateway, bob: ClientId) -> Result<(), switchboard::ApiError> {
    /// if !gateway.send_to_client(bob, "psst").await? {
    ///     println!("bob is not online");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn send_to_client(
        &self,
        client: ClientId,
        data: impl Into<PerProtocol>,
    ) -> Result<bool, ApiError> {
        let Some(link) = self.link_for(client)? else {
            return Ok(false);
        };
        let cmd = Command::SendToClient {
            client,
            data: data.into(),
        };
        match self.ask(&link, Query::Counted(cmd)).await? {
            Reply::Count(n) => Ok(n > 0),
            other => Err(bad_reply(link.number, &other)),
        }
    }

    /// Sends a message to one client and tells another — the client it came from — what
    /// became of it, without waiting for an answer: the sender gets
    /// [`Tell::sent`] after the recipient got the message, or [`Tell::offline`] when
    /// the recipient is not online (nothing was sent). A chat's private line, in one
    /// step instead of a [`send_to_client`](Self::send_to_client), a wait for its
    /// answer, and a reply.
    ///
    /// When sender and recipient are clients of the same gateway (always so with one
    /// gateway), that gateway does all of it in one command: this call returns once the
    /// command is queued on the link, and whatever the handler sends the sender after
    /// it arrives after the sender's notice. When they are on different gateways, this
    /// call sends as [`send_to_client`](Self::send_to_client) does, waits for the
    /// recipient's gateway to answer, then tells the sender through its own gateway.
    ///
    /// [`Tell::then`] hears the outcome once (`Ok(true)` delivered, `Ok(false)` not
    /// online), or the error: the one returned here (nothing was sent, or with two
    /// gateways, no answer came), or one that came after this call returned (no answer
    /// within `worker.query_timeout`, the link broke: the message may or may not have
    /// arrived, and the sender may have been told nothing). An error in telling the
    /// sender through its own gateway (two gateways; the sender's is not connected) is
    /// returned here, while `then` hears what became of the message. With two
    /// gateways, dropping this call's future before it returns drops `then` uncalled.
    ///
    /// ```no_run
    /// # use switchboard::{client::Tell, ClientId, Gateway};
    /// # async fn demo(gateway: &Gateway, me: ClientId, bob: ClientId) -> Result<(), switchboard::ApiError> {
    /// let tell = Tell::sender(me)
    ///     .sent("you said to bob: psst")
    ///     .offline("bob is not online; nothing was sent");
    /// gateway.send_to_client_or_tell(bob, "psst", tell).await?;
    /// # Ok(()) }
    /// ```
    pub async fn send_to_client_or_tell(
        &self,
        client: ClientId,
        data: impl Into<PerProtocol>,
        tell: Tell,
    ) -> Result<(), ApiError> {
        let Tell {
            sender,
            sent,
            offline,
            then,
        } = tell;
        let finish = |then: Option<tell::Then>, outcome: Result<bool, ApiError>| {
            if let Some(then) = then {
                then(outcome);
            }
        };
        let link = match self.link_for(client) {
            Ok(link) => link,
            Err(e) => {
                finish(then, Err(e.clone()));
                return Err(e);
            }
        };
        let data = data.into();
        let link = match link {
            Some(link) if sender.gateway == client.gateway => link,
            // Two gateways, or the recipient's is not connected (offline as far as
            // this process can tell): the sender is told by its own.
            other => {
                let outcome = match other {
                    Some(_) => self.send_to_client(client, data).await,
                    None => Ok(false),
                };
                let notice = match &outcome {
                    Ok(true) => sent,
                    Ok(false) => offline,
                    Err(_) => None,
                };
                let told = match notice {
                    Some(notice) => {
                        self.to_client(
                            sender,
                            Command::SendToClient {
                                client: sender,
                                data: notice,
                            },
                        )
                        .await
                    }
                    None => Ok(()),
                };
                finish(then, outcome.clone());
                return outcome.and(told);
            }
        };
        let cmd = Command::SendOrTell {
            client,
            data,
            sender,
            sent,
            offline,
        };
        match then {
            // Nobody wants the outcome: no answer at all.
            None => {
                crate::metrics::worker::command(command_kind(&cmd));
                link.send(&Frame::Command(cmd)).await
            }
            Some(then) => {
                let number = link.number;
                let done = Box::new(move |answer: Result<Reply, ApiError>| {
                    then(answer.and_then(|reply| match reply {
                        Reply::Count(n) => Ok(n > 0),
                        other => Err(bad_reply(number, &other)),
                    }))
                });
                self.ask_then(&link, Query::Counted(cmd), done).await
            }
        }
    }

    /// Sends a message to one client without waiting for an answer (what
    /// [`Context::reply`](crate::Context::reply) does).
    pub(crate) async fn push_to_client(
        &self,
        client: ClientId,
        data: impl Into<Message>,
    ) -> Result<(), ApiError> {
        self.to_client(
            client,
            Command::SendToClient {
                client,
                data: data.into().into(),
            },
        )
        .await
    }

    /// Sends a message to every client, without waiting for an answer.
    pub async fn send_to_all(&self, data: impl Into<PerProtocol>) -> Result<(), ApiError> {
        self.to_all(Command::SendToAll {
            data: data.into(),
            only: None,
            exclude: vec![],
        })
        .await
    }

    /// Like [`send_to_all`](Self::send_to_all), and waits until every gateway says how
    /// many clients it reached; returns the total.
    pub async fn send_to_all_counted(
        &self,
        data: impl Into<PerProtocol>,
    ) -> Result<usize, ApiError> {
        self.gather_count(Query::Counted(Command::SendToAll {
            data: data.into(),
            only: None,
            exclude: vec![],
        }))
        .await
        .map(|n| n as usize)
    }

    /// Sends a message to every client, or only to `only` when given, never to `exclude`.
    pub async fn send_to_all_filtered(
        &self,
        data: impl Into<PerProtocol>,
        only: Option<&[ClientId]>,
        exclude: &[ClientId],
    ) -> Result<(), ApiError> {
        let data = data.into();
        match only {
            None => {
                self.to_all(Command::SendToAll {
                    data,
                    only: None,
                    exclude: exclude.to_vec(),
                })
                .await
            }
            Some(list) => {
                // Each gateway gets only its own clients.
                let mut by_gateway: HashMap<u32, Vec<ClientId>> = HashMap::new();
                for c in list {
                    by_gateway.entry(c.gateway).or_default().push(*c);
                }
                let links = self.read_links().clone();
                if links.is_empty() {
                    return Err(self.no_gateway());
                }
                for (gw, ids) in by_gateway {
                    if let Some(link) = links.get(&gw) {
                        let exclude: Vec<ClientId> = exclude
                            .iter()
                            .filter(|c| c.gateway == gw)
                            .copied()
                            .collect();
                        let _ = link
                            .send(&Frame::Command(Command::SendToAll {
                                data: data.clone(),
                                only: Some(ids),
                                exclude,
                            }))
                            .await;
                    }
                }
                Ok(())
            }
        }
    }

    /// Like [`send_to_all_filtered`](Self::send_to_all_filtered), and waits until every
    /// gateway concerned says how many clients it reached; returns the total.
    pub async fn send_to_all_filtered_counted(
        &self,
        data: impl Into<PerProtocol>,
        only: Option<&[ClientId]>,
        exclude: &[ClientId],
    ) -> Result<usize, ApiError> {
        let data: PerProtocol = data.into();
        let Some(list) = only else {
            return self
                .gather_count(Query::Counted(Command::SendToAll {
                    data,
                    only: None,
                    exclude: exclude.to_vec(),
                }))
                .await
                .map(|n| n as usize);
        };
        let mut by_gateway: HashMap<u32, Vec<ClientId>> = HashMap::new();
        for c in list {
            by_gateway.entry(c.gateway).or_default().push(*c);
        }
        let links = self.read_links().clone();
        if links.is_empty() {
            return Err(self.no_gateway());
        }
        // Only the gateways that hold some of `only`; clients of a gateway that is not
        // connected are not reached.
        let asks = by_gateway.into_iter().filter_map(|(gw, ids)| {
            let link = links.get(&gw)?.clone();
            let exclude: Vec<ClientId> = exclude
                .iter()
                .filter(|c| c.gateway == gw)
                .copied()
                .collect();
            let q = Query::Counted(Command::SendToAll {
                data: data.clone(),
                only: Some(ids),
                exclude,
            });
            Some(async move { (link.number, self.ask(&link, q).await) })
        });
        let mut total = 0usize;
        for (number, answer) in futures::future::join_all(asks).await {
            match answer? {
                Reply::Count(n) => total += n as usize,
                other => return Err(bad_reply(number, &other)),
            }
        }
        Ok(total)
    }

    /// Sends a message to every client bound to any of `uids` (every device of a user);
    /// returns how many clients it reached, all gateways together (0: none of them is
    /// online).
    ///
    /// ```no_run
    /// # use switchboard::Gateway;
    /// # async fn demo(gateway: &Gateway) -> Result<(), switchboard::ApiError> {
    /// let reached = gateway.send_to_uid(&["alice"], "you have mail").await?;
    /// println!("alice has {reached} device(s) online");
    /// # Ok(()) }
    /// ```
    pub async fn send_to_uid<S: AsRef<str>>(
        &self,
        uids: &[S],
        data: impl Into<PerProtocol>,
    ) -> Result<usize, ApiError> {
        self.gather_count(Query::Counted(Command::SendToUid {
            uids: uids.iter().map(|u| u.as_ref().to_owned()).collect(),
            data: data.into(),
        }))
        .await
        .map(|n| n as usize)
    }

    /// Sends a message to every member of any of `groups`, except `exclude`, without
    /// waiting for an answer.
    pub async fn send_to_group<S: AsRef<str>>(
        &self,
        groups: &[S],
        data: impl Into<PerProtocol>,
        exclude: &[ClientId],
    ) -> Result<(), ApiError> {
        self.to_all(group_command(groups, data.into(), exclude))
            .await
    }

    /// Like [`send_to_group`](Self::send_to_group), and waits until every gateway says
    /// how many members it reached; returns the total.
    pub async fn send_to_group_counted<S: AsRef<str>>(
        &self,
        groups: &[S],
        data: impl Into<PerProtocol>,
        exclude: &[ClientId],
    ) -> Result<usize, ApiError> {
        self.gather_count(Query::Counted(group_command(groups, data.into(), exclude)))
            .await
            .map(|n| n as usize)
    }

    // ---- uid, groups, sessions, closing ----------------------------------------------

    /// Binds a client to a uid (a client has at most one uid; a uid many clients).
    pub async fn bind_uid(&self, client: ClientId, uid: &str) -> Result<(), ApiError> {
        self.to_client(
            client,
            Command::BindUid {
                client,
                uid: uid.into(),
            },
        )
        .await
    }

    /// Unbinds a client from a uid.
    pub async fn unbind_uid(&self, client: ClientId, uid: &str) -> Result<(), ApiError> {
        self.to_client(
            client,
            Command::UnbindUid {
                client,
                uid: uid.into(),
            },
        )
        .await
    }

    /// Adds a client to a group.
    pub async fn join_group(&self, client: ClientId, group: &str) -> Result<(), ApiError> {
        self.to_client(
            client,
            Command::JoinGroup {
                client,
                group: group.into(),
            },
        )
        .await
    }

    /// Removes a client from a group.
    pub async fn leave_group(&self, client: ClientId, group: &str) -> Result<(), ApiError> {
        self.to_client(
            client,
            Command::LeaveGroup {
                client,
                group: group.into(),
            },
        )
        .await
    }

    /// Dissolves a group on every gateway; its members stay connected.
    pub async fn ungroup(&self, group: &str) -> Result<(), ApiError> {
        self.to_all(Command::Ungroup {
            group: group.into(),
        })
        .await
    }

    /// Replaces a client's session. A session over `gateway.max_session` (64 KiB by
    /// default) fails with [`ApiError::SessionTooLarge`] and changes nothing.
    pub async fn set_session(&self, client: ClientId, session: &Session) -> Result<(), ApiError> {
        let session = self.session_json(session)?;
        self.to_client(client, Command::SetSession { client, session })
            .await
    }

    /// Merges keys into a client's session; `null` values remove keys. Changes over
    /// `gateway.max_session` fail with [`ApiError::SessionTooLarge`]; changes that
    /// would only make the merged session grow past it are dropped by the gateway,
    /// which logs them and keeps the session as it was.
    pub async fn update_session(
        &self,
        client: ClientId,
        changes: &Session,
    ) -> Result<(), ApiError> {
        let session = self.session_json(changes)?;
        self.to_client(client, Command::UpdateSession { client, session })
            .await
    }

    /// A session (or changes to one) as JSON, within `gateway.max_session`.
    fn session_json(&self, session: &Session) -> Result<Bytes, ApiError> {
        let json = serde_json::to_vec(session).map_err(|e| ApiError::Session(e.to_string()))?;
        let max = self.inner.options.max_session;
        if json.len() > max {
            return Err(ApiError::SessionTooLarge {
                size: json.len(),
                max,
            });
        }
        Ok(Bytes::from(json))
    }

    /// A client's session; `None` when the client is not connected.
    pub async fn get_session(&self, client: ClientId) -> Result<Option<Session>, ApiError> {
        let Some(link) = self.link_for(client)? else {
            return Ok(None);
        };
        match self.ask(&link, Query::GetSession(client)).await? {
            Reply::OptBytes(None) => Ok(None),
            Reply::OptBytes(Some(b)) => Ok(Some(parse_session(link.number, &b)?)),
            other => Err(bad_reply(link.number, &other)),
        }
    }

    /// Closes a client, after sending `last` if given.
    pub async fn close_client(
        &self,
        client: ClientId,
        last: Option<Message>,
    ) -> Result<(), ApiError> {
        self.to_client(client, Command::CloseClient { client, last })
            .await
    }

    // ---- queries ---------------------------------------------------------------------

    /// Whether a client is connected.
    pub async fn is_online(&self, client: ClientId) -> Result<bool, ApiError> {
        let Some(link) = self.link_for(client)? else {
            return Ok(false);
        };
        match self.ask(&link, Query::IsOnline(client)).await? {
            Reply::Bool(b) => Ok(b),
            other => Err(bad_reply(link.number, &other)),
        }
    }

    /// Whether any client is bound to `uid`.
    pub async fn is_uid_online(&self, uid: &str) -> Result<bool, ApiError> {
        Ok(!self.client_ids_by_uid(uid).await?.is_empty())
    }

    /// Clients bound to `uid`, on every gateway.
    pub async fn client_ids_by_uid(&self, uid: &str) -> Result<Vec<ClientId>, ApiError> {
        self.gather_ids(Query::ClientIdsByUid(uid.into())).await
    }

    /// The uid a client is bound to.
    pub async fn uid_by_client_id(&self, client: ClientId) -> Result<Option<String>, ApiError> {
        let Some(link) = self.link_for(client)? else {
            return Ok(None);
        };
        match self.ask(&link, Query::UidByClientId(client)).await? {
            Reply::OptString(s) => Ok(s),
            other => Err(bad_reply(link.number, &other)),
        }
    }

    /// Members of a group, on every gateway.
    pub async fn client_ids_by_group(&self, group: &str) -> Result<Vec<ClientId>, ApiError> {
        self.gather_ids(Query::ClientIdsByGroup(group.into())).await
    }

    /// Uids bound to members of a group, on every gateway (sorted, no duplicates).
    pub async fn uids_by_group(&self, group: &str) -> Result<Vec<String>, ApiError> {
        self.gather_strings(Query::UidsByGroup(group.into())).await
    }

    /// Number of members of a group.
    pub async fn client_count_by_group(&self, group: &str) -> Result<u64, ApiError> {
        self.gather_count(Query::ClientCountByGroup(group.into()))
            .await
    }

    /// Number of connected clients, all gateways together.
    pub async fn all_client_count(&self) -> Result<u64, ApiError> {
        self.gather_count(Query::AllClientCount).await
    }

    /// Every connected client.
    pub async fn all_client_ids(&self) -> Result<Vec<ClientId>, ApiError> {
        self.gather_ids(Query::AllClientIds).await
    }

    /// Every uid bound to at least one client.
    pub async fn all_uids(&self) -> Result<Vec<String>, ApiError> {
        self.gather_strings(Query::AllUids).await
    }

    /// Every group with at least one member.
    pub async fn all_groups(&self) -> Result<Vec<String>, ApiError> {
        self.gather_strings(Query::AllGroups).await
    }

    /// Sessions of every client, or of a group's members.
    pub async fn sessions(
        &self,
        group: Option<&str>,
    ) -> Result<Vec<(ClientId, Session)>, ApiError> {
        let mut out = Vec::new();
        for (number, reply) in self
            .gather(Query::Sessions(group.map(str::to_owned)))
            .await?
        {
            match reply {
                Reply::Sessions(list) => {
                    for (c, b) in list {
                        out.push((c, parse_session(number, &b)?));
                    }
                }
                other => return Err(bad_reply(number, &other)),
            }
        }
        out.sort_by_key(|(c, _)| *c);
        Ok(out)
    }

    /// One row per client, every gateway (the `connections` command).
    pub async fn clients(&self) -> Result<Vec<ClientInfo>, ApiError> {
        let mut out = Vec::new();
        for (number, reply) in self.gather(Query::Clients).await? {
            match reply {
                Reply::Clients(list) => out.extend(list),
                other => return Err(bad_reply(number, &other)),
            }
        }
        out.sort_by_key(|i| i.client);
        Ok(out)
    }

    async fn gather_ids(&self, q: Query) -> Result<Vec<ClientId>, ApiError> {
        let mut out = BTreeSet::new();
        for (number, reply) in self.gather(q).await? {
            match reply {
                Reply::ClientIds(ids) => out.extend(ids),
                other => return Err(bad_reply(number, &other)),
            }
        }
        Ok(out.into_iter().collect())
    }

    async fn gather_strings(&self, q: Query) -> Result<Vec<String>, ApiError> {
        let mut out = BTreeSet::new();
        for (number, reply) in self.gather(q).await? {
            match reply {
                Reply::Strings(s) => out.extend(s),
                other => return Err(bad_reply(number, &other)),
            }
        }
        Ok(out.into_iter().collect())
    }

    async fn gather_count(&self, q: Query) -> Result<u64, ApiError> {
        let mut total = 0;
        for (number, reply) in self.gather(q).await? {
            match reply {
                Reply::Count(n) => total += n,
                other => return Err(bad_reply(number, &other)),
            }
        }
        Ok(total)
    }

    /// Asks every gateway at once and waits for all answers.
    async fn gather(&self, q: Query) -> Result<Vec<(u32, Reply)>, ApiError> {
        crate::metrics::worker::command(query_kind(&q));
        let links = self.gathering_links().await?;
        let answers =
            futures::future::join_all(links.iter().map(|l| self.ask_uncounted(l, q.clone()))).await;
        links
            .iter()
            .zip(answers)
            .map(|(l, a)| a.map(|r| (l.number, r)))
            .collect()
    }

    async fn ask(&self, link: &LinkHandle, query: Query) -> Result<Reply, ApiError> {
        crate::metrics::worker::command(query_kind(&query));
        self.ask_uncounted(link, query).await
    }

    async fn ask_uncounted(&self, link: &LinkHandle, query: Query) -> Result<Reply, ApiError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = lock(&link.pending);
            if pending.closed {
                return Err(link.disconnected());
            }
            pending.waiting.insert(
                id,
                Waiting {
                    pages: None,
                    answer: Answer::Task(tx),
                },
            );
        }
        let _forget = Forget {
            pending: &link.pending,
            id,
        };
        let timeout = self.inner.options.query_timeout;
        async {
            link.send(&Frame::Query { id, query }).await?;
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(reply)) => link.answer(reply),
                Ok(Err(_)) => Err(link.disconnected()),
                Err(_) => Err(link.timed_out(timeout)),
            }
        }
        .await
    }

    /// Sends a query whose answer goes to `done`, called by the link's reader (with
    /// an error when none comes within the query timeout, or the link ends); returns
    /// once the query is queued on the link. `done` is called exactly once: with the
    /// error also returned when the query could not be queued.
    async fn ask_then(
        &self,
        link: &LinkHandle,
        query: Query,
        done: Box<dyn FnOnce(Result<Reply, ApiError>) + Send>,
    ) -> Result<(), ApiError> {
        crate::metrics::worker::command(query_kind(&query));
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let bytes = match encode_checked(&Frame::Query { id, query }, link.max_frame) {
            Ok(bytes) => bytes,
            Err(e) => {
                done(Err(e.clone()));
                return Err(e);
            }
        };
        {
            let mut pending = lock(&link.pending);
            if pending.closed {
                drop(pending);
                let e = link.disconnected();
                done(Err(e.clone()));
                return Err(e);
            }
            let deadline = tokio::time::Instant::now() + self.inner.options.query_timeout;
            // Registered before it is sent: the answer may come at once.
            pending.waiting.insert(
                id,
                Waiting {
                    pages: None,
                    answer: Answer::Then { done, deadline },
                },
            );
        }
        if let Err(e) = link.send_encoded(bytes).await {
            // Not sent. Unless the link's end took it first, the callback hears why here.
            let waiting = lock(&link.pending).waiting.remove(&id);
            if let Some(waiting) = waiting {
                waiting.finish(Err(e.clone()), link);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Queries sent and not yet answered, over every link (a query whose caller gave
    /// up is not one of them). For tests and diagnostics.
    #[doc(hidden)]
    pub fn pending_queries(&self) -> usize {
        self.all_links()
            .iter()
            .map(|l| lock(&l.pending).waiting.len())
            .sum()
    }

    // ---- worker life cycle -----------------------------------------------------------

    /// Tells every gateway to send no new events, and waits (up to `timeout`) until each
    /// has confirmed.
    pub(crate) async fn drain(&self, timeout: Duration) {
        let links = self.all_links();
        let waits = links.iter().map(|l| async move {
            let confirmed = l.drained.notified();
            if l.send(&Frame::Draining).await.is_ok() {
                let _ = tokio::time::timeout(timeout, confirmed).await;
            }
        });
        futures::future::join_all(waits).await;
    }

    /// Waits until everything sent so far is written to the sockets.
    pub(crate) async fn flush(&self) {
        let waits = self.all_links().into_iter().map(|l| async move {
            let (tx, rx) = oneshot::channel();
            // Bounded as a whole: a stalled link must not hold up `close`.
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                if l.tx.send(LinkOut::Flush(tx)).await.is_ok() {
                    let _ = rx.await;
                }
            })
            .await;
        });
        futures::future::join_all(waits).await;
    }
}

/// The metrics kind of a command (a wildcard keeps this compiling when the internal
/// protocol grows commands; they count as `other` until named here).
fn command_kind(cmd: &Command) -> crate::metrics::worker::CommandKind {
    use crate::metrics::worker::CommandKind as K;
    #[allow(unreachable_patterns)]
    match cmd {
        Command::SendToClient { .. } | Command::SendOrTell { .. } => K::SendToClient,
        Command::SendToAll { .. } => K::SendToAll,
        Command::SendToGroup { .. } => K::SendToGroup,
        Command::SendToUid { .. } => K::SendToUid,
        Command::BindUid { .. } | Command::UnbindUid { .. } => K::Uid,
        Command::JoinGroup { .. } | Command::LeaveGroup { .. } | Command::Ungroup { .. } => {
            K::Group
        }
        Command::SetSession { .. } | Command::UpdateSession { .. } => K::Session,
        Command::CloseClient { .. } => K::Close,
        _ => K::Other,
    }
}

/// The metrics kind of a query: a counted send counts as its command.
fn query_kind(q: &Query) -> crate::metrics::worker::CommandKind {
    match q {
        Query::Counted(cmd) => command_kind(cmd),
        _ => crate::metrics::worker::CommandKind::Query,
    }
}

/// The TLS settings of `[worker.internal_tls]`, loaded.
pub(crate) fn link_tls(
    config: &crate::Config,
) -> Result<Option<crate::transport::tls::LinkTls>, crate::Error> {
    config
        .worker
        .internal_tls
        .as_ref()
        .map(|c| {
            crate::transport::tls::LinkTls::new(&config.internal_tls_client(c))
                .map_err(|e| crate::Error::Other(format!("worker.internal_tls: {e}")))
        })
        .transpose()
}

fn group_command<S: AsRef<str>>(groups: &[S], data: PerProtocol, exclude: &[ClientId]) -> Command {
    Command::SendToGroup {
        groups: groups.iter().map(|g| g.as_ref().to_owned()).collect(),
        data,
        exclude: exclude.to_vec(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn parse_session(gateway: u32, bytes: &[u8]) -> Result<Session, ApiError> {
    serde_json::from_slice::<Map<String, Value>>(bytes).map_err(|e| ApiError::BadReply {
        gateway,
        detail: format!("a session that is not a JSON object: {e}"),
    })
}

fn bad_reply(gateway: u32, reply: &Reply) -> ApiError {
    ApiError::BadReply {
        gateway,
        detail: format!("an unexpected reply: {reply:?}"),
    }
}

/// Keeps one link per discovered gateway.
async fn discover(gateway: Gateway) {
    let inner = &gateway.inner;
    let mut managed: HashMap<u32, (SocketAddr, CancellationToken)> = HashMap::new();
    let mut failing = false;
    loop {
        match discovery::list(inner.discovery_store.as_ref(), &inner.options.namespace).await {
            Ok(entries) => {
                if failing {
                    tracing::info!("store reachable again");
                    failing = false;
                }
                let seen: HashMap<u32, GatewayEntry> =
                    entries.into_iter().map(|e| (e.number, e)).collect();
                // A gateway missing from the list while its link is up stays: a store
                // that restarted empty lists nobody until each gateway republishes
                // itself, and dropping the link would re-dispatch (duplicate) its
                // events in flight. A gateway that stops closes its link; one that
                // dies loses it (`link_timeout`); then it goes at the next round.
                let up = gateway.gateways();
                managed.retain(|number, (addr, token)| {
                    let keep = match seen.get(number) {
                        Some(e) => e.internal == *addr,
                        None => up.contains(number),
                    };
                    if !keep {
                        tracing::info!(gateway = *number, %addr, "gateway left the store; dropping its link");
                        token.cancel();
                    }
                    keep
                });
                for (number, entry) in seen {
                    if managed.contains_key(&number) {
                        continue;
                    }
                    let token = inner.stop.child_token();
                    managed.insert(number, (entry.internal, token.clone()));
                    tokio::spawn(maintain_link(gateway.clone(), entry, token));
                }
                let known: HashMap<u32, SocketAddr> =
                    managed.iter().map(|(n, (a, _))| (*n, *a)).collect();
                if *lock(&inner.known) != known {
                    *lock(&inner.known) = known;
                    // A query waiting for a gateway that is no longer followed goes on.
                    inner.changed.notify_waiters();
                }
            }
            Err(e) => {
                // Keep the links we have: the store being down must not cut anyone off.
                if !failing {
                    tracing::warn!(error = %e, "cannot read the gateway list from the store; keeping known gateways");
                }
                failing = true;
            }
        }
        tokio::select! {
            _ = inner.stop.cancelled() => return,
            _ = tokio::time::sleep(inner.options.discovery_interval) => {}
        }
    }
}

/// Connects to one gateway and reconnects (with backoff) until `stop`.
async fn maintain_link(gateway: Gateway, entry: GatewayEntry, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    loop {
        // Not raced against `stop`: `run_link` watches it itself and always takes its
        // link out of the table before it returns (dropped half-way, it would leave a
        // dead link behind).
        let attempt = run_link(&gateway, &entry, &stop).await;
        if stop.is_cancelled() {
            return;
        }
        match attempt {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => {
                tracing::warn!(gateway = entry.number, addr = %entry.internal, error = %e, retry_in = ?backoff, "gateway link failed")
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// One connection's life: handshake, then read until it ends.
async fn run_link(
    gateway: &Gateway,
    entry: &GatewayEntry,
    stop: &CancellationToken,
) -> Result<(), String> {
    let inner = &gateway.inner;
    let tcp = tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(entry.internal))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    crate::transport::nodelay(&tcp);
    let socket: LinkStream = match (&inner.options.tls, entry.tls) {
        (None, false) => Box::new(tcp),
        (Some(tls), true) => Box::new(
            tokio::time::timeout(Duration::from_secs(5), tls.connect(entry.internal, tcp))
                .await
                .map_err(|_| "TLS handshake timed out".to_string())?
                .map_err(|e| format!("TLS: {e}"))?,
        ),
        (None, true) => {
            return Err("the gateway speaks TLS on its internal listener; set [worker.internal_tls] ca = \"...\" to verify it".into())
        }
        (Some(_), false) => {
            return Err("the gateway's internal listener is plain TCP but [worker.internal_tls] asks for TLS; refusing the unencrypted link".into())
        }
    };
    let mut framed = Framed::new(
        socket,
        InternalCodec {
            max_frame: inner.options.max_frame,
        },
    );
    let nonce = match tokio::time::timeout(Duration::from_secs(5), framed.next()).await {
        Ok(Some(Ok(Frame::Hello {
            version,
            nonce,
            gateway: number,
        }))) => {
            if version != PROTOCOL_VERSION {
                return Err(format!(
                    "gateway speaks protocol version {version}, this worker {PROTOCOL_VERSION}"
                ));
            }
            if number != entry.number {
                return Err(format!(
                    "expected gateway {}, found gateway {number} (stale store entry)",
                    entry.number
                ));
            }
            nonce
        }
        other => return Err(format!("no hello from gateway: {other:?}")),
    };
    let name = inner.options.name.clone();
    let mac = auth::answer(&inner.options.secret, &nonce, inner.role, &name);
    let my_nonce = auth::nonce();
    framed
        .send(Frame::Auth {
            version: PROTOCOL_VERSION,
            role: inner.role,
            name,
            mac,
            nonce: my_nonce,
        })
        .await
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(5), framed.next()).await {
        Ok(Some(Ok(Frame::Welcome { mac }))) => {
            if !auth::verify_gateway(&inner.options.secret, &my_nonce, entry.number, &mac) {
                return Err(format!(
                    "the peer at {} did not prove it knows the secret; not using it as a gateway",
                    entry.internal
                ));
            }
        }
        Ok(Some(Ok(Frame::Refused { reason }))) => {
            return Err(format!("refused by gateway: {reason}"))
        }
        other => return Err(format!("no welcome from gateway: {other:?}")),
    }

    let (tx, mut rx) = mpsc::channel::<LinkOut>(LINK_QUEUE);
    let handle = LinkHandle {
        number: entry.number,
        addr: entry.internal,
        max_frame: inner.options.max_frame,
        send_timeout: inner.options.query_timeout,
        tx: tx.clone(),
        pending: Arc::new(Mutex::new(PendingMap::default())),
        drained: Arc::new(Notify::new()),
    };
    inner
        .links
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .insert(entry.number, handle.clone());
    inner.changed.notify_waiters();
    tracing::info!(gateway = entry.number, addr = %entry.internal, "connected to gateway");

    let (mut sink, mut stream) = framed.split::<Bytes>();
    let writer = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut next = Some(first);
            while let Some(item) = next.take() {
                match item {
                    LinkOut::Frame(b) => {
                        if sink.feed(b).await.is_err() {
                            return;
                        }
                    }
                    LinkOut::Flush(done) => {
                        if sink.flush().await.is_err() {
                            return;
                        }
                        let _ = done.send(());
                    }
                }
                next = rx.try_recv().ok();
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });

    let link_timeout = inner.options.link_timeout;
    let query_timeout = inner.options.query_timeout;
    // One timer for the link: it times out answers that go to callbacks
    // ([`Answer::Then`], no task times them) and notices a silent link, every quarter
    // of the shorter of the two timeouts — not a timer per frame read.
    let mut sweep = tokio::time::interval(
        (query_timeout.min(link_timeout) / 4)
            .clamp(Duration::from_millis(10), Duration::from_secs(1)),
    );
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heard = tokio::time::Instant::now();
    let mut heard_since_sweep = false;
    // Waits on `stop` across the whole loop (a fresh `cancelled()` each time round
    // would enter and leave its waiter list for every frame).
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    let result = 'read: loop {
        let first = tokio::select! {
            _ = &mut stopped => break Ok(()),
            now = sweep.tick() => {
                if heard_since_sweep {
                    heard = now;
                    heard_since_sweep = false;
                } else if now.duration_since(heard) >= link_timeout {
                    break Err(format!("nothing from the gateway for {link_timeout:?}; reconnecting"));
                }
                let overdue = lock(&handle.pending).overdue(now);
                for waiting in overdue {
                    waiting.finish(Err(handle.timed_out(query_timeout)), &handle);
                }
                continue;
            }
            f = stream.next() => f,
        };
        heard_since_sweep = true;
        // Frames already read (or in the socket) are handled without going back to
        // the `select!`, up to `BATCH_FRAMES`: its timer and `stop` are polled once a
        // batch, not once a frame.
        let mut frame = first;
        for handled in 1.. {
            let outcome = match frame {
                None => Err("gateway closed the connection".to_string()),
                Some(Err(e)) => Err(format!("protocol error: {e}")),
                Some(Ok(frame)) => on_frame(inner, &handle, &tx, entry.number, frame).await,
            };
            if let Err(e) = outcome {
                break 'read Err(e);
            }
            if handled == BATCH_FRAMES {
                break;
            }
            frame = match stream.next().now_or_never() {
                Some(f) => f,
                None => break,
            };
        }
    };
    {
        let mut links = inner.links.write().unwrap_or_else(|p| p.into_inner());
        if links
            .get(&entry.number)
            .is_some_and(|l| l.tx.same_channel(&tx))
        {
            links.remove(&entry.number);
        }
    }
    inner.changed.notify_waiters();
    // Waiting queries fail now rather than at their timeout.
    let left = lock(&handle.pending).close();
    for waiting in left {
        waiting.finish(Err(handle.disconnected()), &handle);
    }
    writer.abort();
    if result.is_ok() {
        tracing::info!(gateway = entry.number, "link closed");
    }
    result
}

/// Handles one frame a gateway sent on a worker's (or API client's) link; an error is
/// why the link closes.
async fn on_frame(
    inner: &Inner,
    handle: &LinkHandle,
    tx: &mpsc::Sender<LinkOut>,
    gateway: u32,
    frame: Frame,
) -> Result<(), String> {
    match frame {
        Frame::Event(event) => match inner.sink.get() {
            Some(sink) => sink(
                event,
                Acker {
                    tx: tx.clone(),
                    gateway,
                },
            ),
            None => return Err("gateway sent an event to an API client".to_string()),
        },
        Frame::ReplyPart { id, reply } => {
            let mut pending = lock(&handle.pending);
            if let Some(waiting) = pending.waiting.get_mut(&id) {
                let joined = match &mut waiting.pages {
                    None => {
                        waiting.pages = Some(reply);
                        Ok(())
                    }
                    Some(pages) => pages.extend(reply),
                };
                joined.map_err(|e| format!("protocol error: {e}"))?;
            }
        }
        Frame::Reply { id, reply } => {
            let waiting = lock(&handle.pending).waiting.remove(&id);
            if let Some(mut waiting) = waiting {
                let whole = match waiting.pages.take() {
                    None => Ok(reply),
                    Some(mut pages) => pages.extend(reply).map(|()| pages),
                };
                match whole {
                    Ok(whole) => waiting.finish(Ok(whole), handle),
                    Err(e) => {
                        waiting.finish(Err(handle.disconnected()), handle);
                        return Err(format!("protocol error: {e}"));
                    }
                }
            }
        }
        Frame::DrainAck => handle.drained.notify_one(),
        Frame::Ping => {
            let _ = tx
                .send(LinkOut::Frame(internal::encode_to_bytes(&Frame::Pong)))
                .await;
        }
        Frame::Pong => {}
        other => {
            return Err(format!(
                "unexpected {} frame from gateway",
                crate::gateway::frame_kind(&other)
            ))
        }
    }
    Ok(())
}
