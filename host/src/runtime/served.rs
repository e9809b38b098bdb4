//! One servable version of an app and its admission: the app's rate
//! limits (per app and per client), its concurrency cap, the request body's
//! limits; then the request goes to an instance ([`Instances`]), by the
//! component's world.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::BodyExt;
use tokio::sync::OwnedSemaphorePermit;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::http::response;
use crate::metrics::{VersionMetrics, metrics};
use crate::runtime::component::Pre;
use crate::runtime::engine::MAX_IDLE_INSTANCES;
use crate::runtime::failure::{Failure, busy};
use crate::runtime::instance::{AppShare, Instances, RequestContext, WarmPool};
use crate::runtime::keyvalue::KvAccess;
use crate::runtime::limits::{BodyVerdict, LimitedBody, Limits};
use crate::runtime::outbound::OutboundPolicy;
use crate::runtime::shared::SharedPool;

/// How often the per-client rate limiter forgets clients it has not seen.
const CLIENT_RATE_PRUNE: Duration = Duration::from_secs(30);

/// Which version of which app a [`ServedVersion`] serves, and what it was
/// built from.
pub struct Identity {
    pub app: Arc<str>,
    pub version: Arc<str>,
    /// SHA-256 of the component.
    pub digest: Arc<str>,
    /// A hash of the version's settings: a served version is only reused for
    /// the very same code and settings.
    pub settings_key: u64,
}

/// One servable version of an app: its identity, its admission rules and
/// how it makes instances.
pub struct ServedVersion {
    pub app: Arc<str>,
    pub version: Arc<str>,
    pub digest: Arc<str>,
    pub settings_key: u64,
    pub metrics: Arc<VersionMetrics>,
    /// The app name and version as response header values.
    pub header_values: Option<(HeaderValue, HeaderValue)>,
    rate: Option<DefaultDirectRateLimiter>,
    client_rate: Option<Arc<DefaultKeyedRateLimiter<IpAddr>>>,
    instances: Instances,
    /// Instances serving several requests at once (WASI 0.3 apps with
    /// `instance_concurrency` > 1 and instance reuse).
    shared: Option<Arc<SharedPool>>,
}

fn quota(rps: u32) -> Option<Quota> {
    NonZeroU32::new(rps).map(Quota::per_second)
}

/// What a version's instances are given besides their code and limits:
/// environment, `wasi:config` values (secrets included), where they may
/// call out, and which key-value stores they may open.
pub struct Grants {
    pub env: Vec<(String, String)>,
    pub config: Vec<(String, String)>,
    pub outbound: OutboundPolicy,
    pub kv: KvAccess,
}

impl Grants {
    /// Nothing: no environment, configuration, outbound calls or stores.
    pub fn none(app: &Arc<str>) -> Grants {
        Grants {
            env: Vec::new(),
            config: Vec::new(),
            outbound: OutboundPolicy::default(),
            kv: KvAccess::none(app),
        }
    }
}

impl ServedVersion {
    pub fn new(
        identity: Identity,
        pre: Pre,
        limits: Limits,
        grants: Grants,
        share: Arc<AppShare>,
    ) -> ServedVersion {
        let Grants {
            env,
            config,
            outbound,
            kv,
        } = grants;
        let Identity {
            app,
            version,
            digest,
            settings_key,
        } = identity;
        let metrics = Arc::new(metrics().for_version(&app, &version));
        let header_values = HeaderValue::from_str(&app)
            .ok()
            .zip(HeaderValue::from_str(&version).ok());
        let client_rate =
            quota(limits.client_rate_limit_rps).map(|q| Arc::new(RateLimiter::keyed(q)));
        if let Some(limiter) = &client_rate {
            prune_clients(Arc::downgrade(limiter), CLIENT_RATE_PRUNE);
        }
        let shared = (limits.instance_reuse > 1
            && limits.instance_concurrency > 1
            && matches!(pre, Pre::P3(_)))
        .then(|| SharedPool::new(limits.instance_concurrency, limits.instance_reuse));
        ServedVersion {
            instances: Instances {
                app: app.clone(),
                version: version.clone(),
                pre,
                limits,
                env: env.into(),
                config: Arc::new(config.into_iter().collect()),
                outbound: Arc::new(outbound),
                kv: Arc::new(kv),
                share,
                warm: (limits.instance_reuse > 1).then(|| {
                    WarmPool::new(
                        limits.instance_reuse,
                        (limits.max_concurrent as usize).min(MAX_IDLE_INSTANCES as usize),
                    )
                }),
                metrics: metrics.clone(),
            },
            shared,
            app,
            version,
            digest,
            settings_key,
            metrics,
            header_values,
            rate: quota(limits.rate_limit_rps).map(RateLimiter::direct),
            client_rate,
        }
    }

    /// Apply the app's rate limits: `Some` is the 429 to send.
    pub fn rate_limited(&self, client: Option<IpAddr>) -> Option<Response<HyperOutgoingBody>> {
        // The clock is only read on the rejecting path: building one
        // calibrates a TSC clock, which is far too slow for every request.
        if let Some(rate) = &self.rate
            && let Err(not_until) = rate.check()
        {
            metrics().reject("rate_limited");
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            return Some(too_many(
                &format!("app {} is over its rate limit", self.app),
                wait,
            ));
        }
        if let (Some(rate), Some(ip)) = (&self.client_rate, client.map(client_key))
            && let Err(not_until) = rate.check_key(&ip)
        {
            metrics().reject("rate_limited_client");
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            return Some(too_many(
                "you are over this app's per-client rate limit",
                wait,
            ));
        }
        None
    }

    /// `host_permit` is the request's slot under the host-wide cap; the
    /// version's own cap is checked here. Never fails: every failure
    /// becomes a response.
    pub async fn handle<B>(
        &self,
        request: Request<B>,
        host_permit: OwnedSemaphorePermit,
        ctx: &RequestContext,
    ) -> Response<HyperOutgoingBody>
    where
        B: Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let limits = &self.instances.limits;
        let Ok(permit) = self.instances.share.permits.clone().try_acquire_owned() else {
            metrics().reject("app_busy");
            return busy("the app is at its concurrency limit; retry shortly");
        };
        let max_body = limits.max_body_bytes;
        if declared_length(&request).is_some_and(|len| len > max_body) {
            metrics().reject("body_too_large");
            return too_large(max_body);
        }
        let verdict = BodyVerdict::default();
        let request = request.map(|body| LimitedBody::new(body, limits, verdict.clone()));

        let outcome = self.run(request, (host_permit, permit), ctx).await;
        // A guest that gave up because the body broke a limit gets that
        // limit's status, whatever it answered.
        if verdict.too_large() {
            return too_large(max_body);
        }
        if verdict.stalled() {
            return response::error(
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "the request body stalled for over {} ms",
                    limits.body_read_timeout.as_millis()
                ),
            );
        }
        if verdict.too_slow() {
            return response::error(
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "the request body arrived slower than {} bytes per second",
                    limits.body_min_rate
                ),
            );
        }
        match outcome {
            Ok(response) => response,
            Err(failure) => failure.into_response(),
        }
    }

    /// The app's world decides how its guest is called: WASI 0.2, WASI 0.3
    /// one request per instance, or WASI 0.3 on shared instances.
    async fn run<B>(
        &self,
        request: Request<LimitedBody<B>>,
        permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
        ctx: &RequestContext,
    ) -> Result<Response<HyperOutgoingBody>, Failure>
    where
        B: Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let instances = &self.instances;
        match (&instances.pre, &self.shared) {
            (Pre::P2(pre), _) => instances.run_p2(pre.clone(), request, permits, ctx).await,
            (Pre::P3(pre), Some(pool)) => {
                let request = request.map(|body| body.boxed_unsync());
                instances
                    .run_shared(pool, pre.clone(), request, permits, ctx)
                    .await
            }
            (Pre::P3(pre), None) => instances.run_p3(pre.clone(), request, permits, ctx).await,
        }
    }

    /// What all versions of the app share.
    pub fn share(&self) -> &Arc<AppShare> {
        &self.instances.share
    }
}

/// Forget, `every` so often, the clients of a per-client rate limiter whose
/// state is back to full, so its memory follows the clients seen recently,
/// not every client ever seen. Ends with the limiter.
fn prune_clients(limiter: Weak<DefaultKeyedRateLimiter<IpAddr>>, every: Duration) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(limiter) = limiter.upgrade() else {
                return;
            };
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    });
}

fn declared_length<B>(request: &Request<B>) -> Option<u64> {
    request
        .headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn too_large(limit: u64) -> Response<HyperOutgoingBody> {
    response::error(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("request body is larger than the limit of {limit} bytes"),
    )
}

/// What the per-client rate limit is keyed by: the IPv4 address, or the /64
/// of an IPv6 one (a client typically holds a whole /64).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// 429 with `Retry-After` (whole seconds, at least 1).
fn too_many(message: &str, wait: std::time::Duration) -> Response<HyperOutgoingBody> {
    let mut response = response::error(StatusCode::TOO_MANY_REQUESTS, message);
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn the_per_client_rate_limiter_forgets_clients_it_no_longer_sees() {
        let Some(quota) = quota(1000) else {
            unreachable!("1000 rps is a quota")
        };
        let limiter = Arc::new(RateLimiter::keyed(quota));
        for i in 0..500u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            assert!(limiter.check_key(&ip).is_ok());
        }
        assert_eq!(limiter.len(), 500);
        prune_clients(Arc::downgrade(&limiter), Duration::from_millis(20));
        // A token refills in 1 ms: after a few prune rounds nobody is left.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !limiter.is_empty() {
            assert!(Instant::now() < deadline, "{} clients kept", limiter.len());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A client seen again is tracked again.
        assert!(limiter.check_key(&IpAddr::from([10, 0, 0, 1])).is_ok());
        assert_eq!(limiter.len(), 1);
    }
}
