//! Logging: journald when systemd started us and the journal is reachable, else stderr.
//!
//! Under systemd (`JOURNAL_STREAM` set) events go to journald's native socket
//! through `tracing-journald`, one journal entry per event: the message is
//! `MESSAGE`, the level is `PRIORITY` (ERROR 3, WARN 4, INFO 5 "notice",
//! DEBUG 6, TRACE 7: the crate's default mapping), `SYSLOG_IDENTIFIER` is the
//! executable's name, and every event field becomes a journal field named in
//! upper case with an `F_` prefix. So the start-up event's `source`, `address`,
//! `port`, `pid`, `fd` and `fd_name` arrive as `F_SOURCE`, `F_ADDRESS`, ...,
//! and `journalctl -u portkeeper F_SOURCE=systemd` finds them. The prefix keeps
//! our names from colliding with journald's own fields (`PRIORITY`, `MESSAGE`).
//!
//! Anywhere else, and whenever the journal cannot be reached, plain lines go
//! to stderr (which systemd would also collect, as text), written by
//! `logging::lines` in the format of `tracing-subscriber`'s `fmt`.

use std::io::IsTerminal;

use lines::StderrLines;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

mod lines;

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
    let filter: Targets = filter
        .parse()
        .unwrap_or_else(|_| Targets::new().with_default(tracing::Level::INFO));
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
            StderrLines::new(std::io::stderr().is_terminal())
                .with(filter)
                .init();
            if let Some(Err(err)) = fallback {
                tracing::warn!(error = %err, "journald is not reachable; logging to stderr");
            }
            LogTarget::Stderr
        }
    }
}
