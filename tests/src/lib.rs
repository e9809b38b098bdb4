//! End-to-end tests for the host live in `e2e/` (one test binary, `e2e`).
//! They start the real `host` binary on port 0, read the bound address from
//! its startup line and talk real HTTP to it over loopback.
//!
//! This library is what the suite shares with the bench runner (`bench`,
//! `make bench`): finding the built binaries and guests, starting a server
//! and reading its addresses, watching and stopping it, scratch directories,
//! a client for a host's admin API, a load loop, and a real redis-server.

mod admin;
mod component;
mod load;
mod paths;
mod process;
mod redis;
mod tempdir;

pub use admin::*;
pub use component::*;
pub use load::*;
pub use paths::*;
pub use process::*;
pub use redis::*;
pub use tempdir::*;
