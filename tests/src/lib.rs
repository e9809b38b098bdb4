//! End-to-end tests for the host live in `e2e/` (one test binary, `e2e`).
//! They start the real `host` binary on port 0, read the bound address from
//! its startup line and talk real HTTP to it over loopback.
