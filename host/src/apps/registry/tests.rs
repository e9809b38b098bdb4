//! The registry's commit path, in process: a real engine, a temporary
//! state directory and the default guest (built by `make build-guest`),
//! with no listener. Every operation is checked on what is served (the
//! routing table), what the API shows and what is on disk.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::apps::error::AppError;
use crate::apps::provision::Serving;
use crate::apps::registry::{Change, Registry, RegistryConfig};
use crate::apps::secrets::SecretPolicy;
use crate::apps::settings::{AppSettings, Ceilings};
use crate::apps::state_dir::StateDir;
use crate::apps::views::DeployRequest;
use crate::kv::KvLimits;
use crate::kv::service::KvService;
use crate::routing::{Route, Routes};
use crate::runtime::engine::{EngineSpec, Engines, MemoryReset, PoolShape};
use crate::runtime::limits::{Limits, MemoryBudget};

/// A state directory removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        Scratch(std::env::temp_dir().join(format!(
            "host-registry-test-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        )))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The default guest, built into the target directory this test binary
/// was built into (`target/debug/deps/host-…` → `target`).
fn guest() -> Bytes {
    let exe = std::env::current_exe().expect("current_exe");
    let target = exe.ancestors().nth(3).expect("target/<profile>/deps");
    let path = target.join("wasm32-wasip2/release/guest.wasm");
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run `make build-guest`", path.display()));
    Bytes::from(bytes)
}

/// The guest with a custom section naming `n`: the same app, another
/// digest (another version).
fn variant(n: u8) -> Bytes {
    Bytes::from(::tests::variant(&guest(), n.into()))
}

/// `wasm` as `app.wasm` in `dir`, as an operator would declare it.
fn component_file(dir: &Scratch, wasm: Bytes) -> PathBuf {
    std::fs::create_dir_all(&dir.0).unwrap();
    let path = dir.0.join("app.wasm");
    std::fs::write(&path, wasm).unwrap();
    path
}

fn limits() -> Limits {
    Limits {
        memory_bytes: 64 << 20,
        max_concurrent: 8,
        ..Limits::fixture()
    }
}

/// A registry over `state` with `keep` versions per app.
fn registry(state: &Scratch, keep: usize) -> (Arc<Registry>, Arc<Routes>) {
    let engines = Engines::new(EngineSpec {
        max_concurrent: 8,
        max_memory_bytes: 64 << 20,
        shape: PoolShape::DEFAULT,
        keep_resident_bytes: 0,
        reset: MemoryReset::Auto,
    })
    .expect("engine");
    let routes = Arc::new(Routes::default());
    let registry = Registry::new(
        engines,
        StateDir::open(&state.0).expect("state dir"),
        routes.clone(),
        RegistryConfig {
            defaults: limits(),
            ceilings: Ceilings {
                memory_mib: 64,
                max_concurrent: 8,
            },
            secrets: SecretPolicy::none(),
            budget: MemoryBudget::new(u64::MAX),
            keep_versions: keep,
            compile_timeout: Duration::from_secs(300),
            public_base: "http://127.0.0.1:8080".into(),
            kv: KvService::embedded(&state.0.join("kv.redb"), KvLimits::DEFAULT)
                .expect("key-value store"),
            kv_max_ops: 100,
            cluster: None,
        },
    );
    (registry, routes)
}

fn at(route: &str) -> DeployRequest {
    DeployRequest {
        route: Some(route.into()),
        ..Default::default()
    }
}

/// The app and version the routing table sends `path` to.
fn served(routes: &Routes, path: &str) -> Option<(String, String)> {
    let table = routes.table();
    let app = table.lookup(None, path)?;
    Some((app.name.to_string(), app.current.version.to_string()))
}

fn record_on_disk(state: &Scratch, name: &str) -> Option<serde_json::Value> {
    let text = std::fs::read(state.0.join("apps").join(format!("{name}.json"))).ok()?;
    serde_json::from_slice(&text).ok()
}

#[tokio::test]
async fn a_change_planned_on_a_record_that_has_since_changed_is_refused_and_changes_nothing() {
    let state = Scratch::new();
    let (registry, routes) = registry(&state, 5);
    let first = registry.deploy("a", guest(), at("/a")).await.unwrap();
    let stale = registry.inner.lock().await.records["a"].clone();
    let second = registry.deploy("a", variant(1), at("/a")).await.unwrap();
    assert_ne!(first.current_version, second.current_version);

    // A change planned on the first record (making its version current
    // again) commits after the second deploy.
    let after = crate::apps::plan::deploy(
        Some(&stale),
        "a",
        stale.route.clone(),
        stale.versions[0].clone(),
        5,
    );
    let prepared = registry
        .provision
        .record(&after, Serving::default(), None)
        .await
        .unwrap();
    let change = Change::Save {
        before: Some(stale),
        record: after,
        served: prepared,
    };
    let err = registry.commit("a", change).await.unwrap_err();
    assert!(matches!(err, AppError::Conflict(_)), "{err}");
    assert!(err.to_string().contains("retry"), "{err}");

    let view = registry.get("a").await.unwrap();
    assert_eq!(view.current_version, second.current_version);
    assert_eq!(
        served(&routes, "/a"),
        Some(("a".into(), second.current_version.clone()))
    );
    assert_eq!(
        record_on_disk(&state, "a").unwrap()["current"],
        second.current_version.as_str()
    );
}

#[tokio::test]
async fn one_route_serves_one_app_and_a_refused_deploy_stores_no_record() {
    let state = Scratch::new();
    let (registry, routes) = registry(&state, 5);
    let a = registry.deploy("a", guest(), at("/x")).await.unwrap();
    let err = registry
        .deploy("b", variant(2), at("/x/"))
        .await
        .unwrap_err();
    assert!(matches!(err, AppError::Conflict(_)), "{err}");
    assert!(err.to_string().contains("already served by app a"), "{err}");
    assert!(record_on_disk(&state, "b").is_none());
    assert!(matches!(
        registry.get("b").await,
        Err(AppError::NotFound(_))
    ));
    assert_eq!(served(&routes, "/x"), Some(("a".into(), a.current_version)));

    // Two new apps planned for one free route: the second to commit is
    // refused there, at the commit.
    let version = registry.inner.lock().await.records["a"].versions[0].clone();
    let plan_for = |name: &str| {
        let route = Route::new("/z", None).unwrap();
        crate::apps::plan::deploy(None, name, route, version.clone(), 5)
    };
    let (c, d) = (plan_for("c"), plan_for("d"));
    for (name, record, expect_ok) in [("c", c, true), ("d", d, false)] {
        let served = registry
            .provision
            .record(&record, Serving::default(), None)
            .await
            .unwrap();
        let change = Change::Save {
            before: None,
            record,
            served,
        };
        let result = registry.commit(name, change).await;
        assert_eq!(result.is_ok(), expect_ok, "{name}");
        if let Err(err) = result {
            assert!(err.to_string().contains("already served by app c"), "{err}");
            assert!(matches!(err, AppError::Conflict(_)), "{err}");
        }
    }
    assert!(record_on_disk(&state, "d").is_none());
    assert_eq!(served(&routes, "/z").map(|(app, _)| app), Some("c".into()));

    // Moving an app onto a taken route is refused the same way.
    registry.deploy("b", variant(2), at("/y")).await.unwrap();
    let err = registry
        .deploy("b", variant(3), at("/x"))
        .await
        .unwrap_err();
    assert!(matches!(err, AppError::Conflict(_)), "{err}");
    assert_eq!(registry.get("b").await.unwrap().route, "/y");
}

#[tokio::test]
async fn every_version_change_goes_through_the_record_on_disk() {
    let state = Scratch::new();
    let (registry, routes) = registry(&state, 5);
    let v1 = registry.deploy("a", guest(), at("/")).await.unwrap();
    let v2 = registry.deploy("a", variant(1), at("/")).await.unwrap();
    let (v1, v2) = (v1.current_version, v2.current_version);

    let canary = registry.set_canary("a", &v1, 30, false).await.unwrap();
    assert_eq!(canary.canary.as_ref().map(|c| c.weight), Some(30));
    assert_eq!(record_on_disk(&state, "a").unwrap()["canary"]["weight"], 30);
    let promoted = registry.promote("a").await.unwrap();
    assert_eq!(promoted.current_version, v1);
    assert!(promoted.canary.is_none());
    assert_eq!(served(&routes, "/"), Some(("a".into(), v1.clone())));

    let back = registry.rollback("a", Some(&v2)).await.unwrap();
    assert_eq!(back.current_version, v2);
    assert_eq!(record_on_disk(&state, "a").unwrap()["current"], v2.as_str());
    let err = registry.abort_canary("a").await.unwrap_err();
    assert!(matches!(err, AppError::Conflict(_)), "no canary: {err}");

    registry.remove("a", false).await.unwrap();
    assert!(record_on_disk(&state, "a").is_none());
    assert_eq!(served(&routes, "/"), None);
    assert!(matches!(
        registry.remove("a", false).await,
        Err(AppError::NotFound(_))
    ));
}

#[tokio::test]
async fn static_apps_are_changed_only_where_they_are_declared() {
    let state = Scratch::new();
    let dir = Scratch::new();
    let path = component_file(&dir, guest());
    let (registry, routes) = registry(&state, 5);
    let root = Route::new("/s", None).unwrap();
    registry
        .add_static("s", &path, root.clone(), AppSettings::default())
        .await
        .unwrap();
    assert_eq!(served(&routes, "/s").map(|(app, _)| app), Some("s".into()));

    let twice = registry
        .add_static(
            "s",
            &path,
            Route::new("/t", None).unwrap(),
            Default::default(),
        )
        .await
        .unwrap_err();
    assert!(twice.to_string().contains("declared twice"), "{twice}");
    for err in [
        registry
            .deploy("s", variant(1), at("/s2"))
            .await
            .unwrap_err(),
        registry.rollback("s", None).await.unwrap_err(),
        registry.remove("s", false).await.unwrap_err(),
    ] {
        assert!(matches!(err, AppError::Conflict(_)), "{err}");
        assert!(err.to_string().contains("change it there"), "{err}");
    }
    let clash = registry
        .deploy("d", variant(2), at("/s"))
        .await
        .unwrap_err();
    assert!(
        clash.to_string().contains("already served by app s"),
        "{clash}"
    );
    let missing = registry
        .add_static("m", &dir.0.join("missing.wasm"), root, Default::default())
        .await
        .unwrap_err();
    assert!(missing.to_string().contains("missing.wasm"), "{missing}");
    assert_eq!(registry.list().await.len(), 1);
}

#[tokio::test]
async fn a_restart_restores_what_it_can_and_lists_the_rest_as_failed() {
    let state = Scratch::new();
    {
        let (registry, _) = registry(&state, 5);
        registry.deploy("a", guest(), at("/a")).await.unwrap();
        registry.deploy("b", variant(1), at("/b")).await.unwrap();
    }
    std::fs::write(state.0.join("apps/broken.json"), b"{not json").unwrap();
    // An app whose stored component and compiled code are gone.
    let gone = {
        let (registry, _) = registry(&state, 5);
        let view = registry.deploy("c", variant(5), at("/c")).await.unwrap();
        view.versions[0].record.digest.clone()
    };
    for sub in ["components", "cache"] {
        for entry in std::fs::read_dir(state.0.join(sub)).unwrap().flatten() {
            if entry.file_name().to_string_lossy().starts_with(&gone) {
                std::fs::remove_file(entry.path()).unwrap();
            }
        }
    }
    // A stored record whose route a static app now takes.
    let dir = Scratch::new();
    let path = component_file(&dir, variant(9));

    let (registry, routes) = registry(&state, 5);
    registry
        .add_static(
            "s",
            &path,
            Route::new("/b", None).unwrap(),
            Default::default(),
        )
        .await
        .unwrap();
    let restored = registry.restore().await.unwrap();
    assert_eq!((restored.apps, restored.failed), (1, 3), "{restored:?}");
    assert_eq!(served(&routes, "/a").map(|(app, _)| app), Some("a".into()));
    assert_eq!(served(&routes, "/b").map(|(app, _)| app), Some("s".into()));
    let failed = registry.failed();
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert_eq!(failed[0].0, "b");
    assert!(
        failed[0].1.contains("already served by app s"),
        "{failed:?}"
    );
    // A host failure is told without the state dir's paths (`/readyz`
    // shows it to anyone); the log has them.
    assert_eq!(failed[1].0, "c");
    assert!(failed[1].1.contains("host's log"), "{failed:?}");
    assert!(!failed[1].1.contains('/'), "{failed:?}");
    let b = registry.get("b").await.unwrap();
    assert!(b.failed.is_some());
    // A failed app cannot be changed, only deployed again or removed.
    let err = registry.rollback("b", None).await.unwrap_err();
    assert!(err.to_string().contains("not being served"), "{err}");
    registry.remove("b", false).await.unwrap();
    assert!(record_on_disk(&state, "b").is_none());
    assert_eq!(registry.failed().len(), 1, "c is left");
    assert!(
        state.0.join("apps/broken.json").is_file(),
        "kept for the operator"
    );
}

#[tokio::test]
async fn components_no_record_names_are_collected_and_named_ones_kept() {
    let state = Scratch::new();
    let (registry, _) = registry(&state, 1);
    registry.restore().await.unwrap();
    let v1 = registry.deploy("a", guest(), at("/a")).await.unwrap();
    let digest1 = v1.versions[0].record.digest.clone();
    let stored = |digest: &str| state.0.join(format!("components/{digest}.wasm")).is_file();
    assert!(stored(&digest1));
    // keep_versions = 1: the second deploy drops the first from the record.
    let v2 = registry.deploy("a", variant(1), at("/a")).await.unwrap();
    let digest2 = v2.versions[0].record.digest.clone();
    registry.collect_garbage().await;
    assert!(!stored(&digest1), "no record names it");
    assert!(stored(&digest2));
    let cached = std::fs::read_dir(state.0.join("cache"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect::<Vec<_>>();
    assert!(cached.iter().any(|f| f.starts_with(&digest2)), "{cached:?}");
    assert!(cached.iter().all(|f| f.starts_with(&digest2)), "{cached:?}");
}
