//! The HTTP side: the routes, and serving them from a listener with a graceful stop.
//!
//! [`app`] builds the axum `Router`; [`serve`] runs our own accept loop over
//! hyper. We do not use `axum::serve` because its graceful shutdown closes
//! connections that were accepted but have not sent their first request yet:
//! the client sees an empty reply. Measured behind systemfd (DESIGN.md), that
//! was 3 failed requests in 10 restarts. Here, once a stop begins, a
//! connection with no request in flight gets [`IDLE_GRACE`] for one to arrive;
//! that request is answered with `Connection: close`, and then it closes.
//! This module never binds: it is handed a listener.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::future::RouteFuture;
use axum::routing::get;
use axum::{BoxError, Json, Router};
use http_body_util::Limited;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::task::TaskTracker;
use tower::Service;

use crate::auth::Auth;
use crate::config::Limits;
use crate::listener::ListenerInfo;
use lazy_select::{Either, select_lazily};

mod lazy_select;

/// How long, once a stop begins, an idle connection may take to send its next request.
///
/// A client that connected (or finished a request) a moment before the stop
/// is usually about to send; closing under it is what makes "empty reply"
/// errors. Half a second covers a busy client and adds little to a restart
/// when browsers hold idle keep-alive connections.
pub const IDLE_GRACE: Duration = Duration::from_millis(500);

/// What the handlers can see.
#[derive(Debug)]
pub struct AppState {
    /// The listener this process serves from.
    pub listener: ListenerInfo,
    /// When the process started serving.
    pub started: Instant,
    /// Whether routes need a bearer token (see [`crate::auth`]).
    pub auth: Auth,
    /// `DEBUG=true`: mount [`crate::debug_routes`] (behind the same auth and limits).
    pub debug: bool,
}

/// The routes and the token check, without a socket: tests drive this with
/// `tower::ServiceExt::oneshot`, or through [`bounded`] for the limits.
pub fn app(state: Arc<AppState>) -> Router {
    let auth = state.auth.clone();
    let debug = state.debug;
    let mut routes = Router::new()
        .route("/health", get(health))
        .route("/info", get(info))
        .with_state(state);
    if debug {
        routes = routes.merge(crate::debug_routes::routes());
    }
    crate::auth::protect(routes, &auth)
}

/// Answers one request with `app`, within the limits: 413 Payload Too Large
/// for a declared body above `max_body_bytes` (a body that grows past it
/// while read is cut there, and axum's extractors answer 413), and 503
/// Service Unavailable once `request_timeout` has passed.
///
/// Why not tower-http's `RequestBodyLimitLayer` and `TimeoutLayer` on the
/// router: `Router::layer` boxes every route once more, and the boxed route is
/// cloned for every request. Wrapping the call here does the same work
/// without it: 18,661 -> 16,819 instructions per `/health` request under
/// callgrind (bench/run.sh; the baseline takes about 14,770).
pub fn bounded<B>(app: &Router, request: Request<B>, limits: Limits) -> Bounded
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    // The body's own size hint is its Content-Length, already parsed by
    // hyper: no header lookup. A chunked body has no lower bound here and
    // is cut by `Limited` instead.
    let state = if request.body().size_hint().lower() > limits.max_body_bytes as u64 {
        Answer::Ready(Some(StatusCode::PAYLOAD_TOO_LARGE.into_response()))
    } else {
        let request = request.map(|body| Limited::new(body, limits.max_body_bytes));
        // The route's future owns all it needs: the router clone goes at once.
        Answer::Routed(app.clone().call(request))
    };
    Bounded {
        state,
        request_timeout: limits.request_timeout,
        timer: None,
    }
}

/// The answer to one request, from [`bounded`].
///
/// A struct rather than an `async fn`: hyper moves each request's future
/// into its connection, and the `async` version was 1,624 bytes, copied
/// into memory the cache had let go of on every request (callgrind's cache
/// simulation: 33 more write misses per request than the baseline). This
/// one holds the route's future and two words.
pub struct Bounded {
    state: Answer,
    request_timeout: Duration,
    /// Armed only once the route has to wait, so a request answered at
    /// its first poll (most are) never reads the clock nor touches the timer.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

enum Answer {
    Routed(RouteFuture<Infallible>),
    /// Known without routing (413); taken when polled.
    Ready(Option<Response>),
}

impl std::fmt::Debug for Bounded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            Answer::Routed(_) => "routed",
            Answer::Ready(Some(_)) => "answered",
            Answer::Ready(None) => "taken",
        };
        f.debug_struct("Bounded")
            .field("state", &state)
            .field("request_timeout", &self.request_timeout)
            .field("timer_armed", &self.timer.is_some())
            .finish()
    }
}

impl Future for Bounded {
    type Output = Response;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Response> {
        let this = self.get_mut();
        let route = match &mut this.state {
            Answer::Ready(response) => {
                return Poll::Ready(response.take().unwrap_or_else(|| {
                    // Polled again after completion: a caller's bug, not the client's.
                    StatusCode::INTERNAL_SERVER_ERROR.into_response()
                }));
            }
            Answer::Routed(route) => route,
        };
        if let Poll::Ready(Ok(response)) = Pin::new(route).poll(cx) {
            return Poll::Ready(response);
        }
        let limit = this.request_timeout;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        timer
            .as_mut()
            .poll(cx)
            .map(|()| StatusCode::SERVICE_UNAVAILABLE.into_response())
    }
}

/// `/health`'s answer never changes, so it is a constant: no JSON value is
/// built, serialized and freed for every health check.
async fn health() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        r#"{"status":"ok"}"#,
    )
}

#[derive(Serialize)]
struct InfoBody<'a> {
    name: &'static str,
    version: &'static str,
    pid: u32,
    uptime_seconds: f64,
    listener: &'a ListenerInfo,
}

async fn info(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    Json(
        serde_json::to_value(InfoBody {
            name: env!("CARGO_PKG_NAME"),
            version: env!("CARGO_PKG_VERSION"),
            pid: std::process::id(),
            uptime_seconds: state.started.elapsed().as_secs_f64(),
            listener: &state.listener,
        })
        .unwrap_or_default(),
    )
}

/// Settings for [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// How long in-flight requests may take to finish once the stop begins.
    pub shutdown_timeout: Duration,
    /// Time and size bounds for each connection and request.
    pub limits: Limits,
}

/// How serving ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Every connection finished within the shutdown timeout.
    Drained,
    /// The timeout passed with this many connections still open; they are dropped.
    TimedOut {
        /// Connections still open.
        open: usize,
    },
}

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting
/// and lets open connections finish, bounded by `options.shutdown_timeout`.
///
/// The listener is dropped (closed) as soon as the stop begins, never shut
/// down: when it was inherited, systemd or systemfd keep their copy open and
/// new connections queue there for the next process.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()>,
    options: ServeOptions,
) -> Stopped {
    let stop = Arc::new(Stop::default());
    let connections = TaskTracker::new();
    let idle_grace = IDLE_GRACE.min(options.shutdown_timeout);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _peer)) => {
                connections.spawn(serve_connection(
                    stream,
                    app.clone(),
                    Arc::clone(&stop),
                    idle_grace,
                    options.limits,
                ));
            }
            Err(err) => {
                if !is_connection_error(&err) {
                    // EMFILE and friends: back off rather than spin, as hyper's
                    // own server loop does, but keep listening for the stop.
                    tracing::error!(error = %err, "accept failed; retrying in 1s");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }
    drop(listener);
    stop.begin();
    connections.close();
    tracing::info!(
        open = connections.len(),
        "stopped accepting; finishing open connections"
    );
    match tokio::time::timeout(options.shutdown_timeout, connections.wait()).await {
        Ok(()) => Stopped::Drained,
        Err(_) => Stopped::TimedOut {
            open: connections.len(),
        },
    }
}

/// Errors that concern one connection only, as `axum::serve` classifies them.
fn is_connection_error(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// The server's stop, as its connections see it.
///
/// Not a `watch` channel: every response checks it, and a `watch` borrow
/// takes a lock where this takes one atomic load.
#[derive(Debug, Default)]
struct Stop {
    begun: AtomicBool,
    announced: Notify,
}

impl Stop {
    fn begin(&self) {
        self.begun.store(true, Ordering::Release);
        self.announced.notify_waiters();
    }

    fn has_begun(&self) -> bool {
        self.begun.load(Ordering::Acquire)
    }

    /// Completes once the stop has begun.
    async fn begun(&self) {
        notified_until(&self.announced, || self.has_begun()).await;
    }
}

/// Completes once `holds()` is true, checking it again each time `notify`
/// wakes us. The wake-up is registered before each check, so a change made
/// (and notified) between the check and the wait is never missed; a permit
/// left over from an earlier `notify_one` only costs one more check.
async fn notified_until(notify: &Notify, holds: impl Fn() -> bool) {
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if holds() {
            return;
        }
        notified.await;
    }
}

/// What ended a connection's normal service.
enum Watched {
    StopBegun,
    HeadersOverdue,
}

/// Counts requests on one connection, so a stop can tell idle from busy.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    /// Requests begun so far, and a wake-up for the stop path when one begins.
    /// Not a `watch` channel: its send takes a lock and notifies eight waiter
    /// lists on every request, where `notify_one` with nobody waiting is one
    /// atomic operation (measured by bench/run.sh, about 1.5% of the CPU a
    /// `/health` request costs).
    started: AtomicU64,
    request_began: Notify,
    /// When the connection was accepted, the origin of `idle_since_nanos`.
    /// tokio's clock, so tests can pause it.
    born: tokio::time::Instant,
    /// When the connection last began waiting for a request head (accepted,
    /// or its last response produced), in nanoseconds after `born`.
    idle_since_nanos: AtomicU64,
    /// The server's stop, checked as each response leaves.
    stop: Arc<Stop>,
}

/// Marks one request as in flight until dropped (also on cancellation).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let waiting_since = self.0.born.elapsed().as_nanos() as u64;
        self.0
            .idle_since_nanos
            .store(waiting_since, Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Activity {
    fn new(stop: Arc<Stop>) -> Self {
        Activity {
            stop,
            in_flight: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            request_began: Notify::new(),
            born: tokio::time::Instant::now(),
            idle_since_nanos: AtomicU64::new(0),
        }
    }

    /// Since when the connection has waited for a request head, if it is
    /// waiting (no request in flight).
    fn waiting_since(&self) -> Option<tokio::time::Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let nanos = self.idle_since_nanos.load(Ordering::Acquire);
        Some(self.born + Duration::from_nanos(nanos))
    }

    /// Completes once the connection has waited `timeout` for a request's
    /// headers: since it was accepted, or since its last response. This is
    /// the header-read timeout (slow-loris, and idle keep-alive). hyper's own
    /// `header_read_timeout` creates a timer for every request; this sleeps
    /// once per `timeout` at most and is re-armed from the recorded time,
    /// so a request costs one clock read (bench/run.sh: about 1,000 fewer
    /// instructions per `/health` request under callgrind).
    async fn headers_overdue(&self, timeout: Duration) {
        loop {
            let deadline = match self.waiting_since() {
                Some(since) if since.elapsed() >= timeout => return,
                Some(since) => since + timeout,
                // A request is in flight: its end restarts the clock, so look again later.
                None => tokio::time::Instant::now() + timeout,
            };
            tokio::time::sleep_until(deadline).await;
        }
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.started.fetch_add(1, Ordering::AcqRel);
        self.request_began.notify_one();
        InFlight(Arc::clone(self))
    }

    /// Completes once more than `seen` requests have begun.
    async fn began_after(&self, seen: u64) {
        notified_until(&self.request_began, || {
            self.started.load(Ordering::Acquire) > seen
        })
        .await;
    }
}

async fn serve_connection(
    stream: TcpStream,
    app: Router,
    stop: Arc<Stop>,
    idle_grace: Duration,
    limits: Limits,
) {
    // Small JSON answers should leave at once, not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new(stop));
    let service = hyper::service::service_fn({
        let activity = Arc::clone(&activity);
        move |request: hyper::Request<Incoming>| Respond {
            answer: bounded(&app, request, limits),
            in_flight: Some(activity.begin()),
        }
    });
    // The header-read timeout is ours (`headers_overdue`), not hyper's: the
    // same bound, without a timer per request. hyper's is disabled explicitly,
    // since its default (30 s) would panic without a timer.
    let connection = http1::Builder::new()
        .header_read_timeout(None)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);

    // Polled only when one of them wakes (see `lazy_select`), not for every request.
    let watcher = async {
        tokio::select! {
            () = activity.stop.begun() => Watched::StopBegun,
            () = activity.headers_overdue(limits.header_read_timeout) => Watched::HeadersOverdue,
        }
    };
    match select_lazily(connection.as_mut(), watcher).await {
        Either::Busy(result) => {
            log_connection_end(result);
            return;
        }
        Either::Watcher(Watched::StopBegun) => {}
        // Slow-loris headers or an idle keep-alive connection: dropping the
        // connection closes it without a response, as hyper would.
        Either::Watcher(Watched::HeadersOverdue) => {
            tracing::debug!(
                "closing a connection that sent no request head within HEADER_READ_TIMEOUT"
            );
            return;
        }
    }
    if activity.in_flight.load(Ordering::Acquire) == 0 {
        // Idle: a request may be on the wire already. Wait briefly for it so
        // it is answered rather than cut off.
        let seen = activity.started.load(Ordering::Acquire);
        tokio::select! {
            result = connection.as_mut() => {
                log_connection_end(result);
                return;
            }
            () = activity.began_after(seen) => {}
            () = tokio::time::sleep(idle_grace) => {}
        }
    }
    // Finishes the request in flight (answering it with Connection: close),
    // then closes; an idle connection closes at once.
    connection.as_mut().graceful_shutdown();
    tokio::select! {
        result = connection.as_mut() => log_connection_end(result),
        // A slow-loris head is still cut at the header timeout while stopping.
        () = activity.headers_overdue(limits.header_read_timeout) => {}
    }
}

/// One request on a connection: its bounded answer, counted as in flight
/// until it is ready.
struct Respond {
    answer: Bounded,
    /// Dropped when the answer is ready (or when hyper drops the request).
    in_flight: Option<InFlight>,
}

impl Future for Respond {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut response = std::task::ready!(Pin::new(&mut this.answer).poll(cx));
        if let Some(in_flight) = this.in_flight.take() {
            if in_flight.0.stop.has_begun() {
                say_closing(&mut response);
            }
        }
        Poll::Ready(Ok(response))
    }
}

/// Marks a response as the connection's last, once a stop has begun.
///
/// hyper can answer a request, write the response and go back to reading in
/// a single poll, before this connection's task sees the stop. Had that
/// response said keep-alive, closing the connection afterwards would cut off
/// the client's next request (an "empty reply"; measured: one per connection
/// per restart). With `Connection: close` the client knows to reconnect, and
/// hyper closes the connection right after writing it.
fn say_closing(response: &mut Response) {
    response.headers_mut().insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("close"),
    );
}

fn log_connection_end(result: Result<(), hyper::Error>) {
    if let Err(err) = result {
        tracing::debug!(error = %err, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listener::Source;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn state() -> Arc<AppState> {
        state_with(Auth::Open)
    }

    const LIMITS: Limits = Limits {
        header_read_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(2),
        max_body_bytes: 64,
    };

    fn state_with(auth: Auth) -> Arc<AppState> {
        Arc::new(AppState {
            listener: ListenerInfo {
                source: Source::Searched,
                address: "127.0.0.1:5053".parse().unwrap(),
                fd: None,
                fd_name: None,
                busy_ports: vec![5050, 5051, 5052],
            },
            started: Instant::now(),
            auth,
            debug: false,
        })
    }

    async fn get_json(path: &str) -> (StatusCode, serde_json::Value) {
        let response = app(state())
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or_default())
    }

    #[tokio::test]
    async fn health_is_ok() {
        let response = app(state())
            .oneshot(Request::get("/health").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers().get(header::CONTENT_TYPE),
            Some(&HeaderValue::from_static("application/json"))
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body, serde_json::json!({ "status": "ok" }));
    }

    #[tokio::test]
    async fn info_reports_the_listener() {
        let (status, body) = get_json("/info").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["pid"], std::process::id());
        assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(body["listener"]["source"], "searched");
        assert_eq!(body["listener"]["address"], "127.0.0.1:5053");
        assert_eq!(
            body["listener"]["busy_ports"],
            serde_json::json!([5050, 5051, 5052])
        );
        assert!(body["uptime_seconds"].as_f64().unwrap() >= 0.0);
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

    async fn send(router: Router, request: Request<Body>) -> axum::response::Response {
        router.oneshot(request).await.unwrap()
    }

    #[tokio::test]
    async fn debug_routes_exist_only_with_debug_and_sit_behind_auth() {
        let sleep = || {
            Request::get("/debug/sleep?ms=0")
                .body(Body::empty())
                .unwrap()
        };
        let plain = send(app(state()), sleep()).await;
        assert_eq!(plain.status(), StatusCode::NOT_FOUND);

        let debug_state = |auth: Auth| {
            let mut state = Arc::try_unwrap(state_with(auth)).unwrap();
            state.debug = true;
            Arc::new(state)
        };
        let open = send(app(debug_state(Auth::Open)), sleep()).await;
        assert_eq!(open.status(), StatusCode::OK);
        let guarded = send(app(debug_state(bearer())), sleep()).await;
        assert_eq!(guarded.status(), StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn with_auth_only_health_is_open() {
        let router = app(state_with(bearer()));
        let get = |path: &str| Request::get(path).body(Body::empty()).unwrap();
        let health = send(router.clone(), get("/health")).await;
        assert_eq!(health.status(), StatusCode::OK);

        for path in ["/info", "/nope", "/health/"] {
            let refused = send(router.clone(), get(path)).await;
            assert_eq!(refused.status(), StatusCode::UNAUTHORIZED, "{path}");
            assert_eq!(
                refused.headers()["www-authenticate"],
                "Bearer realm=\"portkeeper\""
            );
            let body = refused.into_body().collect().await.unwrap().to_bytes();
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(body["error"], "unauthorized");
        }

        let wrong = Request::get("/info")
            .header("authorization", "Bearer not-the-token-0123456789")
            .body(Body::empty())
            .unwrap();
        let wrong = send(router.clone(), wrong).await;
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
        let challenge = wrong.headers()["www-authenticate"].to_str().unwrap();
        assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");

        let right = Request::get("/info")
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Body::empty())
            .unwrap();
        let right = send(router, right).await;
        assert_eq!(right.status(), StatusCode::OK);
        let body = right.into_body().collect().await.unwrap().to_bytes();
        assert!(!String::from_utf8_lossy(&body).contains(TOKEN));
    }

    #[tokio::test]
    async fn bodies_above_the_limit_are_413() {
        let post = |len: usize| {
            Request::post("/health")
                .header("content-length", len.to_string())
                .body(Body::from(vec![b'x'; len]))
                .unwrap()
        };
        let over = bounded(&app(state()), post(LIMITS.max_body_bytes + 1), LIMITS).await;
        assert_eq!(over.status(), StatusCode::PAYLOAD_TOO_LARGE);
        // Within the limit, the route answers for itself (GET only: 405).
        let within = bounded(&app(state()), post(LIMITS.max_body_bytes), LIMITS).await;
        assert_eq!(within.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test]
    async fn slow_requests_are_cut_at_the_request_timeout() {
        let limits = Limits {
            request_timeout: Duration::from_millis(100),
            ..LIMITS
        };
        let slow = Router::new().route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                "late"
            }),
        );
        let get_slow = || Request::get("/slow").body(Body::empty()).unwrap();
        let response = bounded(&slow, get_slow(), limits).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let quick = Router::new().route("/slow", get(|| async { "on time" }));
        let response = bounded(&quick, get_slow(), limits).await;
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[tokio::test(start_paused = true)]
    async fn the_request_timeout_passes_once_and_the_timer_waits_for_a_wait() {
        let limit = Duration::from_secs(30);
        let limits = Limits {
            request_timeout: limit,
            ..LIMITS
        };
        let taking = |time: Duration| {
            Router::new().route(
                "/",
                get(move || async move {
                    tokio::time::sleep(time).await;
                    "done"
                }),
            )
        };
        let get_root = || Request::get("/").body(Body::empty()).unwrap();

        let started = tokio::time::Instant::now();
        let late = bounded(&taking(limit * 2), get_root(), limits).await;
        assert_eq!(late.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(started.elapsed(), limit);
        let just_in_time = bounded(
            &taking(limit - Duration::from_millis(1)),
            get_root(),
            limits,
        );
        assert_eq!(just_in_time.await.status(), StatusCode::OK);

        // Answered at its first poll, a request never arms the timer.
        let quick = Router::new().route("/", get(|| async { "at once" }));
        let mut answer = bounded(&quick, get_root(), limits);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let polled = Pin::new(&mut answer).poll(&mut cx);
        assert!(matches!(polled, Poll::Ready(ref r) if r.status() == StatusCode::OK));
        assert!(
            format!("{answer:?}").contains("timer_armed: false"),
            "{answer:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn headers_are_overdue_a_timeout_after_the_last_response_never_during_a_request() {
        let timeout = Duration::from_secs(10);
        let activity = Arc::new(Activity::new(Arc::default()));
        let in_flight = activity.begin();
        // A request in flight for three timeouts is not a late header.
        let busy = tokio::time::timeout(timeout * 3, activity.headers_overdue(timeout)).await;
        assert!(busy.is_err(), "overdue while a request was in flight");
        drop(in_flight);
        let started = tokio::time::Instant::now();
        tokio::time::timeout(timeout * 2, activity.headers_overdue(timeout))
            .await
            .expect("overdue within two timeouts of the response");
        let waited = started.elapsed();
        assert!(
            waited >= timeout && waited < timeout + Duration::from_secs(1),
            "overdue after {waited:?}, expected {timeout:?} after the response"
        );
    }

    #[tokio::test]
    async fn the_stop_path_wakes_for_a_new_request_only() {
        let activity = Arc::new(Activity::new(Arc::default()));
        // A request that began and ended before the stop leaves a wake-up
        // behind; it must not count as the one the stop path waits for.
        drop(activity.begin());
        let seen = activity.started.load(Ordering::Acquire);
        let quiet = tokio::time::timeout(Duration::from_millis(50), activity.began_after(seen));
        assert!(quiet.await.is_err(), "woke without a new request");

        let waiter = tokio::spawn({
            let activity = Arc::clone(&activity);
            async move { activity.began_after(seen).await }
        });
        let _request = activity.begin();
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("a new request wakes the stop path")
            .unwrap();
        assert_eq!(activity.in_flight.load(Ordering::Acquire), 1);
    }

    #[tokio::test]
    async fn unknown_routes_are_404() {
        let (status, _) = get_json("/nope").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}
