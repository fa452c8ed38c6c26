//! The `redis` backend: one Redis server or a Redis Cluster through the `redis` crate.
//! See [`RedisStore`].

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Script, Value};
use tokio::sync::OnceCell;

use crate::{validate_key, CasToken, Result, Store, StoreError};

/// The longest any operation waits, connecting included.
pub const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// Connect timeout of one attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Keys fetched per `SCAN` call.
const SCAN_COUNT: usize = 500;
/// Keys read at once by `scan_prefix` on a cluster (one request per key, by slot).
const CLUSTER_READS_IN_FLIGHT: usize = 64;

/// Lua shared by the write scripts: the next version and the write itself.
const LUA_WRITE: &str = r#"
local function next_version(k)
  local old = redis.pcall('HGET', k, 'n')
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local o = nil
  if type(old) == 'string' then o = tonumber(old) end
  if o and o >= now then now = o + 1 end
  return now
end
local function write(k, v, ttl_ms)
  local n = next_version(k)
  redis.call('DEL', k)
  redis.call('HSET', k, 'v', v, 'n', string.format('%d', n))
  if tonumber(ttl_ms) > 0 then redis.call('PEXPIRE', k, ttl_ms) end
  return n
end
"#;

/// Reads `[v, n]` of a key: nil when absent, an error when the key is not a hash.
const LUA_READ: &str = r#"
local t = redis.call('TYPE', KEYS[1])
t = t.ok or t
if t == 'none' then return false end
if t ~= 'hash' then return redis.error_reply('SBCORRUPT the key holds a Redis ' .. t) end
return redis.call('HMGET', KEYS[1], 'v', 'n')
"#;

/// The `redis` backend: one Redis server through the `redis` crate's
/// [`ConnectionManager`], which reconnects by itself after the server comes back.
///
/// Layout: every key is a Redis hash `{v: value, n: version}`; a TTL is the key's own
/// Redis expiry (`PEXPIRE`). The version is the CAS token. Writes go through small Lua
/// scripts so that "read the version, compare, write" is atomic on the server; each
/// write sets the version to `max(old + 1, server time in µs)`, so a version is never
/// reused even when a key is deleted and created again (the server clock would have to
/// go backwards by more than the key's lifetime).
///
/// `increment` is `HINCRBY` on the value field, so Redis counters are signed 64-bit:
/// deltas or totals above `i64::MAX` fail with [`StoreError::Backend`] / `Unsupported`.
/// `scan_prefix` uses `SCAN MATCH` with the prefix's glob characters escaped.
///
/// The connection is made on first use, not in [`RedisStore::open`], so a gateway can
/// start before its Redis does; every operation is bounded by 3 s.
///
/// **Redis Cluster** ([`RedisStore::open_cluster`]): the same layout and scripts through
/// the `redis` crate's cluster client. Every script touches exactly one key, so each
/// operation is routed to the master of that key's slot (and follows `MOVED`/`ASK`
/// redirections); `ping` asks every master. `scan_prefix` runs `SCAN` on every master
/// (found with `CLUSTER NODES`) and then reads each key from its slot's master.
pub struct RedisStore {
    client: Client,
    /// The URL, or the cluster's seed nodes joined by commas (for errors).
    url: String,
    conn: OnceCell<Conn>,
    scripts: Scripts,
}

/// One server or a cluster.
enum Client {
    Single(redis::Client),
    Cluster(ClusterClient),
}

/// The shared connection of either kind; both reconnect by themselves.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

struct Scripts {
    read: Script,
    set: Script,
    add: Script,
    cas: Script,
    increment: Script,
}

impl Scripts {
    fn new() -> Self {
        let with_write = |body: &str| Script::new(&format!("{LUA_WRITE}\n{body}"));
        Scripts {
            read: Script::new(LUA_READ),
            set: with_write("write(KEYS[1], ARGV[1], ARGV[2]) return 1"),
            add: with_write(
                "if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
                 write(KEYS[1], ARGV[1], ARGV[2]) return 1",
            ),
            cas: with_write(
                "local t = redis.call('TYPE', KEYS[1])
                 if (t.ok or t) ~= 'hash' then return 0 end
                 if redis.call('HGET', KEYS[1], 'n') ~= ARGV[3] then return 0 end
                 write(KEYS[1], ARGV[1], ARGV[2]) return 1",
            ),
            increment: with_write(
                "local t = redis.call('TYPE', KEYS[1])
                 t = t.ok or t
                 if t ~= 'hash' and t ~= 'none' then
                   return redis.error_reply('SBCORRUPT the key holds a Redis ' .. t)
                 end
                 local n = next_version(KEYS[1])
                 local r = redis.pcall('HINCRBY', KEYS[1], 'v', ARGV[1])
                 if type(r) == 'table' and r.err then
                   if string.find(r.err, 'not an integer') then
                     return redis.error_reply('SBNAN not a number')
                   end
                   return r
                 end
                 redis.call('HSET', KEYS[1], 'n', string.format('%d', n))
                 return tostring(r)",
            ),
        }
    }
}

impl RedisStore {
    /// Prepares a store for the server at `url` (`redis://host:port/db`); connects on
    /// first use. A malformed URL is [`StoreError::Config`].
    pub fn open(url: &str) -> Result<Self> {
        let client = redis::Client::open(url)
            .map_err(|e| StoreError::Config(format!("bad redis URL {url:?}: {e}")))?;
        Ok(RedisStore {
            client: Client::Single(client),
            url: url.to_owned(),
            conn: OnceCell::new(),
            scripts: Scripts::new(),
        })
    }

    /// Prepares a store for the Redis Cluster reached through `nodes` (seed nodes,
    /// `redis://host:port` each; one reachable node is enough); connects on first use.
    /// An empty list, a malformed URL or one naming a database other than 0 is
    /// [`StoreError::Config`].
    pub fn open_cluster(nodes: &[String]) -> Result<Self> {
        if nodes.is_empty() {
            return Err(StoreError::Config(
                "a Redis Cluster needs at least one node URL".into(),
            ));
        }
        for node in nodes {
            let client = redis::Client::open(node.as_str())
                .map_err(|e| StoreError::Config(format!("bad redis URL {node:?}: {e}")))?;
            if client.get_connection_info().redis.db != 0 {
                return Err(StoreError::Config(format!(
                    "bad Redis Cluster node {node:?}: a cluster has only database 0"
                )));
            }
        }
        let client = ClusterClient::builder(nodes.iter().map(String::as_str))
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(OP_TIMEOUT)
            .retries(3)
            .min_retry_wait(10)
            .max_retry_wait(500)
            .build()
            .map_err(|e| StoreError::Config(format!("bad Redis Cluster nodes {nodes:?}: {e}")))?;
        Ok(RedisStore {
            client: Client::Cluster(client),
            url: nodes.join(","),
            conn: OnceCell::new(),
            scripts: Scripts::new(),
        })
    }

    fn backend_error(&self, reason: impl std::fmt::Display) -> StoreError {
        StoreError::Backend {
            backend: "redis",
            target: self.url.clone(),
            reason: reason.to_string(),
        }
    }

    /// Maps a Redis error of an operation on `key`.
    fn error(&self, key: &str, e: RedisError) -> StoreError {
        match e.code() {
            Some("WRONGTYPE") | Some("SBCORRUPT") => StoreError::Corrupt {
                key: key.to_owned(),
                reason: e
                    .detail()
                    .unwrap_or("the key holds another Redis type")
                    .to_owned(),
            },
            Some("SBNAN") => StoreError::NotANumber {
                key: key.to_owned(),
            },
            _ => self.backend_error(e),
        }
    }

    /// The shared connection, made on first use (retried on the next call if it fails).
    async fn connection(&self) -> Result<Conn> {
        let conn = self
            .conn
            .get_or_try_init(|| async {
                match &self.client {
                    Client::Single(client) => {
                        let config = ConnectionManagerConfig::new()
                            .set_connection_timeout(CONNECT_TIMEOUT)
                            .set_response_timeout(OP_TIMEOUT)
                            .set_number_of_retries(1)
                            .set_max_delay(1000);
                        ConnectionManager::new_with_config(client.clone(), config)
                            .await
                            .map(Conn::Single)
                    }
                    Client::Cluster(client) => {
                        client.get_async_connection().await.map(Conn::Cluster)
                    }
                }
                .map_err(|e| self.backend_error(e))
            })
            .await?;
        Ok(conn.clone())
    }

    /// Runs one operation on `key` within [`OP_TIMEOUT`].
    async fn run<T, F, Fut>(&self, key: &str, op: &'static str, f: F) -> Result<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        let work = async {
            let conn = self.connection().await?;
            f(conn).await.map_err(|e| self.error(key, e))
        };
        tokio::time::timeout(OP_TIMEOUT, work)
            .await
            .map_err(|_| self.backend_error(format!("{op} timed out after {OP_TIMEOUT:?}")))?
    }

    /// Runs `work` within [`OP_TIMEOUT`].
    async fn bounded<T>(
        &self,
        op: &'static str,
        work: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        tokio::time::timeout(OP_TIMEOUT, work)
            .await
            .map_err(|_| self.backend_error(format!("{op} timed out after {OP_TIMEOUT:?}")))?
    }

    /// `scan_prefix` on a cluster: `SCAN` on every master, then each key read from the
    /// master of its slot, [`CLUSTER_READS_IN_FLIGHT`] at a time. Sorted like the
    /// single-server listing.
    async fn scan_prefix_cluster(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let conn = self.connection().await?;
        let Conn::Cluster(cluster) = conn else {
            unreachable!("scan_prefix_cluster on a single server");
        };
        let pattern = glob_escape(prefix);
        // Which masters hold slots: one slot of each, to route SCAN by slot (so the
        // client's own slot map picks the connection).
        let nodes: String = self
            .bounded("scan_prefix", async {
                let reply = cluster
                    .clone()
                    .route_command(
                        redis::cmd("CLUSTER").arg("NODES"),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary),
                    )
                    .await
                    .map_err(|e| self.backend_error(e))?;
                redis::from_owned_redis_value(reply).map_err(|e| self.backend_error(e))
            })
            .await?;
        let masters = master_slots(&nodes);
        if masters.is_empty() {
            return Err(self.backend_error(format!(
                "CLUSTER NODES lists no master with slots: {nodes:?}"
            )));
        }
        let mut keys: Vec<String> = Vec::new();
        for slot in masters {
            let mut cursor: u64 = 0;
            loop {
                let (next, batch): (u64, Vec<String>) = self
                    .bounded("scan_prefix", async {
                        let mut scan = redis::cmd("SCAN");
                        scan.arg(cursor)
                            .arg("MATCH")
                            .arg(&pattern)
                            .arg("COUNT")
                            .arg(SCAN_COUNT);
                        let route = Route::new(slot, SlotAddr::Master);
                        let reply = cluster
                            .clone()
                            .route_command(
                                &scan,
                                RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                            )
                            .await
                            .map_err(|e| self.backend_error(e))?;
                        redis::from_owned_redis_value(reply).map_err(|e| self.backend_error(e))
                    })
                    .await?;
                keys.extend(batch);
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        keys.sort();
        keys.dedup();
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(CLUSTER_READS_IN_FLIGHT) {
            let mut reads = tokio::task::JoinSet::new();
            for (i, key) in chunk.iter().enumerate() {
                let (mut conn, script, key) =
                    (cluster.clone(), self.scripts.read.clone(), key.clone());
                reads.spawn(async move {
                    let reply: Result<Option<Vec<Option<Vec<u8>>>>, RedisError> =
                        script.key(&key).invoke_async(&mut conn).await;
                    (i, reply)
                });
            }
            let mut replies = self
                .bounded("scan_prefix", async {
                    let mut replies = reads.join_all().await;
                    replies.sort_by_key(|(i, _)| *i);
                    Ok(replies)
                })
                .await?;
            for ((_, reply), key) in replies.drain(..).zip(chunk) {
                let fields = reply.map_err(|e| self.error(key, e))?;
                // A key that expired or was deleted since SCAN is simply absent.
                if let Some((value, _)) = decode(key, fields)? {
                    out.push((key.clone(), value));
                }
            }
        }
        Ok(out)
    }

    /// Reads `(value, version)` of a key.
    async fn read(&self, key: &str, op: &'static str) -> Result<Option<(Vec<u8>, u64)>> {
        let fields: Option<Vec<Option<Vec<u8>>>> = self
            .run(key, op, |mut c| async move {
                self.scripts.read.key(key).invoke_async(&mut c).await
            })
            .await?;
        decode(key, fields)
    }
}

/// Turns a [`LUA_READ`] reply into `(value, version)`.
fn decode(key: &str, fields: Option<Vec<Option<Vec<u8>>>>) -> Result<Option<(Vec<u8>, u64)>> {
    let corrupt = |reason: &str| StoreError::Corrupt {
        key: key.to_owned(),
        reason: reason.to_owned(),
    };
    let Some(fields) = fields else {
        return Ok(None);
    };
    let mut fields = fields.into_iter();
    match (fields.next().flatten(), fields.next().flatten()) {
        (Some(value), Some(version)) => {
            let version = std::str::from_utf8(&version)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| corrupt("the version field is not a number"))?;
            Ok(Some((value, version)))
        }
        _ => Err(corrupt("a Redis hash without the fields v and n")),
    }
}

/// One slot owned by each master of a `CLUSTER NODES` reply (masters without slots are
/// left out: they hold no keys).
fn master_slots(nodes: &str) -> Vec<u16> {
    nodes
        .lines()
        .filter_map(|line| {
            // <id> <ip:port@cport> <flags> <master> <ping> <pong> <epoch> <link> <slot>...
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?;
            if !flags.split(',').any(|f| f == "master") {
                return None;
            }
            // Slots are `a-b` or `a`; `[a->-id]` / `[a-<-id]` mark migrations.
            fields.iter().skip(8).find_map(|range| {
                if range.starts_with('[') {
                    return None;
                }
                range.split('-').next()?.parse::<u16>().ok()
            })
        })
        .collect()
}

/// TTL in milliseconds for the scripts: 0 means none; anything shorter than 1 ms is 1.
fn ttl_millis(ttl: Option<Duration>) -> u64 {
    match ttl {
        None => 0,
        Some(t) => u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1),
    }
}

/// Escapes the glob characters of `SCAN MATCH` so the prefix matches literally.
fn glob_escape(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('*');
    out
}

#[async_trait]
impl Store for RedisStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        validate_key(key)?;
        Ok(self.read(key, "get").await?.map(|(v, _)| v))
    }

    async fn gets(&self, key: &str) -> Result<Option<(Vec<u8>, CasToken)>> {
        validate_key(key)?;
        Ok(self.read(key, "gets").await?.map(|(v, n)| (v, CasToken(n))))
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        validate_key(key)?;
        self.run(key, "set", |mut c| async move {
            self.scripts
                .set
                .key(key)
                .arg(value)
                .arg(ttl_millis(ttl))
                .invoke_async::<i64>(&mut c)
                .await
        })
        .await?;
        Ok(())
    }

    async fn add(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<bool> {
        validate_key(key)?;
        let added: i64 = self
            .run(key, "add", |mut c| async move {
                self.scripts
                    .add
                    .key(key)
                    .arg(value)
                    .arg(ttl_millis(ttl))
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(added == 1)
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        validate_key(key)?;
        let n: i64 = self
            .run(key, "delete", |mut c| async move {
                redis::cmd("DEL").arg(key).query_async(&mut c).await
            })
            .await?;
        Ok(n > 0)
    }

    async fn increment(&self, key: &str, delta: u64) -> Result<u64> {
        validate_key(key)?;
        if i64::try_from(delta).is_err() {
            return Err(StoreError::Unsupported {
                backend: "redis",
                operation: "increment by more than i64::MAX",
            });
        }
        let n: String = self
            .run(key, "increment", |mut c| async move {
                self.scripts
                    .increment
                    .key(key)
                    .arg(delta)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        n.parse::<u64>().map_err(|_| StoreError::NotANumber {
            key: key.to_owned(),
        })
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        token: CasToken,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool> {
        validate_key(key)?;
        let swapped: i64 = self
            .run(key, "compare_and_swap", |mut c| async move {
                self.scripts
                    .cas
                    .key(key)
                    .arg(value)
                    .arg(ttl_millis(ttl))
                    .arg(token.0.to_string())
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(swapped == 1)
    }

    async fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        if let Client::Cluster(_) = self.client {
            return self.scan_prefix_cluster(prefix).await;
        }
        let pattern = glob_escape(prefix);
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = self
                .run(prefix, "scan_prefix", |mut c| {
                    let pattern = pattern.clone();
                    async move {
                        redis::cmd("SCAN")
                            .arg(cursor)
                            .arg("MATCH")
                            .arg(pattern)
                            .arg("COUNT")
                            .arg(SCAN_COUNT)
                            .query_async(&mut c)
                            .await
                    }
                })
                .await?;
            keys.extend(batch);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        keys.sort();
        keys.dedup();
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(SCAN_COUNT) {
            let replies: Vec<redis::Value> = self
                .run(prefix, "scan_prefix", |mut c| async move {
                    let mut pipe = redis::pipe();
                    for key in chunk {
                        pipe.cmd("EVAL").arg(LUA_READ).arg(1).arg(key);
                    }
                    pipe.query_async(&mut c).await
                })
                .await?;
            for (key, reply) in chunk.iter().zip(replies) {
                let fields: Option<Vec<Option<Vec<u8>>>> =
                    redis::from_redis_value(&reply).map_err(|e| self.error(key, e))?;
                // A key that expired or was deleted since SCAN is simply absent.
                if let Some((value, _)) = decode(key, fields)? {
                    out.push((key.clone(), value));
                }
            }
        }
        Ok(out)
    }

    fn backend(&self) -> &'static str {
        "redis"
    }

    async fn ping(&self) -> Result<()> {
        let _: String = self
            .run("", "ping", |mut c| async move {
                redis::cmd("PING").query_async(&mut c).await
            })
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(glob_escape("a*b?c[d]e\\f"), "a\\*b\\?c\\[d\\]e\\\\f*");
        assert_eq!(glob_escape(""), "*");
    }

    #[test]
    fn masters_with_slots_are_found() {
        let nodes = "\
a1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7002@17002,host-b master - 0 1700000000000 2 connected 5461 5462-10922
c3 127.0.0.1:7003@17003 master - 0 1700000000000 3 connected [10923-<-zz] 10923-16383
d4 127.0.0.1:7004@17004 slave a1 0 1700000000000 1 connected
e5 127.0.0.1:7005@17005 master - 0 1700000000000 5 connected
";
        assert_eq!(master_slots(nodes), vec![0, 5461, 10923]);
        assert_eq!(master_slots(""), Vec::<u16>::new());
    }

    #[test]
    fn ttl_rounds_up_to_a_millisecond() {
        assert_eq!(ttl_millis(None), 0);
        assert_eq!(ttl_millis(Some(Duration::from_micros(10))), 1);
        assert_eq!(ttl_millis(Some(Duration::from_secs(2))), 2000);
    }
}
