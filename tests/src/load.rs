//! A bounded load loop for tests that change apps under traffic: workers
//! that GET a list of URLs in turn (each its own client connection pool)
//! until told to stop or until a request budget is spent, counting what
//! succeeded and keeping what did not.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::admin::client;

/// Requests each worker sends at most.
const BUDGET: usize = 20_000;

/// Workers sending requests until [`Load::stop`].
pub struct Load {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicUsize>,
    workers: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    /// `workers` tasks, each sending GETs to `urls` in turn (worker `w`
    /// starts at `urls[w % len]`), at most 20,000 each.
    pub fn start(urls: Vec<String>, workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicUsize::new(0));
        let workers = (0..workers)
            .map(|w| {
                let (urls, stop, served) = (urls.clone(), stop.clone(), served.clone());
                tokio::spawn(async move {
                    let http = client();
                    let mut failures = Vec::new();
                    for i in 0..BUDGET {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        match http.get(&urls[(w + i) % urls.len()]).send().await {
                            Ok(r) if r.status().is_success() => {
                                served.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => failures.push(r.status().to_string()),
                            Err(e) => failures.push(e.to_string()),
                        }
                    }
                    failures
                })
            })
            .collect();
        Load {
            stop,
            served,
            workers,
        }
    }

    /// Stop the workers: how many requests succeeded, and every failure.
    pub async fn stop(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut failures = Vec::new();
        for worker in self.workers {
            failures.extend(worker.await.expect("a load worker panicked"));
        }
        (self.served.load(Ordering::Relaxed), failures)
    }

    /// Stop the workers and assert that not one request failed and that
    /// the loop did run (over 100 requests); `during` says what it ran
    /// through, for the log.
    pub async fn stop_without_failures(self, during: &str) {
        let (served, failures) = self.stop().await;
        eprintln!("served {served} requests {during}");
        assert!(
            failures.is_empty(),
            "{} requests failed: {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
        assert!(served > 100, "the load loop barely ran ({served} requests)");
    }
}
