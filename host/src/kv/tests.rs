//! One suite for both backends, each test run against the embedded store
//! (a real file) and against a real `redis-server` started on a free
//! loopback port (`make tools` installs it): namespaces, limits and quotas,
//! counters and compare-and-swap under contention, paging, durability
//! across a reopen, and deleting one app's data.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tests::RedisServer;

use crate::kv::service::KvService;
use crate::kv::{Bucket, KeyPage, KvError, KvLimits, Usage};

/// The host's [`KvService`] (the very paths requests take) called from
/// plain test code: each operation run to its end on a runtime of its own.
struct Kv {
    service: KvService,
    runtime: tokio::runtime::Runtime,
}

type Result<T> = std::result::Result<T, KvError>;

impl Kv {
    fn new(service: Result<KvService>) -> Arc<Kv> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        Arc::new(Kv {
            service: service.unwrap(),
            runtime,
        })
    }

    fn get(&self, bucket: &Bucket, key: &str) -> Result<Option<Vec<u8>>> {
        let call = self.service.get("get", None, bucket.clone(), key.into());
        self.runtime.block_on(call)
    }

    fn exists(&self, bucket: &Bucket, key: &str) -> Result<bool> {
        let call = self.service.exists(None, bucket.clone(), key.into());
        self.runtime.block_on(call)
    }

    fn set(&self, bucket: &Bucket, key: &str, value: &[u8]) -> Result<()> {
        let call = self
            .service
            .set("set", None, bucket.clone(), key.into(), value.to_vec());
        self.runtime.block_on(call)
    }

    fn delete(&self, bucket: &Bucket, key: &str) -> Result<()> {
        let call = self
            .service
            .delete("delete", None, bucket.clone(), key.into());
        self.runtime.block_on(call)
    }

    fn list_keys(&self, bucket: &Bucket, prefix: &str, cursor: Option<&str>) -> Result<KeyPage> {
        let call = self.service.list_keys(
            "list_keys",
            None,
            bucket.clone(),
            prefix.into(),
            cursor.map(str::to_string),
        );
        self.runtime.block_on(call)
    }

    fn increment(&self, bucket: &Bucket, key: &str, delta: i64) -> Result<i64> {
        let call = self
            .service
            .increment(None, bucket.clone(), key.into(), delta);
        self.runtime.block_on(call)
    }

    fn swap(
        &self,
        bucket: &Bucket,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> Result<bool> {
        let call = self.service.swap(
            None,
            bucket.clone(),
            key.into(),
            expected.map(<[u8]>::to_vec),
            value.to_vec(),
        );
        self.runtime.block_on(call)
    }

    fn get_many(&self, bucket: &Bucket, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        let call = self.service.get_many(None, bucket.clone(), keys.to_vec());
        self.runtime.block_on(call)
    }

    fn set_many(&self, bucket: &Bucket, pairs: &[(String, Vec<u8>)]) -> Result<()> {
        let call = self.service.set_many(None, bucket.clone(), pairs.to_vec());
        self.runtime.block_on(call)
    }

    fn delete_many(&self, bucket: &Bucket, keys: &[String]) -> Result<()> {
        let call = self
            .service
            .delete_many(None, bucket.clone(), keys.to_vec());
        self.runtime.block_on(call)
    }

    fn usage(&self, app: &str) -> Result<Usage> {
        self.runtime.block_on(self.service.usage(app))
    }

    fn delete_app(&self, app: &str) -> Result<Usage> {
        self.runtime.block_on(self.service.delete_app(app))
    }
}

/// Where a backend keeps its data for one test; removed (or stopped) when
/// dropped.
enum Fixture {
    Embedded(PathBuf),
    Redis(RedisServer),
}

impl Fixture {
    fn embedded() -> Fixture {
        let dir = std::env::temp_dir().join(format!(
            "host-kv-test-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Fixture::Embedded(dir)
    }

    /// A `redis-server` of its own on a free loopback port, nothing saved.
    fn redis() -> Fixture {
        Fixture::Redis(RedisServer::start())
    }

    /// The store on this fixture's data (again: a reopen).
    fn open(&self, limits: KvLimits) -> Arc<Kv> {
        Kv::new(match self {
            Fixture::Embedded(dir) => KvService::embedded(&dir.join("kv.redb"), limits),
            Fixture::Redis(server) => KvService::redis(&server.url(), limits),
        })
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Fixture::Embedded(dir) = self {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Each test of the suite, once per backend.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        $(mod $name {
            #[test]
            fn embedded() {
                super::$name(super::Fixture::embedded());
            }

            #[test]
            fn redis() {
                super::$name(super::Fixture::redis());
            }
        })*
    };
}

on_both!(
    stores_named_like_bookkeeping_are_plain_stores,
    a_batch_within_the_quota_is_written_whole,
    prefixes_of_any_script_list_only_their_keys,
    values_are_kept_per_app_and_store_and_survive_a_reopen,
    no_key_reaches_another_app_or_store,
    keys_are_listed_in_order_a_page_at_a_time,
    limits_and_quotas_are_refused_naming_the_limit_and_change_nothing,
    counters_count_from_absent_and_refuse_what_is_not_a_number,
    increments_and_swaps_under_contention_lose_no_update,
    batches_read_write_and_delete_many_keys,
    deleting_an_app_deletes_its_data_and_only_its_data,
);

fn values_are_kept_per_app_and_store_and_survive_a_reopen(dir: Fixture) {
    let (a, a2, b) = (
        Bucket::new("a", "default"),
        Bucket::new("a", "sessions"),
        Bucket::new("b", "default"),
    );
    {
        let kv = dir.open(KvLimits::DEFAULT);
        kv.set(&a, "k", b"one").unwrap();
        kv.set(&a2, "k", b"two").unwrap();
        kv.set(&b, "k", b"three").unwrap();
        assert_eq!(kv.get(&a, "k").unwrap().as_deref(), Some(&b"one"[..]));
        assert!(kv.exists(&a2, "k").unwrap());
        assert!(!kv.exists(&a, "other").unwrap());
        kv.delete(&a2, "k").unwrap();
        kv.delete(&a2, "k").unwrap();
        assert_eq!(kv.get(&a2, "k").unwrap(), None);
    }
    let kv = dir.open(KvLimits::DEFAULT);
    assert_eq!(kv.get(&a, "k").unwrap().as_deref(), Some(&b"one"[..]));
    assert_eq!(kv.get(&b, "k").unwrap().as_deref(), Some(&b"three"[..]));
    assert_eq!(kv.get(&a2, "k").unwrap(), None);
    assert_eq!(
        kv.usage("a").unwrap(),
        Usage {
            keys: 1,
            bytes: 1 + 3
        }
    );
}

/// Whatever the key, one app's bucket never lists or reads another's:
/// keys that look like another namespace stay inside their own.
fn no_key_reaches_another_app_or_store(dir: Fixture) {
    let kv = dir.open(KvLimits::DEFAULT);
    let (a, ab, b) = (
        Bucket::new("a", "default"),
        Bucket::new("a", "b"),
        Bucket::new("a-b", "default"),
    );
    kv.set(&b, "secret", b"x").unwrap();
    for key in ["\0a-b\0default\0secret", "../a-b/secret", "", "\u{1}"] {
        kv.set(&a, key, b"mine").unwrap();
    }
    kv.set(&ab, "z", b"y").unwrap();
    let listed = kv.list_keys(&a, "", None).unwrap();
    assert_eq!(listed.keys.len(), 4, "{listed:?}");
    assert!(listed.keys.iter().all(|k| k != "secret"), "{listed:?}");
    assert_eq!(kv.list_keys(&ab, "", None).unwrap().keys, ["z"]);
    assert_eq!(kv.list_keys(&b, "", None).unwrap().keys, ["secret"]);
    assert_eq!(kv.get(&a, "secret").unwrap(), None);
    assert_eq!(kv.get(&b, "secret").unwrap().as_deref(), Some(&b"x"[..]));
}

fn keys_are_listed_in_order_a_page_at_a_time(dir: Fixture) {
    let kv = dir.open(KvLimits {
        page_keys: 3,
        ..KvLimits::DEFAULT
    });
    let bucket = Bucket::new("a", "default");
    let other = Bucket::new("a", "default2");
    kv.set(&other, "a0", b"").unwrap();
    for i in (0..8).rev() {
        kv.set(&bucket, &format!("k{i}"), b"v").unwrap();
    }
    let mut seen = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = kv.list_keys(&bucket, "", cursor.as_deref()).unwrap();
        pages += 1;
        assert!(page.keys.len() <= 3);
        seen.extend(page.keys);
        match page.cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..8).map(|i| format!("k{i}")).collect();
    assert_eq!(seen, expected);

    // A prefix: only its keys, paged the same way, never another bucket's.
    kv.set(&bucket, "j", b"v").unwrap();
    kv.set(&bucket, "l", b"v").unwrap();
    kv.set(&bucket, "k", b"v").unwrap();
    let first = kv.list_keys(&bucket, "k", None).unwrap();
    assert_eq!(first.keys, ["k", "k0", "k1"]);
    let second = kv.list_keys(&bucket, "k", first.cursor.as_deref()).unwrap();
    assert_eq!(second.keys, ["k2", "k3", "k4"]);
    let last = kv.list_keys(&bucket, "k6", None).unwrap();
    assert_eq!((last.keys, last.cursor), (vec!["k6".to_string()], None));
    assert!(kv.list_keys(&bucket, "a", None).unwrap().keys.is_empty());
    // A cursor before the prefix starts at the prefix.
    let from_j = kv.list_keys(&bucket, "k", Some("j")).unwrap();
    assert_eq!(from_j.keys, ["k", "k0", "k1"]);
    // A batch over its key count or its answer's size is refused whole.
    let keys: Vec<String> = (0..=KvLimits::DEFAULT.batch_keys)
        .map(|i| format!("k{i}"))
        .collect();
    let err = kv.get_many(&bucket, &keys).unwrap_err();
    assert!(matches!(err, KvError::Limit(_)), "{err}");
}

fn limits_and_quotas_are_refused_naming_the_limit_and_change_nothing(dir: Fixture) {
    let kv = dir.open(KvLimits {
        max_key_bytes: 8,
        max_value_bytes: 16,
        max_keys: 3,
        max_bytes: 30,
        page_keys: 100,
        batch_keys: 100,
        batch_bytes: 10,
    });
    let bucket = Bucket::new("a", "default");
    let err = kv.set(&bucket, "a-long-key", b"v").unwrap_err();
    assert!(
        matches!(&err, KvError::Limit(m) if m.contains("key")),
        "{err}"
    );
    let err = kv.set(&bucket, "k", &[0; 17]).unwrap_err();
    assert!(
        matches!(&err, KvError::Limit(m) if m.contains("value")),
        "{err}"
    );
    for key in ["k1", "k2", "k3"] {
        kv.set(&bucket, key, b"0123").unwrap();
    }
    let err = kv.set(&bucket, "k4", b"x").unwrap_err();
    assert!(err.to_string().contains("quota of 3"), "{err}");
    // Overwriting an existing key is not a new key; growing past the bytes
    // quota is refused.
    kv.set(&bucket, "k1", b"01234567").unwrap();
    let err = kv.set(&bucket, "k2", &[b'x'; 16]).unwrap_err();
    assert!(err.to_string().contains("bytes"), "{err}");
    assert_eq!(
        kv.usage("a").unwrap(),
        Usage {
            keys: 3,
            bytes: 6 + 8 + 4 + 4
        }
    );
    // The quota is the app's, whatever the store.
    let err = kv.set(&Bucket::new("a", "other"), "k", b"x").unwrap_err();
    assert!(matches!(err, KvError::Limit(_)), "{err}");
    assert!(kv.set(&Bucket::new("b", "default"), "k", b"x").is_ok());
    // A batch over quota changes none of its keys.
    kv.delete(&bucket, "k3").unwrap();
    let pairs = vec![
        ("n1".to_string(), b"1".to_vec()),
        ("n2".into(), b"2".to_vec()),
    ];
    assert!(kv.set_many(&bucket, &pairs).is_err());
    assert_eq!(kv.get(&bucket, "n1").unwrap(), None);
    // get-many answers at most `batch_bytes` of values (8 + 4 > 10).
    let two = ["k1".to_string(), "k2".to_string()];
    let err = kv.get_many(&bucket, &two).unwrap_err();
    assert!(
        err.to_string().contains("get-many would return 12 bytes"),
        "{err}"
    );
    assert_eq!(
        kv.get_many(&bucket, &two[1..]).unwrap(),
        [Some(b"0123".to_vec())]
    );
}

/// Store names that look like the backends' own bookkeeping (Redis' usage
/// hash was once `kv:APP:usage`) are plain stores: their keys are data,
/// and the app's usage and quota stay right.
fn stores_named_like_bookkeeping_are_plain_stores(dir: Fixture) {
    let kv = dir.open(KvLimits {
        max_keys: 3,
        ..KvLimits::DEFAULT
    });
    for store in ["usage", "meta", "keys", "d", "i"] {
        let bucket = Bucket::new("a", store);
        kv.set(&bucket, "keys", b"hello").unwrap();
        kv.set(&bucket, "bytes", b"x").unwrap();
        assert_eq!(
            kv.get(&bucket, "keys").unwrap().as_deref(),
            Some(&b"hello"[..])
        );
        assert_eq!(kv.usage("a").unwrap(), Usage { keys: 2, bytes: 15 });
        assert_eq!(kv.increment(&bucket, "n", 5).unwrap(), 5);
        assert_eq!(kv.increment(&bucket, "n", 5).unwrap(), 10);
        assert!(kv.set(&bucket, "fourth", b"x").is_err(), "quota of 3");
        kv.delete_many(&bucket, &["keys".into(), "bytes".into(), "n".into()])
            .unwrap();
        assert_eq!(kv.usage("a").unwrap(), Usage::default());
    }
}

/// A batch within the quota as a whole is written whole, even when one of
/// its keys alone would not fit until another shrinks.
fn a_batch_within_the_quota_is_written_whole(dir: Fixture) {
    let kv = dir.open(KvLimits {
        max_bytes: 30,
        ..KvLimits::DEFAULT
    });
    let bucket = Bucket::new("a", "default");
    kv.set(&bucket, "a", &[b'x'; 20]).unwrap();
    let pairs = vec![
        ("b".to_string(), vec![b'y'; 15]),
        ("a".to_string(), vec![b'z']),
    ];
    kv.set_many(&bucket, &pairs).unwrap();
    assert_eq!(kv.get(&bucket, "b").unwrap(), Some(vec![b'y'; 15]));
    assert_eq!(kv.get(&bucket, "a").unwrap(), Some(vec![b'z']));
    assert_eq!(kv.usage("a").unwrap(), Usage { keys: 2, bytes: 18 });
}

/// A prefix is matched on its bytes, whatever its last character.
fn prefixes_of_any_script_list_only_their_keys(dir: Fixture) {
    let kv = dir.open(KvLimits::DEFAULT);
    let bucket = Bucket::new("a", "default");
    for key in ["п", "пи", "р", "日本", "¿qué", "À"] {
        kv.set(&bucket, key, b"v").unwrap();
    }
    assert_eq!(kv.list_keys(&bucket, "п", None).unwrap().keys, ["п", "пи"]);
    assert_eq!(kv.list_keys(&bucket, "¿", None).unwrap().keys, ["¿qué"]);
    assert_eq!(kv.list_keys(&bucket, "日", None).unwrap().keys, ["日本"]);
}

fn counters_count_from_absent_and_refuse_what_is_not_a_number(dir: Fixture) {
    let kv = dir.open(KvLimits::DEFAULT);
    let bucket = Bucket::new("a", "default");
    assert_eq!(kv.increment(&bucket, "n", 5).unwrap(), 5);
    assert_eq!(kv.increment(&bucket, "n", -7).unwrap(), -2);
    assert_eq!(kv.get(&bucket, "n").unwrap().as_deref(), Some(&b"-2"[..]));
    kv.set(&bucket, "text", b"hello").unwrap();
    let err = kv.increment(&bucket, "text", 1).unwrap_err();
    assert!(matches!(err, KvError::NotANumber(_)), "{err}");
    // Only the canonical decimal form counts, the same on both backends.
    for text in ["+5", "007", " 5", "5 ", "-0", ""] {
        kv.set(&bucket, "odd", text.as_bytes()).unwrap();
        let err = kv.increment(&bucket, "odd", 1).unwrap_err();
        assert!(matches!(err, KvError::NotANumber(_)), "{text:?}: {err}");
    }
    kv.set(&bucket, "big", i64::MAX.to_string().as_bytes())
        .unwrap();
    let err = kv.increment(&bucket, "big", 1).unwrap_err();
    assert!(err.to_string().contains("64-bit range"), "{err}");
    assert_eq!(
        kv.get(&bucket, "big").unwrap().as_deref(),
        Some(i64::MAX.to_string().as_bytes())
    );
}

/// 8 threads × 125 increments = exactly 1000; 8 threads each adding its
/// mark to one list by compare-and-swap, retrying on conflict, lose none.
fn increments_and_swaps_under_contention_lose_no_update(dir: Fixture) {
    let kv = dir.open(KvLimits::DEFAULT);
    let bucket = Bucket::new("a", "default");
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let (kv, bucket) = (kv.clone(), bucket.clone());
            std::thread::spawn(move || {
                for _ in 0..125 {
                    kv.increment(&bucket, "hits", 1).unwrap();
                }
                let mut conflicts = 0;
                loop {
                    let now = kv.get(&bucket, "list").unwrap();
                    let mut next = now.clone().unwrap_or_default();
                    next.push(b'a' + t);
                    if kv.swap(&bucket, "list", now.as_deref(), &next).unwrap() {
                        break conflicts;
                    }
                    conflicts += 1;
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(
        kv.get(&bucket, "hits").unwrap().as_deref(),
        Some(&b"1000"[..])
    );
    let mut list = kv.get(&bucket, "list").unwrap().unwrap();
    list.sort();
    assert_eq!(list, b"abcdefgh");
    // A swap from a stale value changes nothing.
    assert!(!kv.swap(&bucket, "list", Some(b"stale"), b"x").unwrap());
    assert!(!kv.swap(&bucket, "hits", None, b"x").unwrap());
    assert_eq!(
        kv.get(&bucket, "hits").unwrap().as_deref(),
        Some(&b"1000"[..])
    );
}

fn batches_read_write_and_delete_many_keys(dir: Fixture) {
    let kv = dir.open(KvLimits::DEFAULT);
    let bucket = Bucket::new("a", "default");
    let pairs: Vec<(String, Vec<u8>)> = (0..5).map(|i| (format!("k{i}"), vec![b'0' + i])).collect();
    kv.set_many(&bucket, &pairs).unwrap();
    let keys = vec!["k1".to_string(), "missing".into(), "k4".into()];
    assert_eq!(
        kv.get_many(&bucket, &keys).unwrap(),
        vec![Some(b"1".to_vec()), None, Some(b"4".to_vec())]
    );
    kv.delete_many(&bucket, &keys).unwrap();
    assert_eq!(
        kv.list_keys(&bucket, "", None).unwrap().keys,
        ["k0", "k2", "k3"]
    );
    assert_eq!(kv.usage("a").unwrap().keys, 3);
}

fn deleting_an_app_deletes_its_data_and_only_its_data(dir: Fixture) {
    let kv = dir.open(KvLimits::DEFAULT);
    kv.set(&Bucket::new("a", "default"), "k", b"1").unwrap();
    kv.set(&Bucket::new("a", "sessions"), "k", b"22").unwrap();
    kv.set(&Bucket::new("ab", "default"), "k", b"3").unwrap();
    let held = kv.delete_app("a").unwrap();
    assert_eq!(held, Usage { keys: 2, bytes: 5 });
    assert_eq!(kv.usage("a").unwrap(), Usage::default());
    assert_eq!(kv.get(&Bucket::new("a", "default"), "k").unwrap(), None);
    assert_eq!(
        kv.get(&Bucket::new("ab", "default"), "k")
            .unwrap()
            .as_deref(),
        Some(&b"3"[..])
    );
}

/// Redis going away makes operations fail fast with an error that names
/// it (never its password), and they work again once it is back.
#[test]
fn a_redis_outage_fails_fast_and_recovers() {
    let mut server = RedisServer::start_with_password("hunter2");
    let (port, url) = (server.port, server.url());
    let kv = Kv::new(KvService::redis(&url, KvLimits::DEFAULT));
    let bucket = Bucket::new("a", "default");
    kv.set(&bucket, "k", b"v").unwrap();
    server.kill();

    let err = kv.get(&bucket, "k").unwrap_err();
    assert!(matches!(err, KvError::Backend(_)), "{err}");
    let text = err.to_string();
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    // While it stays down, calls fail without trying to connect: after
    // each failed connect the host waits (doubling, up to 5 s), and the
    // calls meanwhile say so.
    let mut said = None;
    for _ in 0..1000 {
        let err = kv.get(&bucket, "k").unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
        if err.contains("unreachable; retrying in") {
            said = Some(err);
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(said.is_some(), "no call was refused without a connect");
    let wrong = Kv::new(KvService::redis(
        &url.replace("hunter2", "wrong"),
        KvLimits::DEFAULT,
    ));

    // Back on the same port (empty: nothing was saved): calls work again
    // once the backoff (at most 5 s) has passed.
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(err) = kv.set(&bucket, "k", b"again") {
        assert!(Instant::now() < deadline, "Redis never came back: {err}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        kv.get(&bucket, "k").unwrap().as_deref(),
        Some(&b"again"[..])
    );
    let refused = wrong.get(&bucket, "k").unwrap_err().to_string();
    assert!(!refused.contains("wrong"), "{refused}");
}
