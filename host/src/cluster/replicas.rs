//! The replicas of a cluster, as each reports itself: a heartbeat every
//! [`HEARTBEAT`] (and right after it applies a change) with the revision
//! of each app it serves. A replica not heard from for [`EXPIRY`] is gone
//! (crashed, or partitioned from the store): the next listing drops it.
//! Times are the Redis server's clock, so replicas' clocks do not matter.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cluster::{ClusterError, ClusterStore};
use crate::redis_link::Request;

/// How often a replica reports itself.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// A replica not heard from for this long is no longer live.
pub const EXPIRY: Duration = Duration::from_secs(5);

const BEATS: &str = "cluster:replicas";
const SEEN: &str = "cluster:seen";

/// What a replica reports of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub replica: String,
    /// Its admin API, as it was bound.
    pub admin: String,
    /// Unix seconds when it started.
    pub started_at: u64,
    /// The store's revision it has caught up with.
    pub synced: u64,
    /// Each deployed app it knows of.
    pub apps: BTreeMap<String, Serving>,
}

/// What a replica serves of one app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Serving {
    /// The revision it serves (0: none of this app yet).
    pub revision: u64,
    /// A newer revision it could not serve, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<Failed>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failed {
    pub revision: u64,
    pub reason: String,
}

/// A live replica: its last heartbeat and how old it is.
#[derive(Debug, Clone, Serialize)]
pub struct Live {
    #[serde(flatten)]
    pub beat: Heartbeat,
    pub seen_ms_ago: u64,
}

impl ClusterStore {
    /// Report `beat`.
    pub async fn beat(&self, beat: &Heartbeat) -> Result<(), ClusterError> {
        let json = serde_json::to_string(beat)
            .map_err(|e| ClusterError::Corrupt(format!("a heartbeat could not be encoded: {e}")))?;
        let mut call = self.heartbeat.key(BEATS);
        call.key(SEEN).arg(&beat.replica).arg(json);
        let _: i64 = self.query(Request::Script(call)).await?;
        Ok(())
    }

    /// Stop reporting `replica` (it is shutting down).
    pub async fn leave(&self, replica: &str) -> Result<(), ClusterError> {
        let mut pipe = redis::pipe();
        pipe.cmd("HDEL").arg(BEATS).arg(replica);
        pipe.cmd("HDEL").arg(SEEN).arg(replica);
        let _: (i64, i64) = self.query(Request::Pipe(pipe)).await?;
        Ok(())
    }

    /// Every live replica, by id.
    pub async fn live(&self) -> Result<Vec<Live>, ClusterError> {
        let mut call = self.replicas.key(BEATS);
        call.key(SEEN).arg(EXPIRY.as_millis() as u64);
        let reply: Vec<(String, u64)> = self.query(Request::Script(call)).await?;
        let mut live: Vec<Live> = reply
            .into_iter()
            .filter_map(|(json, age)| {
                let beat: Heartbeat = serde_json::from_str(&json)
                    .inspect_err(|e| tracing::warn!(error = %e, "skipping a replica heartbeat that cannot be read"))
                    .ok()?;
                Some(Live {
                    beat,
                    seen_ms_ago: age,
                })
            })
            .collect();
        live.sort_by(|a, b| a.beat.replica.cmp(&b.beat.replica));
        Ok(live)
    }
}
