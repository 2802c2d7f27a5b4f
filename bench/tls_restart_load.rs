//! TLS load while restarting: keeps HTTPS load (HTTP/1.1 or HTTP/2, chosen by
//! ALPN) on a server and upgrades it N times, counting every request as
//! succeeded, refused or failed otherwise. The TLS sibling of
//! `restart_load.rs`; run by `bench/tls_restarts.sh`.
//!
//! - **refused**: `connect()` answered "connection refused" (nobody listening);
//! - **failed**: anything else that is not a 200: a failed handshake, a reset,
//!   a connection closed with a request sent and unanswered, a timeout,
//!   another status;
//! - **succeeded**: a complete 200 response.
//!
//! A connection the server closes *after* answering (a drain: HTTP/1.1
//! `Connection: close`, HTTP/2 GOAWAY) is not an error: the client opens a
//! new one, as every client does. Two kinds of request are sent again on a
//! new connection and counted apart, not as failed:
//! - `unsent`: hyper handed it back as never sent (`TrySendError::message`);
//! - `goaway`: h2 failed it with the server's GOAWAY (NO_ERROR): either it
//!   was opened after the GOAWAY arrived (h2 refuses it locally) or its
//!   stream id is above the GOAWAY's last stream id; either way the server
//!   did not process it, and RFC 9113 §8.7 says it may be retried. hyper's
//!   client does not retry these itself (hyperium/hyper#2500); curl and
//!   browsers do.
//!
//! Any other error on a request counts as failed: a stream cut by the
//! connection's close shows as "stream closed because of a broken pipe".
//!
//! ```text
//! tls_restart_load ADDR LABEL h1|h2 RESTARTS 'RESTART COMMAND' [CONNECTIONS]
//! ```
//!
//! `CA_FILE` (PEM) is the CA the server's certificate chains to; the name
//! checked is `localhost`. Each request is `GET /info`; with h2, `STREAMS`
//! (default 4) requests run at once on each connection. Each restart runs
//! the command with `sh -c` and `PID` set to the pid that answers `/info`;
//! it is complete when another pid answers.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Empty};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A request (or a connect with its handshake) slower than this is a failure.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one restart may take, from the command to the new pid answering.
const RESTART_DEADLINE: Duration = Duration::from_secs(30);
/// Load between restarts, so each restart starts from a steady state.
const SETTLE: Duration = Duration::from_millis(700);
/// Pause after a refused or failed connect.
const RETRY_PAUSE: Duration = Duration::from_millis(5);
/// Extra time counted into a restart window, for the old process's drain.
const DRAIN_MARGIN: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, PartialEq)]
enum Protocol {
    H1,
    H2,
}

#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    succeeded: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    unsent: AtomicU64,
    goaway: AtomicU64,
    handshakes: AtomicU64,
}

struct Shared {
    addr: SocketAddr,
    protocol: Protocol,
    streams: usize,
    connector: TlsConnector,
    epoch: Instant,
    stop: AtomicBool,
    counts: Counts,
    latest_pid: AtomicU64,
    failures: Mutex<std::collections::BTreeMap<String, u64>>,
    /// (start, latency) in µs of each successful request.
    samples: Mutex<Vec<(u64, u64)>>,
}

type Problem = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 5 {
        eprintln!(
            "usage: tls_restart_load ADDR LABEL h1|h2 RESTARTS 'RESTART COMMAND' [CONNECTIONS] (see bench/tls_restarts.sh)"
        );
        return ExitCode::from(2);
    }
    let protocol = match args[2].as_str() {
        "h1" => Protocol::H1,
        "h2" => Protocol::H2,
        other => {
            eprintln!("tls_restart_load: protocol {other:?}: expected h1 or h2");
            return ExitCode::from(2);
        }
    };
    let (Ok(addr), Ok(restarts)) = (args[0].parse::<SocketAddr>(), args[3].parse::<u32>()) else {
        eprintln!("tls_restart_load: ADDR must be ip:port and RESTARTS a count");
        return ExitCode::from(2);
    };
    let connections: usize = args.get(5).and_then(|c| c.parse().ok()).unwrap_or(8);
    let label = &args[1];
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("tls_restart_load: runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        let connector = connector(protocol)?;
        run(
            addr,
            label,
            protocol,
            connector,
            restarts,
            &args[4],
            connections,
        )
        .await
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tls_restart_load: {label}: {err}");
            ExitCode::FAILURE
        }
    }
}

/// A client trusting `CA_FILE`, offering only the protocol under test.
fn connector(protocol: Protocol) -> Result<TlsConnector, Problem> {
    let ca = std::env::var("CA_FILE").map_err(|_| "CA_FILE: not set (a PEM CA file)")?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&ca).map_err(|e| format!("CA_FILE {ca}: {e}"))? {
        roots.add(cert.map_err(|e| format!("CA_FILE {ca}: {e}"))?)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![match protocol {
        Protocol::H1 => b"http/1.1".to_vec(),
        Protocol::H2 => b"h2".to_vec(),
    }];
    Ok(TlsConnector::from(Arc::new(config)))
}

async fn run(
    addr: SocketAddr,
    label: &str,
    protocol: Protocol,
    connector: TlsConnector,
    restarts: u32,
    restart: &str,
    connections: usize,
) -> Result<(), Problem> {
    let shared = Arc::new(Shared {
        addr,
        protocol,
        streams: std::env::var("STREAMS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(4),
        connector,
        epoch: Instant::now(),
        stop: AtomicBool::new(false),
        counts: Counts::default(),
        latest_pid: AtomicU64::new(0),
        failures: Mutex::new(Default::default()),
        samples: Mutex::new(Vec::new()),
    });
    let workers: Vec<_> = (0..connections)
        .map(|_| tokio::spawn(worker(Arc::clone(&shared))))
        .collect();

    tokio::time::sleep(SETTLE).await;
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
        if let Err(err) = run_restart(restart, old).await {
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
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if problem.is_some() {
            break;
        }
        handovers.push(begun.elapsed());
        windows.push((start, micros(&shared) + DRAIN_MARGIN.as_micros() as u64));
        tokio::time::sleep(SETTLE).await;
    }
    shared.stop.store(true, Ordering::Release);
    for worker in workers {
        let _ = tokio::time::timeout(REQUEST_TIMEOUT * 2, worker).await;
    }

    let samples = std::mem::take(&mut *shared.samples.lock().unwrap());
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
        "{label:<14} restarts={} sent={} succeeded={} refused={} failed={} unsent={} goaway={} handshakes={} worst_restart_ms={:.1} steady_max_ms={:.1} p99_ms={:.2} mean_restart_ms={:.0} final_pid={}",
        handovers.len(),
        c.sent.load(Ordering::Relaxed),
        c.succeeded.load(Ordering::Relaxed),
        c.refused.load(Ordering::Relaxed),
        c.failed.load(Ordering::Relaxed),
        c.unsent.load(Ordering::Relaxed),
        c.goaway.load(Ordering::Relaxed),
        c.handshakes.load(Ordering::Relaxed),
        restart_max as f64 / 1000.0,
        steady_max as f64 / 1000.0,
        p99 as f64 / 1000.0,
        mean_handover * 1000.0,
        shared.latest_pid.load(Ordering::Relaxed),
    );
    for (kind, n) in shared.failures.lock().unwrap().iter() {
        println!("{label:<14}   failed: {n} x {kind}");
    }
    match problem {
        Some(problem) => Err(problem.into()),
        None => Ok(()),
    }
}

fn micros(shared: &Shared) -> u64 {
    shared.epoch.elapsed().as_micros() as u64
}

/// Runs the restart command with `PID` set, bounded in time.
async fn run_restart(command: &str, pid: u64) -> Result<(), Problem> {
    let mut child = tokio::process::Command::new("sh")
        .args(["-c", command])
        .env("PID", pid.to_string())
        .kill_on_drop(true)
        .spawn()?;
    match tokio::time::timeout(RESTART_DEADLINE, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("exited with {status}").into()),
        Ok(Err(err)) => Err(err.into()),
        Err(_) => Err("did not finish in time".into()),
    }
}

fn fail(shared: &Shared, kind: String) {
    shared.counts.failed.fetch_add(1, Ordering::Relaxed);
    *shared.failures.lock().unwrap().entry(kind).or_default() += 1;
}

/// An error with its sources, for the failure table.
fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

type Sender = Box<dyn SendRequest>;

/// The part of hyper's HTTP/1.1 and HTTP/2 `SendRequest` a stream loop uses.
trait SendRequest: Send {
    fn ready(&mut self) -> futures_util::future::BoxFuture<'_, bool>;
    fn send(
        &mut self,
        request: Request<Empty<Bytes>>,
    ) -> futures_util::future::BoxFuture<'_, Result<hyper::Response<hyper::body::Incoming>, Sent>>;
    fn another(&self) -> Option<Sender>;
}

/// Why a request got no response: never sent (hyper handed it back),
/// refused unprocessed by a GOAWAY, or failed.
enum Sent {
    Never,
    GoAway,
    Failed(String),
}

/// How h2 shows a request failed by the peer's GOAWAY with NO_ERROR (its
/// `Error::remote_go_away`); a stream cut by a close says "broken pipe".
const GOAWAY_NO_ERROR: &str = "connection error received: not a result of an error";

fn sent_error(err: hyper::client::conn::TrySendError<Request<Empty<Bytes>>>) -> Sent {
    if err.message().is_some() {
        return Sent::Never;
    }
    let text = describe(&err.into_error());
    if text.ends_with(GOAWAY_NO_ERROR) {
        Sent::GoAway
    } else {
        Sent::Failed(text)
    }
}

impl SendRequest for hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    fn ready(&mut self) -> futures_util::future::BoxFuture<'_, bool> {
        Box::pin(async move {
            hyper::client::conn::http1::SendRequest::ready(self)
                .await
                .is_ok()
        })
    }
    fn send(
        &mut self,
        request: Request<Empty<Bytes>>,
    ) -> futures_util::future::BoxFuture<'_, Result<hyper::Response<hyper::body::Incoming>, Sent>>
    {
        let sent = self.try_send_request(request);
        Box::pin(async move { sent.await.map_err(sent_error) })
    }
    fn another(&self) -> Option<Sender> {
        None
    }
}

impl SendRequest for hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    fn ready(&mut self) -> futures_util::future::BoxFuture<'_, bool> {
        Box::pin(async move {
            hyper::client::conn::http2::SendRequest::ready(self)
                .await
                .is_ok()
        })
    }
    fn send(
        &mut self,
        request: Request<Empty<Bytes>>,
    ) -> futures_util::future::BoxFuture<'_, Result<hyper::Response<hyper::body::Incoming>, Sent>>
    {
        let sent = self.try_send_request(request);
        Box::pin(async move { sent.await.map_err(sent_error) })
    }
    fn another(&self) -> Option<Sender> {
        Some(Box::new(self.clone()))
    }
}

/// One connection at a time: connect, handshake, then its request loops
/// until the server closes it or the run ends.
async fn worker(shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::Acquire) {
        let sender = match open(&shared).await {
            Ok(sender) => sender,
            Err(Some(kind)) => {
                shared.counts.sent.fetch_add(1, Ordering::Relaxed);
                fail(&shared, kind);
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
            Err(None) => {
                shared.counts.sent.fetch_add(1, Ordering::Relaxed);
                shared.counts.refused.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        let mut loops = Vec::new();
        if shared.protocol == Protocol::H2 {
            for _ in 1..shared.streams {
                if let Some(sender) = sender.another() {
                    loops.push(tokio::spawn(requests(Arc::clone(&shared), sender)));
                }
            }
        }
        requests(Arc::clone(&shared), sender).await;
        for task in loops {
            let _ = task.await;
        }
    }
}

/// A new TLS connection with hyper on it; `Err(None)` is a refused connect,
/// `Err(Some(kind))` any other failure.
async fn open(shared: &Shared) -> Result<Sender, Option<String>> {
    let connected = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let tcp = TcpStream::connect(shared.addr).await.map_err(|err| {
            (err.kind() != std::io::ErrorKind::ConnectionRefused)
                .then(|| format!("connect: {}", err.kind()))
        })?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from("localhost").expect("a valid name");
        shared
            .connector
            .connect(name, tcp)
            .await
            .map_err(|err| Some(format!("handshake: {err}")))
    })
    .await
    .map_err(|_| Some("connect and handshake timed out".to_owned()))??;
    shared.counts.handshakes.fetch_add(1, Ordering::Relaxed);
    let alpn = connected.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let io = TokioIo::new(connected);
    match shared.protocol {
        Protocol::H1 => {
            if alpn.as_deref() != Some(b"http/1.1") {
                return Err(Some(format!("ALPN chose {alpn:?}, not http/1.1")));
            }
            let (sender, connection) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|err| Some(format!("http1 handshake: {err}")))?;
            tokio::spawn(connection);
            Ok(Box::new(sender))
        }
        Protocol::H2 => {
            if alpn.as_deref() != Some(b"h2") {
                return Err(Some(format!("ALPN chose {alpn:?}, not h2")));
            }
            let (sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|err| Some(format!("http2 handshake: {err}")))?;
            tokio::spawn(connection);
            Ok(Box::new(sender))
        }
    }
}

/// Requests one after another on one connection (one stream of it, with
/// h2) until the connection closes or the run ends.
async fn requests(shared: Arc<Shared>, mut sender: Sender) {
    while !shared.stop.load(Ordering::Acquire) {
        // Closed by the server between requests (after its last answer):
        // not an error, the worker opens a new connection.
        if !sender.ready().await {
            return;
        }
        let request = Request::get("/info")
            .header("host", "localhost")
            .body(Empty::new())
            .expect("a valid request");
        let start = micros(&shared);
        let began = Instant::now();
        let outcome = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let response = sender.send(request).await?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|err| Sent::Failed(format!("body: {}", describe(&err))))?
                .to_bytes();
            Ok::<_, Sent>((status, body))
        })
        .await;
        match outcome {
            Err(_) => {
                shared.counts.sent.fetch_add(1, Ordering::Relaxed);
                fail(&shared, "request timed out".to_owned());
                return;
            }
            Ok(Err(Sent::Never)) => {
                shared.counts.unsent.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(Err(Sent::GoAway)) => {
                shared.counts.goaway.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(Err(Sent::Failed(kind))) => {
                shared.counts.sent.fetch_add(1, Ordering::Relaxed);
                fail(&shared, kind);
                return;
            }
            Ok(Ok((status, body))) => {
                shared.counts.sent.fetch_add(1, Ordering::Relaxed);
                if status != 200 {
                    fail(&shared, format!("status {status}"));
                    continue;
                }
                shared.counts.succeeded.fetch_add(1, Ordering::Relaxed);
                shared
                    .samples
                    .lock()
                    .unwrap()
                    .push((start, began.elapsed().as_micros() as u64));
                if let Some(pid) = pid_in(&body) {
                    shared.latest_pid.store(pid, Ordering::Release);
                }
            }
        }
    }
}

/// The `"pid":N` of an `/info` body.
fn pid_in(body: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(body).ok()?;
    let rest = &text[text.find("\"pid\":")? + 6..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}
