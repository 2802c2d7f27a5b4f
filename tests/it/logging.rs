//! Logging as a user meets it: RUST_LOG's syntax, LOG_FORMAT, and where lines go.

use std::os::fd::OwnedFd;

use crate::support::*;

/// A server on a socket the test handed over, so its address is known
/// whatever the log level lets through.
fn handed_over(dir: &TempDir) -> (std::process::Command, std::net::SocketAddr) {
    let listener = loopback_listener();
    let addr = listener.local_addr().unwrap();
    let mut cmd = portkeeper(dir.path());
    cmd.env("LISTEN_FDS", "1");
    hand_over(&mut cmd, vec![OwnedFd::from(listener)]);
    (cmd, addr)
}

#[test]
fn a_rust_log_typo_is_a_warning_and_the_server_starts() {
    let dir = TempDir::new();
    let (mut cmd, addr) = handed_over(&dir);
    cmd.env("RUST_LOG", "warn,tower=trce,portkeeper[conn]=debug");
    let mut server = Running::spawn(cmd, "rust-log-typo").unwrap();
    assert_eq!(get_json(addr, "/health").unwrap()["status"], "ok");
    let line = server.wait_for_line("tower=trce", DEADLINE).unwrap();
    assert!(line.contains("WARN") && line.contains("RUST_LOG"), "{line}");
    // The directive before the typo still holds: nothing below warn.
    assert!(!server.stderr().contains(" INFO "), "{}", server.stderr());

    // Directives that name other crates only still let the warning through.
    let (mut cmd, addr) = handed_over(&dir);
    cmd.env("RUST_LOG", "hyper=debug,tower=trce");
    let mut server = Running::spawn(cmd, "rust-log-others").unwrap();
    assert_eq!(get_json(addr, "/health").unwrap()["status"], "ok");
    let line = server.wait_for_line("tower=trce", DEADLINE).unwrap();
    assert!(line.contains("WARN"), "{line}");
}

#[test]
fn log_format_json_writes_one_object_per_line() {
    let dir = TempDir::new();
    let (mut cmd, addr) = handed_over(&dir);
    cmd.env("LOG_FORMAT", "json").env("LOG_LEVEL", "debug");
    let mut server = Running::spawn(cmd, "json").unwrap();
    assert_eq!(get_json(addr, "/health").unwrap()["status"], "ok");
    server.wait_for_line("serving", DEADLINE).unwrap();
    server.signal("TERM").unwrap();
    assert!(server.wait_exit(DEADLINE).unwrap().success());
    let stderr = server.stderr();
    let mut serving = None;
    for line in stderr.lines() {
        let event: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|err| panic!("not a JSON line ({err}): {line:?}\n{stderr}"));
        assert!(event["level"].is_string(), "{line}");
        assert!(event["timestamp"].is_string(), "{line}");
        let message = event["fields"]["message"].as_str().unwrap_or_default();
        if message.starts_with("serving ") {
            serving = Some(event);
        }
    }
    let serving = serving.unwrap_or_else(|| panic!("no serving event:\n{stderr}"));
    assert_eq!(serving["fields"]["address"], addr.to_string(), "{serving}");
    assert_eq!(serving["level"], "INFO", "{serving}");
}

#[test]
fn an_unknown_log_format_is_refused_in_one_line() {
    let dir = TempDir::new();
    let mut cmd = loopback_server(&dir);
    cmd.env("LOG_FORMAT", "yaml");
    let (status, stderr) = run_to_exit(cmd, DEADLINE).unwrap();
    assert_eq!(status.code(), Some(78), "{stderr}");
    assert_eq!(
        stderr.trim(),
        "portkeeper: error: LOG_FORMAT: \"yaml\" is not valid (expected text or json)"
    );
}

/// JOURNAL_STREAM names another stream than stderr (stderr was redirected
/// after systemd set it): the journal is not used, lines go to stderr.
#[test]
fn a_journal_stream_that_is_not_stderr_means_stderr() {
    let dir = TempDir::new();
    let (mut cmd, addr) = handed_over(&dir);
    cmd.env("JOURNAL_STREAM", "1:1");
    let mut server = Running::spawn(cmd, "not-journal").unwrap();
    let line = server.wait_for_line(" serving ", DEADLINE).unwrap();
    assert_eq!(field(&line, "address"), Some(&*addr.to_string()), "{line}");
    assert!(
        !server.stderr().contains("journald"),
        "the journal should not even be tried:\n{}",
        server.stderr()
    );
}

/// Process-protocol variables describe this process; `.env` cannot set them.
#[test]
fn protocol_variables_in_dotenv_are_ignored_with_a_warning() {
    let dir = TempDir::new();
    // Were it taken, NOTIFY_SOCKET would cost a warning of its own, and
    // LISTEN_FDS=1 (nothing at fd 3) would stop the start.
    std::fs::write(
        dir.path().join(".env"),
        "NOTIFY_SOCKET=/nonexistent/notify\nLISTEN_FDS=1\nLOG_LEVEL=info\n",
    )
    .unwrap();
    let cmd = loopback_server(&dir);
    let mut server = Running::spawn(cmd, "dotenv-protocol").unwrap();
    let addr = server.serving_address().unwrap();
    assert_eq!(get_json(addr, "/health").unwrap()["status"], "ok");
    for name in ["NOTIFY_SOCKET", "LISTEN_FDS"] {
        let line = server
            .wait_for_line(&format!("{name} in .env is ignored"), DEADLINE)
            .unwrap();
        assert!(line.contains("WARN"), "{line}");
    }
    assert!(
        !server.stderr().contains("cannot notify"),
        "{}",
        server.stderr()
    );
}

fn mkfifo(path: &std::path::Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("run mkfifo");
    assert!(status.success(), "mkfifo {}", path.display());
}

/// Reading a FIFO blocks until a writer comes: a `.env` or a token file
/// that is one must be refused at once, not hang the start.
#[test]
fn a_fifo_as_dotenv_or_token_file_is_refused_at_once() {
    let dir = TempDir::new();
    let fifo = dir.path().join("tokens");
    mkfifo(&fifo);
    let mut token_file = loopback_server(&dir);
    token_file
        .env("AUTH_REQUIRED", "true")
        .env("API_TOKEN_FILE", &fifo);
    let (status, stderr) = run_to_exit(token_file, DEADLINE).unwrap();
    assert_eq!(status.code(), Some(78), "{stderr}");
    let line = stderr.trim();
    assert_eq!(line.lines().count(), 1, "{stderr}");
    assert!(
        line.contains("API_TOKEN_FILE") && line.contains("named pipe (FIFO)"),
        "{line}"
    );

    let env_dir = TempDir::new();
    mkfifo(&env_dir.path().join(".env"));
    let (status, stderr) = run_to_exit(loopback_server(&env_dir), DEADLINE).unwrap();
    assert_eq!(status.code(), Some(78), "{stderr}");
    let line = stderr.trim();
    assert_eq!(line.lines().count(), 1, "{stderr}");
    assert!(
        line.contains(".env") && line.contains("named pipe (FIFO)"),
        "{line}"
    );
}
