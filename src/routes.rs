//! The routes portkeeper answers itself, and the stack every request passes through.
//!
//! The built-in routes are `/health` (liveness: always 200 while the process
//! serves, also during a drain), `/ready` (readiness: 200 while serving, 503
//! from the moment a stop begins, so a load balancer takes the instance out
//! first), `/metrics` ([`crate::metrics`], for Prometheus) and `/info` (pid,
//! version, uptime, the listeners), plus the
//! [`crate::debug_routes`] with `DEBUG=true`. `/health` and `/ready` are
//! answered without a token under `AUTH_REQUIRED`, since probes carry none.
//! The built-ins answer first at their exact paths; every other request goes
//! to the application's router. A user route
//! at `/health` therefore never panics at start, it is simply not reached:
//! move the built-ins with `Server::builtin_routes_at` or turn them off with
//! `Server::without_builtin_routes` to serve your own.
//!
//! In front of both sit the limits and the token check, wrapped once around
//! the whole router rather than around each route:
//! tower-http's `RequestBodyLimit` (`MAX_BODY_BYTES`: 413 for a declared or
//! streamed body above it; axum's own 2 MiB extractor default is turned off
//! so that this is the one limit) and [`crate::timeout`] (`REQUEST_TIMEOUT`: 503).
//! The serving core counts each request for [`crate::metrics`] outside all
//! of this, so their 413 and 503 are counted too.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tower::ServiceBuilder;
use tower_http::limit::RequestBodyLimitLayer;

use crate::auth::Auth;
use crate::listener::{ListenerInfo, Role};
use crate::metrics::{self, Metrics};
use crate::serve::AppService;
use crate::serve::Limits;
use crate::timeout::TimeoutLayer;

/// The body limit axum's extractors apply when no `DefaultBodyLimit` says otherwise.
const AXUM_DEFAULT_BODY_LIMIT: usize = 2 * 1024 * 1024;

/// Where the built-in routes are mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Builtins {
    /// Under this prefix (`""` for the root: `/health`, `/info`).
    At(String),
    /// Not at all.
    Off,
}

impl Builtins {
    /// The built-in probe paths (`/health`, `/ready`), answered without a
    /// token under `AUTH_REQUIRED`.
    pub(crate) fn public_paths(&self) -> Vec<String> {
        match self {
            Builtins::At(prefix) => vec![format!("{prefix}/health"), format!("{prefix}/ready")],
            Builtins::Off => Vec::new(),
        }
    }
}

/// What the built-in handlers can see.
#[derive(Debug)]
pub(crate) struct AppState {
    /// Every listener this process serves from; the first app listener first.
    pub(crate) listeners: Vec<ListenerInfo>,
    /// When the process started serving.
    pub(crate) started: Instant,
    /// What `/ready` answers.
    pub(crate) readiness: Readiness,
    /// What `/metrics` renders.
    pub(crate) metrics: Arc<Metrics>,
}

/// Whether `/ready` answers 200: true from the start, false for good once a
/// stop begins. Cheap to clone; the clones share the one flag.
#[derive(Debug, Clone)]
pub(crate) struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Ready.
    pub(crate) fn new() -> Self {
        Readiness(Arc::new(AtomicBool::new(true)))
    }

    /// From now on `/ready` answers 503.
    pub(crate) fn stop(&self) {
        self.0.store(false, Ordering::Release);
    }

    fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The settings that shape the router, as `Config` has them.
#[derive(Debug, Clone)]
pub(crate) struct RouteSettings {
    pub(crate) builtins: Builtins,
    pub(crate) auth: Auth,
    pub(crate) debug: bool,
}

/// The routes a listener of `role` answers: the one place that decides
/// which listeners get the built-in routes.
///
/// - An admin listener: the built-in routes alone (everything else is 404).
/// - An app listener when the server has an admin listener: the app alone.
/// - An app listener otherwise: the built-in routes in front of the app.
pub(crate) fn router_for(
    role: Role,
    has_admin_listener: bool,
    app: Router,
    state: Arc<AppState>,
    settings: &RouteSettings,
) -> Router {
    match role {
        Role::Admin => router(Router::new(), state, settings),
        Role::App if has_admin_listener => {
            let app_only = RouteSettings {
                builtins: Builtins::Off,
                ..settings.clone()
            };
            router(app, state, &app_only)
        }
        Role::App => router(app, state, settings),
    }
}

/// The application's router with the built-in routes in front and the token
/// check around both: what [`service`] wraps in the limits.
pub(crate) fn router(app: Router, state: Arc<AppState>, settings: &RouteSettings) -> Router {
    let routes = match &settings.builtins {
        Builtins::Off => app,
        Builtins::At(prefix) => {
            let mut builtins = Router::new()
                .route("/health", get(health))
                .route("/ready", get(ready))
                .route("/metrics", get(render_metrics))
                .route("/info", get(info))
                .with_state(state);
            if settings.debug {
                builtins = builtins.merge(crate::debug_routes::routes());
            }
            let mounted = if prefix.is_empty() {
                builtins
            } else {
                Router::new().nest(prefix, builtins)
            };
            mounted.fallback_service(app)
        }
    };
    crate::auth::protect(routes, &settings.auth, settings.builtins.public_paths())
}

/// The whole stack for one request: the body limit and the request timeout
/// around `router`. Cloned for every connection.
pub(crate) fn service(router: Router, limits: Limits) -> impl AppService {
    ServiceBuilder::new()
        .layer(RequestBodyLimitLayer::new(limits.max_body_bytes))
        .layer(TimeoutLayer(limits.request_timeout))
        // axum's extractors cap bodies at 2 MiB of their own unless told
        // otherwise, which costs an extension on every request: only needed
        // when MAX_BODY_BYTES is above that (below, our limit cuts first).
        .option_layer(
            (limits.max_body_bytes > AXUM_DEFAULT_BODY_LIMIT).then(DefaultBodyLimit::disable),
        )
        .service(router)
}

/// `/health`'s answer never changes, so it is a constant.
async fn health() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        r#"{"status":"ok"}"#,
    )
}

/// `/ready`: 200 while serving, 503 once a stop has begun (`SHUTDOWN_DELAY`
/// is the time a load balancer gets to notice).
async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let (status, body) = if state.readiness.is_ready() {
        (StatusCode::OK, r#"{"status":"ready"}"#)
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"stopping"}"#)
    };
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

async fn render_metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(metrics::CONTENT_TYPE),
        )],
        state.metrics.render(),
    )
        .into_response()
}

#[derive(Serialize)]
struct InfoBody<'a> {
    name: &'static str,
    version: &'static str,
    pid: u32,
    uptime_seconds: f64,
    /// The first app listener (kept for clients that read one).
    listener: Option<&'a ListenerInfo>,
    listeners: &'a [ListenerInfo],
}

async fn info(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    Json(InfoBody {
        name: env!("CARGO_PKG_NAME"),
        version: env!("CARGO_PKG_VERSION"),
        pid: std::process::id(),
        uptime_seconds: state.started.elapsed().as_secs_f64(),
        listener: state
            .listeners
            .iter()
            .find(|l| l.role == Role::App)
            .or(state.listeners.first()),
        listeners: &state.listeners,
    })
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listener::{Endpoint, Source};
    use axum::body::Body;
    use http_body_util::BodyExt;
    use std::time::Duration;
    use tower::ServiceExt;

    fn state() -> Arc<AppState> {
        let listener = ListenerInfo {
            marks: crate::listener::Marks::default(),
            source: Source::Searched,
            role: Role::App,
            address: Endpoint::Tcp("127.0.0.1:5053".parse().unwrap()),
            fd: None,
            fd_name: None,
            busy_ports: vec![5050, 5051, 5052],
        };
        Arc::new(AppState {
            metrics: Arc::new(Metrics::new([&listener])),
            listeners: vec![listener],
            started: Instant::now(),
            readiness: Readiness::new(),
        })
    }

    fn settings(builtins: Builtins, auth: Auth) -> RouteSettings {
        RouteSettings {
            builtins,
            auth,
            debug: false,
        }
    }

    fn root() -> Builtins {
        Builtins::At(String::new())
    }

    fn get_req(path: &str) -> axum::http::Request<Body> {
        axum::http::Request::get(path).body(Body::empty()).unwrap()
    }

    async fn send(router: Router, request: axum::http::Request<Body>) -> Response {
        router.oneshot(request).await.unwrap()
    }

    async fn body_text(response: Response) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[tokio::test]
    async fn health_is_ok_with_a_json_content_type() {
        let app = router(Router::new(), state(), &settings(root(), Auth::Open));
        let response = send(app, get_req("/health")).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers().get(header::CONTENT_TYPE),
            Some(&HeaderValue::from_static("application/json"))
        );
        let body: serde_json::Value = serde_json::from_str(&body_text(response).await).unwrap();
        assert_eq!(body, serde_json::json!({ "status": "ok" }));
    }

    #[tokio::test]
    async fn ready_turns_503_once_a_stop_begins_and_health_stays_200() {
        let state = state();
        let readiness = state.readiness.clone();
        let app = router(Router::new(), state, &settings(root(), Auth::Open));
        assert_eq!(
            send(app.clone(), get_req("/ready")).await.status(),
            StatusCode::OK
        );
        readiness.stop();
        let not_ready = send(app.clone(), get_req("/ready")).await;
        assert_eq!(not_ready.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body_text(not_ready).await, r#"{"status":"stopping"}"#);
        assert_eq!(send(app, get_req("/health")).await.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn metrics_render_the_listeners_and_the_upgrades() {
        let app = router(Router::new(), state(), &settings(root(), Auth::Open));
        let response = send(app, get_req("/metrics")).await;
        assert_eq!(response.status(), StatusCode::OK);
        let text = body_text(response).await;
        for line in [
            "portkeeper_listener_info{source=\"searched\",role=\"app\",address=\"127.0.0.1:5053\",fd_name=\"\"} 1\n",
            "portkeeper_upgrades_total{outcome=\"failed\"} 0\n",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
    }

    #[tokio::test]
    async fn info_reports_the_listener() {
        let app = router(Router::new(), state(), &settings(root(), Auth::Open));
        let response = send(app, get_req("/info")).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: serde_json::Value = serde_json::from_str(&body_text(response).await).unwrap();
        assert_eq!(body["pid"], std::process::id());
        assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(body["listener"]["source"], "searched");
        assert_eq!(body["listener"]["address"], "127.0.0.1:5053");
        assert_eq!(
            body["listener"]["busy_ports"],
            serde_json::json!([5050, 5051, 5052])
        );
    }

    #[tokio::test]
    async fn an_admin_listener_takes_the_builtins_from_the_app_listeners() {
        let user = Router::new().route("/hello", get(|| async { "hello" }));
        let s = settings(root(), Auth::Open);
        let admin = router_for(Role::Admin, true, user.clone(), state(), &s);
        let app = router_for(Role::App, true, user.clone(), state(), &s);
        let alone = router_for(Role::App, false, user, state(), &s);
        for (router, path, status) in [
            (&admin, "/info", StatusCode::OK),
            (&admin, "/health", StatusCode::OK),
            (&admin, "/hello", StatusCode::NOT_FOUND),
            (&app, "/info", StatusCode::NOT_FOUND),
            (&app, "/health", StatusCode::NOT_FOUND),
            (&app, "/hello", StatusCode::OK),
            (&alone, "/info", StatusCode::OK),
            (&alone, "/hello", StatusCode::OK),
        ] {
            let got = send(router.clone(), get_req(path)).await.status();
            assert_eq!(got, status, "{path}");
        }
    }

    #[tokio::test]
    async fn builtins_answer_first_the_app_gets_the_rest_and_a_user_health_does_not_panic() {
        let user = Router::new()
            .route("/health", get(|| async { "user health" }))
            .route("/hello", get(|| async { "hello" }));
        let app = router(user.clone(), state(), &settings(root(), Auth::Open));
        assert_eq!(
            body_text(send(app.clone(), get_req("/health")).await).await,
            r#"{"status":"ok"}"#
        );
        assert_eq!(
            body_text(send(app.clone(), get_req("/hello")).await).await,
            "hello"
        );
        assert_eq!(
            send(app, get_req("/nope")).await.status(),
            StatusCode::NOT_FOUND
        );

        let moved = router(
            user.clone(),
            state(),
            &settings(Builtins::At("/_pk".into()), Auth::Open),
        );
        assert_eq!(
            body_text(send(moved.clone(), get_req("/health")).await).await,
            "user health"
        );
        assert_eq!(
            send(moved, get_req("/_pk/info")).await.status(),
            StatusCode::OK
        );

        let off = router(user, state(), &settings(Builtins::Off, Auth::Open));
        assert_eq!(
            send(off, get_req("/info")).await.status(),
            StatusCode::NOT_FOUND
        );
    }

    const TOKEN: &str = "unit-test-token-0123456789";

    fn bearer() -> Auth {
        crate::auth::load(crate::auth::TokenSettings {
            required: true,
            api_token: Some(TOKEN),
            ..Default::default()
        })
        .unwrap()
    }

    #[tokio::test]
    async fn with_auth_only_health_is_open_and_the_app_is_protected() {
        let user = Router::new().route("/hello", get(|| async { "hello" }));
        let app = router(user, state(), &settings(root(), bearer()));
        for path in ["/health", "/ready"] {
            let open = send(app.clone(), get_req(path)).await;
            assert_eq!(open.status(), StatusCode::OK, "{path}");
        }
        for path in [
            "/info", "/metrics", "/hello", "/nope", "/health/", "/ready/",
        ] {
            let refused = send(app.clone(), get_req(path)).await;
            assert_eq!(refused.status(), StatusCode::UNAUTHORIZED, "{path}");
        }
        let right = axum::http::Request::get("/hello")
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Body::empty())
            .unwrap();
        assert_eq!(send(app, right).await.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn debug_routes_exist_only_with_debug() {
        let plain = router(Router::new(), state(), &settings(root(), Auth::Open));
        assert_eq!(
            send(plain, get_req("/debug/sleep?ms=0")).await.status(),
            StatusCode::NOT_FOUND
        );
        let mut debug = settings(root(), Auth::Open);
        debug.debug = true;
        let app = router(Router::new(), state(), &debug);
        assert_eq!(
            send(app, get_req("/debug/sleep?ms=0")).await.status(),
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn slow_requests_are_cut_at_the_request_timeout() {
        let limits = Limits {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_millis(100),
            write_timeout: Duration::from_secs(10),
            max_body_bytes: 64,
            max_connections: 0,
        };
        let slow = Router::new().route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                "late"
            }),
        );
        let started = Instant::now();
        let status = call(service(slow, limits), get_req("/slow")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    /// Drives the stack with a body from a real hyper connection, as `serve` does.
    async fn call<S: AppService>(service: S, request: axum::http::Request<Body>) -> StatusCode {
        call_text(service, request).await.0
    }

    async fn call_text<S: AppService>(
        service: S,
        request: axum::http::Request<Body>,
    ) -> (StatusCode, String) {
        use hyper_util::rt::TokioIo;
        let (client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let service = service.clone();
                async move { service.oneshot(request).await }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(server), service)
                .await;
        });
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(client))
            .await
            .unwrap();
        tokio::spawn(connection);
        let response = sender.send_request(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }
}
