//! `LISTEN=/path` against what may already be at the path: another process's
//! socket of another type, or a listener with a full backlog (issue 21).

use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
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
