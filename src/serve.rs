//! The serving core: accept connections, serve HTTP/1.1 and HTTP/2 on them, and drain.
//!
//! Each connection is served by hyper-util's auto builder (HTTP/1.1, HTTP/2
//! with prior knowledge, and upgrades such as WebSocket). The accept loop and
//! the drain are ours, for two documented behaviours no serving crate has:
//!
//! - **The idle grace.** hyper's and axum's graceful shutdown close a
//!   connection that was accepted, or finished a response, a moment before the
//!   stop, even though its next request is usually already on the wire: the
//!   client gets an empty reply. Here an idle connection gets [`IDLE_GRACE`] for
//!   a request to arrive; that request is answered, then the connection closes.
//! - **`Connection: close` once a stop begins** (HTTP/1), so a client never
//!   sends another request on a connection that is about to close. HTTP/2
//!   connections get a GOAWAY from hyper's graceful shutdown instead.
//!
//! A connection counts as busy while a request is in flight, including while
//! its response body streams, so a download or a server-sent event stream is
//! never cut by the idle timeout. A connection handed to an upgrade (a
//! WebSocket) stays counted until the upgraded stream is dropped, so a drain
//! waits for it too, bounded by `SHUTDOWN_TIMEOUT`.
//!
//! This module never binds: it is handed listeners, TCP or Unix, each with
//! its own service (the app, or the admin role's built-in routes).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::BoxError;
use axum::body::Bytes;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, Response, StatusCode, Version, header};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tower::ServiceExt as _;
use tower::util::Oneshot;

use crate::config::Limits;
use crate::metrics::{Connections, OpenConnection};

/// How long, once a stop begins, an idle connection may take to send its next request.
///
/// A client that connected (or finished a request) a moment before the stop
/// is usually about to send; closing under it is what makes "empty reply"
/// errors. Half a second covers a busy client and adds little to a restart
/// when browsers hold idle keep-alive connections.
pub(crate) const IDLE_GRACE: Duration = Duration::from_millis(500);

/// The first pause after an accept error such as EMFILE, doubled while the
/// error lasts, up to [`ACCEPT_BACKOFF_MAX`]: short, so the server answers
/// again as soon as descriptors are free.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(1);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_millis(100);

/// Settings for [`serve`].
#[derive(Debug, Clone)]
pub(crate) struct ServeOptions {
    /// How long open connections may take to finish once the stop begins.
    pub(crate) shutdown_timeout: Duration,
    /// Time and size bounds for each connection and request.
    pub(crate) limits: Limits,
    /// The open-connections gauge of `/metrics`.
    pub(crate) connections: Connections,
}

/// What [`serve`] runs for each request: a cloneable tower service from a
/// hyper request to a response with a streaming body, that never fails
/// (errors are responses). [`crate::routes::service`] builds one.
pub(crate) trait AppService:
    tower::Service<
        Request<Incoming>,
        Response = Response<Self::ResponseBody>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
    /// The response body.
    type ResponseBody: Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static;
}

impl<S, B> AppService for S
where
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static,
{
    type ResponseBody = B;
}

/// How serving ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Stopped {
    /// Every connection finished within the shutdown timeout.
    Drained,
    /// The timeout passed with this many connections still open; they are dropped.
    TimedOut { open: usize },
    /// A second stop request came during the drain; these connections are dropped.
    Forced { open: usize },
}

/// A listening socket registered with tokio: TCP or Unix stream.
#[derive(Debug)]
pub(crate) enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// A Unix stream socket.
    #[cfg(unix)]
    Unix(tokio::net::UnixListener),
}

impl Listener {
    async fn accept(&self) -> std::io::Result<(Stream, Peer)> {
        match self {
            Listener::Tcp(listener) => {
                // Nagle's algorithm stays on, as with axum::serve: a response
                // is one write, which Linux sends at once, while HTTP/2's
                // small frames coalesce instead of leaving one segment each
                // (docs/benchmarks.md has the measurement).
                let (stream, peer) = listener.accept().await?;
                Ok((Stream::Left(stream), Peer::Tcp(peer)))
            }
            #[cfg(unix)]
            Listener::Unix(listener) => {
                let (stream, _) = listener.accept().await?;
                let credentials = stream.peer_cred().ok();
                Ok((Stream::Right(stream), Peer::Unix(credentials)))
            }
        }
    }
}

/// Who is at the other end of a connection, as handlers see it through
/// `ConnectInfo`: a TCP peer's address, or a Unix peer's credentials.
#[derive(Debug, Clone)]
enum Peer {
    Tcp(SocketAddr),
    #[cfg(unix)]
    Unix(Option<tokio::net::unix::UCred>),
}

/// Serves each listener with its own service until `shutdown` completes,
/// then stops accepting on all of them and lets open connections finish,
/// bounded by `options.shutdown_timeout`, or cut short when `force`
/// completes. One accept loop per listener; one drain for all.
///
/// The listeners are dropped (closed) as soon as the stop begins, never shut
/// down: when one was inherited, systemd or systemfd keep their copy open and
/// new connections queue there for the next process.
pub(crate) async fn serve<S: AppService>(
    listeners: Vec<(Listener, S)>,
    shutdown: impl Future<Output = ()>,
    force: impl Future<Output = ()>,
    options: ServeOptions,
) -> Stopped {
    let stop = Arc::new(Stop::default());
    let end_accepting = Arc::new(Stop::default());
    let connections = TaskTracker::new();
    let idle_grace = IDLE_GRACE.min(options.shutdown_timeout);
    let loops: Vec<_> = listeners
        .into_iter()
        .map(|(listener, service)| {
            tokio::spawn(accept_loop(
                listener,
                service,
                Accepting {
                    end: Arc::clone(&end_accepting),
                    stop: Arc::clone(&stop),
                    connections: connections.clone(),
                    counted: options.connections.clone(),
                    idle_grace,
                    limits: options.limits,
                },
            ))
        })
        .collect();
    shutdown.await;
    end_accepting.begin();
    for accepting in loops {
        // Each loop drops its listener as it ends.
        let _ = accepting.await;
    }
    stop.begin();
    connections.close();
    tracing::info!(
        open = connections.len(),
        "stopped accepting; finishing open connections"
    );
    tokio::select! {
        () = connections.wait() => Stopped::Drained,
        () = tokio::time::sleep(options.shutdown_timeout) => Stopped::TimedOut { open: connections.len() },
        () = force => Stopped::Forced { open: connections.len() },
    }
}

/// What one accept loop shares with the others and hands each connection.
struct Accepting {
    /// Begun when the loops must stop accepting.
    end: Arc<Stop>,
    /// Begun when the connections must drain.
    stop: Arc<Stop>,
    /// Every open connection, for the drain.
    connections: TaskTracker,
    /// The open-connections gauge.
    counted: Connections,
    idle_grace: Duration,
    limits: Limits,
}

/// Accepts on one listener until `end` begins, spawning a task per connection.
async fn accept_loop<S: AppService>(listener: Listener, service: S, accepting: Accepting) {
    let mut backoff = AcceptBackoff::default();
    // One wait for the end, registered once, as the accept loop always had.
    let ended = accepting.end.begun();
    tokio::pin!(ended);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut ended => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff.succeeded();
                let connection = Connection {
                    stream: TrackedIo {
                        io: stream,
                        _open: accepting.connections.token(),
                        _counted: accepting.counted.open(),
                    },
                    peer,
                    stop: Arc::clone(&accepting.stop),
                    idle_grace: accepting.idle_grace,
                    limits: accepting.limits,
                };
                tokio::spawn(connection.serve(service.clone()));
            }
            Err(err) if is_connection_error(&err) => {}
            Err(err) => {
                let pause = backoff.failed(&err);
                tokio::select! {
                    () = &mut ended => break,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
    drop(listener);
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

/// The pause after accept errors (EMFILE and friends): growing while they
/// last, with one log line when a spell of errors begins and one when it is
/// over. A spell is over at the first success [`ACCEPT_SPELL_QUIET`] after its
/// last error: while descriptors trickle free, successes and errors alternate.
#[derive(Debug, Default)]
struct AcceptBackoff {
    /// Zero after a success, so the next error pauses the least.
    pause: Duration,
    spell: Option<ErrorSpell>,
}

#[derive(Debug)]
struct ErrorSpell {
    began: std::time::Instant,
    last_error: std::time::Instant,
    errors: u64,
}

/// How long accepts must go without an error for a spell of errors to be over.
const ACCEPT_SPELL_QUIET: Duration = Duration::from_secs(1);

impl AcceptBackoff {
    fn failed(&mut self, err: &std::io::Error) -> Duration {
        let now = std::time::Instant::now();
        match &mut self.spell {
            Some(spell) => {
                spell.errors += 1;
                spell.last_error = now;
            }
            None => {
                tracing::error!(error = %err, "accept failed; retrying with a short backoff until it succeeds");
                self.spell = Some(ErrorSpell {
                    began: now,
                    last_error: now,
                    errors: 1,
                });
            }
        }
        self.pause = if self.pause.is_zero() {
            ACCEPT_BACKOFF_MIN
        } else {
            (self.pause * 2).min(ACCEPT_BACKOFF_MAX)
        };
        self.pause
    }

    fn succeeded(&mut self) {
        self.pause = Duration::ZERO;
        let Some(spell) = &self.spell else { return };
        if spell.last_error.elapsed() >= ACCEPT_SPELL_QUIET {
            let lasted_ms = spell.last_error.duration_since(spell.began).as_millis();
            tracing::warn!(
                errors = spell.errors,
                lasted_ms = u64::try_from(lasted_ms).unwrap_or(u64::MAX),
                "accepting connections again"
            );
            self.spell = None;
        }
    }
}

/// The server's stop, as its connections see it: one atomic load per response.
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
/// (and notified) between the check and the wait is never missed.
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

/// An accepted connection's stream: TCP (`Left`) or Unix (`Right`).
#[cfg(unix)]
type Stream = tokio_util::either::Either<TcpStream, tokio::net::UnixStream>;
// Without Unix sockets the right side is never made; TCP keeps the type simple.
#[cfg(not(unix))]
type Stream = tokio_util::either::Either<TcpStream, TcpStream>;

/// A connection's stream, counted as open by the drain until it is dropped:
/// also after an upgrade hands it to a WebSocket handler.
struct TrackedIo {
    io: Stream,
    _open: TaskTrackerToken,
    _counted: OpenConnection,
}

impl AsyncRead for TrackedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// What ended a connection's normal service.
enum Watched {
    StopBegun,
    Idle,
}

/// Counts requests on one connection, so a stop can tell idle from busy.
#[derive(Debug)]
struct Activity {
    /// Requests whose response has not been sent whole yet.
    in_flight: AtomicUsize,
    /// Requests begun so far, and a wake-up for the stop path when one begins.
    started: AtomicU64,
    request_began: Notify,
    /// When the connection was accepted, the origin of `idle_since_nanos`.
    /// tokio's clock, so tests can pause it.
    born: tokio::time::Instant,
    /// When the connection last became idle (accepted, or its last response
    /// sent whole), in nanoseconds after `born`.
    idle_since_nanos: AtomicU64,
    /// The server's stop, checked as each response leaves.
    stop: Arc<Stop>,
}

/// Marks one request as in flight until dropped: when its response body has
/// been sent whole, or dropped (also on cancellation).
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = u64::try_from(self.0.born.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.0.idle_since_nanos.store(now, Ordering::Release);
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

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.started.fetch_add(1, Ordering::AcqRel);
        self.request_began.notify_one();
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
    async fn idle_for(&self, timeout: Duration) {
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
    async fn began_after(&self, seen: u64) {
        notified_until(&self.request_began, || {
            self.started.load(Ordering::Acquire) > seen
        })
        .await;
    }
}

/// One accepted connection and what serving it needs.
struct Connection {
    stream: TrackedIo,
    peer: Peer,
    stop: Arc<Stop>,
    idle_grace: Duration,
    limits: Limits,
}

impl Connection {
    async fn serve<S: AppService>(self, service: S) {
        let activity = Arc::new(Activity::new(self.stop));
        let per_request = PerRequest {
            service,
            activity: Arc::clone(&activity),
            peer: self.peer,
        };
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // The header-read timeout is `Activity::idle_for`, for both protocols;
        // hyper's own is turned off explicitly since it needs a timer.
        builder.http1().header_read_timeout(None);
        // RFC 8441: WebSockets over HTTP/2, as axum::serve allows.
        builder.http2().enable_connect_protocol();
        let connection =
            builder.serve_connection_with_upgrades(TokioIo::new(self.stream), per_request);
        tokio::pin!(connection);

        let header_timeout = self.limits.header_read_timeout;
        tokio::select! {
            result = connection.as_mut() => {
                log_connection_end(result);
                return;
            }
            watched = async {
                tokio::select! {
                    () = activity.stop.begun() => Watched::StopBegun,
                    () = activity.idle_for(header_timeout) => Watched::Idle,
                }
            } => {
                if let Watched::Idle = watched {
                    // Slow-loris headers or an idle keep-alive connection:
                    // dropping the connection closes it without a response.
                    tracing::debug!("closing a connection idle for HEADER_READ_TIMEOUT");
                    return;
                }
            }
        }
        if activity.in_flight.load(Ordering::Acquire) == 0 {
            // Idle: a request may be on the wire already. Wait briefly for it
            // so it is answered rather than cut off.
            let seen = activity.started.load(Ordering::Acquire);
            tokio::select! {
                result = connection.as_mut() => {
                    log_connection_end(result);
                    return;
                }
                () = activity.began_after(seen) => {}
                () = tokio::time::sleep(self.idle_grace) => {}
            }
        }
        // HTTP/1: finishes the request in flight (answered with Connection:
        // close), then closes. HTTP/2: sends GOAWAY and finishes open streams.
        connection.as_mut().graceful_shutdown();
        tokio::select! {
            result = connection.as_mut() => log_connection_end(result),
            // A slow-loris head is still cut at the header timeout while stopping.
            () = activity.idle_for(header_timeout) => {}
        }
    }
}

fn log_connection_end(result: Result<(), BoxError>) {
    if let Err(err) = result {
        tracing::debug!(error = %err, "connection ended with an error");
    }
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
struct PerRequest<S> {
    service: S,
    activity: Arc<Activity>,
    peer: Peer,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for PerRequest<S>
where
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone,
{
    type Response = Response<TrackedBody<B>>;
    type Error = Infallible;
    type Future = Respond<S>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        match &self.peer {
            Peer::Tcp(addr) => {
                request.extensions_mut().insert(ConnectInfo(*addr));
            }
            #[cfg(unix)]
            Peer::Unix(Some(credentials)) => {
                request.extensions_mut().insert(ConnectInfo(*credentials));
            }
            #[cfg(unix)]
            Peer::Unix(None) => {}
        }
        let http1 = request.version() < Version::HTTP_2;
        // RFC 9112, section 3.2: an HTTP/1.1 request without Host is a 400.
        let answer = (request.version() != Version::HTTP_11
            || request.headers().contains_key(header::HOST))
        .then(|| self.service.clone().oneshot(request));
        Respond {
            in_flight: Some(self.activity.begin()),
            http1,
            answer,
        }
    }
}

pin_project_lite::pin_project! {
    /// One request's answer, counted as in flight; `None` for a request
    /// refused before routing (400).
    struct Respond<S: tower::Service<Request<Incoming>>> {
        #[pin]
        answer: Option<Oneshot<S, Request<Incoming>>>,
        in_flight: Option<InFlight>,
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
        let Some(answer) = this.answer.as_pin_mut() else {
            let mut refused = Response::new(TrackedBody {
                body: None,
                in_flight: this.in_flight.take(),
            });
            *refused.status_mut() = StatusCode::BAD_REQUEST;
            say_closing(&mut refused);
            return Poll::Ready(Ok(refused));
        };
        let Ok(mut response) = std::task::ready!(answer.poll(cx));
        let in_flight = this.in_flight.take();
        if *this.http1 && in_flight.as_ref().is_some_and(|f| f.0.stop.has_begun()) {
            say_closing(&mut response);
        }
        Poll::Ready(Ok(response.map(|body| TrackedBody {
            body: Some(body),
            in_flight,
        })))
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

    /// Says which peer extension a request carried.
    async fn peer(request: axum::extract::Request) -> String {
        let tcp = request.extensions().get::<ConnectInfo<SocketAddr>>();
        #[cfg(unix)]
        let unix = request
            .extensions()
            .get::<ConnectInfo<tokio::net::unix::UCred>>();
        #[cfg(not(unix))]
        let unix: Option<()> = None;
        match (tcp, unix) {
            (Some(_), None) => "tcp".to_owned(),
            #[cfg(unix)]
            (None, Some(ConnectInfo(cred))) => format!("unix uid {}", cred.uid()),
            _ => "neither".to_owned(),
        }
    }

    async fn exchange(mut stream: impl AsyncRead + AsyncWrite + Unpin) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    /// Several listeners, TCP and Unix, each with its own service, one drain;
    /// a Unix peer is `ConnectInfo<UCred>`, never a made-up `SocketAddr`.
    #[cfg(unix)]
    #[tokio::test]
    async fn several_listeners_tcp_and_unix_one_drain() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp_addr = tcp.local_addr().unwrap();
        let dir = std::env::temp_dir().join(format!("pk-serve-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s");
        let _ = std::fs::remove_file(&path);
        let unix = tokio::net::UnixListener::bind(&path).unwrap();
        let limits = Limits {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            max_body_bytes: 1024,
        };
        let app = axum::Router::new().route("/", axum::routing::get(peer));
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::new([]));
        let service = crate::routes::service(app, limits, Arc::clone(&metrics));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(serve(
            vec![
                (Listener::Tcp(tcp), service.clone()),
                (Listener::Unix(unix), service),
            ],
            async move {
                let _ = stopped.await;
            },
            std::future::pending(),
            ServeOptions {
                shutdown_timeout: Duration::from_secs(5),
                limits,
                connections: metrics.connections(),
            },
        ));
        let over_tcp = exchange(TcpStream::connect(tcp_addr).await.unwrap()).await;
        assert!(over_tcp.ends_with("tcp"), "{over_tcp}");
        let over_unix = exchange(tokio::net::UnixStream::connect(&path).await.unwrap()).await;
        assert!(over_unix.contains("unix uid "), "{over_unix}");
        stop.send(()).unwrap();
        let stopped = tokio::time::timeout(Duration::from_secs(10), serving)
            .await
            .expect("the drain ends")
            .unwrap();
        assert_eq!(stopped, Stopped::Drained);
        // Both listeners are closed once serving has stopped.
        assert!(TcpStream::connect(tcp_addr).await.is_err());
        assert!(tokio::net::UnixStream::connect(&path).await.is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn idle_a_timeout_after_the_last_response_never_during_a_request() {
        let timeout = Duration::from_secs(10);
        let activity = Arc::new(Activity::new(Arc::default()));
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

    #[test]
    fn accept_backoff_grows_to_its_cap_and_resets() {
        let mut backoff = AcceptBackoff::default();
        let err = std::io::Error::from_raw_os_error(24); // EMFILE
        let pauses: Vec<Duration> = (0..10).map(|_| backoff.failed(&err)).collect();
        assert_eq!(pauses[0], ACCEPT_BACKOFF_MIN);
        assert_eq!(pauses[1], ACCEPT_BACKOFF_MIN * 2);
        assert!(pauses.windows(2).all(|w| w[0] <= w[1]), "{pauses:?}");
        assert_eq!(*pauses.last().unwrap(), ACCEPT_BACKOFF_MAX);
        backoff.succeeded();
        assert_eq!(backoff.failed(&err), ACCEPT_BACKOFF_MIN);
        // Within a spell, a success resets the pause but not the spell.
        assert_eq!(backoff.spell.as_ref().map(|s| s.errors), Some(11));
    }
}
