//! Where a request goes, read from it: its host name (lowercased, without
//! a port or a trailing dot) and its path, normalised before routing the
//! way a proxy in front would (RFC 3986 §6, like nginx and Envoy's
//! `normalize_path` + `merge_slashes`): percent-encoded unreserved
//! characters are decoded, `.` and `..` segments are resolved and repeated
//! slashes merged; a percent-encoded `/` or `\`, or a broken `%` escape, is
//! refused. The app sees the normalised path, so what it serves is what was
//! routed to it.

use std::borrow::Cow;

use http::{Request, header};

/// The request's host name, lowercased, without a port or a trailing dot.
pub(crate) fn request_host<B>(request: &Request<B>) -> Option<String> {
    let raw = match request.uri().host() {
        Some(h) => h.to_string(),
        None => {
            let value = request.headers().get(header::HOST)?.to_str().ok()?;
            match value.rsplit_once(':') {
                Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h.to_string(),
                _ => value.to_string(),
            }
        }
    };
    let mut host = raw.to_ascii_lowercase();
    if host.ends_with('.') {
        host.pop();
    }
    Some(host)
}

/// Is `b` an RFC 3986 unreserved character (safe to decode from `%XX`)?
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Normalise a request path for routing (see the module header). Borrowed
/// when nothing changes, which is the common case and costs one scan.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, String> {
    let bytes = path.as_bytes();
    let plain = !bytes.contains(&b'%')
        && !path.contains("//")
        && !path.contains("/./")
        && !path.contains("/../")
        && !path.ends_with("/.")
        && !path.ends_with("/..");
    if plain {
        return Ok(Cow::Borrowed(path));
    }
    // Decode unreserved escapes, upper-case the others, refuse escaped
    // separators and broken escapes.
    let mut decoded = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            decoded.push(bytes[i]);
            i += 1;
            continue;
        }
        // Two hex digits, nothing else (`from_str_radix` alone would take `+1`).
        let hex = bytes
            .get(i + 1..i + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or_else(|| format!("the path {path:?} has a broken %-escape"))?;
        if hex == b'/' || hex == b'\\' {
            return Err(format!(
                "the path {path:?} has an encoded `/` or `\\`, which is ambiguous: send it unencoded"
            ));
        }
        if unreserved(hex) {
            decoded.push(hex);
        } else {
            decoded.extend_from_slice(format!("%{hex:02X}").as_bytes());
        }
        i += 3;
    }
    // Only ASCII was replaced, by ASCII: still UTF-8.
    let decoded =
        String::from_utf8(decoded).map_err(|_| format!("the path {path:?} is not valid UTF-8"))?;
    // Remove dot segments and empty segments.
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut normal = String::with_capacity(decoded.len());
    for segment in &segments {
        normal.push('/');
        normal.push_str(segment);
    }
    if normal.is_empty() || (trailing && !segments.is_empty()) {
        normal.push('/');
    }
    Ok(Cow::Owned(normal))
}

/// Replace the request's path, keeping its query.
pub(crate) fn set_path<B>(request: &mut Request<B>, path: &str) -> Result<(), String> {
    let mut parts = request.uri().clone().into_parts();
    let path_and_query = match request.uri().query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_string(),
    };
    parts.path_and_query = Some(
        path_and_query
            .parse()
            .map_err(|_| format!("the normalised path {path:?} is not a valid URI path"))?,
    );
    *request.uri_mut() =
        http::Uri::from_parts(parts).map_err(|e| format!("cannot rewrite the path: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalised_like_a_proxy_would() {
        let n = |p| normalize_path(p).map(|c| c.into_owned());
        assert!(matches!(normalize_path("/a/b?x"), Ok(Cow::Borrowed(_))));
        assert_eq!(n("/private/../public/x").unwrap(), "/public/x");
        assert_eq!(n("//app").unwrap(), "/app");
        assert_eq!(n("/a//b///c").unwrap(), "/a/b/c");
        assert_eq!(n("/a/./b/.").unwrap(), "/a/b/");
        assert_eq!(n("/../../etc").unwrap(), "/etc");
        assert_eq!(n("/a/..").unwrap(), "/");
        assert_eq!(n("/%70rivate").unwrap(), "/private");
        assert_eq!(n("/a/%2e%2e/b").unwrap(), "/b");
        assert_eq!(n("/caf%c3%a9").unwrap(), "/caf%C3%A9");
        assert_eq!(n("/a/").unwrap(), "/a/");
        assert!(n("/a%2Fb").is_err());
        assert!(n("/a%5cb").is_err());
        assert!(n("/a%zz").is_err());
        assert!(n("/a%2").is_err());
        assert!(n("/a%+1").is_err());
    }

    #[test]
    fn host_names_match_without_a_trailing_dot() {
        let request = Request::get("http://x.example.com./a").body(()).unwrap();
        assert_eq!(request_host(&request).as_deref(), Some("x.example.com"));
        let request = Request::get("/a")
            .header("host", "X.Example.COM.:8080")
            .body(())
            .unwrap();
        assert_eq!(request_host(&request).as_deref(), Some("x.example.com"));
    }
}
