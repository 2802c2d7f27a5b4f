//! Routes for development only, mounted when `DEBUG=true`: today a slow request on demand.
//!
//! `GET /debug/sleep?ms=N` answers after N milliseconds (at most
//! [`MAX_SLEEP`]). It exists to watch a graceful stop or a binary upgrade let
//! an in-flight request finish. It is never mounted without `DEBUG=true`, and
//! the cap keeps even a debug server from holding a connection for long.

use std::time::Duration;

use axum::extract::Query;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use crate::settings::{ConfigError, Environment, Variable, parse_bool};

const DEBUG: Variable = Variable::new(
    "DEBUG",
    "false",
    "development diagnostics (debug logging, `GET /debug/sleep`)",
);

/// `DEBUG`'s variable: it mounts these routes, and makes debug the default log level.
pub(crate) const VARIABLES: &[Variable] = &[DEBUG];

/// Reads and checks `DEBUG`.
pub(crate) fn debug_from_env(env: &Environment) -> Result<bool, ConfigError> {
    env.setting(&DEBUG)?.parse(parse_bool)
}

/// The longest sleep `/debug/sleep` grants.
pub(crate) const MAX_SLEEP: Duration = Duration::from_secs(10);

/// The debug routes, to merge into the app when `DEBUG=true`.
pub(crate) fn routes() -> Router {
    Router::new().route("/debug/sleep", get(sleep))
}

#[derive(Deserialize)]
struct SleepQuery {
    ms: Option<String>,
}

async fn sleep(Query(query): Query<SleepQuery>) -> impl IntoResponse {
    let max_ms = MAX_SLEEP.as_millis() as u64;
    let raw = query.ms.unwrap_or_default();
    let Some(ms) = raw.parse::<u64>().ok().filter(|&ms| ms <= max_ms) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({
                "error": format!("ms: {raw:?} is not valid (expected milliseconds from 0 to {max_ms})")
            })),
        );
    };
    tracing::debug!(ms, "debug: sleeping before answering");
    tokio::time::sleep(Duration::from_millis(ms)).await;
    (
        StatusCode::OK,
        Json(serde_json::json!({ "slept_ms": ms, "pid": std::process::id() })),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn status_of(path: &str) -> StatusCode {
        routes()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap()
            .status()
    }

    #[tokio::test]
    async fn sleeps_within_the_cap_and_refuses_beyond_it() {
        let start = std::time::Instant::now();
        assert_eq!(status_of("/debug/sleep?ms=50").await, StatusCode::OK);
        assert!(start.elapsed() >= Duration::from_millis(50));
        assert_eq!(
            status_of("/debug/sleep?ms=10001").await,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status_of("/debug/sleep?ms=abc").await,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(status_of("/debug/sleep").await, StatusCode::BAD_REQUEST);
    }
}
