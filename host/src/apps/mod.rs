//! The deploy path: the apps this host serves and every change to them,
//! with no HTTP types. An admin request becomes a call on the
//! [`registry::Registry`], which validates it ([`settings`], [`secrets`]),
//! plans the app's next record ([`plan`], on [`records`]), obtains code
//! ([`compiler`]: the cache or the compiler), stores the record
//! ([`state_dir`]) and publishes the new routing table; [`gc`] removes
//! what no record names any more. Failures are
//! [`error::AppError`]s, which the admin API maps to statuses.

pub mod compiler;
pub mod error;
pub mod gc;
pub mod manifest;
pub mod plan;
pub mod records;
pub mod registry;
pub mod secrets;
pub mod settings;
pub mod state_dir;
pub mod views;
