//! The cluster store against a real `redis-server` (one per test, on a
//! free loopback port): compare-and-set on revisions, routes held by one
//! app, a replaced store refused, seeding only an empty store, components
//! collected only when no record names them, and replicas' heartbeats.

use ::tests::RedisServer;

use super::replicas::{Heartbeat, Serving};
use super::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A change that creates `app` (planned on no revision).
fn new(app: &str) -> Planned<'_> {
    Planned {
        app,
        expected: 0,
        old_route: None,
        floor: 0,
    }
}

fn record(digest: &str) -> String {
    format!(r#"{{"name":"a","versions":[{{"digest":"{digest}"}}]}}"#)
}

#[test]
fn changes_are_compare_and_set_on_the_apps_revision() {
    let redis = RedisServer::start();
    runtime().block_on(async {
        let store = ClusterStore::open(&redis.url()).unwrap();
        let head = store.adopt("one").await.unwrap();
        assert_eq!(
            head,
            Head {
                id: "one".into(),
                seq: 0
            }
        );
        // An id once set stays.
        assert_eq!(store.adopt("two").await.unwrap().id, "one");

        assert_eq!(store.save("one", &new("a"), "r1", "/a").await.unwrap(), 1);
        // A second "first deploy" of the same app loses, told the revision.
        let err = store.save("one", &new("a"), "r1'", "/a").await.unwrap_err();
        assert!(
            matches!(err, ClusterError::Conflict { current: 1, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("revision 1"), "{err}");
        let on_1 = Planned {
            app: "a",
            expected: 1,
            old_route: Some("/a"),
            floor: 0,
        };
        assert_eq!(store.save("one", &on_1, "r2", "/a").await.unwrap(), 2);
        // The loser's retry on a stale revision loses again; nothing changed.
        assert!(matches!(
            store.save("one", &on_1, "r3", "/a").await,
            Err(ClusterError::Conflict { current: 2, .. })
        ));
        let entry = store.app("a").await.unwrap().unwrap();
        assert_eq!((entry.revision, entry.record.as_str()), (2, "r2"));

        // Revisions are global: another app's change takes the next one.
        assert_eq!(store.save("one", &new("b"), "b1", "/b").await.unwrap(), 3);
        let snapshot = store.snapshot().await.unwrap();
        assert_eq!(snapshot.head.seq, 3);
        let names: Vec<_> = snapshot
            .apps
            .iter()
            .map(|e| (e.name.as_str(), e.revision))
            .collect();
        assert_eq!(names, [("a", 2), ("b", 3)]);

        // A store with another id (one that lost its data and was set up
        // again) takes no change.
        let err = store.save("other", &on_1, "r3", "/a").await.unwrap_err();
        assert!(matches!(err, ClusterError::Replaced(_)), "{err:?}");

        // A removal is a revision too, and only of the expected one.
        let on_2 = Planned {
            app: "a",
            expected: 2,
            old_route: Some("/a"),
            floor: 0,
        };
        assert_eq!(store.remove("one", &on_2).await.unwrap(), 4);
        assert!(store.app("a").await.unwrap().is_none());
        assert!(matches!(
            store.remove("one", &on_2).await,
            Err(ClusterError::Conflict { current: 0, .. })
        ));
    });
}

#[test]
fn a_route_is_held_by_one_app() {
    let redis = RedisServer::start();
    runtime().block_on(async {
        let store = ClusterStore::open(&redis.url()).unwrap();
        store.adopt("id").await.unwrap();
        store.save("id", &new("a"), "a", "/x").await.unwrap();
        let err = store.save("id", &new("b"), "b", "/x").await.unwrap_err();
        assert!(
            matches!(&err, ClusterError::RouteTaken { owner, .. } if owner == "a"),
            "{err:?}"
        );
        // Host-limited routes are other routes.
        store
            .save("id", &new("b"), "b", "b.example/x")
            .await
            .unwrap();
        // `a` moves on: its old route is free.
        let moved = Planned {
            app: "a",
            expected: 1,
            old_route: Some("/x"),
            floor: 0,
        };
        store.save("id", &moved, "a", "/y").await.unwrap();
        store.save("id", &new("c"), "c", "/x").await.unwrap();
        // Removing `c` frees `/x`.
        let gone = Planned {
            app: "c",
            expected: 4,
            old_route: Some("/x"),
            floor: 0,
        };
        store.remove("id", &gone).await.unwrap();
        store.save("id", &new("d"), "d", "/x").await.unwrap();
    });
}

#[test]
fn only_an_empty_store_is_seeded() {
    let redis = RedisServer::start();
    runtime().block_on(async {
        let store = ClusterStore::open(&redis.url()).unwrap();
        assert_eq!(
            store.head().await.unwrap(),
            Head {
                id: String::new(),
                seq: 0
            }
        );
        let apps = vec![("a".to_string(), 7, "ra".to_string(), "/a".to_string())];
        let head = Head {
            id: "kept".into(),
            seq: 9,
        };
        assert!(store.seed(&head, &apps).await.unwrap());
        assert_eq!(store.head().await.unwrap(), head);
        let entry = store.app("a").await.unwrap().unwrap();
        assert_eq!((entry.revision, entry.record.as_str()), (7, "ra"));
        // The route came back with it.
        let new = Planned {
            app: "b",
            expected: 0,
            old_route: None,
            floor: 0,
        };
        assert!(matches!(
            store.save("kept", &new, "b", "/a").await,
            Err(ClusterError::RouteTaken { .. })
        ));
        // A store with data is never overwritten by a seed; one that a new
        // replica only gave an id is (it holds nothing).
        let fresh = RedisServer::start();
        let other_store = ClusterStore::open(&fresh.url()).unwrap();
        other_store.adopt("new").await.unwrap();
        assert!(other_store.seed(&head, &apps).await.unwrap());
        assert_eq!(other_store.head().await.unwrap(), head);
        let other = Head {
            id: "other".into(),
            seq: 100,
        };
        assert!(!store.seed(&other, &[]).await.unwrap());
        assert_eq!(store.head().await.unwrap(), head);
        // Changes go on from the seeded revision.
        let next = Planned {
            app: "a",
            expected: 7,
            old_route: Some("/a"),
            floor: 0,
        };
        assert_eq!(store.save("kept", &next, "ra2", "/a").await.unwrap(), 10);
    });
}

#[test]
fn a_store_behind_the_replicas_gets_their_newer_records_and_revisions() {
    let redis = RedisServer::start();
    runtime().block_on(async {
        let store = ClusterStore::open(&redis.url()).unwrap();
        store.adopt("id").await.unwrap();
        store.save("id", &new("a"), "a1", "/a").await.unwrap();
        store.save("id", &new("b"), "b2", "/b").await.unwrap();
        // The replica served a at 5, b at 2 (as the store), c at 4 (lost),
        // and d at 3 on a route the store gave to b meanwhile.
        let apps = vec![
            ("a".to_string(), 5, "a5".to_string(), "/a".to_string()),
            ("b".to_string(), 2, "b-old".to_string(), "/b".to_string()),
            ("c".to_string(), 4, "c4".to_string(), "/c".to_string()),
            ("d".to_string(), 3, "d3".to_string(), "/b".to_string()),
        ];
        let head = Head {
            id: "id".into(),
            seq: 6,
        };
        assert_eq!(store.repair(&head, &apps).await.unwrap(), 2);
        let snapshot = store.snapshot().await.unwrap();
        let held: Vec<_> = snapshot
            .apps
            .iter()
            .map(|e| (e.name.as_str(), e.revision, e.record.as_str()))
            .collect();
        assert_eq!(held, [("b", 2, "b2"), ("c", 4, "c4"), ("a", 5, "a5")]);
        // No revision is handed out twice.
        assert_eq!(snapshot.head.seq, 6);
        // A replica that has applied more than the store holds commits
        // nothing until the store is repaired.
        let ahead = Planned {
            app: "e",
            expected: 0,
            old_route: None,
            floor: 9,
        };
        assert!(matches!(
            store.save("id", &ahead, "e", "/e").await,
            Err(ClusterError::Replaced(_))
        ));
        assert_eq!(store.save("id", &new("e"), "e", "/e").await.unwrap(), 7);
        // Never into another cluster's store.
        let other = Head {
            id: "other".into(),
            seq: 9,
        };
        assert!(matches!(
            store.repair(&other, &apps).await,
            Err(ClusterError::Replaced(_))
        ));
    });
}

#[test]
fn components_go_only_when_no_record_names_them() {
    let redis = RedisServer::start();
    runtime().block_on(async {
        let store = ClusterStore::open(&redis.url()).unwrap();
        store.adopt("id").await.unwrap();
        store.put_component("d1", b"one").await.unwrap();
        store.put_component("d2", b"two").await.unwrap();
        let new = Planned {
            app: "a",
            expected: 0,
            old_route: None,
            floor: 0,
        };
        store.save("id", &new, &record("d1"), "/a").await.unwrap();
        // Within the grace period nothing goes.
        assert_eq!(store.collect().await.unwrap(), 0);
        assert_eq!(store.collect_older_than(0).await.unwrap(), 1);
        assert_eq!(store.component("d1").await.unwrap().unwrap(), b"one");
        assert!(store.component("d2").await.unwrap().is_none());
    });
}

#[test]
fn replicas_report_themselves_and_leave() {
    let redis = RedisServer::start();
    runtime().block_on(async {
        let store = ClusterStore::open(&redis.url()).unwrap();
        let beat = |replica: &str, revision| Heartbeat {
            replica: replica.into(),
            admin: "127.0.0.1:1".into(),
            started_at: 1,
            synced: revision,
            apps: [(
                "a".to_string(),
                Serving {
                    revision,
                    failed: None,
                },
            )]
            .into(),
        };
        store.beat(&beat("r2", 3)).await.unwrap();
        store.beat(&beat("r1", 2)).await.unwrap();
        store.beat(&beat("r1", 3)).await.unwrap();
        let live = store.live().await.unwrap();
        let seen: Vec<_> = live
            .iter()
            .map(|l| (l.beat.replica.as_str(), l.beat.synced))
            .collect();
        assert_eq!(seen, [("r1", 3), ("r2", 3)]);
        assert!(
            live.iter()
                .all(|l| l.seen_ms_ago < replicas::EXPIRY.as_millis() as u64)
        );
        store.leave("r1").await.unwrap();
        let live = store.live().await.unwrap();
        assert_eq!(live.len(), 1);
        // One not heard from for longer than the expiry is dropped.
        let mut cmd = redis::cmd("HSET");
        cmd.arg("cluster:seen").arg("r2").arg(1);
        let _: i64 = store.query(Request::Cmd(cmd)).await.unwrap();
        assert!(store.live().await.unwrap().is_empty());
    });
}

#[test]
fn an_unreachable_store_is_unavailable_not_corrupt() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    redis.kill();
    runtime().block_on(async {
        let store = ClusterStore::open(&url).unwrap();
        let err = store.head().await.unwrap_err();
        assert!(matches!(err, ClusterError::Unavailable(_)), "{err:?}");
        assert!(
            err.to_string()
                .contains("the cluster store at redis://127.0.0.1"),
            "{err}"
        );
    });
}
