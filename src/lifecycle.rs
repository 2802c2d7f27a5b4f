//! From a bound listener to a clean exit: announce, tell systemd, serve, stop on a signal
//! or hand over to a new executable.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::announce;
use crate::config::Config;
use crate::listener::Bound;
use crate::notify::{self, Notifier};
use crate::server::{self, AppState, ServeOptions, Stopped};
use crate::upgrade::{Departure, Succession, Upgrader};

/// What the process learned about its manager before the runtime started.
#[derive(Debug, Default)]
pub struct Supervision {
    /// The `NOTIFY_SOCKET` connection, under systemd's `Type=notify`.
    pub notifier: Option<Notifier>,
    /// How often to send `WATCHDOG=1`, when `WatchdogSec=` is set.
    pub watchdog_interval: Option<Duration>,
}

/// Serves until SIGINT, SIGTERM or a terminal's SIGHUP, or until a binary
/// upgrade (SIGUSR2, a service's SIGHUP, `RELOAD`) has handed the listener to
/// a new process; then drains. Must run inside a
/// tokio runtime.
pub async fn run(
    config: Config,
    bound: Bound,
    supervision: Supervision,
    succession: Succession,
) -> std::io::Result<Stopped> {
    // Signal handlers first: a signal that comes right after READY=1 must
    // find them installed, not the default action (terminate).
    let stop_signal = stop_signal();
    let notifier = supervision.notifier.map(Arc::new);
    let upgrader = Upgrader::new(
        succession.plan,
        &bound.listener,
        &config.listen_fd_name,
        notifier.clone(),
    );
    let listener = tokio::net::TcpListener::from_std(bound.listener)?;
    let urls = announce::urls_for(bound.info.address);
    announce::log_serving(&bound.info, &urls);
    let state = Arc::new(AppState {
        listener: bound.info,
        started: Instant::now(),
        auth: config.auth.clone(),
        debug: config.debug,
    });
    let url = urls.first().map(String::as_str).unwrap_or_default();
    let ready = notify::ready_message(&format!(
        "serving {url} (listener from {})",
        state.listener.source
    ));
    match (&succession.predecessor, &notifier) {
        // Started by a handoff: our predecessor waits for READY=1 and then
        // tells the manager (if any) that we are its main process now.
        (Some(predecessor), _) => predecessor.notify(&ready),
        (None, Some(notifier)) => notifier.notify(&ready),
        (None, None) => {}
    }
    let watchdog = notifier.as_ref().and_then(|notifier| {
        let interval = supervision.watchdog_interval?;
        Some(tokio::spawn(keep_watchdog_fed(
            Arc::clone(notifier),
            interval,
        )))
    });

    // Boxed, as is the whole of `run` in main: at 2.7 KB inline it made the
    // serve future twice as large, and each move of it touched fresh stack.
    let shutdown = Box::pin({
        let notifier = notifier.clone();
        async move {
            tokio::select! {
                signal = stop_signal => {
                    tracing::info!(signal, "stop requested");
                    if let Some(notifier) = &notifier {
                        notifier.notify(&notify::stopping_message("finishing open requests"));
                    }
                }
                departure = upgrader.until_handed_over() => match departure {
                    Departure::HandedOver(successor) => {
                        // No STOPPING=1: the service goes on, in the successor,
                        // which also feeds the watchdog from now on (systemd
                        // would reject our pings: we are no longer MAINPID).
                        if let Some(watchdog) = &watchdog {
                            watchdog.abort();
                        }
                        tracing::info!(successor, "handed the listener over; finishing open requests");
                    }
                    Departure::HungUp => {
                        tracing::info!("terminal hung up; stopping");
                        if let Some(notifier) = &notifier {
                            notifier.notify(&notify::stopping_message("finishing open requests"));
                        }
                    }
                },
            }
        }
    });
    let options = ServeOptions {
        shutdown_timeout: config.shutdown_timeout,
        limits: config.limits,
    };
    let stopped = server::serve(listener, server::app(state), shutdown, options).await;
    match &stopped {
        Stopped::Drained => tracing::info!("stopped"),
        Stopped::TimedOut { open } => tracing::warn!(
            open,
            timeout_seconds = config.shutdown_timeout.as_secs(),
            "SHUTDOWN_TIMEOUT passed; closing the connections still open"
        ),
    }
    Ok(stopped)
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

/// Installs the SIGINT and SIGTERM handlers now; the future waits for one
/// and returns its name.
fn stop_signal() -> impl std::future::Future<Output = &'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let handlers = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        );
        async move {
            match handlers {
                (Ok(mut term), Ok(mut int)) => tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                },
                _ => {
                    tracing::error!("cannot install signal handlers; stop with SIGKILL");
                    std::future::pending().await
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
        "ctrl-c"
    }
}
