//! systemd in production: the unit files, readiness (sd_notify), journald, and fd names.
//!
//! No systemd runs as PID 1 where these tests run, so the units cannot be
//! started. What can be checked here is: `systemd-analyze verify` and
//! `systemd-analyze security --offline=true` on a copy of the units whose
//! `ExecStart=` is the built binary; that the units' settings match the
//! code; every system call the server makes (under strace) against the
//! unit's filter; the sd_notify protocol against a datagram socket the test
//! owns (path and abstract); the fd handoff through the real
//! `systemd-socket-activate`, also into a private network namespace as
//! `PrivateNetwork=yes` makes; and the journal protocol against a socket the
//! test owns, mounted where journald's would be (in a private mount
//! namespace). The namespace tests note and pass where this machine allows
//! no namespaces.

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::certs::Pair;
use crate::support::*;

/// The exposure `systemd-analyze security` may rate the service at, at most.
const MAX_EXPOSURE: f64 = 1.5;

/// Where journald listens for its native protocol (and tracing-journald sends).
const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

fn unit_source(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("systemd")
        .join(name)
}

/// Copies both units into `dir`, with `ExecStart=` and `ExecReload=` pointing
/// at the built binary (verify checks that the executable exists) and `extra_service_lines`
/// added to the service's `[Service]` section.
fn install_units(dir: &Path, extra_service_lines: &str) -> (PathBuf, PathBuf) {
    let socket = dir.join("portkeeper.socket");
    std::fs::copy(unit_source("portkeeper.socket"), &socket).unwrap();
    let service = install_service(dir, "portkeeper.service", extra_service_lines);
    (socket, service)
}

/// The TLS recipe's units (docs/tls.md), installed as [`install_units`]
/// does: the two sockets and the service, in that order.
fn install_tls_units(dir: &Path, extra_service_lines: &str) -> [PathBuf; 3] {
    let sockets = TLS_SOCKETS.map(|name| {
        let path = dir.join(name);
        std::fs::copy(unit_source(name), &path).unwrap();
        path
    });
    let service = install_service(dir, "portkeeper-tls.service", extra_service_lines);
    [sockets[0].clone(), sockets[1].clone(), service]
}

/// The TLS recipe's socket units: HTTPS, and the optional redirect.
const TLS_SOCKETS: [&str; 2] = ["portkeeper-tls.socket", "portkeeper-tls-redirect.socket"];

/// Copies the service `name` into `dir`, as [`install_units`] describes.
fn install_service(dir: &Path, name: &str, extra_service_lines: &str) -> PathBuf {
    let service_text = std::fs::read_to_string(unit_source(name)).unwrap();
    assert!(
        service_text.contains("ExecStart=/usr/local/bin/portkeeper\n"),
        "the service should run /usr/local/bin/portkeeper, as README installs it"
    );
    let service_text = service_text.replace(
        "ExecStart=/usr/local/bin/portkeeper\n",
        &format!("ExecStart={}\n{extra_service_lines}", binary()),
    );
    let service_text = service_text.replace(
        "ExecReload=/usr/local/bin/portkeeper ",
        &format!("ExecReload={} ", binary()),
    );
    let service = dir.join(name);
    std::fs::write(&service, service_text).unwrap();
    service
}

/// Runs `systemd-analyze` with `args` in `dir`; returns success and all it printed.
fn systemd_analyze(tool: &Path, dir: &Path, args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(tool);
    cmd.current_dir(dir)
        .env("SYSTEMD_PAGER", "")
        .env("SYSTEMD_COLORS", "0")
        .args(args);
    let mut running = Running::spawn(cmd, "systemd-analyze").unwrap();
    let status = running.wait_exit(DEADLINE).unwrap();
    (status.success(), running.output())
}

#[test]
fn systemd_analyze_verify_prints_nothing_for_the_units() {
    let Some(tool) = peer_tool("systemd-analyze") else {
        return;
    };
    // Verifies the units installed with `extra` lines in the service.
    let verify = |extra: &str| {
        let dir = TempDir::new();
        let (socket, service) = install_units(dir.path(), extra);
        systemd_analyze(
            &tool,
            dir.path(),
            &[
                "verify",
                socket.to_str().unwrap(),
                service.to_str().unwrap(),
            ],
        )
    };
    let (ok, printed) = verify("");
    assert!(ok, "systemd-analyze verify failed:\n{printed}");
    // verify exits 0 on unknown keys and bad values, so any output is a failure.
    assert_eq!(printed, "", "systemd-analyze verify should print nothing");

    // The same check catches a misspelled key, so an empty output means something.
    let (_, printed) = verify("ProtectSytem=strict\n");
    assert!(
        printed.contains("ProtectSytem"),
        "verify should report an unknown key; it printed:\n{printed}"
    );

    // The TLS recipe's units (docs/tls.md), the same way.
    let verify_tls = |extra: &str| {
        let dir = TempDir::new();
        let units = install_tls_units(dir.path(), extra);
        let mut args = vec!["verify"];
        args.extend(units.iter().map(|u| u.to_str().unwrap()));
        systemd_analyze(&tool, dir.path(), &args)
    };
    let (ok, printed) = verify_tls("");
    assert!(
        ok,
        "systemd-analyze verify failed for the TLS units:\n{printed}"
    );
    assert_eq!(
        printed, "",
        "systemd-analyze verify should print nothing for the TLS units"
    );
    let (_, printed) = verify_tls("LoadCredentail=x:/y\n");
    assert!(
        printed.contains("LoadCredentail"),
        "verify should report an unknown key in the TLS service; it printed:\n{printed}"
    );
}

#[test]
fn the_service_is_rated_safe_by_systemd_analyze_security() {
    let Some(tool) = peer_tool("systemd-analyze") else {
        return;
    };
    let dir = TempDir::new();
    let (_, service) = install_units(dir.path(), "");
    let (_, printed) = systemd_analyze(
        &tool,
        dir.path(),
        &[
            "security",
            "--offline=true",
            "--no-pager",
            service.to_str().unwrap(),
        ],
    );
    let exposure =
        overall_exposure(&printed).unwrap_or_else(|| panic!("no overall exposure in:\n{printed}"));
    eprintln!("systemd-analyze security --offline=true: exposure {exposure}");
    assert!(
        exposure <= MAX_EXPOSURE,
        "exposure {exposure} is above {MAX_EXPOSURE}:\n{printed}"
    );

    // The TLS recipe's service (docs/tls.md) keeps the same rating.
    let tls_dir = TempDir::new();
    let [_, _, tls_service] = install_tls_units(tls_dir.path(), "");
    let (_, tls_printed) = systemd_analyze(
        &tool,
        tls_dir.path(),
        &[
            "security",
            "--offline=true",
            "--no-pager",
            tls_service.to_str().unwrap(),
        ],
    );
    let tls_exposure = overall_exposure(&tls_printed)
        .unwrap_or_else(|| panic!("no overall exposure in:\n{tls_printed}"));
    eprintln!("portkeeper-tls.service: exposure {tls_exposure}");
    assert_eq!(
        tls_exposure, exposure,
        "the TLS service should be rated as the plain one:\n{tls_printed}"
    );

    // Without the hardening section the same measure rates it far worse.
    let bare = TempDir::new();
    let text = std::fs::read_to_string(&service).unwrap();
    let unhardened = text.split("# Hardening.").next().unwrap().to_owned() + "\n";
    let bare_service = bare.path().join("portkeeper.service");
    std::fs::write(&bare_service, unhardened).unwrap();
    let (_, printed) = systemd_analyze(
        &tool,
        bare.path(),
        &[
            "security",
            "--offline=true",
            "--no-pager",
            bare_service.to_str().unwrap(),
        ],
    );
    let bare_exposure = overall_exposure(&printed).unwrap();
    assert!(
        bare_exposure > 5.0,
        "an unhardened copy rated {bare_exposure}; is the measure working?"
    );
}

/// The figure in "→ Overall exposure level for portkeeper.service: 0.4 SAFE".
fn overall_exposure(printed: &str) -> Option<f64> {
    let line = printed
        .lines()
        .find(|l| l.contains("Overall exposure level"))?;
    line.rsplit_once(": ")?
        .1
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A datagram socket standing in for systemd's NOTIFY_SOCKET.
struct NotifySocket {
    socket: UnixDatagram,
    /// The NOTIFY_SOCKET value that reaches it.
    value: String,
    _dir: TempDir,
}

impl NotifySocket {
    fn at_path() -> Self {
        let dir = TempDir::new();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        NotifySocket {
            socket,
            value: path.to_str().unwrap().to_owned(),
            _dir: dir,
        }
    }

    fn abstract_name() -> Self {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::SocketAddr;
        let dir = TempDir::new();
        // Unique per test process and per call: the temp dir's name is.
        let name = format!(
            "portkeeper-it-{}",
            dir.path().file_name().unwrap().to_str().unwrap()
        );
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).unwrap();
        NotifySocket {
            socket,
            value: format!("@{name}"),
            _dir: dir,
        }
    }

    /// Receives messages until one satisfies `done`; returns all received, in order.
    fn receive_until(&self, done: impl Fn(&str) -> bool, deadline: Duration) -> Vec<String> {
        let end = Instant::now() + deadline;
        let mut received = Vec::new();
        let mut buf = vec![0u8; 4096];
        loop {
            let left = end.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no matching notification within {deadline:?}; received {received:?}"
            );
            self.socket
                .set_read_timeout(Some(left.min(Duration::from_millis(200))))
                .unwrap();
            match self.socket.recv(&mut buf) {
                Ok(n) => {
                    let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let finished = done(&message);
                    received.push(message);
                    if finished {
                        return received;
                    }
                }
                Err(err)
                    if matches!(
                        err.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(err) => panic!("recv on the notify socket: {err}"),
            }
        }
    }
}

/// READY=1 (with the URL) once serving, WATCHDOG=1 while running, STOPPING=1 on SIGTERM.
fn readiness_watchdog_and_stop_arrive_in_order(notify: NotifySocket) {
    let dir = TempDir::new();
    let mut cmd = loopback_server(&dir);
    cmd.env("NOTIFY_SOCKET", &notify.value)
        // 200 ms: a ping every 100 ms.
        .env("WATCHDOG_USEC", "200000");
    let mut server = Running::spawn(cmd, "notify").unwrap();

    let mut messages = notify.receive_until(|m| m.contains("READY=1"), DEADLINE);
    assert_eq!(messages.len(), 1, "READY=1 must come first: {messages:?}");
    let addr = server.serving_address().unwrap();
    let ready = &messages[0];
    let status = ready
        .lines()
        .find_map(|l| l.strip_prefix("STATUS="))
        .unwrap_or_else(|| panic!("no STATUS= with READY=1: {ready:?}"));
    assert!(
        status.contains(&format!("http://{addr}/")),
        "STATUS= should give the URL http://{addr}/: {status:?}"
    );
    // READY=1 means serving: a request answers right away.
    assert_eq!(http_get(addr, "/health").unwrap().0, 200);

    messages.extend(notify.receive_until(|m| m == "WATCHDOG=1", DEADLINE));
    server.signal("TERM").unwrap();
    messages.extend(notify.receive_until(|m| m.contains("STOPPING=1"), DEADLINE));
    assert!(server.wait_exit(DEADLINE).unwrap().success());

    let kinds: Vec<&str> = messages
        .iter()
        .map(|m| m.lines().next().unwrap_or(""))
        .collect();
    let first_watchdog = kinds.iter().position(|&k| k == "WATCHDOG=1").unwrap();
    let stopping = kinds.iter().position(|&k| k == "STOPPING=1").unwrap();
    assert_eq!(kinds[0], "READY=1", "{kinds:?}");
    assert!(
        0 < first_watchdog && first_watchdog < stopping,
        "expected READY=1, WATCHDOG=1..., STOPPING=1; got {kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|&&k| k == "READY=1").count(),
        1,
        "{kinds:?}"
    );
    assert!(
        messages[stopping].contains("\nSTATUS="),
        "STOPPING=1 should say why: {:?}",
        messages[stopping]
    );
}

#[test]
fn sd_notify_over_a_path_socket() {
    readiness_watchdog_and_stop_arrive_in_order(NotifySocket::at_path());
}

#[test]
fn sd_notify_over_an_abstract_socket() {
    readiness_watchdog_and_stop_arrive_in_order(NotifySocket::abstract_name());
}

#[test]
fn an_unreachable_notify_socket_does_not_stop_the_server() {
    let dir = TempDir::new();
    let mut cmd = loopback_server(&dir);
    cmd.env("NOTIFY_SOCKET", dir.path().join("nobody-listens.sock"));
    let mut server = Running::spawn(cmd, "notify-unreachable").unwrap();
    let addr = server.serving_address().unwrap();
    assert_eq!(http_get(addr, "/health").unwrap().0, 200);
    let warning = server
        .wait_for_line("cannot notify the service manager", DEADLINE)
        .unwrap();
    assert!(warning.contains("NOTIFY_SOCKET"), "{warning}");
}

/// A manager that stopped reading: NOTIFY_SOCKET names a datagram socket
/// whose queue is full (the test fills it and never reads). Every send fails
/// at once; the server keeps answering, stops promptly on SIGTERM, and says
/// so in one warning rather than one per ping (`WATCHDOG_USEC=1` asks for
/// pings as fast as possible). Before sends were non-blocking, READY=1 alone
/// blocked the runtime: no /health, no SIGTERM.
#[test]
fn a_notify_socket_nobody_reads_costs_a_warning_not_serving() {
    let notify = NotifySocket::at_path();
    let filler = UnixDatagram::unbound().unwrap();
    filler.connect(&notify.value).unwrap();
    filler.set_nonblocking(true).unwrap();
    let queued = (0..100_000)
        .take_while(|_| filler.send(b"FILLER=1").is_ok())
        .count();
    assert!(queued < 100_000, "the queue never filled");

    let dir = TempDir::new();
    let mut cmd = loopback_server(&dir);
    cmd.env("NOTIFY_SOCKET", &notify.value)
        .env("WATCHDOG_USEC", "1");
    let mut server = Running::spawn(cmd, "notify-stuck").unwrap();
    let addr = server.serving_address().unwrap();

    // Requests while the pings pile up against the full queue: each must be
    // answered (a send that blocked a runtime worker would stall them).
    let mut slowest = Duration::ZERO;
    for asked in 0..40 {
        let asked_at = Instant::now();
        let (status, _) = http_get(addr, "/health")
            .unwrap_or_else(|err| panic!("/health request {asked} failed: {err:#}"));
        assert_eq!(status, 200);
        slowest = slowest.max(asked_at.elapsed());
    }
    eprintln!("40 /health requests with a stuck NOTIFY_SOCKET; slowest {slowest:?}");

    let term_at = Instant::now();
    server.signal("TERM").unwrap();
    let status = server.wait_exit(DEADLINE).unwrap();
    eprintln!("stopped {:?} after SIGTERM", term_at.elapsed());
    assert!(status.success(), "exit status {status}");
    let warnings = server.stderr().matches("sd_notify failed").count();
    assert_eq!(
        warnings,
        1,
        "one warning for READY=1, the pings and STOPPING=1 together:\n{}",
        server.stderr()
    );
}

/// A fatal error under systemd (here: a bad setting, exit 78) is one line
/// on stderr. When stderr is the journal's stream (`JOURNAL_STREAM` names
/// its device and inode), the line starts with `<3>`, so journald files it at
/// priority err instead of the stream's default, info. Where the variable
/// names another file (inherited, stderr redirected), no prefix.
#[test]
fn a_fatal_error_on_the_journal_stream_is_priority_err() {
    use std::os::unix::fs::MetadataExt;
    let dir = TempDir::new();
    let run = |matching: bool| -> String {
        let path = dir.path().join(format!("stderr-{matching}"));
        let file = std::fs::File::create(&path).unwrap();
        let meta = file.metadata().unwrap();
        let inode = if matching { meta.ino() } else { meta.ino() + 1 };
        let mut cmd = portkeeper(dir.path());
        cmd.env("API_PORT", "abc")
            .env("JOURNAL_STREAM", format!("{}:{inode}", meta.dev()))
            .stdout(std::process::Stdio::null())
            .stderr(file);
        let mut child = cmd.spawn().unwrap();
        let end = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > end {
                let _ = child.kill();
                panic!("still running after {DEADLINE:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status.code(), Some(78));
        std::fs::read_to_string(&path).unwrap()
    };
    let journal = run(true);
    assert!(
        journal.starts_with("<3>portkeeper: error: ") && journal.contains("API_PORT"),
        "{journal:?}"
    );
    assert_eq!(journal.lines().count(), 1, "{journal:?}");
    let elsewhere = run(false);
    assert!(
        elsewhere.starts_with("portkeeper: error: "),
        "{elsewhere:?}"
    );
}

/// `systemd-socket-activate` running portkeeper (optionally through
/// `wrapper`, which must exec in place so LISTEN_PID stays right).
fn socket_activate(tool: &Path, listen: SocketAddr, fdname: &str, wrapper: &[&str]) -> Command {
    let mut cmd = clean_command(tool);
    // systemd-socket-activate passes only TERM, PATH, USER, HOME and -E
    // variables to the child; set ours with -E.
    cmd.arg(format!("--listen={listen}"))
        .arg(format!("--fdname={fdname}"))
        .args(["-E", "HOST=127.0.0.1", "-E", "API_PORT=0", "--"])
        .args(wrapper)
        .arg(binary());
    cmd
}

fn free_loopback_address() -> SocketAddr {
    owned_port_run(1)[0].local_addr().unwrap()
}

#[test]
fn a_socket_unit_without_file_descriptor_name_is_served() {
    let Some(tool) = peer_tool("systemd-socket-activate") else {
        return;
    };
    let addr = free_loopback_address();
    // What systemd passes for a socket unit without FileDescriptorName=.
    let cmd = socket_activate(&tool, addr, "portkeeper.socket", &[]);
    let mut activator = Running::spawn(cmd, "socket-activate-unit-name").unwrap();
    activator.wait_for_line("Listening on", DEADLINE).unwrap();
    let info = get_json(addr, "/info").unwrap();
    assert_eq!(info["listener"]["source"], "systemd");
    assert_eq!(info["listener"]["fd"], 3);
    assert_eq!(info["listener"]["fd_name"], "portkeeper.socket");
    assert_eq!(info["listener"]["address"], addr.to_string());
    // The start-up message names the same fd, name and address.
    let line = activator.wait_for_line(" serving ", DEADLINE).unwrap();
    assert_eq!(field(&line, "fd"), Some("3"), "{line}");
    assert_eq!(field(&line, "fd_name"), Some("portkeeper.socket"), "{line}");
    assert_eq!(field(&line, "address"), Some(&*addr.to_string()), "{line}");
    assert_eq!(field(&line, "source"), Some("systemd"), "{line}");
}

/// Runs `program args` to completion; true when it succeeded.
fn succeeds(program: &str, args: &[&str]) -> bool {
    let mut cmd = Command::new(program);
    cmd.args(args);
    match run_to_exit(cmd, DEADLINE) {
        Ok((status, _)) => status.success(),
        Err(_) => false,
    }
}

/// `PrivateNetwork=yes` in the service: the inherited socket belongs to the
/// namespace it was created in, so a server in a network namespace of its
/// own (only `lo`, nothing else) still accepts connections made to it.
#[test]
fn an_inherited_socket_serves_from_a_private_network_namespace() {
    let Some(tool) = peer_tool("systemd-socket-activate") else {
        return;
    };
    if !succeeds("unshare", &["--net", "true"]) {
        eprintln!(
            "note: cannot create a network namespace here (unshare --net); PrivateNetwork= is unchecked"
        );
        return;
    }
    let addr = free_loopback_address();
    // unshare execs in place, so the server keeps the pid in LISTEN_PID.
    let cmd = socket_activate(&tool, addr, "http", &["unshare", "--net", "--"]);
    let mut activator = Running::spawn(cmd, "socket-activate-netns").unwrap();
    activator.wait_for_line("Listening on", DEADLINE).unwrap();
    let info = get_json(addr, "/info").unwrap();
    assert_eq!(info["listener"]["source"], "systemd");
    assert_eq!(info["listener"]["fd_name"], "http");
    let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
    let theirs = std::fs::read_link(format!("/proc/{}/ns/net", info["pid"])).unwrap();
    assert_ne!(
        ours, theirs,
        "the server should run in a network namespace of its own"
    );
    let line = activator.wait_for_line(" serving ", DEADLINE).unwrap();
    assert_eq!(field(&line, "address"), Some(&*addr.to_string()), "{line}");
}

#[test]
fn without_journald_logs_fall_back_to_stderr_and_the_server_serves() {
    let dir = TempDir::new();
    let listener = loopback_listener();
    let addr = listener.local_addr().unwrap();
    let mut cmd = portkeeper(dir.path());
    cmd.env("LISTEN_FDS", "1");
    hand_over(&mut cmd, vec![listener.into()]);
    // stderr is the journal stream, as systemd sets it up, but no journald answers.
    let mut server = Running::spawn_on_journal_stream(cmd, "no-journald").unwrap();
    assert_eq!(get_json(addr, "/health").unwrap()["status"], "ok");
    if Path::new(JOURNAL_SOCKET).exists() {
        eprintln!(
            "note: {JOURNAL_SOCKET} exists on this machine; logs went to journald, the fallback is unchecked"
        );
        return;
    }
    server
        .wait_for_line("journald is not reachable; logging to stderr", DEADLINE)
        .unwrap();
    let line = server.wait_for_line(" serving ", DEADLINE).unwrap();
    assert_eq!(field(&line, "address"), Some(&*addr.to_string()), "{line}");
}

/// One entry of journald's native protocol: `NAME=value` lines, or `NAME`,
/// a little-endian u64 length and the value (for values that may hold newlines).
fn parse_journal_entry(mut data: &[u8]) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    while let Some(newline) = data.iter().position(|&b| b == b'\n') {
        let line = &data[..newline];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            fields.push((
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
            ));
            data = &data[newline + 1..];
        } else {
            let rest = &data[newline + 1..];
            let Some(len) = rest.get(..8) else { break };
            let len = u64::from_le_bytes(len.try_into().unwrap()) as usize;
            let Some(value) = rest.get(8..8 + len) else {
                break;
            };
            fields.push((
                String::from_utf8_lossy(line).into_owned(),
                String::from_utf8_lossy(value).into_owned(),
            ));
            data = rest.get(8 + len + 1..).unwrap_or_default();
        }
    }
    fields
}

/// Under systemd the "serving" event reaches journald with its fields as
/// journal fields. journald is not running here, so the test binds a
/// datagram socket of its own and, in a private mount namespace, mounts it
/// where journald's socket would be.
#[test]
fn the_serving_event_arrives_in_the_journal_with_its_fields() {
    let probe = "mount -t tmpfs tmpfs /run";
    if !succeeds(
        "unshare",
        &[
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            probe,
        ],
    ) {
        eprintln!(
            "note: cannot create a mount namespace here (unshare --mount); the journald path is unchecked"
        );
        return;
    }
    let journal_dir = TempDir::new();
    let journal = UnixDatagram::bind(journal_dir.path().join("socket")).unwrap();
    let listener = loopback_listener();
    let addr = listener.local_addr().unwrap();

    let dir = TempDir::new();
    let mut cmd = clean_command("unshare");
    // unshare and sh exec in place: the pid stays the server's.
    cmd.env("LISTEN_FDS", "1")
        .current_dir(dir.path())
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(
            "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal \
             && mount --bind \"$1\" /run/systemd/journal && exec \"$2\"",
        )
        .arg("sh")
        .arg(journal_dir.path())
        .arg(binary());
    hand_over(&mut cmd, vec![listener.into()]);
    // JOURNAL_STREAM names the server's stderr, as under systemd.
    let server = Running::spawn_on_journal_stream(cmd, "journald").unwrap();
    let pid = server.pid();
    assert_eq!(get_json(addr, "/health").unwrap()["status"], "ok");

    let end = Instant::now() + DEADLINE;
    let mut buf = vec![0u8; 64 * 1024];
    let serving = loop {
        let left = end.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no \"serving\" entry reached the journal");
        journal
            .set_read_timeout(Some(left.min(Duration::from_millis(200))))
            .unwrap();
        let Ok(n) = journal.recv(&mut buf) else {
            continue;
        };
        let entry = parse_journal_entry(&buf[..n]);
        let is_serving = entry
            .iter()
            .any(|(k, v)| k == "MESSAGE" && v.starts_with("serving "));
        if is_serving {
            break entry;
        }
    };
    let get = |name: &str| {
        serving
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("F_SOURCE"), Some("systemfd"), "{serving:?}");
    assert_eq!(get("F_ADDRESS"), Some(&*addr.to_string()), "{serving:?}");
    assert_eq!(
        get("F_PORT"),
        Some(&*addr.port().to_string()),
        "{serving:?}"
    );
    assert_eq!(get("F_PID"), Some(&*pid.to_string()), "{serving:?}");
    assert_eq!(get("F_FD"), Some("3"), "{serving:?}");
    assert_eq!(get("F_ROLE"), Some("app"), "{serving:?}");
    // tracing-journald's default mapping: INFO is "notice" (5), DEBUG "info" (6).
    assert_eq!(get("PRIORITY"), Some("5"), "{serving:?}");
    assert_eq!(get("SYSLOG_IDENTIFIER"), Some("portkeeper"), "{serving:?}");
    // And nothing was logged to stderr instead.
    assert!(
        !server.stderr().contains(" serving "),
        "logs should go to the journal only:\n{}",
        server.stderr()
    );
}

/// The `Key=value` settings of a unit file, in order (sections and comments dropped).
fn unit_settings(name: &str) -> Vec<(String, String)> {
    std::fs::read_to_string(unit_source(name))
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Every value given to `key`, in order.
fn values<'a>(settings: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    settings
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The one value of `key`, insisting there is exactly one.
fn single<'a>(settings: &'a [(String, String)], key: &str) -> &'a str {
    match values(settings, key)[..] {
        [value] => value,
        ref found => panic!("expected one {key}=, found {found:?}"),
    }
}

/// A default from config.example.env (which `config::tests` keeps in step with the code).
fn documented_default(name: &str) -> String {
    let example =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.env"))
            .unwrap();
    example
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("config.example.env has no {name}="))
        .to_owned()
}

fn seconds(value: &str) -> u64 {
    value
        .strip_suffix('s')
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("expected a time like 30s, got {value:?}"))
}

/// What the units promise and what the binary does must agree: the fd name
/// it looks for, the exit status it uses for bad configuration, the time it
/// takes to drain.
#[test]
fn the_units_agree_with_the_code() {
    let socket = unit_settings("portkeeper.socket");
    assert_eq!(
        single(&socket, "ListenStream"),
        documented_default("API_PORT")
    );
    assert_eq!(single(&socket, "BindIPv6Only"), "both", "IPv4 and IPv6");
    assert_eq!(
        single(&socket, "FileDescriptorName"),
        documented_default("LISTEN_FD_NAME")
    );
    assert_eq!(single(&socket, "Accept"), "no");
    assert!(single(&socket, "Backlog").parse::<u32>().unwrap() >= 128);

    let service = unit_settings("portkeeper.service");
    assert_eq!(single(&service, "Type"), "notify");
    assert_eq!(single(&service, "Requires"), "portkeeper.socket");
    assert_eq!(single(&service, "After"), "portkeeper.socket");
    assert_eq!(
        single(&service, "EnvironmentFile"),
        "-/etc/portkeeper/portkeeper.env"
    );
    assert_eq!(
        single(&service, "LoadCredential"),
        "api-token:/etc/portkeeper/api-token"
    );
    assert_eq!(single(&service, "Restart"), "on-failure");
    assert!(seconds(single(&service, "WatchdogSec")) > 0);
    assert!(
        seconds(single(&service, "TimeoutStopSec"))
            > documented_default("SHUTDOWN_TIMEOUT")
                .parse::<u64>()
                .unwrap(),
        "systemd must wait longer than the drain before SIGKILL"
    );

    // RestartPreventExitStatus= is the status a bad setting actually exits with.
    let dir = TempDir::new();
    let mut cmd = portkeeper(dir.path());
    cmd.env("API_PORT", "not-a-port");
    let (status, stderr) = run_to_exit(cmd, DEADLINE).unwrap();
    assert_eq!(
        status.code().map(|c| c.to_string()).as_deref(),
        Some(single(&service, "RestartPreventExitStatus")),
        "{stderr}"
    );
}

/// Each system-call group named in the filter, expanded to system calls.
fn syscall_groups(analyze: &Path) -> std::collections::HashMap<String, Vec<String>> {
    let output = Command::new(analyze)
        .args(["syscall-filter", "--no-pager"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "systemd-analyze syscall-filter: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut groups: std::collections::HashMap<String, Vec<String>> = Default::default();
    let mut current = None;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let member = line.trim();
        if line.starts_with('@') {
            current = Some(member.to_owned());
        } else if !line.starts_with(' ') {
            current = None;
        } else if let Some(group) = current.as_ref().filter(|_| !member.starts_with('#')) {
            groups
                .entry(group.clone())
                .or_default()
                .push(member.to_owned());
        }
    }
    groups
}

fn expand(
    name: &str,
    groups: &std::collections::HashMap<String, Vec<String>>,
    into: &mut std::collections::HashSet<String>,
) {
    match groups.get(name) {
        Some(members) => {
            for member in members {
                expand(member, groups, into);
            }
        }
        None => {
            assert!(!name.starts_with('@'), "unknown system call group {name}");
            into.insert(name.to_owned());
        }
    }
}

/// `SystemCallFilter=` in the service fails, with EPERM, any call outside its
/// set; `RestrictAddressFamilies=AF_UNIX` any socket() of another family. No
/// systemd here, so the server runs under strace through the paths it takes
/// under systemd (inherited socket, sd_notify, watchdog, journal probe, two
/// requests, SIGTERM) and every call it made is checked against the unit.
#[test]
fn every_system_call_made_is_allowed_by_the_service_filter() {
    let (Some(strace), Some(analyze)) = (peer_tool("strace"), peer_tool("systemd-analyze")) else {
        return;
    };
    check_system_calls(&strace, &analyze, "portkeeper.service", None);
}

/// The same with TLS, as `portkeeper-tls.service` runs it: an fd named
/// `https`, the pair from `$CREDENTIALS_DIRECTORY`, requests over TLS, and
/// a rotation of the pair (the watch's file checks and the reload).
#[test]
fn every_system_call_made_over_tls_is_allowed_by_the_tls_service_filter() {
    let (Some(strace), Some(analyze), Some(curl)) = (
        peer_tool("strace"),
        peer_tool("systemd-analyze"),
        peer_tool("curl"),
    ) else {
        return;
    };
    check_system_calls(&strace, &analyze, "portkeeper-tls.service", Some(&curl));
}

/// GET `path` over HTTPS from 127.0.0.1:`port` with curl, trusting `ca`
/// alone; the body, or `None` when curl fails (the certificate too).
fn curl_https(curl: &Path, port: u16, ca: &Path, path: &str) -> Option<String> {
    let output = clean_command(curl)
        .args(["-sS", "--fail", "--max-time", "10", "--cacert"])
        .arg(ca)
        .arg("--resolve")
        .arg(format!("localhost:{port}:127.0.0.1"))
        .arg(format!("https://localhost:{port}{path}"))
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs the server under strace as `unit` runs it (with TLS when `curl`
/// is given, to talk to it) and checks every system call it made against
/// the unit's `SystemCallFilter=`, and every socket it created against
/// `RestrictAddressFamilies=`.
fn check_system_calls(strace: &Path, analyze: &Path, unit: &str, curl: Option<&Path>) {
    if !succeeds(strace.to_str().unwrap(), &["-f", "-o", "/dev/null", "true"]) {
        eprintln!("note: strace cannot trace here (ptrace denied); the filter is unchecked");
        return;
    }
    let groups = syscall_groups(analyze);
    let mut allowed = std::collections::HashSet::new();
    let mut denied = std::collections::HashSet::new();
    let service = unit_settings(unit);
    for filter in values(&service, "SystemCallFilter") {
        let (set, names) = match filter.strip_prefix('~') {
            Some(names) => (&mut denied, names),
            None => (&mut allowed, filter),
        };
        for name in names.split_whitespace() {
            expand(name, &groups, set);
        }
    }
    assert!(allowed.contains("accept4") && denied.contains("setrlimit"));
    assert_eq!(single(&service, "RestrictAddressFamilies"), "AF_UNIX");

    let dir = TempDir::new();
    let trace = dir.path().join("strace.out");
    let notify = NotifySocket::at_path();
    let listener = loopback_listener();
    let addr = listener.local_addr().unwrap();
    let credentials = dir.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    let mut cmd = clean_command(strace);
    if curl.is_some() {
        Pair::self_signed_localhost().write(&credentials, "tls-cert", "tls-key");
        cmd.env("LISTEN_FDNAMES", "https")
            .env("CREDENTIALS_DIRECTORY", &credentials);
    } else {
        cmd.env("LISTEN_FDNAMES", "http");
    }
    cmd.env("LISTEN_FDS", "1")
        .env("NOTIFY_SOCKET", &notify.value)
        .env("WATCHDOG_USEC", "200000")
        .current_dir(dir.path())
        .arg("-f")
        .arg("-o")
        .arg(&trace)
        .arg("--")
        .arg(binary());
    hand_over(&mut cmd, vec![listener.into()]);
    // stderr is the journal stream, so the server probes journald's socket.
    let mut traced = Running::spawn_on_journal_stream(cmd, "strace").unwrap();
    notify.receive_until(|m| m.contains("READY=1"), DEADLINE);
    let info = match curl {
        None => {
            assert_eq!(get_json(addr, "/health").unwrap()["status"], "ok");
            get_json(addr, "/info").unwrap()
        }
        Some(curl) => {
            let cert = credentials.join("tls-cert");
            let info = curl_https(curl, addr.port(), &cert, "/info")
                .unwrap_or_else(|| panic!("no answer over TLS on {addr}"));
            // A new pair, written as a rotation tool does (a new file renamed
            // over the old); new handshakes get it within 2 to 4 s.
            let new = Pair::self_signed_localhost();
            let next = dir.path().join("next.pem");
            std::fs::write(&next, &new.key).unwrap();
            std::fs::rename(&next, credentials.join("tls-key")).unwrap();
            std::fs::write(&next, &new.cert).unwrap();
            std::fs::rename(&next, &cert).unwrap();
            assert!(
                wait_until(DEADLINE, || curl_https(curl, addr.port(), &cert, "/health")
                    .is_some()),
                "the rotated pair was not served"
            );
            serde_json::from_str(&info).unwrap()
        }
    };
    notify.receive_until(|m| m == "WATCHDOG=1", DEADLINE);
    // SIGTERM to the server itself, not to strace.
    let kill = Command::new("kill")
        .args(["-TERM", &info["pid"].to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    assert!(traced.wait_exit(DEADLINE).unwrap().success());

    let trace = std::fs::read_to_string(&trace).unwrap();
    let mut made = std::collections::BTreeSet::new();
    let mut families = std::collections::BTreeSet::new();
    for line in trace.lines() {
        // "1234  name(args) = result"; skip "<... resumed>", "---", "+++" lines.
        let Some(call) = line.split_whitespace().nth(1) else {
            continue;
        };
        let Some((name, args)) = call.split_once('(') else {
            continue;
        };
        if name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !name.is_empty() {
            made.insert(name.to_owned());
            if name == "socket" {
                families.insert(args.split(',').next().unwrap_or("").to_owned());
            }
        }
    }
    assert!(made.contains("accept4"), "the trace looks wrong:\n{trace}");
    // execve is strace starting the server; systemd does that before the filter applies.
    let refused: Vec<&String> = made
        .iter()
        .filter(|&name| name != "execve" && (!allowed.contains(name) || denied.contains(name)))
        .collect();
    assert!(
        refused.is_empty(),
        "system calls the unit's SystemCallFilter= refuses: {refused:?}"
    );
    // Only Unix sockets are created (sd_notify, the journal probe) and, for
    // the machine's addresses, netlink, which the unit refuses: the server
    // then lists no addresses and serves on.
    let unexpected: Vec<&String> = families
        .iter()
        .filter(|&f| f != "AF_UNIX" && f != "AF_NETLINK")
        .collect();
    assert!(
        unexpected.is_empty(),
        "sockets of families RestrictAddressFamilies=AF_UNIX refuses: {unexpected:?}"
    );
}

/// The `Key=value` settings of a unit's `[Service]` section, in order.
fn service_section(name: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(unit_source(name)).unwrap();
    let section = text.split("[Service]\n").nth(1).unwrap();
    let section = section.split("\n[").next().unwrap();
    section
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The TLS recipe's units (docs/tls.md) are the plain ones with a port, fd
/// names that mark TLS and the redirect, and the certificate pair as
/// credentials: everything else in the service, the hardening first, is
/// the plain service's, setting for setting.
#[test]
fn the_tls_units_are_the_plain_ones_with_https_names_and_the_pair_as_credentials() {
    let https = unit_settings("portkeeper-tls.socket");
    assert_eq!(single(&https, "ListenStream"), "443");
    assert_eq!(single(&https, "FileDescriptorName"), "https");
    assert_eq!(single(&https, "Service"), "portkeeper-tls.service");
    assert_eq!(single(&https, "Accept"), "no");
    let redirect = unit_settings("portkeeper-tls-redirect.socket");
    assert_eq!(single(&redirect, "ListenStream"), "80");
    assert_eq!(single(&redirect, "FileDescriptorName"), "http+redirect");
    assert_eq!(single(&redirect, "Service"), "portkeeper-tls.service");
    assert_eq!(single(&redirect, "Accept"), "no");

    let service = unit_settings("portkeeper-tls.service");
    assert_eq!(single(&service, "Requires"), "portkeeper-tls.socket");
    assert_eq!(
        single(&service, "After"),
        "portkeeper-tls.socket portkeeper-tls-redirect.socket"
    );
    let credentials = values(&service, "LoadCredential");
    for id in ["tls-cert", "tls-key", "api-token"] {
        assert!(
            credentials.iter().any(|c| c.starts_with(&format!("{id}:"))),
            "no LoadCredential={id}:... in {credentials:?}"
        );
    }

    let mut tls = service_section("portkeeper-tls.service");
    tls.retain(|(k, v)| !(k == "LoadCredential" && v.starts_with("tls-")));
    assert_eq!(
        tls,
        service_section("portkeeper.service"),
        "portkeeper-tls.service should differ from portkeeper.service only by the tls-* credentials"
    );
}

/// The TLS units' sockets, as systemd hands them over (through the real
/// `systemd-socket-activate`, with the names and credential ids read from
/// the unit files): the `https` one serves HTTPS (HTTP/2 by ALPN) with the
/// pair from `$CREDENTIALS_DIRECTORY`, the `http+redirect` one answers 308
/// to it.
#[test]
fn the_tls_units_sockets_serve_https_and_the_redirect() {
    let (Some(tool), Some(curl)) = (peer_tool("systemd-socket-activate"), peer_tool("curl")) else {
        return;
    };
    let name = |unit: &str| single(&unit_settings(unit), "FileDescriptorName").to_owned();
    let credential = |id: &str| {
        values(&unit_settings("portkeeper-tls.service"), "LoadCredential")
            .into_iter()
            .find_map(|c| {
                c.split_once(':')
                    .filter(|(i, _)| *i == id)
                    .map(|(i, _)| i.to_owned())
            })
            .unwrap_or_else(|| panic!("no LoadCredential={id}:..."))
    };
    let credentials = TempDir::new();
    let (cert_path, _) = Pair::self_signed_localhost().write(
        credentials.path(),
        &credential("tls-cert"),
        &credential("tls-key"),
    );

    let ports = owned_port_run(2);
    let [https, redirect] = [0, 1].map(|i| ports[i].local_addr().unwrap());
    drop(ports); // systemd-socket-activate binds them
    let mut cmd = clean_command(tool);
    cmd.arg(format!("--listen={https}"))
        .arg(format!("--listen={redirect}"))
        .arg(format!(
            "--fdname={}:{}",
            name("portkeeper-tls.socket"),
            name("portkeeper-tls-redirect.socket")
        ))
        .arg("-E")
        .arg(format!(
            "CREDENTIALS_DIRECTORY={}",
            credentials.path().display()
        ))
        .args(["-E", "HOST=127.0.0.1", "-E", "API_PORT=0", "--"])
        .arg(binary());
    let mut activator = Running::spawn(cmd, "socket-activate-tls").unwrap();
    activator.wait_for_line("Listening on", DEADLINE).unwrap();

    // The first connection starts the server, as with systemd.
    let mut get = clean_command(curl);
    get.args(["-sS", "--max-time", "15", "-w", " %{http_version}"])
        .arg("--cacert")
        .arg(&cert_path)
        .arg("--resolve")
        .arg(format!("localhost:{}:127.0.0.1", https.port()))
        .arg(format!("https://localhost:{}/health", https.port()));
    let output = get.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.ends_with(" 2"),
        "curl over HTTPS: {stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = activator
        .wait_for_line("TLS certificate loaded", DEADLINE)
        .unwrap();
    assert!(
        line.contains("tls-cert"),
        "the pair from the credential: {line}"
    );

    let response = http_exchange(redirect, "GET", "/a?b=1", &[]).unwrap();
    assert!(response.starts_with("HTTP/1.1 308"), "{response}");
    assert_eq!(
        response_header(&response, "location"),
        Some(&*format!("https://127.0.0.1:{}/a?b=1", https.port())),
        "{response}"
    );
}
