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
use portkeeper::listener::{self, ListenError, Source};
use portkeeper::upgrade::{self, Succession, UpgradePlan};
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
            // On the journal's stream, "<3>" files it at priority err, not info.
            let journal =
                notify::stderr_is_journal_stream(std::env::var("JOURNAL_STREAM").ok().as_deref());
            let prefix = if journal { notify::ERR_PREFIX } else { "" };
            eprintln!("{prefix}portkeeper: error: {err:#}");
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

    // Read before anything may replace the file: afterwards /proc/self/exe
    // names the deleted inode, and this path the new executable.
    let executable = std::env::current_exe();
    let handoff_notify = env.get(upgrade::HANDOFF_NOTIFY_VAR).map(str::to_owned);
    let bound = open_listener(&config, handoff_notify.is_some())?;
    warn_if_debug_is_exposed(config.debug, bound.info.address);
    let supervision = supervision(&env);
    let succession = succession(&config, &bound, executable, handoff_notify.as_deref());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Boxed: the serving future is about 7 KB, and `block_on` hands it down
    // through several frames by value, each copy on fresh stack pages. With
    // this and the boxed shutdown future in `lifecycle::run`, 10 -> 4 stack
    // pages are faulted in before the first accept (measured with ftrace).
    runtime
        .block_on(Box::pin(lifecycle::run(
            config,
            bound,
            supervision,
            succession,
        )))
        .context("cannot serve the listener")?;
    Ok(())
}

/// Opens the listener by the chain. `from_predecessor`: a binary upgrade
/// started us, so a socket handed to our pid is reported as `handoff`.
#[cfg(unix)]
fn open_listener(config: &Config, from_predecessor: bool) -> Result<listener::Bound, ListenError> {
    use listener::inherit::{self, Handoff, HandoffVars};
    // Lossy on purpose: a non-UTF-8 LISTEN_FDS then fails to parse and is
    // reported by name, instead of being taken for "not set".
    let vars = HandoffVars::from_lookup(|name| {
        std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
    });
    let result = inherit::plan(&vars, std::process::id()).and_then(|handoff| {
        let offer = match handoff {
            Handoff::Offered(mut offer) => {
                if from_predecessor && offer.source == Source::Systemd {
                    offer.source = Source::Handoff;
                }
                Some(offer)
            }
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
    forget_handoff(
        HandoffVars::NAMES
            .iter()
            .chain([&upgrade::HANDOFF_NOTIFY_VAR]),
    );
    result
}

#[cfg(not(unix))]
fn open_listener(config: &Config, _from_predecessor: bool) -> Result<listener::Bound, ListenError> {
    listener::open(&config.listen_fd_name, &config.bind)
}

/// Removes the handoff variables (LISTEN_*, and a predecessor's readiness
/// socket) so that no child process mistakes them for its own (the fds
/// themselves are close-on-exec).
#[cfg(unix)]
#[allow(unsafe_code)]
fn forget_handoff<'a>(names: impl IntoIterator<Item = &'a &'a str>) {
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

/// How to start a successor, and the predecessor waiting for our READY=1.
fn succession(
    config: &Config,
    bound: &listener::Bound,
    executable: std::io::Result<std::path::PathBuf>,
    handoff_notify: Option<&str>,
) -> Succession {
    let plan = match executable {
        Ok(executable) => Some(UpgradePlan {
            executable,
            args: std::env::args_os().skip(1).collect(),
            watch_executable: config.reload,
        }),
        Err(err) => {
            tracing::warn!(error = %err, "cannot tell the executable's path");
            None
        }
    };
    let predecessor = match handoff_notify {
        // Only a process that really took the socket over may report ready:
        // one that bound a port of its own would move the service elsewhere.
        Some(value) if bound.info.source == Source::Handoff => {
            notify::Notifier::connect(Some(value)).unwrap_or_else(|err| {
                let cause = std::error::Error::source(&err).map(ToString::to_string);
                tracing::warn!(
                    value,
                    error = cause.unwrap_or_default(),
                    "{} cannot be reached; the process that started us will time out",
                    upgrade::HANDOFF_NOTIFY_VAR
                );
                None
            })
        }
        Some(value) => {
            tracing::warn!(
                value,
                source = %bound.info.source,
                "{} is set but no socket was handed to us; not reporting to it",
                upgrade::HANDOFF_NOTIFY_VAR
            );
            None
        }
        None => None,
    };
    Succession { plan, predecessor }
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
