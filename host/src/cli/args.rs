//! The command line as clap parses it: `host serve`'s flags (each with its
//! environment variable) and the client subcommands. Nothing here is
//! validated beyond its type: [`super::validate`] makes a
//! [`crate::config::Config`] of `serve`'s flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};

use crate::cli::{client, kv};
use crate::kv::KvLimits;
use crate::runtime::engine::{MemoryReset, PoolShape};

/// Serve HTTP by running WebAssembly components: every request runs in a
/// fresh, sandboxed instance of the component. The same binary is the
/// client of a running host's admin API (deploy, apps, rollback, canary,
/// remove, kv).
#[derive(Debug, Parser)]
#[command(name = "host", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// With no subcommand, `host` behaves as `host serve`.
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve components over HTTP (the default).
    Serve(Box<ServeArgs>),
    /// Deploy a component as a new version of an app on a running host.
    Deploy(client::DeployArgs),
    /// List the apps of a running host, or show one.
    Apps(client::AppsArgs),
    /// Roll an app back to its previous version, or to a named one.
    Rollback(client::RollbackArgs),
    /// Send a share of an app's traffic to another version; promote or abort it.
    Canary(client::CanaryArgs),
    /// Delete an app from a running host, with its key-value data.
    Remove(client::RemoveArgs),
    /// Read and change an app's key-value data: list, get, set, delete.
    Kv(kv::KvArgs),
}

/// Flags of `host serve`. Every flag can also be set by the environment
/// variable shown in `--help`; a flag on the command line wins.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// A component to serve at `/` as app `default`. Without it (and without
    /// --no-default-app), the guest built by `make build-guest` is served.
    #[arg(env = "HOST_COMPONENT", value_name = "COMPONENT.wasm")]
    pub component: Option<PathBuf>,

    /// Address to listen on. Port 0 picks a free port; the startup line
    /// `Serving HTTP on http://ADDR/` shows the one bound.
    #[arg(long, env = "HOST_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// A TOML manifest of apps to serve (see README, "Deploying apps").
    #[arg(long, env = "HOST_MANIFEST", value_name = "FILE")]
    pub manifest: Option<PathBuf>,

    /// Serve no default guest, not even COMPONENT.wasm: only the manifest's
    /// and deployed apps.
    #[arg(long, env = "HOST_NO_DEFAULT_APP")]
    pub no_default_app: bool,

    /// Where deployed components, app records and compiled code are kept.
    /// Default: $XDG_STATE_HOME/host, or ~/.local/state/host.
    #[arg(long, env = "HOST_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Address of the admin API. Without a token it must be a loopback address.
    #[arg(long, env = "HOST_ADMIN_LISTEN", default_value = "127.0.0.1:8081")]
    pub admin_listen: SocketAddr,

    /// File holding the admin API's bearer token (else $HOST_ADMIN_TOKEN).
    #[arg(long, env = "HOST_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Versions kept per app for rollback.
    #[arg(long, env = "HOST_KEEP_VERSIONS", default_value_t = 10)]
    pub keep_versions: usize,

    /// Largest component a deploy may upload, in bytes (413 above it).
    #[arg(long, env = "HOST_MAX_UPLOAD_BYTES", default_value_t = 100 * 1024 * 1024)]
    pub max_upload_bytes: u64,

    /// Longest a deploy's compilation may take, in milliseconds (422 beyond).
    #[arg(long, env = "HOST_COMPILE_TIMEOUT_MS", default_value_t = 60_000)]
    pub compile_timeout_ms: u64,

    /// Add `x-app-name` and `x-app-version` to every app response.
    #[arg(long, env = "HOST_VERSION_HEADERS", default_value_t = true, action = ArgAction::Set)]
    pub version_headers: bool,

    /// Linear memory cap per instance, in MiB (per-app settings may override,
    /// up to --max-app-memory-mib). A guest that grows past it traps (500).
    #[arg(long, env = "HOST_MEMORY_MIB", default_value_t = 128)]
    pub memory_mib: u64,

    /// The largest `memory_mib` an app may ask for, in MiB: the size of every
    /// pooled memory slot. Deploys asking for more are refused (400).
    #[arg(long, env = "HOST_MAX_APP_MEMORY_MIB", default_value_t = 4096)]
    pub max_app_memory_mib: u64,

    /// MiB of each pooled linear memory that stays resident when its
    /// instance ends (reset in place, see --memory-reset), so the next
    /// instance in the slot does not fault it in again.
    #[arg(long, env = "HOST_MEMORY_KEEP_RESIDENT_MIB", default_value_t = 4)]
    pub memory_keep_resident_mib: u32,

    /// How a memory slot is reset for its next instance: `scan` copies back
    /// only the pages an instance dirtied (best for compiled guests), `copy`
    /// copies all of --memory-keep-resident-mib back (best for interpreters
    /// such as componentize-py, whose dirty pages are scattered); `auto`
    /// picks per component: `copy` (keeping at least 16 MiB) for memory
    /// images of 4 MiB or more, `scan` for the rest.
    #[arg(long, env = "HOST_MEMORY_RESET", value_enum, default_value_t = MemoryReset::Auto)]
    pub memory_reset: MemoryReset,

    /// Core module instances one component may contain (componentize-py
    /// makes 14). A component with more is refused at deploy (422).
    #[arg(long, env = "HOST_MAX_CORE_INSTANCES_PER_COMPONENT", default_value_t = PoolShape::DEFAULT.core_instances)]
    pub max_core_instances_per_component: u32,

    /// Linear memories one component may contain.
    #[arg(long, env = "HOST_MAX_MEMORIES_PER_COMPONENT", default_value_t = PoolShape::DEFAULT.memories)]
    pub max_memories_per_component: u32,

    /// Tables one component may contain.
    #[arg(long, env = "HOST_MAX_TABLES_PER_COMPONENT", default_value_t = PoolShape::DEFAULT.tables)]
    pub max_tables_per_component: u32,

    /// Elements one table may hold or grow to (componentize-js needs 7,800).
    #[arg(long, env = "HOST_MAX_TABLE_ELEMENTS", default_value_t = PoolShape::DEFAULT.table_elements as u32)]
    pub max_table_elements: u32,

    /// Host-side state of one component instance (wasmtime's instance
    /// contexts), in KiB.
    #[arg(long, env = "HOST_MAX_COMPONENT_INSTANCE_KIB", default_value_t = (PoolShape::DEFAULT.component_instance_bytes >> 10) as u32)]
    pub max_component_instance_kib: u32,

    /// Guest memory (linear memories and tables) all instances together may
    /// hold, in MiB. Growth past it fails that request with 503. Default:
    /// three quarters of the memory limit of the host's cgroup, or of the
    /// machine's RAM.
    #[arg(long, env = "HOST_MEMORY_BUDGET_MIB")]
    pub memory_budget_mib: Option<u64>,

    /// Request timeout in milliseconds, on guest CPU and on waiting alike (504).
    #[arg(long, env = "HOST_TIMEOUT_MS", default_value_t = 30_000)]
    pub timeout_ms: u64,

    /// Requests served at once, host-wide; more are refused with 503.
    #[arg(long, env = "HOST_MAX_CONCURRENT", default_value_t = 1000)]
    pub max_concurrent: u32,

    /// Requests of one app served at once, unless its settings say otherwise
    /// (503 beyond). Default: three quarters of --max-concurrent, so one
    /// app's clients can never take every slot.
    #[arg(long, env = "HOST_APP_MAX_CONCURRENT")]
    pub app_max_concurrent: Option<u32>,

    /// Largest request body accepted, in bytes (413 above it).
    #[arg(long, env = "HOST_MAX_BODY_BYTES", default_value_t = 100 * 1024 * 1024)]
    pub max_body_bytes: u64,

    /// On SIGINT/SIGTERM, how long in-flight requests may take to finish, in milliseconds.
    #[arg(long, env = "HOST_DRAIN_TIMEOUT_MS", default_value_t = 30_000)]
    pub drain_timeout_ms: u64,

    /// On SIGINT/SIGTERM, how long to keep accepting (with /readyz false)
    /// before stopping, so load balancers can move traffic away, in milliseconds.
    #[arg(long, env = "HOST_SHUTDOWN_DELAY_MS", default_value_t = 1000)]
    pub shutdown_delay_ms: u64,

    /// TLS certificate chain (PEM). With --tls-key, the public listener
    /// speaks HTTPS (HTTP/2 by ALPN). Reloaded on SIGHUP and on change.
    #[arg(long, env = "HOST_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM) for --tls-cert.
    #[arg(long, env = "HOST_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Open connections on each listener; at the cap, new ones wait.
    #[arg(long, env = "HOST_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Time a client has to send a request's headers, in milliseconds:
    /// from accept to the first complete request head (TLS handshake and
    /// HTTP/2 preface included), and for each later head. Slower
    /// connections are closed.
    #[arg(long, env = "HOST_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,

    /// A connection with no request in flight for this long is closed, in
    /// milliseconds (HTTP/2 gets a GOAWAY first).
    #[arg(long, env = "HOST_IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    pub idle_timeout_ms: u64,

    /// Longest pause allowed while a request body arrives, in milliseconds
    /// (408).
    #[arg(long, env = "HOST_BODY_READ_TIMEOUT_MS", default_value_t = 30_000)]
    pub body_read_timeout_ms: u64,

    /// Average bytes per second a request body must keep up once the grace
    /// is over (408 below it); 0 turns the rule off. Only time spent waiting
    /// for the client counts.
    #[arg(long, env = "HOST_BODY_MIN_RATE", default_value_t = 1024)]
    pub body_min_rate: u32,

    /// How long a request body may take before --body-min-rate applies, in
    /// milliseconds.
    #[arg(long, env = "HOST_BODY_MIN_RATE_GRACE_MS", default_value_t = 5_000)]
    pub body_min_rate_grace_ms: u64,

    /// Largest total size of a request's headers, in bytes (431).
    #[arg(long, env = "HOST_MAX_HEADER_BYTES", default_value_t = 16 * 1024)]
    pub max_header_bytes: usize,

    /// Most headers a request may have (431).
    #[arg(long, env = "HOST_MAX_HEADERS", default_value_t = 100)]
    pub max_headers: usize,

    /// Requests per second per app, 0 for none (429); apps may override.
    #[arg(long, env = "HOST_RATE_LIMIT_RPS", default_value_t = 0)]
    pub rate_limit_rps: u32,

    /// Requests per second per client IP per app, 0 for none (429); apps may override.
    #[arg(long, env = "HOST_CLIENT_RATE_LIMIT_RPS", default_value_t = 0)]
    pub client_rate_limit_rps: u32,

    /// Requests one instance may serve before it is dropped; 1 is a fresh
    /// instance per request. Only for stateless apps; apps may override.
    #[arg(long, env = "HOST_INSTANCE_REUSE", default_value_t = 1)]
    pub instance_reuse: u32,

    /// Requests one instance of a WASI 0.3 component may serve at once,
    /// when instances are reused; 1 is one after another. WASI 0.2 apps
    /// ignore it; apps may override.
    #[arg(long, env = "HOST_INSTANCE_CONCURRENCY", default_value_t = 1)]
    pub instance_concurrency: u32,

    /// Host-side resources (wasi:http fields, bodies, streams, pollables)
    /// one instance may hold at once; past it the guest traps (500).
    #[arg(long, env = "HOST_MAX_GUEST_RESOURCES", default_value_t = 256)]
    pub max_guest_resources: u32,

    /// Outbound HTTP calls one instance may have in flight; more fail in the
    /// guest with a wasi:http error.
    #[arg(long, env = "HOST_MAX_OUTBOUND_PER_INSTANCE", default_value_t = 16)]
    pub max_outbound_per_instance: u32,

    /// Outbound HTTP calls all instances of one app may have in flight.
    #[arg(long, env = "HOST_MAX_OUTBOUND_PER_APP", default_value_t = 256)]
    pub max_outbound_per_app: u32,

    /// Directory secret files are read from (`file:NAME` sources). Without
    /// it, apps get no file secrets.
    #[arg(long, env = "HOST_SECRETS_DIR", value_name = "DIR")]
    pub secrets_dir: Option<PathBuf>,

    /// Environment variables an app may name as a secret must start with
    /// this (repeatable; comma-separated in the environment variable).
    #[arg(
        long = "secret-env-prefix",
        env = "HOST_SECRET_ENV_PREFIX",
        value_name = "PREFIX",
        value_delimiter = ',',
        default_value = crate::apps::secrets::DEFAULT_ENV_PREFIX
    )]
    pub secret_env_prefixes: Vec<String>,

    /// Keep apps' key-value data in this Redis
    /// (`redis://[USER:PASSWORD@]HOST:PORT[/DB]`; no TLS yet)
    /// instead of the embedded store in the state directory: for hosts
    /// that share state. Never logged.
    #[arg(
        long,
        env = "HOST_KV_URL",
        value_name = "URL",
        conflicts_with = "kv_url_file",
        hide_env_values = true
    )]
    pub kv_url: Option<String>,

    /// Read the --kv-url from this file (a mounted secret), so credentials
    /// stay out of the command line and the environment.
    #[arg(long, env = "HOST_KV_URL_FILE", value_name = "FILE")]
    pub kv_url_file: Option<PathBuf>,

    /// Cluster mode: share deploys with every host replica on this Redis
    /// (`redis://[USER:PASSWORD@]HOST:PORT[/DB]`): an admin change on any
    /// replica reaches all of them, and apps' key-value data lives there
    /// too unless --kv-url says otherwise. Never logged.
    #[arg(
        long,
        env = "HOST_CLUSTER_URL",
        value_name = "URL",
        conflicts_with = "cluster_url_file",
        hide_env_values = true
    )]
    pub cluster_url: Option<String>,

    /// Read the --cluster-url from this file (a mounted secret).
    #[arg(long, env = "HOST_CLUSTER_URL_FILE", value_name = "FILE")]
    pub cluster_url_file: Option<PathBuf>,

    /// This replica's name in the cluster (default: the host name and the
    /// admin port; on Kubernetes, the pod name).
    #[arg(long, env = "HOST_REPLICA_ID", value_name = "ID")]
    pub replica_id: Option<String>,

    /// Longest key-value key, in bytes.
    #[arg(long, env = "HOST_KV_MAX_KEY_BYTES", default_value_t = KvLimits::DEFAULT.max_key_bytes)]
    pub kv_max_key_bytes: usize,

    /// Largest key-value value, in bytes.
    #[arg(long, env = "HOST_KV_MAX_VALUE_BYTES", default_value_t = KvLimits::DEFAULT.max_value_bytes)]
    pub kv_max_value_bytes: usize,

    /// Keys one app may hold, all its stores together.
    #[arg(long, env = "HOST_KV_MAX_KEYS_PER_APP", default_value_t = KvLimits::DEFAULT.max_keys)]
    pub kv_max_keys_per_app: u64,

    /// Bytes of keys and values one app may hold, all its stores together, in MiB.
    #[arg(long, env = "HOST_KV_QUOTA_MIB", default_value_t = KvLimits::DEFAULT.max_bytes >> 20)]
    pub kv_quota_mib: u64,

    /// Key-value operations one request may make (a batch counts one per key).
    #[arg(long, env = "HOST_KV_MAX_OPS_PER_REQUEST", default_value_t = 1000)]
    pub kv_max_ops_per_request: u32,

    /// HTTP/2: concurrent streams per connection.
    #[arg(long, env = "HOST_H2_MAX_STREAMS", default_value_t = 100)]
    pub h2_max_streams: u32,

    /// HTTP/2: streams reset by the client before being served, per
    /// connection, before it is closed (rapid-reset protection).
    #[arg(long, env = "HOST_H2_MAX_PENDING_RESETS", default_value_t = 20)]
    pub h2_max_pending_resets: usize,

    /// HTTP/2: streams the server may reset for errors, per connection,
    /// before it is closed.
    #[arg(long, env = "HOST_H2_MAX_LOCAL_ERROR_RESETS", default_value_t = 1024)]
    pub h2_max_local_error_resets: usize,

    /// Log format on stderr: `text` for people, `json` (one object per line) for collectors.
    #[arg(long, env = "HOST_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}
