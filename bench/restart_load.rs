//! Load while restarting: keeps HTTP/1.1 load on a server and restarts it N times,
//! counting every request as succeeded, refused or failed otherwise.
//!
//! Run by `bench/restarts.sh`; see there for the four restart paths. wrk and
//! oha report socket errors coarsely (and oha not at all by kind), so this
//! small client counts precisely what a user would see:
//! - **refused**: `connect()` answered "connection refused" (nobody listening);
//! - **failed**: anything else that is not a 200 — a reset, an empty reply, a
//!   connection closed with the request unanswered, a timeout, another status;
//! - **succeeded**: a complete 200 response.
//!
//! A connection the server closes *after* answering (`Connection: close`
//! during a drain) is not an error: the client reconnects, as every HTTP
//! client does. After a refused or failed connect a worker waits 5 ms before
//! trying again, so a server that is down is counted, not flooded.
//!
//! Each restart runs `--restart` with `sh -c` and `PID` set to the pid that
//! currently answers `/info`; the restart is complete when another pid answers.
//! "Worst latency during a restart" is the longest request that overlapped
//! the window from the command to the first answer from the new pid (plus
//! one second, for the old process's drain).
//!
//! ```text
//! restart_load ADDR LABEL RESTARTS 'RESTART COMMAND' [CONNECTIONS]
//! ```
//!
//! Each request is `GET /info`, or `GET $LOAD_PATH` when set (slow requests
//! with `DEBUG=true`'s `/debug/sleep?ms=300`, for a drain that has work).

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A request slower than this is a failure (the server is stuck), unless
/// `LOAD_TIMEOUT_S` says otherwise (a development loop queues requests for
/// as long as a build takes).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

fn request_timeout() -> Duration {
    std::env::var("LOAD_TIMEOUT_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(REQUEST_TIMEOUT, Duration::from_secs)
}
/// How long one restart may take, from the command to the new pid answering.
const RESTART_DEADLINE: Duration = Duration::from_secs(30);
/// Load between restarts, so each restart starts from a steady state.
const SETTLE: Duration = Duration::from_millis(700);
/// Pause after a refused or failed connect.
const RETRY_PAUSE: Duration = Duration::from_millis(5);
/// Extra time counted into a restart window, for the old process's drain.
const DRAIN_MARGIN: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    succeeded: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
}

/// What every worker shares.
struct Shared {
    addr: SocketAddr,
    /// What each request asks for: `LOAD_PATH`, else `/info` (any answer
    /// with `"pid":N` in its body, such as `/debug/sleep?ms=300`, will do).
    path: String,
    epoch: Instant,
    stop: AtomicBool,
    counts: Counts,
    /// The pid in the latest successful answer.
    latest_pid: AtomicU64,
    /// Failure descriptions, counted by kind.
    failures: Mutex<std::collections::BTreeMap<String, u64>>,
}

/// One completed request: when it started and how long it took (µs since epoch).
type Sample = (u64, u64);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        eprintln!(
            "usage: restart_load ADDR LABEL RESTARTS 'RESTART COMMAND' [CONNECTIONS] (see bench/restarts.sh)"
        );
        return ExitCode::from(2);
    }
    let (Ok(addr), Ok(restarts)) = (args[0].parse::<SocketAddr>(), args[2].parse::<u32>()) else {
        eprintln!("restart_load: ADDR must be ip:port and RESTARTS a count");
        return ExitCode::from(2);
    };
    let label = &args[1];
    let restart = &args[3];
    let connections: usize = args.get(4).and_then(|c| c.parse().ok()).unwrap_or(8);
    match run(addr, label, restarts, restart, connections) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("restart_load: {label}: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(
    addr: SocketAddr,
    label: &str,
    restarts: u32,
    restart: &str,
    connections: usize,
) -> io::Result<()> {
    let shared = Arc::new(Shared {
        addr,
        path: std::env::var("LOAD_PATH").unwrap_or_else(|_| "/info".to_owned()),
        epoch: Instant::now(),
        stop: AtomicBool::new(false),
        counts: Counts::default(),
        latest_pid: AtomicU64::new(0),
        failures: Mutex::new(Default::default()),
    });
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || worker(&shared))
        })
        .collect();

    std::thread::sleep(SETTLE);
    let steady_until = micros(&shared);
    let mut windows = Vec::new();
    let mut handovers = Vec::new();
    let mut problem = None;
    for round in 1..=restarts {
        let old = shared.latest_pid.load(Ordering::Acquire);
        if old == 0 {
            problem = Some(format!("round {round}: no successful answer yet"));
            break;
        }
        let start = micros(&shared);
        let begun = Instant::now();
        if let Err(err) = run_restart(restart, old) {
            problem = Some(format!("round {round}: restart command: {err}"));
            break;
        }
        while shared.latest_pid.load(Ordering::Acquire) == old {
            if begun.elapsed() > RESTART_DEADLINE {
                problem = Some(format!(
                    "round {round}: pid {old} still answers after {RESTART_DEADLINE:?}"
                ));
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if problem.is_some() {
            break;
        }
        handovers.push(begun.elapsed());
        windows.push((start, micros(&shared) + DRAIN_MARGIN.as_micros() as u64));
        std::thread::sleep(SETTLE);
    }
    shared.stop.store(true, Ordering::Release);
    let mut samples: Vec<Sample> = Vec::new();
    for worker in workers {
        samples.extend(worker.join().unwrap_or_default());
    }

    let steady_max = samples
        .iter()
        .filter(|(start, _)| *start < steady_until)
        .map(|&(_, latency)| latency)
        .max()
        .unwrap_or(0);
    let restart_max = samples
        .iter()
        .filter(|&&(start, latency)| {
            windows
                .iter()
                .any(|&(from, to)| start < to && start + latency > from)
        })
        .map(|&(_, latency)| latency)
        .max()
        .unwrap_or(0);
    let mut latencies: Vec<u64> = samples.iter().map(|&(_, l)| l).collect();
    latencies.sort_unstable();
    let p99 = latencies
        .get(latencies.len().saturating_sub(1) * 99 / 100)
        .copied()
        .unwrap_or(0);
    let mean_handover = if handovers.is_empty() {
        0.0
    } else {
        handovers.iter().map(Duration::as_secs_f64).sum::<f64>() / handovers.len() as f64
    };
    let c = &shared.counts;
    println!(
        "{label:<10} restarts={} sent={} succeeded={} refused={} failed={} worst_restart_ms={:.1} steady_max_ms={:.1} p99_ms={:.2} mean_restart_ms={:.0} final_pid={}",
        handovers.len(),
        c.sent.load(Ordering::Relaxed),
        c.succeeded.load(Ordering::Relaxed),
        c.refused.load(Ordering::Relaxed),
        c.failed.load(Ordering::Relaxed),
        restart_max as f64 / 1000.0,
        steady_max as f64 / 1000.0,
        p99 as f64 / 1000.0,
        mean_handover * 1000.0,
        shared.latest_pid.load(Ordering::Relaxed),
    );
    for (kind, n) in shared.failures.lock().unwrap().iter() {
        println!("{label:<10}   failed: {n} x {kind}");
    }
    match problem {
        Some(problem) => Err(io::Error::other(problem)),
        None => Ok(()),
    }
}

fn micros(shared: &Shared) -> u64 {
    shared.epoch.elapsed().as_micros() as u64
}

/// Runs the restart command with `PID` set, bounded in time.
fn run_restart(command: &str, pid: u64) -> io::Result<()> {
    let mut child = Command::new("sh")
        .args(["-c", command])
        .env("PID", pid.to_string())
        .spawn()?;
    let begun = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return if status.success() {
                Ok(())
            } else {
                Err(io::Error::other(format!("exited with {status}")))
            };
        }
        if begun.elapsed() > RESTART_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::other("did not finish in time"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn fail(shared: &Shared, kind: String) {
    shared.counts.failed.fetch_add(1, Ordering::Relaxed);
    *shared.failures.lock().unwrap().entry(kind).or_default() += 1;
}

/// One keep-alive connection's loop; returns its successful samples.
fn worker(shared: &Shared) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut connection: Option<BufReader<TcpStream>> = None;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: restart_load\r\n\r\n",
        shared.path, shared.addr
    );
    while !shared.stop.load(Ordering::Acquire) {
        let mut reader = match connection.take() {
            Some(reader) => reader,
            None => match connect(shared.addr) {
                Ok(stream) => BufReader::new(stream),
                Err(err) => {
                    shared.counts.sent.fetch_add(1, Ordering::Relaxed);
                    if err.kind() == io::ErrorKind::ConnectionRefused {
                        shared.counts.refused.fetch_add(1, Ordering::Relaxed);
                    } else {
                        fail(shared, format!("connect: {err}"));
                    }
                    std::thread::sleep(RETRY_PAUSE);
                    continue;
                }
            },
        };
        shared.counts.sent.fetch_add(1, Ordering::Relaxed);
        let start = micros(shared);
        let began = Instant::now();
        if let Err(err) = reader.get_mut().write_all(request.as_bytes()) {
            fail(shared, format!("write: {}", err.kind()));
            continue;
        }
        match read_response(&mut reader) {
            Ok(response) if response.status == 200 => {
                shared.counts.succeeded.fetch_add(1, Ordering::Relaxed);
                samples.push((start, began.elapsed().as_micros() as u64));
                if let Some(pid) = pid_in(&response.body) {
                    shared.latest_pid.store(pid, Ordering::Release);
                }
                if !response.close {
                    connection = Some(reader);
                }
            }
            Ok(response) => fail(shared, format!("status {}", response.status)),
            Err(err) => fail(shared, format!("read: {err}")),
        }
    }
    samples
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let timeout = request_timeout();
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

struct Response {
    status: u16,
    close: bool,
    body: Vec<u8>,
}

/// Reads one HTTP/1.1 response with a Content-Length body.
fn read_response(reader: &mut BufReader<TcpStream>) -> io::Result<Response> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before any response (empty reply)",
        ));
    }
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line {line:?}")))?;
    let (mut length, mut close) = (0usize, false);
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed in the headers",
            ));
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().unwrap_or(0);
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            }
        }
    }
    let mut body = vec![0u8; length];
    io::Read::read_exact(reader, &mut body)?;
    Ok(Response {
        status,
        close,
        body,
    })
}

/// The `"pid":N` of an `/info` body.
fn pid_in(body: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(body).ok()?;
    let rest = &text[text.find("\"pid\":")? + 6..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}
