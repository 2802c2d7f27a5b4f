//! The listener chain, source by source: inherited, fixed, searched.

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::OwnedFd;

use crate::support::*;

#[test]
fn adopts_a_socket_handed_over_without_listen_pid_like_systemfd() {
    let dir = TempDir::new();
    let listener = loopback_listener();
    let addr = listener.local_addr().unwrap();
    let mut cmd = loopback_server(&dir);
    // API_PORT (0, from loopback_server) would bind a port of its own: the
    // inherited socket must win over binding.
    cmd.env("LISTEN_FDS", "1");
    hand_over(&mut cmd, vec![OwnedFd::from(listener)]);
    let mut server = Running::spawn(cmd, "systemfd-style").unwrap();
    assert_eq!(server.serving_address().unwrap(), addr);

    let info = get_json(addr, "/info").unwrap();
    assert_eq!(info["listener"]["source"], "systemfd");
    assert_eq!(info["listener"]["fd"], 3);
    assert_eq!(info["listener"]["address"], addr.to_string());
    assert_eq!(info["pid"], server.pid());
    assert_eq!(get_json(addr, "/health").unwrap()["status"], "ok");
}

#[test]
fn ignores_sockets_meant_for_another_process() {
    let dir = TempDir::new();
    let listener = loopback_listener();
    let inherited = listener.local_addr().unwrap();
    let mut cmd = loopback_server(&dir);
    // pid 1 is never the child.
    cmd.env("LISTEN_FDS", "1").env("LISTEN_PID", "1");
    hand_over(&mut cmd, vec![OwnedFd::from(listener)]);
    let mut server = Running::spawn(cmd, "other-pid").unwrap();
    let addr = server.serving_address().unwrap();
    assert_ne!(addr, inherited, "fds for pid 1 must not be adopted");
    let info = get_json(addr, "/info").unwrap();
    assert_eq!(info["listener"]["source"], "fixed");
    assert_eq!(info["listener"]["fd"], serde_json::Value::Null);
}

fn refused_handoff(socket: OwnedFd, label: &str) -> String {
    let dir = TempDir::new();
    let mut cmd = loopback_server(&dir);
    cmd.env("LISTEN_FDS", "1");
    hand_over(&mut cmd, vec![socket]);
    let (status, stderr) = run_to_exit(cmd, DEADLINE).unwrap();
    assert_eq!(status.code(), Some(78), "{label}: {stderr}");
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "{label}: one line: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{label}: {stderr}");
    stderr
}

#[test]
fn refuses_a_connected_socket_as_from_accept_yes() {
    let listener = loopback_listener();
    let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (accepted, _) = listener.accept().unwrap();
    let stderr = refused_handoff(OwnedFd::from(accepted), "connected");
    assert!(stderr.contains("inherited fd 3"), "{stderr}");
    assert!(stderr.contains("Accept=no"), "{stderr}");
}

#[test]
fn refuses_a_udp_socket() {
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let stderr = refused_handoff(OwnedFd::from(udp), "udp");
    assert!(stderr.contains("inherited fd 3"), "{stderr}");
    assert!(stderr.contains("UDP socket"), "{stderr}");
}

#[test]
fn refuses_a_unix_datagram_socket_and_a_unix_stream_socket_that_does_not_listen() {
    let dir = TempDir::new();
    let datagram = std::os::unix::net::UnixDatagram::bind(dir.path().join("d")).unwrap();
    let stderr = refused_handoff(OwnedFd::from(datagram), "unix-datagram");
    assert!(stderr.contains("inherited fd 3"), "{stderr}");
    assert!(stderr.contains("Unix datagram socket"), "{stderr}");

    let (stream, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
    let stderr = refused_handoff(OwnedFd::from(stream), "unix-connected");
    assert!(stderr.contains("inherited fd 3"), "{stderr}");
    assert!(stderr.contains("Unix stream socket"), "{stderr}");
}

#[test]
fn api_port_zero_takes_a_port_from_the_kernel() {
    let dir = TempDir::new();
    let mut cmd = loopback_server(&dir);
    cmd.env("API_PORT", "0");
    let mut server = Running::spawn(cmd, "port-0").unwrap();
    let addr = server.serving_address().unwrap();
    assert_ne!(addr.port(), 0);
    let info = get_json(addr, "/info").unwrap();
    assert_eq!(info["listener"]["source"], "fixed");
}

#[test]
fn a_busy_fixed_port_exits_69_naming_the_address_and_holder() {
    let dir = TempDir::new();
    let held = loopback_listener();
    let port = port_of(&held);
    let mut cmd = loopback_server(&dir);
    cmd.env("API_PORT", port.to_string());
    let (status, stderr) = run_to_exit(cmd, DEADLINE).unwrap();
    assert_eq!(status.code(), Some(69), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("127.0.0.1:{port}: address in use")),
        "{stderr}"
    );
    // This test process holds the port; Linux's /proc can say so.
    assert!(
        stderr.contains(&format!("pid {}", std::process::id())),
        "{stderr}"
    );
    assert!(stderr.contains("AUTO_FIND_PORT=true"), "{stderr}");
}

#[test]
fn the_search_skips_held_ports_and_reports_them() {
    let dir = TempDir::new();
    let mut run = owned_port_run(6);
    let base = port_of(&run[0]);
    run.truncate(3); // hold base..base+3, free the rest
    let mut cmd = loopback_server(&dir);
    cmd.env("AUTO_FIND_PORT", "true")
        .env("API_PORT", base.to_string())
        .env("PORT_RANGE_START", base.to_string())
        .env("PORT_RANGE_END", (base + 5).to_string());
    let mut server = Running::spawn(cmd, "search").unwrap();
    let addr = server.serving_address().unwrap();
    assert_eq!(addr.port(), base + 3);
    let info = get_json(addr, "/info").unwrap();
    assert_eq!(info["listener"]["source"], "searched");
    assert_eq!(
        info["listener"]["busy_ports"],
        serde_json::json!([base, base + 1, base + 2])
    );
}

#[test]
fn an_exhausted_range_exits_69_and_never_leaves_the_range() {
    let dir = TempDir::new();
    let run = owned_port_run(3);
    let base = port_of(&run[0]);
    let mut cmd = loopback_server(&dir);
    cmd.env("AUTO_FIND_PORT", "1")
        .env("API_PORT", base.to_string())
        .env("PORT_RANGE_START", base.to_string())
        .env("PORT_RANGE_END", (base + 2).to_string());
    let (status, stderr) = run_to_exit(cmd, DEADLINE).unwrap();
    assert_eq!(status.code(), Some(69), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{base}..={}: all 3 port(s) tried are in use",
            base + 2
        )),
        "{stderr}"
    );
    drop(run);
}

#[test]
fn twenty_instances_started_together_serve_on_distinct_ports() {
    const INSTANCES: usize = 20;
    let dir = TempDir::new();
    let run = owned_port_run(INSTANCES as u16 + 4);
    let base = port_of(&run[0]);
    drop(run);
    let mut servers: Vec<Running> = (0..INSTANCES)
        .map(|i| {
            let mut cmd = loopback_server(&dir);
            cmd.env("AUTO_FIND_PORT", "true")
                .env("API_PORT", base.to_string())
                .env("PORT_RANGE_START", base.to_string())
                .env("PORT_RANGE_END", (base + INSTANCES as u16 + 3).to_string());
            Running::spawn(cmd, &format!("crowd-{i}")).unwrap()
        })
        .collect();
    let mut ports = Vec::new();
    for server in &mut servers {
        let addr: SocketAddr = server.serving_address().unwrap();
        let info = get_json(addr, "/info").unwrap();
        assert_eq!(
            info["pid"],
            server.pid(),
            "{addr} is served by its own process"
        );
        ports.push(addr.port());
    }
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), INSTANCES, "ports: {ports:?}");
    assert!(
        ports
            .iter()
            .all(|p| (base..base + INSTANCES as u16 + 4).contains(p))
    );
}

#[test]
fn sigterm_stops_cleanly_with_status_0() {
    let dir = TempDir::new();
    let cmd = loopback_server(&dir);
    let mut server = Running::spawn(cmd, "sigterm").unwrap();
    let addr = server.serving_address().unwrap();
    assert_eq!(get_json(addr, "/health").unwrap()["status"], "ok");
    server.signal("TERM").unwrap();
    let status = server.wait_exit(DEADLINE).unwrap();
    assert_eq!(status.code(), Some(0), "{}", server.output());
    assert!(server.output().contains("signal=\"SIGTERM\""));
    // Our own socket is closed with us.
    assert!(TcpListener::bind(addr).is_ok());
}
