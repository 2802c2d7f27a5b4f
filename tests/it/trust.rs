//! Trust: bearer tokens, the limits that keep the server serving, and bad input refused cleanly.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::*;

/// Two tokens, as during a rotation. Distinctive, so a leak is easy to find.
const OLD_TOKEN: &str = "old-token-Zq7vX2pL9mK4";
const NEW_TOKEN: &str = "new-token-Hc3wB8nR5tY1";

fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> String {
    let authorization = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = authorization
        .as_deref()
        .map(|value| ("Authorization", value))
        .into_iter()
        .collect();
    http_exchange(addr, "GET", path, &headers).unwrap()
}

fn status(response: &str) -> u16 {
    parse_response(response).unwrap().0
}

fn json_body(response: &str) -> serde_json::Value {
    let (_, body) = parse_response(response).unwrap();
    serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {response:?}"))
}

/// Every route but /health needs a token; both rotated tokens work; the
/// answers follow RFC 6750; and under LOG_LEVEL=trace no token appears in
/// any output.
#[test]
fn tokens_guard_every_route_but_health_and_never_leak() {
    let dir = TempDir::new();
    let mut cmd = loopback_server(&dir);
    cmd.env("AUTH_REQUIRED", "true")
        .env("API_TOKEN", format!("{OLD_TOKEN}, {NEW_TOKEN}"))
        .env("LOG_LEVEL", "trace");
    let mut server = Running::spawn(cmd, "auth").unwrap();
    let addr = server.serving_address().unwrap();

    let health = get(addr, "/health", None);
    assert_eq!(status(&health), 200, "{health}");

    for path in ["/info", "/does-not-exist"] {
        let missing = get(addr, path, None);
        assert_eq!(status(&missing), 401, "{missing}");
        assert_eq!(
            response_header(&missing, "WWW-Authenticate"),
            Some("Bearer realm=\"portkeeper\""),
            "{missing}"
        );
        assert_eq!(
            response_header(&missing, "content-type"),
            Some("application/json")
        );
        assert_eq!(json_body(&missing)["error"], "unauthorized");
    }

    let wrong = get(addr, "/info", Some("wrong-token-0123456789"));
    assert_eq!(status(&wrong), 401, "{wrong}");
    let challenge = response_header(&wrong, "WWW-Authenticate").unwrap();
    assert!(
        challenge.starts_with("Bearer realm=\"portkeeper\""),
        "{challenge}"
    );
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    assert_eq!(json_body(&wrong)["error"], "invalid_token");

    let basic = http_exchange(
        addr,
        "GET",
        "/info",
        &[("Authorization", "Basic dXNlcjpwYXNzd29yZA==")],
    )
    .unwrap();
    assert_eq!(status(&basic), 401, "{basic}");

    for token in [OLD_TOKEN, NEW_TOKEN] {
        let allowed = get(addr, "/info", Some(token));
        assert_eq!(status(&allowed), 200, "{allowed}");
        assert_eq!(json_body(&allowed)["pid"], server.pid());
        assert!(!allowed.contains(OLD_TOKEN) && !allowed.contains(NEW_TOKEN));
    }
    // A token's prefix or the two glued together are not tokens.
    let prefix = get(addr, "/info", Some(&OLD_TOKEN[..OLD_TOKEN.len() - 1]));
    assert_eq!(status(&prefix), 401);

    server.signal("TERM").unwrap();
    assert!(server.wait_exit(DEADLINE).unwrap().success());
    let output = server.output();
    // The filter really was trace (the configuration dump shows the level
    // in force), so every event of every level could have shown a token.
    assert!(
        output.contains("level: LevelFilter::TRACE"),
        "LOG_LEVEL=trace should have set the trace level:\n{output}"
    );
    assert!(
        output.contains("configuration") && output.contains("redacted"),
        "the configuration dump (debug level) was logged, tokens redacted:\n{output}"
    );
    assert!(
        output.contains("tokens=2"),
        "the start-up log says how many tokens:\n{output}"
    );
    for token in [OLD_TOKEN, NEW_TOKEN] {
        assert!(
            !output.contains(token),
            "token leaked into output:\n{output}"
        );
    }
}

#[test]
fn tokens_come_from_a_file_or_the_systemd_credential() {
    let dir = TempDir::new();
    let file = dir.path().join("tokens");
    std::fs::write(
        &file,
        format!("# rotated 2026-11\n{OLD_TOKEN}\n\n  {NEW_TOKEN}  \n"),
    )
    .unwrap();
    let credentials = dir.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    std::fs::write(credentials.join("api-token"), format!("{NEW_TOKEN}\n")).unwrap();

    for (label, variable, value) in [
        ("file", "API_TOKEN_FILE", file.as_os_str()),
        (
            "credential",
            "CREDENTIALS_DIRECTORY",
            credentials.as_os_str(),
        ),
    ] {
        let mut cmd = loopback_server(&dir);
        cmd.env("AUTH_REQUIRED", "true").env(variable, value);
        let mut server = Running::spawn(cmd, label).unwrap();
        let addr = server.serving_address().unwrap();
        assert_eq!(status(&get(addr, "/info", Some(NEW_TOKEN))), 200, "{label}");
        assert_eq!(status(&get(addr, "/info", None)), 401, "{label}");
        let old = status(&get(addr, "/info", Some(OLD_TOKEN)));
        assert_eq!(old, if label == "file" { 200 } else { 401 }, "{label}");
    }
}

#[test]
fn the_units_empty_credential_fallback_serves_when_auth_is_not_required() {
    let dir = TempDir::new();
    let credentials = dir.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    // systemd/portkeeper.service's SetCredential=api-token:\n, used when
    // /etc/portkeeper/api-token does not exist.
    std::fs::write(credentials.join("api-token"), "\n").unwrap();
    let mut cmd = loopback_server(&dir);
    cmd.env("CREDENTIALS_DIRECTORY", &credentials);
    let mut server = Running::spawn(cmd, "fallback-credential").unwrap();
    let addr = server.serving_address().unwrap();
    assert_eq!(status(&get(addr, "/info", None)), 200);
}

/// Reads until the server closes the connection (EOF or reset) or `limit`
/// passes, writing `drip` every `every` meanwhile. Returns when it closed.
fn time_until_closed(
    stream: &mut TcpStream,
    drip: Option<&[u8]>,
    every: Duration,
    limit: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    stream.set_read_timeout(Some(every)).unwrap();
    let mut buf = [0u8; 1024];
    while start.elapsed() < limit {
        if let Some(bytes) = drip
            && stream.write_all(bytes).is_err()
        {
            return Some(start.elapsed());
        }
        match stream.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            // hyper may answer before closing; keep reading for the close.
            Ok(_) => {}
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

/// A slow-loris client dripping one header line every 200 ms is cut off at
/// HEADER_READ_TIMEOUT, as is a connection that never sends a byte and an
/// idle keep-alive connection; a normal request is served meanwhile.
#[test]
fn slow_headers_and_idle_connections_are_closed_at_the_header_timeout() {
    let dir = TempDir::new();
    let mut cmd = loopback_server(&dir);
    cmd.env("HEADER_READ_TIMEOUT", "1");
    let mut server = Running::spawn(cmd, "slow-loris").unwrap();
    let addr = server.serving_address().unwrap();
    let bound = Duration::from_secs(1);
    // Only a lower bound is asserted: a loaded machine closes later, never
    // sooner; a connection never closed fails at DEADLINE.
    let give_up = DEADLINE;
    let tick = Duration::from_millis(200);

    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut silent = TcpStream::connect(addr).unwrap();
    // While both are held open, others are served.
    assert_eq!(get_json(addr, "/health").unwrap()["status"], "ok");

    let closed = time_until_closed(&mut slow, Some(b"X-Slow: 1\r\n"), tick, give_up)
        .expect("the server never closed a slow-loris connection");
    assert!(
        closed >= bound - tick,
        "slow headers closed after {closed:?}, before the {bound:?} timeout"
    );
    // The silent connection started before the slow one's wait, so it may go
    // at once; it must go.
    time_until_closed(&mut silent, None, tick, give_up)
        .expect("the server never closed a silent connection");

    let mut keep_alive = TcpStream::connect(addr).unwrap();
    keep_alive
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    keep_alive.set_read_timeout(Some(give_up)).unwrap();
    let mut first = [0u8; 512];
    let n = keep_alive.read(&mut first).unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &first[..n]);
    let closed = time_until_closed(&mut keep_alive, None, tick, give_up)
        .expect("an idle keep-alive connection was never closed");
    assert!(
        closed >= bound - tick,
        "idle keep-alive closed after {closed:?}, before the {bound:?} timeout"
    );
}

/// A half-sent request head does not hold a stop open for SHUTDOWN_TIMEOUT:
/// the process exits within about the header timeout.
#[test]
fn a_slow_loris_client_does_not_delay_a_stop() {
    let dir = TempDir::new();
    let mut cmd = loopback_server(&dir);
    cmd.env("HEADER_READ_TIMEOUT", "2")
        .env("SHUTDOWN_TIMEOUT", "60");
    let mut server = Running::spawn(cmd, "slow-loris-stop").unwrap();
    let addr = server.serving_address().unwrap();
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    assert_eq!(get_json(addr, "/health").unwrap()["status"], "ok");

    server.signal("TERM").unwrap();
    // DEADLINE is far below the 60 s SHUTDOWN_TIMEOUT: an exit within it
    // means the half-sent head did not hold the drain.
    let status = server.wait_exit(DEADLINE).unwrap();
    assert!(status.success(), "exit status {status}");
}

#[test]
fn bodies_above_max_body_bytes_are_refused_with_413() {
    let dir = TempDir::new();
    let mut cmd = loopback_server(&dir);
    cmd.env("MAX_BODY_BYTES", "100");
    let mut server = Running::spawn(cmd, "body-limit").unwrap();
    let addr = server.serving_address().unwrap();
    let too_large = http_exchange(addr, "POST", "/health", &[("Content-Length", "101")]).unwrap();
    assert_eq!(status(&too_large), 413, "{too_large}");
    let within = http_exchange(addr, "POST", "/health", &[("Content-Length", "0")]).unwrap();
    assert_eq!(status(&within), 405, "{within}");
}

#[test]
fn debug_on_a_reachable_address_warns_at_start() {
    let dir = TempDir::new();
    let mut cmd = portkeeper(dir.path());
    cmd.env("DEBUG", "true")
        .env("HOST", "0.0.0.0")
        .env("API_PORT", "0");
    let mut exposed = Running::spawn(cmd, "debug-exposed").unwrap();
    let line = exposed
        .wait_for_line("DEBUG=true on an address", DEADLINE)
        .unwrap();
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("0.0.0.0"), "{line}");

    let mut cmd = loopback_server(&dir);
    cmd.env("DEBUG", "true");
    let mut local = Running::spawn(cmd, "debug-local").unwrap();
    local.serving_address().unwrap();
    assert!(
        !local.output().contains("DEBUG=true on an address"),
        "{}",
        local.output()
    );
}

/// How one bad input is set up: extra variables, and what sits at fd 3.
struct BadInput {
    label: &'static str,
    vars: Vec<(&'static str, String)>,
    fd3: Option<OwnedFd>,
    /// Text the one line must contain (the variable, the value or the file).
    names: Vec<String>,
    /// Text it must not contain (a token).
    hides: Option<&'static str>,
}

fn case(label: &'static str, vars: &[(&'static str, &str)], names: &[&str]) -> BadInput {
    BadInput {
        label,
        vars: vars.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        fd3: None,
        names: names.iter().map(|n| n.to_string()).collect(),
        hides: None,
    }
}

fn bound_but_not_listening() -> OwnedFd {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    OwnedFd::from(socket)
}

fn bad_inputs(dir: &Path) -> Vec<BadInput> {
    let missing = dir.join("no-such-tokens");
    let empty = dir.join("empty-tokens");
    std::fs::write(&empty, "# nothing but a comment\n\n").unwrap();
    let malformed = dir.join("malformed-tokens");
    std::fs::write(
        &malformed,
        format!("{OLD_TOKEN}\nZq7 has spaces 0123456789\n"),
    )
    .unwrap();
    let huge = dir.join("huge-tokens");
    std::fs::write(&huge, "a".repeat(70_000)).unwrap();
    let bad_credentials = dir.join("creds");
    // api-token exists but is a directory: present, yet unreadable.
    std::fs::create_dir_all(bad_credentials.join("api-token")).unwrap();
    // What the service unit's SetCredential= fallback leaves without a token file.
    let fallback_credentials = dir.join("fallback-creds");
    std::fs::create_dir_all(&fallback_credentials).unwrap();
    std::fs::write(fallback_credentials.join("api-token"), "\n").unwrap();
    let regular_file = std::fs::File::open(&empty).unwrap();
    let path = |p: &Path| p.display().to_string();
    let required = ("AUTH_REQUIRED", "true");

    let mut cases = vec![
        case(
            "required, no token",
            &[required],
            &["AUTH_REQUIRED", "no token"],
        ),
        case(
            "required, empty API_TOKEN",
            &[required, ("API_TOKEN", "")],
            &["API_TOKEN", "no token"],
        ),
        case(
            "required, only commas",
            &[required, ("API_TOKEN", " , ,")],
            &["API_TOKEN", "no token"],
        ),
        case(
            "token without AUTH_REQUIRED",
            &[("API_TOKEN", OLD_TOKEN)],
            &["API_TOKEN", "AUTH_REQUIRED is false"],
        ),
        case(
            "API_TOKEN and API_TOKEN_FILE",
            &[
                required,
                ("API_TOKEN", OLD_TOKEN),
                ("API_TOKEN_FILE", "/etc/hostname"),
            ],
            &["API_TOKEN and API_TOKEN_FILE"],
        ),
        case(
            "token file missing",
            &[required, ("API_TOKEN_FILE", &path(&missing))],
            &["API_TOKEN_FILE", &path(&missing), "No such file"],
        ),
        case(
            "credential missing",
            &[required, ("CREDENTIALS_DIRECTORY", "/nonexistent")],
            &["CREDENTIALS_DIRECTORY", "/nonexistent/api-token"],
        ),
        case(
            "token file is a directory",
            &[required, ("API_TOKEN_FILE", &path(dir))],
            &["API_TOKEN_FILE", &path(dir)],
        ),
        case(
            "token file without tokens",
            &[required, ("API_TOKEN_FILE", &path(&empty))],
            &["API_TOKEN_FILE", &path(&empty), "no token"],
        ),
        case(
            "token file far too large",
            &[required, ("API_TOKEN_FILE", &path(&huge))],
            &["API_TOKEN_FILE", &path(&huge), "larger than"],
        ),
        case(
            "credential unreadable",
            &[required, ("CREDENTIALS_DIRECTORY", &path(&bad_credentials))],
            &[
                "CREDENTIALS_DIRECTORY",
                &path(&bad_credentials.join("api-token")),
            ],
        ),
        case(
            "credential is the unit's bare-newline fallback",
            &[
                required,
                ("CREDENTIALS_DIRECTORY", &path(&fallback_credentials)),
            ],
            &["CREDENTIALS_DIRECTORY", "no token"],
        ),
        case(
            "LISTEN_FDS=1 with nothing at fd 3",
            &[("LISTEN_FDS", "1")],
            &["inherited fd 3", "not open"],
        ),
        case(
            "LISTEN_FDNAMES count mismatch",
            &[("LISTEN_FDS", "2"), ("LISTEN_FDNAMES", "http")],
            &["LISTEN_FDNAMES", "\"http\""],
        ),
    ];
    let mut short = case(
        "token too short",
        &[required, ("API_TOKEN", "Zq7short")],
        &["API_TOKEN", "token 1", "too short"],
    );
    short.hides = Some("Zq7short");
    let mut spaced = case(
        "second token malformed",
        &[
            required,
            (
                "API_TOKEN",
                &format!("{OLD_TOKEN},Zq7 has spaces 0123456789"),
            ),
        ],
        &["API_TOKEN", "token 2"],
    );
    spaced.hides = Some("Zq7 has");
    let mut in_file = case(
        "token file line malformed",
        &[required, ("API_TOKEN_FILE", &path(&malformed))],
        &["API_TOKEN_FILE", &path(&malformed), "token 2"],
    );
    in_file.hides = Some("Zq7 has");
    let mut not_socket = case(
        "a regular file at fd 3",
        &[("LISTEN_FDS", "1")],
        &["inherited fd 3", "not a socket", &path(&empty)],
    );
    not_socket.fd3 = Some(OwnedFd::from(regular_file));
    let mut udp = case(
        "a UDP socket at fd 3",
        &[("LISTEN_FDS", "1")],
        &["inherited fd 3", "UDP"],
    );
    udp.fd3 = Some(OwnedFd::from(UdpSocket::bind("127.0.0.1:0").unwrap()));
    let mut not_listening = case(
        "a TCP socket bound but not listening at fd 3",
        &[("LISTEN_FDS", "1")],
        &["inherited fd 3", "not listening"],
    );
    not_listening.fd3 = Some(bound_but_not_listening());
    cases.extend([short, spaced, in_file, not_socket, udp, not_listening]);
    // The whole file content must not leak either.
    for case in &mut cases {
        if case.hides.is_none() {
            case.hides = Some(OLD_TOKEN);
        }
    }
    cases
}

#[test]
fn bad_inputs_exit_78_with_one_line_naming_the_input() {
    let dir = TempDir::new();
    let mut failures = Vec::new();
    let cases = bad_inputs(dir.path());
    assert!(cases.len() >= 18, "the table shrank to {}", cases.len());
    for case in cases {
        let mut cmd = loopback_server(&dir);
        for (name, value) in &case.vars {
            cmd.env(name, value);
        }
        if let Some(fd) = case.fd3 {
            hand_over(&mut cmd, vec![fd]);
        }
        let (status, stderr) = run_to_exit(cmd, DEADLINE).unwrap();
        let line = stderr.trim();
        let mut problems = Vec::new();
        if status.code() != Some(78) {
            problems.push(format!("status {status}"));
        }
        if line.lines().count() != 1 {
            problems.push("not one line".to_owned());
        }
        if !line.starts_with("portkeeper: error: ") || line.contains("panicked") {
            problems.push("not a clean error".to_owned());
        }
        for name in &case.names {
            if !line.contains(name.as_str()) {
                problems.push(format!("does not name {name:?}"));
            }
        }
        if let Some(secret) = case.hides
            && line.contains(secret)
        {
            problems.push(format!("shows the secret {secret:?}"));
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{}: {}: {stderr:?}",
                case.label,
                problems.join(", ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "refused badly:\n{}",
        failures.join("\n")
    );
}
