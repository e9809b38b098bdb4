//! TLS termination with rustls. The certificate and key are PEM files given
//! as flags; they are reloaded on SIGHUP and when either file changes
//! (checked every [`WATCH_INTERVAL`]), without dropping connections: new
//! handshakes get the new certificate, established connections keep theirs.
//! A reload that fails (a half-written file, a key that does not match)
//! keeps the certificate in use and logs why. ALPN offers `h2` and
//! `http/1.1`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

/// How often the certificate files are checked for changes.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The current certificate, swapped atomically on reload.
#[derive(Debug)]
pub struct CertStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: ArcSwap<CertifiedKey>,
    seen: Mutex<(Option<SystemTime>, Option<SystemTime>)>,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn load(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey> {
    let certs = CertificateDer::pem_file_iter(cert_path)
        .with_context(|| format!("failed to read certificate {}", cert_path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("invalid PEM in {}", cert_path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{} holds no certificate",
        cert_path.display()
    );
    let key = PrivateKeyDer::from_pem_file(key_path)
        .with_context(|| format!("failed to read a private key from {}", key_path.display()))?;
    let key = CertifiedKey::from_der(certs, key, &provider()).with_context(|| {
        format!(
            "the key in {} does not fit the certificate",
            key_path.display()
        )
    })?;
    Ok(key)
}

impl CertStore {
    pub fn open(cert_path: &Path, key_path: &Path) -> Result<Arc<CertStore>> {
        let key = load(cert_path, key_path)?;
        Ok(Arc::new(CertStore {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            current: ArcSwap::from_pointee(key),
            seen: Mutex::new((modified(cert_path), modified(key_path))),
        }))
    }

    /// Reload from disk now; on failure keep the current certificate.
    pub fn reload(&self, why: &str) {
        match load(&self.cert_path, &self.key_path) {
            Ok(key) => {
                self.current.store(Arc::new(key));
                tracing::info!(cert = %self.cert_path.display(), why, "reloaded the TLS certificate");
            }
            Err(err) => {
                tracing::error!(
                    error = format!("{err:#}"),
                    why,
                    "failed to reload the TLS certificate; keeping the current one"
                )
            }
        }
    }

    /// Reload when either file's modification time changed.
    fn reload_if_changed(&self) {
        let now = (modified(&self.cert_path), modified(&self.key_path));
        let changed = match self.seen.lock() {
            Ok(mut seen) if *seen != now => {
                *seen = now;
                true
            }
            _ => false,
        };
        if changed {
            self.reload("the certificate files changed");
        }
    }

    /// Reload on SIGHUP and on file changes, until the process ends.
    pub fn watch(self: &Arc<Self>) {
        let store = self.clone();
        tokio::spawn(async move {
            let mut hangup = match tokio::signal::unix::signal(
                tokio::signal::unix::SignalKind::hangup(),
            ) {
                Ok(signal) => Some(signal),
                Err(err) => {
                    tracing::error!(error = %err, "cannot listen for SIGHUP; certificates reload on file changes only");
                    None
                }
            };
            let mut tick = tokio::time::interval(WATCH_INTERVAL);
            loop {
                tokio::select! {
                    Some(()) = async { match &mut hangup { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                        store.reload("SIGHUP");
                    }
                    _ = tick.tick() => store.reload_if_changed(),
                }
            }
        });
    }

    /// A TLS acceptor that always uses the current certificate.
    pub fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("failed to configure TLS")?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}
