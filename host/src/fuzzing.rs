//! Entry points for fuzzing the host's input parsers, shared by the
//! coverage-guided targets in `fuzz/` (cargo-fuzz, nightly) and by the
//! property tests and crash regressions that run on stable in `make test`.
//!
//! Each takes arbitrary bytes, must never panic, and checks the invariants
//! its parser promises (a panic here is a finding):
//!
//! | entry | parser | invariants |
//! |---|---|---|
//! | [`manifest`] | the TOML apps manifest | no panic; every route it accepts is already normal |
//! | [`deploy_settings`] | deploy settings JSON | no panic; valid settings survive a JSON round trip |
//! | [`routing`] | routes, paths, host names | normalisation is idempotent and leaves no `//`, `.`, `..` or encoded separator; a route's prefix matches itself |
//! | [`outbound`] | allow-list patterns, the address classifier | no panic; an IPv4 address embedded in IPv6 (mapped, compatible, NAT64, 6to4) is judged like itself |
//! | [`secret_source`] | secret sources and the operator's rules | no panic; parse and print round-trip |
//! | [`multipart`] | the multipart deploy body | no panic; a component is returned only non-empty and within the cap |

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use bytes::Bytes;

use crate::apps::secrets::{SecretPolicy, SecretSource};
use crate::apps::settings::Ceilings;
use crate::front::path::{normalize_path, request_host};
use crate::routing::{Route, prefixes};
use crate::runtime::outbound::{OutboundPolicy, is_internal};

/// The cap [`multipart`] runs with.
const MAX_UPLOAD: u64 = 64 * 1024;

/// The TOML manifest.
pub fn manifest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(apps) = crate::apps::manifest::parse(text, Path::new("/base")) {
        for app in apps {
            let prefix = &app.route.prefix;
            assert_eq!(
                normalize_path(prefix).ok().as_deref(),
                Some(prefix.as_str()),
                "manifest accepted a route that is not normal: {prefix:?}"
            );
        }
    }
}

/// The settings part of a deploy, and their validation.
pub fn deploy_settings(data: &[u8]) {
    let Ok(request) = serde_json::from_slice::<crate::apps::views::DeployRequest>(data) else {
        return;
    };
    let ceilings = Ceilings {
        memory_mib: 4096,
        max_concurrent: 1000,
    };
    let policy = SecretPolicy::none();
    if request.settings.validate(&ceilings, &policy).is_ok() {
        let json = serde_json::to_vec(&request.settings).expect("valid settings serialise");
        let back: crate::apps::settings::AppSettings =
            serde_json::from_slice(&json).expect("serialised settings parse back");
        assert_eq!(
            back, request.settings,
            "settings changed in a JSON round trip"
        );
    }
    if let Some(route) = &request.route {
        let _ = Route::new(route, request.host.as_deref());
    }
}

/// Routes, request paths and host names.
pub fn routing(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let (prefix, path, host) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let broken_escape = path.bytes().enumerate().any(|(at, b)| {
        b == b'%'
            && !path
                .as_bytes()
                .get(at + 1..at + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    });
    if broken_escape {
        assert!(
            normalize_path(path).is_err(),
            "{path:?} has a broken escape and was not refused"
        );
    }
    if let Ok(normal) = normalize_path(path)
        && path.starts_with('/')
    {
        assert!(normal.starts_with('/'), "{path:?} -> {normal:?}");
        assert!(!normal.contains("//"), "{path:?} -> {normal:?}");
        for segment in normal.split('/') {
            assert!(segment != "." && segment != "..", "{path:?} -> {normal:?}");
        }
        let escapes = normal
            .as_bytes()
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'%');
        for (at, _) in escapes {
            let digits = normal.as_bytes().get(at + 1..at + 3).unwrap_or_default();
            assert!(
                digits.len() == 2 && digits.iter().all(u8::is_ascii_hexdigit),
                "{path:?} -> {normal:?}: a `%` without two hex digits"
            );
        }
        let upper = normal.to_ascii_uppercase();
        assert!(
            !upper.contains("%2F") && !upper.contains("%5C"),
            "{path:?} -> {normal:?}"
        );
        let again = normalize_path(&normal).expect("a normal path normalises");
        assert_eq!(
            again, normal,
            "normalisation is not idempotent for {path:?}"
        );
        for p in prefixes(&normal) {
            assert!(normal.starts_with(p), "{p:?} is no prefix of {normal:?}");
        }
    }
    let host = (!host.is_empty()).then_some(host);
    if let Ok(route) = Route::new(prefix, host) {
        assert_eq!(
            normalize_path(&route.prefix).ok().as_deref(),
            Some(route.prefix.as_str()),
            "route {:?} is not normal",
            route.prefix
        );
        assert!(
            prefixes(&route.prefix).any(|p| p == route.prefix),
            "route {:?} does not match its own path",
            route.prefix
        );
        if let Some(name) = &route.host
            && let Ok(request) = http::Request::get("/")
                .header("host", format!("{name}."))
                .body(())
        {
            assert_eq!(request_host(&request).as_ref(), Some(name));
        }
    }
}

/// The outbound allow-list and the address classifier.
pub fn outbound(data: &[u8]) {
    if data.len() >= 4 {
        let v4 = Ipv4Addr::new(data[0], data[1], data[2], data[3]);
        let judged = is_internal(IpAddr::V4(v4));
        let [a, b, c, d] = v4.octets();
        let (hi, lo) = (u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]));
        for (form, v6) in [
            ("mapped", v4.to_ipv6_mapped()),
            ("nat64", Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, hi, lo)),
            ("6to4", Ipv6Addr::new(0x2002, hi, lo, 0, 0, 0, 0, 1)),
        ] {
            assert_eq!(is_internal(IpAddr::V6(v6)), judged, "{v4} as {form} {v6}");
        }
        if hi != 0 {
            let compatible = Ipv6Addr::new(0, 0, 0, 0, 0, 0, hi, lo);
            assert_eq!(
                is_internal(IpAddr::V6(compatible)),
                judged,
                "{v4} as {compatible}"
            );
        }
    }
    if data.len() >= 16 {
        let mut octets = [0u8; 16];
        octets.copy_from_slice(&data[..16]);
        let _ = is_internal(IpAddr::V6(Ipv6Addr::from(octets)));
    }
    let text = String::from_utf8_lossy(data);
    let mut lines = text.lines();
    let request = lines.next().unwrap_or_default().to_string();
    let patterns: Vec<String> = lines.map(str::to_string).collect();
    if let Ok(policy) = OutboundPolicy::parse(&patterns) {
        let (scheme, rest) = request.split_once("://").unwrap_or(("http", &request));
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().unwrap_or(80)),
            None => (rest, 80),
        };
        let _ = policy.allowed(scheme, host, port);
    }
}

/// Secret sources and the operator's rules (nothing is read).
pub fn secret_source(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(source) = SecretSource::parse(&text) {
        let printed = source.to_string();
        let back = SecretSource::parse(&printed).expect("a printed source parses");
        assert_eq!(back, source, "{text:?} -> {printed:?}");
        let policy = SecretPolicy::new(None, vec!["APP_SECRET_".into()]).expect("policy");
        let _ = policy.check(&source);
    }
}

/// The multipart deploy body: the first line is the content type, the rest
/// the body, fed in chunks of up to 7 bytes where the data says so.
pub fn multipart(data: &[u8]) {
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let content_type = String::from_utf8_lossy(&data[..split]).into_owned();
    let body = data.get(split + 1..).unwrap_or_default().to_vec();
    let chunk = 1 + body.first().map_or(0, |b| usize::from(b % 7));
    let chunks: Vec<Result<Bytes, std::io::Error>> = body
        .chunks(chunk)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let parsed = runtime.block_on(crate::admin::parse_deploy(
        &content_type,
        None,
        futures::stream::iter(chunks),
        MAX_UPLOAD,
    ));
    if let Ok((wasm, _)) = parsed {
        assert!(!wasm.is_empty() && wasm.len() as u64 <= MAX_UPLOAD);
    }
}

#[cfg(test)]
mod tests {
    //! The fuzz targets' crash regressions (`fuzz/regressions/TARGET/*`) and
    //! a seeded random run of every entry, on stable, in `make test`.

    use super::*;

    type Entry = fn(&[u8]);

    const ENTRIES: [(&str, Entry); 6] = [
        ("manifest", manifest),
        ("deploy_settings", deploy_settings),
        ("routing", routing),
        ("outbound", outbound),
        ("secret_source", secret_source),
        ("multipart", multipart),
    ];

    fn corpus(kind: &str, target: &str) -> Vec<Vec<u8>> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz")
            .join(kind)
            .join(target);
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| std::fs::read(e.path()).ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn regressions_and_seeds_pass_every_entry() {
        for (target, entry) in ENTRIES {
            for input in corpus("regressions", target)
                .into_iter()
                .chain(corpus("seeds", target))
            {
                entry(&input);
            }
        }
    }

    /// Mutations of the seeds and random bytes, a few thousand per entry:
    /// a quick stand-in for the fuzzer where nightly is missing.
    #[test]
    fn random_inputs_never_panic() {
        let mut rng = fastrand::Rng::with_seed(0x5eed);
        for (target, entry) in ENTRIES {
            let seeds = corpus("seeds", target);
            for round in 0..2000 {
                let mut input = match seeds.get(round % seeds.len().max(1)) {
                    Some(seed) if round % 4 != 0 => seed.clone(),
                    _ => (0..rng.usize(0..64)).map(|_| rng.u8(..)).collect(),
                };
                for _ in 0..rng.usize(0..4) {
                    if input.is_empty() {
                        break;
                    }
                    let at = rng.usize(..input.len());
                    match rng.u8(0..3) {
                        0 => input[at] = rng.u8(..),
                        1 => {
                            input.remove(at);
                        }
                        _ => {
                            input.insert(at, *b"/.%2e:[]*\n".get(rng.usize(..10)).unwrap_or(&b'/'))
                        }
                    }
                }
                entry(&input);
            }
        }
    }
}
