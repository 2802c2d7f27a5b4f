//! The smallest portkeeper app: one route, everything else from the crate.
//!
//! Run with: `cargo run --example hello` (then `curl http://127.0.0.1:5050/`)

use axum::{Router, routing::get};

fn main() -> std::process::ExitCode {
    let app = Router::new().route("/", get(|| async { "hello" }));
    portkeeper::run(app)
}
