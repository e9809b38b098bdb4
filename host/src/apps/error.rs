//! The one error vocabulary of the deploy path: why a change to the apps
//! was refused, or why the host could not make it. Every module of `apps`
//! returns [`AppError`]; the layers below it have small typed errors of
//! their own ([`InvalidRoute`], [`InvalidOutbound`]) that convert into
//! it, and the state directory's [`StorageError`] is one of its kinds. The admin API maps each kind to an HTTP status
//! ([`crate::admin`]), startup reports it as it is; nothing here speaks
//! HTTP.

use std::path::PathBuf;

use crate::cluster::ClusterError;
use crate::kv::KvError;
use crate::routing::InvalidRoute;
use crate::runtime::outbound::InvalidOutbound;

/// Why a change to the apps was refused or failed. The message says what
/// to fix.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A name, setting or request that can never succeed as given.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// The change clashes with the app's current state or another app.
    #[error("{0}")]
    Conflict(String),
    /// The component cannot be served (not a component, wrong exports,
    /// unknown imports, compile too slow).
    #[error("{0}")]
    Unservable(String),
    /// Over a limit (a key-value value or quota).
    #[error("{0}")]
    TooLarge(String),
    /// A service the change needs is down (the key-value store); retry.
    #[error("{0}")]
    Unavailable(String),
    /// The state directory failed (disk full, permissions, a file this
    /// host did not write).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The host failed otherwise: an engine it could not build (memory
    /// mappings), a task that panicked (a bug).
    #[error("{0}")]
    Internal(String),
}

impl AppError {
    /// The same error with `what` said first (`what: message`); a storage
    /// error stays as it is, naming its file.
    pub(crate) fn context(self, what: impl std::fmt::Display) -> AppError {
        match self {
            AppError::Invalid(m) => AppError::Invalid(format!("{what}: {m}")),
            AppError::NotFound(m) => AppError::NotFound(format!("{what}: {m}")),
            AppError::Conflict(m) => AppError::Conflict(format!("{what}: {m}")),
            AppError::Unservable(m) => AppError::Unservable(format!("{what}: {m}")),
            AppError::TooLarge(m) => AppError::TooLarge(format!("{what}: {m}")),
            AppError::Unavailable(m) => AppError::Unavailable(format!("{what}: {m}")),
            AppError::Internal(m) => AppError::Internal(format!("{what}: {m}")),
            AppError::Storage(err) => AppError::Storage(err),
        }
    }

    /// The host's own failure, not the request's: the caller cannot fix it
    /// by changing the request.
    pub fn is_host_failure(&self) -> bool {
        matches!(self, AppError::Storage(_) | AppError::Internal(_))
    }
}

impl From<KvError> for AppError {
    fn from(err: KvError) -> AppError {
        match err {
            KvError::Invalid(m) | KvError::NotANumber(m) => AppError::Invalid(m),
            KvError::Limit(m) => AppError::TooLarge(m),
            KvError::Backend(m) | KvError::Timeout(m) => AppError::Unavailable(m),
        }
    }
}

/// A file of the state directory that could not be read or written, or
/// whose contents are not what this host wrote.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("failed to {action} {}: {error}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{} {why}", path.display())]
    Corrupt { path: PathBuf, why: String },
}

impl From<InvalidRoute> for AppError {
    fn from(err: InvalidRoute) -> AppError {
        AppError::Invalid(err.to_string())
    }
}

impl From<InvalidOutbound> for AppError {
    fn from(err: InvalidOutbound) -> AppError {
        AppError::Invalid(err.to_string())
    }
}

impl From<ClusterError> for AppError {
    fn from(err: ClusterError) -> AppError {
        match err {
            ClusterError::Unavailable(m) => AppError::Unavailable(format!(
                "{m}: the change was not made; every replica keeps serving what it has; \
                 retry once the cluster store is back"
            )),
            ClusterError::Replaced(m) => AppError::Unavailable(m),
            err @ (ClusterError::Conflict { .. } | ClusterError::RouteTaken { .. }) => {
                AppError::Conflict(err.to_string())
            }
            ClusterError::Corrupt(m) => AppError::Internal(m),
        }
    }
}
