//! `LISTEN`, `ADMIN_LISTEN` and the handoff variables against input a
//! hostile review tried (issue 21): duplicates and overlaps, role prefixes
//! where no role belongs, control characters in paths, addresses that bind
//! nothing useful, and whitespace around the `LISTEN_*` numbers. Each is
//! refused with exit 78 and one line naming the setting, or served as written.

use std::net::{SocketAddr, TcpListener};
use std::process::Command;

use crate::support::*;

/// A port that was free a moment ago (the kernel's choice).
fn free_port() -> u16 {
    port_of(&loopback_listener())
}

/// Runs `cmd`, which must not start: returns its exit status and stderr.
/// A server that starts serving instead fails the test at once.
fn refusal(cmd: Command, label: &str) -> (Option<i32>, String) {
    let mut running = Running::spawn(cmd, label).unwrap();
    if let Ok(line) = running.wait_for_line(" serving ", DEADLINE) {
        panic!("{label}: started instead of refusing: {line}");
    }
    let status = running.wait_exit(DEADLINE).unwrap();
    (status.code(), running.stderr())
}

/// `vars` must be refused with exit 78 and exactly one stderr line, an
/// error containing every one of `needles`; returns that line.
fn config_error(vars: &[(&str, &str)], needles: &[&str]) -> String {
    let dir = TempDir::new();
    let mut cmd = portkeeper(dir.path());
    cmd.envs(vars.iter().copied());
    let label = format!("{vars:?}");
    let (status, stderr) = refusal(cmd, &label);
    assert_eq!(status, Some(78), "{label}: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{label}: one line: {stderr:?}");
    let line = lines[0];
    assert!(line.starts_with("portkeeper: error: "), "{label}: {line}");
    for needle in needles {
        assert!(line.contains(needle), "{label}: {needle:?} missing: {line}");
    }
    line.to_owned()
}

#[test]
fn duplicate_and_overlapping_listen_entries_are_configuration_errors() {
    let port = free_port();
    let v4 = format!("127.0.0.1:{port}");
    let wildcard = format!("0.0.0.0:{port}");
    let v6_wildcard = format!("[::]:{port}");
    let dir = TempDir::new();
    let sock = dir.path().join("http.sock").display().to_string();

    let twice = format!("{v4},{v4}");
    config_error(
        &[("LISTEN", &twice)],
        &["LISTEN: ", &format!("{twice:?}"), "twice"],
    );
    // Across LISTEN and ADMIN_LISTEN: the second one is blamed.
    config_error(
        &[("LISTEN", &v4), ("ADMIN_LISTEN", &v4)],
        &["ADMIN_LISTEN: ", &v4, "LISTEN"],
    );
    let paths = format!("{sock},app={sock}");
    config_error(&[("LISTEN", &paths)], &["LISTEN: ", &sock, "twice"]);
    config_error(
        &[("LISTEN", "@pk-dup-check,@pk-dup-check")],
        &["LISTEN: ", "@pk-dup-check", "twice"],
    );
    // A specific address and the wildcard of its family on one port.
    let overlap = format!("{v4},{wildcard}");
    config_error(
        &[("LISTEN", &overlap)],
        &["LISTEN: ", &v4, &wildcard, "overlap"],
    );
    let overlap = format!("{v4},{v6_wildcard}");
    config_error(&[("LISTEN", &overlap)], &["LISTEN: ", &v6_wildcard]);
    // Kernel-chosen ports are different ports: no duplicate.
    let dir = TempDir::new();
    let mut cmd = portkeeper(dir.path());
    cmd.env("LISTEN", "127.0.0.1:0,127.0.0.1:0");
    let mut server = Running::spawn(cmd, "port-zero-twice").unwrap();
    server.wait_for_line(" serving ", DEADLINE).unwrap();
}

#[test]
fn ipv4_and_ipv6_wildcards_of_one_port_serve_both_families() {
    // A port free on both families: a dual-stack socket's kernel choice.
    let probe = match TcpListener::bind("[::]:0") {
        Ok(probe) => probe,
        Err(err) => {
            eprintln!("note: no IPv6 here ({err}); the dual wildcard is unchecked");
            return;
        }
    };
    let port = port_of(&probe);
    drop(probe);
    let dir = TempDir::new();
    let mut cmd = portkeeper(dir.path());
    cmd.env("LISTEN", format!("0.0.0.0:{port},[::]:{port}"));
    let mut server = Running::spawn(cmd, "dual-wildcard").unwrap();
    server.wait_for_line("serving [::]", DEADLINE).unwrap();
    for addr in [
        SocketAddr::from(([127, 0, 0, 1], port)),
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
    ] {
        assert_eq!(http_get(addr, "/health").unwrap().0, 200, "{addr}");
    }
}

#[test]
fn admin_listen_takes_no_role_and_listen_needs_an_app_listener() {
    for value in ["app=127.0.0.1:0", "admin=127.0.0.1:0"] {
        config_error(
            &[("LISTEN", "127.0.0.1:0"), ("ADMIN_LISTEN", value)],
            &["ADMIN_LISTEN: ", &format!("{value:?}"), "role"],
        );
    }
    config_error(
        &[("LISTEN", "admin=127.0.0.1:0")],
        &["LISTEN: ", "LISTEN has no app listener"],
    );
}

#[test]
fn control_characters_in_a_path_are_escaped_in_the_log_and_in_errors() {
    let dir = TempDir::new();
    let sock = dir.path().join("a\nb\u{1b}[31m.sock");
    let mut cmd = portkeeper(dir.path());
    cmd.env("LISTEN", &sock);
    let mut server = Running::spawn(cmd, "control-path").unwrap();
    let escaped = format!("{}/a\\nb\\u{{1b}}[31m.sock", dir.path().display());
    let line = server.wait_for_line(" serving ", DEADLINE).unwrap();
    assert_eq!(field(&line, "address"), Some(escaped.as_str()), "{line}");
    assert!(line.contains(&format!("serving {escaped} ")), "{line}");
    let output = server.output();
    assert!(!output.contains('\u{1b}'), "a raw ESC: {output:?}");
    assert!(
        !output.lines().any(|l| l.starts_with("b")),
        "a path broke a line: {output}"
    );

    let missing = dir.path().join("no\ndir\u{7}/http.sock");
    let value = missing.display().to_string();
    config_error(
        &[("LISTEN", &value)],
        &["no\\ndir\\u{7}/http.sock", "the directory does not exist"],
    );
}

#[test]
fn mapped_addresses_and_paths_through_a_file_say_what_to_write() {
    config_error(
        &[("LISTEN", "[::ffff:127.0.0.1]:0")],
        &["LISTEN: ", "IPv4-mapped", "write 127.0.0.1:0"],
    );
    let dir = TempDir::new();
    let file = dir.path().join("regular");
    std::fs::write(&file, "not a directory").unwrap();
    let through = file.join("http.sock").display().to_string();
    config_error(
        &[("LISTEN", &through)],
        &[
            &through,
            &format!("{} is not a directory", file.display()),
            "write",
        ],
    );
}

#[test]
fn a_scope_id_is_refused_where_it_means_nothing_and_names_must_be_numbers() {
    config_error(
        &[("LISTEN", "[::1%1]:0")],
        &["LISTEN: ", "scope", "write [::1]:0"],
    );
    config_error(
        &[("ADMIN_LISTEN", "[fe80::1%lo]:0")],
        &["ADMIN_LISTEN: ", "interface's number"],
    );
}

#[test]
fn handoff_numbers_with_whitespace_are_refused_naming_the_variable() {
    let held = loopback_listener();
    let dir = TempDir::new();
    let mut cmd = loopback_server(&dir);
    cmd.env("LISTEN_FDS", "1").env("LISTEN_FDS_FIRST_FD", " 3 ");
    hand_over(&mut cmd, vec![held.into()]);
    let (status, stderr) = refusal(cmd, "first-fd-spaces");
    assert_eq!(status, Some(78), "{stderr}");
    assert!(
        stderr.starts_with("portkeeper: error: LISTEN_FDS_FIRST_FD: \" 3 \""),
        "{stderr}"
    );

    let mut cmd = loopback_server(&dir);
    cmd.env("LISTEN_FDS", "1").env("LISTEN_PID", " 1 ");
    let (status, stderr) = refusal(cmd, "pid-spaces");
    assert_eq!(status, Some(78), "{stderr}");
    assert!(
        stderr.starts_with("portkeeper: error: LISTEN_PID: \" 1 \""),
        "{stderr}"
    );
}

#[test]
fn an_address_our_own_listener_took_is_a_configuration_error_at_the_bind() {
    // ADMIN_LISTEN on the port of HOST:API_PORT, which the settings cannot
    // compare (a search would choose the port at the bind).
    let port = free_port().to_string();
    let address = format!("127.0.0.1:{port}");
    config_error(
        &[
            ("HOST", "127.0.0.1"),
            ("API_PORT", &port),
            ("ADMIN_LISTEN", &address),
        ],
        &[
            &format!("cannot listen on {address}: this server already listens on {address}"),
            "ADMIN_LISTEN",
        ],
    );
    // Two names of one socket file: the second through a symlinked directory.
    let dir = TempDir::new();
    let sock = dir.path().join("http.sock");
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(dir.path(), &link).unwrap();
    let listen = format!("{},{}", sock.display(), link.join("http.sock").display());
    config_error(
        &[("LISTEN", &listen)],
        &[
            "this server already listens on",
            &sock.display().to_string(),
        ],
    );
    assert!(
        !sock.exists(),
        "a failed start leaves no socket file behind"
    );
}

#[test]
fn a_link_local_scope_id_reaches_the_bind_and_errors_name_listen() {
    if let Err(err) = TcpListener::bind("[::1]:0") {
        eprintln!("note: no IPv6 here ({err}); scope ids are unchecked");
        return;
    }
    // Kept: with interface 1 (lo) the kernel looks for fe80::1 there and
    // finds none (EADDRNOTAVAIL); without a scope id it would say EINVAL.
    config_error(
        &[("LISTEN", "[fe80::1%1]:0")],
        &[
            "cannot listen on [fe80::1%1]:0: ",
            "LISTEN or ADMIN_LISTEN is not an address of this machine",
        ],
    );
    // An interface number this machine does not have (ENODEV).
    config_error(
        &[("LISTEN", "[fe80::1%4000000]:0")],
        &["names interface 4000000", "ip link"],
    );
}
