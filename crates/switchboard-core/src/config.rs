//! The configuration file (TOML): every setting of a deployment, with defaults.
//!
//! Unknown keys are refused (`deny_unknown_fields`), so a typo is an error naming the key
//! and its line instead of a silently ignored setting. `docs/configuration.md` documents
//! every key; an application embeds its default file and prints it with `config print`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchboard_store::StoreConfig;

use crate::protocol::ClientProtocol;

/// A whole deployment's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Deployment name: prefixes every store key, so several deployments can share one
    /// store. Processes of one deployment must agree on it.
    #[serde(default = "default_name")]
    pub name: String,
    /// Shared secret that workers and API clients prove they know to a gateway.
    /// Every process of a deployment must have the same one.
    #[serde(default = "default_secret")]
    pub secret: String,
    /// Directory for the file store, pid file, stats and logs; created if missing.
    /// Relative paths elsewhere in this file are relative to it.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Where discovery and shared state live.
    #[serde(default = "default_store")]
    pub store: StoreConfig,
    /// Gateway processes.
    #[serde(default)]
    pub gateway: GatewayConfig,
    /// Worker processes.
    #[serde(default)]
    pub worker: WorkerConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// The supervisor (the `start` command).
    #[serde(default)]
    pub supervisor: SupervisorConfig,
    /// Business-call statistics (StatisticClient): collection, retention, bounds.
    #[serde(default)]
    pub statistic: StatisticConfig,
    /// The runtime's own metrics (Prometheus).
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// The machine's admin listener: dashboard, `/metrics`.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Named database instances for business code (`[db.instances.NAME]`, see
    /// docs/db.md). Kept as TOML here and checked at load time; [`Config::db_config`]
    /// gives the typed form.
    #[serde(default, skip_serializing_if = "toml::Table::is_empty")]
    pub db: toml::Table,
}

/// Only the `[db]` table, typed: parsed from the same text to check it with line numbers.
#[derive(Deserialize)]
struct DbSection {
    #[serde(default)]
    #[allow(dead_code)]
    db: switchboard_db::DbConfig,
    #[serde(flatten)]
    _rest: toml::Table,
}

/// Room an event frame needs besides its message and session (client id, address,
/// listener name, uid, groups): [`Config::validate`] checks that the largest message of
/// every listener and the largest session fit in `gateway.max_internal_frame` with it.
pub const EVENT_HEADROOM: usize = 4096;

/// The longest client silence a gateway measures (`heartbeat.interval` ×
/// `heartbeat.idle_intervals`, checked by [`Config::validate`]): the gateway keeps
/// when each client was last seen in 32 bits of centiseconds.
pub const MAX_SILENCE: Duration = Duration::from_secs(180 * 24 * 3600);

/// The largest `gateway.min_write_interval` ([`Config::validate`]): it delays messages
/// by up to that much.
pub const MAX_WRITE_INTERVAL: Duration = Duration::from_secs(1);

/// The largest `gateway.held_up_after` ([`Config::validate`]): a worker silent for
/// longer than a minute with events in flight is not merely busy.
pub const MAX_HELD_UP_AFTER: Duration = Duration::from_secs(60);

fn default_name() -> String {
    "switchboard".into()
}
fn default_secret() -> String {
    DEFAULT_SECRET.into()
}

/// The built-in `secret`: public, so fit only for a deployment whose internal
/// listeners are all on loopback (see [`Config::secret_warning`]).
pub const DEFAULT_SECRET: &str = "change-me";

/// What `config print` shows in place of a secret value (see
/// [`Config::with_secrets_hidden`]). As a value it is refused, so a masked print is
/// never silently taken for a working configuration.
pub const HIDDEN: &str = "(hidden; config print --show-secrets shows it)";

/// `url` with the password of its `user:password@` part (if any) replaced by `***`.
fn hide_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, password)) if !password.is_empty() => {
            format!("{scheme}://{user}:***@{host}{path}")
        }
        _ => url.to_owned(),
    }
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}
fn default_store() -> StoreConfig {
    StoreConfig::File {
        path: PathBuf::from("store.sqlite"),
    }
}

/// Gateway settings (`[gateway]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Gateway processes on this machine; they share every client listener's port
    /// (SO_REUSEPORT), so more processes hold more clients than one process's open-file
    /// limit allows.
    pub count: usize,
    /// Address the internal listener (for workers) binds to. Port 0 picks a free port
    /// per process; a fixed port `p` gives process `i` the port `p + i`.
    pub internal_listen: SocketAddr,
    /// Address workers are told to connect to; defaults to `internal_listen`'s IP (or
    /// 127.0.0.1 when that is unspecified). Set it to the machine's LAN address when
    /// workers run elsewhere.
    pub internal_advertise: Option<IpAddr>,
    /// Client listeners.
    pub listeners: Vec<ListenerConfig>,
    /// Heartbeat towards clients.
    pub heartbeat: HeartbeatConfig,
    /// Bytes that may wait to be written to one client; a client that does not read
    /// and passes this is disconnected as a slow consumer.
    pub outbound_limit: usize,
    /// Bytes of events one client may have waiting for a worker; past it the gateway
    /// stops reading from that client (TCP back-pressure) until the queue drains.
    pub client_queue_limit: usize,
    /// Bytes of events all clients together may have waiting or in flight; past it new
    /// events are rejected (the client is told, the rejection logged and counted).
    pub queue_limit: usize,
    /// How long an event may wait for a worker (none connected) before it is rejected.
    #[serde(with = "crate::duration")]
    pub hold_timeout: Duration,
    /// Largest internal frame accepted from a worker, in bytes.
    pub max_internal_frame: usize,
    /// Most clients one gateway process holds; further connections are refused.
    pub max_clients: usize,
    /// Most connections one source address may hold open in one gateway process (its
    /// handshaking ones included); further connections from it are closed at once.
    /// 0: no limit. Loopback sources are exempt unless `per_ip_limits_on_loopback`.
    pub max_connections_per_ip: usize,
    /// Most new connections one source address may open per second in one gateway
    /// process (a token bucket holding one second's worth, so bursts up to this many);
    /// further ones are closed at once. 0: no limit. Loopback is exempt unless
    /// `per_ip_limits_on_loopback`.
    pub max_connect_rate_per_ip: u32,
    /// Applies the per-address limits to loopback sources (`127.0.0.0/8`, `::1`) too.
    /// Off by default: tests, load generators and local reverse proxies all connect
    /// from loopback.
    pub per_ip_limits_on_loopback: bool,
    /// How often the gateway refreshes its discovery entry in the store.
    #[serde(with = "crate::duration")]
    pub publish_interval: Duration,
    /// How often the gateway pings each worker link; a link silent for three intervals
    /// is closed and its in-flight events go to another worker (a worker machine that
    /// vanished without closing its connections).
    #[serde(with = "crate::duration")]
    pub link_ping_interval: Duration,
    /// How long a closing client may take to be written what was queued for it (by
    /// `close_client`, the heartbeat, a limit, or the gateway stopping); then its
    /// socket is aborted, whatever is left unwritten.
    #[serde(with = "crate::duration")]
    pub flush_timeout: Duration,
    /// Least time between two writes to one client (`0`, the default: every message
    /// is written as soon as it is queued). A message to a client not written to
    /// within it still goes out at once; what comes sooner waits until the interval
    /// has passed and goes out with everything queued meanwhile in one write (at once
    /// when 64 KiB are waiting). It trades up to this much latency for fewer system
    /// calls when clients receive many messages a second (a busy room or game state):
    /// each write costs the gateway a system call, and on loopback the receiver's TCP
    /// work too. `0`, or from 1 ms to 1 s.
    #[serde(with = "crate::duration")]
    pub min_write_interval: Duration,
    /// Most connections on the internal listener that have not authenticated yet;
    /// further ones are refused at once until the handshakes in progress end (each
    /// has 5 s).
    pub max_unauthenticated: usize,
    /// How the worker for a client's event is chosen: [`Routing::Sticky`] (the
    /// default) or [`Routing::LeastBusy`].
    pub routing: Routing,
    /// With [`Routing::LeastBusy`]: a worker that has events in flight from this
    /// gateway and has acknowledged none of them for this long counts as held up (a
    /// handler blocking its thread, a slow call), and events go to the other workers
    /// while one of them is not; `0` turns it off (the fewest events in flight alone
    /// decides). At most [`MAX_HELD_UP_AFTER`].
    #[serde(with = "crate::duration")]
    pub held_up_after: Duration,
    /// Threads of each process's async runtime: `1` runs everything on one thread (no
    /// wake-ups across threads; scale with `count` instead), `0` one thread per core,
    /// `n` that many.
    pub threads: usize,
    /// The memory allocator of gateway processes: `system` (the default: the least
    /// memory per idle client) or `mimalloc` (a few per cent less CPU, ~30 % more
    /// memory per idle client). Takes effect in binaries that install
    /// `switchboard::alloc::Allocator`; see
    /// [`GatewayConfig::effective_allocator`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocator: Option<AllocatorKind>,
    /// Largest session one client may have, in bytes of JSON. A change that would make
    /// a session larger is refused (the API call fails with
    /// `switchboard::ApiError::SessionTooLarge`; an update that
    /// only grows it past the bound is logged and dropped by the gateway, the session
    /// kept as it was). Every event carries the session, so with each listener's
    /// `max_message` it must fit in `max_internal_frame`.
    pub max_session: usize,
    /// Bytes one internal link (a worker or an API client) may have waiting to be
    /// written by the gateway; a peer that lets more pile up does not read, and its
    /// link is closed (a worker's events in flight go to another worker).
    pub link_queue_limit: usize,
    /// Certificate and key for TLS on the internal listener (links from workers and
    /// API clients on other machines); plain TCP when absent. Workers then need
    /// `[worker.internal_tls]` to verify it.
    pub internal_tls: Option<TlsFiles>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            count: 1,
            internal_listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            internal_advertise: None,
            listeners: vec![ListenerConfig::default()],
            heartbeat: HeartbeatConfig::default(),
            outbound_limit: 4 << 20,
            client_queue_limit: 1 << 20,
            queue_limit: 256 << 20,
            hold_timeout: Duration::from_secs(30),
            max_internal_frame: 16 << 20,
            max_clients: 19_000,
            max_connections_per_ip: 1000,
            max_connect_rate_per_ip: 200,
            per_ip_limits_on_loopback: false,
            publish_interval: Duration::from_secs(2),
            link_ping_interval: Duration::from_secs(5),
            flush_timeout: Duration::from_secs(5),
            min_write_interval: Duration::ZERO,
            max_unauthenticated: 64,
            routing: Routing::Sticky,
            held_up_after: Duration::from_millis(10),
            threads: 0,
            allocator: None,
            max_session: 64 << 10,
            link_queue_limit: 64 << 20,
            internal_tls: None,
        }
    }
}

impl GatewayConfig {
    /// The allocator gateway processes run on: `allocator` when set, else the system's.
    pub fn effective_allocator(&self) -> AllocatorKind {
        self.allocator.unwrap_or(AllocatorKind::System)
    }

    /// The internal address process `index` listens on.
    pub fn internal_listen_for(&self, index: usize) -> SocketAddr {
        let mut addr = self.internal_listen;
        if addr.port() != 0 {
            addr.set_port(addr.port().saturating_add(index as u16));
        }
        addr
    }

    /// The IP workers should connect to, given where the internal listener bound.
    pub fn advertise_ip(&self) -> IpAddr {
        match self.internal_advertise {
            Some(ip) => ip,
            None if self.internal_listen.ip().is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            None => self.internal_listen.ip(),
        }
    }
}

/// One client listener (`[[gateway.listeners]]`): an address, a transport (`tcp`, or
/// `tls` with a certificate), a protocol, limits and a heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Name for logs, stats and `Context::listener`.
    #[serde(default = "default_listener_name")]
    pub name: String,
    /// Address clients connect to. Port 0: the supervisor picks a free port when it
    /// starts, shared by every gateway process of the machine and kept while it runs
    /// (see docs/configuration.md).
    pub listen: SocketAddr,
    /// Wire protocol: `text`, `frame`, `json` or `websocket`.
    #[serde(default = "default_protocol")]
    pub protocol: ClientProtocol,
    /// `tcp` or `tls`; `tls` when a `tls` table is given.
    pub transport: Option<Transport>,
    /// Certificate and key for a `tls` listener.
    pub tls: Option<TlsFiles>,
    /// Largest message (line, frame payload, WebSocket message) accepted, in bytes;
    /// defaults to 64 KiB for `text` and 1 MiB for the others. A longer one gets an
    /// error (WebSocket: close 1009) and the client is closed.
    pub max_message: Option<usize>,
    /// This listener's heartbeat; the `[gateway.heartbeat]` defaults when absent.
    pub heartbeat: Option<HeartbeatConfig>,
    /// How long a client has to complete the TLS handshake and the WebSocket upgrade.
    #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Most connections this listener holds at once in one gateway process, those in
    /// their handshake included; further ones are closed at once. Unset: only
    /// `gateway.max_clients` bounds it.
    pub max_connections: Option<usize>,
    /// Most new connections this listener accepts per second in one gateway process,
    /// whatever their source (a token bucket of one second's worth); further ones are
    /// closed at once. Unset: no limit of its own. Checked after the per-address
    /// limits, so one address's flood does not spend it.
    pub max_connect_rate: Option<u32>,
    /// WebSocket: `Origin` values allowed to upgrade (`https://chat.example.com`);
    /// empty allows any. Others get HTTP 403.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_origins: Vec<String>,
    /// WebSocket: addresses or networks (`10.0.0.0/8`) of reverse proxies whose
    /// `X-Forwarded-For` is believed; from anyone else the header is ignored. The
    /// per-address connection limits do not apply to them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// How a listener's bytes travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Plain TCP.
    Tcp,
    /// TLS 1.2 or 1.3 over TCP (rustls).
    Tls,
}

/// A certificate chain and its private key, PEM files (`tls = { cert = "…", key = "…" }`).
/// Relative paths are relative to `data_dir`. Re-read on `reload` and SIGHUP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// How workers and API clients check a gateway's certificate on a TLS internal link
/// (`[worker.internal_tls]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InternalTlsClient {
    /// PEM file of the certificate authorities gateways' certificates are signed by.
    pub ca: PathBuf,
    /// The name to verify in gateway certificates; by default the gateway's advertised
    /// IP address (the certificate then needs that IP as a subject alternative name).
    pub server_name: Option<String>,
}

fn default_listener_name() -> String {
    "main".into()
}
fn default_protocol() -> ClientProtocol {
    ClientProtocol::Text
}

fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            name: default_listener_name(),
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8480),
            protocol: ClientProtocol::Text,
            transport: None,
            tls: None,
            max_message: None,
            heartbeat: None,
            handshake_timeout: default_handshake_timeout(),
            max_connections: None,
            max_connect_rate: None,
            allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
        }
    }
}

impl ListenerConfig {
    /// The effective message limit.
    pub fn max_message(&self) -> usize {
        self.max_message.unwrap_or(match self.protocol {
            ClientProtocol::Text => 64 << 10,
            _ => 1 << 20,
        })
    }

    /// The effective transport.
    pub fn transport(&self) -> Transport {
        self.transport.unwrap_or(if self.tls.is_some() {
            Transport::Tls
        } else {
            Transport::Tcp
        })
    }

    /// The effective heartbeat: the listener's own, or the gateway's default.
    pub fn heartbeat<'a>(&'a self, default: &'a HeartbeatConfig) -> &'a HeartbeatConfig {
        self.heartbeat.as_ref().unwrap_or(default)
    }
}

/// Heartbeat towards clients (`[gateway.heartbeat]` for every listener, or a
/// listener's own `heartbeat`), as GatewayWorker has it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeartbeatConfig {
    /// How often the gateway checks clients (and sends `ping`, if set).
    #[serde(with = "crate::duration")]
    pub interval: Duration,
    /// Message sent to every client each interval, in the listener's protocol; none
    /// when absent. On a `websocket` listener, `"frame"` sends a WebSocket ping frame
    /// instead (browsers answer it with a pong by themselves).
    pub ping: Option<String>,
    /// Close a client that sent nothing for this many intervals; 0 never closes.
    pub idle_intervals: u32,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(25),
            ping: None,
            idle_intervals: 0,
        }
    }
}

/// Worker settings (`[worker]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Worker processes on this machine.
    pub count: usize,
    /// How long a query waits for every gateway's answer.
    #[serde(with = "crate::duration")]
    pub query_timeout: Duration,
    /// How often the worker reads the gateway list from the store.
    #[serde(with = "crate::duration")]
    pub discovery_interval: Duration,
    /// How long a draining worker waits for its events to finish before it exits.
    #[serde(with = "crate::duration")]
    pub drain_timeout: Duration,
    /// A gateway link that brings nothing (not even the gateway's pings) for this long
    /// is considered dead and reconnected. Keep it above 3 × `gateway.link_ping_interval`.
    #[serde(with = "crate::duration")]
    pub link_timeout: Duration,
    /// How to verify gateways that speak TLS on their internal listener (also used by
    /// API clients and the `connections` command).
    pub internal_tls: Option<InternalTlsClient>,
    /// Threads of each process's async runtime: `1` runs everything on one thread (no
    /// wake-ups across threads; scale with `count` instead), `0` one thread per core,
    /// `n` that many.
    pub threads: usize,
    /// The memory allocator of worker processes: `mimalloc` (the default: less CPU per
    /// event) or `system`. Takes effect in binaries that install
    /// `switchboard::alloc::Allocator`; see
    /// [`WorkerConfig::effective_allocator`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocator: Option<AllocatorKind>,
}

impl WorkerConfig {
    /// The allocator worker processes run on: `allocator` when set, else mimalloc.
    pub fn effective_allocator(&self) -> AllocatorKind {
        self.allocator.unwrap_or(AllocatorKind::Mimalloc)
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            count: 2,
            query_timeout: Duration::from_secs(3),
            discovery_interval: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(30),
            link_timeout: Duration::from_secs(20),
            internal_tls: None,
            // One thread per worker process (scale with `count`): 27 % less CPU per
            // private message than a thread per core (docs/BENCHMARKS.md).
            threads: 1,
            allocator: None,
        }
    }
}

/// Log output (`[log]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Filter in `tracing` syntax (`info`, `switchboard=debug`); `RUST_LOG` overrides it.
    pub level: String,
    /// `text` (human-readable) or `json` (one object per line).
    pub format: LogFormat,
    /// Where a daemon (`start -d`) and its children write their log; relative to
    /// `data_dir`. In the foreground, logs go to standard error.
    pub file: PathBuf,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
            file: PathBuf::from("run/switchboard.log"),
        }
    }
}

/// How a gateway chooses the worker for a client's event (`gateway.routing`). Either
/// way a client has one event at a worker at a time, so its events are handled in
/// order; the choice is which worker handles the next one.
///
/// ```
/// use switchboard::config::{Config, Routing};
/// let config = Config::from_toml("[gateway]\nrouting = \"least_busy\"", None).unwrap();
/// assert_eq!(config.gateway.routing, Routing::LeastBusy);
/// assert_eq!(Config::default().gateway.routing, Routing::Sticky);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Routing {
    /// A client's events go to the worker that handled its previous one, as long as
    /// that worker takes events (it is not draining, its link is up); its first event,
    /// and the next after its worker went, to the next worker in turn. GatewayWorker's
    /// `routerBind`.
    #[default]
    Sticky,
    /// Each event goes to the worker with the fewest events in flight from this
    /// gateway (ties: the next in turn), passing over a worker held up by a long
    /// handler — CPU work on its thread, a slow call: one that has events in flight and
    /// has acknowledged none for `gateway.held_up_after` — while another is not.
    LeastBusy,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// JSON lines.
    Json,
}

/// Supervisor settings (`[supervisor]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorConfig {
    /// How long `stop` waits for children to exit before killing them.
    #[serde(with = "crate::duration")]
    pub stop_timeout: Duration,
    /// First delay before restarting a child that died; doubles up to 30 s while the
    /// child keeps dying within a minute of its start.
    #[serde(with = "crate::duration")]
    pub restart_delay: Duration,
    /// The supervisor's pid file; relative to `data_dir`. `stop`, `reload` and `status`
    /// find the running supervisor through it.
    pub pid_file: PathBuf,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self {
            stop_timeout: Duration::from_secs(10),
            restart_delay: Duration::from_millis(500),
            pid_file: PathBuf::from("run/supervisor.pid"),
        }
    }
}

/// Statistics of business calls (`[statistic]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatisticConfig {
    /// Record `ctx.statistic(..)` reports; when false every guard does nothing.
    pub enabled: bool,
    /// How long per-minute figures and the failure log are kept (the original keeps
    /// 15 days).
    #[serde(with = "crate::duration")]
    pub retention: Duration,
    /// How often each process hands its figures to the supervisor (spool files).
    #[serde(with = "crate::duration")]
    pub flush_interval: Duration,
    /// Most distinct (module, interface) pairs one process records; reports for new
    /// pairs past it are dropped and counted.
    pub max_interfaces: usize,
    /// Most failure-log entries one process keeps between two flushes; more are
    /// counted as failures but not logged.
    pub max_failures: usize,
    /// Most entries the failure log keeps on disk (older ones are deleted).
    pub failure_log: usize,
    /// Most spool files waiting for the supervisor; past it batches are dropped and
    /// counted (a supervisor that is not running for a long time).
    pub max_spool_files: usize,
    /// This machine's name in the statistics; empty: the host name.
    pub host: String,
}

impl Default for StatisticConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            retention: Duration::from_secs(15 * 86_400),
            flush_interval: Duration::from_secs(1),
            max_interfaces: 1000,
            max_failures: 1000,
            failure_log: 100_000,
            max_spool_files: 10_000,
            host: String::new(),
        }
    }
}

/// The runtime's metrics (`[metrics]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Record the runtime's metrics; when false every recording call is a no-op and
    /// `/metrics` shows only what the supervisor knows itself.
    pub enabled: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// The admin listener (`[admin]`), served by the supervisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serve the admin listener at all.
    pub enabled: bool,
    /// Address of the dashboard and `/metrics`. A loopback address (127.0.0.0/8,
    /// ::1) needs no token; any other needs `token` or `token_file`. Port 0 picks a
    /// free port (written to `run/admin.addr`).
    pub listen: SocketAddr,
    /// Bearer token every request must carry (`Authorization: Bearer TOKEN`). When
    /// set it is required on loopback too.
    pub token: Option<String>,
    /// A file whose first line is the token (relative to `data_dir`); instead of
    /// `token`, to keep it out of the configuration file.
    pub token_file: Option<PathBuf>,
    /// Largest request body the push API accepts, in bytes; larger ones get 413.
    pub max_body: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 55757),
            token: None,
            token_file: None,
            max_body: 1 << 20,
        }
    }
}

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key or a wrong type (the message names key and line).
    #[error("invalid config{}: {message}", origin.as_ref().map(|p| format!(" file {}", p.display())).unwrap_or_default())]
    Parse {
        /// The file, if any.
        origin: Option<PathBuf>,
        /// toml's message, with line and column.
        message: String,
    },
    /// A value that parses but cannot work.
    #[error("invalid config: {key}: {message}")]
    Invalid {
        /// Dotted key path.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// Prefix of environment variables that override configuration keys:
/// `SWITCHBOARD__WORKER__COUNT=4` sets `worker.count`, and
/// `SWITCHBOARD__GATEWAY__LISTENERS__0__LISTEN=0.0.0.0:8480` the first listener's address.
pub const ENV_PREFIX: &str = "SWITCHBOARD__";

/// Sets `key` (dotted path; array elements by index) to `value` in a TOML document.
///
/// `value` is read as a TOML value when it is one (`4`, `true`, `"x"`, `[1, 2]`) and as a
/// string otherwise (`127.0.0.1:8480`, `25s`).
///
/// Applications reach it through [`Config::from_toml_with`] (and the CLI's `--set`):
///
/// ```
/// use switchboard::Config;
/// let overrides = [
///     ("worker.count".to_string(), "4".to_string()),
///     ("gateway.listeners.0.listen".to_string(), "127.0.0.1:9000".to_string()),
/// ];
/// let config = Config::from_toml_with("[worker]\ncount = 2\n", None, &overrides).unwrap();
/// assert_eq!(config.worker.count, 4);
/// assert_eq!(config.gateway.listeners[0].listen.port(), 9000);
/// ```
pub fn apply_override(doc: &mut toml::Table, key: &str, value: &str) -> Result<(), ConfigError> {
    let bad = |message: String| ConfigError::Invalid {
        key: key.to_owned(),
        message,
    };
    let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_owned()));
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(bad(
            "an override key is a dotted path such as worker.count".into()
        ));
    }
    let mut node = doc;
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        if last {
            node.insert((*part).to_owned(), parsed);
            return Ok(());
        }
        let next = parts[i + 1];
        // A missing parent becomes a list when the next part is an index
        // (`gateway.listeners.0.listen` on a file with no listener), a table otherwise.
        let entry = node.entry((*part).to_owned()).or_insert_with(|| {
            if next.parse::<usize>().is_ok() {
                toml::Value::Array(Vec::new())
            } else {
                toml::Value::Table(toml::Table::new())
            }
        });
        node = match entry {
            toml::Value::Table(t) => t,
            toml::Value::Array(items) => {
                let idx: usize = next.parse().map_err(|_| {
                    bad(format!(
                        "{part} is a list; index it with a number, not {next:?}"
                    ))
                })?;
                if idx == items.len() {
                    items.push(toml::Value::Table(toml::Table::new()));
                }
                let len = items.len();
                let item = items
                    .get_mut(idx)
                    .ok_or_else(|| bad(format!("{part} has {len} entries; no index {idx}")))?;
                if i + 2 == parts.len() {
                    *item = parsed;
                    return Ok(());
                }
                // Skip the index part: continue inside the element.
                match item {
                    toml::Value::Table(t) => {
                        return apply_override(t, &parts[i + 2..].join("."), value).map_err(|e| {
                            match e {
                                ConfigError::Invalid { message, .. } => bad(message),
                                other => other,
                            }
                        })
                    }
                    _ => return Err(bad(format!("{part}.{idx} is not a table"))),
                }
            }
            _ => return Err(bad(format!("{part} is not a table"))),
        };
    }
    Ok(())
}

impl Config {
    /// Parses TOML text, applies overrides (`key=value` pairs, in order), and checks the
    /// result; `origin` names the file in errors.
    pub fn from_toml_with(
        text: &str,
        origin: Option<&Path>,
        overrides: &[(String, String)],
    ) -> Result<Self, ConfigError> {
        if overrides.is_empty() {
            return Self::from_toml(text, origin);
        }
        let mut doc: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.map(Path::to_path_buf),
            message: e.to_string(),
        })?;
        for (k, v) in overrides {
            apply_override(&mut doc, k, v)?;
        }
        let text = toml::to_string(&doc).map_err(|e| ConfigError::Invalid {
            key: "overrides".into(),
            message: e.to_string(),
        })?;
        Self::from_toml(&text, None).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Invalid {
                key: "overrides".into(),
                message: format!(
                    "after applying {}: {message}",
                    overrides
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            },
            other => other,
        })
    }

    /// Overrides from the environment (`SWITCHBOARD__SECTION__KEY=value`), sorted by key.
    pub fn env_overrides() -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = std::env::vars()
            .filter_map(|(k, val)| {
                k.strip_prefix(ENV_PREFIX).map(|rest| {
                    (
                        rest.split("__")
                            .map(str::to_lowercase)
                            .collect::<Vec<_>>()
                            .join("."),
                        val,
                    )
                })
            })
            .collect();
        v.sort();
        v
    }

    /// Parses TOML text; `origin` names the file in errors.
    pub fn from_toml(text: &str, origin: Option<&Path>) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.map(Path::to_path_buf),
            message: e.to_string(),
        })?;
        toml::from_str::<DbSection>(text).map_err(|e| ConfigError::Parse {
            origin: origin.map(Path::to_path_buf),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The `[db]` section, typed, with relative SQLite paths resolved against
    /// `data_dir`.
    pub fn db_config(&self) -> Result<switchboard_db::DbConfig, ConfigError> {
        let mut db: switchboard_db::DbConfig = toml::Value::Table(self.db.clone())
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid {
                key: "db".into(),
                message: e.to_string(),
            })?;
        for inst in db.instances.values_mut() {
            if let Some(path) = &inst.path {
                inst.path = Some(self.data_path(path));
            }
        }
        Ok(db)
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, Some(path))
    }

    /// The configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
    }

    /// The configuration with its secrets replaced by [`HIDDEN`], for printing:
    /// `secret` (unless it is the public default), `admin.token`, every
    /// `db.instances.*.password` that is set, and the password in Redis URLs (`***`).
    pub fn with_secrets_hidden(&self) -> Config {
        let mut c = self.clone();
        if !c.secret.is_empty() && c.secret != DEFAULT_SECRET {
            c.secret = HIDDEN.into();
        }
        if c.admin.token.is_some() {
            c.admin.token = Some(HIDDEN.into());
        }
        match &mut c.store {
            StoreConfig::Redis { url } => *url = hide_url_password(url),
            StoreConfig::RedisCluster { cluster } => {
                for url in cluster.iter_mut() {
                    *url = hide_url_password(url);
                }
            }
            _ => {}
        }
        if let Some(toml::Value::Table(instances)) = c.db.get_mut("instances") {
            for (_, instance) in instances.iter_mut() {
                if let Some(p) = instance.get_mut("password") {
                    if p.as_str().is_some_and(|v| !v.is_empty()) {
                        *p = toml::Value::String(HIDDEN.into());
                    }
                }
            }
        }
        c
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        };
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(invalid(
                "name",
                "must be non-empty ASCII letters, digits, '-', '_' or '.'",
            ));
        }
        if self.secret.is_empty() {
            return Err(invalid("secret", "must not be empty"));
        }
        if self.secret == DEFAULT_SECRET {
            if let Some((key, addr)) = self.internal_off_loopback() {
                return Err(invalid(
                    "secret",
                    &format!(
                        "is the public default {DEFAULT_SECRET:?}, and {key} ({addr}) is not a loopback address: anybody who can reach it could join the deployment as a worker or an API client; set secret to a long random string shared by every process (in the file, or SWITCHBOARD__SECRET)"
                    ),
                ));
            }
        }
        let hidden = |key: &str| {
            invalid(
                key,
                "is the placeholder `config print` shows for a hidden value, not a value; write the real one (`config print --show-secrets` prints it)",
            )
        };
        if self.secret == HIDDEN {
            return Err(hidden("secret"));
        }
        if self.admin.token.as_deref() == Some(HIDDEN) {
            return Err(hidden("admin.token"));
        }
        if let Some(toml::Value::Table(instances)) = self.db.get("instances") {
            for (name, instance) in instances {
                if instance.get("password").and_then(toml::Value::as_str) == Some(HIDDEN) {
                    return Err(hidden(&format!("db.instances.{name}.password")));
                }
            }
        }
        if self.gateway.listeners.is_empty() && self.gateway.count > 0 {
            return Err(invalid(
                "gateway.listeners",
                "at least one listener is needed",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, l) in self.gateway.listeners.iter().enumerate() {
            let key = |k: &str| format!("gateway.listeners[{i}].{k}");
            if !names.insert(l.name.as_str()) {
                return Err(invalid(
                    &key("name"),
                    &format!(
                        "{:?} is the name of an earlier listener; names must differ",
                        l.name
                    ),
                ));
            }
            if l.max_message() == 0 {
                return Err(invalid(&key("max_message"), "must be at least 1"));
            }
            if l.max_connect_rate == Some(0) {
                return Err(invalid(
                    &key("max_connect_rate"),
                    "must be at least 1 (leave it unset for no limit of its own)",
                ));
            }
            if l.max_connections == Some(0) {
                return Err(invalid(
                    &key("max_connections"),
                    "must be at least 1 (leave it unset for no limit of its own)",
                ));
            }
            match (l.transport(), &l.tls) {
                (Transport::Tls, None) => {
                    return Err(invalid(
                        &key("tls"),
                        "transport \"tls\" needs tls = { cert = \"...pem\", key = \"...pem\" }",
                    ))
                }
                (Transport::Tcp, Some(_)) => {
                    return Err(invalid(
                        &key("transport"),
                        "is \"tcp\" but a tls table is given; remove one of them",
                    ))
                }
                _ => {}
            }
            if l.handshake_timeout.is_zero() {
                return Err(invalid(
                    &key("handshake_timeout"),
                    "must be greater than zero",
                ));
            }
            let websocket = l.protocol == ClientProtocol::WebSocket;
            if !websocket && !l.allowed_origins.is_empty() {
                return Err(invalid(
                    &key("allowed_origins"),
                    "applies to websocket listeners only",
                ));
            }
            if !websocket && !l.trusted_proxies.is_empty() {
                return Err(invalid(
                    &key("trusted_proxies"),
                    "applies to websocket listeners only",
                ));
            }
            let hb = l.heartbeat(&self.gateway.heartbeat);
            if hb.interval.is_zero() {
                return Err(invalid(
                    &key("heartbeat.interval"),
                    "must be greater than zero",
                ));
            }
            if hb.interval.saturating_mul(hb.idle_intervals) > MAX_SILENCE {
                return Err(invalid(
                    &key("heartbeat.idle_intervals"),
                    "interval × idle_intervals is over 180 days, the longest silence a gateway measures",
                ));
            }
            if !websocket && hb.ping.as_deref() == Some("frame") {
                return Err(invalid(
                    &key("heartbeat.ping"),
                    "\"frame\" means WebSocket ping frames; this listener's protocol is not websocket",
                ));
            }
        }
        if self.gateway.heartbeat.interval.is_zero() {
            return Err(invalid(
                "gateway.heartbeat.interval",
                "must be greater than zero",
            ));
        }
        if self.gateway.link_ping_interval.is_zero() {
            return Err(invalid(
                "gateway.link_ping_interval",
                "must be greater than zero",
            ));
        }
        if self.gateway.flush_timeout.is_zero() {
            return Err(invalid(
                "gateway.flush_timeout",
                "must be greater than zero",
            ));
        }
        let pacing = self.gateway.min_write_interval;
        if pacing > MAX_WRITE_INTERVAL {
            return Err(invalid(
                "gateway.min_write_interval",
                "must be at most 1s (it delays messages by up to that much)",
            ));
        }
        if !pacing.is_zero() && pacing < Duration::from_millis(1) {
            return Err(invalid(
                "gateway.min_write_interval",
                "must be 0 (off) or at least 1ms (writes are timed in milliseconds)",
            ));
        }
        if self.gateway.held_up_after > MAX_HELD_UP_AFTER {
            return Err(invalid(
                "gateway.held_up_after",
                "must be at most 60s, or 0 to turn it off",
            ));
        }
        if self.gateway.max_unauthenticated == 0 {
            return Err(invalid(
                "gateway.max_unauthenticated",
                "must be at least 1 (workers authenticate through it)",
            ));
        }
        if self.worker.link_timeout.is_zero() {
            return Err(invalid("worker.link_timeout", "must be greater than zero"));
        }
        if self.gateway.max_internal_frame < 1024 {
            return Err(invalid(
                "gateway.max_internal_frame",
                "must be at least 1024 bytes",
            ));
        }
        if u32::try_from(self.gateway.outbound_limit).is_err() {
            return Err(invalid(
                "gateway.outbound_limit",
                "must be at most 4294967295 bytes (4 GiB)",
            ));
        }
        if self.gateway.max_session < 64 {
            return Err(invalid("gateway.max_session", "must be at least 64 bytes"));
        }
        if self.gateway.link_queue_limit < self.gateway.max_internal_frame {
            return Err(invalid(
                "gateway.link_queue_limit",
                &format!(
                    "must be at least gateway.max_internal_frame ({} bytes): one frame must fit",
                    self.gateway.max_internal_frame
                ),
            ));
        }
        for l in &self.gateway.listeners {
            let needed = l.max_message() + self.gateway.max_session + EVENT_HEADROOM;
            if needed > self.gateway.max_internal_frame {
                return Err(invalid(
                    "gateway.max_internal_frame",
                    &format!(
                        "{} bytes cannot carry an event of listener {:?}: its max_message ({}) + gateway.max_session ({}) + {} bytes of headers need {needed}",
                        self.gateway.max_internal_frame,
                        l.name,
                        l.max_message(),
                        self.gateway.max_session,
                        EVENT_HEADROOM
                    ),
                ));
            }
        }
        let db = self.db_config()?;
        for (name, inst) in &db.instances {
            inst.validate(name)
                .map_err(|e| invalid(&format!("db.instances.{name}"), &e.to_string()))?;
        }
        if self.worker.query_timeout.is_zero() {
            return Err(invalid("worker.query_timeout", "must be greater than zero"));
        }
        let st = &self.statistic;
        if st.flush_interval.is_zero() {
            return Err(invalid(
                "statistic.flush_interval",
                "must be greater than zero",
            ));
        }
        if st.retention < Duration::from_secs(60) {
            return Err(invalid("statistic.retention", "must be at least 1m"));
        }
        for (key, v) in [
            ("statistic.max_interfaces", st.max_interfaces),
            ("statistic.max_failures", st.max_failures),
            ("statistic.failure_log", st.failure_log),
            ("statistic.max_spool_files", st.max_spool_files),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if self.admin.max_body < 1024 {
            return Err(invalid("admin.max_body", "must be at least 1024"));
        }
        self.admin_token()?;
        Ok(())
    }

    /// The first internal address of this configuration that is not on loopback, with
    /// its key: the internal listener of each gateway process (`gateway.count` of them,
    /// ports derived from `gateway.internal_listen`), then `gateway.internal_advertise`.
    pub fn internal_off_loopback(&self) -> Option<(String, String)> {
        for i in 0..self.gateway.count {
            let addr = self.gateway.internal_listen_for(i);
            if !addr.ip().is_loopback() {
                let key = if self.gateway.count > 1 {
                    format!("gateway.internal_listen of gateway {i}")
                } else {
                    "gateway.internal_listen".to_owned()
                };
                return Some((key, addr.to_string()));
            }
        }
        match self.gateway.internal_advertise {
            Some(ip) if !ip.is_loopback() => {
                Some(("gateway.internal_advertise".to_owned(), ip.to_string()))
            }
            _ => None,
        }
    }

    /// A warning for a configuration that runs with the public default secret: allowed
    /// (validation refuses it when an internal address is off loopback), but never
    /// what a deployment should keep.
    pub fn secret_warning(&self) -> Option<String> {
        (self.secret == DEFAULT_SECRET).then(|| {
            format!(
                "secret is the public default {DEFAULT_SECRET:?}: accepted because every internal listener is on loopback; set your own before workers or API clients connect from another machine (it is refused then)"
            )
        })
    }

    /// The admin listener's token: `admin.token`, or the first line of
    /// `admin.token_file`. An error when the listener is not on loopback and has no
    /// token, or when the file cannot be read or is empty.
    pub fn admin_token(&self) -> Result<Option<String>, ConfigError> {
        let a = &self.admin;
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.into(),
            message,
        };
        if a.token.is_some() && a.token_file.is_some() {
            return Err(invalid(
                "admin.token",
                "set admin.token or admin.token_file, not both".into(),
            ));
        }
        let token = match (&a.token, &a.token_file) {
            (Some(t), _) => Some(t.trim().to_owned()),
            (None, Some(f)) => {
                let path = self.data_path(f);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    invalid(
                        "admin.token_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                Some(text.lines().next().unwrap_or("").trim().to_owned())
            }
            (None, None) => None,
        };
        if let Some(t) = &token {
            if t.is_empty() {
                let key = if a.token.is_some() {
                    "admin.token"
                } else {
                    "admin.token_file"
                };
                return Err(invalid(key, "the token is empty".into()));
            }
        }
        if a.enabled && token.is_none() && !a.listen.ip().is_loopback() {
            return Err(invalid(
                "admin.token",
                format!(
                    "the admin listener binds {}, which is not a loopback address; set admin.token or admin.token_file (or bind 127.0.0.1)",
                    a.listen
                ),
            ));
        }
        Ok(token)
    }

    /// Checks that this binary was built with the store backend and the database
    /// drivers the configuration names (cargo features); the error names the key and
    /// the feature to enable. Run by `config check` and `start`, before anything starts.
    pub fn check_compiled(&self) -> Result<(), ConfigError> {
        self.store
            .check_compiled()
            .map_err(|e| ConfigError::Invalid {
                key: "store.backend".into(),
                message: e.to_string(),
            })?;
        for (name, inst) in &self.db_config()?.instances {
            if !inst.driver.is_compiled() {
                return Err(ConfigError::Invalid {
                    key: format!("db.instances.{name}.driver"),
                    message: format!(
                        "database driver \"{}\" is not compiled into this binary; enable the switchboard feature \"{}\"",
                        inst.driver.name(),
                        inst.driver.feature()
                    ),
                });
            }
        }
        Ok(())
    }

    /// `path` resolved against `data_dir` when relative.
    pub fn data_path(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.data_dir.join(path)
        }
    }

    /// The store configuration with a relative file path resolved against `data_dir`.
    pub fn resolved_store(&self) -> StoreConfig {
        match &self.store {
            StoreConfig::File { path } => StoreConfig::File {
                path: self.data_path(path),
            },
            other => other.clone(),
        }
    }

    /// TLS files with relative paths resolved against `data_dir`.
    pub fn tls_files(&self, files: &TlsFiles) -> TlsFiles {
        TlsFiles {
            cert: self.data_path(&files.cert),
            key: self.data_path(&files.key),
        }
    }

    /// `[worker.internal_tls]` with its CA path resolved against `data_dir`.
    pub fn internal_tls_client(&self, c: &InternalTlsClient) -> InternalTlsClient {
        InternalTlsClient {
            ca: self.data_path(&c.ca),
            server_name: c.server_name.clone(),
        }
    }

    /// The supervisor's pid file.
    pub fn pid_file(&self) -> PathBuf {
        self.data_path(&self.supervisor.pid_file)
    }

    /// The daemon's log file.
    pub fn log_file(&self) -> PathBuf {
        self.data_path(&self.log.file)
    }

    /// The supervisor's statistics database.
    pub fn statistic_db(&self) -> PathBuf {
        self.data_dir.join("statistics.sqlite")
    }

    /// Directory of run-time files (pid file, per-process stats).
    pub fn run_dir(&self) -> PathBuf {
        self.data_dir.join("run")
    }
}

impl Default for Config {
    fn default() -> Self {
        // An empty document gives every default.
        toml::from_str("").unwrap_or_else(|_| unreachable!("the empty config is valid"))
    }
}

/// An allocator a process can run on (`gateway.allocator`, `worker.allocator`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AllocatorKind {
    /// The C library's `malloc` (glibc's on Linux): the least memory per idle client.
    System,
    /// [mimalloc](https://github.com/microsoft/mimalloc): less CPU per allocation.
    /// Needs the `mimalloc` feature (on by default) and `switchboard::alloc::Allocator`
    /// installed.
    Mimalloc,
}

impl AllocatorKind {
    /// The value of `SWITCHBOARD_ALLOCATOR` (`switchboard::alloc::ENV`) that selects it.
    pub fn env_value(self) -> &'static str {
        match self {
            AllocatorKind::System => "system",
            AllocatorKind::Mimalloc => "mimalloc",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error a configuration is refused with, as the operator reads it.
    fn refusal(toml: &str) -> String {
        Config::from_toml(toml, None).unwrap_err().to_string()
    }

    #[test]
    fn empty_file_is_all_defaults() {
        let c = Config::from_toml("", None).unwrap();
        assert_eq!(c.gateway.count, 1);
        assert_eq!(c.worker.count, 2);
        assert_eq!(c.gateway.listeners[0].listen.port(), 8480);
        assert_eq!(c.gateway.listeners[0].max_message(), 65536);
    }

    #[test]
    fn the_default_secret_is_refused_off_loopback_and_warned_about_on_it() {
        let c = Config::from_toml("", None).unwrap();
        assert!(c.secret_warning().unwrap().contains("change-me"));
        for (toml, key) in [
            ("[gateway]\ninternal_listen = \"0.0.0.0:0\"", "gateway.internal_listen"),
            ("[gateway]\ninternal_listen = \"[::]:0\"", "gateway.internal_listen"),
            (
                "[gateway]\ncount = 3\ninternal_listen = \"10.0.0.1:7000\"\n[[gateway.listeners]]\nlisten = \"127.0.0.1:9000\"",
                "gateway.internal_listen of gateway 0 (10.0.0.1:7000)",
            ),
            ("[gateway]\ninternal_advertise = \"10.0.0.1\"", "gateway.internal_advertise"),
            (
                "secret = \"change-me\"\n[gateway]\ninternal_listen = \"192.0.2.1:0\"",
                "gateway.internal_listen",
            ),
        ] {
            let msg = refusal(toml);
            assert!(
                msg.contains("secret") && msg.contains("change-me") && msg.contains(key),
                "{toml}: {msg}"
            );
        }
        let own = "secret = \"a long one\"\n[gateway]\ninternal_listen = \"0.0.0.0:0\"";
        let c = Config::from_toml(own, None).unwrap();
        assert_eq!(c.secret_warning(), None);
        // All of 127/8 and ::1 are loopback.
        for listen in ["127.0.0.2:0", "[::1]:0"] {
            let toml = format!("[gateway]\ninternal_listen = \"{listen}\"");
            assert!(Config::from_toml(&toml, None).is_ok(), "{listen}");
        }
    }

    #[test]
    fn an_event_must_fit_in_an_internal_frame() {
        // The default text listener: 64 KiB lines, 64 KiB sessions.
        let msg = refusal("[gateway]\nmax_internal_frame = 100000");
        assert!(
            msg.contains("gateway.max_internal_frame")
                && msg.contains("max_message (65536)")
                && msg.contains("gateway.max_session (65536)"),
            "{msg}"
        );
        let fits = "[gateway]\nmax_internal_frame = 100000\nmax_session = 16384";
        assert_eq!(
            Config::from_toml(fits, None).unwrap().gateway.max_session,
            16384
        );
        // Each refused with the key named (and, for the last, why).
        for (toml, needles) in [
            ("[gateway]\nmax_session = 10", &["gateway.max_session"][..]),
            (
                "[gateway]\noutbound_limit = 4294967296",
                &["gateway.outbound_limit"],
            ),
            (
                "[gateway.heartbeat]\ninterval = \"86400s\"\nidle_intervals = 181",
                &["heartbeat.idle_intervals"],
            ),
            (
                "[gateway]\nlink_queue_limit = 1000",
                &["gateway.link_queue_limit"],
            ),
            (
                "[gateway]\nmin_write_interval = \"1001ms\"",
                &["gateway.min_write_interval"],
            ),
            (
                "[gateway]\nmin_write_interval = \"500us\"",
                &["gateway.min_write_interval", "at least 1ms"],
            ),
            (
                "[gateway]\nheld_up_after = \"61s\"",
                &["gateway.held_up_after", "at most 60s"],
            ),
        ] {
            let msg = refusal(toml);
            assert!(needles.iter().all(|n| msg.contains(n)), "{toml}: {msg}");
        }
        let paced = Config::from_toml("[gateway]\nmin_write_interval = \"10ms\"", None).unwrap();
        assert_eq!(paced.gateway.min_write_interval, Duration::from_millis(10));
    }

    #[test]
    fn url_passwords_are_hidden_and_the_rest_kept() {
        for (url, shown) in [
            ("redis://u:pw@h:6379/0", "redis://u:***@h:6379/0"),
            ("redis://:pw@h", "redis://:***@h"),
            ("rediss://u:p@ss@h/1", "rediss://u:***@h/1"),
            ("redis://h:6379", "redis://h:6379"),
            ("redis://u@h", "redis://u@h"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(hide_url_password(url), shown, "{url}");
        }
    }

    #[test]
    fn printed_config_parses_back() {
        let c = Config::default();
        assert_eq!(Config::from_toml(&c.to_toml(), None).unwrap(), c);
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let err = Config::from_toml("name = \"x\"\n[gateway]\ncuont = 2\n", None).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("cuont"), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");
    }

    #[test]
    fn wrong_type_and_bad_address() {
        let msg = refusal("[worker]\ncount = \"two\"\n");
        assert!(msg.contains("count") && msg.contains("line 2"), "{msg}");
        let msg = refusal("[[gateway.listeners]]\nlisten = \"nowhere:99999\"\n");
        assert!(msg.contains("listen"), "{msg}");
    }

    #[test]
    fn allocators_default_per_role_and_a_bad_one_names_its_line() {
        let c = Config::from_toml("", None).unwrap();
        assert_eq!(c.gateway.effective_allocator(), AllocatorKind::System);
        assert_eq!(c.worker.effective_allocator(), AllocatorKind::Mimalloc);
        let c = Config::from_toml(
            "[gateway]\nallocator = \"mimalloc\"\n[worker]\nallocator = \"system\"\n",
            None,
        )
        .unwrap();
        assert_eq!(c.gateway.effective_allocator(), AllocatorKind::Mimalloc);
        assert_eq!(c.worker.effective_allocator(), AllocatorKind::System);
        let msg = refusal("[worker]\ncount = 2\nallocator = \"jemalloc\"\n");
        assert!(
            msg.contains("line 3") && msg.contains("`system` or `mimalloc`"),
            "{msg}"
        );
    }

    #[test]
    fn a_bare_zero_is_a_duration_and_other_bare_numbers_name_the_missing_unit() {
        // From the environment a value is typed as TOML: `0` is an integer.
        let mut doc = toml::Table::new();
        apply_override(&mut doc, "gateway.held_up_after", "0").unwrap();
        apply_override(&mut doc, "gateway.min_write_interval", "0").unwrap();
        let c = Config::from_toml(&toml::to_string(&doc).unwrap(), None).unwrap();
        assert_eq!(c.gateway.held_up_after, Duration::ZERO);
        assert_eq!(c.gateway.min_write_interval, Duration::ZERO);
        let msg = refusal("[gateway]\ncount = 1\nhold_timeout = 30\n");
        assert!(
            msg.contains("line 3") && msg.contains("30 has no unit") && msg.contains("\"30s\""),
            "{msg}"
        );
    }

    #[test]
    fn a_routing_other_than_the_two_names_its_line_and_the_choices() {
        let msg = refusal("[gateway]\ncount = 1\nrouting = \"random\"\n");
        assert!(
            msg.contains("line 3") && msg.contains("`sticky` or `least_busy`"),
            "{msg}"
        );
        let mut doc = toml::Table::new();
        apply_override(&mut doc, "gateway.routing", "least_busy").unwrap();
        let c = Config::from_toml(&toml::to_string(&doc).unwrap(), None).unwrap();
        assert_eq!(c.gateway.routing, Routing::LeastBusy);
    }

    #[test]
    fn db_section_is_checked_with_line_numbers() {
        let ok = Config::from_toml(
            "[db.instances.h]\ndriver = \"sqlite\"\npath = \"h.sqlite\"\n",
            None,
        )
        .unwrap();
        let db = ok.db_config().unwrap();
        assert_eq!(
            db.instances["h"].path.as_deref(),
            Some(Path::new("data/h.sqlite"))
        );
        let msg = Config::from_toml(
            "[db.instances.h]\ndriver = \"sqlite\"\npaht = \"x\"\n",
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(msg.contains("paht") && msg.contains("line 3"), "{msg}");
    }

    #[test]
    fn overrides_set_nested_keys_and_list_entries() {
        let base = "[worker]\ncount = 2\n[[gateway.listeners]]\nlisten = \"127.0.0.1:8480\"\n";
        let o = |k: &str, v: &str| (k.to_string(), v.to_string());
        let c = Config::from_toml_with(
            base,
            None,
            &[
                o("worker.count", "5"),
                o("gateway.listeners.0.listen", "127.0.0.1:9000"),
                o("gateway.heartbeat.interval", "3s"),
            ],
        )
        .unwrap();
        assert_eq!(c.worker.count, 5);
        assert_eq!(c.gateway.listeners[0].listen.port(), 9000);
        assert_eq!(c.gateway.heartbeat.interval, Duration::from_secs(3));
        let err = Config::from_toml_with(base, None, &[o("worker.cuont", "5")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cuont") && err.contains("worker.cuont=5"),
            "{err}"
        );
        let err = Config::from_toml_with(base, None, &[o("gateway.listeners.7.listen", "x")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("no index 7"), "{err}");
    }

    #[test]
    fn an_indexed_override_creates_the_list_it_names() {
        let o = |k: &str, v: &str| (k.to_string(), v.to_string());
        let c = Config::from_toml_with(
            "name = \"x\"\n",
            None,
            &[o("gateway.listeners.0.listen", "127.0.0.1:9001")],
        )
        .unwrap();
        assert_eq!(c.gateway.listeners.len(), 1);
        assert_eq!(c.gateway.listeners[0].listen.port(), 9001);
        assert_eq!(c.gateway.listeners[0].name, "main");
    }

    #[test]
    fn an_admin_listener_off_loopback_needs_a_token() {
        let c = Config::from_toml("", None).unwrap();
        assert_eq!(c.admin.listen.to_string(), "127.0.0.1:55757");
        assert_eq!(c.admin_token().unwrap(), None);
        // The whole 127/8 and ::1 are loopback.
        Config::from_toml("[admin]\nlisten = \"127.0.0.2:1\"\n", None).unwrap();
        Config::from_toml("[admin]\nlisten = \"[::1]:1\"\n", None).unwrap();
        let msg = refusal("[admin]\nlisten = \"0.0.0.0:55757\"\n");
        assert!(
            msg.contains("admin.token") && msg.contains("0.0.0.0:55757"),
            "{msg}"
        );
        let c = Config::from_toml(
            "[admin]\nlisten = \"0.0.0.0:1\"\ntoken = \"s3cret\"\n",
            None,
        )
        .unwrap();
        assert_eq!(c.admin_token().unwrap().as_deref(), Some("s3cret"));
        let msg = Config::from_toml(
            "[admin]\nlisten = \"0.0.0.0:1\"\ntoken_file = \"/nonexistent/token\"\n",
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            msg.contains("admin.token_file") && msg.contains("/nonexistent/token"),
            "{msg}"
        );
        let msg = refusal("[admin]\ntoken = \" \"\n");
        assert!(msg.contains("admin.token: the token is empty"), "{msg}");
    }

    #[test]
    fn statistic_defaults_follow_the_original() {
        let c = Config::default();
        assert_eq!(c.statistic.retention, Duration::from_secs(15 * 86_400));
        assert!(c.statistic.enabled && c.metrics.enabled && c.admin.enabled);
        let msg = refusal("[statistic]\nretention = \"1s\"\n");
        assert!(msg.contains("statistic.retention"), "{msg}");
    }

    #[test]
    fn port_zero_is_accepted_for_several_gateways() {
        // The supervisor picks one port for all of them (supervisor.rs).
        let c = Config::from_toml(
            "[gateway]\ncount = 2\n[[gateway.listeners]]\nlisten = \"127.0.0.1:0\"\n",
            None,
        )
        .unwrap();
        assert_eq!(c.gateway.listeners[0].listen.port(), 0);
    }
}
