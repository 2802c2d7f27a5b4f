//! Inherited sockets without writing the environment (issue 19), and every
//! inherited fd that is not served closed, whatever its type (issue 21).

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::support::*;

/// The built `listen_env_probe` example (cargo builds examples for `cargo test`).
fn probe_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/it-<hash> -> target/<profile>/examples/listen_env_probe
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let path = profile_dir.join("examples").join("listen_env_probe");
    assert!(
        path.is_file(),
        "{} is missing: build the examples (cargo test does)",
        path.display()
    );
    path
}

/// The `NAME=value` lines a probe printed on stdout, by name.
fn printed(output: &str) -> HashMap<String, String> {
    output
        .lines()
        .filter_map(|line| line.split_once('='))
        .filter(|(name, _)| !name.contains(' '))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

/// The inode of a socket, as `/proc/<pid>/fd` names it (`socket:[inode]`).
fn socket_inode(socket: &OwnedFd) -> u64 {
    std::fs::File::from(socket.try_clone().unwrap())
        .metadata()
        .unwrap()
        .ino()
}

/// Where each fd of `pid` points (`socket:[123]`, a path, ...).
fn open_fds(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .map(|target| target.display().to_string())
        .collect()
}

/// The environment `pid` was started with (its last `execve`).
fn environment_of(pid: u32) -> HashMap<String, String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    raw.split(|&b| b == 0)
        .filter_map(|entry| {
            let entry = String::from_utf8_lossy(entry);
            let (name, value) = entry.split_once('=')?;
            Some((name.to_owned(), value.to_owned()))
        })
        .collect()
}

/// `Server::listen()` called inside a running multi-threaded runtime (as an
/// embedding `#[tokio::main]` program does) adopts the handed socket and
/// leaves `LISTEN_*` exactly as they were; a second `listen()` in the same
/// process does not adopt the fd again.
#[test]
fn listen_inside_a_multi_threaded_runtime_leaves_the_environment_alone() {
    let dir = TempDir::new();
    let listener = loopback_listener();
    let addr = listener.local_addr().unwrap();
    // Through a shell, so LISTEN_PID can be the probe's own pid (exec keeps it).
    let mut cmd = clean_command("/bin/sh");
    cmd.current_dir(dir.path())
        .args([
            "-c",
            r#"LISTEN_PID=$$; export LISTEN_PID; exec "$0""#,
            probe_binary().to_str().unwrap(),
        ])
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "http");
    hand_over(&mut cmd, vec![OwnedFd::from(listener)]);
    let mut probe = Running::spawn(cmd, "probe").unwrap();
    let pid = probe.pid();
    let status = probe.wait_exit(DEADLINE).unwrap();
    let output = probe.output();
    assert!(status.success(), "{output}");
    let seen = printed(&output);

    assert_eq!(seen["LISTEN_FDS"], "1", "{output}");
    assert_eq!(seen["LISTEN_PID"], pid.to_string(), "{output}");
    assert_eq!(seen["LISTEN_FDNAMES"], "http", "{output}");
    let threads: usize = seen["threads"].parse().unwrap();
    assert!(
        threads > 1,
        "listen() must have run beside other threads: {output}"
    );
    assert_eq!(seen["local_addr"], addr.to_string(), "{output}");

    // The second listen() found the handoff taken and bound a port of its own.
    let second: SocketAddr = seen
        .get("second_addr")
        .unwrap_or_else(|| panic!("no second_addr: {output}"))
        .parse()
        .unwrap();
    assert_ne!(second, addr, "the inherited fd must not be adopted twice");
    assert!(
        output.contains("taken by an earlier listen()"),
        "the second listen() says why it binds: {output}"
    );
}

/// Sockets handed over under another name than `http` or `admin` are closed,
/// whatever their type: a Unix stream listener's clients are refused (not
/// queued forever), and the server holds neither it nor a UDP socket, so no
/// successor or child inherits them.
#[test]
fn unserved_inherited_sockets_of_any_type_are_closed() {
    let dir = TempDir::new();
    let http = loopback_listener();
    let addr = http.local_addr().unwrap();
    let path = dir.path().join("other.sock");
    let other = OwnedFd::from(UnixListener::bind(&path).unwrap());
    let metrics = OwnedFd::from(UdpSocket::bind("127.0.0.1:0").unwrap());
    let unserved = [socket_inode(&other), socket_inode(&metrics)];

    let mut cmd = loopback_server(&dir);
    cmd.env("LISTEN_FDS", "3")
        .env("LISTEN_FDNAMES", "http:other:metrics");
    // Moved into the command: `Running::spawn` drops it, and with it the
    // test's copies, so the server's copies are the last ones.
    hand_over(&mut cmd, vec![OwnedFd::from(http), other, metrics]);
    let mut server = Running::spawn(cmd, "unserved").unwrap();
    assert_eq!(server.serving_address().unwrap(), addr);
    assert_eq!(get_json(addr, "/health").unwrap()["status"], "ok");

    let refused = UnixStream::connect(&path).expect_err("nobody listens on the unserved socket");
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{refused}"
    );
    let fds = open_fds(server.pid());
    for inode in unserved {
        let target = format!("socket:[{inode}]");
        assert!(
            !fds.contains(&target),
            "the server still holds {target}: {fds:?}"
        );
    }
    let stderr = server.stderr();
    for fd in ["fd=4", "fd=5"] {
        assert!(
            stderr.lines().any(
                |l| l.contains("closed an inherited socket that is not served") && l.contains(fd)
            ),
            "one line for {fd}: {stderr}"
        );
    }
}

/// A binary upgrade's successor gets exactly its own `LISTEN_FDS`,
/// `LISTEN_FDNAMES` and `LISTEN_PID`, and its own readiness socket: none of
/// the variables we were started with, which stay in our environment now
/// that nothing removes them.
#[test]
fn a_successor_gets_its_own_handoff_variables_and_none_of_ours() {
    use command_fds::{CommandFdExt, FdMapping};
    let dir = TempDir::new();
    let listener = loopback_listener();
    let addr = listener.local_addr().unwrap();
    let mut cmd = loopback_server(&dir);
    // A handoff at fd 5 and a stale readiness socket: were either passed on,
    // the successor would look at fd 5 (it gets fd 3), or report elsewhere.
    cmd.env("LISTEN_FDS", "1")
        .env("LISTEN_FDS_FIRST_FD", "5")
        .env("LISTEN_FDNAMES", "http")
        .env("PORTKEEPER_HANDOFF_NOTIFY", "@portkeeper-test-stale");
    cmd.fd_mappings(vec![FdMapping {
        parent_fd: OwnedFd::from(listener),
        child_fd: 5,
    }])
    .unwrap();
    let mut first = Running::spawn(cmd, "first").unwrap();
    assert_eq!(first.serving_address().unwrap(), addr);
    let old = first.pid();

    first.signal("USR2").unwrap();
    let end = Instant::now() + DEADLINE;
    let successor = loop {
        let info = get_json(addr, "/info").unwrap();
        let pid = info["pid"].as_u64().unwrap() as u32;
        if pid != old {
            break Successor(pid);
        }
        assert!(
            !first.output().contains("binary upgrade failed"),
            "the successor did not start: {}",
            first.output()
        );
        assert!(Instant::now() < end, "no successor within {DEADLINE:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let env = environment_of(successor.0);
    assert_eq!(env.get("LISTEN_FDS").map(String::as_str), Some("1"));
    assert_eq!(env.get("LISTEN_FDNAMES").map(String::as_str), Some("http"));
    assert_eq!(env.get("LISTEN_PID"), Some(&successor.0.to_string()));
    assert_eq!(env.get("LISTEN_FDS_FIRST_FD"), None, "{env:?}");
    let notify = env
        .get("PORTKEEPER_HANDOFF_NOTIFY")
        .expect("the successor's own readiness socket");
    assert!(
        notify.starts_with(&format!("@portkeeper-handoff-{old}-")),
        "{notify}"
    );
    assert!(first.wait_exit(DEADLINE).unwrap().success());
}
