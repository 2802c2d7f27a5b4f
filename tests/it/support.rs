//! Test support: run the built binary for real, read its output, talk HTTP to it.
//!
//! Every wait here has a deadline, every child is killed and reaped on drop,
//! and the child's output is echoed into the test's output with a prefix so a
//! failure shows what the server said.

#![allow(dead_code)] // Each test module uses a different part of this kit.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// The default deadline for a server to start or stop. Generous: CI machines
/// are shared and debug builds are slow, and a passing test never waits it out.
pub(crate) const DEADLINE: Duration = Duration::from_secs(20);

/// The path of the built `portkeeper` binary.
pub(crate) fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_portkeeper")
}

/// A command for the binary with a cleared environment (only PATH kept),
/// run in `dir` so no stray `.env` is read.
pub(crate) fn portkeeper(dir: &Path) -> Command {
    let mut cmd = clean_command(binary());
    cmd.current_dir(dir);
    cmd
}

/// [`portkeeper`] on 127.0.0.1 with a kernel-chosen port (`API_PORT=0`);
/// a test that needs another port sets `API_PORT` again.
pub(crate) fn loopback_server(dir: &TempDir) -> Command {
    let mut cmd = portkeeper(dir.path());
    cmd.env("HOST", "127.0.0.1").env("API_PORT", "0");
    cmd
}

/// A command with a cleared environment (only PATH kept), no stdin, run in
/// [`empty_dir`]: whatever it starts reads no stray `.env` or variable of ours.
pub(crate) fn clean_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir(empty_dir())
        .stdin(Stdio::null());
    cmd
}

/// A directory that never holds a `.env`, for commands with no directory of
/// their own (the crate root, the default, may hold a developer's `.env`).
pub(crate) fn empty_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("portkeeper-it-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the empty dir");
        dir
    })
}

/// A directory of its own for one test, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "portkeeper-it-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Output collected from a child, with a condition variable to wait on.
#[derive(Default)]
struct Transcript {
    /// Both streams, interleaved as the lines arrived.
    text: Mutex<String>,
    /// stderr alone, where the server logs and reports errors.
    stderr: Mutex<String>,
    changed: Condvar,
}

/// A running child process whose stdout and stderr are being collected.
pub(crate) struct Running {
    child: Child,
    transcript: Arc<Transcript>,
    readers: Vec<std::thread::JoinHandle<()>>,
    label: String,
}

impl Running {
    /// Spawns `cmd` with piped output. `label` prefixes its echoed lines.
    pub(crate) fn spawn(cmd: Command, label: &str) -> Result<Self> {
        Self::spawn_with_stderr(cmd, label, None)
    }

    /// Spawns `cmd` the way systemd starts a service whose stderr is the
    /// journal: stderr is a Unix stream socket, and `JOURNAL_STREAM` holds
    /// its `device:inode`. The test reads the other end, as journald would.
    pub(crate) fn spawn_on_journal_stream(mut cmd: Command, label: &str) -> Result<Self> {
        use std::os::fd::OwnedFd;
        use std::os::unix::fs::MetadataExt;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        let meta = std::fs::File::from(OwnedFd::from(theirs.try_clone()?)).metadata()?;
        cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
            .stderr(Stdio::from(OwnedFd::from(theirs)));
        Self::spawn_with_stderr(cmd, label, Some(Box::new(ours)))
    }

    /// Spawns `cmd`; its stderr is read from `stderr` when given (the caller
    /// set the child's end), else from a pipe.
    fn spawn_with_stderr(
        mut cmd: Command,
        label: &str,
        stderr: Option<Box<dyn Read + Send>>,
    ) -> Result<Self> {
        cmd.stdout(Stdio::piped());
        if stderr.is_none() {
            cmd.stderr(Stdio::piped());
        }
        let mut child = cmd.spawn().with_context(|| format!("spawn {cmd:?}"))?;
        // Closes our copy of the child's end, so the reader sees end of file.
        drop(cmd);
        let transcript = Arc::new(Transcript::default());
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr: Box<dyn Read + Send> = match stderr {
            Some(stream) => stream,
            None => Box::new(child.stderr.take().expect("piped stderr")),
        };
        let readers = vec![
            collect(
                stdout,
                Arc::clone(&transcript),
                format!("[{label} out]"),
                false,
            ),
            collect(
                stderr,
                Arc::clone(&transcript),
                format!("[{label} err]"),
                true,
            ),
        ];
        Ok(Running {
            child,
            transcript,
            readers,
            label: label.to_owned(),
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the child printed so far.
    pub(crate) fn output(&self) -> String {
        self.transcript.text.lock().unwrap().clone()
    }

    /// What the child printed on stderr so far.
    pub(crate) fn stderr(&self) -> String {
        self.transcript.stderr.lock().unwrap().clone()
    }

    /// Waits until a line containing `needle` appears; returns that line.
    pub(crate) fn wait_for_line(&mut self, needle: &str, deadline: Duration) -> Result<String> {
        let end = Instant::now() + deadline;
        loop {
            let exited = self.child.try_wait()?;
            if exited.is_some() {
                self.drain_readers();
            }
            {
                let text = self.transcript.text.lock().unwrap();
                if let Some(line) = text.lines().find(|l| l.contains(needle)) {
                    return Ok(line.to_owned());
                }
                if let Some(status) = exited {
                    bail!(
                        "{}: exited with {status} before printing {needle:?}; output:\n{text}",
                        self.label
                    );
                }
                let now = Instant::now();
                if now >= end {
                    bail!(
                        "{}: no line with {needle:?} within {deadline:?}; output:\n{text}",
                        self.label
                    );
                }
                // Wake on new output, or after 100 ms to notice an early exit.
                let wait = (end - now).min(Duration::from_millis(100));
                let _unused = self.transcript.changed.wait_timeout(text, wait).unwrap();
            }
        }
    }

    /// Waits for the start-up "serving" line and returns the address it reports.
    pub(crate) fn serving_address(&mut self) -> Result<SocketAddr> {
        let line = self.wait_for_line(" serving ", DEADLINE)?;
        field(&line, "address")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| anyhow!("no address= in {line:?}"))
    }

    /// Sends a signal by name (TERM, INT, HUP, ...).
    pub(crate) fn signal(&self, name: &str) -> Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()?;
        if !status.success() {
            bail!("kill -{name} {} failed", self.pid());
        }
        Ok(())
    }

    /// Waits for the child to exit, within `deadline`.
    pub(crate) fn wait_exit(&mut self, deadline: Duration) -> Result<ExitStatus> {
        let end = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.drain_readers();
                return Ok(status);
            }
            if Instant::now() >= end {
                bail!(
                    "{}: still running after {deadline:?}; output:\n{}",
                    self.label,
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Running {
    /// Waits (bounded) for the reader threads to reach end of file, so the
    /// transcript holds everything the child wrote before it exited.
    fn drain_readers(&self) {
        let end = Instant::now() + Duration::from_secs(2);
        while Instant::now() < end && !self.readers.iter().all(|r| r.is_finished()) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(
    stream: impl Read + Send + 'static,
    transcript: Arc<Transcript>,
    prefix: String,
    is_stderr: bool,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            eprintln!("{prefix} {line}");
            if is_stderr {
                let mut stderr = transcript.stderr.lock().unwrap();
                stderr.push_str(&line);
                stderr.push('\n');
            }
            let mut text = transcript.text.lock().unwrap();
            text.push_str(&line);
            text.push('\n');
            transcript.changed.notify_all();
        }
    })
}

/// The value of `name=value` in a log line (values end at a space).
pub(crate) fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {name}="))? + name.len() + 2;
    let rest = &line[start..];
    Some(rest.split(' ').next().unwrap_or(rest).trim_matches('"'))
}

/// Runs `cmd` to completion within `deadline`; returns its status and stderr.
pub(crate) fn run_to_exit(cmd: Command, deadline: Duration) -> Result<(ExitStatus, String)> {
    let mut running = Running::spawn(cmd, "run")?;
    let status = running.wait_exit(deadline)?;
    Ok((status, running.stderr()))
}

/// A minimal HTTP/1.1 GET over a fresh connection: returns status and body.
///
/// Raw sockets, not an HTTP client crate: the tests should see exactly what
/// went over the wire, including an empty reply.
pub(crate) fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connect {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    parse_response(&response).with_context(|| format!("GET {path} from {addr}"))
}

/// Sends one raw HTTP/1.1 request over a fresh connection (`Connection: close`
/// and `Host` are added) and returns the whole raw response.
pub(crate) fn http_exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connect {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// The value of header `name` (any case) in a raw HTTP/1.1 response.
pub(crate) fn response_header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    let head = response.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// Splits a raw HTTP/1.1 response (no chunked encoding) into status and body.
pub(crate) fn parse_response(response: &str) -> Result<(u16, String)> {
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| anyhow!("not an HTTP response: {response:?}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// GET `path` and parse the body as JSON, insisting on 200.
pub(crate) fn get_json(addr: SocketAddr, path: &str) -> Result<serde_json::Value> {
    let (status, body) = http_get(addr, path)?;
    if status != 200 {
        bail!("GET {path}: status {status}, body {body}");
    }
    serde_json::from_str(&body).with_context(|| format!("GET {path}: body {body:?}"))
}

/// A loopback listener on a port the kernel chose.
pub(crate) fn loopback_listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")
}

/// A run of `len` consecutive loopback ports that were all free a moment ago,
/// below Linux's ephemeral range (32768+) so outgoing connections do not
/// wander into it. Returns the first port and the listeners holding the run;
/// drop the ones the test wants free.
pub(crate) fn owned_port_run(len: u16) -> Vec<TcpListener> {
    static NEXT_BASE: AtomicUsize = AtomicUsize::new(0);
    // Spread tests (and parallel test binaries) over 20000..32000.
    let seed = (std::process::id() as usize * 7919) % 12_000;
    for _ in 0..200 {
        let offset = NEXT_BASE.fetch_add(len as usize + 1, Ordering::Relaxed);
        let base = 20_000 + ((seed + offset) % (12_000 - len as usize)) as u16;
        let held: Result<Vec<TcpListener>, _> = (base..base + len)
            .map(|port| TcpListener::bind(("127.0.0.1", port)))
            .collect();
        if let Ok(held) = held {
            return held;
        }
    }
    panic!("no run of {len} free loopback ports in 20000..32000");
}

/// The port of a listener.
pub(crate) fn port_of(listener: &TcpListener) -> u16 {
    listener.local_addr().unwrap().port()
}

/// Finds a program on PATH (or in ~/.cargo/bin, where `cargo install` puts it).
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// A real peer tool for the second tier, or `None` with a note when it is
/// missing and the run does not require it. `.ci/run` sets
/// PORTKEEPER_REQUIRE_PEERS=1, which turns a missing tool into a failure.
pub(crate) fn peer_tool(name: &str) -> Option<PathBuf> {
    match find_program(name) {
        Some(path) => Some(path),
        None if std::env::var_os("PORTKEEPER_REQUIRE_PEERS").is_some() => {
            panic!("{name} is required (PORTKEEPER_REQUIRE_PEERS is set) but not installed")
        }
        None => {
            eprintln!(
                "note: {name} is not installed; this second-tier test checks nothing here (run .ci/run)"
            );
            None
        }
    }
}

/// Hands `sockets` to the child as fds 3, 4, ... the way systemd and systemfd do.
/// The LISTEN_* variables are the caller's to set.
pub(crate) fn hand_over(cmd: &mut Command, sockets: Vec<std::os::fd::OwnedFd>) {
    use command_fds::{CommandFdExt, FdMapping};
    let mappings = sockets
        .into_iter()
        .zip(3..)
        .map(|(parent_fd, child_fd)| FdMapping {
            parent_fd,
            child_fd,
        })
        .collect();
    cmd.fd_mappings(mappings)
        .expect("fd mappings do not collide");
}

/// A process that outlived its parent; killed by pid on drop.
pub(crate) struct Successor(pub(crate) u32);

impl Drop for Successor {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .status();
    }
}

/// Sends a slow request (`/debug/sleep`) and returns the open connection.
pub(crate) fn start_slow_request(addr: SocketAddr, ms: u64) -> Result<TcpStream> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(DEADLINE))?;
    write!(
        stream,
        "GET /debug/sleep?ms={ms} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    Ok(stream)
}

/// Fields of `/proc/<pid>/stat` after the command name: state, ppid, pgrp,
/// session, tty_nr, ...; `None` once the process is gone.
pub(crate) fn proc_stat(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// True once `pid` has exited (gone, or a zombie nobody reaped yet).
pub(crate) fn has_exited(pid: u32) -> bool {
    proc_stat(pid).is_none_or(|fields| fields[0] == "Z" || fields[0] == "X")
}

/// A copy of the binary in `dir` (which a test may replace, as a build
/// would), and a loopback command that runs it from `dir`.
pub(crate) fn copy_of_binary(dir: &Path) -> (PathBuf, Command) {
    let path = dir.join("portkeeper");
    std::fs::copy(binary(), &path).expect("copy the binary");
    let mut cmd = clean_command(&path);
    cmd.current_dir(dir);
    cmd.env("HOST", "127.0.0.1").env("API_PORT", "0");
    (path, cmd)
}

/// Puts `contents` at `path` as a new file (new inode), as a build or an
/// installer does: written beside it, then renamed over it.
pub(crate) fn replace_file(path: &Path, contents: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    let next = path.with_extension("new");
    std::fs::write(&next, contents).unwrap();
    std::fs::set_permissions(&next, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&next, path).unwrap();
}

/// `into` with `cmd`'s variables and directory (not its program or arguments).
pub(crate) fn copy_settings(cmd: &Command, mut into: Command) -> Command {
    for (name, value) in cmd.get_envs() {
        if let Some(value) = value {
            into.env(name, value);
        }
    }
    if let Some(dir) = cmd.get_current_dir() {
        into.current_dir(dir);
    }
    into
}

/// Spawns a command whose program was just copied: while another test
/// thread forks, its child briefly holds our write descriptor of the copy,
/// and exec fails with ETXTBSY ("text file busy"). Retried for a while.
pub(crate) fn spawn_fresh_copy(cmd: &Command, label: &str) -> Running {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let mut attempt = copy_settings(cmd, clean_command(cmd.get_program()));
        attempt.args(cmd.get_args());
        match Running::spawn(attempt, label) {
            Ok(running) => return running,
            Err(err)
                if Instant::now() < end
                    && err
                        .downcast_ref::<std::io::Error>()
                        .and_then(std::io::Error::raw_os_error)
                        == Some(26) =>
            // ETXTBSY
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(err) => panic!("{err:#}"),
        }
    }
}

/// Waits until `done` holds, for at most `deadline`.
pub(crate) fn wait_until(deadline: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
