//! `host serve`'s raw flags ([`ServeArgs`]) checked one by one into a
//! [`Config`]: ranges, files that must exist, and the combinations that
//! could never work (an instance's reserve over an app's share of the
//! memory budget, pools past the address space), each refused with the
//! flag to change, before anything binds.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

use crate::apps::secrets::SecretPolicy;
use crate::apps::settings::Ceilings;
use crate::cli::args::ServeArgs;
use crate::config::{ClusterConfig, Config, DefaultApp, KvBackend, KvConfig};
use crate::front::FrontConfig;
use crate::kv::KvLimits;
use crate::redis_link::without_credentials;
use crate::runtime::engine::{self, PoolShape};
use crate::runtime::limits::{Limits, MAX_INSTANCE_CONCURRENCY, MAX_INSTANCE_REUSE};

/// Where `make build-guest` leaves the default guest, relative to the workspace.
pub const DEFAULT_GUEST: &str = "target/wasm32-wasip2/release/guest.wasm";

/// Upper bound on `--max-concurrent`: every slot reserves pooled instance
/// memory (virtual address space) up front.
pub const MAX_CONCURRENT_CEILING: u32 = 10_000;
/// Upper bound on `--max-app-memory-mib` (and so `--memory-mib`): a 32-bit
/// linear memory cannot grow past 4 GiB.
pub const MAX_MEMORY_MIB: u64 = 4096;
/// Upper bound on `--memory-budget-mib` (1 TiB).
const MAX_BUDGET_MIB: u64 = 1 << 20;
/// Upper bound on `--max-upload-bytes`: 4 GiB, past any real component.
const MAX_UPLOAD_BYTES: u64 = 4 << 30;
/// Upper bound on `--max-body-bytes`: 1 TiB.
const MAX_BODY_BYTES: u64 = 1 << 40;

/// An hour, the ceiling of every time limit.
const HOUR_MS: u64 = 3_600_000;

/// `value` must lie in `range`; the message names the flag.
fn in_range<T>(flag: &str, value: T, range: std::ops::RangeInclusive<T>) -> Result<T>
where
    T: PartialOrd + std::fmt::Display + Copy,
{
    ensure!(
        range.contains(&value),
        "--{flag} must be between {} and {}, got {value}",
        range.start(),
        range.end()
    );
    Ok(value)
}

fn millis(flag: &str, value: u64, max: u64) -> Result<Duration> {
    in_range(flag, value, 1..=max).map(Duration::from_millis)
}

/// Check every value of `serve`'s command line and make the config;
/// the error says which flag to fix and how.
pub fn config(mut args: ServeArgs) -> Result<Config> {
    let state_dir = match args.state_dir.take() {
        Some(dir) => dir,
        None => default_state_dir(),
    };
    let kv = kv_config(&args, &state_dir)?;
    let cluster = cluster_config(&args)?;
    let default_app = match args.component {
        // --no-default-app wins, even over HOST_COMPONENT from the environment.
        _ if args.no_default_app => DefaultApp::None,
        Some(path) => {
            ensure!(
                path.is_file(),
                "component file {} does not exist",
                path.display()
            );
            DefaultApp::Explicit(path)
        }
        // With a manifest or deployed apps, the default guest is optional.
        None if args.manifest.is_some() || has_deployed_apps(&state_dir) => {
            default_guest().map_or(DefaultApp::None, DefaultApp::Implicit)
        }
        None => DefaultApp::Implicit(default_guest()?),
    };
    if let Some(manifest) = &args.manifest {
        ensure!(
            manifest.is_file(),
            "manifest {} does not exist",
            manifest.display()
        );
    }
    let max_app_memory_mib = in_range(
        "max-app-memory-mib",
        args.max_app_memory_mib,
        1..=MAX_MEMORY_MIB,
    )?;
    let memory_mib = in_range("memory-mib", args.memory_mib, 1..=max_app_memory_mib)?;
    let keep_resident_mib = in_range(
        "memory-keep-resident-mib",
        args.memory_keep_resident_mib,
        0..=1024,
    )?;
    let pool = PoolShape {
        core_instances: in_range(
            "max-core-instances-per-component",
            args.max_core_instances_per_component,
            1..=1000,
        )?,
        memories: in_range(
            "max-memories-per-component",
            args.max_memories_per_component,
            1..=64,
        )?,
        tables: in_range(
            "max-tables-per-component",
            args.max_tables_per_component,
            1..=1000,
        )?,
        table_elements: in_range(
            "max-table-elements",
            args.max_table_elements,
            1..=10_000_000,
        )? as usize,
        component_instance_bytes: (in_range(
            "max-component-instance-kib",
            args.max_component_instance_kib,
            64..=1 << 20,
        )? as usize)
            << 10,
    };
    let memory_budget_mib = match args.memory_budget_mib {
        Some(mib) => in_range("memory-budget-mib", mib, 1..=MAX_BUDGET_MIB)?,
        None => default_memory_budget_mib(),
    };
    let instance_reuse = in_range(
        "instance-reuse",
        args.instance_reuse,
        1..=MAX_INSTANCE_REUSE,
    )?;
    let instance_concurrency = in_range(
        "instance-concurrency",
        args.instance_concurrency,
        1..=MAX_INSTANCE_CONCURRENCY,
    )?;
    ensure!(
        instance_concurrency == 1 || instance_reuse > 1,
        "--instance-concurrency {instance_concurrency} shares instances between requests, which needs \
         --instance-reuse above 1"
    );
    let timeout = millis("timeout-ms", args.timeout_ms, HOUR_MS)?;
    let max_concurrent = in_range(
        "max-concurrent",
        args.max_concurrent,
        1..=MAX_CONCURRENT_CEILING,
    )?;
    let app_max_concurrent = match args.app_max_concurrent {
        Some(n) => in_range("app-max-concurrent", n, 1..=max_concurrent)?,
        // Three quarters: one app's clients leave a quarter to the rest.
        None => (max_concurrent - max_concurrent.div_ceil(4)).max(1),
    };
    let keep_versions = in_range("keep-versions", args.keep_versions, 1..=1000)?;
    let compile_timeout = millis("compile-timeout-ms", args.compile_timeout_ms, HOUR_MS)?;
    let max_upload_bytes = in_range(
        "max-upload-bytes",
        args.max_upload_bytes,
        1024..=MAX_UPLOAD_BYTES,
    )?;
    let max_body_bytes = in_range("max-body-bytes", args.max_body_bytes, 0..=MAX_BODY_BYTES)?;
    let max_connections = in_range("max-connections", args.max_connections, 1..=1_000_000)?;
    let header_read_timeout = millis(
        "header-read-timeout-ms",
        args.header_read_timeout_ms,
        HOUR_MS / 6,
    )?;
    let idle_timeout = millis("idle-timeout-ms", args.idle_timeout_ms, HOUR_MS)?;
    let body_read_timeout = millis("body-read-timeout-ms", args.body_read_timeout_ms, HOUR_MS)?;
    let body_min_rate_grace = millis(
        "body-min-rate-grace-ms",
        args.body_min_rate_grace_ms,
        HOUR_MS,
    )?;
    let drain_timeout = Duration::from_millis(in_range(
        "drain-timeout-ms",
        args.drain_timeout_ms,
        0..=HOUR_MS,
    )?);
    let shutdown_delay = Duration::from_millis(in_range(
        "shutdown-delay-ms",
        args.shutdown_delay_ms,
        0..=HOUR_MS / 6,
    )?);
    let max_header_bytes = in_range("max-header-bytes", args.max_header_bytes, 1024..=1 << 20)?;
    let max_headers = in_range("max-headers", args.max_headers, 8..=10_000)?;
    let h2_max_streams = in_range("h2-max-streams", args.h2_max_streams, 1..=10_000)?;
    let h2_max_pending_resets = in_range(
        "h2-max-pending-resets",
        args.h2_max_pending_resets,
        1..=100_000,
    )?;
    let h2_max_local_error_resets = in_range(
        "h2-max-local-error-resets",
        args.h2_max_local_error_resets,
        1..=100_000,
    )?;
    let max_resources = in_range(
        "max-guest-resources",
        args.max_guest_resources,
        16..=1_000_000,
    )?;
    let max_outbound_app = in_range(
        "max-outbound-per-app",
        args.max_outbound_per_app,
        1..=100_000,
    )?;
    let max_outbound = in_range(
        "max-outbound-per-instance",
        args.max_outbound_per_instance,
        1..=max_outbound_app,
    )?;
    // One instance at the host's own limits must fit the budget, its
    // host-side reserve included; apps may not ask for more than fits.
    let reserve_mib = (crate::runtime::state::host_reserve(&Limits {
        max_resources,
        max_outbound,
        ..Limits::default()
    }) + crate::runtime::keyvalue::KV_HELD_BYTES)
        .div_ceil(1 << 20);
    let app_budget_mib = memory_budget_mib / 4 * 3;
    ensure!(
        memory_mib + reserve_mib <= app_budget_mib,
        "--memory-mib {memory_mib} plus the {reserve_mib} MiB each instance reserves for host-side state \
         (--max-guest-resources, --max-outbound-per-instance, key-value CAS handles) is over an app's share of the guest memory \
         budget ({app_budget_mib} MiB, three quarters of --memory-budget-mib {memory_budget_mib}): lower \
         --memory-mib or raise --memory-budget-mib"
    );
    // Both engines' memory pools must fit the address space, or the
    // first WASI 0.3 deploy would fail long after startup.
    let slot_mib = max_app_memory_mib.min(app_budget_mib - reserve_mib);
    let reserved = engine::pool_reservation(max_concurrent, slot_mib << 20);
    ensure!(
        2 * reserved <= engine::ADDRESS_SPACE_BUDGET,
        "--max-concurrent {max_concurrent} instances with memories of up to {slot_mib} MiB \
         reserve {} TiB of address space per engine, and the WASI 0.2 and 0.3 engines \
         together may reserve at most {} TiB: lower --max-concurrent or --max-app-memory-mib",
        reserved >> 40,
        engine::ADDRESS_SPACE_BUDGET >> 40
    );
    let tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => {
            ensure!(
                cert.is_file(),
                "TLS certificate {} does not exist",
                cert.display()
            );
            ensure!(key.is_file(), "TLS key {} does not exist", key.display());
            Some((cert, key))
        }
        _ => None,
    };
    let secrets = SecretPolicy::new(args.secrets_dir.as_deref(), args.secret_env_prefixes)?;

    let admin_token = admin_token(args.admin_token_file.as_deref())?;
    if admin_token.is_none() && !args.admin_listen.ip().is_loopback() {
        bail!(
            "refusing to serve the admin API on {} without a token: set HOST_ADMIN_TOKEN \
             (or --admin-token-file), or listen on a loopback address",
            args.admin_listen
        );
    }
    ensure!(
        args.admin_listen != args.listen || args.listen.port() == 0,
        "--admin-listen must differ from --listen: the admin API never shares the public port"
    );

    Ok(Config {
        default_app,
        listen: args.listen,
        manifest: args.manifest,
        state_dir,
        admin_listen: args.admin_listen,
        admin_token,
        keep_versions,
        max_upload_bytes,
        compile_timeout,
        limits: Limits {
            memory_bytes: memory_mib << 20,
            timeout,
            max_concurrent: app_max_concurrent,
            max_body_bytes,
            body_read_timeout,
            body_min_rate: args.body_min_rate,
            body_min_rate_grace,
            rate_limit_rps: args.rate_limit_rps,
            client_rate_limit_rps: args.client_rate_limit_rps,
            instance_reuse,
            instance_concurrency,
            max_resources,
            max_outbound,
            max_outbound_app,
        },
        ceilings: Ceilings {
            // An app may not ask for more than one slot holds, nor more
            // than its share of the budget: neither could ever be applied.
            memory_mib: slot_mib,
            max_concurrent,
        },
        memory_budget_bytes: memory_budget_mib << 20,
        pool,
        keep_resident_bytes: (keep_resident_mib as usize) << 20,
        memory_reset: args.memory_reset,
        secrets,
        kv,
        cluster,
        front: FrontConfig {
            max_concurrent,
            version_headers: args.version_headers,
            max_header_bytes,
            max_headers,
        },
        drain_timeout,
        shutdown_delay,
        tls,
        max_connections,
        header_read_timeout,
        idle_timeout,
        h2_max_streams,
        h2_max_pending_resets,
        h2_max_local_error_resets,
    })
}

/// The default `--memory-budget-mib`: three quarters of the memory this
/// process may use (its cgroup's limit, else the machine's RAM); the rest
/// is the host's own (compiled code, connections, host-side guest state).
fn default_memory_budget_mib() -> u64 {
    let available = [cgroup_memory_limit(), physical_memory()]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(4 << 30);
    ((available / 4 * 3) >> 20).clamp(1, MAX_BUDGET_MIB)
}

/// The memory limit of this process's cgroup (v2, then v1), if one is set.
fn cgroup_memory_limit() -> Option<u64> {
    let v2 = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok();
    let v1 = || std::fs::read_to_string("/sys/fs/cgroup/memory/memory.limit_in_bytes").ok();
    let raw = v2.or_else(v1)?;
    // "max" (v2) or a huge number (v1) mean no limit.
    raw.trim().parse::<u64>().ok().filter(|&b| b < 1 << 60)
}

fn physical_memory() -> Option<u64> {
    // SAFETY: sysconf(3) with valid names has no preconditions.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    (pages > 0 && page > 0).then(|| pages as u64 * page as u64)
}

/// Where apps' key-value data lives (`--kv-url` or the URL in
/// `--kv-url-file`, else the embedded store in the state directory) and
/// its limits.
/// A Redis URL given as `--FLAG` or in the file of `--FLAG-file`, checked
/// (parsed now, so a typo stops the start instead of every call).
fn redis_url(flag: &str, url: &Option<String>, file: &Option<PathBuf>) -> Result<Option<String>> {
    let url = match (url, file) {
        (Some(url), _) => url.trim().to_string(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("failed to read the --{flag}-file {}", path.display()))?
            .trim()
            .to_string(),
        (None, None) => return Ok(None),
    };
    ensure!(
        !url.starts_with("rediss://"),
        "--{flag}: TLS to Redis (rediss://) is not supported yet; use redis:// on a private \
         network, or a TLS tunnel (stunnel, a sidecar) on loopback"
    );
    ensure!(
        url.starts_with("redis://"),
        "--{flag} must be a redis:// URL (redis://[USER:PASSWORD@]HOST:PORT[/DB]), got {}",
        without_credentials(&url)
    );
    crate::redis_link::Link::open(&url, "Redis").map_err(|e| anyhow::anyhow!("--{flag}: {e}"))?;
    Ok(Some(url))
}

/// Cluster mode, if `--cluster-url` (or its file) is given.
fn cluster_config(args: &ServeArgs) -> Result<Option<ClusterConfig>> {
    // `--replica-id` alone is ignored: a manifest may set it for every pod
    // (from the pod name) whether or not the host runs in cluster mode.
    let Some(url) = redis_url("cluster-url", &args.cluster_url, &args.cluster_url_file)? else {
        return Ok(None);
    };
    let replica = match &args.replica_id {
        Some(id) => {
            let id = id.trim();
            ensure!(
                !id.is_empty()
                    && id.len() <= 253
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)),
                "--replica-id must be 1-253 letters, digits, `-`, `_`, `.` or `:`, got {id:?}"
            );
            Some(id.to_string())
        }
        None => None,
    };
    Ok(Some(ClusterConfig { url, replica }))
}

fn kv_config(args: &ServeArgs, state_dir: &Path) -> Result<KvConfig> {
    let url = match redis_url("kv-url", &args.kv_url, &args.kv_url_file)? {
        Some(url) => Some(url),
        // A cluster keeps apps' data where it keeps its apps.
        None => redis_url("cluster-url", &args.cluster_url, &args.cluster_url_file)?,
    };
    let backend = match url {
        Some(url) => KvBackend::Redis(url),
        None => KvBackend::Embedded(state_dir.join("kv.redb")),
    };
    let max_key_bytes = in_range("kv-max-key-bytes", args.kv_max_key_bytes, 1..=64 * 1024)?;
    // A value travels in one host call (within its 4 MiB of hostcall
    // fuel), and a CAS handle may hold one (KV_HELD_BYTES).
    let max_value_bytes = in_range(
        "kv-max-value-bytes",
        args.kv_max_value_bytes,
        1..=crate::runtime::keyvalue::KV_HELD_BYTES as usize,
    )?;
    let max_keys = in_range("kv-max-keys-per-app", args.kv_max_keys_per_app, 1..=1 << 40)?;
    let quota_mib = in_range("kv-quota-mib", args.kv_quota_mib, 1..=1 << 20)?;
    let max_ops = in_range(
        "kv-max-ops-per-request",
        args.kv_max_ops_per_request,
        1..=1_000_000,
    )?;
    Ok(KvConfig {
        backend,
        limits: KvLimits {
            max_key_bytes,
            max_value_bytes,
            max_keys,
            max_bytes: quota_mib << 20,
            ..KvLimits::DEFAULT
        },
        max_ops,
    })
}

/// The admin token from `--admin-token-file`, else `$HOST_ADMIN_TOKEN`.
fn admin_token(file: Option<&Path>) -> Result<Option<String>> {
    let token = match file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("failed to read the admin token file {}", path.display()))?
                .trim()
                .to_string(),
        ),
        None => std::env::var("HOST_ADMIN_TOKEN").ok(),
    };
    match token {
        Some(t) if t.is_empty() => bail!("the admin token is empty"),
        Some(t) if t.len() < 16 => {
            bail!("the admin token is too short: use at least 16 characters")
        }
        other => Ok(other),
    }
}

fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("host");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/state/host"),
        None => PathBuf::from(".host-state"),
    }
}

fn has_deployed_apps(state_dir: &Path) -> bool {
    std::fs::read_dir(state_dir.join("apps"))
        .map(|mut entries| entries.next().is_some())
        .unwrap_or(false)
}

/// The guest `make build-guest` produces: looked up from the current
/// directory, then from this crate's workspace (so `cargo run -p host` works
/// from any folder of the checkout).
fn default_guest() -> Result<PathBuf> {
    let candidates = [
        PathBuf::from(DEFAULT_GUEST),
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(DEFAULT_GUEST),
    ];
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    bail!(
        "the default guest has not been built ({DEFAULT_GUEST} is missing): \
         run `make build-guest` first, pass the path of a component to serve, \
         or start with --no-default-app"
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::args::Cli;
    use crate::runtime::engine::MemoryReset;

    /// `host serve` with `flags`, on no default app and a scratch state dir.
    fn validated(flags: &[&str]) -> Result<Config> {
        let state = std::env::temp_dir().join("host-validate-test-state");
        let mut argv = vec!["host", "--no-default-app", "--state-dir"];
        let state = state.to_string_lossy().into_owned();
        argv.push(&state);
        argv.extend(flags);
        let cli = Cli::try_parse_from(argv).map_err(|e| anyhow::anyhow!("{e}"))?;
        config(cli.serve)
    }

    fn refused(flags: &[&str]) -> String {
        match validated(flags) {
            Ok(_) => panic!("{flags:?} was accepted"),
            Err(err) => format!("{err:#}"),
        }
    }

    #[test]
    fn the_defaults_make_a_config() {
        let config = validated(&[]).unwrap();
        assert_eq!(config.default_app, DefaultApp::None);
        assert_eq!(config.memory_reset, MemoryReset::Auto);
        assert_eq!(config.limits.instance_reuse, 1);
        assert_eq!(config.limits.instance_concurrency, 1);
        assert_eq!(config.pool, PoolShape::DEFAULT);
        assert!(config.limits.memory_bytes <= config.ceilings.memory_mib << 20);
    }

    #[test]
    fn every_refusal_names_the_flag_to_change() {
        for (flags, needle) in [
            (&["--memory-mib", "0"][..], "--memory-mib must be between 1"),
            (
                &["--max-app-memory-mib", "8192"],
                "--max-app-memory-mib must be between 1 and 4096",
            ),
            (
                &["--instance-reuse", "0"],
                "--instance-reuse must be between 1",
            ),
            (
                &["--instance-concurrency", "4"],
                "needs --instance-reuse above 1",
            ),
            (
                &["--instance-concurrency", "300", "--instance-reuse", "9"],
                "--instance-concurrency must be between 1 and 256",
            ),
            (
                &["--memory-keep-resident-mib", "2048"],
                "--memory-keep-resident-mib must be between 0 and 1024",
            ),
            (
                &["--manifest", "/surely/not/here.toml"],
                "manifest /surely/not/here.toml does not exist",
            ),
            (
                &[
                    "--max-concurrent",
                    "10000",
                    "--max-app-memory-mib",
                    "4096",
                    "--memory-budget-mib",
                    "1048576",
                ],
                "--max-concurrent or --max-app-memory-mib",
            ),
        ] {
            let err = refused(flags);
            assert!(err.contains(needle), "{flags:?}: {err}");
        }
    }

    #[test]
    fn reuse_and_concurrency_go_into_the_default_limits() {
        let config = validated(&["--instance-reuse", "64", "--instance-concurrency", "8"]).unwrap();
        assert_eq!(config.limits.instance_reuse, 64);
        assert_eq!(config.limits.instance_concurrency, 8);
    }
}
