//! The Redis key-value backend (`--kv-url redis://HOST:PORT/DB`), for
//! hosts that share state. Every operation that writes is one Lua script,
//! which Redis runs atomically: the value, the bucket's key index and the
//! app's usage change together, so increments, compare-and-swap and the
//! quota hold across every host on the same Redis.
//!
//! ```text
//! kv:APP:d:STORE   hash: key → value
//! kv:APP:i:STORE   sorted set of the bucket's keys (lexicographic paging)
//! kv:APP:meta      hash: keys, bytes (the app's usage, all its stores)
//! ```
//!
//! App and store names hold no `:`, so one bucket's keys can never be
//! another's, and no store is the usage hash. Every call goes through one
//! shared [`Link`] (one multiplexed connection, timeouts, a backoff while
//! Redis is down, credentials never shown).

use redis::{FromRedisValue, Script, Value};

use crate::kv::{Bucket, KeyPage, KvError, KvLimits, Usage, prefix_end};
use crate::redis_link::{Link, LinkError, Request};

type Result<T, E = KvError> = std::result::Result<T, E>;

/// The Lua that writes one key within the app's quota: a function of the
/// bucket hash, its index, the usage hash, the key, the value and the two
/// quotas. Returns `{1}`, or `{0, keys, bytes}` when over quota.
const PUT: &str = r#"
local function put(hash, index, usage, key, value, max_keys, max_bytes)
  local keys = tonumber(redis.call('HGET', usage, 'keys') or '0')
  local bytes = tonumber(redis.call('HGET', usage, 'bytes') or '0')
  if redis.call('HEXISTS', hash, key) == 1 then
    bytes = bytes - redis.call('HSTRLEN', hash, key) + string.len(value)
  else
    keys = keys + 1
    bytes = bytes + string.len(key) + string.len(value)
  end
  if keys > max_keys or bytes > max_bytes then
    return {0, keys, bytes}
  end
  redis.call('HSET', hash, key, value)
  redis.call('ZADD', index, 0, key)
  redis.call('HSET', usage, 'keys', keys, 'bytes', bytes)
  return {1}
end
"#;

/// Remove one key (nothing if absent), keeping the usage right.
const REMOVE: &str = r#"
local function remove(hash, index, usage, key)
  if redis.call('HEXISTS', hash, key) == 1 then
    local len = redis.call('HSTRLEN', hash, key)
    redis.call('HDEL', hash, key)
    redis.call('ZREM', index, key)
    redis.call('HINCRBY', usage, 'keys', -1)
    redis.call('HINCRBY', usage, 'bytes', -(string.len(key) + len))
  end
end
"#;

/// The Redis store.
pub struct Redis {
    link: Link,
    limits: KvLimits,
    set: Script,
    swap: Script,
    increment: Script,
    delete: Script,
    set_many: Script,
    delete_many: Script,
    get_many: Script,
}

impl Redis {
    /// A store on the Redis at `url` (`redis://[USER:PASSWORD@]HOST:PORT[/DB]`).
    /// Nothing is connected until the first operation.
    pub fn open(url: &str, limits: KvLimits) -> Result<Redis> {
        let link = Link::open(url, "the Redis key-value store")
            .map_err(|LinkError(e)| KvError::Invalid(e))?;
        Ok(Redis {
            link,
            limits,
            set: Script::new(&format!(
                "{PUT} local r = put(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])) return r"
            )),
            swap: Script::new(&format!(
                "{PUT}
                 local now = redis.call('HGET', KEYS[1], ARGV[1])
                 if ARGV[5] == '0' then
                   if now then return {{2}} end
                 elseif now ~= ARGV[6] then
                   return {{2}}
                 end
                 return put(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]))"
            )),
            increment: Script::new(&format!(
                "{PUT}
                 local existed = redis.call('HEXISTS', KEYS[1], ARGV[1])
                 local before = redis.call('HGET', KEYS[1], ARGV[1])
                 local ok, err = pcall(redis.call, 'HINCRBY', KEYS[1], ARGV[1], ARGV[2])
                 if not ok then
                   -- Redis 7 hands pcall a table, older ones a string.
                   local message = type(err) == 'table' and err.err or tostring(err)
                   if string.find(tostring(message), 'overflow') then return {{-2}} end
                   return {{-1}}
                 end
                 local after = redis.call('HGET', KEYS[1], ARGV[1])
                 -- Put the old value back and write the new one through the
                 -- quota check.
                 if existed == 1 then
                   redis.call('HSET', KEYS[1], ARGV[1], before)
                 else
                   redis.call('HDEL', KEYS[1], ARGV[1])
                 end
                 local r = put(KEYS[1], KEYS[2], KEYS[3], ARGV[1], after, tonumber(ARGV[3]), tonumber(ARGV[4]))
                 if r[1] == 1 then return {{1, after}} end
                 return r"
            )),
            delete: Script::new(&format!("{REMOVE} remove(KEYS[1], KEYS[2], KEYS[3], ARGV[1]) return 1")),
            set_many: Script::new(&format!(
                "{PUT}
                 -- All or none: check the whole batch first.
                 local keys = tonumber(redis.call('HGET', KEYS[3], 'keys') or '0')
                 local bytes = tonumber(redis.call('HGET', KEYS[3], 'bytes') or '0')
                 local seen = {{}}
                 for i = 3, #ARGV, 2 do
                   local key, value = ARGV[i], ARGV[i + 1]
                   local old = seen[key]
                   if old == nil and redis.call('HEXISTS', KEYS[1], key) == 1 then
                     old = redis.call('HSTRLEN', KEYS[1], key)
                   end
                   if old == nil then
                     keys = keys + 1
                     bytes = bytes + string.len(key) + string.len(value)
                   else
                     bytes = bytes - old + string.len(value)
                   end
                   seen[key] = string.len(value)
                 end
                 if keys > tonumber(ARGV[1]) or bytes > tonumber(ARGV[2]) then
                   return {{0, keys, bytes}}
                 end
                 -- Within the quota as a whole: write every pair (a
                 -- pair-by-pair check could refuse one the batch makes
                 -- room for), then the usage once.
                 for i = 3, #ARGV, 2 do
                   redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
                   redis.call('ZADD', KEYS[2], 0, ARGV[i])
                 end
                 redis.call('HSET', KEYS[3], 'keys', keys, 'bytes', bytes)
                 return {{1}}"
            )),
            delete_many: Script::new(&format!(
                "{REMOVE} for i = 1, #ARGV do remove(KEYS[1], KEYS[2], KEYS[3], ARGV[i]) end return 1"
            )),
            // The values' total size first, so an answer over the limit is
            // never built: `{0, bytes}`, or `{1, values}`.
            get_many: Script::new(
                "local total = 0
                 for i = 2, #ARGV do total = total + redis.call('HSTRLEN', KEYS[1], ARGV[i]) end
                 if total > tonumber(ARGV[1]) then return {0, total} end
                 return {1, redis.call('HMGET', KEYS[1], unpack(ARGV, 2))}",
            ),
        })
    }

    pub fn limits(&self) -> &KvLimits {
        &self.limits
    }

    /// Where it is, without credentials.
    pub fn shown(&self) -> &str {
        self.link.shown()
    }

    /// What went wrong talking to Redis, said without credentials.
    fn failed(&self, err: redis::RedisError) -> KvError {
        KvError::Backend(self.link.failed(err).0)
    }

    /// Send `request` on the shared link.
    async fn query<T: FromRedisValue>(&self, request: Request<'_>) -> Result<T> {
        self.link
            .query(request)
            .await
            .map_err(|LinkError(e)| KvError::Backend(e))
    }

    /// Run `script` on `bucket`'s keys (its hash, index and the app's
    /// usage) with the arguments `args` gives it.
    async fn run<T: FromRedisValue>(
        &self,
        script: &Script,
        bucket: &Bucket,
        args: impl FnOnce(&mut redis::ScriptInvocation<'_>),
    ) -> Result<T> {
        let mut call = script.key(&Self::keys(bucket)[..]);
        args(&mut call);
        self.query(Request::Script(call)).await
    }

    /// The bucket's data: `kv:APP:d:STORE`.
    fn hash(bucket: &Bucket) -> String {
        format!("kv:{}:d:{}", bucket.app, bucket.store)
    }

    /// The bucket's key index: `kv:APP:i:STORE`.
    fn index(bucket: &Bucket) -> String {
        format!("kv:{}:i:{}", bucket.app, bucket.store)
    }

    /// The app's usage: `kv:APP:meta`. No store name makes this key (each
    /// store's keys have a `d:` or `i:` part), so no store reaches it.
    fn meta(app: &str) -> String {
        format!("kv:{app}:meta")
    }

    fn keys(bucket: &Bucket) -> [String; 3] {
        [
            Self::hash(bucket),
            Self::index(bucket),
            Self::meta(&bucket.app),
        ]
    }

    /// A script's `{0, keys, bytes}` as the quota error it is.
    fn over_quota(&self, reply: &[Value]) -> KvError {
        let number = |i: usize| match reply.get(i) {
            Some(Value::Int(n)) => *n as u64,
            _ => 0,
        };
        let usage = Usage {
            keys: number(1),
            bytes: number(2),
        };
        self.limits
            .check_usage(usage)
            .err()
            .unwrap_or_else(|| KvError::Limit("over the app's quota".into()))
    }
}

fn status(reply: &[Value]) -> i64 {
    match reply.first() {
        Some(Value::Int(n)) => *n,
        _ => 0,
    }
}

/// Every operation: one command, or one script that Redis runs atomically.
impl Redis {
    pub async fn get(&self, bucket: &Bucket, key: &str) -> Result<Option<Vec<u8>>> {
        self.limits.check_key(key)?;
        let mut cmd = redis::cmd("HGET");
        cmd.arg(Self::hash(bucket)).arg(key);
        self.query(Request::Cmd(cmd)).await
    }

    pub async fn exists(&self, bucket: &Bucket, key: &str) -> Result<bool> {
        self.limits.check_key(key)?;
        let mut cmd = redis::cmd("HEXISTS");
        cmd.arg(Self::hash(bucket)).arg(key);
        self.query(Request::Cmd(cmd)).await
    }

    pub async fn set(&self, bucket: &Bucket, key: &str, value: &[u8]) -> Result<()> {
        self.limits.check_key(key)?;
        self.limits.check_value(value)?;
        let reply: Vec<Value> = self
            .run(&self.set, bucket, |call| {
                call.arg(key)
                    .arg(value)
                    .arg(self.limits.max_keys)
                    .arg(self.limits.max_bytes);
            })
            .await?;
        match status(&reply) {
            1 => Ok(()),
            _ => Err(self.over_quota(&reply)),
        }
    }

    pub async fn delete(&self, bucket: &Bucket, key: &str) -> Result<()> {
        self.limits.check_key(key)?;
        self.run::<i64>(&self.delete, bucket, |call| {
            call.arg(key);
        })
        .await?;
        Ok(())
    }

    pub async fn list_keys(
        &self,
        bucket: &Bucket,
        prefix: &str,
        cursor: Option<&str>,
    ) -> Result<KeyPage> {
        // Lexicographic bounds: `(` excludes, `[` includes, `-`/`+` are the
        // ends.
        let bound = |kind: u8, text: &[u8]| [&[kind][..], text].concat();
        let from = match cursor {
            Some(cursor) if cursor >= prefix => bound(b'(', cursor.as_bytes()),
            _ if prefix.is_empty() => b"-".to_vec(),
            _ => bound(b'[', prefix.as_bytes()),
        };
        let to = match prefix_end(prefix.as_bytes()) {
            Some(end) => bound(b'(', &end),
            None => b"+".to_vec(),
        };
        let page = self.limits.page_keys;
        let mut cmd = redis::cmd("ZRANGEBYLEX");
        cmd.arg(Self::index(bucket))
            .arg(from)
            .arg(to)
            .arg("LIMIT")
            .arg(0)
            .arg(page + 1);
        let mut keys: Vec<Vec<u8>> = self.query(Request::Cmd(cmd)).await?;
        let more = keys.len() > page;
        keys.truncate(page);
        let keys: Vec<String> = keys
            .into_iter()
            .map(|k| String::from_utf8_lossy(&k).into_owned())
            .collect();
        let cursor = if more { keys.last().cloned() } else { None };
        Ok(KeyPage { keys, cursor })
    }

    pub async fn increment(&self, bucket: &Bucket, key: &str, delta: i64) -> Result<i64> {
        self.limits.check_key(key)?;
        let reply: Vec<Value> = self
            .run(&self.increment, bucket, |call| {
                call.arg(key)
                    .arg(delta)
                    .arg(self.limits.max_keys)
                    .arg(self.limits.max_bytes);
            })
            .await?;
        match status(&reply) {
            1 => {
                let text = match reply.get(1) {
                    Some(Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
                    _ => String::new(),
                };
                text.parse()
                    .map_err(|_| KvError::Backend(format!("Redis answered {text:?} for a counter")))
            }
            -1 => Err(KvError::not_a_number(key)),
            -2 => Err(KvError::overflow(key, delta)),
            _ => Err(self.over_quota(&reply)),
        }
    }

    pub async fn swap(
        &self,
        bucket: &Bucket,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> Result<bool> {
        self.limits.check_key(key)?;
        self.limits.check_value(value)?;
        let reply: Vec<Value> = self
            .run(&self.swap, bucket, |call| {
                call.arg(key)
                    .arg(value)
                    .arg(self.limits.max_keys)
                    .arg(self.limits.max_bytes)
                    .arg(if expected.is_some() { "1" } else { "0" })
                    .arg(expected.unwrap_or_default());
            })
            .await?;
        match status(&reply) {
            1 => Ok(true),
            2 => Ok(false),
            _ => Err(self.over_quota(&reply)),
        }
    }

    pub async fn get_many(&self, bucket: &Bucket, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        for key in keys {
            self.limits.check_key(key)?;
        }
        self.limits.check_batch(keys.len())?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let reply: Vec<Value> = self
            .run(&self.get_many, bucket, |call| {
                call.arg(self.limits.batch_bytes).arg(keys);
            })
            .await?;
        match (status(&reply), reply.get(1)) {
            (1, Some(values)) => {
                redis::from_redis_value_ref(values).map_err(|e| self.failed(e.into()))
            }
            (_, Some(Value::Int(bytes))) => Err(self
                .limits
                .check_batch_bytes(*bytes as u64)
                .err()
                .unwrap_or_else(|| KvError::Limit("get-many is over its size limit".into()))),
            _ => Err(KvError::Backend(format!(
                "the Redis key-value store at {} gave an unexpected answer to get-many",
                self.link.shown()
            ))),
        }
    }

    pub async fn set_many(&self, bucket: &Bucket, pairs: &[(String, Vec<u8>)]) -> Result<()> {
        self.limits.check_batch(pairs.len())?;
        for (key, value) in pairs {
            self.limits.check_key(key)?;
            self.limits.check_value(value)?;
        }
        let reply: Vec<Value> = self
            .run(&self.set_many, bucket, |call| {
                call.arg(self.limits.max_keys).arg(self.limits.max_bytes);
                for (key, value) in pairs {
                    call.arg(key).arg(value.as_slice());
                }
            })
            .await?;
        match status(&reply) {
            1 => Ok(()),
            _ => Err(self.over_quota(&reply)),
        }
    }

    pub async fn delete_many(&self, bucket: &Bucket, keys: &[String]) -> Result<()> {
        self.limits.check_batch(keys.len())?;
        for key in keys {
            self.limits.check_key(key)?;
        }
        self.run::<i64>(&self.delete_many, bucket, |call| {
            call.arg(keys);
        })
        .await?;
        Ok(())
    }

    pub async fn usage(&self, app: &str) -> Result<Usage> {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(Self::meta(app)).arg("keys").arg("bytes");
        let (keys, bytes): (Option<u64>, Option<u64>) = self.query(Request::Cmd(cmd)).await?;
        Ok(Usage {
            keys: keys.unwrap_or(0),
            bytes: bytes.unwrap_or(0),
        })
    }

    pub async fn delete_app(&self, app: &str) -> Result<Usage> {
        let held = self.usage(app).await?;
        let pattern = format!("kv:{app}:*");
        let mut cursor: u64 = 0;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000);
            let (next, keys): (u64, Vec<String>) = self.query(Request::Cmd(scan)).await?;
            if !keys.is_empty() {
                let mut unlink = redis::cmd("UNLINK");
                unlink.arg(&keys);
                self.query::<i64>(Request::Cmd(unlink)).await?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Ok(held)
    }
}
