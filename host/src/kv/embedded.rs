//! The embedded key-value backend: one [redb](https://docs.rs/redb) file in
//! the state directory (`STATE_DIR/kv.redb`), nothing to start or run.
//! redb is an ACID, copy-on-write B-tree store. Reads run where they are
//! called, on a snapshot. Writes go to one writer thread, which runs the
//! writes queued at that moment in one transaction and commits it durably
//! before any of them returns (group commit: one commit, and one fsync, for
//! many writes under load). Each write is all or nothing (a write that
//! fails a check has changed nothing), so a crash leaves each acknowledged
//! write done, and a restart keeps every value.
//!
//! ```text
//! data:   APP \0 STORE \0 KEY  →  value
//! usage:  APP                  →  (keys, bytes of keys and values)
//! ```
//!
//! App and store names hold no NUL, so a bucket's keys are exactly the
//! range under its prefix: no operation of one bucket can reach another's.
//! An app's usage is updated in the same transaction as its data, so its
//! quota holds under any interleaving. Blocking: call from the blocking
//! pool.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};

use tokio::sync::oneshot;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::kv::{Bucket, KeyPage, KvError, KvLimits, Usage, prefix_end};

const DATA: TableDefinition<&[u8], &[u8]> = TableDefinition::new("data");
const USAGE: TableDefinition<&str, (u64, u64)> = TableDefinition::new("usage");

type Result<T, E = KvError> = std::result::Result<T, E>;

fn backend(err: impl std::fmt::Display) -> KvError {
    KvError::Backend(format!("the embedded key-value store failed: {err}"))
}

/// `APP \0 STORE \0`: the first bytes of every key of `bucket`.
fn prefix(bucket: &Bucket) -> Vec<u8> {
    let mut out = Vec::with_capacity(bucket.app.len() + bucket.store.len() + 2);
    out.extend_from_slice(bucket.app.as_bytes());
    out.push(0);
    out.extend_from_slice(bucket.store.as_bytes());
    out.push(0);
    out
}

fn full_key(bucket: &Bucket, key: &str) -> Vec<u8> {
    let mut out = prefix(bucket);
    out.extend_from_slice(key.as_bytes());
    out
}

/// The first key after every key that starts with `prefix` (which ends in
/// a NUL byte).
fn after(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

type DataTable<'t> = redb::Table<'t, &'static [u8], &'static [u8]>;
type UsageTable<'t> = redb::Table<'t, &'static str, (u64, u64)>;

/// One write, run by the writer thread inside a batch's transaction: it
/// changes the tables (or, failing, changes nothing) and returns what
/// answers its caller once the batch is committed, and whether it failed
/// in a way that spoils the whole transaction (the backend's own error).
type Job = Box<dyn FnOnce(&mut DataTable<'_>, &mut UsageTable<'_>) -> (Reply, bool) + Send>;
/// Answers a job's caller with the batch's commit error, if any.
type Reply = Box<dyn FnOnce(Option<&KvError>) + Send>;

/// Jobs one transaction takes at most.
const MAX_BATCH: usize = 256;

/// Why a write has no answer: it never ran (its transaction could not
/// start, which the writer logs) or the writer is gone.
const WRITE_FAILED: &str =
    "the embedded key-value store could not run this write; see the host's log";

/// A write queued for the writer thread: its answer once its batch is
/// committed.
pub struct Pending<T>(oneshot::Receiver<Result<T>>);

impl<T> Pending<T> {
    /// Wait for it without blocking a thread.
    pub async fn done(self) -> Result<T> {
        self.0
            .await
            .unwrap_or_else(|_| Err(KvError::Backend(WRITE_FAILED.into())))
    }
}

/// Bytes the writes waiting for the writer may hold together.
const MAX_QUEUED_BYTES: u64 = 64 << 20;

/// redb's page cache: enough for the hot pages of every app's keys, and
/// within the quarter of memory the guests' budget leaves the host.
const CACHE_BYTES: usize = 64 << 20;

/// A queued write's share of [`MAX_QUEUED_BYTES`], given back when the
/// write has run (or was dropped).
struct Queued(Arc<AtomicU64>, u64);

impl Queued {
    fn take(queued: &Arc<AtomicU64>, size: u64) -> Result<Queued> {
        let before = queued.fetch_add(size, Ordering::AcqRel);
        let held = Queued(queued.clone(), size);
        if before + size > MAX_QUEUED_BYTES && before > 0 {
            return Err(KvError::Backend(format!(
                "the embedded key-value store is busy: {} MiB of writes are waiting for the disk; retry",
                before >> 20
            )));
        }
        Ok(held)
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::AcqRel);
    }
}

/// The embedded store.
pub struct Embedded {
    db: Arc<Database>,
    limits: KvLimits,
    /// Bytes the queued writes hold.
    queued: Arc<AtomicU64>,
    /// To the writer thread; `None` once dropped.
    jobs: Option<mpsc::Sender<Job>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Embedded {
    /// Open (creating if needed) the store at `path`.
    pub fn open(path: &Path, limits: KvLimits) -> Result<Embedded> {
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| {
                KvError::Backend(format!(
                    "cannot open the key-value store {}: {e}",
                    path.display()
                ))
            })?;
        let txn = db.begin_write().map_err(backend)?;
        txn.open_table(DATA).map_err(backend)?;
        txn.open_table(USAGE).map_err(backend)?;
        txn.commit().map_err(backend)?;
        let db = Arc::new(db);
        let (jobs, queue) = mpsc::channel();
        let writer = {
            let db = db.clone();
            std::thread::Builder::new()
                .name("kv-writer".into())
                .spawn(move || write_batches(&db, &queue))
                .map_err(|e| KvError::Backend(format!("cannot start the key-value writer: {e}")))?
        };
        Ok(Embedded {
            db,
            limits,
            queued: Arc::new(AtomicU64::new(0)),
            jobs: Some(jobs),
            writer: Some(writer),
        })
    }

    /// Run `change` on the data and usage tables in a write transaction,
    /// committed durably before this returns. Writes that arrive together
    /// share one transaction (group commit): each is all or nothing, since
    /// a change that fails has changed nothing.
    ///
    /// `size` is about what the write holds (its keys and values): writes
    /// queued behind a slow disk may hold [`MAX_QUEUED_BYTES`] together,
    /// past which a write fails at once. A write whose caller stopped
    /// waiting (its deadline passed) before the writer reached it is
    /// skipped.
    fn submit<T: Send + 'static>(
        &self,
        size: usize,
        change: impl FnOnce(&mut DataTable<'_>, &mut UsageTable<'_>) -> Result<T> + Send + 'static,
    ) -> Result<Pending<T>> {
        let held = Queued::take(&self.queued, size as u64)?;
        let (answer, answered) = oneshot::channel();
        let job: Job = Box::new(move |data, usage| {
            let _held = held;
            if answer.is_closed() {
                let skipped: Reply = Box::new(|_| ());
                return (skipped, false);
            }
            let out = change(data, usage);
            let spoiled = matches!(out, Err(KvError::Backend(_)));
            let reply: Reply = Box::new(move |committed| {
                let _ = answer.send(match committed {
                    Some(err) => Err(err.clone()),
                    None => out,
                });
            });
            (reply, spoiled)
        });
        let stopped = || KvError::Backend(WRITE_FAILED.into());
        self.jobs
            .as_ref()
            .ok_or_else(stopped)?
            .send(job)
            .map_err(|_| stopped())?;
        Ok(Pending(answered))
    }
}

impl Drop for Embedded {
    /// Stop the writer (after the writes queued) and wait for it, so the
    /// file is closed when this returns.
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// The writer thread: take the writes queued, run them in one transaction,
/// commit, answer each; until every sender is gone.
fn write_batches(db: &Database, queue: &mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH
            && let Ok(job) = queue.try_recv()
        {
            batch.push(job);
        }
        let (replies, failed) = run_batch(db, batch);
        if let Some(err) = &failed {
            tracing::error!(error = %err, "a key-value write transaction failed");
        }
        for reply in replies {
            reply(failed.as_ref());
        }
    }
}

/// Run `batch` in one write transaction: the replies, and the error that
/// kept it from committing (the backend failed: then nothing of it is
/// written).
fn run_batch(db: &Database, batch: Vec<Job>) -> (Vec<Reply>, Option<KvError>) {
    let mut replies = Vec::with_capacity(batch.len());
    let txn = match db.begin_write() {
        Ok(txn) => txn,
        Err(err) => return (refuse(batch), Some(backend(err))),
    };
    let mut spoiled = false;
    {
        let tables = txn
            .open_table(DATA)
            .and_then(|data| Ok((data, txn.open_table(USAGE)?)));
        let (mut data, mut usage) = match tables {
            Ok(tables) => tables,
            Err(err) => return (refuse(batch), Some(backend(err))),
        };
        for job in batch {
            let (reply, failed) = job(&mut data, &mut usage);
            spoiled |= failed;
            replies.push(reply);
        }
    }
    if spoiled {
        // Dropping it aborts: none of the batch is written.
        drop(txn);
        let err = KvError::Backend(
            "the embedded key-value store failed during this write; nothing of it was written"
                .into(),
        );
        return (replies, Some(err));
    }
    match txn.commit() {
        Ok(()) => (replies, None),
        Err(err) => (replies, Some(backend(err))),
    }
}

/// Jobs that cannot run (no transaction): dropped, which answers each
/// caller that its write failed.
fn refuse(batch: Vec<Job>) -> Vec<Reply> {
    drop(batch);
    Vec::new()
}

/// Each write queued, not waited for: the [`Pending`] answers once it is
/// committed.
impl Embedded {
    pub fn set_pending(&self, bucket: &Bucket, key: &str, value: &[u8]) -> Result<Pending<()>> {
        self.limits.check_key(key)?;
        self.limits.check_value(value)?;
        let (limits, bucket, key, value) =
            (self.limits, bucket.clone(), key.to_string(), value.to_vec());
        self.submit(key.len() + value.len(), move |data, usage| {
            put(&limits, &bucket, &key, &value, data, usage)
        })
    }

    pub fn delete_pending(&self, bucket: &Bucket, key: &str) -> Result<Pending<()>> {
        self.limits.check_key(key)?;
        let (bucket, key) = (bucket.clone(), key.to_string());
        self.submit(key.len(), move |data, usage| {
            remove(&bucket, &key, data, usage)
        })
    }

    pub fn increment_pending(
        &self,
        bucket: &Bucket,
        key: &str,
        delta: i64,
    ) -> Result<Pending<i64>> {
        self.limits.check_key(key)?;
        let (limits, bucket, key) = (self.limits, bucket.clone(), key.to_string());
        self.submit(key.len() + 20, move |data, usage| {
            let now = match data
                .get(full_key(&bucket, &key).as_slice())
                .map_err(backend)?
            {
                Some(value) => parse_count(&key, value.value())?,
                None => 0,
            };
            let next = now
                .checked_add(delta)
                .ok_or_else(|| KvError::overflow(&key, delta))?;
            put(
                &limits,
                &bucket,
                &key,
                next.to_string().as_bytes(),
                data,
                usage,
            )?;
            Ok(next)
        })
    }

    pub fn swap_pending(
        &self,
        bucket: &Bucket,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> Result<Pending<bool>> {
        self.limits.check_key(key)?;
        self.limits.check_value(value)?;
        let (limits, bucket, key) = (self.limits, bucket.clone(), key.to_string());
        let (expected, value) = (expected.map(<[u8]>::to_vec), value.to_vec());
        self.submit(
            key.len() + value.len() + expected.as_ref().map_or(0, Vec::len),
            move |data, usage| {
                let now = data
                    .get(full_key(&bucket, &key).as_slice())
                    .map_err(backend)?
                    .map(|v| v.value().to_vec());
                if now != expected {
                    return Ok(false);
                }
                put(&limits, &bucket, &key, &value, data, usage)?;
                Ok(true)
            },
        )
    }

    pub fn set_many_pending(
        &self,
        bucket: &Bucket,
        pairs: &[(String, Vec<u8>)],
    ) -> Result<Pending<()>> {
        self.limits.check_batch(pairs.len())?;
        for (key, value) in pairs {
            self.limits.check_key(key)?;
            self.limits.check_value(value)?;
        }
        let (limits, bucket, pairs) = (self.limits, bucket.clone(), pairs.to_vec());
        self.submit(
            pairs.iter().map(|(k, v)| k.len() + v.len()).sum(),
            move |data, usage| {
                // The quota is checked for the whole batch first, so a batch
                // over it writes nothing (it shares its transaction with others).
                let mut sizes: HashMap<&str, Option<u64>> = HashMap::new();
                for (key, _) in &pairs {
                    if !sizes.contains_key(key.as_str()) {
                        let old = data
                            .get(full_key(&bucket, key).as_slice())
                            .map_err(backend)?
                            .map(|v| v.value().len() as u64);
                        sizes.insert(key, old);
                    }
                }
                let mut held = read_usage(usage, &bucket.app)?;
                let mut last: HashMap<&str, u64> = HashMap::new();
                for (key, value) in &pairs {
                    last.insert(key, value.len() as u64);
                }
                for (key, new) in &last {
                    match sizes[key] {
                        Some(old) => held.bytes = held.bytes - old.min(held.bytes) + new,
                        None => {
                            held.keys += 1;
                            held.bytes += key.len() as u64 + new;
                        }
                    }
                }
                limits.check_usage(held)?;
                for (key, value) in &pairs {
                    data.insert(full_key(&bucket, key).as_slice(), value.as_slice())
                        .map_err(backend)?;
                }
                usage
                    .insert(bucket.app.as_str(), (held.keys, held.bytes))
                    .map_err(backend)?;
                Ok(())
            },
        )
    }

    pub fn delete_many_pending(&self, bucket: &Bucket, keys: &[String]) -> Result<Pending<()>> {
        self.limits.check_batch(keys.len())?;
        for key in keys {
            self.limits.check_key(key)?;
        }
        let (bucket, keys) = (bucket.clone(), keys.to_vec());
        self.submit(keys.iter().map(String::len).sum(), move |data, usage| {
            for key in &keys {
                remove(&bucket, key, data, usage)?;
            }
            Ok(())
        })
    }

    pub fn delete_app_pending(&self, app: &str) -> Result<Pending<Usage>> {
        let mut start = app.as_bytes().to_vec();
        start.push(0);
        let end = after(&start);
        let app = app.to_string();
        self.submit(0, move |data, usage| {
            let keys: Vec<Vec<u8>> = data
                .range(start.as_slice()..end.as_slice())
                .map_err(backend)?
                .map(|entry| entry.map(|(k, _)| k.value().to_vec()).map_err(backend))
                .collect::<Result<_>>()?;
            for key in &keys {
                data.remove(key.as_slice()).map_err(backend)?;
            }
            let held = read_usage(usage, &app)?;
            usage.remove(app.as_str()).map_err(backend)?;
            Ok(held)
        })
    }
}

/// Reads, on a snapshot, where they are called.
impl Embedded {
    pub fn limits(&self) -> &KvLimits {
        &self.limits
    }

    pub fn get(&self, bucket: &Bucket, key: &str) -> Result<Option<Vec<u8>>> {
        self.limits.check_key(key)?;
        let txn = self.db.begin_read().map_err(backend)?;
        let data = txn.open_table(DATA).map_err(backend)?;
        let value = data
            .get(full_key(bucket, key).as_slice())
            .map_err(backend)?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    pub fn exists(&self, bucket: &Bucket, key: &str) -> Result<bool> {
        Ok(self.get(bucket, key)?.is_some())
    }

    pub fn list_keys(
        &self,
        bucket: &Bucket,
        key_prefix: &str,
        cursor: Option<&str>,
    ) -> Result<KeyPage> {
        let start = prefix(bucket);
        let first = full_key(bucket, key_prefix);
        let end = match prefix_end(key_prefix.as_bytes()) {
            Some(end) => [start.as_slice(), &end].concat(),
            None => after(&start),
        };
        let from = match cursor {
            // The smallest key after the cursor: the cursor and a NUL.
            Some(cursor) => {
                let mut from = full_key(bucket, cursor);
                from.push(0);
                from.max(first)
            }
            None => first,
        };
        if from >= end {
            return Ok(KeyPage {
                keys: Vec::new(),
                cursor: None,
            });
        }
        let txn = self.db.begin_read().map_err(backend)?;
        let data = txn.open_table(DATA).map_err(backend)?;
        let mut keys = Vec::new();
        let mut more = false;
        for entry in data
            .range(from.as_slice()..end.as_slice())
            .map_err(backend)?
        {
            let (key, _) = entry.map_err(backend)?;
            if keys.len() == self.limits.page_keys {
                more = true;
                break;
            }
            let key = &key.value()[start.len()..];
            keys.push(String::from_utf8_lossy(key).into_owned());
        }
        let cursor = if more { keys.last().cloned() } else { None };
        Ok(KeyPage { keys, cursor })
    }

    pub fn get_many(&self, bucket: &Bucket, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        self.limits.check_batch(keys.len())?;
        for key in keys {
            self.limits.check_key(key)?;
        }
        let txn = self.db.begin_read().map_err(backend)?;
        let data = txn.open_table(DATA).map_err(backend)?;
        let mut total = 0u64;
        keys.iter()
            .map(|key| {
                let value = data
                    .get(full_key(bucket, key).as_slice())
                    .map_err(backend)?;
                let Some(value) = value else { return Ok(None) };
                total += value.value().len() as u64;
                self.limits.check_batch_bytes(total)?;
                Ok(Some(value.value().to_vec()))
            })
            .collect()
    }

    pub fn usage(&self, app: &str) -> Result<Usage> {
        let txn = self.db.begin_read().map_err(backend)?;
        let usage = txn.open_table(USAGE).map_err(backend)?;
        read_usage(&usage, app)
    }
}

fn read_usage(usage: &impl ReadableTable<&'static str, (u64, u64)>, app: &str) -> Result<Usage> {
    Ok(usage
        .get(app)
        .map_err(backend)?
        .map(|v| {
            let (keys, bytes) = v.value();
            Usage { keys, bytes }
        })
        .unwrap_or_default())
}

/// A counter's value: its decimal text.
/// Only the canonical form (`-12`, not `+12`, ` 12` or `012`), which is
/// what Redis' `HINCRBY` takes: a counter counts the same on both.
fn parse_count(key: &str, value: &[u8]) -> Result<i64> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.parse::<i64>().ok().filter(|n| n.to_string() == text))
        .ok_or_else(|| KvError::not_a_number(key))
}

/// Write `key` = `value` in `bucket`, within the app's quota.
fn put(
    limits: &KvLimits,
    bucket: &Bucket,
    key: &str,
    value: &[u8],
    data: &mut DataTable<'_>,
    usage: &mut UsageTable<'_>,
) -> Result<()> {
    let full = full_key(bucket, key);
    let old = data
        .get(full.as_slice())
        .map_err(backend)?
        .map(|v| v.value().len() as u64);
    let mut held = read_usage(usage, &bucket.app)?;
    match old {
        Some(old) => held.bytes = held.bytes - old.min(held.bytes) + value.len() as u64,
        None => {
            held.keys += 1;
            held.bytes += (key.len() + value.len()) as u64;
        }
    }
    limits.check_usage(held)?;
    data.insert(full.as_slice(), value).map_err(backend)?;
    usage
        .insert(bucket.app.as_str(), (held.keys, held.bytes))
        .map_err(backend)?;
    Ok(())
}

/// Remove `key` from `bucket` (nothing if it is absent).
fn remove(
    bucket: &Bucket,
    key: &str,
    data: &mut DataTable<'_>,
    usage: &mut UsageTable<'_>,
) -> Result<()> {
    let removed = data
        .remove(full_key(bucket, key).as_slice())
        .map_err(backend)?
        .map(|v| v.value().len() as u64);
    if let Some(len) = removed {
        let mut held = read_usage(usage, &bucket.app)?;
        held.keys = held.keys.saturating_sub(1);
        held.bytes = held.bytes.saturating_sub(key.len() as u64 + len);
        usage
            .insert(bucket.app.as_str(), (held.keys, held.bytes))
            .map_err(backend)?;
    }
    Ok(())
}
