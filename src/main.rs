//! The `portkeeper` binary: config -> logging -> listener -> runtime -> serve -> exit status.
//!
//! Everything that reads or changes the process environment happens here,
//! before the tokio runtime (and so any other thread) exists: changing the
//! environment while another thread may read it is undefined behaviour.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use portkeeper::config::{Config, ConfigError, Environment};
use portkeeper::lifecycle::{self, Supervision};
use portkeeper::listener::{self, ListenError};
use portkeeper::{auth, logging, notify};

/// Exit statuses, from BSD's sysexits.h so service managers can tell them apart.
mod status {
    /// A setting is wrong (EX_CONFIG); the unit file's `RestartPreventExitStatus=78`
    /// keeps systemd from restarting into the same error.
    pub(crate) const CONFIG: u8 = 78;
    /// The port, or every port of the range, is in use (EX_UNAVAILABLE).
    pub(crate) const UNAVAILABLE: u8 = 69;
    /// The system refused the port for lack of privileges (EX_NOPERM).
    pub(crate) const NO_PERMISSION: u8 = 77;
    /// Any other operating-system failure (EX_OSERR).
    pub(crate) const OS_ERROR: u8 = 71;
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line, the whole chain: "cannot listen on ...: <os error>".
            eprintln!("portkeeper: error: {err:#}");
            ExitCode::from(exit_status(&err))
        }
    }
}

fn run() -> anyhow::Result<()> {
    let dotenv = Environment::read_dotenv(Path::new(".env"))?;
    let env = Environment::new(dotenv, std::env::vars_os());
    let config = Config::from_env(&env)?;
    logging::init(&config.log_filter, env.get("JOURNAL_STREAM").is_some());
    tracing::debug!(?config, "configuration");

    auth::log_policy(&config.auth);

    let bound = open_listener(&config)?;
    warn_if_debug_is_exposed(config.debug, bound.info.address);
    let supervision = supervision(&env);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime
        .block_on(lifecycle::run(config, bound, supervision))
        .context("cannot serve the listener")?;
    Ok(())
}

#[cfg(unix)]
fn open_listener(config: &Config) -> Result<listener::Bound, ListenError> {
    use listener::inherit::{self, Handoff, HandoffVars};
    // Lossy on purpose: a non-UTF-8 LISTEN_FDS then fails to parse and is
    // reported by name, instead of being taken for "not set".
    let vars = HandoffVars::from_lookup(|name| {
        std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
    });
    let result = inherit::plan(&vars, std::process::id()).and_then(|handoff| {
        let offer = match handoff {
            Handoff::Offered(offer) => Some(offer),
            Handoff::ForAnotherProcess { pid } => {
                tracing::info!(
                    listen_pid = pid,
                    "LISTEN_FDS is meant for another process; ignoring it"
                );
                None
            }
            Handoff::None => None,
        };
        listener::open(offer.as_ref(), &config.listen_fd_name, &config.bind)
    });
    forget_handoff(&HandoffVars::NAMES);
    result
}

#[cfg(not(unix))]
fn open_listener(config: &Config) -> Result<listener::Bound, ListenError> {
    listener::open(&config.listen_fd_name, &config.bind)
}

/// Removes the LISTEN_* variables so that no child process mistakes our
/// sockets for its own (the fds themselves are close-on-exec).
#[cfg(unix)]
#[allow(unsafe_code)]
fn forget_handoff(names: &[&str]) {
    for name in names {
        if std::env::var_os(name).is_some() {
            // SAFETY: called from `run` before the tokio runtime is built; no
            // other thread exists yet that could read the environment.
            unsafe { std::env::remove_var(name) };
        }
    }
}

/// DEBUG=true is meant for a developer's machine: say so loudly when the
/// socket (whatever its source) is reachable from other hosts.
fn warn_if_debug_is_exposed(debug: bool, address: std::net::SocketAddr) {
    if debug && !address.ip().is_loopback() {
        tracing::warn!(
            %address,
            "DEBUG=true on an address other hosts can reach; use HOST=127.0.0.1 (or ::1) for development, DEBUG=false elsewhere"
        );
    }
}

fn supervision(env: &Environment) -> Supervision {
    let notifier = match notify::Notifier::connect(env.get("NOTIFY_SOCKET")) {
        Ok(notifier) => notifier,
        Err(err) => {
            // Readiness is advice to the manager; serving matters more.
            tracing::warn!(error = %format!("{err:#}"), "cannot notify the service manager");
            None
        }
    };
    Supervision {
        watchdog_interval: notify::watchdog_interval(
            env.get("WATCHDOG_USEC"),
            env.get("WATCHDOG_PID"),
            std::process::id(),
        ),
        notifier,
    }
}

fn exit_status(err: &anyhow::Error) -> u8 {
    if err.downcast_ref::<ConfigError>().is_some() {
        return status::CONFIG;
    }
    match err.downcast_ref::<ListenError>() {
        Some(e) if e.is_configuration() => status::CONFIG,
        Some(e) if e.is_unavailable() => status::UNAVAILABLE,
        Some(e) if e.is_permission() => status::NO_PERMISSION,
        _ => status::OS_ERROR,
    }
}
