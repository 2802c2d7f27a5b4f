//! One connection's requests: each gets its peer as `ConnectInfo`, is
//! checked for `Host`, counted in `/metrics`, and counted in flight until its
//! response body has been sent whole, which is how the drain and the idle
//! timeout tell a busy connection from an idle one.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::BoxError;
use axum::body::Bytes;
use axum::extract::ConnectInfo;
use axum::http::{Extensions, HeaderValue, Request, Response, StatusCode, Version, header};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::Notify;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tower::ServiceExt as _;
use tower::util::Oneshot;

use super::{Peer, Stop, notified_until};
use crate::metrics::Metrics;

/// Counts requests on one connection, so a stop can tell idle from busy.
#[derive(Debug)]
pub(super) struct Activity {
    /// Requests whose response has not been sent whole yet.
    pub(super) in_flight: AtomicUsize,
    /// Requests begun so far, and a wake-up for the stop path when one begins.
    pub(super) started: AtomicU64,
    request_began: Notify,
    /// When the connection was accepted, the origin of `idle_since_nanos`.
    /// tokio's clock, so tests can pause it.
    born: tokio::time::Instant,
    /// When the connection last became idle (accepted, or its last response
    /// sent whole), in nanoseconds after `born`.
    idle_since_nanos: AtomicU64,
    /// The server's stop, checked as each response leaves.
    pub(super) stop: Arc<Stop>,
    /// The server's request metrics: the in-flight gauge follows `in_flight`.
    metrics: Arc<Metrics>,
    /// Counts this connection for the end of the drain until its last
    /// request, which may run in a task of its own (HTTP/2), is dropped.
    _requests: TaskTrackerToken,
}

/// Marks one request as in flight until dropped: when its response body has
/// been sent whole, or dropped (also on cancellation).
#[derive(Debug)]
pub(super) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = u64::try_from(self.0.born.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.0.idle_since_nanos.store(now, Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.request_ended();
    }
}

impl Activity {
    pub(super) fn new(stop: Arc<Stop>, metrics: Arc<Metrics>, requests: TaskTrackerToken) -> Self {
        Activity {
            stop,
            metrics,
            _requests: requests,
            in_flight: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            request_began: Notify::new(),
            born: tokio::time::Instant::now(),
            idle_since_nanos: AtomicU64::new(0),
        }
    }

    /// Counts a request as begun, and in flight until the guard is dropped.
    pub(super) fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.started.fetch_add(1, Ordering::AcqRel);
        self.request_began.notify_one();
        self.metrics.request_began();
        InFlight(Arc::clone(self))
    }

    /// Since when the connection has been idle, if it is (no request in flight).
    fn idle_since(&self) -> Option<tokio::time::Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let nanos = self.idle_since_nanos.load(Ordering::Acquire);
        Some(self.born + Duration::from_nanos(nanos))
    }

    /// Completes once the connection has been idle for `timeout`: since it
    /// was accepted, or since its last response was sent whole. This is the
    /// header-read timeout (a slow-loris head counts as idle, since no request
    /// has begun) and the idle keep-alive timeout, for HTTP/1 and HTTP/2 alike.
    pub(super) async fn idle_for(&self, timeout: Duration) {
        loop {
            let deadline = match self.idle_since() {
                Some(since) if since.elapsed() >= timeout => return,
                Some(since) => since + timeout,
                // Busy: the end of the request restarts the clock; look again later.
                None => tokio::time::Instant::now() + timeout,
            };
            tokio::time::sleep_until(deadline).await;
        }
    }

    /// Completes once more than `seen` requests have begun.
    pub(super) async fn began_after(&self, seen: u64) {
        notified_until(&self.request_began, || {
            self.started.load(Ordering::Acquire) > seen
        })
        .await;
    }
}

/// A connection's peer as request extensions, made once per connection and
/// cloned into each of its requests (its `Stopping` is a task-local, see
/// `stopping.rs`): the peer is
/// `ConnectInfo<SocketAddr>` for TCP, `ConnectInfo<UCred>` for a Unix socket
/// (none when the kernel would not say).
///
/// The map is made with room for axum's own three extensions too
/// (`OriginalUri`, `MatchedPath`, the path parameters). Inserted into each
/// request's empty map instead, the peer would make axum's third insert grow
/// the map (a new allocation and a rehash), which was most of what
/// `ConnectInfo` cost a request (docs/benchmarks.md). A clone keeps the
/// table's size. The table holds 3 entries in 4 buckets, then 7 in 8: four
/// entries at once (with the placeholders) make it 8 buckets, room for ours
/// (1), axum's (3), `DefaultBodyLimit`'s (above 2 MiB), HTTP/2's `:protocol`
/// and one more. An eighth would grow it again.
pub(super) fn peer_extensions(peer: &Peer) -> Extensions {
    /// Placeholders that bring the map to four entries, so 8 buckets, even
    /// with no peer; removing them keeps the room.
    #[derive(Clone)]
    struct Room<const N: usize>;
    let mut extensions = Extensions::new();
    extensions.insert(Room::<1>);
    extensions.insert(Room::<2>);
    extensions.insert(Room::<3>);
    match peer {
        Peer::Tcp(addr) => {
            extensions.insert(ConnectInfo(*addr));
        }
        #[cfg(unix)]
        Peer::Unix(Some(credentials)) => {
            extensions.insert(ConnectInfo(*credentials));
        }
        #[cfg(unix)]
        Peer::Unix(None) => {}
    }
    extensions.remove::<Room<1>>();
    extensions.remove::<Room<2>>();
    extensions.remove::<Room<3>>();
    extensions
}

/// The hyper service of one connection: each request gets the peer, and is
/// counted as in flight until its response has been sent whole.
///
/// The peer is `ConnectInfo<SocketAddr>` on a TCP connection and
/// `ConnectInfo<tokio::net::unix::UCred>` (the peer process's pid, uid and
/// gid) on a Unix socket connection, which has no address worth the name. A
/// handler that extracts `ConnectInfo<SocketAddr>` therefore rejects a
/// request that came through a Unix socket (500, "Missing request
/// extension"); one that serves both looks the extension up with
/// `request.extensions().get::<ConnectInfo<SocketAddr>>()` instead.
#[derive(Clone)]
pub(super) struct PerRequest<S> {
    pub(super) service: S,
    pub(super) activity: Arc<Activity>,
    /// The peer as each request's first extension: see [`peer_extensions`].
    pub(super) peer: Extensions,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for PerRequest<S>
where
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone,
{
    type Response = Response<TrackedBody<B>>;
    type Error = Infallible;
    type Future = Respond<S>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        // Empty on arrival but for HTTP/2's `:protocol`, which is kept.
        request.extensions_mut().extend(self.peer.clone());
        let http1 = request.version() < Version::HTTP_2;
        // RFC 9112, section 3.2: an HTTP/1.1 request without Host is a 400.
        let answer = (request.version() != Version::HTTP_11
            || request.headers().contains_key(header::HOST))
        .then(|| self.service.clone().oneshot(request));
        Respond {
            in_flight: Some(self.activity.begin()),
            started: Instant::now(),
            http1,
            answer,
        }
    }
}

pin_project_lite::pin_project! {
    /// One request's answer, counted as in flight; `None` for a request
    /// refused before routing (400).
    pub(super) struct Respond<S: tower::Service<Request<Incoming>>> {
        #[pin]
        answer: Option<Oneshot<S, Request<Incoming>>>,
        in_flight: Option<InFlight>,
        // For the duration histogram of `/metrics`.
        started: Instant,
        http1: bool,
    }
}

impl<S, B> Future for Respond<S>
where
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>,
{
    type Output = Result<Response<TrackedBody<B>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = match this.answer.as_pin_mut() {
            Some(answer) => {
                let Ok(response) = std::task::ready!(answer.poll(cx));
                response.map(Some)
            }
            None => {
                let mut refused = Response::new(None);
                *refused.status_mut() = StatusCode::BAD_REQUEST;
                say_closing(&mut refused);
                refused
            }
        };
        let in_flight = this.in_flight.take();
        if let Some(InFlight(activity)) = &in_flight {
            activity
                .metrics
                .request_answered(response.status(), this.started.elapsed());
            if *this.http1 && activity.stop.has_begun() {
                say_closing(&mut response);
            }
        }
        Poll::Ready(Ok(response.map(|body| TrackedBody { body, in_flight })))
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request in flight until it has been
    /// sent whole, so streaming responses are never taken for idleness.
    pub(crate) struct TrackedBody<B> {
        // `None`: an empty body of our own (a 400 before routing).
        #[pin]
        body: Option<B>,
        in_flight: Option<InFlight>,
    }
}

impl<B> Body for TrackedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let frame = match this.body.as_pin_mut() {
            Some(body) => std::task::ready!(body.poll_frame(cx)),
            None => None,
        };
        if frame.is_none() {
            this.in_flight.take();
        }
        Poll::Ready(frame.map(|frame| frame.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// Marks a response as the connection's last, once a stop has begun.
///
/// hyper can answer a request, write the response and go back to reading in
/// a single poll, before this connection's task sees the stop. Had that
/// response said keep-alive, closing the connection afterwards would cut off
/// the client's next request. With `Connection: close` the client knows to
/// reconnect, and hyper closes the connection right after writing it.
fn say_closing<B>(response: &mut Response<B>) {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::task::TaskTracker;

    #[test]
    fn peer_extensions_hold_the_peer_alone() {
        let addr: std::net::SocketAddr = "127.0.0.1:5050".parse().unwrap();
        let extensions = peer_extensions(&Peer::Tcp(addr));
        assert_eq!(extensions.len(), 1, "a placeholder was left behind");
        assert_eq!(
            extensions
                .get::<ConnectInfo<std::net::SocketAddr>>()
                .map(|info| info.0),
            Some(addr)
        );
        #[cfg(unix)]
        assert!(peer_extensions(&Peer::Unix(None)).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_a_timeout_after_the_last_response_never_during_a_request() {
        let timeout = Duration::from_secs(10);
        let activity = Arc::new(Activity::new(
            Arc::default(),
            Arc::new(Metrics::new([])),
            TaskTracker::new().token(),
        ));
        let in_flight = activity.begin();
        // A request in flight for three timeouts is not idleness.
        let busy = tokio::time::timeout(timeout * 3, activity.idle_for(timeout)).await;
        assert!(busy.is_err(), "idle while a request was in flight");
        drop(in_flight);
        let started = tokio::time::Instant::now();
        tokio::time::timeout(timeout * 2, activity.idle_for(timeout))
            .await
            .expect("idle within two timeouts of the response");
        let waited = started.elapsed();
        assert!(
            waited >= timeout && waited < timeout + Duration::from_secs(1),
            "idle after {waited:?}, expected {timeout:?} after the response"
        );
    }

    #[tokio::test]
    async fn the_stop_path_wakes_for_a_new_request_only() {
        let activity = Arc::new(Activity::new(
            Arc::default(),
            Arc::new(Metrics::new([])),
            TaskTracker::new().token(),
        ));
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
}
