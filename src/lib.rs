//! portkeeper: an HTTP server that never fights over its port.
//!
//! The socket that was found free is the socket that serves. portkeeper
//! adopts a listening socket handed over by systemd socket activation or by
//! `systemfd`; otherwise it binds `HOST:API_PORT` itself, or searches
//! `PORT_RANGE_START..=PORT_RANGE_END`, and serves from that very socket.
//!
//! # How do I run it?
//!
//! ```text
//! cargo run                                                  # plain: binds HOST:API_PORT
//! AUTO_FIND_PORT=true cargo run                              # search the range when busy
//! systemfd --no-pid -s http::5050 -- cargo watch -s 'exec cargo run'  # development with hot reload
//! systemctl enable --now portkeeper.socket                   # production (see systemd/)
//! kill -HUP <pid>                                            # binary upgrade: hand the socket to the new executable
//! RELOAD=true ./target/debug/portkeeper                      # ... whenever the executable file is replaced
//! ```
//!
//! Configuration is by environment variables and an optional `.env` file; see
//! [`config`] for the table and `config.example.env` for a commented copy.
//!
//! # As a library
//!
//! The binary is a thin `main.rs` over this crate, and the pieces can be used
//! on their own:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use portkeeper::{config::{Config, Environment}, listener, server};
//! let config = Config::from_env(&Environment::new([], std::env::vars_os()))?;
//! # #[cfg(unix)]
//! let bound = listener::open(None, &config.listen_fd_name, &config.bind)?;
//! # #[cfg(not(unix))]
//! # let bound = listener::open(&config.listen_fd_name, &config.bind)?;
//! let tcp = tokio::net::TcpListener::from_std(bound.listener)?;
//! let state = std::sync::Arc::new(server::AppState {
//!     listener: bound.info,
//!     started: std::time::Instant::now(),
//!     auth: config.auth.clone(),
//!     debug: config.debug,
//! });
//! let options = server::ServeOptions {
//!     shutdown_timeout: config.shutdown_timeout,
//!     limits: config.limits,
//! };
//! server::serve(tcp, server::app(state), std::future::pending(), options).await;
//! # Ok(())
//! # }
//! ```

pub mod announce;
pub mod auth;
pub mod config;
pub mod debug_routes;
pub mod lifecycle;
pub mod listener;
pub mod logging;
pub mod notify;
pub mod server;
pub mod upgrade;
