//! One shared connection to a Redis, for everything the host keeps there
//! (apps' key-value data in [`crate::kv::redis`], the cluster's apps in
//! [`crate::cluster`]).
//!
//! Every call is sent on one multiplexed async connection (calls from
//! every task are pipelined on it, so the host holds one connection however
//! busy it is, and no thread waits on a socket), with connect and response
//! timeouts. When Redis is down a call fails within them and says so; the
//! connection is dropped and, after a backoff (0.1 s doubling to 5 s)
//! during which calls fail at once, made again, with one log line when
//! Redis goes and one when it is back. The URL's credentials are never
//! logged or shown.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, FromRedisValue};

/// Longest wait to connect, and for one reply.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// The first wait after Redis is found down, and the longest.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// A call to Redis that failed, said without credentials.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct LinkError(pub String);

/// `redis://user:password@host:port/db` → `redis://host:port/db`.
pub fn without_credentials(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            format!("{scheme}://{rest}")
        }
        None => "the Redis URL".to_string(),
    }
}

/// When Redis was last found unreachable, and how long to wait now.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    until: Instant,
    wait: Duration,
}

/// One command, pipeline or script call.
pub enum Request<'a> {
    Cmd(redis::Cmd),
    Pipe(redis::Pipeline),
    Script(redis::ScriptInvocation<'a>),
}

/// The host's connection to one Redis, for one purpose (`what`, e.g. "the
/// Redis key-value store"), named so in every message.
pub struct Link {
    client: Client,
    /// What it is and where, without credentials, for messages.
    what: &'static str,
    shown: String,
    /// Longest wait to connect, and for one reply.
    timeout: Duration,
    /// The async connection every call shares (`None` until the first, and
    /// after it failed), and a lock so one task makes it.
    mux: ArcSwapOption<MultiplexedConnection>,
    connecting: tokio::sync::Mutex<()>,
    /// Set after a failed connect: calls fail at once until then, so a
    /// Redis that is down costs each call nothing (the first call after it
    /// tries again), with the wait doubling while it stays down.
    down: Mutex<Option<Backoff>>,
}

impl Link {
    /// A link to the Redis at `url` (`redis://[USER:PASSWORD@]HOST:PORT[/DB]`).
    /// Nothing is connected until the first call.
    pub fn open(url: &str, what: &'static str) -> Result<Link, LinkError> {
        Link::open_with_timeout(url, what, TIMEOUT)
    }

    /// A link whose replies may take up to `timeout` (large values: its
    /// calls must not hold up the ones on a link with the short timeout).
    pub fn open_with_timeout(
        url: &str,
        what: &'static str,
        timeout: Duration,
    ) -> Result<Link, LinkError> {
        let shown = without_credentials(url);
        let client = Client::open(url)
            .map_err(|e| LinkError(format!("{shown} is not a usable Redis URL: {e}")))?;
        Ok(Link {
            client,
            what,
            shown,
            timeout,
            mux: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
            down: Mutex::new(None),
        })
    }

    /// Where it is, without credentials.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// The client, for connections of another kind (a subscription).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// What went wrong talking to Redis, said without credentials.
    pub fn failed(&self, err: redis::RedisError) -> LinkError {
        LinkError(format!("{} at {} failed: {}", self.what, self.shown, err))
    }

    /// Fail at once while backing off after Redis was found down, saying
    /// when it is tried again.
    fn not_backing_off(&self) -> Result<(), LinkError> {
        let now = Instant::now();
        let backoff = self.down.lock().ok().and_then(|down| *down);
        if let Some(backoff) = backoff
            && now < backoff.until
        {
            return Err(LinkError(format!(
                "{} at {} is unreachable; retrying in {} ms",
                self.what,
                self.shown,
                (backoff.until - now).as_millis().max(1)
            )));
        }
        Ok(())
    }

    /// A connection worked: if Redis was down, it is back.
    fn came_back(&self) {
        if let Ok(mut down) = self.down.lock()
            && down.take().is_some()
        {
            tracing::info!(store = %self.shown, "{} is reachable again", self.what);
        }
    }

    /// Connecting to Redis failed: back off before the next try (twice as
    /// long as last time, up to [`BACKOFF_MAX`]). Connects happen one at a
    /// time, so each failed attempt doubles the wait once.
    fn went_down(&self) {
        let Ok(mut down) = self.down.lock() else {
            return;
        };
        let wait = match *down {
            Some(last) => (last.wait * 2).min(BACKOFF_MAX),
            None => {
                tracing::warn!(store = %self.shown, "{} is unreachable; calls to it fail until it returns", self.what);
                BACKOFF_FIRST
            }
        };
        *down = Some(Backoff {
            until: Instant::now() + wait,
            wait,
        });
    }

    /// The shared async connection (made on first use, and again after it
    /// failed).
    async fn multiplexed(&self) -> Result<Arc<MultiplexedConnection>, LinkError> {
        if let Some(connection) = self.mux.load_full() {
            return Ok(connection);
        }
        let _one = self.connecting.lock().await;
        if let Some(connection) = self.mux.load_full() {
            return Ok(connection);
        }
        self.not_backing_off()?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(self.timeout));
        match self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(connection) => {
                self.came_back();
                let connection = Arc::new(connection);
                self.mux.store(Some(connection.clone()));
                Ok(connection)
            }
            Err(err) => {
                self.went_down();
                Err(self.failed(err))
            }
        }
    }

    /// Send `request` on the shared connection; if the connection failed,
    /// drop it (the next call connects again).
    pub async fn query<T: FromRedisValue>(&self, request: Request<'_>) -> Result<T, LinkError> {
        let shared = self.multiplexed().await?;
        let mut connection = (*shared).clone();
        let out = match &request {
            Request::Cmd(cmd) => cmd.query_async(&mut connection).await,
            Request::Pipe(pipe) => pipe.query_async(&mut connection).await,
            Request::Script(script) => script.invoke_async(&mut connection).await,
        };
        out.map_err(|e| {
            // A lost connection is dropped (if no other call has replaced
            // it already), and the next call connects again; a slow reply
            // only fails its own call.
            if e.is_io_error() || e.is_connection_dropped() {
                self.mux.compare_and_swap(&Some(shared), None);
            }
            self.failed(e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_never_shown() {
        assert_eq!(
            without_credentials("redis://user:secret@db:6379/2"),
            "redis://db:6379/2"
        );
        assert_eq!(
            without_credentials("redis://:p@ss@db:6379"),
            "redis://db:6379"
        );
        assert_eq!(without_credentials("nonsense"), "the Redis URL");
    }
}
