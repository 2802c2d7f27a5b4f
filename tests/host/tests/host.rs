//! The host program (`src/main.rs`), run as a user would run it: plainly and
//! under systemfd. Every wait is bounded by [`DEADLINE`].

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Generous for a shared CI machine; a passing test never waits it out.
const DEADLINE: Duration = Duration::from_secs(30);

/// The host program, its output lines as they come, killed on drop.
struct Host {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Host {
    fn spawn(mut cmd: Command) -> Host {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("the host program starts");
        let (lines, stdout) = channel();
        let out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                println!("[host stdout] {line}");
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let err = child.stderr.take().expect("stderr");
        let collected = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                println!("[host stderr] {line}");
                let mut all = collected.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
        Host {
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
        }
    }

    /// The first stdout line that starts with `prefix`, waiting at most [`DEADLINE`].
    fn line(&self, prefix: &str) -> String {
        let end = Instant::now() + DEADLINE;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => panic!("no line {prefix:?} within {DEADLINE:?}"),
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("the host ended before printing {prefix:?}")
                }
            }
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name}");
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let end = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < end,
                "the host did not exit within {DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The host with a clean environment: only PATH, plus `vars`.
fn host_command(vars: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portkeeper-host"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir(std::env::temp_dir())
        .envs(vars.iter().copied());
    cmd
}

fn address_of(line: &str) -> SocketAddr {
    line.rsplit(' ')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("an address in {line:?}"))
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("a response");
    response
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Started plainly: `APP_*` configures it, the host's own `HOST`, `DEBUG`,
/// `LISTEN` and `LOG_LEVEL` (which would stop an unprefixed server with
/// exit 78) are not portkeeper's business; the host's subscriber, SIGTERM
/// and SIGHUP handlers are kept; a WebSocket hears "going away" when the
/// stop begins; the typed `shutdown_timeout` beats `APP_SHUTDOWN_TIMEOUT`;
/// and no connection outlives `serve`.
#[test]
fn a_guest_in_a_host_started_plainly() {
    let host = Host::spawn(host_command(&[
        ("APP_HOST", "127.0.0.1"),
        ("APP_API_PORT", "0"),
        ("APP_SHUTDOWN_TIMEOUT", "600"),
        // Only the bounded drain may close the slow request's connection.
        ("APP_REQUEST_TIMEOUT", "600"),
        ("HOST", "myhost"),
        ("DEBUG", "*"),
        ("LISTEN", "not an address"),
        ("LOG_LEVEL", "loud"),
    ]));
    let mut host = host;
    assert_eq!(
        host.line("host: LISTEN_FDS after listen"),
        "host: LISTEN_FDS after listen: unset"
    );
    let addr = address_of(&host.line("host: listening on"));
    assert!(http_get(addr, "/hello").contains("hello from the host"));
    // portkeeper logged through the host's JSON subscriber.
    let logged = host.stderr.lock().unwrap().clone();
    assert!(
        logged
            .lines()
            .any(|l| l.starts_with('{') && l.contains("\"source\":\"fixed\"")),
        "portkeeper's start-up event in the host's JSON format: {logged}"
    );

    // The host's SIGHUP handler runs; nothing is re-executed.
    host.signal("HUP");
    host.line("host: SIGHUP handled by the host");
    let info = http_get(addr, "/info");
    assert!(
        info.contains(&format!("\"pid\":{}", host.child.id())),
        "{info}"
    );

    let rt = runtime();
    let mut ws = rt.block_on(async {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .expect("a WebSocket");
        ws.send(Message::text("ping")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("ping"));
        ws
    });
    // A request that would outlive any drain.
    let mut slow = TcpStream::connect(addr).unwrap();
    write!(slow, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    slow.set_read_timeout(Some(DEADLINE)).unwrap();

    host.signal("TERM");
    host.line("host: SIGTERM handled by the host");
    let close = rt.block_on(async {
        loop {
            match tokio::time::timeout(DEADLINE, ws.next()).await {
                Ok(Some(Ok(Message::Close(frame)))) => return frame,
                Ok(Some(Ok(_))) => {}
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    });
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Away));

    let returned = host.line("host: serve returned");
    assert!(
        returned.starts_with("host: serve returned Ok(true)"),
        "{returned}"
    );
    let ms: u64 = returned
        .split(" after ")
        .nth(1)
        .and_then(|s| s.trim_end_matches(" ms").parse().ok())
        .expect("a duration");
    // shutdown_timeout(2 s) in code, not APP_SHUTDOWN_TIMEOUT=600.
    assert!(
        ms < 300_000,
        "serve took {ms} ms: the typed setting was not used"
    );
    host.line("host: lingering");
    // The host lives on, and the slow request's connection is closed.
    let mut rest = Vec::new();
    let read = slow.read_to_end(&mut rest);
    assert!(
        read.is_ok()
            || read
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "the slow connection was closed, not left hanging: {read:?}"
    );
    assert!(
        host.child.try_wait().unwrap().is_none(),
        "the connection closed because serve closed it, while the host lives"
    );
    drop(host.stdin.take());
    assert!(host.wait_exit().success());
}

/// Under `systemfd --no-pid`: the inherited socket serves, and `LISTEN_FDS`
/// is still in the environment after `listen()` (nothing was written).
#[test]
fn a_guest_in_a_host_under_systemfd() {
    let Some(systemfd) = find("systemfd") else {
        assert!(
            std::env::var_os("PORTKEEPER_REQUIRE_PEERS").is_none(),
            "systemfd is required here"
        );
        eprintln!("note: systemfd is not installed; skipped");
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new(systemfd);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir(std::env::temp_dir())
        .args(["--no-pid", "-b", "128", "-s"])
        .arg(format!("http::127.0.0.1:{port}"))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_portkeeper-host"));
    let host = Host::spawn(cmd);
    assert_eq!(
        host.line("host: LISTEN_FDS after listen"),
        "host: LISTEN_FDS after listen: 1"
    );
    let addr = address_of(&host.line("host: listening on"));
    assert_eq!(addr.port(), port);
    assert!(http_get(addr, "/hello").contains("hello from the host"));
    assert!(http_get(addr, "/info").contains("\"source\":\"systemfd\""));
    assert!(http_get(addr, "/stop").contains("stopping"));
    assert!(
        host.line("host: serve returned")
            .starts_with("host: serve returned Ok(true)")
    );
}

/// With portkeeper's own SIGTERM/SIGINT handlers, those handlers are gone
/// once `serve` returns: a SIGINT then ends the host, as Ctrl-C would.
#[test]
fn signal_handlers_go_with_serve() {
    let mut cmd = host_command(&[("APP_HOST", "127.0.0.1"), ("APP_API_PORT", "0")]);
    cmd.arg("--portkeeper-signals");
    let mut host = Host::spawn(cmd);
    let addr = address_of(&host.line("host: listening on"));
    assert!(http_get(addr, "/stop").contains("stopping"));
    host.line("host: waiting without signal handlers");
    host.signal("INT");
    let status = host.wait_exit();
    assert_eq!(
        status.signal(),
        Some(2),
        "SIGINT's default action: {status:?}"
    );
}

/// With upgrades off, SIGUSR2 is nobody's: its default action ends the
/// process, where an upgrade would have re-executed it.
#[test]
fn upgrades_off_leaves_sigusr2_alone() {
    let mut cmd = host_command(&[("APP_HOST", "127.0.0.1"), ("APP_API_PORT", "0")]);
    cmd.arg("--portkeeper-signals");
    let mut host = Host::spawn(cmd);
    let addr = address_of(&host.line("host: listening on"));
    assert!(http_get(addr, "/hello").contains("hello from the host"));
    host.signal("USR2");
    let status = host.wait_exit();
    assert_eq!(
        status.signal(),
        Some(12),
        "SIGUSR2's default action: {status:?}"
    );
}

fn find(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    let home_bin = std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cargo/bin"));
    std::env::split_paths(&path)
        .chain(home_bin)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}
