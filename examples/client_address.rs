//! An app that shows who its handlers think the client is: `GET /ip`
//! answers the request's `ConnectInfo`, the built-in routes (`/info`,
//! `/health`, ...) come from the crate.
//!
//! Behind a proxy that sends a PROXY header (HAProxy's `send-proxy-v2`), on
//! a listener marked `proxy`, `/ip` shows the original client's address,
//! not the proxy's:
//!
//! ```sh
//! LISTEN=proxy=127.0.0.1:8080 PROXY_TRUSTED=127.0.0.1 cargo run --example client_address
//! ```

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::routing::get;

/// `ConnectInfo<SocketAddr>` as `ip:port`; a Unix-socket peer (no PROXY
/// header naming a client) has `ConnectInfo<UCred>` instead.
async fn ip(request: Request) -> String {
    let extensions = request.extensions();
    if let Some(ConnectInfo(address)) = extensions.get::<ConnectInfo<SocketAddr>>() {
        return address.to_string();
    }
    #[cfg(unix)]
    if let Some(ConnectInfo(credentials)) = extensions.get::<ConnectInfo<tokio::net::unix::UCred>>()
    {
        return format!("unix uid {}", credentials.uid());
    }
    "unknown".to_owned()
}

fn main() -> std::process::ExitCode {
    portkeeper::run(Router::new().route("/ip", get(ip)))
}
