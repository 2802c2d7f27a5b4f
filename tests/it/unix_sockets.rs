//! `LISTEN=/path` against what may already be at the path: another process's
//! socket of another type, a listener with a full backlog, and the mode of
//! the file we create (issue 21).

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use socket2::{Domain, SockAddr, Socket, Type};

use crate::support::*;

fn last_line(stderr: &str) -> &str {
    stderr.lines().last().unwrap_or_default()
}

fn is_socket(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|meta| meta.file_type().is_socket())
}

/// Runs the binary with `LISTEN=path`; it must refuse with exit 69 and an
/// error line naming the path, and return that line.
fn refused_as_in_use(dir: &Path, path: &Path) -> String {
    let mut cmd = portkeeper(dir);
    cmd.env("LISTEN", path.display().to_string());
    let (status, stderr) = run_to_exit(cmd, DEADLINE).unwrap();
    assert_eq!(status.code(), Some(69), "{stderr}");
    let line = last_line(&stderr).to_owned();
    assert!(
        line.starts_with("portkeeper: error: cannot listen on "),
        "{line}"
    );
    assert!(line.contains(&path.display().to_string()), "{line}");
    line
}

#[test]
fn a_live_datagram_socket_of_another_process_is_in_use_and_kept() {
    let dir = TempDir::new();
    let sock = dir.path().join("dgram.sock");
    let held = UnixDatagram::bind(&sock).unwrap();
    refused_as_in_use(dir.path(), &sock);
    assert!(is_socket(&sock), "the datagram socket's file was removed");
    // Still the same socket, still reachable by its path.
    let sender = UnixDatagram::unbound().unwrap();
    sender.send_to(b"still here", &sock).unwrap();
    held.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0; 32];
    let n = held.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"still here");
}

#[test]
fn a_live_seqpacket_listener_of_another_process_is_in_use_and_kept() {
    let dir = TempDir::new();
    let sock = dir.path().join("seqpacket.sock");
    let addr = SockAddr::unix(&sock).unwrap();
    let held = Socket::new(Domain::UNIX, Type::SEQPACKET, None).unwrap();
    held.bind(&addr).unwrap();
    held.listen(8).unwrap();
    refused_as_in_use(dir.path(), &sock);
    assert!(is_socket(&sock), "the seqpacket socket's file was removed");
    let client = Socket::new(Domain::UNIX, Type::SEQPACKET, None).unwrap();
    client
        .connect(&addr)
        .expect("the seqpacket listener is still reachable by its path");
}

#[test]
fn a_live_listener_with_a_full_backlog_is_in_use_without_a_hang() {
    let dir = TempDir::new();
    let sock = dir.path().join("full.sock");
    let addr = SockAddr::unix(&sock).unwrap();
    let held = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
    held.bind(&addr).unwrap();
    held.listen(0).unwrap();
    // Connections nobody accepts, until the kernel says the queue is full:
    // a blocking connect to this path would now wait for an accept.
    let mut queued = Vec::new();
    loop {
        let client = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
        client.set_nonblocking(true).unwrap();
        match client.connect(&addr) {
            Ok(()) => queued.push(client),
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(err) => panic!("filling the backlog: {err}"),
        }
        assert!(queued.len() < 1000, "the backlog never filled");
    }
    // Only that it exits, and with 69: how fast is the machine's business.
    refused_as_in_use(dir.path(), &sock);
    assert!(is_socket(&sock));
    drop(held);
}

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

/// The names in `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Starts `cmd` with `LISTEN=sock`, checks the file's mode is exactly `mode`
/// and that the directory holds nothing else, then stops it.
fn serves_with_exactly(mut cmd: Command, dir: &Path, sock: &Path, mode: &str, want: u32) {
    cmd.env("LISTEN", sock.display().to_string())
        .env("UNIX_SOCKET_MODE", mode);
    let mut server = Running::spawn(cmd, "mode").unwrap();
    server.wait_for_line(" serving ", DEADLINE).unwrap();
    assert!(is_socket(sock));
    assert_eq!(mode_of(sock), want, "UNIX_SOCKET_MODE={mode}");
    let name = sock.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(
        entries(dir),
        vec![name],
        "nothing else is left in the directory"
    );
    server.signal("TERM").unwrap();
    assert!(server.wait_exit(DEADLINE).unwrap().success());
    assert_eq!(entries(dir), Vec::<String>::new());
}

#[test]
fn the_socket_file_gets_exactly_its_mode_and_nothing_is_left_behind() {
    let dir = TempDir::new();
    let sockets = dir.path().join("sockets");
    std::fs::create_dir(&sockets).unwrap();
    let sock = sockets.join("http.sock");
    serves_with_exactly(portkeeper(dir.path()), &sockets, &sock, "0600", 0o600);
    // A umask that takes bits the mode asks for: they are added back.
    let mut cmd = clean_command("/bin/sh");
    cmd.current_dir(dir.path())
        .args(["-c", "umask 077 && exec \"$0\"", binary()]);
    serves_with_exactly(cmd, &sockets, &sock, "0666", 0o666);
}
