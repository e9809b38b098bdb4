//! What a record serves, made ready outside the registry's lock: for each
//! version it names, its settings checked again against the host's
//! ceilings, code (already in memory, else from [`Compiler`]: the cache or
//! a compile), secrets read, the outbound allow-list parsed, the key-value
//! stores it declared granted, and a [`ServedVersion`] that
//! requests can run on. Versions the app already serves unchanged are kept
//! as they are, warm instances and limiters too.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::apps::compiler::{CodeKind, CodeSource, Compiler, blocking};
use crate::apps::error::AppError;
use crate::apps::records::{AppRecord, VersionRecord, version_settings_key};
use crate::apps::secrets::SecretPolicy;
use crate::apps::settings::{AppSettings, Ceilings};
use crate::kv::service::KvService;
use crate::metrics::metrics;
use crate::routing::{Canary, LiveApp};
use crate::runtime::component::Pre;
use crate::runtime::instance::AppShare;
use crate::runtime::keyvalue::KvAccess;
use crate::runtime::limits::{Limits, MemoryBudget};
use crate::runtime::outbound::OutboundPolicy;
use crate::runtime::served::{Grants, Identity, ServedVersion};

/// Longest the host waits for an app's secrets to be read.
const SECRET_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// What serves one app: its current version and its canary, if any.
pub(crate) struct Served {
    pub(crate) current: Arc<ServedVersion>,
    pub(crate) canary: Option<Canary>,
    /// Code to keep in memory, by digest.
    pub(crate) code: Vec<(String, Pre)>,
    pub(crate) sources: Vec<CodeSource>,
    pub(crate) share: Arc<AppShare>,
}

/// What the host serves for an app now, taken under the registry's lock:
/// where making its next record starts from.
#[derive(Default)]
pub(crate) struct Serving {
    pub(crate) live: Option<Arc<LiveApp>>,
    pub(crate) share: Option<Arc<AppShare>>,
    /// Code in memory for the digests the next record names.
    pub(crate) compiled: HashMap<String, Pre>,
}

/// Makes served versions from records, with the host's settings.
pub(crate) struct Provisioner {
    pub(crate) compiler: Compiler,
    /// Each app's limits unless its settings override them.
    pub(crate) defaults: Limits,
    pub(crate) ceilings: Ceilings,
    pub(crate) secrets: SecretPolicy,
    pub(crate) budget: Arc<MemoryBudget>,
    /// The host's key-value store, and the operations a request may make.
    pub(crate) kv: KvService,
    pub(crate) kv_max_ops: u32,
}

impl Provisioner {
    /// Check `settings` against the host's ceilings and secret rules.
    pub(crate) fn validate(&self, settings: &AppSettings) -> Result<(), AppError> {
        settings.validate(&self.ceilings, &self.secrets)
    }

    /// What requests of a version with `settings` run within.
    pub(crate) fn limits(&self, settings: &AppSettings) -> Limits {
        settings.limits(&self.defaults)
    }

    /// What an app's versions share when they run within `limits`: the
    /// share it has now, unless the caps changed.
    pub(crate) fn share(&self, now: Option<&Arc<AppShare>>, limits: &Limits) -> Arc<AppShare> {
        match now {
            Some(share) if share.caps == (limits.max_concurrent, limits.max_outbound_app) => {
                share.clone()
            }
            _ => AppShare::new(limits, &self.budget),
        }
    }

    /// Read `settings`' secrets off the serving threads, within a bound.
    async fn secrets(&self, settings: &AppSettings) -> Result<Vec<(String, String)>, AppError> {
        let settings = settings.clone();
        let policy = self.secrets.clone();
        let work = blocking(move || settings.resolve_config(&policy));
        tokio::time::timeout(SECRET_READ_TIMEOUT, work)
            .await
            .map_err(|_| {
                AppError::Invalid(format!(
                    "reading the app's secrets took over {} s",
                    SECRET_READ_TIMEOUT.as_secs()
                ))
            })?
    }

    /// A servable version of app `name`: its code (in memory, from `wasm`,
    /// the cache or the stored component) and everything its requests
    /// need. The compile is bounded in time unless `bounded` is false.
    pub(crate) async fn version(
        &self,
        name: &str,
        version: &VersionRecord,
        (wasm, in_memory): (Option<Bytes>, Option<Pre>),
        bounded: bool,
        share: &Arc<AppShare>,
    ) -> Result<(Arc<ServedVersion>, Pre, CodeSource), AppError> {
        let settings = &version.settings;
        let in_version = |e: AppError| e.context(format_args!("version {}", version.version));
        // Again at every use, not only at deploy: the host's ceilings and
        // secret rules may have changed since (a restart with other flags,
        // a smaller pod), and a setting that cannot be applied is refused,
        // never silently capped.
        self.validate(settings).map_err(in_version)?;
        let (pre, source) = match in_memory {
            Some(pre) => {
                metrics().code_load("memory");
                (pre, CodeSource::Memory)
            }
            None => {
                let kind = CodeKind {
                    world: version.world,
                    image_bytes: version.memory_image_bytes,
                    size: version.size,
                };
                self.compiler
                    .code(&version.digest, wasm, kind, bounded)
                    .await?
            }
        };
        let config = self.secrets(settings).await.map_err(in_version)?;
        let app: Arc<str> = name.into();
        let grants = Grants {
            env: settings
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            config,
            outbound: OutboundPolicy::parse(&settings.allow_outbound)?,
            kv: KvAccess::new(
                &app,
                self.kv.clone(),
                settings.key_value.clone(),
                self.kv_max_ops,
            ),
        };
        let served = Arc::new(ServedVersion::new(
            Identity {
                app,
                version: version.version.as_str().into(),
                digest: version.digest.as_str().into(),
                settings_key: version_settings_key(version),
            },
            pre.clone(),
            self.limits(settings),
            grants,
            share.clone(),
        ));
        Ok((served, pre, source))
    }

    /// Everything `record` serves, starting from what is served `now`:
    /// versions served unchanged are kept, the rest are loaded or compiled
    /// (`upload` is the bytes of a version just deployed).
    pub(crate) async fn record(
        &self,
        record: &AppRecord,
        now: Serving,
        upload: Option<(&str, Bytes)>,
    ) -> Result<Served, AppError> {
        let mut code = Vec::new();
        let mut sources = Vec::new();
        // Every version the record serves shares the current one's caps.
        let limits = self.limits(&record.version(&record.current)?.settings);
        let share = self.share(now.share.as_ref(), &limits);
        let mut make = async |id: &str| -> Result<Arc<ServedVersion>, AppError> {
            let version = record.version(id)?;
            let served_now = now.live.as_deref().and_then(|app| {
                std::iter::once(&app.current)
                    .chain(app.canary.as_ref().map(|c| &c.version))
                    .find(|d| &*d.version == id)
            });
            if let Some(served) = served_now
                && served.settings_key == version_settings_key(version)
                && Arc::ptr_eq(served.share(), &share)
            {
                return Ok(served.clone());
            }
            let wasm = upload
                .as_ref()
                .filter(|(digest, _)| *digest == version.digest)
                .map(|(_, wasm)| wasm.clone());
            let in_memory = now.compiled.get(&version.digest).cloned();
            let (served, pre, source) = self
                .version(&record.name, version, (wasm, in_memory), true, &share)
                .await?;
            code.push((version.digest.clone(), pre));
            sources.push(source);
            Ok(served)
        };
        let current = make(&record.current).await?;
        let canary = match &record.canary {
            Some(c) => Some(Canary {
                version: make(&c.version).await?,
                weight: c.weight,
                sticky: c.sticky,
            }),
            None => None,
        };
        Ok(Served {
            current,
            canary,
            code,
            sources,
            share,
        })
    }
}
