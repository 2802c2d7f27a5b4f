//! Configuration as a user meets it: `.env`, real variables, and bad values refused.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use crate::support::*;

#[test]
fn dotenv_is_read_and_real_variables_win() {
    let dir = TempDir::new();
    let held = loopback_listener();
    std::fs::write(
        dir.path().join(".env"),
        format!(
            "# a comment\nHOST=127.0.0.1\nAPI_PORT={}\nLOG_LEVEL=debug\n",
            port_of(&held)
        ),
    )
    .unwrap();
    let mut cmd = portkeeper(dir.path());
    // The .env port is busy; the real variable must win or the start fails.
    cmd.env("API_PORT", "0");
    let mut server = Running::spawn(cmd, "dotenv").unwrap();
    let addr = server.serving_address().unwrap();
    assert_eq!(addr.ip().to_string(), "127.0.0.1", "HOST from .env");
    assert_ne!(addr.port(), port_of(&held), "API_PORT from the environment");
    // LOG_LEVEL=debug from .env: the effective configuration is logged at debug.
    server.wait_for_line("configuration", DEADLINE).unwrap();
}

#[test]
fn a_malformed_dotenv_is_refused_not_ignored() {
    let dir = TempDir::new();
    std::fs::write(
        dir.path().join(".env"),
        "API_PORT=5050\nthis line has no equals\n",
    )
    .unwrap();
    let (status, stderr) = run_to_exit(portkeeper(dir.path()), DEADLINE).unwrap();
    assert_eq!(status.code(), Some(78), "{stderr}");
    assert!(stderr.contains(".env"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[test]
fn a_non_utf8_variable_elsewhere_does_not_crash() {
    let dir = TempDir::new();
    let mut cmd = loopback_server(&dir);
    cmd.env(
        "SOME_TOOL_SETTING",
        OsString::from_vec(vec![b'a', 0xff, b'b']),
    );
    let mut server = Running::spawn(cmd, "non-utf8").unwrap();
    let addr = server.serving_address().unwrap();
    assert_eq!(get_json(addr, "/health").unwrap()["status"], "ok");
}

/// The variables of one case, the name its error must carry, and the value it must quote.
type BadCase = (
    &'static [(&'static str, &'static str)],
    &'static str,
    &'static str,
);

const BAD_VALUES: &[BadCase] = &[
    (&[("API_PORT", "abc")], "API_PORT", "abc"),
    (&[("API_PORT", "65536")], "API_PORT", "65536"),
    (&[("API_PORT", "-1")], "API_PORT", "-1"),
    (&[("API_PORT", "")], "API_PORT", "\"\""),
    (&[("HOST", "not-an-address")], "HOST", "not-an-address"),
    (&[("HOST", "")], "HOST", "\"\""),
    (
        &[("AUTO_FIND_PORT", "sometimes")],
        "AUTO_FIND_PORT",
        "sometimes",
    ),
    (&[("PORT_RANGE_START", "0")], "PORT_RANGE_START", "0"),
    (&[("PORT_RANGE_END", "70000")], "PORT_RANGE_END", "70000"),
    (
        &[("PORT_RANGE_START", "6000"), ("PORT_RANGE_END", "5000")],
        "PORT_RANGE_START",
        "6000",
    ),
    (&[("LOG_LEVEL", "verbose")], "LOG_LEVEL", "verbose"),
    (&[("LOG_FORMAT", "yaml")], "LOG_FORMAT", "yaml"),
    (&[("DEBUG", "2")], "DEBUG", "2"),
    (&[("RELOAD", "y")], "RELOAD", "y"),
    (&[("AUTH_REQUIRED", "perhaps")], "AUTH_REQUIRED", "perhaps"),
    (&[("SHUTDOWN_TIMEOUT", "10s")], "SHUTDOWN_TIMEOUT", "10s"),
    (&[("LISTEN_FD_NAME", "a b")], "LISTEN_FD_NAME", "a b"),
    (&[("LISTEN_FDS", "two")], "LISTEN_FDS", "two"),
    (
        &[("LISTEN_FDS", "1"), ("LISTEN_PID", "self")],
        "LISTEN_PID",
        "self",
    ),
    (
        &[("LISTEN_FDS", "1"), ("LISTEN_FDNAMES", "http:extra")],
        "LISTEN_FDNAMES",
        "http:extra",
    ),
    (&[("HOST", "192.0.2.1")], "HOST", "192.0.2.1"),
    (&[("DEBUG", "")], "DEBUG", "\"\""),
    (&[("AUTO_FIND_PORT", "")], "AUTO_FIND_PORT", "\"\""),
    (&[("HEADER_READ_TIMEOUT", "0")], "HEADER_READ_TIMEOUT", "0"),
    (
        &[("HEADER_READ_TIMEOUT", "3601")],
        "HEADER_READ_TIMEOUT",
        "3601",
    ),
    (
        &[("HEADER_READ_TIMEOUT", "")],
        "HEADER_READ_TIMEOUT",
        "\"\"",
    ),
    (&[("REQUEST_TIMEOUT", "30s")], "REQUEST_TIMEOUT", "30s"),
    (&[("REQUEST_TIMEOUT", "-5")], "REQUEST_TIMEOUT", "-5"),
    (&[("MAX_BODY_BYTES", "1MB")], "MAX_BODY_BYTES", "1MB"),
    (
        &[("MAX_BODY_BYTES", "99999999999")],
        "MAX_BODY_BYTES",
        "99999999999",
    ),
    (&[("MAX_BODY_BYTES", "")], "MAX_BODY_BYTES", "\"\""),
    (&[("LISTEN_FDS", "-1")], "LISTEN_FDS", "-1"),
    (
        &[("LISTEN_FDS", "99999999999")],
        "LISTEN_FDS",
        "99999999999",
    ),
    (&[("LISTEN_FDS", "")], "LISTEN_FDS", "\"\""),
    (
        &[("LISTEN_FDS", "1"), ("LISTEN_FDS_FIRST_FD", "-3")],
        "LISTEN_FDS_FIRST_FD",
        "-3",
    ),
];

#[test]
fn bad_values_exit_78_with_one_line_naming_variable_and_value() {
    let dir = TempDir::new();
    let mut failures = Vec::new();
    for (vars, name, value) in BAD_VALUES {
        let mut cmd = portkeeper(dir.path());
        cmd.env("API_PORT", "0");
        for (k, v) in *vars {
            cmd.env(k, v);
        }
        let (status, stderr) = run_to_exit(cmd, DEADLINE).unwrap();
        let line = stderr.trim();
        let ok = status.code() == Some(78)
            && line.lines().count() == 1
            && line.contains(name)
            && line.contains(value)
            && !line.contains("panicked");
        if !ok {
            failures.push(format!("{vars:?}: status {status}, stderr {stderr:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "refused badly:\n{}",
        failures.join("\n")
    );
}

/// `--help` is generated from the one list of variables the crate exports.
#[test]
fn help_lists_every_variable_of_the_public_list() {
    let output = std::process::Command::new(binary())
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for variable in portkeeper::variables() {
        assert!(
            help.lines()
                .any(|line| line.split_whitespace().next() == Some(variable.name)),
            "--help misses {}: {help}",
            variable.name
        );
    }
}

/// CREDENTIALS_DIRECTORY is systemd's: in `.env` it is ignored with a
/// warning, like the other protocol variables.
#[test]
fn credentials_directory_in_dotenv_is_ignored() {
    let dir = TempDir::new();
    std::fs::write(
        dir.path().join(".env"),
        "CREDENTIALS_DIRECTORY=/nonexistent\nAUTH_REQUIRED=false\n",
    )
    .unwrap();
    let cmd = loopback_server(&dir);
    let mut server = Running::spawn(cmd, "credentials-in-dotenv").unwrap();
    server
        .wait_for_line("CREDENTIALS_DIRECTORY in .env is ignored", DEADLINE)
        .unwrap();
    let addr = server.serving_address().unwrap();
    assert_eq!(get_json(addr, "/health").unwrap()["status"], "ok");
}
