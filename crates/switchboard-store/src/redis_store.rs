//! The `redis` backend: one Redis server through the `redis` crate's See [`RedisStore`].

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script};
use tokio::sync::OnceCell;

use crate::{validate_key, CasToken, Result, Store, StoreError};

/// The longest any operation waits, connecting included.
pub const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// Connect timeout of one attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Keys fetched per `SCAN` call.
const SCAN_COUNT: usize = 500;

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
pub struct RedisStore {
    client: redis::Client,
    url: String,
    conn: OnceCell<ConnectionManager>,
    scripts: Scripts,
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
            client,
            url: url.to_owned(),
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
    async fn connection(&self) -> Result<ConnectionManager> {
        let conn = self
            .conn
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(CONNECT_TIMEOUT)
                    .set_response_timeout(OP_TIMEOUT)
                    .set_number_of_retries(1)
                    .set_max_delay(1000);
                ConnectionManager::new_with_config(self.client.clone(), config)
                    .await
                    .map_err(|e| self.backend_error(e))
            })
            .await?;
        Ok(conn.clone())
    }

    /// Runs one operation on `key` within [`OP_TIMEOUT`].
    async fn run<T, F, Fut>(&self, key: &str, op: &'static str, f: F) -> Result<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
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
    fn ttl_rounds_up_to_a_millisecond() {
        assert_eq!(ttl_millis(None), 0);
        assert_eq!(ttl_millis(Some(Duration::from_micros(10))), 1);
        assert_eq!(ttl_millis(Some(Duration::from_secs(2))), 2000);
    }
}
