//! The subscription that wakes a replica when any replica commits a
//! change: `SUBSCRIBE cluster:changes` on a connection of its own, made
//! again with a backoff when it drops. Each (re)subscription wakes the
//! replica too, since what was announced while it was away is lost: the
//! scan that follows finds it by revision.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Notify;

use crate::cluster::{CHANNEL, ClusterStore};
use crate::redis_link::TIMEOUT;

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Keep a subscription to the store's changes, waking `wake` on each, until
/// the task is aborted. `again` drops the subscription and makes a new one
/// (the replica found the store back after an outage the subscription may
/// not have seen, such as a network partition).
pub fn spawn(
    store: Arc<ClusterStore>,
    wake: Arc<Notify>,
    again: Arc<Notify>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut wait = BACKOFF_FIRST;
        loop {
            let connected = tokio::time::timeout(TIMEOUT, async {
                let mut pubsub = store.link().client().get_async_pubsub().await?;
                pubsub.subscribe(CHANNEL).await?;
                Ok::<_, redis::RedisError>(pubsub)
            })
            .await;
            match connected {
                Ok(Ok(pubsub)) => {
                    tracing::debug!(store = %store.shown(), "subscribed to cluster changes");
                    wait = BACKOFF_FIRST;
                    wake.notify_one();
                    let mut messages = pubsub.into_on_message();
                    loop {
                        tokio::select! {
                            message = messages.next() => match message {
                                Some(_) => wake.notify_one(),
                                None => break,
                            },
                            () = again.notified() => break,
                        }
                    }
                    tracing::debug!(store = %store.shown(), "the subscription to cluster changes ended");
                }
                Ok(Err(err)) => {
                    tracing::debug!(store = %store.shown(), error = %store.link().failed(err), "cannot subscribe to cluster changes")
                }
                Err(_) => {
                    tracing::debug!(store = %store.shown(), "subscribing to cluster changes timed out")
                }
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(BACKOFF_MAX);
        }
    })
}
