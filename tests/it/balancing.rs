//! Behind a load balancer: `/ready` turns 503 when a stop begins while
//! `/health` stays 200, `SHUTDOWN_DELAY` keeps the server accepting for that
//! long (and is skipped where the socket outlives the process), and
//! `/metrics` counts what the server did. The HAProxy roll is
//! `bench/haproxy_roll.sh`, with its figures in `docs/kubernetes.md`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::support::*;

const TOKEN: &str = "balancing-test-token-0123456789";

fn status(addr: SocketAddr, path: &str) -> u16 {
    http_get(addr, path)
        .unwrap_or_else(|err| panic!("GET {path}: {err:#}"))
        .0
}

/// The value of the sample `name` (a whole line's first field) in OpenMetrics text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (key, value) = line.rsplit_once(' ')?;
        (key == name).then(|| value.parse().ok())?
    })
}

#[test]
fn ready_turns_503_at_sigterm_while_the_delay_keeps_serving_then_it_drains() {
    let dir = TempDir::new();
    let mut cmd = loopback_server(&dir);
    cmd.env("SHUTDOWN_DELAY", "4");
    let mut server = Running::spawn(cmd, "delay").unwrap();
    let addr = server.serving_address().unwrap();
    assert_eq!(status(addr, "/ready"), 200);
    assert_eq!(status(addr, "/health"), 200);
    // A keep-alive connection opened before the stop keeps working during the delay.
    let mut kept = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    kept.set_read_timeout(Some(DEADLINE)).unwrap();

    server.signal("TERM").unwrap();
    server
        .wait_for_line("SHUTDOWN_DELAY: serving on", DEADLINE)
        .unwrap();
    // New connections are still accepted and answered: not ready, but alive.
    let (ready, body) = http_get(addr, "/ready").unwrap();
    assert_eq!((ready, body.as_str()), (503, r#"{"status":"stopping"}"#));
    assert_eq!(status(addr, "/health"), 200);
    assert_eq!(status(addr, "/info"), 200);
    write!(kept, "GET /health HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut reply = [0u8; 256];
    let n = kept.read(&mut reply).unwrap();
    assert!(
        String::from_utf8_lossy(&reply[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&reply[..n])
    );
    assert!(
        !server.output().contains("stopped accepting"),
        "the drain began before the delay was over:\n{}",
        server.output()
    );

    server.wait_for_line("stopped accepting", DEADLINE).unwrap();
    let exit = server.wait_exit(DEADLINE).unwrap();
    assert!(exit.success(), "{exit}\n{}", server.output());
}

#[test]
fn a_second_stop_signal_during_the_delay_stops_at_once() {
    let dir = TempDir::new();
    let mut cmd = loopback_server(&dir);
    // Far longer than DEADLINE: only the second signal can end it in time.
    cmd.env("SHUTDOWN_DELAY", "600")
        .env("DEBUG", "true")
        .env("SHUTDOWN_TIMEOUT", "60");
    let mut server = Running::spawn(cmd, "delay-twice").unwrap();
    let addr = server.serving_address().unwrap();
    // A request in flight, so that only the second signal can end the drain early.
    let _slow = start_slow_request(addr, 10_000).unwrap();
    server.wait_for_line("debug: sleeping", DEADLINE).unwrap();
    server.signal("TERM").unwrap();
    server
        .wait_for_line("SHUTDOWN_DELAY: serving on", DEADLINE)
        .unwrap();
    server.signal("TERM").unwrap();
    // DEADLINE is far below SHUTDOWN_DELAY and SHUTDOWN_TIMEOUT: an exit
    // within it can only come from the second signal.
    let exit = server.wait_exit(DEADLINE).unwrap();
    assert_eq!(exit.code(), Some(143), "{}", server.output());
    assert!(server.output().contains("second stop request"));
}

#[test]
fn the_delay_is_not_applied_to_a_socket_that_outlives_the_process() {
    // systemfd's way (LISTEN_FDS without LISTEN_PID): its copy of the socket
    // keeps queueing connections, so there is no balancer to wait for.
    let listener = loopback_listener();
    let addr = listener.local_addr().unwrap();
    let dir = TempDir::new();
    let mut cmd = portkeeper(dir.path());
    cmd.env("LISTEN_FDS", "1").env("SHUTDOWN_DELAY", "600");
    hand_over(&mut cmd, vec![listener.into()]);
    let mut server = Running::spawn(cmd, "delay-inherited").unwrap();
    server.serving_address().unwrap();
    assert_eq!(status(addr, "/ready"), 200);
    let stop = Instant::now();
    server.signal("TERM").unwrap();
    let exit = server.wait_exit(DEADLINE).unwrap();
    assert!(exit.success(), "{exit}\n{}", server.output());
    assert!(stop.elapsed() < DEADLINE);
    assert!(
        server
            .output()
            .contains("SHUTDOWN_DELAY is not applied: the listening socket outlives this process"),
        "{}",
        server.output()
    );
}

/// A `NOTIFY_SOCKET` says nothing about the socket: one this process bound
/// closes when it stops, so the delay applies under a manager too (issue 21.8).
/// An upgrade asked for during the delay is refused with a log line.
#[test]
fn the_delay_applies_under_a_service_manager_to_a_socket_bound_here() {
    let dir = TempDir::new();
    let path = dir.path().join("notify.sock");
    let _manager = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    let mut cmd = loopback_server(&dir);
    // Far longer than DEADLINE: only the second signal ends it in time.
    cmd.env("NOTIFY_SOCKET", &path)
        .env("SHUTDOWN_DELAY", "600")
        .env("DEBUG", "true")
        .env("SHUTDOWN_TIMEOUT", "60");
    let mut server = Running::spawn(cmd, "delay-notify").unwrap();
    let addr = server.serving_address().unwrap();
    // A request in flight, so that the second signal ends the drain by force
    // (143) rather than racing an empty drain (0).
    let _slow = start_slow_request(addr, 10_000).unwrap();
    server.wait_for_line("debug: sleeping", DEADLINE).unwrap();
    server.signal("TERM").unwrap();
    server
        .wait_for_line("SHUTDOWN_DELAY: serving on", DEADLINE)
        .unwrap();
    assert_eq!(status(addr, "/ready"), 503);
    assert_eq!(status(addr, "/health"), 200);
    server.signal("USR2").unwrap();
    server
        .wait_for_line("SIGUSR2 during SHUTDOWN_DELAY", DEADLINE)
        .unwrap();
    server.signal("TERM").unwrap();
    let exit = server.wait_exit(DEADLINE).unwrap();
    assert_eq!(exit.code(), Some(143), "{}", server.output());
    assert!(
        !server.output().contains("SHUTDOWN_DELAY is not applied"),
        "{}",
        server.output()
    );
}

#[test]
fn metrics_count_requests_by_class_behind_the_token_and_probes_stay_open() {
    let dir = TempDir::new();
    let mut cmd = loopback_server(&dir);
    cmd.env("AUTH_REQUIRED", "true").env("API_TOKEN", TOKEN);
    let mut server = Running::spawn(cmd, "metrics").unwrap();
    let addr = server.serving_address().unwrap();

    // Probes carry no token.
    assert_eq!(status(addr, "/health"), 200);
    assert_eq!(status(addr, "/ready"), 200);
    assert_eq!(status(addr, "/metrics"), 401);
    assert_eq!(status(addr, "/info"), 401);

    let bearer = format!("Bearer {TOKEN}");
    let response = http_exchange(addr, "GET", "/metrics", &[("Authorization", &bearer)]).unwrap();
    let (code, text) = parse_response(&response).unwrap();
    assert_eq!(code, 200, "{response}");
    assert_eq!(
        response_header(&response, "content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    // Counted before this scrape: two probes (2xx) and two refusals (4xx).
    assert_eq!(
        sample(&text, r#"portkeeper_http_requests_total{class="2xx"}"#),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"portkeeper_http_requests_total{class="4xx"}"#),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "portkeeper_http_request_duration_seconds_count"),
        Some(4.0),
        "{text}"
    );
    // This very connection is open and its request is in flight (the earlier
    // ones may be a moment from being counted out).
    let open = sample(&text, "portkeeper_open_connections").unwrap();
    assert!((1.0..=5.0).contains(&open), "{text}");
    let in_flight = sample(&text, "portkeeper_http_requests_in_flight").unwrap();
    assert!((1.0..=5.0).contains(&in_flight), "{text}");
    let info = format!(
        r#"portkeeper_listener_info{{source="fixed",role="app",address="{addr}",fd_name=""}}"#
    );
    assert_eq!(sample(&text, &info), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, r#"portkeeper_upgrades_total{outcome="done"}"#),
        Some(0.0)
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
}

#[test]
fn a_failed_binary_upgrade_is_counted() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new();
    let executable = dir.path().join("portkeeper");
    std::fs::copy(binary(), &executable).unwrap();
    let mut cmd = clean_command(&executable);
    cmd.current_dir(dir.path())
        .env("HOST", "127.0.0.1")
        .env("API_PORT", "0");
    let mut server = Running::spawn(cmd, "upgrade-metrics").unwrap();
    let addr = server.serving_address().unwrap();

    // A new "build" that cannot start, put in place as an installer would.
    let next = dir.path().join("portkeeper.new");
    std::fs::write(&next, b"#!/bin/sh\nexit 1\n").unwrap();
    std::fs::set_permissions(&next, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&next, &executable).unwrap();
    server.signal("USR2").unwrap();
    server
        .wait_for_line("binary upgrade failed", DEADLINE)
        .unwrap();

    let (code, text) = http_get(addr, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert_eq!(
        sample(&text, r#"portkeeper_upgrades_total{outcome="failed"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"portkeeper_upgrades_total{outcome="done"}"#),
        Some(0.0),
        "{text}"
    );
    server.signal("TERM").unwrap();
    assert!(server.wait_exit(DEADLINE).unwrap().success());
}
