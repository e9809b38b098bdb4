//! The embedded key-value backend: one [redb](https://docs.rs/redb) file in
//! the state directory (`STATE_DIR/kv.redb`), nothing to start or run.
//! redb is an ACID, copy-on-write B-tree store: every operation is one
//! transaction, committed durably before it returns, so a crash leaves each
//! operation done or not done, and a restart keeps every value.
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

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::kv::{Backend, Bucket, KeyPage, KvError, KvLimits, Usage, prefix_end};

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

/// The embedded store.
pub struct Embedded {
    db: Database,
    limits: KvLimits,
}

impl Embedded {
    /// Open (creating if needed) the store at `path`.
    pub fn open(path: &Path, limits: KvLimits) -> Result<Embedded> {
        let db = Database::create(path).map_err(|e| {
            KvError::Backend(format!(
                "cannot open the key-value store {}: {e}",
                path.display()
            ))
        })?;
        let txn = db.begin_write().map_err(backend)?;
        txn.open_table(DATA).map_err(backend)?;
        txn.open_table(USAGE).map_err(backend)?;
        txn.commit().map_err(backend)?;
        Ok(Embedded { db, limits })
    }

    /// Run `change` on the data and usage tables in one write transaction,
    /// committed only if it succeeds.
    fn write<T>(
        &self,
        change: impl FnOnce(
            &mut redb::Table<&[u8], &[u8]>,
            &mut redb::Table<&str, (u64, u64)>,
        ) -> Result<T>,
    ) -> Result<T> {
        let txn = self.db.begin_write().map_err(backend)?;
        let out = {
            let mut data = txn.open_table(DATA).map_err(backend)?;
            let mut usage = txn.open_table(USAGE).map_err(backend)?;
            change(&mut data, &mut usage)?
        };
        txn.commit().map_err(backend)?;
        Ok(out)
    }
}

impl Backend for Embedded {
    fn limits(&self) -> &KvLimits {
        &self.limits
    }

    fn get(&self, bucket: &Bucket, key: &str) -> Result<Option<Vec<u8>>> {
        self.limits.check_key(key)?;
        let txn = self.db.begin_read().map_err(backend)?;
        let data = txn.open_table(DATA).map_err(backend)?;
        let value = data
            .get(full_key(bucket, key).as_slice())
            .map_err(backend)?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    fn exists(&self, bucket: &Bucket, key: &str) -> Result<bool> {
        Ok(self.get(bucket, key)?.is_some())
    }

    fn set(&self, bucket: &Bucket, key: &str, value: &[u8]) -> Result<()> {
        self.limits.check_key(key)?;
        self.limits.check_value(value)?;
        self.write(|data, usage| put(&self.limits, bucket, key, value, data, usage))
    }

    fn delete(&self, bucket: &Bucket, key: &str) -> Result<()> {
        self.limits.check_key(key)?;
        self.write(|data, usage| remove(bucket, key, data, usage))
    }

    fn list_keys(
        &self,
        bucket: &Bucket,
        key_prefix: &str,
        cursor: Option<&str>,
    ) -> Result<KeyPage> {
        let start = prefix(bucket);
        let first = full_key(bucket, key_prefix);
        let end = match prefix_end(key_prefix.as_bytes()) {
            Some(end) => full_key(bucket, &String::from_utf8_lossy(&end)),
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

    fn increment(&self, bucket: &Bucket, key: &str, delta: i64) -> Result<i64> {
        self.limits.check_key(key)?;
        self.write(|data, usage| {
            let now = match data
                .get(full_key(bucket, key).as_slice())
                .map_err(backend)?
            {
                Some(value) => parse_count(key, value.value())?,
                None => 0,
            };
            let next = now
                .checked_add(delta)
                .ok_or_else(|| KvError::overflow(key, delta))?;
            put(
                &self.limits,
                bucket,
                key,
                next.to_string().as_bytes(),
                data,
                usage,
            )?;
            Ok(next)
        })
    }

    fn swap(
        &self,
        bucket: &Bucket,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> Result<bool> {
        self.limits.check_key(key)?;
        self.limits.check_value(value)?;
        self.write(|data, usage| {
            let now = data
                .get(full_key(bucket, key).as_slice())
                .map_err(backend)?
                .map(|v| v.value().to_vec());
            if now.as_deref() != expected {
                return Ok(false);
            }
            put(&self.limits, bucket, key, value, data, usage)?;
            Ok(true)
        })
    }

    fn get_many(&self, bucket: &Bucket, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
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

    fn set_many(&self, bucket: &Bucket, pairs: &[(String, Vec<u8>)]) -> Result<()> {
        self.limits.check_batch(pairs.len())?;
        for (key, value) in pairs {
            self.limits.check_key(key)?;
            self.limits.check_value(value)?;
        }
        self.write(|data, usage| {
            for (key, value) in pairs {
                put(&self.limits, bucket, key, value, data, usage)?;
            }
            Ok(())
        })
    }

    fn delete_many(&self, bucket: &Bucket, keys: &[String]) -> Result<()> {
        self.limits.check_batch(keys.len())?;
        for key in keys {
            self.limits.check_key(key)?;
        }
        self.write(|data, usage| {
            for key in keys {
                remove(bucket, key, data, usage)?;
            }
            Ok(())
        })
    }

    fn usage(&self, app: &str) -> Result<Usage> {
        let txn = self.db.begin_read().map_err(backend)?;
        let usage = txn.open_table(USAGE).map_err(backend)?;
        read_usage(&usage, app)
    }

    fn delete_app(&self, app: &str) -> Result<Usage> {
        let mut start = app.as_bytes().to_vec();
        start.push(0);
        let end = after(&start);
        self.write(|data, usage| {
            let keys: Vec<Vec<u8>> = data
                .range(start.as_slice()..end.as_slice())
                .map_err(backend)?
                .map(|entry| entry.map(|(k, _)| k.value().to_vec()).map_err(backend))
                .collect::<Result<_>>()?;
            for key in &keys {
                data.remove(key.as_slice()).map_err(backend)?;
            }
            let held = read_usage(usage, app)?;
            usage.remove(app).map_err(backend)?;
            Ok(held)
        })
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
fn parse_count(key: &str, value: &[u8]) -> Result<i64> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .ok_or_else(|| KvError::not_a_number(key))
}

/// Write `key` = `value` in `bucket`, within the app's quota.
fn put(
    limits: &KvLimits,
    bucket: &Bucket,
    key: &str,
    value: &[u8],
    data: &mut redb::Table<&[u8], &[u8]>,
    usage: &mut redb::Table<&str, (u64, u64)>,
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
    data: &mut redb::Table<&[u8], &[u8]>,
    usage: &mut redb::Table<&str, (u64, u64)>,
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
