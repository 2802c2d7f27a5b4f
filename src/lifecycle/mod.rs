//! From an open listener to a clean exit: announce, tell systemd, serve, stop on a signal
//! or hand over to a new executable.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use tokio::sync::watch;

use crate::announce;
use crate::auth::Auth;
use crate::error::Error;
use crate::listener::{Bound, Handed, ListenerInfo, Role, Socket, Source};
use crate::metrics::Metrics;
use crate::notify::{self, Notifier};
use crate::routes::{self, AppState, Builtins, Readiness, RouteSettings};
use crate::serve::Limits;
use crate::serve::{self, ProxySettings, ServeOptions, Stopped, Wire};
use crate::stopping::Stopping;
use crate::upgrade::{Departure, Succession, Upgrader};

mod settings;
pub(crate) use settings::StopSettings;

/// What the process learned about its manager before the runtime started.
#[derive(Debug, Default)]
pub(crate) struct Supervision {
    /// The `NOTIFY_SOCKET` connection, under systemd's `Type=notify`.
    pub(crate) notifier: Option<Notifier>,
    /// How often to send `WATCHDOG=1`, when `WatchdogSec=` is set.
    pub(crate) watchdog_interval: Option<Duration>,
}

/// What the marked listeners need at run time (`startup::edge` checks and
/// loads it before the runtime).
#[derive(Clone)]
pub(crate) struct Edge {
    /// The TLS acceptor, when a listener serves TLS.
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<crate::tls::Tls>,
    /// The peers allowed to send PROXY headers.
    pub(crate) proxy: Arc<ProxySettings>,
}

/// Everything prepared before the runtime, to be served inside it.
pub(crate) struct Plan {
    pub(crate) stop: StopSettings,
    pub(crate) limits: Limits,
    pub(crate) auth: Auth,
    /// `DEBUG`: the debug routes.
    pub(crate) debug: bool,
    /// The name that gives a handed-over listener the app's role in a successor.
    pub(crate) fd_name: String,
    /// Whether SIGTERM and SIGINT stop the server (`Server::signals`).
    pub(crate) signals: bool,
    /// Whether SIGUSR2, a service's SIGHUP and `RELOAD` start a successor
    /// (`Server::upgrades`).
    pub(crate) upgrades: bool,
    pub(crate) bound: Bound,
    pub(crate) supervision: Supervision,
    pub(crate) succession: Succession,
    pub(crate) builtins: Builtins,
    pub(crate) shutdown: Option<Pin<Box<dyn Future<Output = ()> + Send + 'static>>>,
    pub(crate) edge: Edge,
}

/// Serves until SIGINT, SIGTERM or a terminal's hang-up (or the user's
/// shutdown future), or until a binary upgrade (SIGUSR2, a service's SIGHUP,
/// `RELOAD`) has handed the listener to a new process; then drains.
/// Must run inside a tokio runtime.
pub(crate) async fn run(plan: Plan, app: Router) -> Result<(), Error> {
    let Plan {
        stop: stop_settings,
        limits,
        auth,
        debug,
        fd_name,
        signals,
        upgrades,
        bound,
        supervision,
        succession,
        builtins,
        shutdown: user_shutdown,
        edge,
    } = plan;
    // Signal dispositions first: a signal that comes right after READY=1
    // must find our handlers installed, not the default action (terminate);
    // and they go back to what they were when this function returns.
    #[cfg(unix)]
    let _held = crate::signals::Held::new(&held_signals(signals, upgrades));
    let stop_requests = if signals {
        StopSignals::install()
    } else {
        StopSignals::none()
    };
    let notifier = supervision.notifier.map(Arc::new);
    let upgrader = if upgrades {
        Upgrader::new(
            succession.plan,
            handed_over_set(&bound, &fd_name),
            notifier.clone(),
        )
    } else {
        Upgrader::off()
    };
    let primary = bound.primary().info.clone();
    let primary_reach = announce::reach(&primary);
    for listener in &bound.listeners {
        if listener.info.address == primary.address {
            announce::log_serving(&listener.info, &primary_reach);
        } else {
            announce::log_serving(&listener.info, &announce::reach(&listener.info));
        }
    }
    let has_admin = bound.listeners.iter().any(|l| l.info.role == Role::Admin);
    let mut infos: Vec<ListenerInfo> = bound.listeners.iter().map(|l| l.info.clone()).collect();
    // The first app listener first, as `/info`'s readers expect.
    infos.sort_by_key(|info| info.role != Role::App);
    let metrics = Arc::new(Metrics::new(&infos));
    let readiness = Readiness::new();
    // Every listener has the same source (one handoff, or one bind plan).
    let delay = shutdown_delay(stop_settings.shutdown_delay, primary.source);
    let state = Arc::new(AppState {
        listeners: infos,
        started: Instant::now(),
        readiness: readiness.clone(),
        metrics: Arc::clone(&metrics),
    });
    // Registered with tokio before READY=1: a failure here must come while
    // the predecessor (or the manager) still holds the sockets.
    let settings = RouteSettings {
        builtins,
        auth,
        debug,
    };
    let mut listeners = Vec::with_capacity(bound.listeners.len());
    #[cfg(unix)]
    let mut files = Vec::new();
    // Where a `redirect` listener sends its requests: the first TLS port.
    let tls_port = bound
        .listeners
        .iter()
        .filter(|l| l.info.marks.tls)
        .find_map(|l| l.info.address.tcp())
        .map(|address| address.port());
    for listener in bound.listeners {
        let marks = listener.info.marks;
        let router = if marks.redirect {
            crate::redirect::router(tls_port)
        } else {
            routes::router_for(
                listener.info.role,
                has_admin,
                app.clone(),
                Arc::clone(&state),
                &settings,
            )
        };
        let wire = Wire {
            #[cfg(feature = "tls")]
            tls: edge.tls.clone().filter(|_| marks.tls),
            proxy: marks.proxy.then(|| Arc::clone(&edge.proxy)),
        };
        let socket = register(listener.socket)
            .map_err(|err| Error::system("cannot register the listener with tokio", err))?;
        listeners.push((socket, wire, routes::service(router, limits)));
        #[cfg(unix)]
        files.extend(listener.file);
    }
    let url = primary_reach
        .first()
        .map(String::as_str)
        .unwrap_or_default();
    let ready = notify::ready_message(&format!("serving {url} (listener from {})", primary.source));
    match (&succession.predecessor, &notifier) {
        // Started by a handoff: our predecessor waits for READY=1 and then
        // tells the manager (if any) that we are its main process now.
        (Some(predecessor), _) => predecessor.notify(&ready),
        (None, Some(notifier)) => notifier.notify(&ready),
        (None, None) => {}
    }
    // New handshakes take a changed certificate pair; ends with serving.
    #[cfg(feature = "tls")]
    let _rotation = edge
        .tls
        .clone()
        .map(|tls| AbortOnDrop(tokio::spawn(tls.watch_files(Arc::clone(&metrics)))));
    let watchdog = notifier.as_ref().and_then(|notifier| {
        let interval = supervision.watchdog_interval?;
        Some(AbortOnDrop(tokio::spawn(keep_watchdog_fed(
            Arc::clone(notifier),
            interval,
        ))))
    });

    let stopping = Stopping::new();
    let mut first_stop = stop_requests.clone();
    let mut stop_during_delay = stop_requests.clone();
    let handed_over = Arc::new(AtomicBool::new(false));
    let shutdown = {
        let notifier = notifier.clone();
        let handed_over = Arc::clone(&handed_over);
        let stopping_signal = stopping.clone();
        async move {
            let user_shutdown = async {
                match user_shutdown {
                    Some(signal) => signal.await,
                    None => std::future::pending().await,
                }
            };
            let stopping = tokio::select! {
                signal = first_stop.nth(1) => {
                    tracing::info!(signal = signal.name, "stop requested");
                    true
                }
                () = user_shutdown => {
                    tracing::info!("stop requested by the application");
                    true
                }
                departure = upgrader.until_handed_over() => match departure {
                    Departure::HandedOver(successor) => {
                        // No STOPPING=1: the service goes on, in the successor,
                        // which also feeds the watchdog from now on (systemd
                        // would reject our pings: we are no longer MAINPID).
                        if let Some(watchdog) = &watchdog {
                            watchdog.0.abort();
                        }
                        tracing::info!(successor, "handed the listeners over; finishing open requests");
                        handed_over.store(true, Ordering::Release);
                        false
                    }
                    Departure::HungUp => {
                        tracing::info!("terminal hung up; stopping");
                        true
                    }
                    Departure::WatcherGone => true,
                },
            };
            // Long-lived streams may end now, on a stop and on a handoff alike.
            stopping_signal.begin();
            if stopping {
                // Not on a handoff: the socket stays open in the successor,
                // which is ready, so the instance is too.
                readiness.stop();
                if let Some(notifier) = &notifier {
                    notifier.notify(&notify::stopping_message("finishing open requests"));
                }
                if !delay.is_zero() {
                    tracing::info!(
                        delay_seconds = delay.as_secs(),
                        "SHUTDOWN_DELAY: serving on with /ready at 503 before the drain"
                    );
                    // The upgrader is gone with the select above: an upgrade
                    // asked for now is refused, and said so.
                    let mut upgrade_requests = upgrade_requests_during_delay(upgrades);
                    let delay_over = tokio::time::sleep(delay);
                    tokio::pin!(delay_over);
                    loop {
                        tokio::select! {
                            () = &mut delay_over => break,
                            // A second stop request ends the delay; `force`
                            // then ends the drain at once.
                            _ = stop_during_delay.nth(2) => break,
                            () = next_request(&mut upgrade_requests) => tracing::warn!(
                                "SIGUSR2 during SHUTDOWN_DELAY: this process is stopping, so no upgrade is started"
                            ),
                        }
                    }
                }
            }
        }
    };
    let mut second_stop = stop_requests.clone();
    let forced = Arc::new(std::sync::Mutex::new(None));
    let force = {
        let forced = Arc::clone(&forced);
        async move {
            let signal = second_stop.nth(2).await;
            tracing::warn!(
                signal = signal.name,
                "second stop request; stopping at once without waiting for open connections"
            );
            *forced.lock().unwrap_or_else(|e| e.into_inner()) = Some(signal);
        }
    };

    let options = ServeOptions {
        shutdown_timeout: stop_settings.shutdown_timeout,
        limits,
        metrics: Arc::clone(&metrics),
        stopping,
    };
    let stopped = serve::serve(listeners, shutdown, force, options).await;
    // A socket file we created goes with a normal stop; after a handoff the
    // successor serves it.
    #[cfg(unix)]
    if !handed_over.load(Ordering::Acquire) {
        for file in &files {
            file.remove();
        }
    }
    match stopped {
        Stopped::Drained => {
            tracing::info!("stopped");
            Ok(())
        }
        Stopped::TimedOut { open } => {
            tracing::warn!(
                open,
                timeout_seconds = stop_settings.shutdown_timeout.as_secs(),
                "SHUTDOWN_TIMEOUT passed; closing the connections still open"
            );
            Ok(())
        }
        Stopped::Forced { open } => {
            let signal = forced
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .unwrap_or(StopSignal::TERM);
            Err(Error::forced(signal.name, signal.number, open))
        }
    }
}

/// The `SHUTDOWN_DELAY` that applies, decided by where the sockets came from:
/// none when systemd or systemfd handed them over, since their copy outlives
/// this process and keeps queueing connections for the next one, so no
/// connection can be refused and no load balancer has to be told. A socket we
/// bound (or got from a predecessor by an upgrade, which may have bound it)
/// closes with us, whoever supervises us (a `NOTIFY_SOCKET` says nothing
/// about that), so the delay applies.
fn shutdown_delay(configured: Duration, source: Source) -> Duration {
    if !configured.is_zero() && matches!(source, Source::Systemd | Source::Systemfd) {
        tracing::info!(
            delay_seconds = configured.as_secs(),
            source = source.as_str(),
            "SHUTDOWN_DELAY is not applied: the listening socket outlives this process"
        );
        return Duration::ZERO;
    }
    configured
}

/// SIGUSR2 while the stop's delay runs, when upgrades are on: no upgrade
/// can start any more, but the request deserves a log line.
#[cfg(unix)]
fn upgrade_requests_during_delay(upgrades: bool) -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{SignalKind, signal};
    upgrades
        .then(|| signal(SignalKind::user_defined2()).ok())
        .flatten()
}

#[cfg(not(unix))]
fn upgrade_requests_during_delay(_upgrades: bool) -> Option<std::convert::Infallible> {
    None
}

/// Completes at the next request; never without a handler.
#[cfg(unix)]
async fn next_request(requests: &mut Option<tokio::signal::unix::Signal>) {
    let received = match requests {
        Some(signal) => signal.recv().await.is_some(),
        None => false,
    };
    if !received {
        std::future::pending::<()>().await;
    }
}

#[cfg(not(unix))]
async fn next_request(_requests: &mut Option<std::convert::Infallible>) {
    std::future::pending().await
}

/// Registers a listening socket with tokio's reactor.
fn register(socket: Socket) -> std::io::Result<serve::Listener> {
    Ok(match socket {
        Socket::Tcp(socket) => serve::Listener::Tcp(tokio::net::TcpListener::from_std(socket)?),
        #[cfg(unix)]
        Socket::Unix(socket) => serve::Listener::Unix(tokio::net::UnixListener::from_std(socket)?),
    })
}

/// Every listener as a successor gets it: a duplicate fd and the name that
/// gives it the same role there (`LISTEN_FD_NAME`, or `admin`).
fn handed_over_set(bound: &Bound, fd_name: &str) -> Vec<Handed> {
    #[cfg(unix)]
    {
        let mut set = Vec::new();
        for listener in &bound.listeners {
            let name = listener.info.marks.fd_name(listener.info.role, fd_name);
            match listener.socket.duplicate() {
                Ok(fd) => set.push(Handed { fd, name }),
                Err(err) => {
                    tracing::warn!(error = %err, address = %listener.info.address, "cannot keep a copy of the listener; binary upgrades are off");
                    return Vec::new();
                }
            }
        }
        set
    }
    #[cfg(not(unix))]
    {
        let _ = (bound, fd_name);
        Vec::new()
    }
}

/// Sends `WATCHDOG=1` while the runtime is alive: a hung runtime stops the
/// pings and systemd restarts the service.
async fn keep_watchdog_fed(notifier: Arc<Notifier>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    loop {
        ticks.tick().await;
        notifier.notify(notify::WATCHDOG);
    }
}

/// A stop signal as received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StopSignal {
    name: &'static str,
    number: i32,
}

impl StopSignal {
    const TERM: StopSignal = StopSignal {
        name: "SIGTERM",
        number: 15,
    };
    const INT: StopSignal = StopSignal {
        name: "SIGINT",
        number: 2,
    };
}

/// The stop signals received so far, counted: the first begins the drain,
/// the second cuts it short.
#[derive(Clone)]
struct StopSignals {
    received: watch::Receiver<(u32, StopSignal)>,
    /// The task that counts signals, ended with the last clone.
    _counting: Option<Arc<AbortOnDrop>>,
}

impl StopSignals {
    /// Installs the SIGINT and SIGTERM handlers now, and counts what arrives.
    fn install() -> Self {
        let (count, received) = watch::channel((0, StopSignal::TERM));
        let mut counting = None;
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(mut term), Ok(mut int)) => {
                    counting = Some(tokio::spawn(async move {
                        loop {
                            let signal = tokio::select! {
                                Some(()) = term.recv() => StopSignal::TERM,
                                Some(()) = int.recv() => StopSignal::INT,
                                else => break,
                            };
                            count.send_modify(|(n, last)| {
                                *n += 1;
                                *last = signal;
                            });
                        }
                    }));
                }
                _ => tracing::error!("cannot install signal handlers; stop with SIGKILL"),
            }
        }
        #[cfg(not(unix))]
        {
            counting = Some(tokio::spawn(async move {
                while tokio::signal::ctrl_c().await.is_ok() {
                    count.send_modify(|(n, last)| {
                        *n += 1;
                        *last = StopSignal::INT;
                    });
                }
            }));
        }
        StopSignals {
            received,
            _counting: counting.map(|task| Arc::new(AbortOnDrop(task))),
        }
    }

    /// No handlers: no signal is ever counted (`Server::signals(false)`).
    fn none() -> Self {
        let (_, received) = watch::channel((0, StopSignal::TERM));
        StopSignals {
            received,
            _counting: None,
        }
    }

    /// Completes once the `n`th stop signal has arrived, with that signal.
    async fn nth(&mut self, n: u32) -> StopSignal {
        // The `Ref` is let go of before any other await: holding it would
        // make the serve future not `Send`.
        let seen = self
            .received
            .wait_for(|(count, _)| *count >= n)
            .await
            .map(|seen| seen.1);
        match seen {
            Ok(signal) => signal,
            // No handlers (or they are gone): no signal will come.
            Err(_) => std::future::pending().await,
        }
    }
}

/// The signals one server handles: the stop signals unless the host handles
/// them, the upgrade signals unless upgrades are off.
#[cfg(unix)]
fn held_signals(signals: bool, upgrades: bool) -> Vec<i32> {
    use crate::signals::{SIGHUP, SIGINT, SIGTERM, SIGUSR2};
    let mut held = Vec::new();
    if signals {
        held.extend([SIGTERM, SIGINT]);
    }
    if upgrades {
        held.extend([SIGUSR2, SIGHUP]);
    }
    held
}

/// A task of ours, aborted when its handle goes: nothing we spawn outlives `run`.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
