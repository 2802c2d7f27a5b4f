//! Integration tests: the built binary, run for real on loopback.
//!
//! One test binary (see Cargo.toml's `[[test]]`), one module per concern.
//! The second tier (`peers`, `systemd`) drives the real systemd and systemfd tools.

mod app;
mod balancing;
// Not behind `tls`: systemd.rs makes its self-signed pairs there in every build.
mod certs;
mod configuration;
mod embedding;
mod embedding_settings;
mod haproxy;
mod hostile;
mod inherit_env;
mod listen_checks;
mod listener_chain;
mod listeners;
mod logging;
mod operations;
mod peers;
mod proxy_protocol;
mod reload;
mod robustness;
mod support;
mod systemd;
mod terminal;
#[cfg(feature = "tls")]
mod tls;
#[cfg(feature = "tls")]
mod tls_restarts;
#[cfg(feature = "tls")]
mod tls_scan;
mod trust;
mod unix_sockets;
