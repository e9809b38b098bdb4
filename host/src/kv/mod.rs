//! Key-value state for apps, the storage behind `wasi:keyvalue`: each
//! app's data in a namespace of its own ([`Bucket`]: the app and one of
//! the stores it declared), bounded by [`KvLimits`], in one of two
//! backends: an embedded, crash-safe store in the state directory
//! ([`embedded`], the default) or a Redis that several hosts share
//! ([`redis`]). Callers go through [`service::KvService`], which has the
//! same operations on either; one test suite runs against each.
//!
//! Keys and values are bytes to the backend; a bucket's keys are listed in
//! order, a page at a time, with the last key of a page as the cursor.
//! `increment` keeps a counter as its decimal text (what Redis' `INCRBY`
//! keeps, so a counter reads the same whatever the backend); compare and
//! swap compares the whole value.
//!
//! Errors say which limit or what failed; the guest sees them as the
//! interface's `other(...)` and the host and other apps are unaffected.

pub mod embedded;
pub mod redis;
pub mod service;

#[cfg(test)]
mod tests;

/// One store of one app: everything a guest's bucket may touch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Bucket {
    pub app: String,
    pub store: String,
}

impl Bucket {
    /// The namespace of `store` of `app`. App names are checked at deploy
    /// (lowercase letters, digits, `-`); store names by
    /// [`validate_store_name`].
    pub fn new(app: &str, store: &str) -> Bucket {
        Bucket {
            app: app.to_string(),
            store: store.to_string(),
        }
    }
}

/// Store names an app may declare: 1 to 64 of `a-z`, `0-9`, `-`, `_`, `.`.
pub fn validate_store_name(name: &str) -> Result<(), KvError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(KvError::Invalid(format!(
            "store name {name:?} must be 1 to 64 of a-z, 0-9, `-`, `_` and `.`"
        )))
    }
}

/// What one app may keep, and how much one request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLimits {
    /// Longest key, in bytes.
    pub max_key_bytes: usize,
    /// Largest value, in bytes.
    pub max_value_bytes: usize,
    /// Keys one app may hold, all its stores together.
    pub max_keys: u64,
    /// Bytes (keys and values) one app may hold, all its stores together.
    pub max_bytes: u64,
    /// Keys one `list-keys` page returns at most.
    pub page_keys: usize,
    /// Keys one batch call (`get-many`, `set-many`, `delete-many`) may
    /// name.
    pub batch_keys: usize,
    /// Bytes of values one `get-many` may return (the values must also fit
    /// the guest's memory, and the host holds them while copying).
    pub batch_bytes: u64,
}

impl KvLimits {
    /// The defaults of the host's flags.
    pub const DEFAULT: KvLimits = KvLimits {
        max_key_bytes: 256,
        max_value_bytes: 1 << 20,
        max_keys: 100_000,
        max_bytes: 64 << 20,
        page_keys: 1000,
        batch_keys: 1000,
        batch_bytes: 4 << 20,
    };

    /// Can one batch call name `count` keys?
    pub(crate) fn check_batch(&self, count: usize) -> Result<(), KvError> {
        if count > self.batch_keys {
            return Err(KvError::Limit(format!(
                "a batch of {count} keys is over the limit of {} keys per call",
                self.batch_keys
            )));
        }
        Ok(())
    }

    /// Can one `get-many` return `bytes` of values?
    pub(crate) fn check_batch_bytes(&self, bytes: u64) -> Result<(), KvError> {
        if bytes > self.batch_bytes {
            return Err(KvError::Limit(format!(
                "get-many would return {bytes} bytes, over the limit of {} bytes per call; ask for fewer keys",
                self.batch_bytes
            )));
        }
        Ok(())
    }

    pub(crate) fn check_key(&self, key: &str) -> Result<(), KvError> {
        if key.len() > self.max_key_bytes {
            return Err(KvError::Limit(format!(
                "key of {} bytes is over the limit of {} bytes",
                key.len(),
                self.max_key_bytes
            )));
        }
        Ok(())
    }

    pub(crate) fn check_value(&self, value: &[u8]) -> Result<(), KvError> {
        if value.len() > self.max_value_bytes {
            return Err(KvError::Limit(format!(
                "value of {} bytes is over the limit of {} bytes",
                value.len(),
                self.max_value_bytes
            )));
        }
        Ok(())
    }

    /// Would an app holding `usage` stay within its quota?
    pub(crate) fn check_usage(&self, usage: Usage) -> Result<(), KvError> {
        if usage.keys > self.max_keys {
            return Err(KvError::Limit(format!(
                "the app would hold {} keys, over its quota of {}",
                usage.keys, self.max_keys
            )));
        }
        if usage.bytes > self.max_bytes {
            return Err(KvError::Limit(format!(
                "the app would hold {} bytes, over its quota of {}",
                usage.bytes, self.max_bytes
            )));
        }
        Ok(())
    }
}

/// What an app holds, all its stores together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub keys: u64,
    /// Bytes of its keys and values.
    pub bytes: u64,
}

/// The first byte string after every one that starts with `prefix`
/// (`None` for the empty prefix: there is none). Keys are UTF-8, so the
/// last byte is never 0xFF.
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    let last = end.last_mut()?;
    *last = last.checked_add(1)?;
    Some(end)
}

/// A page of keys and where the next one starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPage {
    pub keys: Vec<String>,
    /// The cursor of the next page; `None` after the last.
    pub cursor: Option<String>,
}

impl KvError {
    /// The value at `key` is not a counter.
    pub(crate) fn not_a_number(key: &str) -> KvError {
        KvError::NotANumber(format!(
            "the value of {key} is not a decimal integer, so it cannot be incremented"
        ))
    }

    /// Adding `delta` to the counter at `key` would overflow.
    pub(crate) fn overflow(key: &str, delta: i64) -> KvError {
        KvError::NotANumber(format!(
            "incrementing {key} by {delta} would leave the 64-bit range"
        ))
    }
}

/// Why a key-value operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// A name or argument that can never be used.
    #[error("{0}")]
    Invalid(String),
    /// A key, value or quota limit; the message names it.
    #[error("{0}")]
    Limit(String),
    /// A value `increment` cannot count from (not a decimal integer), or a
    /// count past the integer range.
    #[error("{0}")]
    NotANumber(String),
    /// The backend failed (disk, a lost connection); the message says how.
    #[error("{0}")]
    Backend(String),
    /// The request's deadline passed before the operation finished.
    #[error("{0}")]
    Timeout(String),
}

impl KvError {
    /// The word the `result` label of the KV metrics uses.
    pub fn kind(&self) -> &'static str {
        match self {
            KvError::Invalid(_) => "invalid",
            KvError::Limit(_) => "limit",
            KvError::NotANumber(_) => "not_a_number",
            KvError::Backend(_) => "error",
            KvError::Timeout(_) => "timeout",
        }
    }
}
