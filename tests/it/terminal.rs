//! Upgrades on a terminal keep the terminal, and a development watcher that
//! kills its process group does not cut the drain.
//!
//! The terminal cases run the server under `script` (util-linux), which
//! gives it a real pseudo-terminal: `script -qfec 'CMD' /dev/null` runs CMD
//! through `/bin/sh -c` as the session leader, with the pty as controlling
//! terminal and CMD's process group in the foreground. What the test writes
//! to `script`'s stdin reaches the pty as typed keys, so `\x03` is Ctrl-C:
//! the line discipline sends SIGINT to the foreground process group.
//!
//! The shell runs `trap : INT; portkeeper; echo PROMPT-BACK $?`: `PROMPT-BACK` is what a
//! user sees as the next prompt, and must not come while a process of the
//! upgrade chain still serves.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::*;

/// What the first process logs once it has handed over and drained, and
/// stays as the terminal's foreground job.
const STAYS: &str = "stays in the foreground";

/// An interactive shell survives Ctrl-C and prints its prompt once the job
/// is over; `sh -c` would die of the SIGINT at once. A trap (not an
/// ignore, which the server would inherit) makes it wait like one.
const TRAP: &str = "trap : INT;";

/// A command run by `script` on a pseudo-terminal, and the keyboard.
struct Terminal {
    running: Running,
    keyboard: UnixStream,
}

impl Terminal {
    /// Runs `shell_command` under `script` with `vars`, in `dir`.
    fn start(dir: &Path, shell_command: &str, vars: &[(&str, &str)]) -> Option<Self> {
        let script = peer_tool("script")?;
        let (keyboard, stdin) = UnixStream::pair().unwrap();
        let mut cmd = clean_command(&script);
        cmd.current_dir(dir)
            .args(["-qfec", shell_command, "/dev/null"])
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(stdin)));
        for (name, value) in vars {
            cmd.env(name, value);
        }
        let running = Running::spawn(cmd, "pty").unwrap();
        Some(Terminal { running, keyboard })
    }

    /// The address of the first "serving" line (the log is coloured on a
    /// terminal: taken from the message).
    fn serving_address(&mut self) -> SocketAddr {
        let line = self.running.wait_for_line(" serving ", DEADLINE).unwrap();
        line.split(" serving ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
    }

    fn ctrl_c(&mut self) {
        self.keyboard.write_all(b"\x03").unwrap();
    }

    fn output(&self) -> String {
        self.running.output()
    }
}

fn pid_of(info: &serde_json::Value) -> u32 {
    info["pid"].as_u64().expect("pid in /info") as u32
}

/// Asks `/info` until another pid than `old` answers; every request must succeed.
fn wait_for_successor(addr: SocketAddr, old: u32) -> u32 {
    let end = Instant::now() + DEADLINE;
    loop {
        let pid = pid_of(&get_json(addr, "/info").expect("a request during the handoff"));
        if pid != old {
            return pid;
        }
        assert!(Instant::now() < end, "pid {old} still answers");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// True when `pid` runs in its terminal's foreground process group.
fn in_foreground(pid: u32) -> bool {
    // state ppid pgrp session tty_nr tpgid
    proc_stat(pid).is_some_and(|f| f[2] == f[5] && f[4] != "0")
}

/// Requests `/info` in a loop until stopped, counting failures.
struct Load {
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicUsize>,
    done: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, failed, done) = (stop.clone(), failed.clone(), done.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match http_get(addr, "/info") {
                        Ok((200, _)) => done.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        Load {
            stop,
            failed,
            done,
            thread: Some(thread),
        }
    }

    /// Stops the load; (failed, total).
    fn finish(mut self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        let failed = self.failed.load(Ordering::Relaxed);
        (failed, failed + self.done.load(Ordering::Relaxed))
    }
}

/// Waits until the first process `old` has either exited or said it stays
/// in the foreground, and checks that it stays and the prompt is not back.
fn assert_first_stays(terminal: &Terminal, old: u32) {
    assert!(
        wait_until(DEADLINE, || has_exited(old)
            || terminal.output().contains(STAYS)),
        "the first process neither stayed nor exited"
    );
    assert!(
        !has_exited(old),
        "the first process {old} exited after the upgrade: the shell has the terminal back"
    );
    assert!(
        !terminal.output().contains("PROMPT-BACK"),
        "the prompt came back while the successor serves"
    );
}

/// Ctrl-C, with a slow request in flight on the serving process: it drains
/// (the request completes), then every process exits and the prompt comes
/// back last, with status 0.
fn ctrl_c_drains_and_ends(terminal: &mut Terminal, addr: SocketAddr, serving: u32, first: u32) {
    let slow = start_slow_request(addr, 1500).unwrap();
    // The request is in flight once the handler says so.
    terminal
        .running
        .wait_for_line("debug: sleeping", DEADLINE)
        .unwrap();
    terminal.ctrl_c();
    let mut response = String::new();
    let mut slow = slow;
    std::io::Read::read_to_string(&mut slow, &mut response).unwrap();
    let (status, body) = parse_response(&response).unwrap();
    assert_eq!(status, 200, "the slow request failed: {response}");
    assert!(
        body.contains(&format!("\"pid\":{serving}")),
        "answered by {body}"
    );
    let exit = terminal.running.wait_exit(DEADLINE).unwrap();
    let output = terminal.output();
    assert!(exit.success(), "script exited with {exit}:\n{output}");
    assert!(has_exited(serving) && has_exited(first));
    let prompt = output
        .find("PROMPT-BACK 0")
        .expect("the prompt came back, status 0");
    let stopped = output.rfind("stop requested").expect("a stop was logged");
    assert!(stopped < prompt, "the prompt came back before the stop");
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err(),
        "the port still accepts after Ctrl-C"
    );
}

/// SIGUSR2 on a terminal with `stty tostop` (a background process that
/// writes is stopped by SIGTTOU): the upgrade succeeds, the successor runs
/// in the foreground group, the first process stays (no prompt), and Ctrl-C
/// stops the successor with its drain. No request fails across it.
#[test]
fn sigusr2_on_a_terminal_keeps_the_terminal_even_with_tostop() {
    let dir = TempDir::new();
    let command = format!("{TRAP} stty tostop; {}; echo PROMPT-BACK $?", binary());
    let Some(mut terminal) = Terminal::start(
        dir.path(),
        &command,
        &[("HOST", "127.0.0.1"), ("API_PORT", "0"), ("DEBUG", "true")],
    ) else {
        return;
    };
    let addr = terminal.serving_address();
    let first = pid_of(&get_json(addr, "/info").unwrap());
    let _first = Successor(first);
    assert!(in_foreground(first), "the server starts in the foreground");
    let load = Load::start(addr);

    Command::new("kill")
        .args(["-USR2", &first.to_string()])
        .status()
        .unwrap();
    let successor = wait_for_successor(addr, first);
    let _successor = Successor(successor);
    assert_first_stays(&terminal, first);
    assert!(
        in_foreground(successor),
        "the successor must run in the terminal's foreground group"
    );
    let (failed, total) = load.finish();
    assert_eq!(
        failed, 0,
        "{failed} of {total} requests failed across the upgrade"
    );
    assert!(!terminal.output().contains("binary upgrade failed"));

    ctrl_c_drains_and_ends(&mut terminal, addr, successor, first);
}

/// `RELOAD=true` on a terminal, twice: the second successor is the first
/// one's child, orphaned when that one exits; the first process still waits
/// for it, and Ctrl-C stops it.
#[test]
fn reload_on_a_terminal_keeps_the_terminal_across_two_upgrades() {
    let dir = TempDir::new();
    let executable = dir.path().join("portkeeper");
    copy_binary(&executable);
    let command = format!("{TRAP} {}; echo PROMPT-BACK $?", executable.display());
    let Some(mut terminal) = Terminal::start(
        dir.path(),
        &command,
        &[
            ("HOST", "127.0.0.1"),
            ("API_PORT", "0"),
            ("DEBUG", "true"),
            ("RELOAD", "true"),
        ],
    ) else {
        return;
    };
    let addr = terminal.serving_address();
    let first = pid_of(&get_json(addr, "/info").unwrap());
    let _first = Successor(first);
    let load = Load::start(addr);

    copy_binary(&executable);
    let second = wait_for_successor(addr, first);
    let _second = Successor(second);
    assert_first_stays(&terminal, first);
    copy_binary(&executable);
    let third = wait_for_successor(addr, second);
    let _third = Successor(third);
    assert!(
        wait_until(DEADLINE, || has_exited(second)),
        "the second process drains and exits"
    );
    assert!(!has_exited(first), "the first process still waits");
    assert!(!terminal.output().contains("PROMPT-BACK"));
    assert!(in_foreground(third));
    let (failed, total) = load.finish();
    assert_eq!(
        failed, 0,
        "{failed} of {total} requests failed across two upgrades"
    );

    ctrl_c_drains_and_ends(&mut terminal, addr, third, first);
}

/// A failed upgrade on a terminal (a wrapper that starts a helper holding
/// the socket, then fails) kills the wrapper and its helper, not the
/// serving process or the shell; the first process serves on and Ctrl-C
/// stops it.
#[test]
fn a_failed_upgrade_on_a_terminal_kills_exactly_what_it_started() {
    let dir = TempDir::new();
    let executable = dir.path().join("portkeeper");
    copy_binary(&executable);
    let command = format!("{TRAP} {}; echo PROMPT-BACK $?", executable.display());
    let Some(mut terminal) = Terminal::start(
        dir.path(),
        &command,
        &[("HOST", "127.0.0.1"), ("API_PORT", "0"), ("DEBUG", "true")],
    ) else {
        return;
    };
    let addr = terminal.serving_address();
    let first = pid_of(&get_json(addr, "/info").unwrap());
    let _first = Successor(first);
    replace_file(
        &executable,
        format!(
            "#!/bin/sh\nsleep 300 &\necho $! > '{}'\nexit 1\n",
            dir.path().join("helper.pid").display()
        )
        .as_bytes(),
    );
    Command::new("kill")
        .args(["-USR2", &first.to_string()])
        .status()
        .unwrap();
    terminal
        .running
        .wait_for_line("binary upgrade failed", DEADLINE)
        .unwrap();
    let mut helper = None;
    assert!(wait_until(DEADLINE, || {
        helper = std::fs::read_to_string(dir.path().join("helper.pid"))
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok());
        helper.is_some()
    }));
    let helper = helper.unwrap();
    let _helper = Successor(helper);
    assert!(
        wait_until(DEADLINE, || has_exited(helper)),
        "the failed wrapper's helper {helper} still runs"
    );
    assert_eq!(pid_of(&get_json(addr, "/info").unwrap()), first);
    assert!(!terminal.output().contains("PROMPT-BACK"));
    ctrl_c_drains_and_ends(&mut terminal, addr, first, first);
}

/// A development watcher (cargo watch) runs the server in a process group
/// of its own under `systemfd --no-pid`, and on a change sends SIGTERM to
/// the group, then SIGKILL to the group as soon as its shell has exited.
/// The server must still finish its request in flight: it leaves the
/// watcher's group at start and stops (with its drain) when its parent goes.
#[test]
fn a_watcher_killing_its_group_does_not_cut_the_drain() {
    let dir = TempDir::new();
    let socket = loopback_listener();
    let addr = socket.local_addr().unwrap();
    // The watcher's shell: a compound command, so sh forks the server.
    let mut cmd = clean_command("/bin/sh");
    cmd.current_dir(dir.path())
        .args(["-c", &format!("{}; echo shell-done", binary())])
        .env("LISTEN_FDS", "1")
        .env("DEBUG", "true")
        .process_group(0);
    hand_over(&mut cmd, vec![socket.into()]);
    let mut shell = Running::spawn(cmd, "watched").unwrap();
    let group = shell.pid();
    shell.wait_for_line(" serving ", DEADLINE).unwrap();
    let server = pid_of(&get_json(addr, "/info").unwrap());
    let _server = Successor(server);
    let mut slow = start_slow_request(addr, 1500).unwrap();
    shell.wait_for_line("debug: sleeping", DEADLINE).unwrap();

    // What cargo watch does on a change.
    kill_group("TERM", group);
    // (Not `wait_exit`, which waits for the output to end: the server
    // holds it.)
    assert!(
        wait_until(DEADLINE, || has_exited(group)),
        "the shell exits on SIGTERM"
    );
    kill_group("KILL", group);

    let mut response = String::new();
    std::io::Read::read_to_string(&mut slow, &mut response).unwrap();
    let (status, _) = parse_response(&response)
        .unwrap_or_else(|_| panic!("the request in flight was cut: {response:?}"));
    assert_eq!(status, 200, "{response}");
    assert!(
        wait_until(DEADLINE, || has_exited(server)),
        "the server {server} still runs after its parent went"
    );
}

/// Ctrl-C on the watcher: it forwards SIGINT to its command's group (which
/// the server left at start) and exits, while the shell between it and the
/// server waits for its child (dash and bash defer SIGINT for that). The
/// server must still stop, with its drain, rather than serve on orphaned.
#[test]
fn a_watcher_that_forwards_ctrl_c_and_exits_stops_the_server() {
    let dir = TempDir::new();
    let socket = loopback_listener();
    let addr = socket.local_addr().unwrap();
    // The watcher runs its command in a session of its own, as cargo watch does.
    let mut cmd = clean_command("/bin/sh");
    cmd.current_dir(dir.path())
        .args([
            "-c",
            &format!("setsid /bin/sh -c '{}; echo shell-done' & wait", binary()),
        ])
        .env("LISTEN_FDS", "1")
        .env("DEBUG", "true");
    hand_over(&mut cmd, vec![socket.into()]);
    let mut watcher = Running::spawn(cmd, "watcher").unwrap();
    watcher.wait_for_line(" serving ", DEADLINE).unwrap();
    let server = pid_of(&get_json(addr, "/info").unwrap());
    let _server = Successor(server);
    let shell: u32 = proc_stat(server).unwrap()[1].parse().unwrap();
    let _shell = Successor(shell);
    assert_ne!(
        shell,
        watcher.pid(),
        "a shell sits between the watcher and the server"
    );
    let mut slow = start_slow_request(addr, 1500).unwrap();
    watcher.wait_for_line("debug: sleeping", DEADLINE).unwrap();

    kill_group("INT", shell);
    watcher.signal("KILL").unwrap();

    let mut response = String::new();
    std::io::Read::read_to_string(&mut slow, &mut response).unwrap();
    let (status, _) = parse_response(&response)
        .unwrap_or_else(|_| panic!("the request in flight was cut: {response:?}"));
    assert_eq!(status, 200, "{response}");
    assert!(
        wait_until(DEADLINE, || has_exited(server)),
        "the server {server} serves on after its watcher went"
    );
}

fn kill_group(signal: &str, group: u32) {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), "--", &format!("-{group}")])
        .status();
}

use std::os::unix::process::CommandExt as _;

/// Puts a fresh copy of the built binary at `path` (a new inode).
fn copy_binary(path: &Path) {
    let bytes = std::fs::read(binary()).unwrap();
    replace_file(path, &bytes);
}
