//! The one error vocabulary of the deploy path: why a change to the apps
//! was refused. The admin API maps each kind to an HTTP status
//! ([`crate::admin`]); nothing here speaks HTTP.

/// Why a change to the apps was refused. The admin API maps each kind to a
/// status; the message says what to fix.
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
    /// The host failed (disk, a bug); details are in its log.
    #[error("the host could not complete the operation; see its log")]
    Internal(#[source] anyhow::Error),
}

impl AppError {
    pub(crate) fn internal(err: anyhow::Error) -> AppError {
        tracing::error!(error = ?err, "app operation failed");
        AppError::Internal(err)
    }
}
