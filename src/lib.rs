//! portkeeper: serve an axum app that never fights over its port and never
//! refuses a connection across a restart.
//!
//! ```no_run
//! use axum::{routing::get, Router};
//!
//! fn main() -> std::process::ExitCode {
//!     let app = Router::new().route("/", get(|| async { "hello" }));
//!     portkeeper::run(app)
//! }
//! ```
//!
//! That one call does, in this order:
//! - reads `.env` and the environment and checks every setting before any
//!   thread exists (a bad value: one line naming it, exit 78);
//! - starts logging (the systemd journal under systemd, else stderr);
//! - opens the listener by the chain: a socket handed over by systemd socket
//!   activation or `systemfd`, else `HOST:API_PORT`, else (with
//!   `AUTO_FIND_PORT=true`) the first free port of
//!   `PORT_RANGE_START..=PORT_RANGE_END`, and serves from that very socket;
//! - serves the app over HTTP/1.1 and HTTP/2 (with upgrades such as
//!   WebSocket) beside the built-in `/health`, `/ready`, `/metrics` and
//!   `/info`, within
//!   `MAX_BODY_BYTES`, `HEADER_READ_TIMEOUT` and `REQUEST_TIMEOUT`;
//! - tells systemd it is ready (`Type=notify`) and feeds its watchdog;
//! - on SIGTERM or SIGINT, answers `/ready` with 503, keeps serving for
//!   `SHUTDOWN_DELAY` (0 by default: time for a load balancer to notice),
//!   then stops accepting and finishes open requests within
//!   `SHUTDOWN_TIMEOUT` (a second signal stops at once);
//! - on SIGUSR2 (or `RELOAD=true` and a replaced executable) starts the new
//!   executable with the listening socket, waits until it is ready, then
//!   drains: no connection is refused;
//! - returns the exit status: 0 after a clean stop, see [`Error`] otherwise.
//!
//! # How do I run it?
//!
//! ```text
//! cargo run                                                     # plain: binds HOST:API_PORT (0.0.0.0:5050)
//! AUTO_FIND_PORT=true cargo run                                 # search the range when 5050 is busy
//! systemfd --no-pid -s http::5050 -- cargo watch -x run         # development: rebuilds never refuse a request
//! systemctl enable --now portkeeper.socket                      # production: systemd socket activation
//! kill -USR2 <pid>                                              # binary upgrade: hand the socket to the new executable
//! ```
//!
//! # More control
//!
//! [`Server`] is a builder for the common knobs: configuration from
//! somewhere other than the environment ([`Server::from_vars`]), the built-in
//! routes moved or turned off, a shutdown future of your own. An application
//! that owns its runtime opens the listener first with [`Server::listen`]
//! (synchronously, before the runtime: it says why), then serves it inside
//! the runtime with [`Listening::serve`]. One that wants only the socket takes
//! [`Listening::into_listener`], a [`Listener`] that `axum::serve` accepts.
//!
//! The built-in routes answer first at their exact paths (`/health`, `/ready`,
//! `/metrics`, `/info`); to serve your own `/health`, move them with
//! [`Server::builtin_routes_at`] or turn them off.
//!
//! Configuration is by environment variables (and `.env`); `config.example.env`
//! documents every one, and [`variables()`] lists them in code. A program
//! with variables of its own reads ours under a prefix
//! ([`Server::from_env_prefixed`]), gives settings typed
//! ([`Server::shutdown_timeout`], [`Server::bind`], [`Server::api_tokens`], ...),
//! and can leave `.env` and the global subscriber alone
//! ([`Server::dotenv`], [`Server::logging`]).

mod announce;
mod auth;
mod config;
mod debug_routes;
mod error;
mod lifecycle;
mod listener;
mod logging;
mod metrics;
mod notify;
mod redirect;
mod routes;
mod scope;
mod serve;
mod server;
mod settings;
#[cfg(unix)]
mod signals;
mod startup;
mod stopping;
mod timeout;
mod tls;
mod upgrade;

pub use error::Error;
pub use listener::Listener;
pub use server::{Listening, Serve, Server};
pub use settings::Variable;
pub use stopping::Stopping;
#[cfg(feature = "tls")]
pub use tls::ClientIdentity;

/// Every environment variable portkeeper reads, with its default and its
/// meaning, in the order of the documentation: for a program's own `--help`,
/// or to document its deployment. Under [`Server::from_env_prefixed`] each
/// name carries the prefix, except `CREDENTIALS_DIRECTORY` (systemd's).
///
/// ```
/// for variable in portkeeper::variables() {
///     let default = variable.default.unwrap_or("unset");
///     println!("{:<20} {} ({default})", variable.name, variable.meaning);
/// }
/// assert!(portkeeper::variables().iter().any(|v| v.name == "API_PORT"));
/// ```
pub fn variables() -> Vec<Variable> {
    config::variables().copied().collect()
}

/// Serves `app` with everything portkeeper does, configured by the
/// environment and `.env`; returns the exit status for `main`.
///
/// The same as `Server::from_env().run(app)`; see [`Server`] for the knobs.
///
/// ```no_run
/// use axum::{routing::get, Router};
///
/// fn main() -> std::process::ExitCode {
///     let app = Router::new().route("/", get(|| async { "hello" }));
///     portkeeper::run(app)
/// }
/// ```
pub fn run(app: axum::Router) -> std::process::ExitCode {
    Server::from_env().run(app)
}
