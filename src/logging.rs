//! Logging: journald when systemd started us and the journal is reachable, else stderr.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Where log lines went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    /// Structured entries in the systemd journal.
    Journald,
    /// Text lines on stderr.
    Stderr,
}

/// Installs the global subscriber with `filter` (already validated by `config`).
///
/// `under_systemd` is true when `JOURNAL_STREAM` is set. The journal's socket
/// is missing in containers and CI even then, and a missing journal must
/// never stop the server, so that case falls back to stderr with a warning.
pub fn init(filter: &str, under_systemd: bool) -> LogTarget {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let journald = if under_systemd {
        Some(tracing_journald::layer())
    } else {
        None
    };
    match journald {
        Some(Ok(layer)) => {
            tracing_subscriber::registry()
                .with(filter)
                .with(layer)
                .init();
            LogTarget::Journald
        }
        fallback => {
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .with_target(false)
                .init();
            if let Some(Err(err)) = fallback {
                tracing::warn!(error = %err, "journald is not reachable; logging to stderr");
            }
            LogTarget::Stderr
        }
    }
}
