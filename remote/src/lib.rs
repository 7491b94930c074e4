//! covm-remote's HTTP client for covm's API socket, shared by the
//! `covm-remote` binary and covm's end-to-end tests.

pub mod client;
pub mod follow;
