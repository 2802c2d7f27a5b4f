//! The benchmark driver behind `bench/run.sh`: portkeeper against `examples/baseline.rs`.
//!
//! ```text
//! bench_driver --portkeeper PATH --baseline PATH [--builtin PATH]
//!              [--baseline-tls PATH --tls-cert PEM --tls-key PEM]
//!              [--runs N] [--search-runs N] [--load-rounds N] [--load-seconds S]
//!              [--connections C]
//!              [--only startup,search,load,instructions,rss,tls,tls-instructions]
//! ```
//!
//! `--portkeeper` is `examples/bench_app.rs` and `--baseline` is
//! `examples/baseline.rs`: the same router (`bench/router.rs`, `GET /health`
//! and `POST /echo`) served by portkeeper and by `axum::serve`. `--builtin`
//! (optional) is the `portkeeper` binary, whose built-in `/health` gets rows
//! of its own under load. `--baseline-tls` is `examples/baseline_tls.rs`, the
//! same router behind tokio-rustls, for the TLS rows; both servers then read
//! the certificate and key from `--tls-cert` and `--tls-key`.
//!
//! It measures, in one run and on loopback only:
//! 1. exec → first `200` on `/health` with a raw socket client (connect,
//!    write a GET, read the status line), for a fixed port, an inherited fd 3
//!    (`LISTEN_FDS=1`) and `systemd-socket-activate` (timed from the first
//!    connection, which is what makes it exec the server);
//! 2. the port search, from portkeeper's own `listener opened listener_us=`
//!    debug line, with 0, 10, 100 and 1,000 busy ports ahead of the free one;
//! 3. throughput of `GET /health` and of `POST /echo` with the 1 KiB JSON of
//!    `bench/echo.json`, over HTTP/1.1 (`wrk`, also its p99 latency) and over
//!    HTTP/2 with prior knowledge (`h2load`, [`H2_STREAMS`] streams per
//!    connection), the servers taking turns within each round, after a
//!    warm-up that is not recorded;
//! 4. VmRSS after start and one request;
//! 5. user-space instructions per request of each workload, counted by valgrind's
//!    callgrind: a figure other work on the machine cannot move, which says
//!    whether a throughput difference is the server's or the machine's;
//! 6. over TLS (portkeeper with `TLS=true` against `examples/baseline_tls.rs`):
//!    throughput of `GET /health` over HTTP/1.1 (`wrk`, https) and over HTTP/2
//!    (`h2load`, https, ALPN `h2`); full handshakes per second, from batches
//!    of [`HANDSHAKE_BATCH`] new `h2load` clients with one request each (a new
//!    h2load client never offers a session to resume, where wrk's and
//!    h2load's reconnections do: docs/benchmarks.md says how that was
//!    checked); and VmRSS with [`IDLE_TLS_CONNECTIONS`] idle keep-alive TLS
//!    connections open, held by `bench/tls_idle.py` (section `tls`); and the
//!    instructions of those requests and handshakes under callgrind (section
//!    `tls-instructions`).
//!
//! Beside the wall-clock figures it reports the server's own CPU time (to the
//! first 200, and per request under load): on a shared machine those move
//! far less than wall-clock time when other work competes for the CPUs.
//!
//! Every figure is a median with min and max over repeated runs, beside the
//! baseline's figure from the same run. The ratio is the median of the
//! run-by-run ratios: each portkeeper run against the baseline run beside
//! it, so that a slow stretch of the shared machine weighs on both sides of
//! a ratio instead of on whichever server's median it happens to land.
//! Output is a Markdown table, ready for docs/benchmarks.md.
//!
//! Ports: the kernel picks them where it can (`API_PORT=0`, read back from the
//! start-up line). Where a port must be named before the server starts (fixed
//! bind, systemd-socket-activate, the search range) the driver probes and
//! holds ports in `12000..20000`, below Linux's ephemeral range and apart
//! from the tests' `20000..32000`, and releases one just before the spawn.
//! Every wait is bounded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// The longest any single wait may take (a server start, a line, a response).
const DEADLINE: Duration = Duration::from_secs(10);
/// Where the driver probes and holds ports it must name in advance.
const OWNED_PORTS: std::ops::Range<u16> = 12_000..20_000;
/// The busy-port counts of the search measurement.
const BUSY_COUNTS: [usize; 4] = [0, 10, 100, 1_000];
/// How many times a run is retried when another process took its port in the
/// moment between our release and the server's bind.
const PORT_RETRIES: usize = 3;
const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// The parts of the benchmark, in the order they run.
const SECTIONS: [&str; 7] = [
    "startup",
    "search",
    "load",
    "instructions",
    "rss",
    "tls",
    "tls-instructions",
];
/// Seconds of load per server and request under callgrind (it runs the
/// server ~50x slower).
const CALLGRIND_LOAD_SECONDS: u64 = 5;
/// How long a server may take to start under callgrind, which first reads
/// the executable's debug information (slow when other work holds the disk).
const CALLGRIND_START_DEADLINE: Duration = Duration::from_secs(60);
/// Connections of the load under callgrind.
const CALLGRIND_CONNECTIONS: u32 = 10;
/// Concurrent streams per HTTP/2 connection (`h2load -m`).
const H2_STREAMS: u32 = 10;
/// Seconds of load per server in the warm-up before the recorded rounds.
const WARM_UP_SECONDS: u64 = 3;
/// New connections per `h2load` run of the handshake row, all opened at once:
/// below the baseline's listen backlog (128, std's), so that no SYN is
/// dropped and retried a second later.
const HANDSHAKE_BATCH: u32 = 100;
/// Idle TLS connections held open for the TLS RSS row.
const IDLE_TLS_CONNECTIONS: u32 = 1_000;
/// What the TLS section runs each round, in this order.
const TLS_MEASURES: [TlsMeasure; 3] = [
    TlsMeasure::Load(Workload {
        protocol: Protocol::Http1,
        request: Request::Health,
        tls: true,
    }),
    TlsMeasure::Load(Workload {
        protocol: Protocol::Http2,
        request: Request::Health,
        tls: true,
    }),
    TlsMeasure::Handshakes,
];
/// What the load section runs each round, in this order.
const WORKLOADS: [Workload; 4] = [
    Workload {
        protocol: Protocol::Http1,
        request: Request::Health,
        tls: false,
    },
    Workload {
        protocol: Protocol::Http1,
        request: Request::Echo,
        tls: false,
    },
    Workload {
        protocol: Protocol::Http2,
        request: Request::Health,
        tls: false,
    },
    Workload {
        protocol: Protocol::Http2,
        request: Request::Echo,
        tls: false,
    },
];

struct Options {
    /// `examples/bench_app.rs`: the benchmark router served by portkeeper.
    portkeeper: PathBuf,
    /// `examples/baseline.rs`: the same router served by `axum::serve`.
    baseline: PathBuf,
    /// The `portkeeper` binary, for rows on its built-in `/health`.
    builtin: Option<PathBuf>,
    /// `examples/baseline_tls.rs`: the same router behind tokio-rustls.
    baseline_tls: Option<PathBuf>,
    /// The PEM certificate chain and key both TLS servers serve.
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    runs: usize,
    search_runs: usize,
    load_rounds: usize,
    load_seconds: u64,
    connections: u32,
    /// The sections to run: startup, search, load, rss (all by default).
    only: Vec<String>,
}

impl Options {
    fn runs_section(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == name)
    }
}

fn main() -> std::process::ExitCode {
    match parse_options().and_then(|options| run(&options)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench_driver: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn parse_options() -> Result<Options> {
    let mut options = Options {
        portkeeper: PathBuf::new(),
        baseline: PathBuf::new(),
        builtin: None,
        baseline_tls: None,
        tls_cert: None,
        tls_key: None,
        runs: 40,
        search_runs: 15,
        load_rounds: 5,
        load_seconds: 3,
        connections: 50,
        only: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| anyhow!("{flag} needs a value (see the usage in bench/run.sh)"))?;
        let number = || -> Result<u64> {
            value
                .parse()
                .with_context(|| format!("{flag}: {value:?} is not a whole number"))
        };
        match flag.as_str() {
            "--portkeeper" => options.portkeeper = value.clone().into(),
            "--baseline" => options.baseline = value.clone().into(),
            "--builtin" => options.builtin = Some(value.clone().into()),
            "--baseline-tls" => options.baseline_tls = Some(value.clone().into()),
            "--tls-cert" => options.tls_cert = Some(value.clone().into()),
            "--tls-key" => options.tls_key = Some(value.clone().into()),
            "--runs" => options.runs = number()?.max(1) as usize,
            "--search-runs" => options.search_runs = number()?.max(1) as usize,
            "--load-rounds" => options.load_rounds = number()?.max(1) as usize,
            "--load-seconds" => options.load_seconds = number()?.max(1),
            "--connections" => options.connections = number()?.clamp(1, 10_000) as u32,
            "--only" => {
                options.only = value.split(',').map(str::to_owned).collect();
                if let Some(bad) = options
                    .only
                    .iter()
                    .find(|s| !SECTIONS.contains(&s.as_str()))
                {
                    bail!(
                        "--only: {bad:?} is not a section (expected some of {}, comma-separated)",
                        SECTIONS.join(",")
                    );
                }
            }
            _ => bail!(
                "unknown option {flag} (expected --portkeeper, --baseline, --builtin, --baseline-tls, --tls-cert, --tls-key, --runs, --search-runs, --load-rounds, --load-seconds, --connections or --only)"
            ),
        }
    }
    // Absolute, because the servers run in the temporary directory (no stray `.env`).
    for (name, path) in [
        ("--portkeeper", Some(&mut options.portkeeper)),
        ("--baseline", Some(&mut options.baseline)),
        ("--builtin", options.builtin.as_mut()),
        ("--baseline-tls", options.baseline_tls.as_mut()),
        ("--tls-cert", options.tls_cert.as_mut()),
        ("--tls-key", options.tls_key.as_mut()),
    ] {
        let Some(path) = path else { continue };
        *path = path.canonicalize().with_context(|| {
            format!("{name}: {path:?} is not a file (build with cargo build --release first)")
        })?;
    }
    let tls_given = [&options.baseline_tls, &options.tls_cert, &options.tls_key]
        .iter()
        .filter(|path| path.is_some())
        .count();
    if tls_given != 0 && tls_given != 3 {
        bail!("--baseline-tls, --tls-cert and --tls-key go together (expected all three or none)");
    }
    if let Some(tls) = options.only.iter().find(|s| s.starts_with("tls"))
        && tls_given == 0
    {
        bail!("--only {tls}: the TLS rows need --baseline-tls, --tls-cert and --tls-key");
    }
    Ok(options)
}

fn run(options: &Options) -> Result<()> {
    let servers = [
        Server {
            name: "portkeeper",
            path: &options.portkeeper,
            env: Vec::new(),
        },
        Server {
            name: "baseline",
            path: &options.baseline,
            env: Vec::new(),
        },
    ];
    let builtin = options.builtin.as_deref().map(|path| Server {
        name: "portkeeper binary",
        path,
        env: Vec::new(),
    });
    let mut table = Table {
        load_before: load_average(),
        ..Table::default()
    };
    if options.runs_section("startup") {
        startup_section(options, &servers, &mut table)?;
    }
    if options.runs_section("search") {
        search_section(options, &mut table)?;
    }
    if options.runs_section("load") {
        load_section(options, &servers, builtin.as_ref(), &mut table)?;
    }
    if options.runs_section("instructions") {
        instructions_section(&servers, &mut table)?;
    }
    if options.runs_section("rss") {
        rss_section(options, &servers, &mut table)?;
    }
    if let (true, Some(baseline_tls), Some(cert), Some(key)) = (
        options.runs_section("tls") || options.runs_section("tls-instructions"),
        &options.baseline_tls,
        &options.tls_cert,
        &options.tls_key,
    ) {
        // The same files and settings for both; the baseline reads only the two paths.
        let env = vec![
            ("TLS", "true".into()),
            ("TLS_CERT_FILE", cert.into()),
            ("TLS_KEY_FILE", key.into()),
        ];
        let tls_servers = [
            Server {
                name: "portkeeper TLS",
                path: &options.portkeeper,
                env: env.clone(),
            },
            Server {
                name: "baseline TLS",
                path: baseline_tls,
                env,
            },
        ];
        if options.runs_section("tls") {
            tls_section(options, &tls_servers, cert, &mut table)?;
        }
        if options.runs_section("tls-instructions") {
            tls_instructions_section(&tls_servers, &mut table)?;
        }
    }
    table.load_after = load_average();
    print!("{}", table.render(options));
    Ok(())
}

fn startup_section(options: &Options, servers: &[Server<'_>; 2], table: &mut Table) -> Result<()> {
    // CPU rows go after the wall-clock rows, which carry the targets.
    let mut cpu_rows = Vec::new();
    for scenario in [Startup::Fixed, Startup::Inherited, Startup::SocketActivate] {
        eprintln!(
            "start-up: {} ({} runs each)",
            scenario.label(),
            options.runs
        );
        let mut wall = [Vec::new(), Vec::new()];
        let mut cpu = [Vec::new(), Vec::new()];
        // One warm-up each (page cache), then the two servers alternate,
        // and so does which of them goes first: a start-up can otherwise pay
        // for what the other server's exit left to the kernel.
        for run in 0..=options.runs {
            for i in turn_order(run, 2) {
                let server = &servers[i];
                let sample = with_port_retries(|| scenario.measure(server))
                    .with_context(|| format!("{} start-up of {}", scenario.label(), server.name))?;
                if run > 0 {
                    wall[i].push(sample.elapsed.as_secs_f64() * 1e3);
                    cpu[i].push(sample.cpu.as_secs_f64() * 1e3);
                }
            }
        }
        table.compare(
            &format!("exec → first 200, {}", scenario.label()),
            "ms",
            &wall[0],
            &wall[1],
            Target::RatioAtMost(1.2),
        );
        cpu_rows.push((scenario.label(), cpu));
    }
    for (label, cpu) in cpu_rows {
        table.compare(
            &format!("server CPU to first 200, {label}"),
            "ms",
            &cpu[0],
            &cpu[1],
            Target::None,
        );
    }
    Ok(())
}

fn search_section(options: &Options, table: &mut Table) -> Result<()> {
    eprintln!("port search ({} runs per busy count)", options.search_runs);
    let mut per_count = Vec::new();
    for busy in BUSY_COUNTS {
        let mut samples = Vec::new();
        for _ in 0..=options.search_runs {
            let micros = with_port_retries(|| search_time(&options.portkeeper, busy))
                .with_context(|| format!("port search past {busy} busy ports"))?;
            samples.push(micros);
        }
        samples.remove(0); // warm-up
        per_count.push((busy, Stats::of(&samples)));
    }
    let idle = per_count[0].1.median;
    for (busy, stats) in &per_count {
        let per_port = if *busy == 0 {
            None
        } else {
            Some((stats.median - idle) / *busy as f64)
        };
        table.search_row(*busy, stats, per_port);
    }
    Ok(())
}

fn load_section(
    options: &Options,
    servers: &[Server<'_>; 2],
    builtin: Option<&Server<'_>>,
    table: &mut Table,
) -> Result<()> {
    // Indices: 0 portkeeper, 1 the baseline, 2 the binary when given.
    let mut all: Vec<&Server<'_>> = servers.iter().collect();
    all.extend(builtin);
    eprintln!(
        "load: a {WARM_UP_SECONDS} s warm-up each, then {} rounds × {} workloads × {} s per server, {} connections",
        options.load_rounds,
        WORKLOADS.len(),
        options.load_seconds,
        options.connections
    );
    // Not recorded: this machine's first seconds of load after a quiet spell
    // ran 15-20% faster than the rest, for whichever server had them.
    for server in &all {
        load(server, WORKLOADS[0], WARM_UP_SECONDS, options.connections)
            .with_context(|| format!("warm-up load on {}", server.name))?;
    }
    // results[workload][server], one result per round.
    let mut results: Vec<Vec<Vec<LoadResult>>> = WORKLOADS
        .iter()
        .map(|_| all.iter().map(|_| Vec::new()).collect())
        .collect();
    for round in 0..options.load_rounds {
        for (w, workload) in WORKLOADS.iter().enumerate() {
            // The binary serves only the built-in routes.
            let serving = match workload.request {
                Request::Health => all.len(),
                Request::Echo => 2,
            };
            for i in turn_order(round, serving) {
                let server = all[i];
                let result = load(server, *workload, options.load_seconds, options.connections)
                    .with_context(|| format!("{} on {}", workload.label(), server.name))?;
                eprintln!(
                    "  {}, {}: {:.0} req/s, {:.1} µs CPU per request",
                    workload.label(),
                    server.name,
                    result.requests_per_second,
                    result.cpu_us_per_request
                );
                results[w][i].push(result);
            }
        }
    }
    let column = |w: usize, i: usize, figure: fn(&LoadResult) -> Option<f64>| -> Vec<f64> {
        results[w][i].iter().filter_map(figure).collect()
    };
    let throughput = |r: &LoadResult| Some(r.requests_per_second);
    for (w, workload) in WORKLOADS.iter().enumerate() {
        let load = workload.load_label(options.connections);
        table.compare(
            &format!("{} throughput, {load}", workload.label()),
            "req/s",
            &column(w, 0, throughput),
            &column(w, 1, throughput),
            Target::RatioAtLeast(0.95),
        );
        if results[w].get(2).is_some_and(|binary| !binary.is_empty()) {
            table.compare(
                &format!(
                    "{} throughput, {load}: the portkeeper binary's built-in route",
                    workload.label()
                ),
                "req/s",
                &column(w, 2, throughput),
                &column(w, 1, throughput),
                Target::None,
            );
        }
    }
    for (w, workload) in WORKLOADS.iter().enumerate() {
        if workload.protocol == Protocol::Http1 {
            let p99 = |r: &LoadResult| r.p99_ms;
            table.compare(
                &format!(
                    "{} p99 latency, {}",
                    workload.label(),
                    workload.load_label(options.connections)
                ),
                "ms",
                &column(w, 0, p99),
                &column(w, 1, p99),
                Target::None,
            );
        }
    }
    for (w, workload) in WORKLOADS.iter().enumerate() {
        let cpu = |r: &LoadResult| Some(r.cpu_us_per_request);
        table.compare(
            &format!("server CPU per request, {}", workload.label()),
            "µs",
            &column(w, 0, cpu),
            &column(w, 1, cpu),
            Target::None,
        );
    }
    Ok(())
}

fn instructions_section(servers: &[Server<'_>; 2], table: &mut Table) -> Result<()> {
    eprintln!(
        "instructions per request under callgrind ({CALLGRIND_LOAD_SECONDS} s of load per workload, {CALLGRIND_CONNECTIONS} connections)"
    );
    let mut per_request: Vec<[Vec<f64>; 2]> =
        WORKLOADS.iter().map(|_| [Vec::new(), Vec::new()]).collect();
    for (i, server) in servers.iter().enumerate() {
        let counts = instructions_per_request(server)
            .with_context(|| format!("callgrind on {}", server.name))?;
        for (w, count) in counts.into_iter().enumerate() {
            eprintln!(
                "  {}, {}: {count:.0} instructions per request",
                WORKLOADS[w].label(),
                server.name
            );
            per_request[w][i].push(count);
        }
    }
    for (workload, [ours, base]) in WORKLOADS.iter().zip(&per_request) {
        table.compare(
            &format!(
                "user-space instructions per {} (callgrind)",
                workload.label()
            ),
            "instr.",
            ours,
            base,
            Target::None,
        );
    }
    Ok(())
}

fn rss_section(options: &Options, servers: &[Server<'_>; 2], table: &mut Table) -> Result<()> {
    let runs = options.search_runs.min(7);
    eprintln!("idle RSS ({runs} runs each)");
    let mut rss = [Vec::new(), Vec::new()];
    for _ in 0..runs {
        for (i, server) in servers.iter().enumerate() {
            rss[i].push(idle_rss_mib(server).with_context(|| format!("RSS of {}", server.name))?);
        }
    }
    table.compare(
        "idle RSS after start and one request",
        "MiB",
        &rss[0],
        &rss[1],
        Target::AtMost(8.0),
    );
    Ok(())
}

/// One measurement of the TLS section.
#[derive(Clone, Copy)]
enum TlsMeasure {
    /// Keep-alive load over TLS: wrk or h2load with an https URL.
    Load(Workload),
    /// Full handshakes per second.
    Handshakes,
}

impl TlsMeasure {
    fn label(self) -> String {
        match self {
            TlsMeasure::Load(workload) => workload.label(),
            TlsMeasure::Handshakes => "full TLS handshakes".to_owned(),
        }
    }
}

/// `h2load` runs of [`HANDSHAKE_BATCH`] handshakes under callgrind.
const CALLGRIND_HANDSHAKE_BATCHES: u32 = 2;
/// Rounds of the TLS RSS row per server (each opens [`IDLE_TLS_CONNECTIONS`]).
const TLS_RSS_RUNS: usize = 3;
/// How long the client may take to open [`IDLE_TLS_CONNECTIONS`]: under
/// portkeeper's idle timeout (`HEADER_READ_TIMEOUT`, 10 s), which would
/// otherwise close the first ones before the last is open.
const TLS_OPEN_DEADLINE: Duration = Duration::from_secs(9);

fn tls_section(
    options: &Options,
    servers: &[Server<'_>; 2],
    ca: &Path,
    table: &mut Table,
) -> Result<()> {
    eprintln!(
        "TLS: a {WARM_UP_SECONDS} s warm-up each, then {} rounds × {} measures × {} s per server, {} connections; handshakes in batches of {HANDSHAKE_BATCH}",
        options.load_rounds,
        TLS_MEASURES.len(),
        options.load_seconds,
        options.connections
    );
    let TlsMeasure::Load(warm_up) = TLS_MEASURES[0] else {
        bail!("the first TLS measure must be a load");
    };
    for server in servers {
        load(server, warm_up, WARM_UP_SECONDS, options.connections)
            .with_context(|| format!("warm-up load on {}", server.name))?;
    }
    // results[measure][server], one result per round.
    let mut results: Vec<[Vec<LoadResult>; 2]> = TLS_MEASURES
        .iter()
        .map(|_| [Vec::new(), Vec::new()])
        .collect();
    let mut negotiated: [Option<String>; 2] = [None, None];
    for round in 0..options.load_rounds {
        for (m, measure) in TLS_MEASURES.iter().enumerate() {
            for i in turn_order(round, 2) {
                let server = &servers[i];
                let result = match *measure {
                    TlsMeasure::Load(workload) => {
                        load(server, workload, options.load_seconds, options.connections)
                    }
                    TlsMeasure::Handshakes => handshakes(server, options.load_seconds),
                }
                .with_context(|| format!("{} on {}", measure.label(), server.name))?;
                let unit = match measure {
                    TlsMeasure::Load(_) => "request",
                    TlsMeasure::Handshakes => "handshake",
                };
                eprintln!(
                    "  {}, {}: {:.0} per s, {:.1} µs CPU per {unit}",
                    measure.label(),
                    server.name,
                    result.requests_per_second,
                    result.cpu_us_per_request
                );
                if let Some(tls) = &result.tls {
                    negotiated[i] = Some(tls.clone());
                }
                results[m][i].push(result);
            }
        }
    }
    let column = |m: usize, i: usize, figure: fn(&LoadResult) -> Option<f64>| -> Vec<f64> {
        results[m][i].iter().filter_map(figure).collect()
    };
    let throughput = |r: &LoadResult| Some(r.requests_per_second);
    let cpu = |r: &LoadResult| Some(r.cpu_us_per_request);
    for (m, measure) in TLS_MEASURES.iter().enumerate() {
        let (what, unit) = match measure {
            TlsMeasure::Load(workload) => (
                format!(
                    "{} throughput, {}",
                    workload.label(),
                    workload.load_label(options.connections)
                ),
                "req/s",
            ),
            TlsMeasure::Handshakes => (
                format!(
                    "full TLS handshakes (new connection, one HTTP/1.1 request), batches of {HANDSHAKE_BATCH}"
                ),
                "/s",
            ),
        };
        table.compare(
            &what,
            unit,
            &column(m, 0, throughput),
            &column(m, 1, throughput),
            Target::RatioAtLeast(0.95),
        );
    }
    for (m, measure) in TLS_MEASURES.iter().enumerate() {
        if let TlsMeasure::Load(workload) = measure
            && workload.protocol == Protocol::Http1
        {
            let p99 = |r: &LoadResult| r.p99_ms;
            table.compare(
                &format!(
                    "{} p99 latency, {}",
                    workload.label(),
                    workload.load_label(options.connections)
                ),
                "ms",
                &column(m, 0, p99),
                &column(m, 1, p99),
                Target::None,
            );
        }
    }
    for (m, measure) in TLS_MEASURES.iter().enumerate() {
        let what = match measure {
            TlsMeasure::Load(workload) => format!("server CPU per request, {}", workload.label()),
            TlsMeasure::Handshakes => {
                "server CPU per full TLS handshake and its request".to_owned()
            }
        };
        table.compare(
            &what,
            "µs",
            &column(m, 0, cpu),
            &column(m, 1, cpu),
            Target::None,
        );
    }
    eprintln!("idle TLS RSS ({TLS_RSS_RUNS} runs each, {IDLE_TLS_CONNECTIONS} connections)");
    let mut rss = [Vec::new(), Vec::new()];
    let mut per_connection = [Vec::new(), Vec::new()];
    for run in 0..TLS_RSS_RUNS {
        for i in turn_order(run, 2) {
            let server = &servers[i];
            let (before, with) = idle_tls_rss_mib(server, ca)
                .with_context(|| format!("idle TLS RSS of {}", server.name))?;
            eprintln!(
                "  {}: {before:.2} MiB idle, {with:.2} MiB with the connections",
                server.name
            );
            rss[i].push(with);
            per_connection[i].push((with - before) * 1024.0 / f64::from(IDLE_TLS_CONNECTIONS));
        }
    }
    table.compare(
        &format!(
            "RSS with {IDLE_TLS_CONNECTIONS} idle TLS keep-alive connections (one request each)"
        ),
        "MiB",
        &rss[0],
        &rss[1],
        Target::None,
    );
    table.compare(
        "RSS per idle TLS connection",
        "KiB",
        &per_connection[0],
        &per_connection[1],
        Target::None,
    );
    let [ours, base] = negotiated;
    table.notes.push(format!(
        "TLS as h2load saw it: portkeeper {}; baseline {}.",
        ours.as_deref().unwrap_or("unknown"),
        base.as_deref().unwrap_or("unknown")
    ));
    Ok(())
}

fn tls_instructions_section(servers: &[Server<'_>; 2], table: &mut Table) -> Result<()> {
    eprintln!(
        "TLS instructions under callgrind ({CALLGRIND_LOAD_SECONDS} s of load, {CALLGRIND_CONNECTIONS} connections; {CALLGRIND_HANDSHAKE_BATCHES} × {HANDSHAKE_BATCH} handshakes)"
    );
    let mut instructions: Vec<[Vec<f64>; 2]> = TLS_MEASURES
        .iter()
        .map(|_| [Vec::new(), Vec::new()])
        .collect();
    for (i, server) in servers.iter().enumerate() {
        let counts =
            tls_instructions(server).with_context(|| format!("callgrind on {}", server.name))?;
        for (m, count) in counts.into_iter().enumerate() {
            eprintln!(
                "  {}, {}: {count:.0} instructions",
                TLS_MEASURES[m].label(),
                server.name
            );
            instructions[m][i].push(count);
        }
    }
    for (measure, [ours, base]) in TLS_MEASURES.iter().zip(&instructions) {
        let what = match measure {
            TlsMeasure::Load(workload) => {
                format!(
                    "user-space instructions per {} (callgrind)",
                    workload.label()
                )
            }
            TlsMeasure::Handshakes => {
                "user-space instructions per full TLS handshake and its request (callgrind)"
                    .to_owned()
            }
        };
        table.compare(&what, "instr.", ours, base, Target::None);
    }
    Ok(())
}

/// Full handshakes per second against a freshly started server: `h2load`
/// runs of [`HANDSHAKE_BATCH`] new clients (ALPN `http/1.1`) with one
/// request each, until they have been busy for `seconds`. The rate is the
/// handshakes over the time h2load reports (its own start and exit left out).
fn handshakes(server: &Server<'_>, seconds: u64) -> Result<LoadResult> {
    let (process, address) = server.start_on_any_port()?;
    let cpu_before = cpu_seconds(process.pid())?;
    let (mut count, mut busy) = (0_u64, 0.0_f64);
    let mut tls = None;
    while busy < seconds as f64 {
        let report = handshake_batch(address)?;
        count += report.requests;
        busy += report.requests as f64 / report.requests_per_second;
        tls = report.tls;
    }
    let cpu = cpu_seconds(process.pid())? - cpu_before;
    Ok(LoadResult {
        requests_per_second: count as f64 / busy,
        p99_ms: None,
        cpu_us_per_request: cpu * 1e6 / count as f64,
        tls,
    })
}

/// One `h2load` run of [`HANDSHAKE_BATCH`] new clients, each with one
/// `GET /health` over HTTP/1.1 (ALPN `http/1.1`): as many full handshakes.
fn handshake_batch(address: SocketAddr) -> Result<ClientReport> {
    let mut cmd = Command::new("h2load");
    cmd.args(["--h1", "--threads=2"])
        .arg(format!("--clients={HANDSHAKE_BATCH}"))
        .arg(format!("--requests={HANDSHAKE_BATCH}"))
        .arg(format!("https://{address}/health"));
    h2load_report(cmd, Some("http/1.1"))
}

/// VmRSS of a freshly started server before any connection, and with
/// [`IDLE_TLS_CONNECTIONS`] idle TLS keep-alive connections open (each after
/// its handshake and one `GET /health`), held by `bench/tls_idle.py`; an
/// error when the server had closed any of them by the time RSS was read.
fn idle_tls_rss_mib(server: &Server<'_>, ca: &Path) -> Result<(f64, f64)> {
    let (mut process, address) = server.start_on_any_port()?;
    let before = vm_rss_mib(process.pid())?;
    let mut cmd = Command::new("python3");
    cmd.arg(bench_file("tls_idle.py"))
        .arg(address.ip().to_string())
        .arg(address.port().to_string())
        .arg(IDLE_TLS_CONNECTIONS.to_string())
        .arg(ca)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().context("run python3 bench/tls_idle.py")?;
    let mut commands = child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("tls_idle.py's stdin is not piped"))?;
    let lines = child.stdout.take().map(line_channel);
    let mut client = Process { child, lines };
    let all = format!("open {IDLE_TLS_CONNECTIONS}");
    let opened = client.wait_for_line_within("open ", TLS_OPEN_DEADLINE)?;
    if opened != all {
        bail!("tls_idle.py: expected {all:?}, got {opened:?}");
    }
    // Let the last connections' tasks settle before reading.
    std::thread::sleep(Duration::from_millis(300));
    process.check_alive()?;
    let with = vm_rss_mib(process.pid())?;
    commands.write_all(b"check\n")?;
    let held = client.wait_for_line("open ")?;
    if held != all {
        bail!("the server closed some of the idle connections: tls_idle.py says {held:?}");
    }
    drop(commands);
    let end = Instant::now() + DEADLINE;
    while client.child.try_wait()?.is_none() {
        if Instant::now() > end {
            bail!("tls_idle.py still running {DEADLINE:?} after its input closed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((before, with))
}

/// A binary under test.
struct Server<'a> {
    name: &'static str,
    path: &'a Path,
    /// Settings beyond `HOST` and `API_PORT` (the TLS ones).
    env: Vec<(&'static str, std::ffi::OsString)>,
}

impl Server<'_> {
    /// A [`clean_command`] for the server, serving on loopback.
    fn command(&self) -> Command {
        let mut cmd = clean_command(self.path);
        cmd.env("HOST", "127.0.0.1");
        cmd.envs(self.env.iter().map(|(name, value)| (name, value)));
        cmd
    }

    /// Starts the server on a kernel-chosen port; returns it with its address.
    fn start_on_any_port(&self) -> Result<(Process, SocketAddr)> {
        let mut cmd = self.command();
        cmd.env("API_PORT", "0").stderr(Stdio::piped());
        let mut process = Process::spawn(cmd)?;
        let address = process.serving_address()?;
        Ok((process, address))
    }
}

/// `program` with a cleared environment (PATH kept), run in the temporary
/// directory (no stray `.env`), with no stdin and its output discarded.
fn clean_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// A child process, killed and reaped on drop, with its stderr lines on a channel.
struct Process {
    child: Child,
    lines: Option<mpsc::Receiver<String>>,
}

impl Process {
    fn spawn(mut cmd: Command) -> Result<Self> {
        let mut child = cmd.spawn().with_context(|| format!("spawn {cmd:?}"))?;
        let lines = child.stderr.take().map(line_channel);
        Ok(Process { child, lines })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (bounded) for a stderr line containing `needle`.
    fn wait_for_line(&mut self, needle: &str) -> Result<String> {
        self.wait_for_line_within(needle, DEADLINE)
    }

    /// Waits at most `deadline` for a line containing `needle`.
    fn wait_for_line_within(&mut self, needle: &str, deadline: Duration) -> Result<String> {
        let lines = self
            .lines
            .as_ref()
            .ok_or_else(|| anyhow!("stderr is not piped"))?;
        let end = Instant::now() + deadline;
        let mut seen = String::new();
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Ok(line),
                Ok(line) => {
                    seen.push_str(&line);
                    seen.push('\n');
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!("no line with {needle:?} within {deadline:?}; output:\n{seen}")
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait()?;
                    bail!("exited with {status} before printing {needle:?}; output:\n{seen}")
                }
            }
        }
    }

    /// The address from the server's "serving ... address=IP:PORT" line
    /// (portkeeper's and the baseline's alike), waiting for it (bounded).
    fn serving_address(&mut self) -> Result<SocketAddr> {
        self.serving_address_within(DEADLINE)
    }

    /// [`Process::serving_address`], waiting at most `deadline`.
    fn serving_address_within(&mut self, deadline: Duration) -> Result<SocketAddr> {
        let line = self.wait_for_line_within(" serving ", deadline)?;
        field(&line, "address")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| anyhow!("no address= in {line:?}"))
    }

    /// Errs (naming the port problem) when the child has already exited.
    fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => Err(anyhow!(PortTaken(format!("server exited with {status}")))),
        }
    }
}

/// The lines of `output` on a channel, read by a thread of their own to the
/// end, so that the child never blocks on a full pipe.
fn line_channel(output: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    rx
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A run lost its port to another process between release and bind; retry it.
#[derive(Debug)]
struct PortTaken(String);

impl std::fmt::Display for PortTaken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (its port may have been taken meanwhile)", self.0)
    }
}

impl std::error::Error for PortTaken {}

fn with_port_retries<T>(mut measure: impl FnMut() -> Result<T>) -> Result<T> {
    let mut attempt = 0;
    loop {
        match measure() {
            Err(err) if err.downcast_ref::<PortTaken>().is_some() && attempt < PORT_RETRIES => {
                eprintln!("  retrying: {err:#}");
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Holds `len` consecutive loopback ports of [`OWNED_PORTS`] that were free.
/// Drop a listener to free its port for the server.
fn hold_port_run(len: usize) -> Result<Vec<TcpListener>> {
    let span = OWNED_PORTS.end - OWNED_PORTS.start;
    let len16 = u16::try_from(len).ok().filter(|&l| l > 0 && l < span);
    let len16 = len16.ok_or_else(|| anyhow!("cannot hold a run of {len} ports"))?;
    // Start somewhere different each time so a foreign holder is soon left behind.
    let mut base = OWNED_PORTS.start + (std::process::id() as u16 % (span - len16));
    for _ in 0..200 {
        let mut held = Vec::with_capacity(len);
        for port in base..base + len16 {
            match TcpListener::bind((LOOPBACK, port)) {
                Ok(listener) => held.push(listener),
                Err(_) => break,
            }
        }
        if held.len() == len {
            return Ok(held);
        }
        base = OWNED_PORTS.start + (base - OWNED_PORTS.start + len16 + 1) % (span - len16);
    }
    bail!(
        "no run of {len} free loopback ports in {}..{} (raise `ulimit -n` for long runs)",
        OWNED_PORTS.start,
        OWNED_PORTS.end
    )
}

fn port_of(listener: &TcpListener) -> Result<u16> {
    Ok(listener.local_addr()?.port())
}

/// The start-up scenarios.
#[derive(Clone, Copy)]
enum Startup {
    /// `HOST:API_PORT` with a port the driver names; the client retries connect.
    Fixed,
    /// fd 3 with `LISTEN_FDS=1`; the connection waits in the backlog.
    Inherited,
    /// `systemd-socket-activate` execs the server on the first connection.
    SocketActivate,
}

impl Startup {
    fn label(self) -> &'static str {
        match self {
            Startup::Fixed => "fixed port",
            Startup::Inherited => "inherited fd 3",
            Startup::SocketActivate => "systemd-socket-activate",
        }
    }

    fn measure(self, server: &Server<'_>) -> Result<StartupSample> {
        match self {
            Startup::Fixed => startup_fixed(server),
            Startup::Inherited => startup_inherited(server),
            Startup::SocketActivate => startup_socket_activate(server),
        }
    }
}

/// One start-up: wall time to the first 200, and the CPU the server used by then.
struct StartupSample {
    elapsed: Duration,
    cpu: Duration,
}

impl StartupSample {
    fn taken(start: Instant, process: &Process) -> Result<Self> {
        let elapsed = start.elapsed();
        Ok(StartupSample {
            elapsed,
            cpu: cpu_time_all_threads(process.pid())?,
        })
    }
}

/// CPU time a process has run so far, all threads, user and kernel, in
/// nanoseconds from /proc/PID/task/*/schedstat (finer than stat's ticks).
fn cpu_time_all_threads(pid: u32) -> Result<Duration> {
    let mut nanos: u64 = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = task?.path().join("schedstat");
        // A thread may end between the listing and the read; it then counts as 0.
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        nanos += text
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| anyhow!("unexpected {}: {text:?}", path.display()))?;
    }
    Ok(Duration::from_nanos(nanos))
}

/// Spawn → first 200 on a port named in advance. Connection attempts repeat
/// every 20 µs (plus the kernel's timer slack) until the server listens.
fn startup_fixed(server: &Server<'_>) -> Result<StartupSample> {
    let held = hold_port_run(1)?;
    let address = SocketAddr::from((LOOPBACK, port_of(&held[0])?));
    let mut cmd = server.command();
    cmd.env("API_PORT", address.port().to_string());
    drop(held);
    let start = Instant::now();
    let mut process = Process::spawn(cmd)?;
    // After the spawn, so that the server keeps the default slack.
    let _precise = PreciseSleep::begin();
    let stream = loop {
        match TcpStream::connect(address) {
            Ok(stream) => break stream,
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
                process.check_alive()?;
                if start.elapsed() > DEADLINE {
                    bail!("{address} refused connections for {DEADLINE:?}");
                }
                std::thread::sleep(Duration::from_micros(20));
            }
            Err(err) => return Err(err).context(format!("connect {address}")),
        }
    };
    expect_200(stream)?;
    StartupSample::taken(start, &process)
}

/// Timer slack cut to 1 µs for this process while it lives: the kernel
/// otherwise lets a 20 µs sleep run to about 80 µs (50 µs default slack),
/// and the fixed-port row would see the server's listen() only to that grain.
struct PreciseSleep {
    previous: Option<String>,
}

impl PreciseSleep {
    const SLACK: &'static str = "/proc/self/timerslack_ns";

    /// Best effort: where the file is missing (not Linux, old kernel) the
    /// polling is coarser, which costs precision and not correctness.
    fn begin() -> PreciseSleep {
        let previous = std::fs::read_to_string(Self::SLACK)
            .ok()
            .filter(|_| std::fs::write(Self::SLACK, "1000").is_ok());
        PreciseSleep { previous }
    }
}

impl Drop for PreciseSleep {
    fn drop(&mut self) {
        if let Some(previous) = &self.previous {
            let _ = std::fs::write(Self::SLACK, previous.trim());
        }
    }
}

/// Spawn → first 200 on a socket the driver bound and handed over as fd 3.
fn startup_inherited(server: &Server<'_>) -> Result<StartupSample> {
    use command_fds::{CommandFdExt, FdMapping};
    let listener = TcpListener::bind((LOOPBACK, 0))?;
    let address = listener.local_addr()?;
    let mut cmd = server.command();
    cmd.env("LISTEN_FDS", "1");
    cmd.fd_mappings(vec![FdMapping {
        parent_fd: listener.into(),
        child_fd: 3,
    }])
    .map_err(|err| anyhow!("cannot map fd 3: {err}"))?;
    let start = Instant::now();
    let process = Process::spawn(cmd)?;
    // The socket is listening already: this connection waits in its backlog
    // until the server accepts it.
    let stream = TcpStream::connect(address)?;
    expect_200(stream)?;
    StartupSample::taken(start, &process)
}

/// First connection → first 200 through `systemd-socket-activate`, which execs
/// the server (in place: LISTEN_PID is its own pid) when that connection arrives.
fn startup_socket_activate(server: &Server<'_>) -> Result<StartupSample> {
    let held = hold_port_run(1)?;
    let address = SocketAddr::from((LOOPBACK, port_of(&held[0])?));
    let mut cmd = clean_command("systemd-socket-activate");
    // It passes only TERM, PATH, USER, HOME and -E variables to the child.
    cmd.arg(format!("--listen={address}"))
        .args(["-E", "HOST=127.0.0.1", "-E", "API_PORT=0", "--"])
        .arg(server.path)
        .stderr(Stdio::piped());
    drop(held);
    let mut process = Process::spawn(cmd)?;
    process
        .wait_for_line("Listening on")
        .map_err(|err| anyhow!(PortTaken(format!("{err:#}"))))?;
    let start = Instant::now();
    let stream = TcpStream::connect(address)?;
    expect_200(stream)?;
    StartupSample::taken(start, &process)
}

/// Sends `GET /health` and reads until the status line, which must say 200.
fn expect_200(mut stream: TcpStream) -> Result<()> {
    stream.set_read_timeout(Some(DEADLINE))?;
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
    let mut response = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !response.windows(2).any(|w| w == b"\r\n") {
        let n = stream.read(&mut buf).context("read the status line")?;
        if n == 0 {
            bail!("connection closed before a status line");
        }
        response.extend_from_slice(&buf[..n]);
    }
    if !response.starts_with(b"HTTP/1.1 200 ") {
        bail!("expected 200, got {:?}", String::from_utf8_lossy(&response));
    }
    Ok(())
}

/// Microseconds portkeeper's listener chain took with `busy` ports held ahead
/// of a free one, from its `listener opened listener_us=` debug line.
fn search_time(portkeeper: &Path, busy: usize) -> Result<f64> {
    let mut held = hold_port_run(busy + 1)?;
    let first = port_of(&held[0])?;
    let last = port_of(&held[busy])?;
    let mut cmd = clean_command(portkeeper);
    cmd.env("HOST", "127.0.0.1")
        .env("API_PORT", first.to_string())
        .env("AUTO_FIND_PORT", "true")
        .env("PORT_RANGE_START", first.to_string())
        .env("PORT_RANGE_END", last.to_string())
        .env("LOG_LEVEL", "debug")
        .stderr(Stdio::piped());
    drop(held.pop()); // the free port at the end of the range
    let mut process = Process::spawn(cmd)?;
    let line = process
        .wait_for_line("listener opened")
        .map_err(|err| anyhow!(PortTaken(format!("{err:#}"))))?;
    let skipped: usize = field(&line, "busy_ports")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no busy_ports= in {line:?}"))?;
    if skipped != busy {
        bail!("expected {busy} busy ports, portkeeper reports {skipped}: {line:?}");
    }
    drop(held);
    field(&line, "listener_us")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no listener_us= in {line:?}"))
}

/// One kind of load: a protocol and a request.
#[derive(Clone, Copy)]
struct Workload {
    protocol: Protocol,
    request: Request,
    /// https (ALPN `h2` for HTTP/2) in place of http (prior knowledge for HTTP/2).
    tls: bool,
}

impl Workload {
    /// "HTTP/1.1 GET /health", "HTTP/2 over TLS GET /health".
    fn label(self) -> String {
        let protocol = match self.protocol {
            Protocol::Http1 => "HTTP/1.1",
            Protocol::Http2 => "HTTP/2",
        };
        let tls = if self.tls { " over TLS" } else { "" };
        format!("{protocol}{tls} {}", self.request.label())
    }

    fn scheme(self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }

    /// "50 connections", or for HTTP/2 "50 connections × 10 streams".
    fn load_label(self, connections: u32) -> String {
        match self.protocol {
            Protocol::Http1 => format!("{connections} connections"),
            Protocol::Http2 => format!("{connections} connections × {H2_STREAMS} streams"),
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Protocol {
    /// HTTP/1.1 with keep-alive, driven by `wrk`.
    Http1,
    /// HTTP/2 with prior knowledge (h2c), driven by `h2load`.
    Http2,
}

#[derive(Clone, Copy, PartialEq)]
enum Request {
    /// `GET /health`.
    Health,
    /// `POST /echo` with `bench/echo.json`.
    Echo,
}

impl Request {
    fn path(self) -> &'static str {
        match self {
            Request::Health => "/health",
            Request::Echo => "/echo",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Request::Health => "GET /health",
            Request::Echo => "POST /echo (1 KiB JSON)",
        }
    }
}

/// A file of `bench/` in the source tree (the echo body, the wrk script).
fn bench_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("bench")
        .join(name)
}

struct LoadResult {
    requests_per_second: f64,
    /// What h2load reported of TLS (protocol, cipher, key exchange).
    tls: Option<String>,
    /// wrk's; h2load reports no percentiles.
    p99_ms: Option<f64>,
    /// Server CPU time (all threads) per request answered: less sensitive
    /// than throughput to what else the machine is running.
    cpu_us_per_request: f64,
}

/// What a load client reports.
struct ClientReport {
    requests_per_second: f64,
    /// Requests answered with a 2xx.
    requests: u64,
    p99_ms: Option<f64>,
    /// h2load's "TLSv1.3, TLS_AES_128_GCM_SHA256, X25519 253 bits" over TLS.
    tls: Option<String>,
}

/// The order in which `count` servers take their turns in round `round`:
/// it rotates, so that none always starts on what another's exit left to
/// the kernel.
fn turn_order(round: usize, count: usize) -> Vec<usize> {
    (0..count).map(|k| (k + round) % count).collect()
}

/// `workload` for `seconds` against a freshly started server.
fn load(
    server: &Server<'_>,
    workload: Workload,
    seconds: u64,
    connections: u32,
) -> Result<LoadResult> {
    let (process, address) = server.start_on_any_port()?;
    let cpu_before = cpu_seconds(process.pid())?;
    let report = drive(address, workload, connections, seconds)?;
    let cpu = cpu_seconds(process.pid())? - cpu_before;
    Ok(LoadResult {
        requests_per_second: report.requests_per_second,
        tls: report.tls,
        p99_ms: report.p99_ms,
        cpu_us_per_request: cpu * 1e6 / (report.requests as f64).max(1.0),
    })
}

/// `workload` with `connections` for `seconds` against `address`, by wrk or h2load.
fn drive(
    address: SocketAddr,
    workload: Workload,
    connections: u32,
    seconds: u64,
) -> Result<ClientReport> {
    match workload.protocol {
        Protocol::Http1 => wrk_report(&run_wrk(address, workload, connections, seconds)?),
        Protocol::Http2 => run_h2load(address, workload, connections, seconds),
    }
}

/// `wrk` with `connections` for `seconds` sending `request` to `address`:
/// its report, or an error when wrk itself failed.
fn run_wrk(
    address: SocketAddr,
    workload: Workload,
    connections: u32,
    seconds: u64,
) -> Result<String> {
    let request = workload.request;
    let mut cmd = Command::new("wrk");
    cmd.arg(format!("--connections={connections}"))
        .arg(format!("--threads={}", connections.min(2)))
        .args(["--latency", "--timeout=5s"])
        .arg(format!("--duration={seconds}s"));
    if request == Request::Echo {
        cmd.arg("--script")
            .arg(bench_file("echo.lua"))
            .env("ECHO_BODY", bench_file("echo.json"));
    }
    let output = cmd
        .arg(format!(
            "{}://{address}{}",
            workload.scheme(),
            request.path()
        ))
        .stdin(Stdio::null())
        .output()
        .context("run wrk (bench/run.sh installs it)")?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "wrk failed ({}): {text}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(text)
}

/// Throughput, request count and p99 (when `--latency` was given) from a
/// wrk report; an error when wrk saw a non-2xx answer or a socket error.
fn wrk_report(text: &str) -> Result<ClientReport> {
    if let Some(line) = text
        .lines()
        .find(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
    {
        bail!("wrk saw errors: {}\n{text}", line.trim());
    }
    let requests_per_second = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow!("no Requests/sec in wrk's output:\n{text}"))?;
    let p99_ms = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .and_then(|v| duration_ms(v.trim()));
    Ok(ClientReport {
        requests_per_second,
        requests: wrk_requests(text)?,
        p99_ms,
        tls: None,
    })
}

/// `h2load` for `seconds` sending the workload's request to `address` over
/// HTTP/2 (with prior knowledge, or over TLS with ALPN `h2`), [`H2_STREAMS`]
/// streams per connection; an error unless every request was answered with a 2xx.
fn run_h2load(
    address: SocketAddr,
    workload: Workload,
    connections: u32,
    seconds: u64,
) -> Result<ClientReport> {
    let request = workload.request;
    let mut cmd = Command::new("h2load");
    cmd.arg(format!("--clients={connections}"))
        .arg(format!("--threads={}", connections.min(2)))
        .arg(format!("--max-concurrent-streams={H2_STREAMS}"))
        .arg(format!("--duration={seconds}"));
    if request == Request::Echo {
        cmd.arg(format!("--data={}", bench_file("echo.json").display()))
            .arg("--header=content-type: application/json");
    }
    cmd.arg(format!(
        "{}://{address}{}",
        workload.scheme(),
        request.path()
    ));
    let expected = workload.tls.then_some("h2");
    h2load_report(cmd, expected)
}

/// Runs an `h2load` command and reads its report: an error unless every
/// request was answered with a 2xx, and, when `alpn` is given, unless TLS
/// negotiated that application protocol.
fn h2load_report(mut cmd: Command, alpn: Option<&str>) -> Result<ClientReport> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .context("run h2load (bench/run.sh installs it, from nghttp2-client)")?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "h2load failed ({}): {text}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // "finished in 5.00s, 40358.33 req/s, 1.58MB/s"
    let requests_per_second = text
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|v| v.strip_suffix(" req/s"))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no req/s in h2load's output:\n{text}"))?;
    // "requests: 121075 total, 121575 started, 121075 done, 121075 succeeded, 0 failed, 0 errored, 0 timeout"
    let counts = text
        .lines()
        .find_map(|l| l.strip_prefix("requests: "))
        .ok_or_else(|| anyhow!("no request counts in h2load's output:\n{text}"))?;
    let count = |name: &str| -> Result<u64> {
        counts
            .split(", ")
            .find_map(|c| c.strip_suffix(name))
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(|| anyhow!("no {name:?} count in h2load's {counts:?}"))
    };
    let requests = count(" succeeded")?;
    if count(" failed")? + count(" errored")? + count(" timeout")? > 0 || requests == 0 {
        bail!("h2load saw errors: {counts}\n{text}");
    }
    if let Some(alpn) = alpn {
        let negotiated = text
            .lines()
            .find_map(|l| l.strip_prefix("Application protocol: "));
        if negotiated != Some(alpn) {
            bail!("h2load negotiated {negotiated:?}, not {alpn:?}:\n{text}");
        }
    }
    let tls = ["TLS Protocol: ", "Cipher: ", "Server Temp Key: "]
        .iter()
        .map(|prefix| text.lines().find_map(|l| l.strip_prefix(prefix)))
        .collect::<Option<Vec<_>>>()
        .map(|parts| parts.join(", "));
    Ok(ClientReport {
        requests_per_second,
        requests,
        p99_ms: None,
        tls,
    })
}

/// User + system CPU time of a process, all threads, from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow!("unexpected /proc/{pid}/stat: {stat:?}"))?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5), 12 and 13 here, in
    // USER_HZ ticks, which Linux fixes at 100 per second for user space.
    let ticks = |i: usize| -> Result<f64> {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| anyhow!("no field {i} in /proc/{pid}/stat"))
    };
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

/// Instructions callgrind counts per request of each of [`WORKLOADS`]: one
/// run with that load for each, one without, so start-up is subtracted.
fn instructions_per_request(server: &Server<'_>) -> Result<Vec<f64>> {
    let (idle, _) = callgrind_run(server, "idle", None)?;
    WORKLOADS
        .iter()
        .map(|&workload| {
            let load = |address| {
                let report = drive(
                    address,
                    workload,
                    CALLGRIND_CONNECTIONS,
                    CALLGRIND_LOAD_SECONDS,
                )?;
                Ok(report.requests)
            };
            let (loaded, requests) = callgrind_run(server, &workload.label(), Some(&load))?;
            if requests == 0 {
                bail!("no {} was answered under callgrind", workload.label());
            }
            Ok(loaded.saturating_sub(idle) as f64 / requests as f64)
        })
        .collect()
}

/// Instructions callgrind counts per request (or per handshake and its
/// request) of each of [`TLS_MEASURES`], as [`instructions_per_request`].
fn tls_instructions(server: &Server<'_>) -> Result<Vec<f64>> {
    let (idle, _) = callgrind_run(server, "idle", None)?;
    TLS_MEASURES
        .iter()
        .map(|&measure| {
            let load = |address| -> Result<u64> {
                match measure {
                    TlsMeasure::Load(workload) => Ok(drive(
                        address,
                        workload,
                        CALLGRIND_CONNECTIONS,
                        CALLGRIND_LOAD_SECONDS,
                    )?
                    .requests),
                    TlsMeasure::Handshakes => {
                        let mut count = 0;
                        for _ in 0..CALLGRIND_HANDSHAKE_BATCHES {
                            count += handshake_batch(address)?.requests;
                        }
                        Ok(count)
                    }
                }
            };
            let (loaded, count) = callgrind_run(server, &measure.label(), Some(&load))?;
            if count == 0 {
                bail!("no {} was answered under callgrind", measure.label());
            }
            Ok(loaded.saturating_sub(idle) as f64 / count as f64)
        })
        .collect()
}

/// Runs the server under callgrind, optionally drives `load` against it
/// (which returns the requests answered), stops it with SIGTERM (callgrind
/// writes its counts on the way out), and returns the instruction total and
/// the requests.
fn callgrind_run(
    server: &Server<'_>,
    label: &str,
    load: Option<&dyn Fn(SocketAddr) -> Result<u64>>,
) -> Result<(u64, u64)> {
    let out = std::env::temp_dir().join(
        format!(
            "bench-callgrind-{}-{}-{}.out",
            std::process::id(),
            server.name,
            label
        )
        .replace([' ', '/'], "_"),
    );
    let mut cmd = clean_command("valgrind");
    cmd.env("HOST", "127.0.0.1")
        .env("API_PORT", "0")
        .envs(server.env.iter().map(|(name, value)| (name, value)))
        .args(["--tool=callgrind", "--quiet"])
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(server.path)
        .stderr(Stdio::piped());
    let mut process = Process::spawn(cmd)?;
    let address = process.serving_address_within(CALLGRIND_START_DEADLINE)?;
    let requests = match load {
        Some(load) => load(address)?,
        None => 0,
    };
    let status = Command::new("kill")
        .args(["-TERM", &process.pid().to_string()])
        .status()?;
    if !status.success() {
        bail!("kill -TERM {} failed", process.pid());
    }
    let end = Instant::now() + DEADLINE;
    while process.child.try_wait()?.is_none() {
        if Instant::now() > end {
            bail!("still running {DEADLINE:?} after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let counts = std::fs::read_to_string(&out)
        .with_context(|| format!("read callgrind's output {}", out.display()))?;
    let _ = std::fs::remove_file(&out);
    let total = counts
        .lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow!("no totals in callgrind's output"))?;
    Ok((total, requests))
}

/// The request count from wrk's "N requests in 10.00s, ..." line.
fn wrk_requests(text: &str) -> Result<u64> {
    text.lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .ok_or_else(|| anyhow!("no request count in wrk's output:\n{text}"))
}

/// wrk's "812.00us", "1.23ms", "2.00s" in milliseconds.
fn duration_ms(text: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1e3)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60e3)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * scale)
}

/// VmRSS of a freshly started server, after it has answered one `/health`.
fn idle_rss_mib(server: &Server<'_>) -> Result<f64> {
    let (mut process, address) = server.start_on_any_port()?;
    expect_200(TcpStream::connect(address)?)?;
    std::thread::sleep(Duration::from_millis(200));
    process.check_alive()?;
    vm_rss_mib(process.pid())
}

/// VmRSS of a process, in MiB.
fn vm_rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))?;
    Ok(kib / 1024.0)
}

/// The value of `name=value` in a log line (values end at a space).
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!("{name}="))? + name.len() + 1;
    let rest = &line[start..];
    Some(rest.split(' ').next().unwrap_or(rest).trim_matches('"'))
}

/// Median, min and max of a set of samples.
struct Stats {
    median: f64,
    min: f64,
    max: f64,
}

impl Stats {
    fn of(samples: &[f64]) -> Stats {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => sorted[n / 2],
            _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        Stats {
            median,
            min: sorted.first().copied().unwrap_or(f64::NAN),
            max: sorted.last().copied().unwrap_or(f64::NAN),
        }
    }

    /// "0.97× (0.81–1.10)", or "0.97×" for a single sample.
    fn show_ratio(&self) -> String {
        if self.min == self.max {
            format!("{:.2}×", self.median)
        } else {
            format!("{:.2}× ({:.2}–{:.2})", self.median, self.min, self.max)
        }
    }

    fn show(&self, unit: &str) -> String {
        let digits = if self.median >= 100.0 {
            0
        } else if self.median >= 10.0 {
            1
        } else {
            2
        };
        format!(
            "{:.*} {unit} ({:.*}–{:.*})",
            digits, self.median, digits, self.min, digits, self.max
        )
    }
}

enum Target {
    RatioAtMost(f64),
    RatioAtLeast(f64),
    AtMost(f64),
    None,
}

#[derive(Default)]
struct Table {
    rows: Vec<String>,
    search_rows: Vec<String>,
    /// Lines printed after the table.
    notes: Vec<String>,
    /// The machine's 1-minute load average before and after, so a reader can
    /// tell a quiet run from one that shared the CPUs with other work.
    load_before: String,
    load_after: String,
}

impl Table {
    /// `ours[i]` and `base[i]` must come from the same round.
    fn compare(&mut self, what: &str, unit: &str, ours: &[f64], base: &[f64], target: Target) {
        let ratios = Stats::of(&paired_ratios(ours, base));
        let ratio = ratios.median;
        let (ours, base) = (Stats::of(ours), Stats::of(base));
        let (target, met) = match target {
            Target::RatioAtMost(t) => (format!("≤ {t}×"), Some(ratio <= t)),
            Target::RatioAtLeast(t) => (format!("≥ {t}×"), Some(ratio >= t)),
            Target::AtMost(t) => (format!("≤ {t} {unit}"), Some(ours.median <= t)),
            Target::None => ("—".to_owned(), None),
        };
        self.rows.push(format!(
            "| {what} | {} | {} | {} | {target} | {} |",
            ours.show(unit),
            base.show(unit),
            ratios.show_ratio(),
            verdict(met)
        ));
    }

    fn search_row(&mut self, busy: usize, stats: &Stats, per_port: Option<f64>) {
        let (per_port, met) = match per_port {
            Some(us) => (format!("{us:.2} µs"), Some(us <= 5.0)),
            None => ("—".to_owned(), None),
        };
        self.search_rows.push(format!(
            "| {busy} | {} | {per_port} | {} |",
            stats.show("µs"),
            if met.is_some() { verdict(met) } else { "" }
        ));
    }

    fn render(&self, options: &Options) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "Machine: {}; load average {} before, {} after. Start-up: {} runs each, servers \
             alternating; search: {} runs per row; load: {} rounds × {} s per server and workload after a \
             warm-up, servers taking turns; figures are median (min–max); a ratio is the median (min–max) of the \
             run-by-run ratios.\n\n",
            machine(),
            self.load_before,
            self.load_after,
            options.runs,
            options.search_runs,
            options.load_rounds,
            options.load_seconds
        ));
        out.push_str("| measure | portkeeper | baseline | ratio | target | |\n");
        out.push_str("|---|---|---|---|---|---|\n");
        for row in &self.rows {
            out.push_str(row);
            out.push('\n');
        }
        for note in &self.notes {
            out.push('\n');
            out.push_str(note);
            out.push('\n');
        }
        if self.search_rows.is_empty() {
            return out;
        }
        out.push_str("\nPort search (portkeeper's listener chain, timed in-process):\n\n");
        out.push_str("| busy ports ahead | time to bind | per busy port | target ≤ 5 µs |\n");
        out.push_str("|---|---|---|---|\n");
        for row in &self.search_rows {
            out.push_str(row);
            out.push('\n');
        }
        out
    }
}

/// `ours[i] / base[i]` over the rounds both have.
fn paired_ratios(ours: &[f64], base: &[f64]) -> Vec<f64> {
    ours.iter().zip(base).map(|(o, b)| o / b).collect()
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "",
    }
}

/// The 1-minute load average from /proc/loadavg.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// "2 CPUs (AMD EPYC), Linux 6.1.0" from /proc.
fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    format!("{cpus} CPUs ({model}), Linux {kernel}")
}
