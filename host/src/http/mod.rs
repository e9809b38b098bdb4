//! HTTP plumbing that knows no apps: serving a listener ([`server`]), TLS
//! termination ([`tls`]) and the error responses the host itself writes
//! ([`response`]).

pub mod response;
pub mod server;
pub mod tls;
