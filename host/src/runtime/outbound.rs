//! Outbound HTTP from guests: deny by default, allow what the app's
//! allow-list names, and block every non-public destination (loopback,
//! private, link-local, shared, benchmarking, documentation, NAT64/6to4 and
//! Teredo forms of those, …) after DNS resolution, unless the request is to
//! an IP literal that a matching pattern (same scheme and port) names.
//!
//! The host connects to the very address it checked (it never resolves the
//! name a second time), so DNS cannot be rebound between check and connect.
//! DNS lookups and connects are time-bounded, and each instance and each
//! app may only have so many calls in flight (`--max-outbound-per-instance`,
//! `--max-outbound-per-app`): past that a call fails in the guest with
//! `connection-limit-reached`, so a guest cannot exhaust the host's file
//! descriptors. A denied call reaches the guest as wasi:http
//! `HTTP-request-denied` and is logged with the app and the reason.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use crate::metrics::metrics;

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a DNS lookup may take.
const DNS_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest write into an outgoing body (a guest's response or an outbound
/// request); with one buffered write this bounds what the host holds for
/// each body the guest has not yet sent to 2 × this.
pub const OUTGOING_BODY_CHUNK_BYTES: usize = 12 * 1024;

/// One allow-list entry: `scheme://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    scheme: String,
    host: HostPattern,
    port: PortPattern,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// `example.com`: exactly this name.
    Name(String),
    /// `*.example.com`: any subdomain (not the apex); holds `.example.com`.
    Subdomains(String),
    /// `10.0.0.5`, `[::1]`: exactly this address, private ones included.
    Ip(IpAddr),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortPattern {
    /// No port in the pattern: the scheme's default port only.
    Default,
    /// `:*`: any port.
    Any,
    Port(u16),
}

/// An app's outbound allow-list. Empty means every call is denied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboundPolicy {
    patterns: Vec<Pattern>,
}

fn default_port(scheme: &str) -> u16 {
    if scheme == "https" { 443 } else { 80 }
}

/// An outbound allow-list entry that is not a valid pattern; says what to
/// fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidOutbound(String);

impl OutboundPolicy {
    pub fn parse(list: &[String]) -> Result<OutboundPolicy, InvalidOutbound> {
        let patterns = list
            .iter()
            .map(|p| parse_pattern(p))
            .collect::<Result<_, _>>()
            .map_err(InvalidOutbound)?;
        Ok(OutboundPolicy { patterns })
    }

    /// Does some pattern allow `scheme://host:port`? For an IP literal only
    /// a pattern naming that IP (with this scheme and port) can.
    pub(crate) fn allowed(&self, scheme: &str, host: &str, port: u16) -> bool {
        let ip = parse_ip(host);
        self.patterns.iter().any(|p| {
            p.scheme == scheme
                && match p.port {
                    PortPattern::Default => port == default_port(scheme),
                    PortPattern::Any => true,
                    PortPattern::Port(q) => port == q,
                }
                && match (&p.host, ip) {
                    (HostPattern::Ip(a), Some(b)) => *a == b,
                    (HostPattern::Name(n), None) => n == host,
                    (HostPattern::Subdomains(suffix), None) => {
                        host.len() > suffix.len() && host.ends_with(suffix.as_str())
                    }
                    _ => false,
                }
        })
    }

    /// Decide on a request: the address to connect to, or why not.
    async fn check(&self, scheme: &str, host: &str, port: u16) -> Result<SocketAddr, String> {
        if scheme != "http" && scheme != "https" {
            return Err(format!("scheme {scheme} is not supported"));
        }
        if !self.allowed(scheme, host, port) {
            return Err("destination is not in the app's outbound allow-list".into());
        }
        // An IP literal got here only through a pattern naming that very IP
        // for this scheme and port: the operator allowed it, private or not.
        if let Some(ip) = parse_ip(host) {
            return Ok(SocketAddr::new(ip, port));
        }
        let candidates: Vec<SocketAddr> =
            tokio::time::timeout(DNS_TIMEOUT, tokio::net::lookup_host((host, port)))
                .await
                .map_err(|_| format!("DNS lookup took over {} s", DNS_TIMEOUT.as_secs()))?
                .map_err(|e| format!("DNS lookup failed: {e}"))?
                .collect();
        candidates
            .iter()
            .copied()
            .find(|addr| !is_internal(addr.ip()))
            .ok_or_else(|| {
                "destination resolves to a loopback, private or link-local (non-public) \
                 address; a private service must be allowed by its IP"
                    .to_string()
            })
    }
}

fn parse_ip(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

fn parse_pattern(raw: &str) -> Result<Pattern, String> {
    let bad = |why: &str| {
        format!(
            "outbound pattern {raw:?} {why}; expected scheme://host[:port], e.g. https://*.example.com or http://127.0.0.1:8080"
        )
    };
    let (scheme, rest) = raw.split_once("://").ok_or_else(|| bad("has no scheme"))?;
    if scheme != "http" && scheme != "https" {
        return Err(bad("must use http or https"));
    }
    if rest.contains(['/', '?', '#', '@']) {
        return Err(bad("must not have a path, query or user"));
    }
    // Split off a port, minding IPv6 brackets.
    let (host, port) = match rest.rfind(':') {
        Some(i) if !rest[i..].contains(']') => (&rest[..i], Some(&rest[i + 1..])),
        _ => (rest, None),
    };
    let port = match port {
        None => PortPattern::Default,
        Some("*") => PortPattern::Any,
        Some(p) => PortPattern::Port(p.parse().map_err(|_| bad("has an invalid port"))?),
    };
    let host = host.to_ascii_lowercase();
    let host = if let Some(ip) = parse_ip(&host) {
        HostPattern::Ip(ip)
    } else if let Some(suffix) = host.strip_prefix("*.") {
        if suffix.is_empty() || suffix.contains('*') {
            return Err(bad("has an invalid wildcard"));
        }
        HostPattern::Subdomains(format!(".{suffix}"))
    } else if host.is_empty() || host.contains('*') || host.contains(['[', ']']) {
        return Err(bad("has an invalid host"));
    } else {
        HostPattern::Name(host)
    };
    Ok(Pattern {
        scheme: scheme.to_string(),
        host,
        port,
    })
}

/// Every address that is not plainly public: the IANA special-purpose
/// registries for IPv4 and IPv6, with the IPv6 forms that embed an IPv4
/// address (mapped, compatible, NAT64, 6to4) judged by that address.
pub(crate) fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()                                  // 127/8
                || v4.is_private()                            // 10/8, 172.16/12, 192.168/16
                || v4.is_link_local()                         // 169.254/16
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()                          // 224/4
                || v4.is_documentation()                      // 192.0.2/24, 198.51.100/24, 203.0.113/24
                || o[0] == 0                                  // 0/8 "this network"
                || (o[0] == 100 && (o[1] & 0xc0) == 64)       // 100.64/10 shared (CGNAT)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)    // 192.0.0/24 IETF protocol assignments
                || (o[0] == 192 && o[1] == 88 && o[2] == 99)  // 192.88.99/24 6to4 relay anycast
                || (o[0] == 198 && (o[1] & 0xfe) == 18)       // 198.18/15 benchmarking
                || o[0] >= 240 // 240/4 reserved
        }
        IpAddr::V6(v6) => {
            let seg = v6.segments();
            let embedded = |hi: u16, lo: u16| {
                let [a, b] = hi.to_be_bytes();
                let [c, d] = lo.to_be_bytes();
                is_internal(IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d)))
            };
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4)); // ::ffff:a.b.c.d
            }
            if seg[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified() {
                return embedded(seg[6], seg[7]); // ::a.b.c.d (IPv4-compatible)
            }
            if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return embedded(seg[6], seg[7]); // 64:ff9b::/96 NAT64
            }
            if seg[0] == 0x2002 {
                return embedded(seg[1], seg[2]); // 2002::/16 6to4
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()                          // ff00::/8
                || (seg[0] == 0x64 && seg[1] == 0xff9b && seg[2] == 1) // 64:ff9b:1::/48 local NAT64
                || (seg[0] == 0x100 && seg[1..4] == [0, 0, 0]) // 100::/64 discard
                || (seg[0] == 0x2001 && seg[1] < 0x200)       // 2001::/23 IETF (Teredo, ORCHID, …)
                || (seg[0] == 0x2001 && seg[1] == 0xdb8)      // 2001:db8::/32 documentation
                || (seg[0] == 0x3fff && seg[1] < 0x1000)      // 3fff::/20 documentation
                || (seg[0] & 0xfe00) == 0xfc00                // fc00::/7 unique local
                || (seg[0] & 0xffc0) == 0xfe80                // fe80::/10 link-local
                || (seg[0] & 0xffc0) == 0xfec0 // fec0::/10 site-local (deprecated)
        }
    }
}

/// The wasi:http hooks of one instance: outbound calls go through its
/// app's policy and in-flight caps.
pub struct OutboundHooks {
    pub app: Arc<str>,
    pub policy: Arc<OutboundPolicy>,
    /// Calls all instances of the app may have in flight.
    pub app_calls: Arc<Semaphore>,
    /// Calls this instance may have in flight; made on its first call.
    instance_calls: Option<Arc<Semaphore>>,
    max_instance_calls: u32,
    /// Calls refused for the caps so far (only the first is logged as a
    /// warning: a guest in a loop must not flood the log).
    refused: u64,
}

impl OutboundHooks {
    pub fn new(
        app: Arc<str>,
        policy: Arc<OutboundPolicy>,
        app_calls: Arc<Semaphore>,
        max_instance_calls: u32,
    ) -> OutboundHooks {
        OutboundHooks {
            app,
            policy,
            app_calls,
            instance_calls: None,
            max_instance_calls,
            refused: 0,
        }
    }

    /// A slot for one more call, under both caps.
    fn slot(&mut self) -> Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
        let max = self.max_instance_calls as usize;
        let instance = self
            .instance_calls
            .get_or_insert_with(|| Arc::new(Semaphore::new(max)))
            .clone()
            .try_acquire_owned()
            .ok()?;
        let app = self.app_calls.clone().try_acquire_owned().ok()?;
        Some((instance, app))
    }
}

/// Holds a call's slots until its connection closes.
type Slot = (OwnedSemaphorePermit, OwnedSemaphorePermit);

type IoFuture = Box<dyn Future<Output = Result<(), Error>> + Send>;

impl WasiHttpHooks for OutboundHooks {
    fn p2_outgoing_body_buffer_chunks(&mut self) -> usize {
        1
    }

    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        OUTGOING_BODY_CHUNK_BYTES
    }

    fn p3_outgoing_body_chunk_size(&mut self) -> usize {
        OUTGOING_BODY_CHUNK_BYTES
    }

    fn send_request(
        &mut self,
        request: Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_errors: IoFuture,
    ) -> Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), Error>> + Send> {
        let app = self.app.clone();
        let Some(slot) = self.slot() else {
            self.refused += 1;
            if self.refused == 1 {
                tracing::warn!(app = %app, url = %request.uri(), "outbound request refused: too many calls in flight (further refusals of this instance are logged at debug)");
            } else {
                tracing::debug!(app = %app, url = %request.uri(), "outbound request refused: too many calls in flight");
            }
            metrics().outbound(&app, "limited");
            return Box::new(async { Err(Error::ConnectionLimitReached) });
        };
        let policy = self.policy.clone();
        Box::new(async move {
            let uri = request.uri().clone();
            let scheme = uri.scheme_str().unwrap_or("http").to_ascii_lowercase();
            let host = uri.host().unwrap_or_default().to_ascii_lowercase();
            let port = uri.port_u16().unwrap_or_else(|| default_port(&scheme));
            let addr = match policy.check(&scheme, &host, port).await {
                Ok(addr) => addr,
                Err(reason) => {
                    tracing::warn!(app = %app, url = %uri, %reason, "outbound request denied");
                    metrics().outbound(&app, "denied");
                    return Err(Error::HttpRequestDenied);
                }
            };
            tracing::debug!(app = %app, url = %uri, %addr, "outbound request allowed");
            let tls_host = (scheme == "https").then_some(host);
            let sent = send(addr, tls_host, request, options, slot).await;
            metrics().outbound(&app, if sent.is_ok() { "allowed" } else { "error" });
            sent
        })
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

fn tls_connector() -> tokio_rustls::TlsConnector {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.into(),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    });
    tokio_rustls::TlsConnector::from(config.clone())
}

/// Connect to `addr` (TLS with SNI `tls_host` for https), send `request`
/// over HTTP/1.1 and return the response head; the body streams after.
/// `slot` is held until the connection closes.
async fn send(
    addr: SocketAddr,
    tls_host: Option<String>,
    mut request: Request<WasiBody>,
    options: Option<RequestOptions>,
    slot: Slot,
) -> Result<(http::Response<WasiBody>, IoFuture), Error> {
    let connect_timeout = options
        .and_then(|o| o.connect_timeout)
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    let first_byte_timeout = options
        .and_then(|o| o.first_byte_timeout)
        .unwrap_or(DEFAULT_FIRST_BYTE_TIMEOUT);

    let tcp = tokio::time::timeout(connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| Error::ConnectionTimeout)?
        .map_err(|_| Error::ConnectionRefused)?;
    let _ = tcp.set_nodelay(true);
    let io: Box<dyn Io> = match tls_host {
        Some(host) => {
            // An IPv6 literal comes as `[::1]`; the certificate names `::1`.
            let name = match parse_ip(&host) {
                Some(ip) => rustls::pki_types::ServerName::IpAddress(ip.into()),
                None => rustls::pki_types::ServerName::try_from(host)
                    .map_err(|_| Error::TlsCertificateError)?,
            };
            let tls = tokio::time::timeout(connect_timeout, tls_connector().connect(name, tcp))
                .await
                .map_err(|_| Error::ConnectionTimeout)?
                .map_err(|_| Error::TlsProtocolError)?;
            Box::new(tls)
        }
        None => Box::new(tcp),
    };
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        // Bounds what a response the guest does not read holds in the host.
        .max_buf_size(16 * 1024)
        .handshake(TokioIo::new(io))
        .await
        .map_err(Error::from)?;
    let driver = tokio::spawn(conn);

    // Send origin-form: the path and query only; `host` is already a header.
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    *request.uri_mut() = path.parse().map_err(|_| Error::HttpRequestUriInvalid)?;

    let response = tokio::time::timeout(first_byte_timeout, sender.send_request(request))
        .await
        .map_err(|_| Error::ConnectionReadTimeout)?
        .map_err(Error::from)?;
    let io: IoFuture = Box::new(async move {
        let _slot = slot;
        match driver.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(Error::from(err)),
            Err(_) => Err(Error::ConnectionTerminated),
        }
    });
    Ok((
        response.map(|body| body.map_err(Error::from).boxed_unsync()),
        io,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(list: &[&str]) -> OutboundPolicy {
        OutboundPolicy::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn patterns_match_scheme_host_and_port() {
        let p = policy(&[
            "https://api.example.com",
            "http://*.svc.local:8080",
            "http://10.0.0.5:*",
        ]);
        assert!(p.allowed("https", "api.example.com", 443));
        assert!(
            !p.allowed("http", "api.example.com", 80),
            "scheme must match"
        );
        assert!(
            !p.allowed("https", "api.example.com", 8443),
            "no port = default port only"
        );
        assert!(!p.allowed("https", "evil.api.example.com", 443));
        assert!(p.allowed("http", "a.svc.local", 8080));
        assert!(p.allowed("http", "a.b.svc.local", 8080));
        assert!(
            !p.allowed("http", "svc.local", 8080),
            "`*.` does not match the apex"
        );
        assert!(!p.allowed("http", "xsvc.local", 8080));
        assert!(p.allowed("http", "10.0.0.5", 1234));
        assert!(
            !policy(&[]).allowed("https", "api.example.com", 443),
            "deny by default"
        );
    }

    #[test]
    fn bad_patterns_are_rejected_with_a_reason() {
        for bad in [
            "example.com",
            "ftp://x",
            "https://x/path",
            "https://x:99999",
            "https://*",
            "https://a.*.com",
        ] {
            let err = OutboundPolicy::parse(&[bad.to_string()])
                .unwrap_err()
                .to_string();
            assert!(err.contains(bad), "{err}");
        }
        assert!(OutboundPolicy::parse(&["http://[::1]:8080".to_string()]).is_ok());
    }

    #[test]
    fn internal_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "192.0.0.1",
            "198.18.0.1",
            "198.19.255.255",
            "192.0.2.1",
            "240.0.0.1",
            "::127.0.0.1",
            "::10.0.0.1",
            "64:ff9b::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::1",
            "2002:7f00:1::1",
            "2002:a00:1::",
            "2001::1",
            "2001:db8::1",
            "fec0::1",
            "100::1",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "1.1.1.1",
            "93.184.216.34",
            "2606:4700::1111",
            "64:ff9b::8.8.8.8",
            "2002:808:808::1",
            "2001:4860:4860::8888",
        ] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn private_destinations_need_the_literal_ip_listed() {
        // A name that resolves to loopback is denied even when allowed by name.
        let by_name = policy(&["http://localhost:8080"]);
        let err = by_name
            .check("http", "localhost", 8080)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("loopback"), "{err}");
        // The literal address listed: allowed, on that scheme and port only.
        let by_ip = policy(&["http://127.0.0.1:8080"]);
        assert_eq!(
            by_ip.check("http", "127.0.0.1", 8080).await.unwrap(),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert!(by_ip.check("http", "127.0.0.1", 9090).await.is_err());
        assert!(by_ip.check("https", "127.0.0.1", 8080).await.is_err());
        // A listed IP exempts nothing else: a name that resolves to it is
        // still refused.
        let both = policy(&["http://127.0.0.1:8080", "http://localhost:8080"]);
        assert!(both.check("http", "localhost", 8080).await.is_err());
        // Bracketed IPv6 literals match their pattern.
        let v6 = policy(&["https://[::1]:8443"]);
        assert!(v6.check("https", "[::1]", 8443).await.is_ok());
    }
}
