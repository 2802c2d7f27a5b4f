//! Restarts without a refused connection: graceful stop, SIGUSR2 and SIGHUP
//! upgrades, RELOAD=true, and what a failed upgrade or a closed terminal leaves.
//!
//! A handoff leaves the new process orphaned (its parent exits), so tests kill
//! it by pid through [`Successor`] rather than through `Running`. While a
//! handoff is under way the tests keep asking `/info`, and every one of those
//! requests must succeed: a refused or dropped request fails the test.
//!
//! SIGHUP means "upgrade" only without a controlling terminal. `cargo test`
//! may run on a terminal, so a test that relies on that runs the server
//! through `setsid` (a new session: no terminal) and checks /proc that it
//! really has none.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::support::*;

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

fn finish_slow_request(mut stream: TcpStream) -> Result<serde_json::Value> {
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (status, body) = parse_response(&response)?;
    if status != 200 {
        bail!("slow request: status {status}, body {body}");
    }
    Ok(serde_json::from_str(&body)?)
}

/// `cmd`'s program and arguments, run through `setsid`: a session of its
/// own, so no controlling terminal (a spawned child is no process group
/// leader, so `setsid` execs in place and the pid stays the server's).
fn without_terminal(cmd: &Command) -> Command {
    let mut detached = copy_settings(cmd, clean_command("setsid"));
    detached.arg(cmd.get_program());
    detached.args(cmd.get_args());
    detached
}

/// The controlling terminal's device number (0: none).
fn controlling_terminal(pid: u32) -> u64 {
    proc_stat(pid).expect("the process is running")[4]
        .parse()
        .unwrap()
}

/// The inode of the socket listening on `addr` (IPv4), from /proc/net/tcp.
fn listening_socket_inode(addr: SocketAddr) -> u64 {
    let SocketAddr::V4(v4) = addr else {
        panic!("IPv4 only: {addr}")
    };
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(v4.ip().octets()),
        v4.port()
    );
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        // sl local_address rem_address st ... inode (column 9); 0A = LISTEN.
        .find(|fields| fields[1] == local && fields[3] == "0A")
        .and_then(|fields| fields[9].parse().ok())
        .unwrap_or_else(|| panic!("no listening socket for {addr} ({local}) in /proc/net/tcp"))
}

/// The pids of every process with the socket `inode` open.
fn holders_of(inode: u64) -> Vec<u32> {
    let target = format!("socket:[{inode}]");
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|link| link.as_os_str() == &*target))
        {
            pids.push(pid);
        }
    }
    pids
}

/// A forking wrapper as the "new executable": it starts a background
/// `sleep` (which inherits the listening socket at fd 3), writes that pid to
/// `grandchild.pid` beside it, then runs `then`.
fn forking_wrapper(dir: &Path, then: &str) -> Vec<u8> {
    format!(
        "#!/bin/sh\nsleep 300 &\necho $! > '{}'\necho 'wrapper: started a helper' >&2\n{then}\n",
        dir.join("grandchild.pid").display()
    )
    .into_bytes()
}

/// The pid the wrapper wrote, once it is there.
fn grandchild_pid(dir: &Path) -> u32 {
    let path = dir.join("grandchild.pid");
    let mut pid = None;
    assert!(
        wait_until(DEADLINE, || {
            pid = std::fs::read_to_string(&path)
                .ok()
                .and_then(|text| text.trim().parse().ok());
            pid.is_some()
        }),
        "the wrapper never wrote {}",
        path.display()
    );
    pid.unwrap()
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
fn sigusr2_hands_the_socket_to_a_new_pid_on_the_same_port() {
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
    first.signal("USR2").unwrap();
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
    let usr2 = Command::new("kill")
        .args(["-USR2", &second.0.to_string()])
        .status()
        .unwrap();
    assert!(usr2.success());
    let info = wait_for_successor(addr, u64::from(second.0)).unwrap();
    let _third = Successor(pid_of(&info) as u32);
    assert_eq!(info["listener"]["source"], "handoff");
    assert_eq!(info["listener"]["address"], addr.to_string());
}

#[test]
fn a_successor_that_fails_to_start_leaves_the_old_one_serving() {
    let dir = TempDir::new();
    let (executable, cmd) = copy_of_binary(dir.path());
    let mut server = spawn_fresh_copy(&cmd, "broken-upgrade");
    let addr = server.serving_address().unwrap();
    let old = pid_of(&get_json(addr, "/info").unwrap());

    replace_file(
        &executable,
        b"#!/bin/sh\necho 'broken build: refusing to start' >&2\nexit 1\n",
    );
    server.signal("USR2").unwrap();
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
    let mut first = spawn_fresh_copy(&cmd, "reload");
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
    let mut server = spawn_fresh_copy(&cmd, "no-reload");
    let addr = server.serving_address().unwrap();
    let old = pid_of(&get_json(addr, "/info").unwrap());
    // No watch was started (it says so at start-up, before serving), so
    // nothing can act on the replacement.
    assert!(
        !server.output().contains("RELOAD: watching the executable"),
        "{}",
        server.output()
    );
    replace_file(&executable, &std::fs::read(binary()).unwrap());
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

    let (busy, all_busy) = std::sync::mpsc::channel::<()>();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let busy = busy.clone();
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
                    if answered == 0 {
                        let _ = busy.send(());
                    }
                }
                unreachable!()
            })
        })
        .collect();
    // Every client has had an answer and keeps asking: stop now.
    for _ in 0..4 {
        all_busy
            .recv_timeout(DEADLINE)
            .expect("a client got no answer");
    }
    server.signal("TERM").unwrap();
    for client in clients {
        let answered = client.join().unwrap().expect("a clean close");
        assert!(answered > 1, "the client was busy before the stop");
    }
    assert!(server.wait_exit(DEADLINE).unwrap().success());
}

/// Under a service manager (here the test plays systemd's NOTIFY_SOCKET),
/// without a controlling terminal, SIGHUP (`systemctl reload`) upgrades:
/// the old process announces the new main pid and the new process's status; the new process does not send
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
    let mut first = Running::spawn(without_terminal(&cmd), "hup-managed").unwrap();
    let addr = first.serving_address().unwrap();
    assert!(next_message().starts_with("READY=1\n"));
    assert_eq!(
        controlling_terminal(first.pid()),
        0,
        "a service has no controlling terminal; SIGHUP means upgrade"
    );

    first.signal("HUP").unwrap();
    let info = wait_for_successor(addr, u64::from(first.pid())).unwrap();
    let successor = Successor(pid_of(&info) as u32);
    let announced = next_message();
    assert!(
        announced.starts_with(&format!("MAINPID={}\n", successor.0)),
        "{announced:?}"
    );
    // `systemctl status` then shows the new process's own status: its URL.
    assert!(
        announced.contains(&format!(
            "\nSTATUS=serving http://{addr}/ (listener from handoff)"
        )),
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

/// A replacement that forks (a wrapper script without `exec`) and fails: its
/// background child inherited the listening socket. The failed upgrade must
/// kill it too; else, once the server stops, the port accepts connections
/// that nobody answers.
#[test]
fn a_failed_upgrade_kills_everything_the_new_process_started() {
    let dir = TempDir::new();
    let (executable, cmd) = copy_of_binary(dir.path());
    let mut server = spawn_fresh_copy(&cmd, "forking-upgrade");
    let addr = server.serving_address().unwrap();
    let inode = listening_socket_inode(addr);
    assert_eq!(holders_of(inode), [server.pid()]);

    replace_file(&executable, &forking_wrapper(dir.path(), "exit 1"));
    server.signal("USR2").unwrap();
    server
        .wait_for_line("binary upgrade failed", DEADLINE)
        .unwrap();
    let grandchild = grandchild_pid(dir.path());
    assert!(
        wait_until(Duration::from_secs(5), || has_exited(grandchild)),
        "the wrapper's background child {grandchild} is still running"
    );
    assert!(
        wait_until(Duration::from_secs(5), || holders_of(inode)
            == [server.pid()]),
        "only the server may hold the listening socket; held by {:?}",
        holders_of(inode)
    );
    assert_eq!(http_get(addr, "/health").unwrap().0, 200);

    server.signal("TERM").unwrap();
    assert!(server.wait_exit(DEADLINE).unwrap().success());
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err(),
        "the port still accepts after the server stopped"
    );
}

/// The same wrapper, never ready; the server is stopped while it waits for
/// it. Everything the wrapper started goes with the server.
#[test]
fn a_stop_during_an_upgrade_kills_everything_the_new_process_started() {
    let dir = TempDir::new();
    let (executable, cmd) = copy_of_binary(dir.path());
    let mut server = spawn_fresh_copy(&cmd, "forking-pending");
    let addr = server.serving_address().unwrap();
    let inode = listening_socket_inode(addr);

    replace_file(&executable, &forking_wrapper(dir.path(), "wait"));
    server.signal("USR2").unwrap();
    let grandchild = grandchild_pid(dir.path());
    assert!(holders_of(inode).contains(&grandchild));
    server.signal("TERM").unwrap();
    assert!(server.wait_exit(DEADLINE).unwrap().success());
    assert!(
        wait_until(Duration::from_secs(5), || has_exited(grandchild)),
        "the wrapper's background child {grandchild} is still running"
    );
    assert!(
        wait_until(Duration::from_secs(5), || holders_of(inode).is_empty()),
        "nobody may hold the listening socket; held by {:?}",
        holders_of(inode)
    );
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err(),
        "the port still accepts after the server stopped"
    );
}

/// Closing the terminal a server runs in (here: `script` gives it a pty,
/// then is killed, which hangs the pty up): the kernel sends SIGHUP, and on
/// a terminal that means "stop". It used to mean "upgrade", leaving a
/// successor holding the port that nobody could stop with the terminal.
#[test]
fn closing_the_terminal_stops_the_server_and_starts_no_successor() {
    let Some(script) = peer_tool("script") else {
        return;
    };
    let dir = TempDir::new();
    let mut cmd = clean_command(&script);
    cmd.current_dir(dir.path())
        .args(["-qfc", binary(), "/dev/null"])
        .env("HOST", "127.0.0.1")
        .env("API_PORT", "0");
    let mut terminal = Running::spawn(cmd, "terminal").unwrap();
    // On a terminal the log is coloured: take the address from the message.
    let line = terminal.wait_for_line(" serving ", DEADLINE).unwrap();
    let addr: SocketAddr = line
        .split(" serving ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    let pid = pid_of(&get_json(addr, "/info").unwrap()) as u32;
    let _cleanup = Successor(pid);
    assert_ne!(
        controlling_terminal(pid),
        0,
        "the server should run with the pty as its controlling terminal"
    );
    let inode = listening_socket_inode(addr);

    terminal.signal("KILL").unwrap();
    assert!(
        wait_until(DEADLINE, || has_exited(pid)),
        "the server {pid} still runs after its terminal hung up"
    );
    assert!(
        wait_until(Duration::from_secs(5), || holders_of(inode).is_empty()),
        "a process still holds the port after the hang-up: {:?}",
        holders_of(inode)
    );
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err(),
        "the port still accepts after the hang-up"
    );
}

/// A datagram socket standing in for systemd's NOTIFY_SOCKET, in `dir`.
fn fake_manager(dir: &Path) -> (std::os::unix::net::UnixDatagram, PathBuf) {
    let path = dir.join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    socket.set_nonblocking(true).unwrap();
    (socket, path)
}

/// Every notification waiting on `manager`.
fn received(manager: &std::os::unix::net::UnixDatagram) -> Vec<String> {
    let mut buf = [0u8; 4096];
    std::iter::from_fn(|| {
        let n = manager.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
    .collect()
}

/// Under a manager the new process is started orphaned (so that it is the
/// manager's child); its failure is then seen by its process group
/// emptying, not by waiting for it, and must still be seen at once.
#[test]
fn under_a_manager_a_successor_that_fails_is_noticed_at_once() {
    let dir = TempDir::new();
    let (manager, socket_path) = fake_manager(dir.path());
    let (executable, mut cmd) = copy_of_binary(dir.path());
    cmd.env("NOTIFY_SOCKET", &socket_path);
    let mut server = spawn_fresh_copy(&cmd, "managed-broken-upgrade");
    let addr = server.serving_address().unwrap();
    let inode = listening_socket_inode(addr);

    replace_file(
        &executable,
        b"#!/bin/sh\necho 'broken build: refusing to start' >&2\nexit 1\n",
    );
    let signalled = Instant::now();
    server.signal("USR2").unwrap();
    let line = server
        .wait_for_line("binary upgrade failed", DEADLINE)
        .unwrap();
    let noticed = signalled.elapsed();
    eprintln!("a failed orphaned successor was noticed after {noticed:?}");
    assert!(line.contains("exited before it was ready"), "{line}");
    assert!(
        noticed < Duration::from_secs(5),
        "took {noticed:?}: was the failure seen, or the 15 s timeout?"
    );
    assert_eq!(holders_of(inode), [server.pid()]);
    assert_eq!(http_get(addr, "/health").unwrap().0, 200);
    let sent = received(&manager);
    assert!(
        sent.iter().all(|m| !m.contains("MAINPID=")),
        "no new main pid after a failed upgrade: {sent:?}"
    );
}

/// Under a manager, a forking wrapper that never reports ready, and a stop
/// meanwhile: the orphaned process group is killed all the same.
#[test]
fn under_a_manager_a_stop_during_an_upgrade_kills_the_orphaned_group() {
    let dir = TempDir::new();
    let (_manager, socket_path) = fake_manager(dir.path());
    let (executable, mut cmd) = copy_of_binary(dir.path());
    cmd.env("NOTIFY_SOCKET", &socket_path);
    let mut server = spawn_fresh_copy(&cmd, "managed-forking-pending");
    let addr = server.serving_address().unwrap();
    let inode = listening_socket_inode(addr);

    replace_file(&executable, &forking_wrapper(dir.path(), "wait"));
    server.signal("USR2").unwrap();
    let grandchild = grandchild_pid(dir.path());
    assert!(holders_of(inode).contains(&grandchild));
    server.signal("TERM").unwrap();
    assert!(server.wait_exit(DEADLINE).unwrap().success());
    assert!(
        wait_until(Duration::from_secs(5), || has_exited(grandchild)),
        "the wrapper's background child {grandchild} is still running"
    );
    assert!(
        wait_until(Duration::from_secs(5), || holders_of(inode).is_empty()),
        "nobody may hold the listening socket; held by {:?}",
        holders_of(inode)
    );
}

/// Kills, by pid, every process left in session `leader` (a test's pty
/// session), on drop.
struct Session(u32);

impl Drop for Session {
    fn drop(&mut self) {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if proc_stat(pid).is_some_and(|f| f[3] == self.0.to_string()) {
                drop(Successor(pid));
            }
        }
    }
}

/// A shell on a pty runs the server and stays (it is the session leader,
/// as a login shell is). After a SIGUSR2 upgrade the successor runs in the
/// foreground group, where the kernel's SIGHUP on a hang-up reaches it (and
/// it also notices on its own that the terminal is gone); it stops rather
/// than outlive the terminal holding the port, and the first process, which
/// waited for it, ends too. While the terminal is open it keeps serving.
#[test]
fn after_an_upgrade_on_a_terminal_closing_it_stops_the_successor() {
    let Some(script) = peer_tool("script") else {
        return;
    };
    let dir = TempDir::new();
    let (_, copy) = copy_of_binary(dir.path());
    let mut cmd = copy_settings(&copy, clean_command(&script));
    cmd.args([
        "-qfc",
        &format!("{}; sleep 60", copy.get_program().to_str().unwrap()),
        "/dev/null",
    ]);
    let mut terminal = spawn_fresh_copy(&cmd, "terminal-upgrade");
    let line = terminal.wait_for_line(" serving ", DEADLINE).unwrap();
    let addr: SocketAddr = line
        .split(" serving ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    let old = pid_of(&get_json(addr, "/info").unwrap()) as u32;
    let leader: u32 = proc_stat(old).unwrap()[3].parse().unwrap();
    let _session = Session(leader);
    assert_ne!(leader, old, "the shell, not the server, leads the session");
    assert_ne!(controlling_terminal(old), 0, "the server has the pty");
    let inode = listening_socket_inode(addr);

    Command::new("kill")
        .args(["-USR2", &old.to_string()])
        .status()
        .unwrap();
    let info = wait_for_successor(addr, u64::from(old)).unwrap();
    let successor = pid_of(&info) as u32;
    let _successor = Successor(successor);
    // On a terminal the old process drains, then stays the terminal's job
    // until its successor ends (tests/it/terminal.rs).
    terminal
        .wait_for_line("stays in the foreground", DEADLINE)
        .unwrap();
    // The terminal is open, so the successor serves on.
    assert_eq!(pid_of(&get_json(addr, "/info").unwrap()) as u32, successor);

    terminal.signal("KILL").unwrap();
    assert!(
        wait_until(DEADLINE, || has_exited(successor)),
        "the successor {successor} still runs after its terminal hung up"
    );
    assert!(
        wait_until(DEADLINE, || has_exited(old)),
        "the first process {old} still waits after its terminal hung up"
    );
    assert!(
        wait_until(Duration::from_secs(5), || holders_of(inode).is_empty()),
        "a process still holds the port after the hang-up: {:?}",
        holders_of(inode)
    );
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err(),
        "the port still accepts after the hang-up"
    );
}

/// `nohup` asks for SIGHUP to be ignored: it is, neither a stop nor an upgrade.
#[test]
fn under_nohup_sighup_is_ignored() {
    let dir = TempDir::new();
    let mut server_cmd = portkeeper(dir.path());
    loopback(&mut server_cmd);
    let mut cmd = copy_settings(&server_cmd, without_terminal(&clean_command("nohup")));
    cmd.arg(binary());
    let mut server = Running::spawn(cmd, "nohup").unwrap();
    let addr = server.serving_address().unwrap();
    server
        .wait_for_line("SIGHUP is ignored (nohup)", DEADLINE)
        .unwrap();
    server.signal("HUP").unwrap();
    // Then an event that must come after anything the SIGHUP could cause:
    // a SIGUSR2's upgrade. Exactly one upgrade, and no stop before it.
    server.signal("USR2").unwrap();
    let info = wait_for_successor(addr, u64::from(server.pid())).unwrap();
    let _successor = Successor(pid_of(&info) as u32);
    assert!(server.wait_exit(DEADLINE).unwrap().success());
    let output = server.output();
    assert_eq!(
        output.matches("binary upgrade: starting").count(),
        1,
        "{output}"
    );
    assert!(!output.contains("stop requested"), "{output}");
}

/// Under a manager, a forking wrapper that fails while its background
/// child lives on: the failure is seen when the wrapper exits (the process
/// with its own pid in LISTEN_PID), not after the 15 s readiness timeout,
/// and the background child is killed.
#[test]
fn under_a_manager_a_forking_successor_that_fails_is_noticed_at_once() {
    let dir = TempDir::new();
    let (_manager, socket_path) = fake_manager(dir.path());
    let (executable, mut cmd) = copy_of_binary(dir.path());
    cmd.env("NOTIFY_SOCKET", &socket_path);
    let mut server = spawn_fresh_copy(&cmd, "managed-forking-upgrade");
    let addr = server.serving_address().unwrap();
    let inode = listening_socket_inode(addr);

    replace_file(&executable, &forking_wrapper(dir.path(), "exit 1"));
    let signalled = Instant::now();
    server.signal("USR2").unwrap();
    let line = server
        .wait_for_line("binary upgrade failed", DEADLINE)
        .unwrap();
    let noticed = signalled.elapsed();
    eprintln!("a failed forking orphaned successor was noticed after {noticed:?}");
    assert!(line.contains("exited before it was ready"), "{line}");
    assert!(noticed < Duration::from_secs(5), "took {noticed:?}");
    let grandchild = grandchild_pid(dir.path());
    assert!(
        wait_until(Duration::from_secs(5), || has_exited(grandchild)),
        "the wrapper's background child {grandchild} is still running"
    );
    assert!(
        wait_until(Duration::from_secs(5), || holders_of(inode)
            == [server.pid()]),
        "only the server may hold the listening socket; held by {:?}",
        holders_of(inode)
    );
}
