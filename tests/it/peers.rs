//! Second tier: the real tools that hand sockets over, `systemd-socket-activate` and `systemfd`.
//!
//! Each test finds its tool with `peer_tool`: missing tools fail the run when
//! PORTKEEPER_REQUIRE_PEERS is set (as `.ci/run` does), and are noted otherwise.

use std::net::SocketAddr;
use std::process::Command;

use crate::support::*;

/// A loopback port that was free a moment ago. The tools bind it themselves,
/// so this is the one place a test must name a port before it is used; it
/// comes from the test-owned range below the ephemeral ports.
fn free_port() -> u16 {
    port_of(&owned_port_run(1)[0])
}

fn socket_activate(tool: &std::path::Path, args: &[String]) -> Command {
    let mut cmd = clean_command(tool);
    // systemd-socket-activate passes only TERM, PATH, USER, HOME and -E
    // variables to the child; set ours with -E.
    cmd.args(args)
        .args(["-E", "HOST=127.0.0.1", "-E", "API_PORT=0", "--"])
        .arg(binary());
    cmd
}

#[test]
fn systemd_socket_activate_hands_over_a_named_socket() {
    let Some(tool) = peer_tool("systemd-socket-activate") else {
        return;
    };
    let port = free_port();
    let cmd = socket_activate(
        &tool,
        &[
            format!("--listen=127.0.0.1:{port}"),
            "--fdname=http".to_owned(),
        ],
    );
    let mut activator = Running::spawn(cmd, "socket-activate").unwrap();
    activator.wait_for_line("Listening on", DEADLINE).unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // The first connection execs portkeeper, which must then answer it.
    let info = get_json(addr, "/info").unwrap();
    assert_eq!(info["listener"]["source"], "systemd");
    assert_eq!(info["listener"]["fd"], 3);
    assert_eq!(info["listener"]["fd_name"], "http");
    assert_eq!(info["listener"]["address"], addr.to_string());
    // systemd-socket-activate execs in place: LISTEN_PID is its own pid.
    assert_eq!(info["pid"], activator.pid());
}

#[test]
fn with_several_sockets_every_one_named_listen_fd_name_serves_and_others_are_closed() {
    let Some(tool) = peer_tool("systemd-socket-activate") else {
        return;
    };
    let (metrics, http, http2) = (free_port(), free_port(), free_port());
    let cmd = socket_activate(
        &tool,
        &[
            format!("--listen=127.0.0.1:{metrics}"),
            format!("--listen=127.0.0.1:{http}"),
            format!("--listen=127.0.0.1:{http2}"),
            "--fdname=metrics:http:http".to_owned(),
        ],
    );
    let mut activator = Running::spawn(cmd, "socket-activate-2").unwrap();
    activator.wait_for_line("as 5", DEADLINE).unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{http}").parse().unwrap();
    let info = get_json(addr, "/info").unwrap();
    assert_eq!(info["listener"]["fd"], 4);
    assert_eq!(info["listener"]["fd_name"], "http");
    // Both fds named http serve: a name maps to a list.
    let second: SocketAddr = format!("127.0.0.1:{http2}").parse().unwrap();
    let info = get_json(second, "/info").unwrap();
    let fds: Vec<&serde_json::Value> = info["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| &l["fd"])
        .collect();
    assert_eq!(fds, [4, 5], "{info}");
    // The unused socket is closed, with a line saying so.
    activator
        .wait_for_line("closed an inherited socket that is not served", DEADLINE)
        .unwrap();
    let metrics_addr: SocketAddr = format!("127.0.0.1:{metrics}").parse().unwrap();
    assert!(
        std::net::TcpStream::connect(metrics_addr).is_err(),
        "the metrics socket should be closed"
    );
}

#[test]
fn accept_yes_connections_are_refused_with_a_clear_error() {
    let Some(tool) = peer_tool("systemd-socket-activate") else {
        return;
    };
    let port = free_port();
    let cmd = socket_activate(
        &tool,
        &["--accept".to_owned(), format!("--listen=127.0.0.1:{port}")],
    );
    let mut activator = Running::spawn(cmd, "socket-activate-accept").unwrap();
    activator.wait_for_line("Listening on", DEADLINE).unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // The spawned child gets the connection itself, refuses it and exits.
    let _ = http_get(addr, "/health");
    let line = activator
        .wait_for_line("portkeeper: error:", DEADLINE)
        .unwrap();
    assert!(line.contains("connected TCP socket"), "{line}");
    assert!(line.contains("Accept=no"), "{line}");
}

#[test]
fn systemfd_no_pid_hands_over_its_socket() {
    let Some(tool) = peer_tool("systemfd") else {
        return;
    };
    let dir = TempDir::new();
    let port = free_port();
    let mut cmd = clean_command(tool);
    cmd.env("HOST", "127.0.0.1")
        .env("API_PORT", "0")
        .current_dir(dir.path())
        .args(["--no-pid", "-b", "128", "-s"])
        .arg(format!("http::127.0.0.1:{port}"))
        .arg("--")
        .arg(binary());
    let mut systemfd = Running::spawn(cmd, "systemfd").unwrap();
    let addr = systemfd.serving_address().unwrap();
    assert_eq!(addr.port(), port);
    let info = get_json(addr, "/info").unwrap();
    assert_eq!(info["listener"]["source"], "systemfd");
    assert_eq!(info["listener"]["fd"], 3);
}
