//! The deploy path: the apps this host serves and every change to them,
//! with no HTTP types. An admin request becomes a call on the
//! [`registry::Registry`], which validates it ([`settings`], [`secrets`]),
//! plans the app's next record ([`plan`], on [`records`]), makes what the
//! record serves ([`provision`]: code from [`compiler`], the cache or a
//! compile; secrets), stores the record ([`state_dir`]) and publishes the
//! new routing table, all through one commit path; [`gc`] removes what no
//! record names any more; [`follow`] is cluster mode, where the records
//! live in the cluster store and every replica follows them ([`replica`]:
//! what a replica keeps of it). [`views`] is what the admin API shows; [`data`]
//! is apps' key-value data as operators reach it. Every
//! failure is an [`error::AppError`], which the admin API maps to a
//! status.

pub mod compiler;
pub mod data;
pub mod error;
pub mod follow;
pub mod gc;
pub mod manifest;
pub mod plan;
pub mod provision;
pub mod records;
pub mod registry;
pub mod replica;
pub mod secrets;
pub mod settings;
pub mod state_dir;
pub mod views;
