//! TLS through restarts, and the slow-handshake limits, with the real binary.
//!
//! - A SIGUSR2 upgrade hands the TLS listener over with its role (fd name
//!   `https`): the successor serves TLS on the same port, no request fails
//!   across three upgrades, and the successor reads the certificate files
//!   afresh (its first handshake shows the pair written just before). The
//!   same under `RELOAD=true` and under systemfd's unnamed `https::` socket.
//! - Connections that never finish a handshake are closed by the server at
//!   `TLS_HANDSHAKE_TIMEOUT` and do not hold up `/health` on a plain or a TLS
//!   listener of the same process; beyond `TLS_MAX_HANDSHAKES` a new TLS
//!   connection is closed at once and counted `over_cap`.
//!
//! The client is rustls over a blocking socket, one fresh connection (so one
//! full handshake) per request: a refused connect, a failed handshake or a
//! missing answer all count as failures.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use crate::certs::{Ca, Pair};
use crate::support::*;

/// The pair's files in `dir`, each written beside and renamed into place
/// (as a rotation tool does); returns (cert, key).
fn write_pair(dir: &Path, pair: &Pair) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    pair.replace(&cert, &key);
    (cert, key)
}

/// One answer over TLS: status, body and the leaf certificate the server showed.
struct Answer {
    status: u16,
    body: String,
    leaf: CertificateDer<'static>,
}

/// GET `path` over a fresh TLS connection (`Connection: close`).
fn https_get(addr: SocketAddr, path: &str, config: &Arc<ClientConfig>) -> Result<Answer> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connect {addr}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(10)))?;
    let server = ServerName::try_from("localhost").unwrap();
    let connection = ClientConnection::new(Arc::clone(config), server)?;
    let mut tls = StreamOwned::new(connection, tcp);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .context("handshake or write")?;
    let mut raw = Vec::new();
    match tls.read_to_end(&mut raw) {
        Ok(_) => {}
        // A close without close_notify after a whole response is no failure;
        // a short response is caught below by its Content-Length.
        Err(err) if err.kind() == ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(err) => return Err(err).context("read the response"),
    }
    let text = String::from_utf8(raw).context("response is not UTF-8")?;
    let (status, body) = parse_response(&text)?;
    if let Some(length) = response_header(&text, "content-length") {
        if length.parse::<usize>().ok() != Some(body.len()) {
            bail!("short response: Content-Length {length}, body {body:?}");
        }
    }
    let leaf = tls
        .conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .ok_or_else(|| anyhow!("no server certificate"))?
        .clone()
        .into_owned();
    Ok(Answer { status, body, leaf })
}

/// `/info` over TLS, as JSON, with the leaf certificate.
fn https_info(addr: SocketAddr, config: &Arc<ClientConfig>) -> Result<(serde_json::Value, Answer)> {
    let answer = https_get(addr, "/info", config)?;
    if answer.status != 200 {
        bail!("GET /info: status {}", answer.status);
    }
    let info = serde_json::from_str(&answer.body)?;
    Ok((info, answer))
}

fn pid_of(info: &serde_json::Value) -> u64 {
    info["pid"].as_u64().expect("pid in /info")
}

/// What the load threads saw: per answer its pid and leaf; every failure.
#[derive(Default)]
struct Seen {
    answers: Vec<(u64, CertificateDer<'static>)>,
    failures: Vec<String>,
}

/// TLS clients that keep asking `/info` (a fresh connection each time)
/// until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr, config: &Arc<ClientConfig>, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let threads = (0..clients)
            .map(|_| {
                let (stop, seen, config) =
                    (Arc::clone(&stop), Arc::clone(&seen), Arc::clone(config));
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        let outcome = https_info(addr, &config);
                        let mut seen = seen.lock().unwrap();
                        match outcome {
                            Ok((info, answer)) => seen.answers.push((pid_of(&info), answer.leaf)),
                            Err(err) => seen.failures.push(format!("{err:#}")),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            seen,
            threads,
        }
    }

    /// Waits (bounded) until `pid` answered `count` of the load's requests.
    fn wait_for_answers(&self, pid: u64, count: usize) {
        let answered = || {
            let seen = self.seen.lock().unwrap();
            seen.answers.iter().filter(|(p, _)| *p == pid).count()
        };
        assert!(
            wait_until(DEADLINE, || answered() >= count),
            "pid {pid} answered {} requests of the load, expected {count}",
            answered()
        );
    }

    fn finish(mut self) -> Seen {
        self.stop.store(true, Ordering::Release);
        for thread in self.threads.drain(..) {
            thread.join().unwrap();
        }
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Asks `/info` over TLS until another pid than `old` answers; every
/// request must succeed. Returns that answer.
fn wait_for_successor(
    addr: SocketAddr,
    client: &Arc<ClientConfig>,
    old: u64,
) -> Result<(serde_json::Value, Answer)> {
    let end = Instant::now() + DEADLINE;
    loop {
        let (info, answer) =
            https_info(addr, client).context("a request during the upgrade failed")?;
        if pid_of(&info) != old {
            return Ok((info, answer));
        }
        if Instant::now() >= end {
            bail!("pid {old} still answers after {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The successor got the TLS listener from its predecessor, by the name
/// that carries its role and mark.
fn assert_handed_over_as_https(info: &serde_json::Value, addr: SocketAddr) {
    let listener = &info["listener"];
    assert_eq!(listener["source"], "handoff", "{info}");
    assert_eq!(listener["fd_name"], "https", "{info}");
    assert_eq!(listener["tls"], true, "{info}");
    assert_eq!(listener["address"], addr.to_string(), "{info}");
}

/// The load saw no failure; returns how many requests it made.
fn assert_no_failure(seen: &Seen, what: &str) -> usize {
    let total = seen.answers.len() + seen.failures.len();
    eprintln!(
        "{total} TLS requests {what}, {} failed",
        seen.failures.len()
    );
    assert!(
        seen.failures.is_empty(),
        "{} of {total} requests failed {what}: {:?}",
        seen.failures.len(),
        seen.failures
    );
    total
}

/// Sends SIGUSR2 to `pid`.
fn upgrade(pid: u64) {
    let status = Command::new("kill")
        .args(["-USR2", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -USR2 {pid}");
}

#[test]
fn sigusr2_upgrades_keep_the_tls_listener_and_reread_the_certificate() {
    let dir = TempDir::new();
    let ca = Ca::new("portkeeper test CA");
    let client = ca.client_config();
    let first_pair = ca.server(1);
    let (cert, key) = write_pair(dir.path(), &first_pair);
    let mut cmd = loopback_server(&dir);
    cmd.env("TLS", "true")
        .env("TLS_CERT_FILE", &cert)
        .env("TLS_KEY_FILE", &key);
    let mut first = Running::spawn(cmd, "tls-usr2").unwrap();
    let addr = first.serving_address().unwrap();
    let (info, answer) = https_info(addr, &client).unwrap();
    assert_eq!(pid_of(&info), u64::from(first.pid()));
    assert_eq!(answer.leaf, first_pair.der);

    let load = Load::start(addr, &client, 3);
    // Which pair each pid must show: the one on disk when it started.
    let mut expected = vec![(pid_of(&info), first_pair.der.clone())];
    let mut successors = Vec::new();
    let mut current = pid_of(&info);
    for round in 2..=4 {
        // A new pair just before the upgrade: the old process's rotation
        // watch needs 2-4 s to see it, the successor reads it at start.
        let pair = ca.server(round);
        write_pair(dir.path(), &pair);
        upgrade(current);
        let (info, answer) = wait_for_successor(addr, &client, current).unwrap();
        let old = current;
        current = pid_of(&info);
        // Killed on drop, also when an assertion below fails.
        successors.push(Successor(current as u32));
        assert_handed_over_as_https(&info, addr);
        assert!(
            answer.leaf == pair.der,
            "the successor's first handshake shows serial {round}"
        );
        expected.push((current, pair.der.clone()));
        // The old process drains and exits before the next round.
        assert!(
            wait_until(DEADLINE, || has_exited(old as u32)),
            "pid {old} did not exit after handing over"
        );
    }
    let status = first.wait_exit(DEADLINE).unwrap();
    assert!(status.success(), "the first process exits 0, got {status}");

    let seen = load.finish();
    assert_no_failure(&seen, "across 3 upgrades");
    // Every successor served, and from its first handshake on with the
    // pair that was on disk when it started.
    for (pid, der) in &expected[1..] {
        let answers: Vec<_> = seen.answers.iter().filter(|(p, _)| p == pid).collect();
        assert!(!answers.is_empty(), "pid {pid} answered the load");
        assert!(
            answers.iter().all(|(_, leaf)| leaf == der),
            "pid {pid} showed another certificate than the one it started with"
        );
    }
}

#[test]
fn reload_hands_the_tls_listener_to_the_replaced_executable() {
    let dir = TempDir::new();
    let ca = Ca::new("portkeeper test CA");
    let client = ca.client_config();
    let (cert, key) = write_pair(dir.path(), &ca.server(1));
    let (executable, mut cmd) = copy_of_binary(dir.path());
    cmd.env("RELOAD", "true")
        .env("TLS", "true")
        .env("TLS_CERT_FILE", &cert)
        .env("TLS_KEY_FILE", &key);
    let mut first = spawn_fresh_copy(&cmd, "tls-reload");
    let addr = first.serving_address().unwrap();
    first
        .wait_for_line("RELOAD: watching the executable", DEADLINE)
        .unwrap();
    let old = pid_of(&https_info(addr, &client).unwrap().0);

    let load = Load::start(addr, &client, 2);
    load.wait_for_answers(old, 20);
    replace_file(&executable, &std::fs::read(binary()).unwrap());
    let (info, _) = wait_for_successor(addr, &client, old).unwrap();
    let _second = Successor(pid_of(&info) as u32);
    assert_handed_over_as_https(&info, addr);
    let status = first.wait_exit(DEADLINE).unwrap();
    assert!(status.success(), "exit status {status}");
    load.wait_for_answers(pid_of(&info), 20);
    assert_no_failure(&load.finish(), "across a RELOAD upgrade");
}

/// systemfd's `https::` socket is unnamed: `TLS=true` marks it, and an
/// upgrade hands it on named `https`.
#[test]
fn under_systemfd_the_https_socket_serves_tls_and_is_handed_over_as_https() {
    let Some(tool) = peer_tool("systemfd") else {
        return;
    };
    let dir = TempDir::new();
    let ca = Ca::new("portkeeper test CA");
    let client = ca.client_config();
    let (cert, key) = write_pair(dir.path(), &ca.server(1));
    let port = port_of(&loopback_listener());
    let mut cmd = clean_command(tool);
    cmd.env("TLS", "true")
        .env("TLS_CERT_FILE", &cert)
        .env("TLS_KEY_FILE", &key)
        .current_dir(dir.path())
        .args(["--no-pid", "-b", "128", "-s"])
        .arg(format!("https::127.0.0.1:{port}"))
        .arg("--")
        .arg(binary());
    let mut systemfd = Running::spawn(cmd, "tls-systemfd").unwrap();
    let addr = systemfd.serving_address().unwrap();
    assert_eq!(addr.port(), port);
    let (info, _) = https_info(addr, &client).unwrap();
    assert_eq!(info["listener"]["source"], "systemfd", "{info}");
    assert_eq!(info["listener"]["tls"], true, "{info}");

    let load = Load::start(addr, &client, 2);
    let old = pid_of(&info);
    load.wait_for_answers(old, 20);
    upgrade(old);
    let (info, _) = wait_for_successor(addr, &client, old).unwrap();
    let _second = Successor(pid_of(&info) as u32);
    assert_handed_over_as_https(&info, addr);
    assert!(
        wait_until(DEADLINE, || has_exited(old as u32)),
        "pid {old} did not exit after handing over"
    );
    load.wait_for_answers(pid_of(&info), 20);
    assert_no_failure(&load.finish(), "across an upgrade under systemfd");
}

/// Starts a process with a plain and a TLS listener (`LISTEN`), the given
/// extra settings; returns it with (plain, tls) addresses.
fn plain_and_tls(
    dir: &TempDir,
    pair: &Pair,
    settings: &[(&str, &str)],
    label: &str,
) -> (Running, SocketAddr, SocketAddr) {
    let (cert, key) = write_pair(dir.path(), pair);
    let mut cmd = portkeeper(dir.path());
    cmd.env("LISTEN", "127.0.0.1:0,tls=127.0.0.1:0")
        .env("TLS_CERT_FILE", &cert)
        .env("TLS_KEY_FILE", &key);
    for (name, value) in settings {
        cmd.env(name, value);
    }
    let mut server = Running::spawn(cmd, label).unwrap();
    server.serving_address().unwrap();
    let both = wait_until(DEADLINE, || {
        server.output().matches(" serving ").count() >= 2
    });
    assert!(both, "two serving lines: {}", server.output());
    let (mut plain, mut tls) = (None, None);
    for line in server.output().lines().filter(|l| l.contains(" serving ")) {
        let address: SocketAddr = field(line, "address").unwrap().parse().unwrap();
        match field(line, "marks") {
            Some("tls") => tls = Some(address),
            _ => plain = Some(address),
        }
    }
    (server, plain.unwrap(), tls.unwrap())
}

/// The value of one sample line of `/metrics` (asked on `plain`).
fn metric(plain: SocketAddr, sample: &str) -> u64 {
    let (status, body) = http_get(plain, "/metrics").unwrap();
    assert_eq!(status, 200);
    body.lines()
        .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {sample} in /metrics:\n{body}"))
}

/// The first bytes of a real ClientHello: a handshake that starts and stalls.
fn partial_client_hello(config: &Arc<ClientConfig>) -> Vec<u8> {
    let server = ServerName::try_from("localhost").unwrap();
    let mut connection = ClientConnection::new(Arc::clone(config), server).unwrap();
    let mut hello = Vec::new();
    connection.write_tls(&mut hello).unwrap();
    hello.truncate(hello.len() / 2);
    hello
}

/// True when the server closed `stream` (end of file or a reset); false
/// while it is open and silent. Does not wait.
fn closed_by_server(stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let closed = match stream.peek(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(err) => err.kind() != ErrorKind::WouldBlock,
    };
    stream.set_nonblocking(false).unwrap();
    closed
}

/// Waits (bounded by `within`) for the server to close `stream`; returns
/// when it saw the close, or `None` if it did not come.
fn wait_for_close(stream: &mut TcpStream, within: Duration) -> Option<Instant> {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Some(Instant::now()),
            // An alert or anything else the server sends before closing.
            Ok(_) => continue,
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return None;
            }
            Err(_) => return Some(Instant::now()),
        }
    }
}

#[test]
fn stalled_handshakes_are_closed_at_the_timeout_and_do_not_hold_up_health() {
    const STALLED: usize = 50;
    const TIMEOUT: Duration = Duration::from_secs(2);
    let dir = TempDir::new();
    let ca = Ca::new("portkeeper test CA");
    let client = ca.client_config();
    let (server, plain, tls) = plain_and_tls(
        &dir,
        &ca.server(1),
        &[("TLS_HANDSHAKE_TIMEOUT", "2")],
        "tls-stalled",
    );

    // Half connect and send nothing, half send half a ClientHello.
    let hello = partial_client_hello(&client);
    let opened = Instant::now();
    let mut stalled: Vec<TcpStream> = (0..STALLED)
        .map(|i| {
            let mut stream = TcpStream::connect_timeout(&tls, Duration::from_secs(5)).unwrap();
            if i % 2 == 1 {
                stream.write_all(&hello).unwrap();
            }
            stream
        })
        .collect();

    // Meanwhile both listeners answer, and the stalled ones are still open.
    let (status, _) = http_get(plain, "/health").unwrap();
    assert_eq!(status, 200, "/health on the plain listener");
    let answer = https_get(tls, "/health", &client).unwrap();
    assert_eq!(answer.status, 200, "/health on the TLS listener");
    let early = stalled.iter().filter(|s| closed_by_server(s)).count();
    assert_eq!(
        early,
        0,
        "stalled connections closed before TLS_HANDSHAKE_TIMEOUT ({:?} after opening)",
        opened.elapsed()
    );

    // Then the server closes every one of them, not before the timeout.
    for (i, stream) in stalled.iter_mut().enumerate() {
        let closed = wait_for_close(stream, DEADLINE)
            .unwrap_or_else(|| panic!("stalled connection {i} still open after {DEADLINE:?}"));
        let after = closed - opened;
        assert!(
            after >= TIMEOUT - Duration::from_millis(100),
            "stalled connection {i} closed after {after:?}, before the timeout"
        );
    }
    let timed_out = r#"portkeeper_tls_handshakes_total{result="timed_out"}"#;
    assert!(
        wait_until(DEADLINE, || metric(plain, timed_out) == STALLED as u64),
        "timed_out is {}, expected {STALLED}",
        metric(plain, timed_out)
    );
    assert_eq!(
        metric(
            plain,
            r#"portkeeper_tls_handshakes_total{result="over_cap"}"#
        ),
        0
    );
    // And TLS still serves afterwards.
    assert_eq!(https_get(tls, "/health", &client).unwrap().status, 200);
    drop(server);
}

#[test]
fn beyond_tls_max_handshakes_a_connection_is_closed_at_once() {
    let dir = TempDir::new();
    let ca = Ca::new("portkeeper test CA");
    let client = ca.client_config();
    // A handshake timeout far beyond the test: only the cap closes anything.
    let (server, plain, tls) = plain_and_tls(
        &dir,
        &ca.server(1),
        &[
            ("TLS_MAX_HANDSHAKES", "5"),
            ("TLS_HANDSHAKE_TIMEOUT", "120"),
        ],
        "tls-cap",
    );
    // The server accepts in the kernel's order: these five hold the places.
    let stalled: Vec<TcpStream> = (0..5)
        .map(|_| TcpStream::connect_timeout(&tls, Duration::from_secs(5)).unwrap())
        .collect();

    let mut sixth = TcpStream::connect_timeout(&tls, Duration::from_secs(5)).unwrap();
    sixth.write_all(&partial_client_hello(&client)).unwrap();
    let asked = Instant::now();
    let closed = wait_for_close(&mut sixth, Duration::from_secs(10));
    assert!(
        closed.is_some(),
        "the sixth connection was not closed within 10 s"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "the sixth connection was closed only after {:?}",
        asked.elapsed()
    );
    let over_cap = r#"portkeeper_tls_handshakes_total{result="over_cap"}"#;
    assert_eq!(metric(plain, over_cap), 1);
    // The plain listener is not held up by the full TLS one.
    let (status, _) = http_get(plain, "/health").unwrap();
    assert_eq!(status, 200);
    assert!(
        stalled.iter().all(|s| !closed_by_server(s)),
        "the five stalled ones stay open until the timeout"
    );

    // Once they go away their places are free again.
    drop(stalled);
    let served = wait_until(DEADLINE, || {
        https_get(tls, "/health", &client).is_ok_and(|a| a.status == 200)
    });
    assert!(served, "a TLS request after the stalled ones left");
    assert_eq!(
        metric(
            plain,
            r#"portkeeper_tls_handshakes_total{result="timed_out"}"#
        ),
        0
    );
    drop(server);
}
