//! The `portkeeper` binary: the built-in routes, and a page at `/` that points
//! at them, served by the crate.
//!
//! Configuration stays in the environment (and `.env`); the command line only
//! asks for help or the version, so it has no parser crate behind it.

use std::ffi::OsString;
use std::process::ExitCode;

/// BSD's EX_USAGE: the command line is wrong.
const EX_USAGE: u8 = 64;

/// The help text: the variables come from `portkeeper::variables()`, the
/// one list the documentation is tested against.
fn help() -> String {
    let mut text = String::from(
        "portkeeper: an HTTP server that never fights over its port

Usage: portkeeper [--help | --version]

Configured by environment variables, and a .env file in the working directory
(real variables win). See config.example.env for details.

",
    );
    for variable in portkeeper::variables() {
        // Backticks are for Markdown; a terminal shows the words.
        let meaning = variable.meaning.replace('`', "");
        let line = match variable.default {
            Some(default) => format!("  {:<22} {meaning} [default: {default}]\n", variable.name),
            None => format!("  {:<22} {meaning}\n", variable.name),
        };
        text.push_str(&line);
    }
    text.push_str(SIGNALS_AND_EXIT_STATUS);
    text
}

const SIGNALS_AND_EXIT_STATUS: &str = "
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
        Ok(Command::Serve) => portkeeper::run(front_page()),
        Ok(Command::Help) => {
            print!("{}", help());
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

/// The binary's own route: a page at `/` (the start-up message says "open
/// http://.../"), pointing at the built-in routes.
fn front_page() -> axum::Router {
    axum::Router::new().route(
        "/",
        axum::routing::get(|| async { axum::response::Html(FRONT_PAGE) }),
    )
}

/// No version: with `ADMIN_LISTEN` this page is on the public listener, where
/// `/info` (which has it) is not.
const FRONT_PAGE: &str = r#"<!doctype html>
<html lang="en">
<meta charset="utf-8">
<title>portkeeper</title>
<h1>portkeeper</h1>
<p>An HTTP server that never fights over its port. This binary serves its built-in routes
(on the admin listener instead, when <code>ADMIN_LISTEN</code> is set):</p>
<ul>
<li><a href="/health">/health</a>: liveness, always 200 while the process answers</li>
<li><a href="/ready">/ready</a>: readiness, 503 once a stop has begun</li>
<li><a href="/info">/info</a>: this process, its listeners and where they came from</li>
<li><a href="/metrics">/metrics</a>: Prometheus metrics</li>
</ul>
<p>Run <code>portkeeper --help</code> for its settings and signals.</p>
</html>
"#;

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

    #[test]
    fn help_lists_every_variable_with_its_default() {
        let text = help();
        for variable in portkeeper::variables() {
            let line = text
                .lines()
                .find(|line| line.split_whitespace().next() == Some(variable.name))
                .unwrap_or_else(|| panic!("--help misses {}", variable.name));
            if let Some(default) = variable.default {
                assert!(line.ends_with(&format!("[default: {default}]")), "{line}");
            }
        }
        assert!(text.contains("Exit status:") && text.contains("Signals:"));
    }
}
