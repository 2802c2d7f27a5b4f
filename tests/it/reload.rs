//! Restarts without a refused connection: graceful stop, SIGHUP upgrade, RELOAD=true.
//!
//! A handoff leaves the new process orphaned (its parent exits), so tests kill
//! it by pid through [`Successor`] rather than through `Running`. While a
//! handoff is under way the tests keep asking `/info`, and every one of those
//! requests must succeed: a refused or dropped request fails the test.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::support::*;

/// A process that outlived its parent; killed by pid on drop.
struct Successor(u32);

impl Drop for Successor {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .status();
    }
}

fn loopback(cmd: &mut Command) -> &mut Command {
    cmd.env("HOST", "127.0.0.1").env("API_PORT", "0")
}

fn pid_of(info: &serde_json::Value) -> u64 {
    info["pid"].as_u64().expect("pid in /info")
}

/// Asks `/info` until another pid than `old` answers, and returns that answer.
/// Every request must succeed: this is the "no refused connection" check.
fn wait_for_successor(addr: SocketAddr, old: u64) -> Result<serde_json::Value> {
    let end = Instant::now() + DEADLINE;
    let mut asked = 0;
    loop {
        asked += 1;
        let info = get_json(addr, "/info")
            .with_context(|| format!("request {asked} during the handoff failed"))?;
        if pid_of(&info) != old {
            return Ok(info);
        }
        if Instant::now() >= end {
            bail!("pid {old} still answers after {DEADLINE:?} ({asked} requests)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends a slow request (`/debug/sleep`) and returns the open connection.
fn start_slow_request(addr: SocketAddr, ms: u64) -> Result<TcpStream> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(DEADLINE))?;
    write!(
        stream,
        "GET /debug/sleep?ms={ms} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    Ok(stream)
}

fn finish_slow_request(mut stream: TcpStream) -> Result<serde_json::Value> {
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (status, body) = parse_response(&response)?;
    if status != 200 {
        bail!("slow request: status {status}, body {body}");
    }
    Ok(serde_json::from_str(&body)?)
}

/// Copies the built binary into `dir`, so a test may replace the file.
/// A copy of the binary in `dir` (which a test may replace, as a build
/// would), and a loopback command that runs it from `dir`.
fn copy_of_binary(dir: &Path) -> (PathBuf, Command) {
    let path = dir.join("portkeeper");
    std::fs::copy(binary(), &path).expect("copy the binary");
    let mut cmd = clean_command(&path);
    cmd.current_dir(dir);
    loopback(&mut cmd);
    (path, cmd)
}

/// Puts `contents` at `path` as a new file (new inode), as a build or an
/// installer does: written beside it, then renamed over it.
fn replace_file(path: &Path, contents: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    let next = path.with_extension("new");
    std::fs::write(&next, contents).unwrap();
    std::fs::set_permissions(&next, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&next, path).unwrap();
}

#[test]
fn sigterm_lets_a_slow_in_flight_request_complete() {
    let dir = TempDir::new();
    let mut cmd = portkeeper(dir.path());
    loopback(&mut cmd).env("DEBUG", "true");
    let mut server = Running::spawn(cmd, "slow-stop").unwrap();
    let addr = server.serving_address().unwrap();

    let slow = start_slow_request(addr, 1500).unwrap();
    server
        .wait_for_line("debug: sleeping", DEADLINE)
        .expect("the slow request reached the handler");
    server.signal("TERM").unwrap();
    server.wait_for_line("stopped accepting", DEADLINE).unwrap();
    // Stopped accepting: our own socket is closed at once.
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err(),
        "a stopping server with its own socket must not accept"
    );
    let body = finish_slow_request(slow).expect("the in-flight request is answered");
    assert_eq!(body["slept_ms"], 1500);
    let status = server.wait_exit(DEADLINE).unwrap();
    assert!(status.success(), "exit status {status}");
}

#[test]
fn sighup_hands_the_socket_to_a_new_pid_on_the_same_port() {
    let dir = TempDir::new();
    let mut cmd = portkeeper(dir.path());
    loopback(&mut cmd).env("DEBUG", "true");
    let mut first = Running::spawn(cmd, "hup").unwrap();
    let addr = first.serving_address().unwrap();
    let old = pid_of(&get_json(addr, "/info").unwrap());
    assert_eq!(old, u64::from(first.pid()));

    // A request in flight on the old process must still be answered by it.
    let slow = start_slow_request(addr, 1000).unwrap();
    first.wait_for_line("debug: sleeping", DEADLINE).unwrap();
    first.signal("HUP").unwrap();
    let info = wait_for_successor(addr, old).unwrap();
    let second = Successor(pid_of(&info) as u32);
    assert_eq!(info["listener"]["source"], "handoff");
    assert_eq!(info["listener"]["address"], addr.to_string());
    assert_eq!(info["listener"]["fd"], 3);
    assert_eq!(info["listener"]["fd_name"], "http");
    assert_eq!(finish_slow_request(slow).unwrap()["pid"], old);
    let status = first.wait_exit(DEADLINE).unwrap();
    assert!(status.success(), "the old process exits 0, got {status}");

    // The successor can hand over in turn: nothing of the first handoff is left over.
    let hup = Command::new("kill")
        .args(["-HUP", &second.0.to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let info = wait_for_successor(addr, u64::from(second.0)).unwrap();
    let _third = Successor(pid_of(&info) as u32);
    assert_eq!(info["listener"]["source"], "handoff");
    assert_eq!(info["listener"]["address"], addr.to_string());
}

#[test]
fn a_successor_that_fails_to_start_leaves_the_old_one_serving() {
    let dir = TempDir::new();
    let (executable, cmd) = copy_of_binary(dir.path());
    let mut server = Running::spawn(cmd, "broken-upgrade").unwrap();
    let addr = server.serving_address().unwrap();
    let old = pid_of(&get_json(addr, "/info").unwrap());

    replace_file(
        &executable,
        b"#!/bin/sh\necho 'broken build: refusing to start' >&2\nexit 1\n",
    );
    server.signal("HUP").unwrap();
    let line = server
        .wait_for_line("binary upgrade failed", DEADLINE)
        .unwrap();
    assert!(line.contains("exited with exit status: 1"), "{line}");
    assert!(server.output().contains("broken build: refusing to start"));

    let info = get_json(addr, "/info").expect("the old process still serves");
    assert_eq!(pid_of(&info), old);
    server.signal("TERM").unwrap();
    let status = server.wait_exit(DEADLINE).unwrap();
    assert!(status.success(), "exit status {status}");
}

#[test]
fn reload_picks_up_a_replaced_executable() {
    let dir = TempDir::new();
    let (executable, mut cmd) = copy_of_binary(dir.path());
    cmd.env("RELOAD", "true");
    let mut first = Running::spawn(cmd, "reload").unwrap();
    let addr = first.serving_address().unwrap();
    first
        .wait_for_line("RELOAD: watching the executable", DEADLINE)
        .unwrap();
    let old = pid_of(&get_json(addr, "/info").unwrap());

    replace_file(&executable, &std::fs::read(binary()).unwrap());
    let info = wait_for_successor(addr, old).unwrap();
    let _second = Successor(pid_of(&info) as u32);
    assert_eq!(info["listener"]["source"], "handoff");
    assert_eq!(info["listener"]["address"], addr.to_string());
    first
        .wait_for_line("RELOAD: the executable was replaced", DEADLINE)
        .unwrap();
    let status = first.wait_exit(DEADLINE).unwrap();
    assert!(status.success(), "exit status {status}");
}

#[test]
fn without_reload_a_replaced_executable_is_left_alone() {
    let dir = TempDir::new();
    let (executable, cmd) = copy_of_binary(dir.path());
    let mut server = Running::spawn(cmd, "no-reload").unwrap();
    let addr = server.serving_address().unwrap();
    let old = pid_of(&get_json(addr, "/info").unwrap());
    replace_file(&executable, &std::fs::read(binary()).unwrap());
    // Four watch intervals: a watcher would have acted by now.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(pid_of(&get_json(addr, "/info").unwrap()), old);
    assert!(!server.output().contains("binary upgrade"));
}

/// Busy keep-alive clients during a stop: each must get `Connection: close` on
/// a complete response, never a connection cut under its next request.
/// (Before responses carried `Connection: close` once the stop began, every
/// busy connection lost one request this way.)
#[test]
fn busy_keep_alive_connections_are_closed_cleanly_on_stop() {
    use std::io::{BufRead, BufReader};
    let dir = TempDir::new();
    let mut cmd = portkeeper(dir.path());
    loopback(&mut cmd);
    let mut server = Running::spawn(cmd, "keep-alive-stop").unwrap();
    let addr = server.serving_address().unwrap();

    let clients: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || -> Result<u32> {
                let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
                stream.set_read_timeout(Some(DEADLINE))?;
                let mut reader = BufReader::new(stream);
                let end = Instant::now() + DEADLINE;
                for answered in 0.. {
                    if Instant::now() > end {
                        bail!("no Connection: close within {DEADLINE:?}");
                    }
                    write!(
                        reader.get_mut(),
                        "GET /health HTTP/1.1\r\nHost: {addr}\r\n\r\n"
                    )?;
                    let mut close = false;
                    let mut length = 0;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line)? == 0 {
                            bail!("connection cut after {answered} answers, request unanswered");
                        }
                        let header = line.trim_end().to_ascii_lowercase();
                        if header.is_empty() {
                            break;
                        }
                        close |= header == "connection: close";
                        if let Some(n) = header.strip_prefix("content-length: ") {
                            length = n.parse()?;
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body)?;
                    if close {
                        return Ok(answered + 1);
                    }
                }
                unreachable!()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    server.signal("TERM").unwrap();
    for client in clients {
        let answered = client.join().unwrap().expect("a clean close");
        assert!(answered > 1, "the client was busy before the stop");
    }
    assert!(server.wait_exit(DEADLINE).unwrap().success());
}

/// Under a service manager (here the test plays systemd's NOTIFY_SOCKET):
/// the old process announces the new main pid; the new process does not send
/// READY=1 there again, yet reaches the manager afterwards (STOPPING=1).
#[test]
fn sighup_under_a_manager_announces_the_new_mainpid() {
    use std::os::unix::net::UnixDatagram;
    let dir = TempDir::new();
    let socket_path = dir.path().join("notify.sock");
    let manager = UnixDatagram::bind(&socket_path).unwrap();
    manager.set_read_timeout(Some(DEADLINE)).unwrap();
    let next_message = || -> String {
        let mut buf = [0u8; 1024];
        let n = manager.recv(&mut buf).expect("a notification in time");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mut cmd = portkeeper(dir.path());
    loopback(&mut cmd).env("NOTIFY_SOCKET", &socket_path);
    let mut first = Running::spawn(cmd, "hup-managed").unwrap();
    let addr = first.serving_address().unwrap();
    assert!(next_message().starts_with("READY=1\n"));

    first.signal("HUP").unwrap();
    let info = wait_for_successor(addr, u64::from(first.pid())).unwrap();
    let successor = Successor(pid_of(&info) as u32);
    let announced = next_message();
    assert!(
        announced.starts_with(&format!("MAINPID={}\n", successor.0)),
        "{announced:?}"
    );
    assert!(first.wait_exit(DEADLINE).unwrap().success());

    let term = Command::new("kill")
        .args(["-TERM", &successor.0.to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let stopping = next_message();
    assert!(
        stopping.starts_with("STOPPING=1\n"),
        "the successor reaches the manager, and sent nothing else before: {stopping:?}"
    );
}
