//! The validated configuration of `host serve`, plain data: what
//! [`crate::cli::validate`] made of the command line, every value checked.
//! The composition root ([`crate::serve`]) hands each layer its part; no
//! layer below reads this module.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::apps::secrets::SecretPolicy;
use crate::apps::settings::Ceilings;
use crate::front::FrontConfig;
use crate::kv::KvLimits;
use crate::redis_link::without_credentials;
use crate::runtime::engine::{MemoryReset, PoolShape};
use crate::runtime::limits::Limits;

/// The component served at `/` as app `default`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DefaultApp {
    /// None: only the manifest's and deployed apps are served.
    None,
    /// Given on the command line: always served.
    Explicit(PathBuf),
    /// The built default guest: served only if no other app serves `/`.
    Implicit(PathBuf),
}

/// Where apps' key-value data lives.
#[derive(Clone, PartialEq, Eq)]
pub enum KvBackend {
    /// The embedded store, this file in the state directory.
    Embedded(PathBuf),
    /// A Redis (`--kv-url`); the URL may hold credentials, so it is never
    /// shown whole (not even by `Debug`).
    Redis(String),
}

impl std::fmt::Debug for KvBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KvBackend::Embedded(path) => f.debug_tuple("Embedded").field(path).finish(),
            KvBackend::Redis(url) => f
                .debug_tuple("Redis")
                .field(&without_credentials(url))
                .finish(),
        }
    }
}

/// Apps' key-value state: where, and its limits.
/// Cluster mode: the store replicas share, and this replica's name.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub url: String,
    /// `--replica-id`; by default the host name and the bound admin port.
    pub replica: Option<String>,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("url", &without_credentials(&self.url))
            .field("replica", &self.replica)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct KvConfig {
    pub backend: KvBackend,
    pub limits: KvLimits,
    /// Operations one request may make.
    pub max_ops: u32,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub default_app: DefaultApp,
    pub listen: SocketAddr,
    pub manifest: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub admin_listen: SocketAddr,
    pub admin_token: Option<String>,
    pub keep_versions: usize,
    pub max_upload_bytes: u64,
    pub compile_timeout: Duration,
    /// Each app's limits unless its settings override them.
    pub limits: Limits,
    /// What no app's settings may exceed.
    pub ceilings: Ceilings,
    /// Guest memory all instances together may hold, in bytes.
    pub memory_budget_bytes: u64,
    /// What one component may contain (the pooling allocator's shape).
    pub pool: PoolShape,
    /// Bytes of each memory slot kept resident between instances.
    pub keep_resident_bytes: usize,
    /// How memory slots are reset between instances.
    pub memory_reset: MemoryReset,
    pub secrets: SecretPolicy,
    pub kv: KvConfig,
    /// Cluster mode (`--cluster-url`); `None`: a standalone host.
    pub cluster: Option<ClusterConfig>,
    pub front: FrontConfig,
    pub drain_timeout: Duration,
    pub shutdown_delay: Duration,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub h2_max_streams: u32,
    pub h2_max_pending_resets: usize,
    pub h2_max_local_error_resets: usize,
}
