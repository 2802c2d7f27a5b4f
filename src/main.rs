//! The `portkeeper` binary: the built-in routes alone, served by the crate.
//!
//! Configuration stays in the environment (and `.env`); the command line only
//! asks for help or the version, so it has no parser crate behind it.

use std::ffi::OsString;
use std::process::ExitCode;

/// BSD's EX_USAGE: the command line is wrong.
const EX_USAGE: u8 = 64;

const HELP: &str = "\
portkeeper: an HTTP server that never fights over its port

Usage: portkeeper [--help | --version]

Configured by environment variables, and a .env file in the working directory
(real variables win). See config.example.env for details.

  HOST                 address to bind (0.0.0.0)
  API_PORT             port to bind first; 0 = any free port (5050)
  AUTO_FIND_PORT       search PORT_RANGE_START..=PORT_RANGE_END when busy (false)
  PORT_RANGE_START     first port of the search range (5050)
  PORT_RANGE_END       last port of the search range (5100)
  LOG_LEVEL            trace, debug, info, warn or error (info)
  LOG_FORMAT           text or json (text)
  RUST_LOG             tracing filter directives; overrides LOG_LEVEL
  DEBUG                development diagnostics (false)
  RELOAD               hand the socket over when the executable is replaced (false)
  AUTH_REQUIRED        require a bearer token on all but /health and /ready (false)
  API_TOKEN            accepted bearer token(s), comma-separated
  API_TOKEN_FILE       a file of accepted tokens, one per line
  CREDENTIALS_DIRECTORY  systemd's credentials (api-token)
  HEADER_READ_TIMEOUT  seconds to receive a request's headers (10)
  REQUEST_TIMEOUT      seconds from headers to response; 503 after (30)
  MAX_BODY_BYTES       largest request body; 413 above (1048576)
  SHUTDOWN_TIMEOUT     seconds open requests get after a stop (30)
  SHUTDOWN_DELAY       seconds between a stop signal (/ready at 503) and the drain (0)
  LISTEN_FD_NAME       inherited sockets of this name serve the app (http)
  LISTEN               addresses instead of HOST:API_PORT: IP:PORT, /path, @name
  ADMIN_LISTEN         addresses for /health and /info alone
  UNIX_SOCKET_MODE     permissions of Unix socket files bound (0660)
  PORT                 the platform's port, when API_PORT is unset

Signals:
  SIGTERM, SIGINT      graceful stop; a second one stops at once
  SIGUSR2              binary upgrade: hand the socket to the new executable
  SIGHUP               upgrade under a service manager; with a terminal, a stop

Exit status:
  0    stopped cleanly
  64   bad command line
  69   the port (or the whole range, or a Unix socket) is in use
  71   other system failure
  77   permission denied for the port
  78   a setting is wrong
  130, 143  a second SIGINT or SIGTERM cut the drain short
";

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    Serve,
    Help,
    Version,
}

fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, String> {
    let mut args = args.into_iter();
    let Some(first) = args.next() else {
        return Ok(Command::Serve);
    };
    let command = match first.to_str() {
        Some("--help" | "-h") => Command::Help,
        Some("--version" | "-V") => Command::Version,
        _ => {
            return Err(format!(
                "unknown argument {first:?} (portkeeper takes only --help or --version; settings are environment variables)"
            ));
        }
    };
    match args.next() {
        None => Ok(command),
        Some(extra) => Err(format!(
            "unexpected argument {extra:?} after {first:?} (portkeeper takes only one of --help or --version)"
        )),
    }
}

fn main() -> ExitCode {
    match parse(std::env::args_os().skip(1)) {
        Ok(Command::Serve) => portkeeper::run(axum::Router::new()),
        Ok(Command::Help) => {
            print!("{HELP}");
            ExitCode::SUCCESS
        }
        Ok(Command::Version) => {
            println!("portkeeper {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("portkeeper: error: {message}");
            ExitCode::from(EX_USAGE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_strs(args: &[&str]) -> Result<Command, String> {
        parse(args.iter().map(OsString::from))
    }

    #[test]
    fn only_help_and_version_are_understood() {
        assert_eq!(parse_strs(&[]), Ok(Command::Serve));
        assert_eq!(parse_strs(&["--help"]), Ok(Command::Help));
        assert_eq!(parse_strs(&["-V"]), Ok(Command::Version));
        let unknown = parse_strs(&["--port=80"]).unwrap_err();
        assert!(unknown.contains("\"--port=80\""), "{unknown}");
        assert!(parse_strs(&["--help", "x"]).is_err());
    }
}
