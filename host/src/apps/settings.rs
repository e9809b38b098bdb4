//! Per-app settings: environment variables, `wasi:config` values, secrets,
//! the outbound HTTP allow-list, the key-value stores it may open and limit
//! overrides. They travel with each
//! deployed version (a rollback restores the settings too), are validated
//! before anything is compiled or stored, and never carry a secret's value:
//! a secret is stored as where to read it from, and read at deploy and at
//! start.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::apps::error::AppError;
use crate::apps::secrets::{SecretPolicy, SecretSource};
use crate::kv::validate_store_name;
use crate::runtime::limits::{Limits, MAX_INSTANCE_CONCURRENCY, MAX_INSTANCE_REUSE};
use crate::runtime::outbound::OutboundPolicy;

/// Most key-value stores one app may declare.
pub const MAX_KV_STORES: usize = 16;

/// Longest per-app timeout, in milliseconds.
pub const MAX_APP_TIMEOUT_MS: u64 = 3_600_000;

/// What no app's settings may exceed: the host's own ceilings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ceilings {
    /// The largest `memory_mib` an app may have: `--max-app-memory-mib`
    /// (the pooling allocator's slot size), or `--memory-budget-mib` if
    /// that is lower.
    pub memory_mib: u64,
    /// `--max-concurrent`: the host-wide cap.
    pub max_concurrent: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppSettings {
    /// Environment variables the guest sees (`wasi:cli/environment`).
    pub env: BTreeMap<String, String>,
    /// Values the guest reads through `wasi:config/store`.
    pub config: BTreeMap<String, String>,
    /// Secret name → where the host reads its value. The guest reads it
    /// through `wasi:config/store` under its name.
    pub secrets: BTreeMap<String, SecretSource>,
    /// `scheme://host[:port]` patterns the guest may call; `*.` for subdomains.
    pub allow_outbound: Vec<String>,
    /// The key-value stores the guest may open through `wasi:keyvalue`
    /// (each in the app's own namespace); any other is `access-denied`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub key_value: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    /// Requests per second for the app (0: unlimited).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit_rps: Option<u32>,
    /// Requests per second per client IP (0: unlimited).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_rate_limit_rps: Option<u32>,
    /// Requests one instance may serve, one after another (1: a fresh
    /// instance per request). For stateless apps only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_reuse: Option<u32>,
    /// Requests one instance may serve at once (WASI 0.3 components with
    /// instance reuse only; 1: one after another).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_concurrency: Option<u32>,
}

impl AppSettings {
    /// Check every value against the host's ceilings and the operator's
    /// secret rules; the message says which one and how to fix it.
    pub fn validate(&self, ceilings: &Ceilings, secrets: &SecretPolicy) -> Result<(), AppError> {
        for (key, value) in &self.env {
            if key.is_empty() || key.contains(['=', '\0']) {
                return Err(AppError::Invalid(format!(
                    "env var name {key:?} must be non-empty, without `=`"
                )));
            }
            if value.contains('\0') {
                return Err(AppError::Invalid(format!(
                    "env var {key} contains a NUL byte"
                )));
            }
        }
        for key in self.config.keys().chain(self.secrets.keys()) {
            if key.is_empty() {
                return Err(AppError::Invalid(
                    "config and secret names must be non-empty".into(),
                ));
            }
        }
        if let Some(key) = self.secrets.keys().find(|k| self.config.contains_key(*k)) {
            return Err(AppError::Invalid(format!(
                "{key} is both a config value and a secret; both are read through wasi:config, pick one"
            )));
        }
        for (name, source) in &self.secrets {
            secrets
                .check(source)
                .map_err(|e| AppError::Invalid(format!("secret {name}: {e}")))?;
        }
        OutboundPolicy::parse(&self.allow_outbound)?;
        if self.key_value.len() > MAX_KV_STORES {
            return Err(AppError::Invalid(format!(
                "key_value declares {} stores, over the limit of {MAX_KV_STORES}",
                self.key_value.len()
            )));
        }
        for (i, store) in self.key_value.iter().enumerate() {
            validate_store_name(store).map_err(|e| AppError::Invalid(format!("key_value: {e}")))?;
            if self.key_value[..i].contains(store) {
                return Err(AppError::Invalid(format!(
                    "key_value names the store {store:?} twice"
                )));
            }
        }
        if let Some(mib) = self.memory_mib
            && !(1..=ceilings.memory_mib).contains(&mib)
        {
            return Err(AppError::Invalid(format!(
                "memory_mib must be between 1 and the host's ceiling of {} (its --max-app-memory-mib, or --memory-budget-mib if lower), got {mib}",
                ceilings.memory_mib
            )));
        }
        if let Some(ms) = self.timeout_ms
            && !(1..=MAX_APP_TIMEOUT_MS).contains(&ms)
        {
            return Err(AppError::Invalid(format!(
                "timeout_ms must be between 1 and {MAX_APP_TIMEOUT_MS}, got {ms}"
            )));
        }
        if let Some(n) = self.max_concurrent
            && !(1..=ceilings.max_concurrent).contains(&n)
        {
            return Err(AppError::Invalid(format!(
                "max_concurrent must be between 1 and the host's {} (its --max-concurrent), got {n}",
                ceilings.max_concurrent
            )));
        }
        if let Some(n) = self.instance_reuse
            && !(1..=MAX_INSTANCE_REUSE).contains(&n)
        {
            return Err(AppError::Invalid(format!(
                "instance_reuse must be between 1 (a fresh instance per request) and {MAX_INSTANCE_REUSE}, got {n}"
            )));
        }
        if let Some(n) = self.instance_concurrency {
            if !(1..=MAX_INSTANCE_CONCURRENCY).contains(&n) {
                return Err(AppError::Invalid(format!(
                    "instance_concurrency must be between 1 (one request after another) and {MAX_INSTANCE_CONCURRENCY}, got {n}"
                )));
            }
            if n > 1 && self.instance_reuse.is_none_or(|reuse| reuse < 2) {
                return Err(AppError::Invalid(format!(
                    "instance_concurrency {n} shares instances between requests, which needs instance_reuse \
                     above 1 in the same settings"
                )));
            }
        }
        Ok(())
    }

    /// The limits this app's requests run under.
    pub fn limits(&self, host: &Limits) -> Limits {
        Limits {
            memory_bytes: self
                .memory_mib
                .map_or(host.memory_bytes, |mib| mib * 1024 * 1024),
            timeout: self.timeout_ms.map_or(host.timeout, Duration::from_millis),
            max_concurrent: self.max_concurrent.unwrap_or(host.max_concurrent),
            rate_limit_rps: self.rate_limit_rps.unwrap_or(host.rate_limit_rps),
            client_rate_limit_rps: self
                .client_rate_limit_rps
                .unwrap_or(host.client_rate_limit_rps),
            instance_reuse: self.instance_reuse.unwrap_or(host.instance_reuse),
            instance_concurrency: self
                .instance_concurrency
                .unwrap_or(host.instance_concurrency),
            ..*host
        }
    }

    /// `wasi:config` values: config plus secrets, secrets read now.
    /// Blocking (secret files): call off the serving threads.
    pub fn resolve_config(
        &self,
        secrets: &SecretPolicy,
    ) -> Result<Vec<(String, String)>, AppError> {
        let mut values: Vec<(String, String)> = self
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (name, source) in &self.secrets {
            let value = secrets
                .read(source)
                .map_err(|e| AppError::Invalid(format!("secret {name}: {e}")))?;
            values.push((name.clone(), value));
        }
        Ok(values)
    }
}

/// Parse `K=V` (for `--env`, `--config`, `--secret`).
pub fn parse_pair(s: &str) -> Result<(String, String), AppError> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(AppError::Invalid(format!("expected KEY=VALUE, got {s:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Limits {
        Limits::fixture()
    }

    const CEILINGS: Ceilings = Ceilings {
        memory_mib: 512,
        max_concurrent: 100,
    };

    #[test]
    fn validation_names_the_bad_value() {
        let none = SecretPolicy::none();
        let s = AppSettings {
            memory_mib: Some(0),
            ..Default::default()
        };
        assert!(
            s.validate(&CEILINGS, &none)
                .unwrap_err()
                .to_string()
                .contains("memory_mib")
        );
        let s = AppSettings {
            memory_mib: Some(513),
            ..Default::default()
        };
        let err = s.validate(&CEILINGS, &none).unwrap_err().to_string();
        assert!(err.contains("--max-app-memory-mib"), "{err}");
        let s = AppSettings {
            max_concurrent: Some(1000),
            ..Default::default()
        };
        assert!(
            s.validate(&CEILINGS, &none)
                .unwrap_err()
                .to_string()
                .contains("max_concurrent")
        );
        let mut s = AppSettings::default();
        s.config.insert("k".into(), "v".into());
        s.secrets.insert("k".into(), SecretSource::Env("K".into()));
        assert!(
            s.validate(&CEILINGS, &none)
                .unwrap_err()
                .to_string()
                .contains("both a config value and a secret")
        );
        let mut s = AppSettings::default();
        s.secrets
            .insert("k".into(), SecretSource::Env("HOST_ADMIN_TOKEN".into()));
        let err = s.validate(&CEILINGS, &none).unwrap_err().to_string();
        assert!(
            err.contains("secret k") && err.contains("not allowed"),
            "{err}"
        );
        let mut s = AppSettings::default();
        s.allow_outbound.push("ftp://x".into());
        assert!(s.validate(&CEILINGS, &none).is_err());
    }

    #[test]
    fn missing_secret_error_never_contains_a_value() {
        let mut s = AppSettings::default();
        s.secrets.insert(
            "db".into(),
            SecretSource::Env("HOST_TEST_SURELY_UNSET_VAR".into()),
        );
        let policy = SecretPolicy::new(None, vec!["HOST_TEST_".into()]).unwrap();
        let err = s.resolve_config(&policy).unwrap_err().to_string();
        assert!(
            err.contains("secret db") && err.contains("HOST_TEST_SURELY_UNSET_VAR"),
            "{err}"
        );
    }

    #[test]
    fn limits_override_host_defaults() {
        let mut s = AppSettings::default();
        assert_eq!(s.limits(&host()), host());
        s.memory_mib = Some(16);
        s.timeout_ms = Some(250);
        let l = s.limits(&host());
        assert_eq!(l.memory_bytes, 16 << 20);
        assert_eq!(l.timeout, Duration::from_millis(250));
    }
}
