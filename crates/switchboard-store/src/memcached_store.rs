//! The `memcached` backend: one or more servers, keys spread by consistent hashing. See [`MemcachedStore`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_memcached::{AsciiProtocol, Client, Error as McError, ErrorKind, MetaProtocol, Status};
use async_trait::async_trait;
use md5::{Digest, Md5};
use tokio::sync::Mutex;

use crate::{validate_key, CasToken, Result, Store, StoreError};

/// Connections kept per server.
pub const POOL_SIZE: usize = 4;
/// The longest any operation waits, connecting included.
pub const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// Connect timeout of one attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Points per server on the ring (40 MD5 digests × 4 points, as in ketama).
const POINTS_PER_SERVER: usize = 160;
/// memcached reads an expiry above this many seconds as an absolute unix time.
const MAX_RELATIVE_TTL: u64 = 30 * 24 * 3600;

/// A ketama-style consistent-hash ring over server indexes.
///
/// Adding or removing one server moves only the keys of that server's arcs; every
/// process with the same server list maps every key to the same server.
#[derive(Debug, Clone)]
pub(crate) struct Ring {
    points: Vec<(u32, usize)>,
}

impl Ring {
    /// A ring over `servers` (their names are what is hashed, so order does not matter).
    pub(crate) fn new<S: AsRef<str>>(servers: &[S]) -> Self {
        let mut points = Vec::with_capacity(servers.len() * POINTS_PER_SERVER);
        for (index, server) in servers.iter().enumerate() {
            for i in 0..POINTS_PER_SERVER / 4 {
                let digest = Md5::digest(format!("{}-{i}", server.as_ref()).as_bytes());
                for chunk in digest.chunks_exact(4) {
                    let point = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
                    points.push((point, index));
                }
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    /// The index of the server that holds `key`, or `None` for an empty ring.
    pub(crate) fn server_for(&self, key: &str) -> Option<usize> {
        let digest = Md5::digest(key.as_bytes());
        let hash = u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]]);
        let at = self.points.partition_point(|&(p, _)| p < hash);
        self.points
            .get(at)
            .or_else(|| self.points.first())
            .map(|&(_, index)| index)
    }
}

/// One server's connection pool.
struct Server {
    /// `host:port`, as configured (used in errors).
    addr: String,
    /// The client's data source name: `tcp://host:port` (or a `unix://` path).
    dsn: String,
    slots: Vec<Mutex<Option<Client>>>,
    next: AtomicUsize,
}

/// The `memcached` backend: one or more servers, keys spread by consistent hashing.
///
/// - Client: `async-memcached` (Shopify), the ASCII protocol for set/add/delete/incr
///   and the meta protocol (`mg`/`ms`, memcached ≥ 1.6) for CAS tokens.
/// - A small pool of connections per server (4); a connection that fails
///   or times out is dropped and a new one is made by the next operation, so the store
///   recovers by itself when a server comes back.
/// - Keys go to servers through a ketama-style ring (160 points per server, MD5).
/// - TTLs are whole seconds, rounded **up**, plus one second: memcached's clock ticks
///   once a second, so an item with TTL *n* lives between *n − 1* and *n* seconds; the
///   extra second makes it live at least as long as asked (at most 2 s longer). TTLs
///   over 30 days are sent as absolute unix times, as memcached requires.
/// - `scan_prefix` is [`StoreError::Unsupported`]: memcached cannot list keys.
/// - Every operation is bounded by 3 s; a server that is down gives
///   [`StoreError::Backend`] naming it.
pub struct MemcachedStore {
    servers: Vec<Server>,
    ring: Ring,
}

/// What went wrong talking to one server.
enum OpError {
    /// The server answered with an error; the connection is still good.
    Server(McError),
    /// The connection failed or timed out and was dropped.
    Transport(String),
}

impl MemcachedStore {
    /// Prepares a store over `servers` (`host:port` each); connects on first use.
    ///
    /// An empty or duplicated server list is [`StoreError::Config`].
    pub fn open(servers: &[String]) -> Result<Self> {
        if servers.is_empty() {
            return Err(StoreError::Config(
                "the memcached store needs at least one server".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for s in servers {
            if s.trim().is_empty() || !seen.insert(s.as_str()) {
                return Err(StoreError::Config(format!(
                    "bad or duplicate memcached server {s:?} in {servers:?}"
                )));
            }
        }
        Ok(MemcachedStore {
            servers: servers
                .iter()
                .map(|addr| Server {
                    addr: addr.clone(),
                    dsn: if addr.contains("://") {
                        addr.clone()
                    } else {
                        format!("tcp://{addr}")
                    },
                    slots: (0..POOL_SIZE).map(|_| Mutex::new(None)).collect(),
                    next: AtomicUsize::new(0),
                })
                .collect(),
            ring: Ring::new(servers),
        })
    }

    fn server_for(&self, key: &str) -> &Server {
        let index = self.ring.server_for(key).unwrap_or(0);
        &self.servers[index.min(self.servers.len() - 1)]
    }

    /// Runs `f` on a pooled connection to the server of `key`, within [`OP_TIMEOUT`].
    async fn run<T, F>(&self, key: &str, op: &'static str, f: F) -> Result<T>
    where
        F: for<'c> FnOnce(
            &'c mut Client,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, McError>> + Send + 'c>,
        >,
    {
        let server = self.server_for(key);
        match run_on(server, f).await {
            Ok(v) => Ok(v),
            Err(OpError::Server(e)) => Err(map_server_error(server, key, op, e)),
            Err(OpError::Transport(reason)) => Err(backend_error(server, op, reason)),
        }
    }
}

/// Picks a free connection of `server` (or waits for one), connecting if needed.
async fn run_on<T, F>(server: &Server, f: F) -> Result<T, OpError>
where
    F: for<'c> FnOnce(
        &'c mut Client,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<T, McError>> + Send + 'c>,
    >,
{
    let work = async {
        let mut slot = match server.slots.iter().find_map(|s| s.try_lock().ok()) {
            Some(slot) => slot,
            None => {
                let i = server.next.fetch_add(1, Ordering::Relaxed) % server.slots.len();
                server.slots[i].lock().await
            }
        };
        if slot.as_ref().is_none_or(Client::is_closed) {
            *slot = None;
            let client = tokio::time::timeout(CONNECT_TIMEOUT, Client::new(&server.dsn))
                .await
                .map_err(|_| {
                    OpError::Transport(format!("connect timed out after {CONNECT_TIMEOUT:?}"))
                })?
                .map_err(|e| OpError::Transport(e.to_string()))?;
            *slot = Some(client);
        }
        let Some(client) = slot.as_mut() else {
            return Err(OpError::Transport("no connection".into()));
        };
        match f(client).await {
            Ok(v) => Ok(v),
            Err(e @ McError::Protocol(_)) => Err(OpError::Server(e)),
            Err(e) => {
                *slot = None;
                Err(OpError::Transport(e.to_string()))
            }
        }
    };
    // On timeout the pending operation is dropped with its lock; the client notices the
    // incomplete operation and closes itself, so the next use reconnects.
    tokio::time::timeout(OP_TIMEOUT, work)
        .await
        .map_err(|_| OpError::Transport(format!("timed out after {OP_TIMEOUT:?}")))?
}

fn backend_error(server: &Server, op: &str, reason: String) -> StoreError {
    StoreError::Backend {
        backend: "memcached",
        target: server.addr.clone(),
        reason: format!("{op}: {reason}"),
    }
}

fn map_server_error(server: &Server, key: &str, op: &str, e: McError) -> StoreError {
    match &e {
        McError::Protocol(Status::Error(ErrorKind::Client(msg))) if msg.contains("non-numeric") => {
            StoreError::NotANumber {
                key: key.to_owned(),
            }
        }
        McError::Protocol(Status::Error(ErrorKind::KeyTooLong)) => StoreError::InvalidKey {
            key: key.chars().take(64).collect(),
            reason: "memcached refused the key as too long",
        },
        _ => backend_error(server, op, e.to_string()),
    }
}

/// The expiry to send for `ttl`: 0 for none; see the module docs for the rounding.
fn exptime(ttl: Option<Duration>) -> i64 {
    let Some(ttl) = ttl else { return 0 };
    let mut secs = ttl.as_secs();
    if ttl.subsec_nanos() > 0 {
        secs += 1;
    }
    let secs = secs.saturating_add(1);
    let value = if secs > MAX_RELATIVE_TTL {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        now.saturating_add(secs)
    } else {
        secs
    };
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn is_status(e: &McError, status: Status) -> bool {
    matches!(e, McError::Protocol(s) if *s == status)
}

#[async_trait]
impl Store for MemcachedStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        validate_key(key)?;
        let k = key.to_owned();
        let item = self
            .run(key, "get", move |c| {
                Box::pin(async move { c.meta_get(&k, false, None, Some(&["v"])).await })
            })
            .await?;
        Ok(item.map(|v| v.data.unwrap_or_default()))
    }

    async fn gets(&self, key: &str) -> Result<Option<(Vec<u8>, CasToken)>> {
        validate_key(key)?;
        let k = key.to_owned();
        let item = self
            .run(key, "gets", move |c| {
                Box::pin(async move { c.meta_get(&k, false, None, Some(&["v", "c"])).await })
            })
            .await?;
        match item {
            None => Ok(None),
            Some(v) => match v.cas {
                Some(cas) => Ok(Some((v.data.unwrap_or_default(), CasToken(cas)))),
                None => Err(StoreError::Corrupt {
                    key: key.to_owned(),
                    reason: "memcached returned no CAS value".into(),
                }),
            },
        }
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        validate_key(key)?;
        let (k, v) = (key.to_owned(), value.to_vec());
        self.run(key, "set", move |c| {
            Box::pin(async move { c.set(&k, v.as_slice(), Some(exptime(ttl)), None).await })
        })
        .await
    }

    async fn add(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<bool> {
        validate_key(key)?;
        let (k, v) = (key.to_owned(), value.to_vec());
        self.run(key, "add", move |c| {
            Box::pin(async move {
                match c.add(&k, v.as_slice(), Some(exptime(ttl)), None).await {
                    Ok(()) => Ok(true),
                    Err(e) if is_status(&e, Status::NotStored) => Ok(false),
                    Err(e) => Err(e),
                }
            })
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        validate_key(key)?;
        let k = key.to_owned();
        self.run(key, "delete", move |c| {
            Box::pin(async move {
                match c.delete(&k).await {
                    Ok(()) => Ok(true),
                    Err(e) if is_status(&e, Status::NotFound) => Ok(false),
                    Err(e) => Err(e),
                }
            })
        })
        .await
    }

    async fn increment(&self, key: &str, delta: u64) -> Result<u64> {
        validate_key(key)?;
        let k = key.to_owned();
        // incr; on a miss create "0" with add (losing that race is fine) and incr again.
        self.run(key, "increment", move |c| {
            Box::pin(async move {
                let mut last = None;
                for _ in 0..3 {
                    match c.increment(&k, delta).await {
                        Ok(n) => return Ok(n),
                        Err(e) if is_status(&e, Status::NotFound) => last = Some(e),
                        Err(e) => return Err(e),
                    }
                    match c.add(&k, "0", Some(0), None).await {
                        Ok(()) => {}
                        Err(e) if is_status(&e, Status::NotStored) => {}
                        Err(e) => return Err(e),
                    }
                }
                Err(last.unwrap_or(McError::Protocol(Status::NotFound)))
            })
        })
        .await
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        token: CasToken,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool> {
        validate_key(key)?;
        let (k, v) = (key.to_owned(), value.to_vec());
        self.run(key, "compare_and_swap", move |c| {
            Box::pin(async move {
                let cas = format!("C{}", token.0);
                let ttl = format!("T{}", exptime(ttl));
                match c
                    .meta_set(&k, v.as_slice(), false, None, Some(&[&cas, &ttl]))
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(e) if is_status(&e, Status::Exists) || is_status(&e, Status::NotFound) => {
                        Ok(false)
                    }
                    Err(e) => Err(e),
                }
            })
        })
        .await
    }

    async fn scan_prefix(&self, _prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        Err(StoreError::Unsupported {
            backend: "memcached",
            operation: "scan_prefix (memcached cannot list keys)",
        })
    }

    fn backend(&self) -> &'static str {
        "memcached"
    }

    async fn ping(&self) -> Result<()> {
        for server in &self.servers {
            run_on(server, |c| Box::pin(async move { c.version().await }))
                .await
                .map_err(|e| match e {
                    OpError::Server(e) => backend_error(server, "ping", e.to_string()),
                    OpError::Transport(reason) => backend_error(server, "ping", reason),
                })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:11211")).collect()
    }

    #[test]
    fn ring_spreads_keys_evenly() {
        let ring = Ring::new(&servers(3));
        let mut counts = [0usize; 3];
        for i in 0..30_000 {
            counts[ring.server_for(&format!("key:{i}")).unwrap()] += 1;
        }
        for c in counts {
            assert!((7_000..13_000).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn ring_is_stable_and_moves_few_keys() {
        let three = Ring::new(&servers(3));
        let again = Ring::new(&servers(3));
        let four = Ring::new(&servers(4));
        let mut moved = 0;
        for i in 0..10_000 {
            let key = format!("key:{i}");
            let a = three.server_for(&key).unwrap();
            assert_eq!(Some(a), again.server_for(&key));
            let b = four.server_for(&key).unwrap();
            if a != b {
                // A key only ever moves to the new server.
                assert_eq!(b, 3);
                moved += 1;
            }
        }
        // About a quarter of the keys move to the fourth server.
        assert!((1_500..3_500).contains(&moved), "{moved}");
    }

    #[test]
    fn empty_ring_has_no_server() {
        assert_eq!(Ring::new::<String>(&[]).server_for("k"), None);
        assert_eq!(Ring::new(&servers(1)).server_for("k"), Some(0));
    }

    #[test]
    fn ttl_rounding() {
        assert_eq!(exptime(None), 0);
        assert_eq!(exptime(Some(Duration::from_millis(1))), 2);
        assert_eq!(exptime(Some(Duration::from_secs(1))), 2);
        assert_eq!(exptime(Some(Duration::from_millis(1500))), 3);
        assert_eq!(
            exptime(Some(Duration::from_secs(MAX_RELATIVE_TTL - 1))),
            MAX_RELATIVE_TTL as i64
        );
        let absolute = exptime(Some(Duration::from_secs(MAX_RELATIVE_TTL)));
        assert!(absolute > 1_700_000_000, "{absolute}");
    }

    #[test]
    fn bad_server_lists_are_config_errors() {
        assert!(matches!(
            MemcachedStore::open(&[]),
            Err(StoreError::Config(_))
        ));
        let dup = vec!["a:1".to_owned(), "a:1".to_owned()];
        assert!(matches!(
            MemcachedStore::open(&dup),
            Err(StoreError::Config(_))
        ));
    }
}
