//! The cluster store: what host replicas share through one Redis
//! (`--cluster-url`), so that an admin change made on any replica reaches
//! all of them.
//!
//! ```text
//! cluster:id                 random id of this cluster's data (set once)
//! cluster:seq                the last revision handed out (INCR)
//! cluster:apps               hash: app → its record (JSON)
//! cluster:revisions          hash: app → the revision of its last change
//! cluster:routes             hash: route → the app that serves it
//! cluster:components         hash: digest → when it was stored (unix s)
//! cluster:component:DIGEST   a component's bytes, stored once
//! cluster:replicas           hash: replica → its last heartbeat (JSON)
//! cluster:seen               hash: replica → when that was (unix ms)
//! cluster:changes            channel: "REVISION APP" after each change
//! ```
//!
//! Every change is one Lua script, which Redis runs atomically: it checks
//! that the app's revision is the one the change was planned on
//! (compare-and-set: a loser learns the current revision), that no other
//! app holds the route, and that the store is the one the replica knows
//! (not an empty one after a Redis lost its data); then it takes the next
//! revision from `cluster:seq`, writes the record and publishes. Revisions
//! are global, so one number says how far a replica has got.
//!
//! This module knows nothing of what a record holds: records are JSON text
//! to it, and [`crate::apps::follow`] is what applies them. What replicas
//! report of themselves is in [`replicas`]; the subscription that wakes
//! them in [`watch`].

pub mod replicas;
pub mod watch;

use std::collections::HashMap;

use std::time::Duration;

use redis::{Script, Value};

use crate::redis_link::{Link, LinkError, Request};

/// Longest wait for a component's bytes to go to or come from the store:
/// they travel on a connection of their own, so a large one holds up no
/// heartbeat or change.
const COMPONENT_TIMEOUT: Duration = Duration::from_secs(120);

/// The pub/sub channel changes are announced on.
pub const CHANNEL: &str = "cluster:changes";

const ID: &str = "cluster:id";
const SEQ: &str = "cluster:seq";
const APPS: &str = "cluster:apps";
const REVISIONS: &str = "cluster:revisions";
const ROUTES: &str = "cluster:routes";
const COMPONENTS: &str = "cluster:components";

/// Unreferenced components are kept this long (seconds) after they were
/// stored, so a deploy that stored one and has not yet committed its
/// record never loses it.
const COMPONENT_GRACE_SECS: u64 = 600;

fn component_key(digest: &str) -> String {
    format!("cluster:component:{digest}")
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterError {
    /// Redis cannot be reached (or failed): nothing was changed.
    #[error("{0}")]
    Unavailable(String),
    /// The app changed since the change was planned.
    #[error(
        "app {app} was changed by another admin request (it is now at revision {current}); retry on top of that"
    )]
    Conflict { app: String, current: u64 },
    /// Another app holds the route.
    #[error("route {route} is already served by app {owner}")]
    RouteTaken { route: String, owner: String },
    /// The store is not the one this replica synced with.
    #[error("{0}")]
    Replaced(String),
    /// What the store holds cannot be read.
    #[error("{0}")]
    Corrupt(String),
}

impl From<LinkError> for ClusterError {
    fn from(LinkError(message): LinkError) -> ClusterError {
        ClusterError::Unavailable(message)
    }
}

/// Where the cluster's data is: its id (empty: the store holds none) and
/// the last revision handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub id: String,
    pub seq: u64,
}

/// One app as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub revision: u64,
    /// Its record, as JSON.
    pub record: String,
}

/// Every app in the store at one revision.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub head: Head,
    /// By revision, oldest first: the order they were changed in.
    pub apps: Vec<Entry>,
}

/// A change to commit: the app, the revision it was planned on (0: the
/// app is new) and its routes before and after (as keys).
pub struct Planned<'a> {
    pub app: &'a str,
    pub expected: u64,
    pub old_route: Option<&'a str>,
    /// The store's revision the replica has applied: a store below it has
    /// lost writes, and takes no change until it is repaired.
    pub floor: u64,
}

/// The cluster's data in one Redis.
pub struct ClusterStore {
    link: Link,
    /// For components' bytes.
    bulk: Link,
    put_component: Script,
    head: Script,
    adopt: Script,
    seed: Script,
    repair: Script,
    snapshot: Script,
    save: Script,
    remove: Script,
    collect: Script,
    pub(crate) heartbeat: Script,
    pub(crate) replicas: Script,
}

/// Checks every change script starts with: the store is the one the
/// replica knows (`ARGV[1]`) and not behind what it has applied (`ARGV[8]`:
/// a store that lost its latest writes would hand out their revisions
/// again), and the app's revision is the expected one (`ARGV[3]`, app
/// `ARGV[2]`).
const CHECK: &str = r#"
local id = redis.call('GET', KEYS[1])
if id ~= ARGV[1] then return {3, id or ''} end
if tonumber(redis.call('GET', KEYS[2]) or '0') < tonumber(ARGV[8]) then return {4, 0} end
local current = tonumber(redis.call('HGET', KEYS[4], ARGV[2]) or '0')
if current ~= tonumber(ARGV[3]) then return {0, current} end
"#;

fn int(value: Option<&Value>) -> u64 {
    match value {
        Some(Value::Int(n)) => *n as u64,
        Some(Value::BulkString(b)) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}

fn text(value: Option<&Value>) -> String {
    match value {
        Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(Value::SimpleString(s)) => s.clone(),
        _ => String::new(),
    }
}

/// A flat `HGETALL` reply as pairs.
fn pairs(value: Option<&Value>) -> Vec<(String, String)> {
    let items: &[Value] = match value {
        Some(Value::Array(items)) => items,
        _ => &[],
    };
    items
        .chunks(2)
        .map(|kv| (text(kv.first()), text(kv.get(1))))
        .collect()
}

impl ClusterStore {
    /// The store on the Redis at `url`; nothing connects until first use.
    pub fn open(url: &str) -> Result<ClusterStore, ClusterError> {
        let link = Link::open(url, "the cluster store")
            .map_err(|LinkError(e)| ClusterError::Corrupt(e))?;
        let bulk = Link::open_with_timeout(url, "the cluster store", COMPONENT_TIMEOUT)
            .map_err(|LinkError(e)| ClusterError::Corrupt(e))?;
        Ok(ClusterStore {
            link,
            bulk,
            // The bytes once, and when they were last stored (again), in
            // one step: the collector never sees one without the other,
            // and a component stored again is safe for a grace period.
            put_component: Script::new(
                "redis.call('SET', KEYS[1], ARGV[2], 'NX')
                 redis.call('HSET', KEYS[2], ARGV[1], redis.call('TIME')[1])
                 return 1",
            ),
            head: Script::new(
                "return {redis.call('GET', KEYS[1]) or '', redis.call('GET', KEYS[2]) or '0'}",
            ),
            adopt: Script::new(
                "redis.call('SET', KEYS[1], ARGV[1], 'NX')
                 return {redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2]) or '0'}",
            ),
            // Put back what a replica serves into a store that lost its
            // data: only if it is still empty (no id, or an id a new
            // replica gave it but no change yet).
            seed: Script::new(
                "if redis.call('EXISTS', KEYS[1]) == 1
                    and (tonumber(redis.call('GET', KEYS[2]) or '0') > 0
                         or redis.call('HLEN', KEYS[3]) > 0) then
                   return 0
                 end
                 redis.call('SET', KEYS[1], ARGV[1])
                 redis.call('SET', KEYS[2], ARGV[2])
                 for i = 3, #ARGV, 4 do
                   redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
                   redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 2])
                   redis.call('HSET', KEYS[5], ARGV[i + 3], ARGV[i])
                 end
                 return 1",
            ),
            // Put back into a store that lost its latest writes what a
            // replica serves at newer revisions than the store holds: per
            // app, only over an older revision (never over a newer change),
            // on a free route; and raise the revision counter past them, so
            // that no revision is handed out twice. ARGV as for `seed`.
            repair: Script::new(
                "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
                 local put = 0
                 for i = 3, #ARGV, 4 do
                   local now = tonumber(redis.call('HGET', KEYS[4], ARGV[i]) or '0')
                   local owner = redis.call('HGET', KEYS[5], ARGV[i + 3])
                   if now < tonumber(ARGV[i + 2]) and (not owner or owner == ARGV[i]) then
                     local routes = redis.call('HGETALL', KEYS[5])
                     for j = 1, #routes, 2 do
                       if routes[j + 1] == ARGV[i] then redis.call('HDEL', KEYS[5], routes[j]) end
                     end
                     redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
                     redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 2])
                     redis.call('HSET', KEYS[5], ARGV[i + 3], ARGV[i])
                     put = put + 1
                   end
                 end
                 if tonumber(redis.call('GET', KEYS[2]) or '0') < tonumber(ARGV[2]) then
                   redis.call('SET', KEYS[2], ARGV[2])
                 end
                 return put",
            ),
            snapshot: Script::new(
                "return {redis.call('GET', KEYS[1]) or '', redis.call('GET', KEYS[2]) or '0',
                         redis.call('HGETALL', KEYS[3]), redis.call('HGETALL', KEYS[4])}",
            ),
            // ARGV: id, app, expected, record, old route, new route,
            // channel, floor.
            save: Script::new(&format!(
                "{CHECK}
                 local owner = redis.call('HGET', KEYS[5], ARGV[6])
                 if owner and owner ~= ARGV[2] then return {{2, owner}} end
                 local rev = redis.call('INCR', KEYS[2])
                 if ARGV[5] ~= '' and ARGV[5] ~= ARGV[6]
                    and redis.call('HGET', KEYS[5], ARGV[5]) == ARGV[2] then
                   redis.call('HDEL', KEYS[5], ARGV[5])
                 end
                 redis.call('HSET', KEYS[5], ARGV[6], ARGV[2])
                 redis.call('HSET', KEYS[3], ARGV[2], ARGV[4])
                 redis.call('HSET', KEYS[4], ARGV[2], rev)
                 redis.call('PUBLISH', ARGV[7], rev .. ' ' .. ARGV[2])
                 return {{1, rev}}"
            )),
            // ARGV: id, app, expected, (unused), route, (unused), channel,
            // floor.
            remove: Script::new(&format!(
                "{CHECK}
                 if current == 0 then return {{0, 0}} end
                 local rev = redis.call('INCR', KEYS[2])
                 redis.call('HDEL', KEYS[3], ARGV[2])
                 redis.call('HDEL', KEYS[4], ARGV[2])
                 if redis.call('HGET', KEYS[5], ARGV[5]) == ARGV[2] then
                   redis.call('HDEL', KEYS[5], ARGV[5])
                 end
                 redis.call('PUBLISH', ARGV[7], rev .. ' ' .. ARGV[2])
                 return {{1, rev}}"
            )),
            // Delete components no record names, stored over the grace
            // period ago. KEYS: apps, components; ARGV: grace seconds.
            collect: Script::new(
                "local named = {}
                 for _, record in ipairs(redis.call('HVALS', KEYS[1])) do
                   local ok, r = pcall(cjson.decode, record)
                   if not ok then return -1 end
                   for _, v in ipairs(r.versions or {}) do named[v.digest] = true end
                 end
                 local now = tonumber(redis.call('TIME')[1])
                 local removed = 0
                 local stored = redis.call('HGETALL', KEYS[2])
                 for i = 1, #stored, 2 do
                   local digest, at = stored[i], tonumber(stored[i + 1])
                   if not named[digest] and now - at >= tonumber(ARGV[1]) then
                     redis.call('DEL', 'cluster:component:' .. digest)
                     redis.call('HDEL', KEYS[2], digest)
                     removed = removed + 1
                   end
                 end
                 return removed",
            ),
            heartbeat: Script::new(
                "local t = redis.call('TIME')
                 redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
                 redis.call('HSET', KEYS[2], ARGV[1], t[1] * 1000 + math.floor(t[2] / 1000))
                 return 1",
            ),
            // Live replicas' heartbeats; expired ones are dropped.
            // ARGV: the expiry in ms.
            replicas: Script::new(
                "local t = redis.call('TIME')
                 local now = t[1] * 1000 + math.floor(t[2] / 1000)
                 local out = {}
                 local seen = redis.call('HGETALL', KEYS[2])
                 for i = 1, #seen, 2 do
                   local id, at = seen[i], tonumber(seen[i + 1])
                   if now - at > tonumber(ARGV[1]) then
                     redis.call('HDEL', KEYS[1], id)
                     redis.call('HDEL', KEYS[2], id)
                   else
                     local beat = redis.call('HGET', KEYS[1], id)
                     if beat then table.insert(out, {beat, now - at}) end
                   end
                 end
                 return out",
            ),
        })
    }

    /// Where it is, without credentials.
    pub fn shown(&self) -> &str {
        self.link.shown()
    }

    pub(crate) async fn query<T: redis::FromRedisValue>(
        &self,
        request: Request<'_>,
    ) -> Result<T, ClusterError> {
        Ok(self.link.query(request).await?)
    }

    /// The client, for the subscription.
    pub(crate) fn link(&self) -> &Link {
        &self.link
    }

    fn keys() -> [&'static str; 5] {
        [ID, SEQ, APPS, REVISIONS, ROUTES]
    }

    fn head_of(reply: &[Value]) -> Head {
        Head {
            id: text(reply.first()),
            seq: int(reply.get(1)),
        }
    }

    /// The store's id and last revision.
    pub async fn head(&self) -> Result<Head, ClusterError> {
        let mut call = self.head.key(ID);
        call.key(SEQ);
        let reply: Vec<Value> = self.query(Request::Script(call)).await?;
        Ok(Self::head_of(&reply))
    }

    /// Give an empty store the id `id` (a store with one keeps its own):
    /// the store's head.
    pub async fn adopt(&self, id: &str) -> Result<Head, ClusterError> {
        let mut call = self.adopt.key(ID);
        call.key(SEQ).arg(id);
        let reply: Vec<Value> = self.query(Request::Script(call)).await?;
        Ok(Self::head_of(&reply))
    }

    /// A call of `seed` or `repair`, which take the same arguments: the
    /// head, then each app as name, record, revision, route.
    fn put_back<'a>(
        script: &'a Script,
        head: &Head,
        apps: &[(String, u64, String, String)],
    ) -> redis::ScriptInvocation<'a> {
        let mut call = script.prepare_invoke();
        for key in Self::keys() {
            call.key(key);
        }
        call.arg(&head.id).arg(head.seq);
        for (name, revision, record, route) in apps {
            call.arg(name).arg(record).arg(revision).arg(route);
        }
        call
    }

    /// Fill an empty store with `apps` (name, revision, record, route) at
    /// `head`: whether it was still empty.
    pub async fn seed(
        &self,
        head: &Head,
        apps: &[(String, u64, String, String)],
    ) -> Result<bool, ClusterError> {
        let call = Self::put_back(&self.seed, head, apps);
        let done: i64 = self.query(Request::Script(call)).await?;
        Ok(done == 1)
    }

    /// Bring a store that is behind `head` (it lost its latest writes) up
    /// to `apps` where it holds older revisions of them, and its revision
    /// counter up to `head.seq`: how many apps were put back.
    pub async fn repair(
        &self,
        head: &Head,
        apps: &[(String, u64, String, String)],
    ) -> Result<u64, ClusterError> {
        let call = Self::put_back(&self.repair, head, apps);
        let put: i64 = self.query(Request::Script(call)).await?;
        if put < 0 {
            return Err(ClusterError::Replaced(format!(
                "the cluster store at {} holds another cluster's data",
                self.shown()
            )));
        }
        Ok(put as u64)
    }

    /// Every app at one revision.
    pub async fn snapshot(&self) -> Result<Snapshot, ClusterError> {
        let mut call = self.snapshot.prepare_invoke();
        for key in Self::keys() {
            call.key(key);
        }
        let reply: Vec<Value> = self.query(Request::Script(call)).await?;
        let head = Self::head_of(&reply);
        let revisions: HashMap<String, u64> = pairs(reply.get(3))
            .into_iter()
            .map(|(name, rev)| (name, rev.parse().unwrap_or(0)))
            .collect();
        let mut apps: Vec<Entry> = pairs(reply.get(2))
            .into_iter()
            .map(|(name, record)| Entry {
                revision: revisions.get(&name).copied().unwrap_or(0),
                name,
                record,
            })
            .collect();
        apps.sort_by_key(|e| e.revision);
        Ok(Snapshot { head, apps })
    }

    /// One app's entry, if the store holds it.
    pub async fn app(&self, name: &str) -> Result<Option<Entry>, ClusterError> {
        let mut cmd = redis::pipe();
        cmd.cmd("HGET").arg(APPS).arg(name);
        cmd.cmd("HGET").arg(REVISIONS).arg(name);
        let (record, revision): (Option<String>, Option<u64>) =
            self.query(Request::Pipe(cmd)).await?;
        Ok(record.map(|record| Entry {
            name: name.to_string(),
            revision: revision.unwrap_or(0),
            record,
        }))
    }

    /// Run a change script; the new revision.
    async fn change(
        &self,
        script: &Script,
        id: &str,
        planned: &Planned<'_>,
        record: &str,
        route: &str,
    ) -> Result<u64, ClusterError> {
        let mut call = script.prepare_invoke();
        for key in Self::keys() {
            call.key(key);
        }
        call.arg(id)
            .arg(planned.app)
            .arg(planned.expected)
            .arg(record)
            .arg(planned.old_route.unwrap_or(""))
            .arg(route)
            .arg(CHANNEL)
            .arg(planned.floor);
        let reply: Vec<Value> = self.query(Request::Script(call)).await?;
        match int(reply.first()) {
            1 => Ok(int(reply.get(1))),
            2 => Err(ClusterError::RouteTaken {
                route: route.to_string(),
                owner: text(reply.get(1)),
            }),
            4 => Err(ClusterError::Replaced(format!(
                "the cluster store at {} is behind this replica (it lost its latest writes); \
                 the replicas are putting back what they serve: retry in a moment",
                self.shown()
            ))),
            3 => Err(ClusterError::Replaced(format!(
                "the cluster store at {} is not the one this replica synced with (its data was lost \
                 or replaced); the change was not made: wait for the replicas to put their apps \
                 back, or restart them to adopt the store as it is",
                self.shown()
            ))),
            _ => Err(ClusterError::Conflict {
                app: planned.app.to_string(),
                current: int(reply.get(1)),
            }),
        }
    }

    /// Commit `record` (JSON) as app `planned.app` at `route`, if the app
    /// is still at `planned.expected`: its new revision.
    pub async fn save(
        &self,
        id: &str,
        planned: &Planned<'_>,
        record: &str,
        route: &str,
    ) -> Result<u64, ClusterError> {
        self.change(&self.save, id, planned, record, route).await
    }

    /// Remove app `planned.app`, if it is still at `planned.expected`: the
    /// revision of the removal.
    pub async fn remove(&self, id: &str, planned: &Planned<'_>) -> Result<u64, ClusterError> {
        let route = planned.old_route.unwrap_or("");
        let planned = Planned {
            old_route: Some(route),
            ..*planned
        };
        self.change(&self.remove, id, &planned, "", route).await
    }

    /// Store a component's bytes under its digest (once).
    pub async fn put_component(&self, digest: &str, bytes: &[u8]) -> Result<(), ClusterError> {
        let mut call = self.put_component.key(component_key(digest));
        call.key(COMPONENTS).arg(digest).arg(bytes);
        let _: i64 = self.bulk.query(Request::Script(call)).await?;
        Ok(())
    }

    /// Is a component stored?
    pub async fn has_component(&self, digest: &str) -> Result<bool, ClusterError> {
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(component_key(digest));
        Ok(self.link.query(Request::Cmd(cmd)).await?)
    }

    /// A component's bytes, if stored.
    pub async fn component(&self, digest: &str) -> Result<Option<Vec<u8>>, ClusterError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(component_key(digest));
        Ok(self.bulk.query(Request::Cmd(cmd)).await?)
    }

    /// Delete the components no record names (stored long enough ago):
    /// how many.
    pub async fn collect(&self) -> Result<u64, ClusterError> {
        self.collect_older_than(COMPONENT_GRACE_SECS).await
    }

    async fn collect_older_than(&self, grace_secs: u64) -> Result<u64, ClusterError> {
        let mut call = self.collect.key(APPS);
        call.key(COMPONENTS).arg(grace_secs);
        let removed: i64 = self.query(Request::Script(call)).await?;
        if removed < 0 {
            return Err(ClusterError::Corrupt(
                "an app record in the cluster store is not valid JSON".into(),
            ));
        }
        Ok(removed as u64)
    }
}

#[cfg(test)]
mod tests;
