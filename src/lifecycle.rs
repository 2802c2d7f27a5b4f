//! From a bound listener to a clean exit: announce, tell systemd, serve, stop on a signal.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::announce;
use crate::config::Config;
use crate::listener::Bound;
use crate::notify::{self, Notifier};
use crate::server::{self, AppState, ServeOptions, Stopped};

/// What the process learned about its manager before the runtime started.
#[derive(Debug, Default)]
pub struct Supervision {
    /// The `NOTIFY_SOCKET` connection, under systemd's `Type=notify`.
    pub notifier: Option<Notifier>,
    /// How often to send `WATCHDOG=1`, when `WatchdogSec=` is set.
    pub watchdog_interval: Option<Duration>,
}

/// Serves until SIGINT or SIGTERM, then drains. Must run inside a tokio runtime.
pub async fn run(
    config: Config,
    bound: Bound,
    supervision: Supervision,
) -> std::io::Result<Stopped> {
    let listener = tokio::net::TcpListener::from_std(bound.listener)?;
    let urls = announce::urls_for(bound.info.address);
    announce::log_serving(&bound.info, &urls);
    let state = Arc::new(AppState {
        listener: bound.info,
        started: Instant::now(),
        auth: config.auth.clone(),
        limits: config.limits,
    });
    let notifier = supervision.notifier.map(Arc::new);
    if let Some(notifier) = &notifier {
        let url = urls.first().map(String::as_str).unwrap_or_default();
        notifier.notify(&notify::ready_message(&format!(
            "serving {url} (listener from {})",
            state.listener.source
        )));
        if let Some(interval) = supervision.watchdog_interval {
            tokio::spawn(keep_watchdog_fed(Arc::clone(notifier), interval));
        }
    }

    let shutdown = {
        let notifier = notifier.clone();
        async move {
            let signal = stop_signal().await;
            tracing::info!(signal, "stop requested");
            if let Some(notifier) = &notifier {
                notifier.notify(&notify::stopping_message("finishing open requests"));
            }
        }
    };
    let options = ServeOptions {
        shutdown_timeout: config.shutdown_timeout,
        header_read_timeout: config.limits.header_read_timeout,
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

/// Waits for SIGINT or SIGTERM and returns its name.
async fn stop_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
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
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "ctrl-c"
    }
}
