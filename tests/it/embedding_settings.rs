//! Settings as an embedding program gives them: `Server::from_vars`,
//! `from_env_prefixed` and the typed setters, through the public API.
//!
//! These run `portkeeper` inside the test process, so none of them installs
//! the global subscriber (`logging(false)`) or changes the environment: a
//! prefixed environment is tried in a child (this very test binary, running
//! one test that only acts when its marker variable is set).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use axum::Router;
use axum::routing::post;

use crate::support::*;

const TOKEN: &str = "embedded-token-0123456789";

fn loopback() -> Vec<(&'static str, &'static str)> {
    vec![("HOST", "127.0.0.1"), ("API_PORT", "0")]
}

#[test]
fn from_vars_listens_where_the_variables_say() {
    let listening = portkeeper::Server::from_vars(loopback())
        .logging(false)
        .listen()
        .unwrap();
    let address = listening.local_addr().unwrap();
    assert_eq!(address.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_ne!(address.port(), 0);
}

#[test]
fn bind_replaces_host_and_api_port() {
    let listening = portkeeper::Server::from_vars([("HOST", "0.0.0.0"), ("API_PORT", "1")])
        .logging(false)
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .listen()
        .unwrap();
    let address = listening.local_addr().unwrap();
    assert_eq!(address.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_ne!(address.port(), 1);
}

#[test]
fn bind_all_binds_every_address_in_place_of_listen() {
    let listening = portkeeper::Server::from_vars([("LISTEN", "/nonexistent/dir/x.sock")])
        .logging(false)
        .bind_all([
            SocketAddr::from(([127, 0, 0, 1], 0)),
            SocketAddr::from(([127, 0, 0, 1], 0)),
        ])
        .listen()
        .unwrap();
    assert!(listening.local_addr().unwrap().ip().is_loopback());
    let shown = format!("{listening:?}");
    assert!(shown.contains("listeners: 2"), "{shown}");
}

#[test]
fn auto_find_port_searches_the_given_range() {
    let mut held = owned_port_run(3);
    let first = port_of(&held[0]);
    let last = port_of(&held[2]);
    // The first two stay busy; the last is free.
    drop(held.pop());
    let listening = portkeeper::Server::from_vars(loopback())
        .logging(false)
        .bind(SocketAddr::from(([127, 0, 0, 1], first)))
        .auto_find_port(first..=last)
        .listen()
        .unwrap();
    assert_eq!(listening.local_addr().unwrap().port(), last);
}

#[test]
fn bad_typed_values_are_refused_naming_the_setter() {
    let refused = |server: portkeeper::Server| {
        let err = server.logging(false).listen().unwrap_err();
        (err.exit_status(), err.to_string())
    };
    let base = || portkeeper::Server::from_vars(loopback());
    // A start above the end (a variable, so clippy lets the mistake be made).
    let reversed: (u16, u16) = (10, 9);
    assert_eq!(
        refused(base().header_read_timeout(Duration::ZERO)),
        (
            78,
            "header_read_timeout: \"0s\" is not valid (expected a duration from 1s to 3600s)"
                .to_owned()
        )
    );
    for (setter, server) in [
        (
            "request_timeout",
            base().request_timeout(Duration::from_secs(3601)),
        ),
        (
            "shutdown_timeout",
            base().shutdown_timeout(Duration::from_secs(86_401)),
        ),
        ("max_body_bytes", base().max_body_bytes(usize::MAX)),
        ("api_tokens", base().api_tokens(["too-short"])),
        ("bind_all", base().bind_all([])),
        (
            "auto_find_port",
            base().auto_find_port(reversed.0..=reversed.1),
        ),
        (
            "from_env_prefixed",
            portkeeper::Server::from_env_prefixed("app-"),
        ),
        (
            "from_env_prefixed",
            portkeeper::Server::from_env_prefixed(""),
        ),
    ] {
        let (status, message) = refused(server);
        assert_eq!(status, 78, "{message}");
        assert!(message.starts_with(&format!("{setter}: ")), "{message}");
        assert!(!message.contains("too-short"), "a token is never shown");
    }
}

/// One raw HTTP/1.1 request with an optional body; the status code.
fn status_of(addr: SocketAddr, method: &str, path: &str, headers: &str, body: &str) -> u16 {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    parse_response(&response).unwrap().0
}

#[test]
fn typed_settings_shape_the_served_app() {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let listening = portkeeper::Server::from_vars(loopback())
        .logging(false)
        .api_tokens([TOKEN])
        .max_body_bytes(4)
        .debug(true)
        .shutdown_timeout(Duration::from_secs(5))
        .with_graceful_shutdown(async {
            let _ = stopped.await;
        })
        .listen()
        .unwrap();
    let addr = listening.local_addr().unwrap();
    let app = Router::new().route("/echo", post(|body: String| async move { body }));
    // A runtime on a thread of its own, as a host program would run it.
    let serving = std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(listening.serve(app).into_future())
    });
    let bearer = format!("Authorization: Bearer {TOKEN}\r\n");
    assert_eq!(status_of(addr, "GET", "/info", "", ""), 401);
    assert_eq!(status_of(addr, "GET", "/info", &bearer, ""), 200);
    assert_eq!(status_of(addr, "POST", "/echo", &bearer, "1234"), 200);
    assert_eq!(status_of(addr, "POST", "/echo", &bearer, "12345"), 413);
    // debug(true): the debug routes are mounted.
    let sleep = "/debug/sleep?ms=1";
    assert_eq!(status_of(addr, "GET", sleep, &bearer, ""), 200);
    stop.send(()).unwrap();
    // The drain is bounded by shutdown_timeout (5 s), so this join ends.
    serving.join().unwrap().unwrap();
}

/// The marker that makes [`prefixed_environment_child`] act: `dotenv` or `no-dotenv`.
const CHILD_MARKER: &str = "PORTKEEPER_IT_PREFIXED_CHILD";

/// In a child process only: listens with `from_env_prefixed("APP_")` and
/// prints the address, or the error.
#[test]
fn prefixed_environment_child() {
    let Some(mode) = std::env::var_os(CHILD_MARKER) else {
        return;
    };
    let server = portkeeper::Server::from_env_prefixed("APP_")
        .logging(false)
        .dotenv(mode != "no-dotenv");
    match server.listen() {
        Ok(listening) => println!("CHILD listening {}", listening.local_addr().unwrap()),
        Err(err) => println!("CHILD error {} {err}", err.exit_status()),
    }
}

/// Runs [`prefixed_environment_child`] in `dir` with `vars`; its `CHILD` line.
fn run_child(dir: &TempDir, mode: &str, vars: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env_clear()
        .current_dir(dir.path())
        .env(CHILD_MARKER, mode)
        .args([
            "embedding_settings::prefixed_environment_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ]);
    for (name, value) in vars {
        cmd.env(name, value);
    }
    let output = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    stdout
        .lines()
        // libtest prints the test's name on the same line, before ours.
        .find_map(|line| Some(line[line.find("CHILD ")? + "CHILD ".len()..].to_owned()))
        .unwrap_or_else(|| panic!("no CHILD line: {stdout}"))
}

#[test]
fn a_prefixed_environment_reads_prefixed_names_only() {
    let dir = TempDir::new();
    // The host program's own variables, which would be refused if read.
    let theirs = [
        ("HOST", "not-an-address"),
        ("API_PORT", "http"),
        ("DEBUG", "sometimes"),
        ("LISTEN", "nowhere"),
    ];
    let ours = [("APP_HOST", "127.0.0.1"), ("APP_API_PORT", "0")];
    let vars: Vec<_> = theirs.iter().chain(&ours).copied().collect();
    let line = run_child(&dir, "dotenv", &vars);
    let address: SocketAddr = line
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("{line}"))
        .parse()
        .unwrap();
    assert_eq!(address.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));

    // Errors name the variable as spelled.
    let line = run_child(&dir, "dotenv", &[("APP_API_PORT", "x")]);
    assert_eq!(
        line,
        "error 78 APP_API_PORT: \"x\" is not valid (expected a port number from 0 to 65535 (0 = any free port))"
    );

    // `.env` is read under the prefix too, unless turned off.
    std::fs::write(dir.path().join(".env"), "APP_REQUEST_TIMEOUT=never\n").unwrap();
    let line = run_child(&dir, "dotenv", &ours);
    assert!(line.starts_with("error 78 APP_REQUEST_TIMEOUT: "), "{line}");
    let line = run_child(&dir, "no-dotenv", &ours);
    assert!(line.starts_with("listening 127.0.0.1:"), "{line}");
}
