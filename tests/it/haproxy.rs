//! A rolling restart behind a real load balancer, the way a Deployment with
//! `maxSurge: 1, maxUnavailable: 0` rolls: three portkeeper instances behind
//! HAProxy, which health-checks `GET /ready`; under steady keep-alive load,
//! each step starts a new instance in a free slot, waits until HAProxy sends
//! it traffic, then sends SIGTERM to an old one and waits for it to exit.
//!
//! With `SHUTDOWN_DELAY` longer than HAProxy's check interval, no request may
//! fail. The same roll with `SHUTDOWN_DELAY=0` is run next and its failures
//! are reported, not asserted: it shows what the delay buys, and how many
//! requests fail depends on timing. HAProxy runs with `retries 0`, as a
//! Kubernetes Service's data path (kube-proxy) does not retry either.
//!
//! The same roll with HAProxy's `send-proxy-v2` (a PROXY v2 header on every
//! connection, its health checks' too with `check-send-proxy`) runs against
//! instances listening with the `proxy` mark: no request may fail either, and
//! every answer must show the test client's own address, not HAProxy's.
//!
//! `PORTKEEPER_ROLL_REPORT=1` prints the counts (`bench/haproxy_roll.sh`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::support::*;

/// Instances serving at once; one more slot is kept for the surge.
const REPLICAS: usize = 3;
/// Keep-alive client connections through HAProxy.
const CLIENTS: usize = 8;
/// HAProxy's health-check interval; the delay must exceed it (fall 1).
const CHECK_INTERVAL_MS: u64 = 300;

/// How the instances sit behind HAProxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    /// Plain HTTP: the binary on `HOST:API_PORT`; the clients ask `/info`.
    Plain,
    /// HAProxy sends a PROXY v2 header first (`send-proxy-v2`, and
    /// `check-send-proxy` on its health checks); the instances are the
    /// `client_address` example on `LISTEN=proxy=...` with
    /// `PROXY_TRUSTED=127.0.0.1`, and the clients ask `/ip`.
    ProxyV2,
}

#[derive(Default)]
struct Counts {
    succeeded: AtomicU64,
    failed: AtomicU64,
    /// Answers of `/ip` that named the client's own address and port.
    addressed: AtomicU64,
    /// Answers of `/ip` that named another (HAProxy's own, say).
    misaddressed: AtomicU64,
}

#[derive(Debug)]
struct Roll {
    requests: u64,
    failed: u64,
    addressed: u64,
    misaddressed: u64,
    /// Connections the instances refused on their proxy listener (log lines).
    refused: usize,
}

#[test]
fn a_rolling_restart_behind_haproxy_fails_no_request_with_a_shutdown_delay() {
    let Some(haproxy) = peer_tool("haproxy") else {
        return;
    };
    let with_delay = roll(&haproxy, 2, Wire::Plain).unwrap();
    let without = roll(&haproxy, 0, Wire::Plain).unwrap();
    let report = format!(
        "haproxy roll, {REPLICAS} instances, {CLIENTS} clients: \
         SHUTDOWN_DELAY=2: {} requests, {} failed; \
         SHUTDOWN_DELAY=0: {} requests, {} failed",
        with_delay.requests, with_delay.failed, without.requests, without.failed
    );
    eprintln!("{report}");
    if std::env::var_os("PORTKEEPER_ROLL_REPORT").is_some() {
        println!("{report}");
    }
    assert!(with_delay.requests > 100, "{report}");
    assert_eq!(with_delay.failed, 0, "{report}");
}

#[test]
fn a_roll_behind_haproxy_send_proxy_v2_fails_none_and_handlers_see_the_client() {
    let Some(haproxy) = peer_tool("haproxy") else {
        return;
    };
    let roll = roll(&haproxy, 2, Wire::ProxyV2).unwrap();
    let report = format!(
        "haproxy roll with send-proxy-v2, {REPLICAS} instances, {CLIENTS} clients, \
         SHUTDOWN_DELAY=2: {} requests, {} failed, {} answers showed the client's address, \
         {} another, {} connections refused",
        roll.requests, roll.failed, roll.addressed, roll.misaddressed, roll.refused
    );
    eprintln!("{report}");
    if std::env::var_os("PORTKEEPER_ROLL_REPORT").is_some() {
        println!("{report}");
    }
    assert!(roll.requests > 100, "{report}");
    assert_eq!(roll.failed, 0, "{report}");
    assert_eq!(roll.misaddressed, 0, "{report}");
    assert_eq!(roll.addressed, roll.requests, "{report}");
    // HAProxy's health checks came with a header (LOCAL) too.
    assert_eq!(roll.refused, 0, "{report}");
}

/// The lines in which an instance refused a connection on its proxy listener.
fn refusals(instance: &Running) -> usize {
    instance
        .stderr()
        .lines()
        .filter(|line| line.contains("closing a connection on a proxy listener"))
        .count()
}

/// One whole roll with this `SHUTDOWN_DELAY`.
fn roll(haproxy: &std::path::Path, delay_secs: u64, wire: Wire) -> Result<Roll> {
    // REPLICAS + 1 backend slots and the frontend, on ports this test owns.
    let held = owned_port_run(REPLICAS as u16 + 2);
    let ports: Vec<u16> = held.iter().map(port_of).collect();
    drop(held);
    let (frontend, slots) = (ports[0], &ports[1..]);
    let dir = TempDir::new();
    // Output labels: the two variants run in parallel.
    let name = match wire {
        Wire::Plain => format!("d{delay_secs}"),
        Wire::ProxyV2 => format!("pp2-d{delay_secs}"),
    };

    let start = |slot: usize, generation: usize| -> Result<Running> {
        let mut cmd = match wire {
            Wire::Plain => {
                let mut cmd = portkeeper(dir.path());
                cmd.env("HOST", "127.0.0.1")
                    .env("API_PORT", slots[slot].to_string());
                cmd
            }
            Wire::ProxyV2 => {
                let mut cmd = clean_command(crate::proxy_protocol::client_address_app());
                cmd.current_dir(dir.path())
                    .env("LISTEN", format!("proxy=127.0.0.1:{}", slots[slot]))
                    .env("PROXY_TRUSTED", "127.0.0.1");
                cmd
            }
        };
        cmd.env("SHUTDOWN_DELAY", delay_secs.to_string())
            .env("SHUTDOWN_TIMEOUT", "10");
        let mut server = Running::spawn(cmd, &format!("{name}-s{slot}-g{generation}"))?;
        server.serving_address()?;
        Ok(server)
    };
    let mut instances: Vec<Option<Running>> = Vec::new();
    for slot in 0..=REPLICAS {
        instances.push(if slot < REPLICAS {
            Some(start(slot, 0)?)
        } else {
            None
        });
    }

    let config = dir.path().join("haproxy.cfg");
    std::fs::write(&config, haproxy_config(frontend, slots, wire))?;
    let mut cmd = clean_command(haproxy);
    cmd.arg("-db").arg("-f").arg(&config);
    let mut balancer = Running::spawn(cmd, &format!("haproxy-{name}"))?;
    // HAProxy counts every server up until its first check: the empty slot
    // must be seen down before the load starts.
    balancer.wait_for_line(&format!("slot{REPLICAS} is DOWN"), DEADLINE)?;
    let front: SocketAddr = ([127, 0, 0, 1], frontend).into();
    for &port in &slots[..REPLICAS] {
        wait_for_traffic(front, port)?;
    }

    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (counts, stop) = (Arc::clone(&counts), Arc::clone(&stop));
            std::thread::spawn(move || client(front, wire, &counts, &stop))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));

    let mut refused = 0;
    let rolled = (|| -> Result<()> {
        let mut free = REPLICAS;
        for generation in 1..=REPLICAS {
            // The surge: a new instance, in rotation before an old one goes.
            instances[free] = Some(start(free, generation)?);
            wait_for_traffic(front, slots[free])?;
            let old = (0..=REPLICAS)
                .find(|&slot| slot != free && instances[slot].is_some())
                .expect("an old instance is left");
            let mut stopping = instances[old].take().expect("running");
            stopping.signal("TERM")?;
            let status = stopping.wait_exit(DEADLINE)?;
            refused += refusals(&stopping);
            if !status.success() {
                bail!("slot {old} exited with {status}:\n{}", stopping.output());
            }
            free = old;
            std::thread::sleep(Duration::from_millis(300));
        }
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let _ = client.join();
    }
    rolled?;
    refused += instances.iter().flatten().map(refusals).sum::<usize>();
    Ok(Roll {
        requests: counts.succeeded.load(Ordering::Relaxed) + counts.failed.load(Ordering::Relaxed),
        failed: counts.failed.load(Ordering::Relaxed),
        addressed: counts.addressed.load(Ordering::Relaxed),
        misaddressed: counts.misaddressed.load(Ordering::Relaxed),
        refused,
    })
}

fn haproxy_config(frontend: u16, slots: &[u16], wire: Wire) -> String {
    let mut config = format!(
        "global\n\
         \tmaxconn 256\n\
         defaults\n\
         \tmode http\n\
         \ttimeout connect 2s\n\
         \ttimeout client 30s\n\
         \ttimeout server 30s\n\
         \t# No second try on another server: like a Service's kube-proxy path.\n\
         \tretries 0\n\
         frontend web\n\
         \tbind 127.0.0.1:{frontend}\n\
         \tdefault_backend instances\n\
         backend instances\n\
         \tbalance roundrobin\n\
         \toption httpchk GET /ready\n\
         \thttp-check expect status 200\n\
         \tdefault-server inter {CHECK_INTERVAL_MS}ms fall 1 rise 2\n"
    );
    // `check-send-proxy` says outright that the health checks send a header
    // too (HAProxy's default with `send-proxy-v2`): a LOCAL one.
    let proxy = match wire {
        Wire::Plain => "",
        Wire::ProxyV2 => " send-proxy-v2 check-send-proxy",
    };
    for (i, port) in slots.iter().enumerate() {
        config.push_str(&format!("\tserver slot{i} 127.0.0.1:{port} check{proxy}\n"));
    }
    config
}

/// Waits until a request through the balancer is answered by the instance
/// on `port` (HAProxy has seen it ready and sends it traffic).
fn wait_for_traffic(front: SocketAddr, port: u16) -> Result<()> {
    let end = Instant::now() + DEADLINE;
    let wanted = format!("127.0.0.1:{port}");
    loop {
        if let Ok(info) = get_json(front, "/info") {
            if info["listener"]["address"] == wanted.as_str() {
                return Ok(());
            }
        }
        if Instant::now() >= end {
            bail!("no answer from {wanted} through the balancer within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Keep-alive GET /info (or /ip, behind `send-proxy-v2`) in a loop until
/// `stop`; every answer that is not a whole 200 (a refused or reset
/// connection, HAProxy's 503, an empty reply) counts as failed, and the
/// client reconnects after 5 ms. An `/ip` answer is compared with the
/// client's own address: what HAProxy saw, and put in the PROXY header.
fn client(front: SocketAddr, wire: Wire, counts: &Counts, stop: &AtomicBool) {
    let path = match wire {
        Wire::Plain => "/info",
        Wire::ProxyV2 => "/ip",
    };
    let mut connection: Option<(BufReader<TcpStream>, String)> = None;
    while !stop.load(Ordering::Relaxed) {
        let result = (|| -> Result<bool> {
            if connection.is_none() {
                let stream = TcpStream::connect_timeout(&front, Duration::from_secs(5))?;
                stream.set_read_timeout(Some(Duration::from_secs(10)))?;
                let own = stream.local_addr()?.to_string();
                connection = Some((BufReader::new(stream), own));
            }
            let (reader, own) = connection.as_mut().expect("set above");
            write!(
                reader.get_mut(),
                "GET {path} HTTP/1.1\r\nHost: {front}\r\n\r\n"
            )?;
            let (keep_alive, body) = read_response(reader)?;
            if wire == Wire::ProxyV2 {
                let seen = if body == *own {
                    &counts.addressed
                } else {
                    eprintln!("roll client: /ip says {body:?}, the client is {own}");
                    &counts.misaddressed
                };
                seen.fetch_add(1, Ordering::Relaxed);
            }
            Ok(keep_alive)
        })();
        match result {
            Ok(keep_alive) => {
                counts.succeeded.fetch_add(1, Ordering::Relaxed);
                if !keep_alive {
                    connection = None;
                }
            }
            Err(err) => {
                counts.failed.fetch_add(1, Ordering::Relaxed);
                eprintln!("roll client: {err:#}");
                connection = None;
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// Reads one response with a Content-Length body; Ok((keep-alive, body)) on a 200.
fn read_response(reader: &mut BufReader<TcpStream>) -> Result<(bool, String)> {
    let mut status_line = String::new();
    if reader.read_line(&mut status_line)? == 0 {
        bail!("connection closed before a response");
    }
    let status = status_line.split(' ').nth(1).unwrap_or_default().to_owned();
    let (mut length, mut close) = (0usize, false);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            bail!("connection closed in the headers");
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse().context("content-length")?;
        } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
            close = true;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    if status != "200" {
        bail!("status {status}: {}", String::from_utf8_lossy(&body).trim());
    }
    Ok((!close, String::from_utf8_lossy(&body).into_owned()))
}
