//! What an operator sees: `portkeeper upgrade <pid>` (the unit's `ExecReload=`)
//! and its outcome, the binary's page at `/`, the start-up line on tokens.
//!
//! The same command under a real systemd manager: `tests/manager/upgrade_result.sh`.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::support::*;

/// Above the command's own bound (40 s), so a test sees its exit status.
const COMMAND_DEADLINE: Duration = Duration::from_secs(60);

fn pid_of(info: &serde_json::Value) -> u32 {
    info["pid"].as_u64().expect("pid in /info") as u32
}

/// `portkeeper upgrade <pid>`, run to its end: exit code and what it printed.
fn upgrade(pid: u32) -> (Option<i32>, String) {
    let mut cmd = clean_command(binary());
    cmd.args(["upgrade", &pid.to_string()]);
    let mut run = Running::spawn(cmd, &format!("upgrade {pid}")).unwrap();
    let status = run.wait_exit(COMMAND_DEADLINE).unwrap();
    (status.code(), run.output())
}

/// Asks `/info` until `pid` answers; every request must succeed.
fn wait_for_pid(addr: std::net::SocketAddr, pid: u32) -> Result<()> {
    let end = Instant::now() + DEADLINE;
    loop {
        let info = get_json(addr, "/info")?;
        if pid_of(&info) == pid {
            return Ok(());
        }
        if Instant::now() >= end {
            bail!("pid {pid} does not answer within {DEADLINE:?}: {info}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The number after `the new process ` in the command's output.
fn reported_pid(output: &str) -> u32 {
    output
        .split("the new process ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no new pid in {output:?}"))
}

#[test]
fn upgrade_command_returns_once_the_new_process_serves() {
    let dir = TempDir::new();
    let mut server = Running::spawn(loopback_server(&dir), "upgrade-ok").unwrap();
    let addr = server.serving_address().unwrap();
    let old = pid_of(&get_json(addr, "/info").unwrap());

    let (code, output) = upgrade(old);
    assert_eq!(code, Some(0), "{output}");
    let new = reported_pid(&output);
    let _successor = Successor(new);
    assert_ne!(new, old);
    // Ready means serving: the new process answers (the old one may still
    // take a connection or two until it stops accepting).
    wait_for_pid(addr, new).unwrap();
    let status = server.wait_exit(DEADLINE).unwrap();
    assert!(status.success(), "the old process exits 0, got {status}");
    assert!(
        server.output().contains("portkeeper upgrade (pid"),
        "the server's log names the trigger:\n{}",
        server.output()
    );

    // The successor answers requests of its own.
    let (code, output) = upgrade(new);
    assert_eq!(code, Some(0), "{output}");
    let _third = Successor(reported_pid(&output));
}

#[test]
fn a_failed_upgrade_exits_1_with_the_reason_and_the_old_process_serves_on() {
    let dir = TempDir::new();
    let (executable, cmd) = copy_of_binary(dir.path());
    let mut server = spawn_fresh_copy(&cmd, "upgrade-broken");
    let addr = server.serving_address().unwrap();
    let old = pid_of(&get_json(addr, "/info").unwrap());

    replace_file(
        &executable,
        b"#!/bin/sh\necho 'broken build: refusing to start' >&2\nexit 1\n",
    );
    let (code, output) = upgrade(old);
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("failed"), "{output}");
    assert!(output.contains("exited with exit status: 1"), "{output}");
    assert!(output.contains("this process keeps serving"), "{output}");
    assert_eq!(pid_of(&get_json(addr, "/info").unwrap()), old);
    assert!(server.output().contains("broken build: refusing to start"));

    // Fixed: the next request goes through on the same control socket.
    std::fs::remove_file(&executable).unwrap();
    std::fs::copy(binary(), &executable).unwrap();
    let (code, output) = upgrade(old);
    assert_eq!(code, Some(0), "{output}");
    let _successor = Successor(reported_pid(&output));
    let status = server.wait_exit(DEADLINE).unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn an_upgrade_abandoned_by_a_stop_is_reported_as_failed() {
    let dir = TempDir::new();
    let (executable, cmd) = copy_of_binary(dir.path());
    let mut server = spawn_fresh_copy(&cmd, "upgrade-abandoned");
    let addr = server.serving_address().unwrap();
    let old = pid_of(&get_json(addr, "/info").unwrap());

    // Never ready: the server would wait its 15 s, but is stopped first.
    replace_file(&executable, b"#!/bin/sh\nexec sleep 60\n");
    let mut command = clean_command(binary());
    command.args(["upgrade", &old.to_string()]);
    let mut command = Running::spawn(command, "upgrade-abandoned-cmd").unwrap();
    server
        .wait_for_line("binary upgrade: starting the new executable", DEADLINE)
        .unwrap();
    server.signal("TERM").unwrap();
    let status = command.wait_exit(DEADLINE).unwrap();
    assert_eq!(status.code(), Some(1), "{}", command.output());
    assert!(
        command.output().contains("stopping"),
        "{}",
        command.output()
    );
    assert!(server.wait_exit(DEADLINE).unwrap().success());
}

#[test]
fn upgrade_of_a_pid_that_is_no_server_exits_69() {
    // Alive, but no portkeeper server. (Not this test process: a test of
    // embedding may serve in it, with upgrades on.)
    let mut sleep = clean_command("sleep");
    sleep.arg("30");
    let sleeper = Running::spawn(sleep, "not-a-server").unwrap();
    let (code, output) = upgrade(sleeper.pid());
    assert_eq!(code, Some(69), "{output}");
    assert!(output.contains("cannot reach"), "{output}");
    let mut cmd = clean_command(binary());
    cmd.args(["upgrade", "not-a-pid"]);
    let (status, stderr) = run_to_exit(cmd, DEADLINE).unwrap();
    assert_eq!(status.code(), Some(64), "{stderr}");
}

/// Only the server's own user (or root) may ask; run as root, the test asks
/// as `nobody` through setpriv.
#[test]
fn an_upgrade_request_from_another_user_is_refused() {
    let Some(setpriv) = find_program("setpriv") else {
        eprintln!("note: no setpriv; skipped");
        return;
    };
    if !Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.starts_with(b"0\n"))
    {
        eprintln!("note: not root; skipped");
        return;
    }
    let dir = TempDir::new();
    let mut server = Running::spawn(loopback_server(&dir), "upgrade-other-user").unwrap();
    let addr = server.serving_address().unwrap();
    let old = pid_of(&get_json(addr, "/info").unwrap());
    let mut cmd = clean_command(setpriv);
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", binary()])
        .args(["upgrade", &old.to_string()]);
    let mut run = Running::spawn(cmd, "upgrade-as-nobody").unwrap();
    let status = run.wait_exit(COMMAND_DEADLINE).unwrap();
    if run.output().contains("Permission denied") && status.code() != Some(1) {
        eprintln!("note: nobody cannot run {}; skipped", binary());
        return;
    }
    assert_eq!(status.code(), Some(1), "{}", run.output());
    assert!(run.output().contains("uid 65534"), "{}", run.output());
    assert_eq!(pid_of(&get_json(addr, "/info").unwrap()), old);
    assert!(server.output().contains("upgrade request not taken"));
}

#[test]
fn the_binary_answers_its_front_page_with_links_to_the_built_in_routes() {
    let dir = TempDir::new();
    let mut server = Running::spawn(loopback_server(&dir), "front-page").unwrap();
    let addr = server.serving_address().unwrap();
    let (status, body) = http_get(addr, "/").unwrap();
    assert_eq!(status, 200, "{body}");
    for route in ["/health", "/ready", "/info", "/metrics"] {
        assert!(
            body.contains(&format!("href=\"{route}\"")),
            "no link to {route}: {body}"
        );
    }
    assert!(body.contains("portkeeper"), "{body}");
}

#[test]
fn the_token_policy_line_names_the_paths_that_need_no_token() {
    let dir = TempDir::new();
    let mut cmd = loopback_server(&dir);
    cmd.env("AUTH_REQUIRED", "true")
        .env("API_TOKEN", "operations-test-token-0123456789");
    let mut server = Running::spawn(cmd, "token-policy").unwrap();
    let line = server
        .wait_for_line("bearer token required", DEADLINE)
        .unwrap();
    assert!(line.contains("/health"), "{line}");
    assert!(line.contains("/ready"), "{line}");
    // And what it says holds.
    let addr = server.serving_address().unwrap();
    assert_eq!(http_get(addr, "/ready").unwrap().0, 200);
    assert_eq!(http_get(addr, "/health").unwrap().0, 200);
    assert_eq!(http_get(addr, "/info").unwrap().0, 401);
}
