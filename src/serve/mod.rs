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
//! When `SHUTDOWN_TIMEOUT` passes, or a second stop cuts the drain short,
//! every connection still open is closed before [`serve`] returns: nothing
//! of ours keeps running in an embedding program's runtime. Our connection
//! tasks are aborted; an upgraded stream, which lives in a task of the
//! app's, fails its next poll and wakes that task if it waits on it.
//!
//! This module never binds: it is handed listeners, TCP or Unix, each with
//! its own service (the app, or the admin role's built-in routes).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::BoxError;
use axum::body::Bytes;
use axum::http::{Request, Response};
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use hyper::body::{Body, Incoming};
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::metrics::{Connections, Metrics, OpenConnection};
use crate::scope::{ConnectionScope, ScopedExecutor};
use crate::stopping::Stopping;
use accept::{AcceptBackoff, Admit, ConnectionLimit};
use request::{Activity, Output, PerRequest, Quiet, peer_extensions};

mod accept;
mod limits;
mod proxy;
mod request;

pub(crate) use limits::Limits;
use proxy::Proxied;
pub(crate) use proxy::ProxySettings;

/// How long, once a stop begins, an idle connection may take to send its next request.
///
/// A client that connected (or finished a request) a moment before the stop
/// is usually about to send; closing under it is what makes "empty reply"
/// errors. Half a second covers a busy client and adds little to a restart
/// when browsers hold idle keep-alive connections.
pub(crate) const IDLE_GRACE: Duration = Duration::from_millis(500);

/// How long a connection closed for idleness has, once told to go away (an
/// HTTP/2 GOAWAY, written at once), to end by itself before it is dropped:
/// a client that answers the GOAWAY's PING closes sooner, an HTTP/1
/// connection at once.
const GOODBYE_WAIT: Duration = Duration::from_secs(1);

/// How long [`serve`], once it has closed the connections left at the end of
/// the drain, waits for them to be gone: an aborted task ends at its next
/// poll and an upgraded stream's task is woken, so this is only reached by a
/// task that blocks its thread or holds a stream without polling it.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Settings for [`serve`].
#[derive(Debug, Clone)]
pub(crate) struct ServeOptions {
    /// How long open connections may take to finish once the stop begins.
    pub(crate) shutdown_timeout: Duration,
    /// Time and size bounds for each connection and request.
    pub(crate) limits: Limits,
    /// What `/metrics` counts: requests and open connections.
    pub(crate) metrics: Arc<Metrics>,
    /// Begun when this server stops or hands over; every request can extract it.
    pub(crate) stopping: Stopping,
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
    /// The timeout passed with this many connections still open; they were closed.
    TimedOut { open: usize },
    /// A second stop request came during the drain; these connections were closed.
    Forced { open: usize },
}

/// What a listener speaks besides plain HTTP, ready to serve: the TLS
/// acceptor, and the PROXY protocol's trusted peers. One per listener.
#[derive(Clone, Default)]
pub(crate) struct Wire {
    /// Serves TLS with this acceptor.
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<crate::tls::Tls>,
    /// Each connection begins with a PROXY header from one of these peers.
    pub(crate) proxy: Option<Arc<ProxySettings>>,
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
/// `ConnectInfo`: a TCP peer's address (the client's, from a PROXY header,
/// behind a proxy), or a Unix peer's credentials.
#[derive(Debug, Clone)]
enum Peer {
    Tcp(SocketAddr),
    #[cfg(unix)]
    Unix(Option<tokio::net::unix::UCred>),
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Tcp(address) => address.fmt(f),
            #[cfg(unix)]
            Peer::Unix(Some(cred)) => match cred.pid() {
                Some(pid) => write!(f, "unix pid {pid} uid {}", cred.uid()),
                None => write!(f, "unix uid {}", cred.uid()),
            },
            #[cfg(unix)]
            Peer::Unix(None) => f.write_str("unix"),
        }
    }
}

/// Serves each listener with its own service until `shutdown` completes,
/// then stops accepting on all of them and lets open connections finish,
/// bounded by `options.shutdown_timeout`, or cut short when `force`
/// completes. One accept loop per listener; one drain for all.
///
/// The listeners are dropped (closed) as soon as the stop begins, never shut
/// down: when one was inherited, systemd or systemfd keep their copy open and
/// new connections queue there for the next process.
///
/// When the drain times out or is forced, the connections still open are
/// closed, and `serve` returns once they are gone (or after [`CLOSE_WAIT`]).
pub(crate) async fn serve<S: AppService>(
    listeners: Vec<(Listener, Wire, S)>,
    shutdown: impl Future<Output = ()>,
    force: impl Future<Output = ()>,
    options: ServeOptions,
) -> Stopped {
    let stop = Arc::new(Stop::default());
    let kill = Arc::new(Kill::default());
    let end_accepting = Arc::new(Stop::default());
    let connections = TaskTracker::new();
    // Each connection's requests, for the end of the drain: over HTTP/2
    // hyper runs each in a task of its own, which can outlive the connection
    // task by a moment.
    let requests = TaskTracker::new();
    let idle_grace = IDLE_GRACE.min(options.shutdown_timeout);
    let limit = Arc::new(ConnectionLimit::new(
        options.limits.max_connections,
        Arc::clone(&options.metrics),
    ));
    let loops: Vec<_> = listeners
        .into_iter()
        .map(|(listener, wire, service)| {
            tokio::spawn(accept_loop(
                listener,
                wire,
                service,
                Accepting {
                    end: Arc::clone(&end_accepting),
                    stop: Arc::clone(&stop),
                    kill: Arc::clone(&kill),
                    connections: connections.clone(),
                    requests: requests.clone(),
                    counted: options.metrics.connections(),
                    limit: Arc::clone(&limit),
                    metrics: Arc::clone(&options.metrics),
                    idle_grace,
                    limits: options.limits,
                    stopping: options.stopping.clone(),
                },
            ))
        })
        .collect();
    shutdown.await;
    end_accepting.begin();
    let mut tasks = Vec::with_capacity(loops.len());
    for accepting in loops {
        // Each loop drops its listener as it ends, and hands back the tasks
        // of its connections. (A loop that panicked dropped its set, which
        // aborted them.)
        if let Ok(set) = accepting.await {
            tasks.push(set);
        }
    }
    stop.begin();
    connections.close();
    tracing::info!(
        open = connections.len(),
        "stopped accepting; finishing open connections"
    );
    let stopped = tokio::select! {
        () = connections.wait() => return Stopped::Drained,
        () = tokio::time::sleep(options.shutdown_timeout) => Stopped::TimedOut { open: connections.len() },
        () = force => Stopped::Forced { open: connections.len() },
    };
    requests.close();
    close_all(&kill, tasks, &connections, &requests).await;
    stopped
}

/// Closes every connection still open at the end of the drain and waits, at
/// most [`CLOSE_WAIT`], for them to be gone: our connection tasks are aborted
/// (dropping a task drops its connection, its stream and the request futures
/// in it), and an upgraded stream fails its next poll ([`TrackedIo`]).
async fn close_all(
    kill: &Kill,
    mut tasks: Vec<JoinSet<()>>,
    connections: &TaskTracker,
    requests: &TaskTracker,
) {
    kill.begin();
    for set in &mut tasks {
        set.abort_all();
    }
    let closed = async {
        for set in &mut tasks {
            while set.join_next().await.is_some() {}
        }
        // The streams handed to an upgrade, whose tasks are the app's.
        connections.wait().await;
        // HTTP/2 requests' tasks, which end once their connection is gone.
        requests.wait().await;
    };
    if tokio::time::timeout(CLOSE_WAIT, closed).await.is_err() {
        tracing::warn!(
            open = connections.len(),
            "connections still open after being closed: a task blocks its thread or holds an upgraded stream without polling it"
        );
    }
}

/// What one accept loop shares with the others and hands each connection.
struct Accepting {
    /// Begun when the loops must stop accepting.
    end: Arc<Stop>,
    /// Begun when the connections must drain.
    stop: Arc<Stop>,
    /// Begun when the drain is over and what is left must close.
    kill: Arc<Kill>,
    /// Every open connection, for the drain.
    connections: TaskTracker,
    /// Every connection's requests, for the end of the drain.
    requests: TaskTracker,
    /// The open-connections gauge.
    counted: Connections,
    /// `MAX_CONNECTIONS`, shared by every accept loop.
    limit: Arc<ConnectionLimit>,
    /// The request metrics, for each connection's requests.
    metrics: Arc<Metrics>,
    idle_grace: Duration,
    limits: Limits,
    stopping: Stopping,
}

/// Accepts on one listener until `end` begins, spawning a task per
/// connection; returns the tasks still running, for the drain to abort.
async fn accept_loop<S: AppService>(
    listener: Listener,
    wire: Wire,
    service: S,
    accepting: Accepting,
) -> JoinSet<()> {
    let mut backoff = AcceptBackoff::default();
    // The connection tasks, abortable at the end of the drain. Each one
    // finished is taken out here (one wake of this loop per connection), so
    // the set holds the running ones only.
    let mut tasks = JoinSet::new();
    // One wait for the end, registered once, as the accept loop always had.
    let ended = accepting.end.begun();
    tokio::pin!(ended);
    loop {
        // At MAX_CONNECTIONS, wait for a connection to close before
        // accepting again: new ones wait in the kernel's queue.
        let permit = match accepting.limit.try_admit() {
            Admit::Now(permit) => permit,
            Admit::Wait(permits) => tokio::select! {
                biased;
                () = &mut ended => break,
                permit = permits.acquire_owned() => permit.ok(),
            },
        };
        let accepted = tokio::select! {
            biased;
            () = &mut ended => break,
            accepted = listener.accept() => accepted,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff.succeeded();
                // TLS_MAX_HANDSHAKES: a connection beyond it is closed at
                // once rather than queued behind slow handshakes.
                #[cfg(feature = "tls")]
                let handshake = match &wire.tls {
                    Some(tls) => match tls.try_handshake_permit() {
                        Some(permit) => Some(permit),
                        None => {
                            accepting
                                .metrics
                                .tls_handshake(crate::metrics::HandshakeOutcome::OverCap);
                            tracing::debug!(
                                "closing a connection: TLS_MAX_HANDSHAKES handshakes are in progress"
                            );
                            continue;
                        }
                    },
                    None => None,
                };
                let output = Arc::new(Output::new());
                let stream = TrackedIo {
                    io: stream,
                    home: None,
                    kill: Arc::clone(&accepting.kill),
                    closing: Closing::Home,
                    output: Arc::clone(&output),
                    write_blocked: false,
                    _permit: permit,
                    _open: accepting.connections.token(),
                    _counted: accepting.counted.open(),
                };
                let connection = Connection {
                    output,
                    peer,
                    requests: accepting.requests.token(),
                    stop: Arc::clone(&accepting.stop),
                    metrics: Arc::clone(&accepting.metrics),
                    idle_grace: accepting.idle_grace,
                    limits: accepting.limits,
                    stopping: accepting.stopping.for_connection(),
                    wire: wire.clone(),
                    #[cfg(feature = "tls")]
                    handshake,
                };
                tasks.spawn(connection.serve(stream, service.clone()));
                // While accepts keep coming, the `join_next` branch above
                // never gets its turn.
                while tasks.try_join_next().is_some() {}
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
    tasks
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

/// The end of the drain, as open connections see it: begun when the drain
/// timed out or was forced, and whatever is still open must close.
#[derive(Debug, Default)]
struct Kill {
    begun: AtomicBool,
    /// Wakes the tasks of upgraded streams that wait on their stream.
    wake: CancellationToken,
}

impl Kill {
    fn begin(&self) {
        self.begun.store(true, Ordering::Relaxed);
        self.wake.cancel();
    }

    fn has_begun(&self) -> bool {
        self.begun.load(Ordering::Relaxed)
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
///
/// At the end of the drain ([`Kill`]) our connection task is aborted, which
/// drops the stream. A stream polled by another task, which has it through
/// an upgrade, closes itself instead: it is shut down and every poll fails.
/// That task is woken through [`Kill::wake`], which the stream registers for
/// only there, on the way to `Pending`. Our own task pays a relaxed load
/// per poll and a comparison of task ids when its stream has nothing to read.
///
/// It also tells the connection's watch when a write waits for the peer to
/// read ([`Output`]), for `WRITE_TIMEOUT` and so that the idle clock does
/// not run while a response is still being written. A write that does not
/// wait costs a test of `write_blocked`.
struct TrackedIo {
    io: Stream,
    /// Our connection task, set when it begins ([`Connection::serve`]).
    home: Option<tokio::task::Id>,
    kill: Arc<Kill>,
    closing: Closing,
    /// Whether a write waits, shared with the connection's watch.
    output: Arc<Output>,
    /// Whether the last write returned `Pending` (what `output` was told).
    write_blocked: bool,
    /// A place under `MAX_CONNECTIONS`, given back when the stream is dropped.
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
    _open: TaskTrackerToken,
    _counted: OpenConnection,
}

/// Where a stream stands with the end of the drain.
enum Closing {
    /// Polled by our connection task only, which is aborted instead.
    Home,
    /// Polled by another task (an upgrade): woken when the drain ends.
    Watching(Pin<Box<WaitForCancellationFutureOwned>>),
    /// Shut down at the end of the drain; every poll fails.
    Closed,
}

impl TrackedIo {
    /// Polls the stream with `poll`; outside our connection task, fails once
    /// the drain has ended, and waits for that end along with the stream.
    /// What our own task runs at every poll is a relaxed load and a branch;
    /// the rest is out of line, so the poll stays small enough to inline.
    fn poll_io<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(Pin<&mut Stream>, &mut Context<'_>) -> Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        // Checked at every poll, not only after a wake: an upgraded stream
        // that only writes (a feed) is never Pending.
        if self.kill.has_begun() {
            if let Some(closed) = self.killed(cx) {
                return closed;
            }
        }
        let polled = poll(Pin::new(&mut self.io), cx);
        if polled.is_pending() && self.watch(cx).is_ready() {
            return self.close(cx);
        }
        polled
    }

    /// Once the drain has ended: the poll's failure, unless our own task
    /// polls (it is being aborted).
    #[cold]
    #[inline(never)]
    fn killed<T>(&mut self, cx: &mut Context<'_>) -> Option<Poll<std::io::Result<T>>> {
        self.away().then(|| self.close(cx))
    }

    /// On the way to `Pending`: outside our connection task, waits for the
    /// end of the drain too. Ready once it has come.
    #[inline(never)]
    fn watch(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.away() {
            return Poll::Pending;
        }
        match &mut self.closing {
            Closing::Watching(killed) => killed.as_mut().poll(cx),
            Closing::Home | Closing::Closed => Poll::Ready(()),
        }
    }

    /// Whether another task than our connection task polls the stream,
    /// which it has through an upgrade. The first time, the stream begins to
    /// watch for the end of the drain.
    fn away(&mut self) -> bool {
        if let Closing::Home = self.closing {
            if tokio::task::try_id() == self.home {
                return false;
            }
            let killed = self.kill.wake.clone().cancelled_owned();
            self.closing = Closing::Watching(Box::pin(killed));
        }
        true
    }

    /// Tells [`Output`] when a write begins or ends waiting for the peer.
    #[inline]
    fn wrote<T>(&mut self, polled: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
        match &polled {
            Poll::Pending if !self.write_blocked => {
                self.write_blocked = true;
                self.output.blocked();
            }
            Poll::Ready(_) if self.write_blocked => {
                self.write_blocked = false;
                self.output.went_through();
            }
            _ => {}
        }
        polled
    }

    /// Shuts the stream down (the peer reads its end now, whether or not
    /// the task holding the stream drops it), and fails the poll.
    #[cold]
    fn close<T>(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<T>> {
        if !matches!(self.closing, Closing::Closed) {
            self.closing = Closing::Closed;
            let _ = Pin::new(&mut self.io).poll_shutdown(cx);
        }
        Poll::Ready(Err(std::io::ErrorKind::ConnectionAborted.into()))
    }
}

impl AsyncRead for TrackedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.get_mut().poll_io(cx, |io, cx| io.poll_read(cx, buf))
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = this.poll_io(cx, |io, cx| io.poll_write(cx, buf));
        this.wrote(polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = this.poll_io(cx, |io, cx| io.poll_write_vectored(cx, bufs));
        this.wrote(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().poll_io(cx, |io, cx| io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().poll_io(cx, |io, cx| io.poll_shutdown(cx))
    }
}

/// What ended a connection's normal service.
enum Watched {
    StopBegun,
    Quiet(Quiet),
}

/// The stream hyper serves: TLS over the tracked socket on a TLS listener.
#[cfg(feature = "tls")]
type Io = tokio_util::either::Either<TrackedIo, tokio_rustls::server::TlsStream<TrackedIo>>;
#[cfg(not(feature = "tls"))]
type Io = TrackedIo;

/// One accepted connection and what serving it needs.
struct Connection {
    /// The stream's writes, as its watch sees them.
    output: Arc<Output>,
    peer: Peer,
    /// Held by its requests' [`Activity`] until the last of them is dropped.
    requests: TaskTrackerToken,
    stop: Arc<Stop>,
    metrics: Arc<Metrics>,
    idle_grace: Duration,
    limits: Limits,
    stopping: Stopping,
    /// What the listener speaks besides plain HTTP.
    wire: Wire,
    /// A place under `TLS_MAX_HANDSHAKES`, given back once the handshake ends.
    #[cfg(feature = "tls")]
    handshake: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Connection {
    /// Reads the PROXY header and makes the TLS handshake where the
    /// listener asks for them, then serves HTTP in the connection's scope.
    async fn serve<S: AppService>(mut self, mut stream: TrackedIo, service: S) {
        stream.home = tokio::task::try_id();
        if let Some(trusted) = self.wire.proxy.take() {
            match admit_proxied(&mut stream.io, &self.peer, &trusted).await {
                Some(client) => self.peer = client,
                None => return,
            }
        }
        let scope = ConnectionScope::new(self.stopping.clone());
        #[cfg(feature = "tls")]
        let (io, scope) = match self.wire.tls.take() {
            None => (Io::Left(stream), scope),
            Some(tls) => {
                let accepted = tls.accept(stream, &self.metrics).await;
                drop(self.handshake.take());
                match accepted {
                    Ok(accepted) => (
                        Io::Right(accepted.stream),
                        ConnectionScope {
                            identity: accepted.identity,
                            ..scope
                        },
                    ),
                    Err(err) => {
                        tracing::debug!(peer = %self.peer, error = %err, "TLS handshake failed");
                        return;
                    }
                }
            }
        };
        #[cfg(not(feature = "tls"))]
        let io = stream;
        scope
            .clone()
            .scope(self.serve_http(io, scope, service))
            .await;
    }

    async fn serve_http<S: AppService>(self, io: Io, scope: ConnectionScope, service: S) {
        let metrics = Arc::clone(&self.metrics);
        let activity = Arc::new(Activity::new(
            self.stop,
            self.metrics,
            self.requests,
            self.output,
        ));
        let per_request = PerRequest {
            service,
            activity: Arc::clone(&activity),
            peer: peer_extensions(&self.peer),
        };
        // HTTP/2 streams run in tasks of their own: in this connection's
        // Stopping scope too (HTTP/1 requests run in the connection's task).
        let mut builder = auto::Builder::new(ScopedExecutor(scope));
        // The header-read timeout is `Activity::watch`, for both protocols;
        // hyper's own is turned off explicitly since it needs a timer.
        builder.http1().header_read_timeout(None);
        // RFC 8441: WebSockets over HTTP/2, as axum::serve allows.
        builder.http2().enable_connect_protocol();
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), per_request);
        tokio::pin!(connection);

        let (header_timeout, write_timeout) =
            (self.limits.header_read_timeout, self.limits.write_timeout);
        // In a FuturesUnordered, the stop, idle and write watch is polled
        // only when its own waker fires; in the select! itself it would be
        // polled at every wake of the connection, that is at every request.
        let mut watch: FuturesUnordered<_> = [async {
            tokio::select! {
                () = activity.stop.begun() => Watched::StopBegun,
                quiet = activity.watch(header_timeout, write_timeout) => Watched::Quiet(quiet),
            }
        }]
        .into_iter()
        .collect();
        let quiet = tokio::select! {
            result = connection.as_mut() => {
                log_connection_end(result);
                return;
            }
            Some(watched) = watch.next() => match watched {
                Watched::StopBegun => None,
                Watched::Quiet(quiet) => Some(quiet),
            },
        };
        drop(watch);
        match quiet {
            Some(Quiet::Idle) => {
                // Slow-loris headers or an idle keep-alive connection: told
                // to go away (HTTP/2: a GOAWAY; HTTP/1 closes at once), then
                // dropped, which closes it without a response.
                tracing::debug!("closing a connection idle for HEADER_READ_TIMEOUT");
                connection.as_mut().graceful_shutdown();
                if let Ok(result) = tokio::time::timeout(GOODBYE_WAIT, connection.as_mut()).await {
                    log_connection_end(result);
                }
                return;
            }
            Some(Quiet::Stalled) => {
                metrics.write_timed_out();
                tracing::debug!(
                    "closing a connection that wrote nothing of its waiting output for WRITE_TIMEOUT"
                );
                return;
            }
            None => {}
        }
        // The stop has begun.
        let quiet = activity.watch(header_timeout, write_timeout);
        tokio::pin!(quiet);
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
        if !activity.is_http2() {
            // HTTP/1: each response now says `Connection: close`, after which
            // hyper closes; a graceful shutdown while one is in flight would
            // also make hyper add `close` to a 101 (an upgrade). So it waits
            // until none is in flight.
            tokio::select! {
                result = connection.as_mut() => {
                    log_connection_end(result);
                    return;
                }
                () = activity.none_in_flight() => {}
                _ = &mut quiet => return,
            }
        }
        // HTTP/1: closes now (or after a request whose head is on its way).
        // HTTP/2: sends GOAWAY and finishes open streams.
        connection.as_mut().graceful_shutdown();
        tokio::select! {
            result = connection.as_mut() => log_connection_end(result),
            // A slow-loris head is still cut at the header timeout while
            // stopping, and a stalled response at the write timeout.
            _ = &mut quiet => {}
        }
    }
}

/// On a listener marked `proxy`: the client's address from the PROXY header
/// that a trusted peer sends first, or `None` when the connection must close
/// (an untrusted peer, no header in time, a malformed one), with one line.
async fn admit_proxied(io: &mut Stream, peer: &Peer, trusted: &ProxySettings) -> Option<Peer> {
    if let Peer::Tcp(address) = peer {
        if !trusted.trusts(address.ip()) {
            tracing::warn!(%peer, "closing a connection on a proxy listener: the peer is not in PROXY_TRUSTED");
            return None;
        }
    }
    match proxy::read_header(io).await {
        Ok(Proxied::Addresses { source, .. }) => Some(Peer::Tcp(source)),
        Ok(Proxied::Local) => Some(peer.clone()),
        Err(err) => {
            tracing::warn!(%peer, error = %err, "closing a connection on a proxy listener");
            None
        }
    }
}

fn log_connection_end(result: Result<(), BoxError>) {
    if let Err(err) = result {
        tracing::debug!(error = %err, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::ConnectInfo;

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

    async fn exchange(stream: impl AsyncRead + AsyncWrite + Unpin) -> String {
        send(
            stream,
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await
    }

    const LIMITS: Limits = Limits {
        header_read_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(10),
        write_timeout: Duration::from_secs(10),
        max_body_bytes: 1024,
        max_connections: 0,
    };

    /// Serves `listeners` in a task until the sender is used; the task
    /// returns how serving ended.
    fn start<S: AppService>(
        listeners: Vec<(Listener, Wire, S)>,
        metrics: Arc<Metrics>,
    ) -> (
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<Stopped>,
    ) {
        start_with(listeners, metrics, Duration::from_secs(5), Stopping::new())
    }

    /// [`start`] with a shutdown timeout and a `Stopping` of the test's.
    fn start_with<S: AppService>(
        listeners: Vec<(Listener, Wire, S)>,
        metrics: Arc<Metrics>,
        shutdown_timeout: Duration,
        stopping: Stopping,
    ) -> (
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<Stopped>,
    ) {
        start_limited(listeners, metrics, shutdown_timeout, stopping, LIMITS)
    }

    /// [`start_with`] with limits of the test's.
    fn start_limited<S: AppService>(
        listeners: Vec<(Listener, Wire, S)>,
        metrics: Arc<Metrics>,
        shutdown_timeout: Duration,
        stopping: Stopping,
        limits: Limits,
    ) -> (
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<Stopped>,
    ) {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(serve(
            listeners,
            async move {
                let _ = stopped.await;
            },
            std::future::pending(),
            ServeOptions {
                shutdown_timeout,
                limits,
                metrics,
                stopping,
            },
        ));
        (stop, serving)
    }

    /// Writes `request` and reads the response until the server closes.
    async fn send(mut stream: impl AsyncRead + AsyncWrite + Unpin, request: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream.write_all(request.as_bytes()).await.unwrap();
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
        let app = axum::Router::new().route("/", axum::routing::get(peer));
        let service = crate::routes::service(app, LIMITS);
        let (stop, serving) = start(
            vec![
                (Listener::Tcp(tcp), Wire::default(), service.clone()),
                (Listener::Unix(unix), Wire::default(), service),
            ],
            Arc::new(Metrics::new([])),
        );
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

    /// Every request is counted once, by status class, including those the
    /// serving core refuses itself (an HTTP/1.1 request without `Host`).
    #[tokio::test]
    async fn requests_are_counted_by_status_class() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new([]));
        let scraped = Arc::clone(&metrics);
        let app = axum::Router::new()
            .route("/hello", axum::routing::get(|| async { "hello" }))
            .route(
                "/metrics",
                axum::routing::get(move || async move { scraped.render() }),
            );
        let (stop, serving) = start(
            vec![(
                Listener::Tcp(tcp),
                Wire::default(),
                crate::routes::service(app, LIMITS),
            )],
            metrics,
        );
        let request = |line: &str, host: bool| {
            let host = if host { "Host: x\r\n" } else { "" };
            format!("{line}\r\n{host}Connection: close\r\n\r\n")
        };
        for (line, host, status) in [
            ("GET /hello HTTP/1.1", true, "200"),
            ("GET /nope HTTP/1.1", true, "404"),
            ("GET /hello HTTP/1.1", false, "400"),
        ] {
            let response = send(
                TcpStream::connect(addr).await.unwrap(),
                &request(line, host),
            )
            .await;
            assert!(
                response.starts_with(&format!("HTTP/1.1 {status}")),
                "{response}"
            );
        }
        let text = send(
            TcpStream::connect(addr).await.unwrap(),
            &request("GET /metrics HTTP/1.1", true),
        )
        .await;
        for line in [
            "portkeeper_http_requests_total{class=\"2xx\"} 1\n",
            "portkeeper_http_requests_total{class=\"4xx\"} 2\n",
            "portkeeper_http_request_duration_seconds_count 3\n",
            // The scrape itself is in flight while it renders.
            "portkeeper_http_requests_in_flight 1\n",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), serving)
            .await
            .expect("the drain ends")
            .unwrap();
    }

    /// A wait the tests bound everything by.
    const DEADLINE: Duration = Duration::from_secs(10);

    /// Stops `serving` and waits for how it ended.
    async fn stop_and_wait(
        stop: tokio::sync::oneshot::Sender<()>,
        serving: tokio::task::JoinHandle<Stopped>,
    ) -> Stopped {
        stop.send(()).unwrap();
        tokio::time::timeout(DEADLINE, serving)
            .await
            .expect("serve returns")
            .unwrap()
    }

    /// Reads until the server closes the connection (EOF or an error such as
    /// a reset), within `DEADLINE`; what was read.
    async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut read = Vec::new();
        let mut buf = [0; 1024];
        let reading = async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => read.extend_from_slice(&buf[..n]),
                }
            }
        };
        tokio::time::timeout(DEADLINE, reading)
            .await
            .expect("the server closes the connection");
        read
    }

    /// Sets its flag when dropped: the future that holds it is gone.
    struct DropFlag(Arc<AtomicBool>);

    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// A request still in flight when `SHUTDOWN_TIMEOUT` passes is cut off
    /// before `serve` returns: its handler's future is dropped and the
    /// client's connection closed, nothing left running in the runtime.
    #[tokio::test]
    async fn a_request_past_the_shutdown_timeout_is_dropped_before_serve_returns() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let dropped = Arc::new(AtomicBool::new(false));
        let entered = Arc::new(Notify::new());
        let app = axum::Router::new().route(
            "/slow",
            axum::routing::get({
                let (dropped, entered) = (Arc::clone(&dropped), Arc::clone(&entered));
                move || {
                    let guard = DropFlag(Arc::clone(&dropped));
                    entered.notify_one();
                    async move {
                        let _guard = guard;
                        std::future::pending::<()>().await;
                    }
                }
            }),
        );
        let (stop, serving) = start_with(
            vec![(
                Listener::Tcp(tcp),
                Wire::default(),
                crate::routes::service(app, LIMITS),
            )],
            Arc::new(Metrics::new([])),
            Duration::from_millis(200),
            Stopping::new(),
        );
        let mut client = TcpStream::connect(addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut client, b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        tokio::time::timeout(DEADLINE, entered.notified())
            .await
            .expect("the handler runs");
        assert_eq!(
            stop_and_wait(stop, serving).await,
            Stopped::TimedOut { open: 1 }
        );
        assert!(
            dropped.load(Ordering::SeqCst),
            "the handler still runs after serve returned"
        );
        let read = read_until_closed(&mut client).await;
        assert!(read.is_empty(), "{}", String::from_utf8_lossy(&read));
    }

    /// Asks for a WebSocket at `path` and reads the 101 response's head.
    async fn upgrade(client: &mut TcpStream, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        client.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0];
            tokio::time::timeout(DEADLINE, client.read_exact(&mut byte))
                .await
                .expect("the upgrade is answered")
                .unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        head
    }

    /// The same over HTTP/2, where hyper runs each request in a task of
    /// its own: that task ends with the connection, before `serve` returns.
    #[tokio::test]
    async fn an_http2_request_past_the_shutdown_timeout_is_dropped_before_serve_returns() {
        use hyper_util::rt::TokioIo;
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let dropped = Arc::new(AtomicBool::new(false));
        let entered = Arc::new(Notify::new());
        let app = axum::Router::new().route(
            "/slow",
            axum::routing::get({
                let (dropped, entered) = (Arc::clone(&dropped), Arc::clone(&entered));
                move || {
                    let guard = DropFlag(Arc::clone(&dropped));
                    entered.notify_one();
                    async move {
                        let _guard = guard;
                        std::future::pending::<()>().await;
                    }
                }
            }),
        );
        let (stop, serving) = start_with(
            vec![(
                Listener::Tcp(tcp),
                Wire::default(),
                crate::routes::service(app, LIMITS),
            )],
            Arc::new(Metrics::new([])),
            Duration::from_millis(200),
            Stopping::new(),
        );
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(stream),
        )
        .await
        .unwrap();
        let client = tokio::spawn(connection);
        let request = Request::get(format!("http://{addr}/slow"))
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let _response = tokio::spawn(sender.send_request(request));
        tokio::time::timeout(DEADLINE, entered.notified())
            .await
            .expect("the handler runs");
        assert_eq!(
            stop_and_wait(stop, serving).await,
            Stopped::TimedOut { open: 1 }
        );
        assert!(
            dropped.load(Ordering::SeqCst),
            "the handler still runs after serve returned"
        );
        tokio::time::timeout(DEADLINE, client)
            .await
            .expect("the server closes the connection")
            .unwrap()
            .ok();
    }

    /// A connection handed to an upgrade (a WebSocket), whose stream lives
    /// in a task of the app's, is closed too when `SHUTDOWN_TIMEOUT` passes,
    /// before `serve` returns.
    #[tokio::test]
    async fn an_upgraded_connection_past_the_shutdown_timeout_is_closed_before_serve_returns() {
        use axum::extract::ws::WebSocketUpgrade;
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let app = axum::Router::new().route(
            "/ws",
            axum::routing::get(|ws: WebSocketUpgrade| async move {
                // Waits for messages, as a chat or a feed does: idle here.
                ws.on_upgrade(
                    |mut socket| async move { while let Some(Ok(_)) = socket.recv().await {} },
                )
            }),
        );
        let (stop, serving) = start_with(
            vec![(
                Listener::Tcp(tcp),
                Wire::default(),
                crate::routes::service(app, LIMITS),
            )],
            Arc::new(Metrics::new([])),
            Duration::from_millis(200),
            Stopping::new(),
        );
        let mut client = TcpStream::connect(addr).await.unwrap();
        upgrade(&mut client, "/ws").await;
        assert_eq!(
            stop_and_wait(stop, serving).await,
            Stopped::TimedOut { open: 1 }
        );
        let read = read_until_closed(&mut client).await;
        assert!(read.is_empty(), "{}", String::from_utf8_lossy(&read));
    }

    /// An upgraded connection that only writes (a feed: never `Pending`,
    /// its task waits on a timer) is closed too when `SHUTDOWN_TIMEOUT`
    /// passes, before `serve` returns.
    #[tokio::test]
    async fn an_upgraded_feed_past_the_shutdown_timeout_is_closed_before_serve_returns() {
        use axum::extract::ws::{Message, WebSocketUpgrade};
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let app = axum::Router::new().route(
            "/feed",
            axum::routing::get(|ws: WebSocketUpgrade| async move {
                ws.on_upgrade(|mut socket| async move {
                    while socket.send(Message::text("tick")).await.is_ok() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
            }),
        );
        let (stop, serving) = start_with(
            vec![(
                Listener::Tcp(tcp),
                Wire::default(),
                crate::routes::service(app, LIMITS),
            )],
            Arc::new(Metrics::new([])),
            Duration::from_millis(200),
            Stopping::new(),
        );
        let mut client = TcpStream::connect(addr).await.unwrap();
        upgrade(&mut client, "/feed").await;
        assert_eq!(
            stop_and_wait(stop, serving).await,
            Stopped::TimedOut { open: 1 }
        );
        // Ticks sent before the end may still be buffered; then the end.
        read_until_closed(&mut client).await;
    }

    /// Every request can extract `Stopping`: not begun while serving, and
    /// its `wait` completes once the stop begins.
    #[tokio::test]
    async fn a_handler_learns_that_the_stop_began() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let entered = Arc::new(Notify::new());
        let app = axum::Router::new().route(
            "/wait",
            axum::routing::get({
                let entered = Arc::clone(&entered);
                move |stopping: Stopping| async move {
                    let before = stopping.is_stopping();
                    entered.notify_one();
                    stopping.wait().await;
                    format!("stopping {before}, then {}", stopping.is_stopping())
                }
            }),
        );
        let stopping = Stopping::new();
        let (stop, serving) = start_with(
            vec![(
                Listener::Tcp(tcp),
                Wire::default(),
                crate::routes::service(app, LIMITS),
            )],
            Arc::new(Metrics::new([])),
            Duration::from_secs(5),
            stopping.clone(),
        );
        let client = tokio::spawn(send(
            TcpStream::connect(addr).await.unwrap(),
            "GET /wait HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ));
        tokio::time::timeout(DEADLINE, entered.notified())
            .await
            .expect("the handler runs");
        stopping.begin();
        let response = tokio::time::timeout(DEADLINE, client)
            .await
            .expect("the handler ends once the stop begins")
            .unwrap();
        assert!(
            response.ends_with("stopping false, then true"),
            "{response}"
        );
        assert_eq!(stop_and_wait(stop, serving).await, Stopped::Drained);
    }

    /// Tells its `Notify` when dropped: the response that holds it is gone.
    struct NotifyOnDrop(Arc<Notify>);

    impl Drop for NotifyOnDrop {
        fn drop(&mut self) {
            self.0.notify_one();
        }
    }

    /// A route at `/endless` whose response never ends (64 KiB chunks, as
    /// fast as they are taken), and a `Notify` told when it is dropped.
    fn endless_response() -> (axum::Router, Arc<Notify>) {
        let dropped = Arc::new(Notify::new());
        let app = axum::Router::new().route(
            "/endless",
            axum::routing::get({
                let dropped = Arc::clone(&dropped);
                move || {
                    let guard = NotifyOnDrop(Arc::clone(&dropped));
                    async move {
                        let chunks = futures_util::stream::repeat_with(move || {
                            let _held = &guard;
                            Ok::<_, Infallible>(Bytes::from(vec![b'x'; 64 * 1024]))
                        });
                        axum::body::Body::from_stream(chunks)
                    }
                }
            }),
        );
        (app, dropped)
    }

    /// Limits with a short `WRITE_TIMEOUT`.
    const WRITE_LIMITS: Limits = Limits {
        write_timeout: Duration::from_secs(1),
        ..LIMITS
    };

    /// HTTP/1.1: a client that asks for a response and never reads it pins
    /// the response (and whatever it holds) until `WRITE_TIMEOUT`, then the
    /// connection is closed.
    #[tokio::test]
    async fn a_response_the_client_never_reads_is_closed_at_the_write_timeout() {
        use tokio::io::AsyncWriteExt;
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let (app, dropped) = endless_response();
        let metrics = Arc::new(Metrics::new([]));
        let (stop, serving) = start_limited(
            vec![(
                Listener::Tcp(tcp),
                Wire::default(),
                crate::routes::service(app, LIMITS),
            )],
            Arc::clone(&metrics),
            Duration::from_secs(5),
            Stopping::new(),
            WRITE_LIMITS,
        );
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET /endless HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        // The client reads nothing: the server's writes wait, then it gives up.
        tokio::time::timeout(DEADLINE, dropped.notified())
            .await
            .expect("the response is dropped at the write timeout");
        read_until_closed(&mut client).await;
        assert!(
            metrics
                .render()
                .contains("portkeeper_write_timeouts_total 1\n")
        );
        assert_eq!(stop_and_wait(stop, serving).await, Stopped::Drained);
    }

    /// HTTP/2: a client whose stream windows start at 0 and never open
    /// holds every response it asks for; the connection is closed at
    /// `WRITE_TIMEOUT`, and the responses with it.
    #[tokio::test]
    async fn an_http2_window_never_opened_is_closed_at_the_write_timeout() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let (app, dropped) = endless_response();
        let (stop, serving) = start_limited(
            vec![(
                Listener::Tcp(tcp),
                Wire::default(),
                crate::routes::service(app, LIMITS),
            )],
            Arc::new(Metrics::new([])),
            Duration::from_secs(5),
            Stopping::new(),
            WRITE_LIMITS,
        );
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, connection) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .initial_stream_window_size(0)
                .handshake(TokioIo::new(stream))
                .await
                .unwrap();
        let client = tokio::spawn(connection);
        let request = Request::get(format!("http://{addr}/endless"))
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        // The head arrives (headers are not flow-controlled); the body is never read.
        let response = tokio::time::timeout(DEADLINE, sender.send_request(request))
            .await
            .expect("the response head arrives")
            .unwrap();
        tokio::time::timeout(DEADLINE, dropped.notified())
            .await
            .expect("the response is dropped at the write timeout");
        tokio::time::timeout(DEADLINE, client)
            .await
            .expect("the server closes the connection")
            .unwrap()
            .ok();
        drop(response);
        assert_eq!(stop_and_wait(stop, serving).await, Stopped::Drained);
    }

    /// Serves `GET /big`, a body of `size` bytes in one chunk, with a
    /// header timeout of 300 ms: for the clients that read late.
    async fn serve_big_body(
        size: usize,
    ) -> (
        SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<Stopped>,
    ) {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let body = Bytes::from(vec![b'x'; size]);
        let app =
            axum::Router::new().route("/big", axum::routing::get(move || async move { body }));
        let limits = Limits {
            header_read_timeout: Duration::from_millis(300),
            ..LIMITS
        };
        let (stop, serving) = start_limited(
            vec![(
                Listener::Tcp(tcp),
                Wire::default(),
                crate::routes::service(app, limits),
            )],
            Arc::new(Metrics::new([])),
            Duration::from_secs(5),
            Stopping::new(),
            limits,
        );
        (addr, stop, serving)
    }

    /// The idle clock does not run while a response waits to be written:
    /// a response that hyper took whole (its body has ended) but still
    /// writes to a client that reads late is not cut at
    /// `HEADER_READ_TIMEOUT`.
    #[tokio::test]
    async fn a_response_still_being_written_is_not_idleness() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const SIZE: usize = 64 * 1024 * 1024;
        let (addr, stop, serving) = serve_big_body(SIZE).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        // Reads late, as a client on a loaded machine does: several header
        // timeouts pass while the server waits to write.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let read = read_until_closed(&mut client).await;
        let body_at = read.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert_eq!(read.len() - body_at, SIZE, "the response was cut");
        let _ = client.read(&mut [0]).await;
        assert_eq!(stop_and_wait(stop, serving).await, Stopped::Drained);
    }

    /// The same over HTTP/2: a response of one large chunk, which h2 sends
    /// as the client's window opens, is not cut at `HEADER_READ_TIMEOUT`
    /// while the client reads late.
    #[tokio::test]
    async fn an_http2_response_still_being_sent_is_not_idleness() {
        use http_body_util::BodyExt;
        const SIZE: usize = 4 * 1024 * 1024;
        let (addr, stop, serving) = serve_big_body(SIZE).await;
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(stream),
        )
        .await
        .unwrap();
        let client = tokio::spawn(connection);
        let request = Request::get(format!("http://{addr}/big"))
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let response = tokio::time::timeout(DEADLINE, sender.send_request(request))
            .await
            .expect("the response head arrives")
            .unwrap();
        // Reads late: the window fills, and several header timeouts pass
        // while the server waits for it to open.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let body = tokio::time::timeout(DEADLINE, response.into_body().collect())
            .await
            .expect("the body arrives")
            .expect("the response was cut")
            .to_bytes();
        assert_eq!(body.len(), SIZE);
        drop(sender);
        let _ = tokio::time::timeout(DEADLINE, client).await;
        assert_eq!(stop_and_wait(stop, serving).await, Stopped::Drained);
    }

    /// A WebSocket upgrade answered during the drain keeps its
    /// `Connection: upgrade` (`close` in its place would break the
    /// handshake), and the WebSocket works.
    #[tokio::test]
    async fn a_101_during_the_drain_keeps_connection_upgrade() {
        use axum::extract::ws::WebSocketUpgrade;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let app = axum::Router::new().route(
            "/ws",
            axum::routing::get(|ws: WebSocketUpgrade| async move {
                ws.on_upgrade(|mut socket| async move {
                    while let Some(Ok(message)) = socket.recv().await {
                        if socket.send(message).await.is_err() {
                            break;
                        }
                    }
                })
            }),
        );
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (stream, peer) = tcp.accept().await.unwrap();
        // A connection open and idle when the stop begins: it is served
        // through its idle grace (here long enough never to end first).
        let stop = Arc::new(Stop::default());
        stop.begin();
        let tracker = TaskTracker::new();
        let metrics = Arc::new(Metrics::new([]));
        let output = Arc::new(Output::new());
        let stream = TrackedIo {
            io: Stream::Left(stream),
            home: None,
            kill: Arc::default(),
            closing: Closing::Home,
            output: Arc::clone(&output),
            write_blocked: false,
            _permit: None,
            _open: tracker.token(),
            _counted: metrics.connections().open(),
        };
        let connection = Connection {
            output,
            peer: Peer::Tcp(peer),
            requests: tracker.token(),
            stop,
            metrics,
            idle_grace: DEADLINE,
            limits: LIMITS,
            stopping: Stopping::new(),
            wire: Wire::default(),
            #[cfg(feature = "tls")]
            handshake: None,
        };
        let serving = tokio::spawn(connection.serve(stream, crate::routes::service(app, LIMITS)));
        let head = upgrade(&mut client, "/ws").await.to_ascii_lowercase();
        assert!(head.contains("\r\nconnection: upgrade\r\n"), "{head}");
        assert!(!head.contains("close"), "{head}");
        // A masked text frame "hi", echoed back unmasked.
        let mask = [1, 2, 3, 4];
        let mut frame = vec![0x81, 0x80 | 2, 1, 2, 3, 4];
        frame.extend(b"hi".iter().zip(mask).map(|(b, m)| b ^ m));
        client.write_all(&frame).await.unwrap();
        let mut echo = [0; 4];
        tokio::time::timeout(DEADLINE, client.read_exact(&mut echo))
            .await
            .expect("the WebSocket answers")
            .unwrap();
        assert_eq!(echo, [0x81, 2, b'h', b'i']);
        drop(client);
        tokio::time::timeout(DEADLINE, serving)
            .await
            .expect("the connection ends")
            .unwrap();
        tracker.close();
        tokio::time::timeout(DEADLINE, tracker.wait())
            .await
            .expect("the upgraded stream is dropped");
    }
}
