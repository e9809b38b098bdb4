//! Outbound HTTP from guests: deny by default, allow what the app's
//! allow-list names, and block loopback, private and link-local
//! destinations after DNS resolution unless the allow-list names that exact
//! IP address.
//!
//! The host connects to the very address it checked (it never resolves the
//! name a second time), so DNS cannot be rebound between check and connect.
//! A denied call reaches the guest as wasi:http `HTTP-request-denied` and is
//! logged with the app and the reason.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use crate::metrics::metrics;

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(60);

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

impl OutboundPolicy {
    pub fn parse(list: &[String]) -> Result<OutboundPolicy, String> {
        let patterns = list
            .iter()
            .map(|p| parse_pattern(p))
            .collect::<Result<_, _>>()?;
        Ok(OutboundPolicy { patterns })
    }

    fn allowed(&self, scheme: &str, host: &str, port: u16) -> bool {
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

    /// Is `ip` named literally by some pattern (which lets it through even
    /// when it is loopback, private or link-local)?
    fn names_ip(&self, ip: IpAddr) -> bool {
        self.patterns
            .iter()
            .any(|p| matches!(p.host, HostPattern::Ip(a) if a == ip))
    }

    /// Decide on a request: the address to connect to, or why not.
    async fn check(&self, scheme: &str, host: &str, port: u16) -> Result<SocketAddr, String> {
        if scheme != "http" && scheme != "https" {
            return Err(format!("scheme {scheme} is not supported"));
        }
        if !self.allowed(scheme, host, port) {
            return Err("destination is not in the app's outbound allow-list".into());
        }
        let candidates: Vec<SocketAddr> = match parse_ip(host) {
            Some(ip) => vec![SocketAddr::new(ip, port)],
            None => tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| format!("DNS lookup failed: {e}"))?
                .collect(),
        };
        candidates
            .iter()
            .copied()
            .find(|addr| !is_internal(addr.ip()) || self.names_ip(addr.ip()))
            .ok_or_else(|| {
                "destination resolves to a loopback, private or link-local address \
                 not named in the allow-list"
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

/// Loopback, private, link-local, unspecified and similar non-public addresses.
fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10, carrier-grade NAT
                || o[0] == 0
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let seg = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (seg[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        }
    }
}

/// The wasi:http hooks of one app's requests: outbound calls go through
/// its policy.
pub struct OutboundHooks {
    pub app: Arc<str>,
    pub policy: Arc<OutboundPolicy>,
}

type IoFuture = Box<dyn Future<Output = Result<(), Error>> + Send>;

impl WasiHttpHooks for OutboundHooks {
    fn send_request(
        &mut self,
        request: Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_errors: IoFuture,
    ) -> Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), Error>> + Send> {
        let app = self.app.clone();
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
            let sent = send(addr, tls_host, request, options).await;
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
async fn send(
    addr: SocketAddr,
    tls_host: Option<String>,
    mut request: Request<WasiBody>,
    options: Option<RequestOptions>,
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
            let name = rustls::pki_types::ServerName::try_from(host)
                .map_err(|_| Error::TlsCertificateError)?;
            let tls = tokio::time::timeout(connect_timeout, tls_connector().connect(name, tcp))
                .await
                .map_err(|_| Error::ConnectionTimeout)?
                .map_err(|_| Error::TlsProtocolError)?;
            Box::new(tls)
        }
        None => Box::new(tcp),
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
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
            let err = OutboundPolicy::parse(&[bad.to_string()]).unwrap_err();
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
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["1.1.1.1", "93.184.216.34", "2606:4700::1111"] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn private_destinations_need_the_literal_ip_listed() {
        // A name that resolves to loopback is denied even when allowed by name.
        let by_name = policy(&["http://localhost:8080"]);
        let err = by_name.check("http", "localhost", 8080).await.unwrap_err();
        assert!(err.contains("loopback"), "{err}");
        // The literal address listed: allowed.
        let by_ip = policy(&["http://127.0.0.1:8080"]);
        assert_eq!(
            by_ip.check("http", "127.0.0.1", 8080).await.unwrap(),
            "127.0.0.1:8080".parse().unwrap()
        );
    }
}
