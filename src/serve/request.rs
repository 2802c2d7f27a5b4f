//! One connection's requests: each gets its peer as `ConnectInfo`, is
//! checked for `Host`, counted in `/metrics`, and counted in flight until its
//! response body has been sent whole, which is how the drain and the idle
//! timeout tell a busy connection from an idle one.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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

/// A connection's writes as its stream sees them ([`super::TrackedIo`]):
/// whether a write waits for the peer to read (the socket's send buffer is
/// full), since when, and when such a wait last ended. Written only when a
/// write is `Pending` and when the next one goes through, so a connection
/// whose writes never wait pays nothing here.
#[derive(Debug)]
pub(super) struct Output {
    /// The origin of the times below; tokio's clock, so tests can pause it.
    born: tokio::time::Instant,
    blocked: AtomicBool,
    /// When the write that now waits began to wait, in nanoseconds after `born`.
    blocked_since_nanos: AtomicU64,
    /// When a write that waited last went through, in nanoseconds after `born`.
    unblocked_at_nanos: AtomicU64,
}

impl Output {
    pub(super) fn new() -> Self {
        Output {
            born: tokio::time::Instant::now(),
            blocked: AtomicBool::new(false),
            blocked_since_nanos: AtomicU64::new(0),
            unblocked_at_nanos: AtomicU64::new(0),
        }
    }

    fn nanos(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// A write returned `Pending`: the peer does not read fast enough.
    #[cold]
    pub(super) fn blocked(&self) {
        self.blocked_since_nanos
            .store(self.nanos(), Ordering::Relaxed);
        self.blocked.store(true, Ordering::Release);
    }

    /// A write went through after one had returned `Pending`.
    #[cold]
    pub(super) fn went_through(&self) {
        self.unblocked_at_nanos
            .store(self.nanos(), Ordering::Relaxed);
        self.blocked.store(false, Ordering::Release);
    }

    /// Since when a write has waited for the peer, if one does.
    fn blocked_since(&self) -> Option<tokio::time::Instant> {
        self.blocked.load(Ordering::Acquire).then(|| {
            self.born + Duration::from_nanos(self.blocked_since_nanos.load(Ordering::Relaxed))
        })
    }

    /// When a write that waited last went through (`born` if none did).
    fn unblocked_at(&self) -> tokio::time::Instant {
        self.born + Duration::from_nanos(self.unblocked_at_nanos.load(Ordering::Relaxed))
    }
}

/// What a connection's watch saw: the end of its normal service.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Quiet {
    /// Nothing in flight and nothing to write for `HEADER_READ_TIMEOUT`.
    Idle,
    /// Output waiting and none of it written for `WRITE_TIMEOUT`.
    Stalled,
}

/// Counts requests on one connection, so a stop can tell idle from busy.
#[derive(Debug)]
pub(super) struct Activity {
    /// Requests whose response has not been sent whole yet.
    pub(super) in_flight: AtomicUsize,
    /// Requests begun so far, and a wake-up for the stop path when one begins.
    pub(super) started: AtomicU64,
    request_began: Notify,
    /// A wake-up for the stop path when a request ends, once the stop has begun.
    request_ended: Notify,
    /// Whether a request came over HTTP/2 (set by each HTTP/2 request).
    http2: AtomicBool,
    /// HTTP/2 responses whose next chunk hyper holds, waiting for the
    /// peer's flow-control window, and how many times one was let go:
    /// a response the peer never lets us send shows as held, with no release.
    held: AtomicUsize,
    releases: AtomicU64,
    /// The connection's writes, as its stream sees them.
    output: Arc<Output>,
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
pub(super) struct InFlight {
    activity: Arc<Activity>,
    held: Held,
    /// HTTP/2: what is left of the body's last chunk, handed to hyper a
    /// [`PIECE`] at a time. Boxed, and only for a chunk larger than a
    /// piece: every response's future and body carry this guard, and hyper
    /// moves them, so it stays three words.
    rest: Option<Box<Bytes>>,
}

/// How much of a chunk an HTTP/2 response hands hyper at once: h2's
/// largest frame by default. hyper gives h2 a chunk once the stream's window
/// has room for one byte of it, and h2 keeps the rest until the window
/// opens; given a large chunk whole (a body of one `Bytes`), the body would
/// end at once, and the idle clock run while h2 still had most of it to send.
/// A piece at a time, the response stays in flight (and held, for
/// `WRITE_TIMEOUT`, when the window stays shut) until the last piece.
const PIECE: usize = 16 * 1024;

/// Whether hyper holds an HTTP/2 response's chunk, waiting for the peer's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// HTTP/1: a response that cannot be written shows in [`Output`] instead.
    Untracked,
    No,
    Yes,
}

impl InFlight {
    /// The body gave hyper a chunk (HTTP/2): held until the body is polled
    /// again, which hyper does once it has the window to send the chunk.
    fn hold(&mut self) {
        if self.held == Held::No {
            self.held = Held::Yes;
            self.activity.held.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn release(&mut self) {
        if self.held == Held::Yes {
            self.held = Held::No;
            self.activity.releases.fetch_add(1, Ordering::Relaxed);
            self.activity.held.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// HTTP/2: the first piece of a chunk for hyper, held; keeps the rest.
    fn first_piece(&mut self, mut data: Bytes) -> Bytes {
        self.hold();
        if data.len() > PIECE {
            let piece = data.split_to(PIECE);
            match &mut self.rest {
                Some(rest) => **rest = data,
                None => self.rest = Some(Box::new(data)),
            }
            piece
        } else {
            data
        }
    }

    /// HTTP/2: the next piece of the last chunk, held, if any is left.
    fn next_piece(&mut self) -> Option<Bytes> {
        let rest = self.rest.as_deref_mut().filter(|rest| !rest.is_empty())?;
        let piece = if rest.len() > PIECE {
            rest.split_to(PIECE)
        } else {
            std::mem::take(rest)
        };
        self.hold();
        Some(piece)
    }

    /// How much of the last chunk is left (HTTP/2).
    fn rest_len(&self) -> usize {
        self.rest.as_deref().map_or(0, Bytes::len)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.release();
        let activity = &self.activity;
        let now = u64::try_from(activity.born.elapsed().as_nanos()).unwrap_or(u64::MAX);
        activity.idle_since_nanos.store(now, Ordering::Release);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
        activity.metrics.request_ended();
        if activity.stop.has_begun() {
            activity.request_ended.notify_one();
        }
    }
}

impl Activity {
    pub(super) fn new(
        stop: Arc<Stop>,
        metrics: Arc<Metrics>,
        requests: TaskTrackerToken,
        output: Arc<Output>,
    ) -> Self {
        Activity {
            stop,
            metrics,
            _requests: requests,
            in_flight: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            request_began: Notify::new(),
            request_ended: Notify::new(),
            http2: AtomicBool::new(false),
            held: AtomicUsize::new(0),
            releases: AtomicU64::new(0),
            output,
            born: tokio::time::Instant::now(),
            idle_since_nanos: AtomicU64::new(0),
        }
    }

    /// Counts a request as begun, and in flight until the guard is dropped.
    pub(super) fn begin(self: &Arc<Self>, http1: bool) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.started.fetch_add(1, Ordering::AcqRel);
        self.request_began.notify_one();
        self.metrics.request_began();
        let held = if http1 {
            Held::Untracked
        } else {
            self.http2.store(true, Ordering::Relaxed);
            Held::No
        };
        InFlight {
            activity: Arc::clone(self),
            held,
            rest: None,
        }
    }

    /// Whether the connection has served a request over HTTP/2.
    pub(super) fn is_http2(&self) -> bool {
        self.http2.load(Ordering::Relaxed)
    }

    /// Since when the connection has been idle, if it is: no request in
    /// flight and no write waiting for the peer. The clock starts again
    /// when the last response is sent whole and when a waiting write goes
    /// through, so a response hyper still writes after its body ended
    /// (pipelining, a body taken whole) is never taken for idleness.
    fn idle_since(&self) -> Option<tokio::time::Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 || self.output.blocked_since().is_some() {
            return None;
        }
        let nanos = self.idle_since_nanos.load(Ordering::Acquire);
        Some((self.born + Duration::from_nanos(nanos)).max(self.output.unblocked_at()))
    }

    /// Completes once the connection has been idle for `header_timeout`
    /// ([`Quiet::Idle`]): since it was accepted, or since its last response
    /// was sent whole. This is the header-read timeout (a slow-loris head
    /// counts as idle, since no request has begun) and the idle keep-alive
    /// timeout, for HTTP/1 and HTTP/2 alike.
    ///
    /// Or once output has waited for `write_timeout` with none of it written
    /// ([`Quiet::Stalled`]): a write waiting for the peer to read (any
    /// protocol), or HTTP/2 responses held back by the peer's flow-control
    /// window with none let go in that time. The watch looks at least every
    /// quarter of `write_timeout` (a request that begins does not wake it),
    /// so output that waits is noticed within that quarter, and a stall
    /// ends the connection within 1.5 × `write_timeout` of its beginning.
    ///
    /// Its own timer wakes it: nothing here runs per request.
    pub(super) async fn watch(&self, header_timeout: Duration, write_timeout: Duration) -> Quiet {
        let step = write_timeout / 4;
        // When held responses were first seen with this many releases.
        let mut held_seen: Option<(tokio::time::Instant, u64)> = None;
        loop {
            let now = tokio::time::Instant::now();
            let deadline = if let Some(since) = self.idle_since() {
                held_seen = None;
                let deadline = since + header_timeout;
                if now >= deadline {
                    return Quiet::Idle;
                }
                // A request that begins does not wake the watch (that would
                // be a wake per request): look at least every step.
                deadline.min(now + step)
            } else {
                // Busy: the end of the request restarts the idle clock; look
                // again for output that waits.
                let mut deadline = now + step;
                if let Some(since) = self.output.blocked_since() {
                    if now >= since + write_timeout {
                        return Quiet::Stalled;
                    }
                    deadline = deadline.min(since + write_timeout);
                }
                if self.held.load(Ordering::Acquire) > 0 {
                    let releases = self.releases.load(Ordering::Relaxed);
                    match held_seen {
                        Some((since, seen)) if seen == releases => {
                            if now >= since + write_timeout {
                                return Quiet::Stalled;
                            }
                        }
                        _ => held_seen = Some((now, releases)),
                    }
                } else {
                    held_seen = None;
                }
                deadline
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

    /// Completes once no request is in flight; for the stop path (a request
    /// that ends wakes it only once the stop has begun).
    pub(super) async fn none_in_flight(&self) {
        notified_until(&self.request_ended, || {
            self.in_flight.load(Ordering::Acquire) == 0
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
        // RFC 9112, section 3.2: an HTTP/1.1 request without Host, or with
        // more than one, is a 400.
        let answer = (request.version() != Version::HTTP_11 || {
            let mut hosts = request.headers().get_all(header::HOST).iter();
            hosts.next().is_some() && hosts.next().is_none()
        })
        .then(|| self.service.clone().oneshot(request));
        Respond {
            in_flight: Some(self.activity.begin(http1)),
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
        if let Some(InFlight { activity, .. }) = &in_flight {
            activity
                .metrics
                .request_answered(response.status(), this.started.elapsed());
            if *this.http1 && activity.stop.has_begun() {
                say_closing_unless_upgrade(&mut response);
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
        if let Some(in_flight) = this.in_flight {
            if in_flight.held != Held::Untracked {
                // Polled again: hyper gave h2 the piece it held (HTTP/2).
                in_flight.release();
                if let Some(piece) = in_flight.next_piece() {
                    return Poll::Ready(Some(Ok(Frame::data(piece))));
                }
            }
        }
        let frame = match this.body.as_pin_mut() {
            Some(body) => std::task::ready!(body.poll_frame(cx)),
            None => None,
        };
        match frame {
            None => {
                drop(this.in_flight.take());
                Poll::Ready(None)
            }
            Some(Ok(frame)) => match this.in_flight {
                Some(in_flight) if in_flight.held != Held::Untracked => match frame.into_data() {
                    Ok(data) => Poll::Ready(Some(Ok(Frame::data(in_flight.first_piece(data))))),
                    Err(frame) => Poll::Ready(Some(Ok(frame))),
                },
                _ => Poll::Ready(Some(Ok(frame))),
            },
            Some(Err(err)) => Poll::Ready(Some(Err(err.into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(Body::is_end_stream)
            && self
                .in_flight
                .as_ref()
                .is_none_or(|in_flight| in_flight.rest_len() == 0)
    }

    fn size_hint(&self) -> SizeHint {
        let hint = self
            .body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint);
        let rest = self
            .in_flight
            .as_ref()
            .map_or(0, |in_flight| in_flight.rest_len() as u64);
        if rest == 0 {
            return hint;
        }
        let mut with_rest = SizeHint::new();
        if let Some(upper) = hint.upper() {
            with_rest.set_upper(upper + rest);
        }
        with_rest.set_lower(hint.lower() + rest);
        with_rest
    }
}

/// Marks a response as the connection's last, once a stop has begun.
///
/// hyper can answer a request, write the response and go back to reading in
/// a single poll, before this connection's task sees the stop. Had that
/// response said keep-alive, closing the connection afterwards would cut off
/// the client's next request. With `Connection: close` the client knows to
/// reconnect, and hyper closes the connection right after writing it.
///
/// Never on a 101 (Switching Protocols) or a response that says
/// `Connection: upgrade`: that connection is handed over, and `close` in
/// place of `upgrade` would break the handshake.
#[cold]
fn say_closing_unless_upgrade<B>(response: &mut Response<B>) {
    let upgrade = response.status() == StatusCode::SWITCHING_PROTOCOLS
        || response
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    if !upgrade {
        say_closing(response);
    }
}

/// Says `Connection: close` (see [`say_closing_unless_upgrade`]).
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
            Arc::new(Output::new()),
        ));
        let in_flight = activity.begin(true);
        // A request in flight for three timeouts is not idleness.
        let busy = tokio::time::timeout(timeout * 3, activity.watch(timeout, timeout)).await;
        assert!(busy.is_err(), "idle while a request was in flight");
        drop(in_flight);
        let started = tokio::time::Instant::now();
        let quiet = tokio::time::timeout(timeout * 2, activity.watch(timeout, timeout))
            .await
            .expect("idle within two timeouts of the response");
        assert_eq!(quiet, Quiet::Idle);
        let waited = started.elapsed();
        assert!(
            waited >= timeout && waited < timeout + Duration::from_secs(1),
            "idle after {waited:?}, expected {timeout:?} after the response"
        );
    }

    fn activity(output: &Arc<Output>) -> Arc<Activity> {
        Arc::new(Activity::new(
            Arc::default(),
            Arc::new(Metrics::new([])),
            TaskTracker::new().token(),
            Arc::clone(output),
        ))
    }

    /// A write that waits for the peer is neither idleness (however long
    /// it waits) nor, before `WRITE_TIMEOUT`, a stall; once it goes
    /// through, the idle clock starts again from then.
    #[tokio::test(start_paused = true)]
    async fn a_waiting_write_stalls_at_the_write_timeout_and_is_never_idleness() {
        let (header, write) = (Duration::from_secs(10), Duration::from_secs(30));
        let output = Arc::new(Output::new());
        let activity = activity(&output);
        // No request in flight: the response was taken whole, and waits.
        output.blocked();
        let started = tokio::time::Instant::now();
        let quiet = tokio::time::timeout(write * 2, activity.watch(header, write))
            .await
            .expect("a stall within two write timeouts");
        assert_eq!(quiet, Quiet::Stalled);
        let waited = started.elapsed();
        assert!(
            waited >= write && waited < write + Duration::from_secs(1),
            "{waited:?}"
        );
        // It goes through: idle a header timeout later, not at once.
        tokio::time::advance(Duration::from_secs(5)).await;
        output.went_through();
        let started = tokio::time::Instant::now();
        let quiet = tokio::time::timeout(header * 2, activity.watch(header, write))
            .await
            .expect("idle within two header timeouts");
        assert_eq!(quiet, Quiet::Idle);
        assert!(started.elapsed() >= header, "{:?}", started.elapsed());
    }

    /// An HTTP/2 response held for the peer's window stalls at the write
    /// timeout; one let go now and then does not.
    #[tokio::test(start_paused = true)]
    async fn a_held_http2_response_stalls_unless_one_is_let_go() {
        let (header, write) = (Duration::from_secs(10), Duration::from_secs(30));
        let output = Arc::new(Output::new());
        let activity = activity(&output);
        let mut request = activity.begin(false);
        request.hold();
        let watching = tokio::spawn({
            let activity = Arc::clone(&activity);
            async move { activity.watch(header, write).await }
        });
        // Let go every 20 s for 3 minutes: progress, no stall.
        for _ in 0..9 {
            tokio::time::sleep(Duration::from_secs(20)).await;
            request.release();
            request.hold();
            assert!(!watching.is_finished(), "stalled while making progress");
        }
        let quiet = tokio::time::timeout(write * 2, watching)
            .await
            .expect("a stall within two write timeouts of the last release")
            .unwrap();
        assert_eq!(quiet, Quiet::Stalled);
    }

    #[tokio::test]
    async fn the_stop_path_wakes_for_a_new_request_only() {
        let activity = Arc::new(Activity::new(
            Arc::default(),
            Arc::new(Metrics::new([])),
            TaskTracker::new().token(),
            Arc::new(Output::new()),
        ));
        // A request that began and ended before the stop leaves a wake-up
        // behind; it must not count as the one the stop path waits for.
        drop(activity.begin(true));
        let seen = activity.started.load(Ordering::Acquire);
        let quiet = tokio::time::timeout(Duration::from_millis(50), activity.began_after(seen));
        assert!(quiet.await.is_err(), "woke without a new request");

        let waiter = tokio::spawn({
            let activity = Arc::clone(&activity);
            async move { activity.began_after(seen).await }
        });
        let _request = activity.begin(true);
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("a new request wakes the stop path")
            .unwrap();
        assert_eq!(activity.in_flight.load(Ordering::Acquire), 1);
    }
}
