//! The `portkeeper` binary: the built-in routes, and a page at `/` that points
//! at them, served by the crate.
//!
//! Configuration stays in the environment (and `.env`); the command line only
//! asks for help, the version, or an upgrade of a running server
//! (`portkeeper upgrade <pid>`, the unit's `ExecReload=`), so it has no
//! parser crate behind it.

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

/// BSD's EX_USAGE: the command line is wrong.
const EX_USAGE: u8 = 64;
/// BSD's EX_UNAVAILABLE: `upgrade` cannot reach the server.
const EX_UNAVAILABLE: u8 = 69;
/// BSD's EX_TEMPFAIL: `upgrade` got no answer in time.
const EX_TEMPFAIL: u8 = 75;

/// How long `upgrade` waits for the answer: the server gives the new process
/// 15 s (`READY_TIMEOUT`) to be ready, and a request that comes while another
/// upgrade runs gets that one's outcome.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(40);

/// The help text: the variables come from `portkeeper::variables()`, the
/// one list the documentation is tested against.
fn help() -> String {
    let mut text = String::from(
        "portkeeper: an HTTP server that never fights over its port

Usage: portkeeper [--help | --version]
       portkeeper upgrade <PID>

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

portkeeper upgrade <PID> (ExecReload=): asks the server of PID for a binary
upgrade, as SIGUSR2 does, and waits for the outcome (at most 40 s):
  0    the new process is ready (its pid is printed); the old one drains
  1    the upgrade failed (the reason is printed); the old process serves on
  64   bad command line
  69   no portkeeper server of that pid can be reached (not running, upgrades
       off, another user, or a version without upgrade requests: kill -USR2)
  75   no answer within 40 s
";

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    Serve,
    Help,
    Version,
    /// Ask the server of this pid for a binary upgrade and wait for the outcome.
    Upgrade(u32),
}

fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, String> {
    let mut args = args.into_iter();
    let Some(first) = args.next() else {
        return Ok(Command::Serve);
    };
    let command = match first.to_str() {
        Some("--help" | "-h") => Command::Help,
        Some("--version" | "-V") => Command::Version,
        Some("upgrade") => {
            let Some(pid) = args.next() else {
                return Err("upgrade needs the server's pid: portkeeper upgrade <PID>".into());
            };
            match pid.to_str().and_then(|pid| pid.parse::<u32>().ok()) {
                Some(pid) if pid > 0 => Command::Upgrade(pid),
                _ => {
                    return Err(format!(
                        "upgrade: {pid:?} is not a pid (portkeeper upgrade <PID>)"
                    ));
                }
            }
        }
        _ => {
            return Err(format!(
                "unknown argument {first:?} (portkeeper takes only --help, --version or upgrade <PID>; settings are environment variables)"
            ));
        }
    };
    match args.next() {
        None => Ok(command),
        Some(extra) => Err(format!(
            "unexpected argument {extra:?} after {first:?} (portkeeper takes only one of --help, --version or upgrade <PID>)"
        )),
    }
}

fn main() -> ExitCode {
    match parse(std::env::args_os().skip(1)) {
        Ok(Command::Serve) => portkeeper::run(front_page()),
        Ok(Command::Upgrade(pid)) => upgrade::run(pid, ANSWER_TIMEOUT),
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

/// `portkeeper upgrade <PID>`: the client of the server's control socket
/// (`src/upgrade/control.rs`, which spells the same name and messages).
mod upgrade {
    use std::process::ExitCode;
    use std::time::Duration;

    /// Sends `UPGRADE` to the server of `pid` and prints its answer.
    #[cfg(target_os = "linux")]
    pub(super) fn run(pid: u32, timeout: Duration) -> ExitCode {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr, UnixDatagram};

        let server_name = format!("portkeeper-control-{pid}");
        let fail = |status: u8, message: String| {
            eprintln!("portkeeper upgrade: {message}");
            ExitCode::from(status)
        };
        // A name of our own, so that the answer can reach us.
        let own_name = format!("portkeeper-upgrade-{}", std::process::id());
        let socket = match SocketAddr::from_abstract_name(own_name.as_bytes())
            .and_then(|addr| UnixDatagram::bind_addr(&addr))
        {
            Ok(socket) => socket,
            Err(err) => {
                return fail(
                    super::EX_UNAVAILABLE,
                    format!("cannot open a socket for the answer (@{own_name}): {err}"),
                );
            }
        };
        let sent = SocketAddr::from_abstract_name(server_name.as_bytes())
            .and_then(|server| socket.send_to_addr(b"UPGRADE", &server));
        if let Err(err) = sent {
            return fail(
                super::EX_UNAVAILABLE,
                format!(
                    "cannot reach the server of pid {pid} at @{server_name}: {err} (is it a running portkeeper, with upgrades on, of this user? A version without upgrade requests takes `kill -USR2 {pid}`)"
                ),
            );
        }
        let deadline = std::time::Instant::now() + timeout;
        let mut buf = [0u8; 1024];
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return fail(
                    super::EX_TEMPFAIL,
                    format!(
                        "no answer from pid {pid} within {}s; see its log",
                        timeout.as_secs()
                    ),
                );
            }
            if let Err(err) = socket.set_read_timeout(Some(left)) {
                return fail(
                    super::EX_UNAVAILABLE,
                    format!("cannot wait for the answer: {err}"),
                );
            }
            let (n, from) = match socket.recv_from(&mut buf) {
                Ok(received) => received,
                Err(err)
                    if matches!(
                        err.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                Err(err) => {
                    return fail(
                        super::EX_UNAVAILABLE,
                        format!("cannot read the answer: {err}"),
                    );
                }
            };
            // Only the server's own socket can have its name: anything else
            // sent to ours is not the answer.
            if from.as_abstract_name() != Some(server_name.as_bytes()) {
                continue;
            }
            let answer = String::from_utf8_lossy(&buf[..n]);
            return match answer.split_once(' ') {
                Some(("READY", new)) => {
                    let new = new.strip_prefix("pid=").unwrap_or(new);
                    println!(
                        "portkeeper upgrade: the new process {new} is ready and serving; pid {pid} finishes its open requests and exits"
                    );
                    ExitCode::SUCCESS
                }
                Some(("FAILED", reason)) => {
                    eprintln!("portkeeper upgrade: the upgrade of pid {pid} failed: {reason}");
                    ExitCode::FAILURE
                }
                _ => fail(
                    super::EX_UNAVAILABLE,
                    format!(
                        "pid {pid} answered {answer:?}, which this version does not understand"
                    ),
                ),
            };
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn run(pid: u32, _timeout: Duration) -> ExitCode {
        eprintln!("portkeeper upgrade: needs Linux (abstract Unix sockets); use kill -USR2 {pid}");
        ExitCode::from(super::EX_UNAVAILABLE)
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
        assert_eq!(parse_strs(&["upgrade", "42"]), Ok(Command::Upgrade(42)));
        assert!(parse_strs(&["upgrade"]).is_err());
        assert!(parse_strs(&["upgrade", "0"]).is_err());
        assert!(parse_strs(&["upgrade", "x1"]).is_err());
        assert!(parse_strs(&["upgrade", "42", "43"]).is_err());
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
