//! The router both sides of `bench/run.sh` serve, so that they cannot drift:
//! `examples/baseline.rs` through `axum::serve`, `examples/bench_app.rs`
//! through portkeeper. Each includes this file with `#[path]`.
//!
//! - `GET /health`: the constant `{"status":"ok"}`, as JSON.
//! - `POST /echo`: a JSON body (the benchmark sends `bench/echo.json`, about
//!   1 KiB) read by axum's `Json` extractor into a `serde_json::Value` and
//!   written back.

use axum::http::header::CONTENT_TYPE;
use axum::routing::{get, post};
use axum::{Json, Router};

/// The body of `GET /health`.
const HEALTH: &str = r#"{"status":"ok"}"#;

/// `GET /health` and `POST /echo`.
pub(crate) fn router() -> Router {
    Router::new()
        .route(
            "/health",
            get(|| async { ([(CONTENT_TYPE, "application/json")], HEALTH) }),
        )
        .route(
            "/echo",
            post(|Json(body): Json<serde_json::Value>| async { Json(body) }),
        )
}
