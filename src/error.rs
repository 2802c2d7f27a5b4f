//! Why the server could not start or serve, and the exit status that says so.

use std::process::ExitCode;

use crate::listener::ListenError;
use crate::settings::ConfigError;

/// Exit statuses, from BSD's sysexits.h so service managers can tell them apart.
pub(crate) mod status {
    /// A setting is wrong (EX_CONFIG); the unit file's `RestartPreventExitStatus=78`
    /// keeps systemd from restarting into the same error.
    pub(crate) const CONFIG: u8 = 78;
    /// The port, or every port of the range, is in use (EX_UNAVAILABLE).
    pub(crate) const UNAVAILABLE: u8 = 69;
    /// The system refused the port for lack of privileges (EX_NOPERM).
    pub(crate) const NO_PERMISSION: u8 = 77;
    /// Any other operating-system failure (EX_OSERR).
    pub(crate) const OS_ERROR: u8 = 71;
    /// A second SIGINT or SIGTERM cut the drain short: 128 + the signal's
    /// number, as a shell reports a process killed by it.
    pub(crate) const fn forced(signal_number: i32) -> u8 {
        (128 + signal_number) as u8
    }
}

/// Why portkeeper could not start or serve; each kind has its own exit status.
///
/// | status | meaning |
/// |---|---|
/// | 78 | a setting is wrong (EX_CONFIG): the message names it, its value and what was expected |
/// | 69 | the port, or every port of the range, is in use (EX_UNAVAILABLE) |
/// | 77 | the port needs privileges (EX_NOPERM) |
/// | 71 | any other system failure (EX_OSERR) |
/// | 64 | (the `portkeeper` binary) an unknown command-line argument (EX_USAGE) |
/// | 130, 143 | a second SIGINT or SIGTERM stopped the drain at once |
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     match portkeeper::Server::from_env().listen() {
///         // ... build a runtime and serve, see `Listening::serve`
///         Ok(_listening) => std::process::ExitCode::SUCCESS,
///         // One line on stderr, "<program>: error: <what and why>", and its status.
///         Err(err) => err.report(),
///     }
/// }
/// ```
#[derive(Debug)]
pub struct Error {
    kind: Kind,
}

#[derive(Debug, thiserror::Error)]
enum Kind {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("{what}")]
    System {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("a second {signal} stopped the drain at once; {open} connection(s) cut")]
    Forced {
        signal: &'static str,
        number: i32,
        open: usize,
    },
}

impl Error {
    /// The process exit status for this error (see the table above).
    pub fn exit_status(&self) -> u8 {
        match &self.kind {
            Kind::Config(_) => status::CONFIG,
            Kind::Listen(e) if e.is_configuration() => status::CONFIG,
            Kind::Listen(e) if e.is_unavailable() => status::UNAVAILABLE,
            Kind::Listen(e) if e.is_permission() => status::NO_PERMISSION,
            Kind::Listen(_) | Kind::System { .. } => status::OS_ERROR,
            Kind::Forced { number, .. } => status::forced(*number),
        }
    }

    /// Prints the error as one line on stderr, `<program>: error: <message>`,
    /// and returns its exit status, for `main` to return.
    pub fn report(self) -> ExitCode {
        // On the journal's stream, "<3>" files the line at priority err, not info.
        let journal = crate::settings::protocol_var("JOURNAL_STREAM")
            .is_some_and(|value| crate::logging::stderr_is_journal_stream(&value));
        let prefix = if journal {
            crate::logging::ERR_PREFIX
        } else {
            ""
        };
        eprintln!("{prefix}{}: error: {self}", program_name());
        ExitCode::from(self.exit_status())
    }

    pub(crate) fn system(what: impl Into<String>, source: std::io::Error) -> Self {
        Error {
            kind: Kind::System {
                what: what.into(),
                source,
            },
        }
    }

    pub(crate) fn forced(signal: &'static str, number: i32, open: usize) -> Self {
        Error {
            kind: Kind::Forced {
                signal,
                number,
                open,
            },
        }
    }
}

/// The whole chain on one line: "cannot listen on 0.0.0.0:5050: Address in use (os error 98)".
impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.kind)?;
        let mut source = std::error::Error::source(&self.kind);
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

impl From<ConfigError> for Error {
    fn from(err: ConfigError) -> Self {
        Error { kind: err.into() }
    }
}

impl From<ListenError> for Error {
    fn from(err: ListenError) -> Self {
        Error { kind: err.into() }
    }
}

/// The executable's file name, so an embedding application's errors carry its own name.
fn program_name() -> String {
    std::env::args_os()
        .next()
        .and_then(|arg0| {
            std::path::Path::new(&arg0)
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| env!("CARGO_PKG_NAME").to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_is_one_line_and_each_kind_has_its_status() {
        let err = Error::system(
            "cannot start the async runtime",
            std::io::Error::other("no threads"),
        );
        assert_eq!(
            err.to_string(),
            "cannot start the async runtime: no threads"
        );
        assert_eq!(err.exit_status(), 71);
        assert_eq!(Error::forced("SIGINT", 2, 1).exit_status(), 130);
        assert_eq!(Error::forced("SIGTERM", 15, 0).exit_status(), 143);
    }
}
