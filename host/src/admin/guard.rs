//! Who may call the admin API. Web pages are kept out in every
//! configuration: a request carrying `Origin` (or `Sec-Fetch-Site` other
//! than `none`) is refused, and without a token the `Host` must name this
//! listener (a DNS-rebound name cannot). With a token, every request needs
//! `Authorization: Bearer TOKEN`, compared in constant time.

use std::net::SocketAddr;

use http::{Request, header};
use subtle::ConstantTimeEq;

/// The admin listener's access rules.
pub(crate) struct Guard {
    pub(crate) token: Option<String>,
    /// The address the admin listener is bound to.
    pub(crate) local: SocketAddr,
}

impl Guard {
    /// Refuse what a web page could send: anything with an `Origin` (or a
    /// cross-site `Sec-Fetch-Site`), and, without a token, any `Host` that
    /// is not this listener (a DNS-rebound name).
    pub(crate) fn browser_refusal<B>(&self, request: &Request<B>) -> Option<String> {
        let headers = request.headers();
        if let Some(origin) = headers.get(header::ORIGIN) {
            return Some(format!(
                "admin requests from web pages are refused (this one carries Origin: {}); use the `host` CLI or curl",
                origin.to_str().unwrap_or("?")
            ));
        }
        if let Some(site) = headers.get("sec-fetch-site")
            && site.as_bytes() != b"none"
        {
            return Some(format!(
                "admin requests from web pages are refused (Sec-Fetch-Site: {}); use the `host` CLI or curl",
                site.to_str().unwrap_or("?")
            ));
        }
        if self.token.is_some() {
            return None;
        }
        let host = request
            .uri()
            .authority()
            .map(|a| a.as_str())
            .or_else(|| headers.get(header::HOST).and_then(|v| v.to_str().ok()))
            .unwrap_or_default()
            .to_ascii_lowercase();
        let port = self.local.port();
        let ours = [
            self.local.to_string(),
            format!("localhost:{port}"),
            format!("localhost.:{port}"),
            format!("127.0.0.1:{port}"),
            format!("[::1]:{port}"),
        ];
        if ours.contains(&host) {
            return None;
        }
        Some(format!(
            "admin requests must be addressed to this listener ({} or localhost:{port}), not {host:?}: \
             without an admin token, other host names are refused to stop DNS rebinding; \
             set HOST_ADMIN_TOKEN to serve the admin API under other names",
            self.local
        ))
    }

    pub(crate) fn authorized<B>(&self, request: &Request<B>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        presented.as_bytes().ct_eq(token.as_bytes()).into()
    }
}
