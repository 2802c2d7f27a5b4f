//! The PROXY protocol end to end: listeners marked `proxy`, raw clients that
//! send v1 and v2 headers (written here byte by byte, as the specification
//! lays them out, not by the parser's crate), and what the app's handlers
//! then see as `ConnectInfo` (`examples/client_address.rs`, whose `/ip`
//! answers it). Then every refusal: one `warn` line, the connection closed,
//! the server still serving; and the start-up errors (exit 78).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::support::*;

/// What every refusal logs (once per connection).
const REFUSAL: &str = "closing a connection on a proxy listener";

/// The built `client_address` example (cargo builds examples for `cargo test`).
pub(crate) fn client_address_app() -> PathBuf {
    // target/<profile>/deps/it-<hash> -> target/<profile>/examples/client_address
    let test_exe = std::env::current_exe().expect("current exe");
    let profile_dir = test_exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let path = profile_dir.join("examples").join("client_address");
    assert!(
        path.is_file(),
        "{} is missing: build the examples (cargo test does)",
        path.display()
    );
    path
}

/// The example app in `dir` with a clean environment and `vars`.
fn app(dir: &TempDir, vars: &[(&str, &str)]) -> Command {
    let mut cmd = clean_command(client_address_app());
    cmd.current_dir(dir.path()).envs(vars.iter().copied());
    cmd
}

/// The real binary in `dir` with a clean environment and `vars`.
fn binary_with(dir: &TempDir, vars: &[(&str, &str)]) -> Command {
    let mut cmd = portkeeper(dir.path());
    cmd.envs(vars.iter().copied());
    cmd
}

/// Spawns `cmd` and waits for its first listener: its TCP address, if it
/// is one.
fn start(cmd: Command, label: &str) -> Result<(Running, Option<SocketAddr>)> {
    let mut server = Running::spawn(cmd, label)?;
    let line = server.wait_for_line(" serving ", DEADLINE)?;
    let address = field(&line, "port")
        .and_then(|_| field(&line, "address"))
        .and_then(|a| a.parse().ok());
    Ok((server, address))
}

/// The v2 signature: `\r\n\r\n\0\r\nQUIT\n`.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\x00\r\nQUIT\n";

/// A v2 PROXY header (version 2, command PROXY, TCP) naming `source`
/// connecting to `destination`; both of one family.
fn v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut addresses = Vec::new();
    let family = match (source, destination) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            addresses.extend(s.ip().octets());
            addresses.extend(d.ip().octets());
            0x11 // AF_INET, STREAM
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            addresses.extend(s.ip().octets());
            addresses.extend(d.ip().octets());
            0x21 // AF_INET6, STREAM
        }
        _ => panic!("one family for both addresses"),
    };
    addresses.extend(source.port().to_be_bytes());
    addresses.extend(destination.port().to_be_bytes());
    let mut header = V2_SIGNATURE.to_vec();
    header.push(0x21); // version 2, PROXY
    header.push(family);
    header.extend((addresses.len() as u16).to_be_bytes());
    header.extend(addresses);
    header
}

/// `header` (v2) with a TLV appended, as AWS's NLB adds its endpoint's id
/// (type 0xEA) or HAProxy the authority (0x02): skipped, not refused.
fn with_tlv(mut header: Vec<u8>, kind: u8, value: &[u8]) -> Vec<u8> {
    header.push(kind);
    header.extend((value.len() as u16).to_be_bytes());
    header.extend(value);
    let length = (header.len() - 16) as u16;
    header[14..16].copy_from_slice(&length.to_be_bytes());
    header
}

/// A v2 LOCAL header: what a balancer sends on its own connections (health
/// checks); the connection's own peer stands.
fn v2_local() -> Vec<u8> {
    let mut header = V2_SIGNATURE.to_vec();
    header.extend([0x20, 0x00, 0x00, 0x00]); // version 2, LOCAL; UNSPEC; length 0
    header
}

/// A v1 header naming `source` connecting to `destination` (IPv4).
fn v1(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    format!(
        "PROXY TCP4 {} {} {} {}\r\n",
        source.ip(),
        destination.ip(),
        source.port(),
        destination.port()
    )
    .into_bytes()
}

/// A GET of `path` that closes the connection after its answer.
fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").into_bytes()
}

/// Sends `header` and a GET of `path` in one write (as a proxy often does),
/// returns status and body.
fn proxied_get(mut stream: impl Read + Write, header: &[u8], path: &str) -> Result<(u16, String)> {
    let mut bytes = header.to_vec();
    bytes.extend(get(path));
    stream.write_all(&bytes)?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    parse_response(&response)
}

fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connect {addr}"))?;
    stream.set_read_timeout(Some(DEADLINE))?;
    Ok(stream)
}

/// `/ip` through `addr` after `header`: what the handler was given.
fn ip_after(addr: SocketAddr, header: &[u8]) -> Result<String> {
    let (status, body) = proxied_get(connect(addr)?, header, "/ip")?;
    if status != 200 {
        bail!("GET /ip after a header: status {status}, body {body}");
    }
    Ok(body)
}

/// Waits until the connection ends with nothing from the server (end of
/// file or a reset, bounded by the stream's read timeout); how long it took.
fn closed_without_answer(mut stream: impl Read) -> Result<Duration> {
    let started = Instant::now();
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(err) => bail!("the connection was not closed: {err}"),
    }
    if !answer.is_empty() {
        bail!(
            "the server answered instead of closing: {:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    Ok(started.elapsed())
}

/// The refusal lines logged so far.
fn refusals(server: &Running) -> Vec<String> {
    server
        .stderr()
        .lines()
        .filter(|line| line.contains(REFUSAL))
        .map(str::to_owned)
        .collect()
}

/// Waits until `count` refusal lines are logged; the last one.
fn wait_for_refusals(server: &Running, count: usize) -> Result<String> {
    if !wait_until(DEADLINE, || refusals(server).len() >= count) {
        bail!(
            "not {count} refusal lines within {DEADLINE:?}:\n{}",
            server.output()
        );
    }
    Ok(refusals(server).pop().expect("at least one"))
}

const CLIENT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)), 56324);
const FRONT: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 443);

#[test]
fn v1_v2_and_v2_ipv6_headers_give_handlers_the_client_and_local_keeps_the_peer() {
    let dir = TempDir::new();
    let cmd = app(
        &dir,
        &[
            ("LISTEN", "proxy=127.0.0.1:0"),
            ("PROXY_TRUSTED", "127.0.0.1"),
        ],
    );
    let (server, addr) = start(cmd, "proxy").unwrap();
    let addr = addr.expect("a TCP listener");

    assert_eq!(
        ip_after(addr, &v1(CLIENT, FRONT)).unwrap(),
        CLIENT.to_string()
    );
    let v2_client: SocketAddr = "198.51.100.9:4242".parse().unwrap();
    assert_eq!(
        ip_after(addr, &v2(v2_client, FRONT)).unwrap(),
        v2_client.to_string()
    );
    let six = SocketAddr::new(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7).into(), 6000);
    let six_front = SocketAddr::new(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).into(), 443);
    assert_eq!(
        ip_after(addr, &v2(six, six_front)).unwrap(),
        "[2001:db8::7]:6000"
    );
    let tlvs = with_tlv(
        with_tlv(v2(v2_client, FRONT), 0x02, b"example.com"),
        0xEA,
        b"\x01vpce-0123456789abcdef",
    );
    assert_eq!(ip_after(addr, &tlvs).unwrap(), v2_client.to_string());
    // v1 for IPv6 too.
    let v1_six = b"PROXY TCP6 2001:db8::7 2001:db8::1 6000 443\r\n";
    assert_eq!(ip_after(addr, v1_six).unwrap(), "[2001:db8::7]:6000");

    // LOCAL (v2) and UNKNOWN (v1): the connection's own peer stands.
    let stream = connect(addr).unwrap();
    let own = stream.local_addr().unwrap().to_string();
    let (status, body) = proxied_get(stream, &v2_local(), "/ip").unwrap();
    assert_eq!((status, body), (200, own));
    let stream = connect(addr).unwrap();
    let own = stream.local_addr().unwrap().to_string();
    let (status, body) = proxied_get(stream, b"PROXY UNKNOWN\r\n", "/ip").unwrap();
    assert_eq!((status, body), (200, own));

    // A header that arrives in pieces, and the request after it later.
    let mut stream = connect(addr).unwrap();
    let header = v2(v2_client, FRONT);
    for piece in header.chunks(5) {
        stream.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, body) = proxied_get(stream, b"", "/ip").unwrap();
    assert_eq!((status, body), (200, v2_client.to_string()));

    // Keep-alive: every request of the connection is the header's client's.
    let mut stream = connect(addr).unwrap();
    let mut bytes = v1(CLIENT, FRONT);
    bytes.extend(b"GET /ip HTTP/1.1\r\nHost: localhost\r\n\r\n");
    bytes.extend(get("/ip"));
    stream.write_all(&bytes).unwrap();
    let mut both = String::new();
    stream.read_to_string(&mut both).unwrap();
    assert_eq!(both.matches("HTTP/1.1 200").count(), 2, "{both}");
    assert_eq!(both.matches(&CLIENT.to_string()).count(), 2, "{both}");

    assert!(refusals(&server).is_empty(), "{}", server.output());
}

/// TLS over `stream`, as a client of `localhost`.
#[cfg(feature = "tls")]
fn tls_over(
    stream: TcpStream,
    config: &std::sync::Arc<rustls::ClientConfig>,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let connection = rustls::ClientConnection::new(std::sync::Arc::clone(config), name).unwrap();
    rustls::StreamOwned::new(connection, stream)
}

#[cfg(feature = "tls")]
#[test]
fn tls_after_the_header_is_served_with_the_client_address() {
    let dir = TempDir::new();
    let pair = crate::certs::Pair::self_signed_localhost();
    let (cert, key) = pair.write(dir.path(), "cert.pem", "key.pem");
    let config = pair.client_config();
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let cmd = app(
        &dir,
        &[
            ("LISTEN", "tls+proxy=127.0.0.1:0"),
            ("PROXY_TRUSTED", "127.0.0.1"),
            ("TLS_CERT_FILE", &cert),
            ("TLS_KEY_FILE", &key),
            // For the failed handshake's line, which names the peer.
            ("LOG_LEVEL", "debug"),
        ],
    );
    let (mut server, addr) = start(cmd, "tls+proxy").unwrap();
    let addr = addr.expect("a TCP listener");

    // The header in clear, then the TLS handshake on the same stream.
    for header in [v2(CLIENT, FRONT), v1(CLIENT, FRONT)] {
        let mut stream = connect(addr).unwrap();
        stream.write_all(&header).unwrap();
        let (status, body) = proxied_get(tls_over(stream, &config), b"", "/ip").unwrap();
        assert_eq!((status, body), (200, CLIENT.to_string()));
    }
    // LOCAL: the peer's own address, over TLS too.
    let mut stream = connect(addr).unwrap();
    let own = stream.local_addr().unwrap().to_string();
    stream.write_all(&v2_local()).unwrap();
    let (status, body) = proxied_get(tls_over(stream, &config), b"", "/ip").unwrap();
    assert_eq!((status, body), (200, own));
    assert!(refusals(&server).is_empty(), "{}", server.output());

    // The logs name the header's client too: a handshake that fails after it.
    let mut stream = connect(addr).unwrap();
    stream
        .write_all(&[v2(CLIENT, FRONT), get("/ip")].concat())
        .unwrap();
    // rustls answers with an alert, then closes.
    let _ = stream.read_to_end(&mut Vec::new());
    let line = server
        .wait_for_line("TLS handshake failed peer=", DEADLINE)
        .unwrap();
    assert!(line.contains(&format!("peer={CLIENT}")), "{line}");

    // A TLS client with no header is refused, not handshaken.
    let stream = connect(addr).unwrap();
    let mut tls = tls_over(stream, &config);
    let _ = tls.write_all(&get("/ip"));
    let mut answer = Vec::new();
    assert!(
        tls.read_to_end(&mut answer).is_err() || answer.is_empty(),
        "answered without a header: {answer:?}"
    );
    let line = wait_for_refusals(&server, 1).unwrap();
    assert!(line.contains("not a PROXY header"), "{line}");
}

#[test]
fn a_unix_proxy_listener_trusts_its_peers_without_proxy_trusted() {
    let dir = TempDir::new();
    let sock = dir.path().join("pk.sock");
    let listen = format!("proxy={}", sock.display());
    let cmd = app(&dir, &[("LISTEN", &listen)]);
    let (server, _) = start(cmd, "unix+proxy").unwrap();

    let unix = || {
        let stream = UnixStream::connect(&sock).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream
    };
    let (status, body) = proxied_get(unix(), &v1(CLIENT, FRONT), "/ip").unwrap();
    assert_eq!((status, body), (200, CLIENT.to_string()));
    let (status, body) = proxied_get(unix(), &v2(CLIENT, FRONT), "/ip").unwrap();
    assert_eq!((status, body), (200, CLIENT.to_string()));
    // LOCAL keeps the peer: a Unix peer's credentials, no made-up address.
    let (status, body) = proxied_get(unix(), &v2_local(), "/ip").unwrap();
    let uid = std::fs::metadata("/proc/self").map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid()
    });
    assert_eq!((status, body), (200, format!("unix uid {}", uid.unwrap())));
    assert!(refusals(&server).is_empty(), "{}", server.output());

    // The header is required on a Unix socket as well.
    let mut stream = unix();
    stream.write_all(&get("/ip")).unwrap();
    closed_without_answer(stream).unwrap();
    let line = wait_for_refusals(&server, 1).unwrap();
    assert!(line.contains("not a PROXY header"), "{line}");
}

#[test]
fn an_inherited_socket_named_http_proxy_reads_the_header() {
    let dir = TempDir::new();
    let listener = loopback_listener();
    let addr = listener.local_addr().unwrap();
    let mut cmd = app(
        &dir,
        &[
            ("LISTEN_FDS", "1"),
            ("LISTEN_FDNAMES", "http+proxy"),
            ("PROXY_TRUSTED", "127.0.0.1"),
        ],
    );
    hand_over(&mut cmd, vec![std::os::fd::OwnedFd::from(listener)]);
    let (server, served) = start(cmd, "inherited+proxy").unwrap();
    assert_eq!(served, Some(addr));

    assert_eq!(
        ip_after(addr, &v2(CLIENT, FRONT)).unwrap(),
        CLIENT.to_string()
    );
    let mut stream = connect(addr).unwrap();
    stream.write_all(&get("/ip")).unwrap();
    closed_without_answer(stream).unwrap();
    let line = wait_for_refusals(&server, 1).unwrap();
    assert!(line.contains("not a PROXY header"), "{line}");
}

#[test]
fn an_upgrade_hands_the_proxy_listener_over_with_its_mark() {
    let dir = TempDir::new();
    let cmd = app(
        &dir,
        &[
            ("LISTEN", "proxy=127.0.0.1:0"),
            ("ADMIN_LISTEN", "127.0.0.1:0"),
            ("PROXY_TRUSTED", "127.0.0.1"),
        ],
    );
    let mut server = Running::spawn(cmd, "proxy-upgrade").unwrap();
    let lines = serving_lines(&mut server, 2).unwrap();
    let address = |role: &str| -> SocketAddr {
        lines
            .iter()
            .find(|l| field(l, "role") == Some(role))
            .and_then(|l| field(l, "address")?.parse().ok())
            .unwrap_or_else(|| panic!("no {role} listener in {lines:#?}"))
    };
    let (public, admin) = (address("app"), address("admin"));
    let old = get_json(admin, "/info").unwrap()["pid"].as_u64().unwrap();

    server.signal("USR2").unwrap();
    let end = Instant::now() + DEADLINE;
    let successor = loop {
        // The header is read throughout, by whichever process serves.
        assert_eq!(
            ip_after(public, &v2(CLIENT, FRONT)).unwrap(),
            CLIENT.to_string()
        );
        let info = get_json(admin, "/info").unwrap();
        if info["pid"].as_u64() != Some(old) {
            break info;
        }
        assert!(Instant::now() < end, "no successor within {DEADLINE:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let _successor = Successor(successor["pid"].as_u64().unwrap() as u32);
    assert!(server.wait_exit(DEADLINE).unwrap().success());
    let handed = successor["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["role"] == "app")
        .cloned()
        .unwrap();
    assert_eq!(handed["source"], "handoff", "{handed}");
    assert_eq!(handed["proxy"], true, "{handed}");
    assert_eq!(
        ip_after(public, &v1(CLIENT, FRONT)).unwrap(),
        CLIENT.to_string()
    );
    // Still required: the successor refuses a request without one.
    let mut stream = connect(public).unwrap();
    stream.write_all(&get("/ip")).unwrap();
    closed_without_answer(stream).unwrap();
}

#[test]
fn bad_headers_close_the_connection_with_one_warn_line_and_serving_goes_on() {
    let dir = TempDir::new();
    let cmd = binary_with(
        &dir,
        &[
            ("LISTEN", "proxy=127.0.0.1:0"),
            ("PROXY_TRUSTED", "127.0.0.1"),
        ],
    );
    let (server, addr) = start(cmd, "proxy-refusals").unwrap();
    let addr = addr.expect("a TCP listener");
    let healthy = || proxied_get(connect(addr).unwrap(), &v1(CLIENT, FRONT), "/health").unwrap();
    assert_eq!(healthy().0, 200);

    let mut bad_v2_version = v2(CLIENT, FRONT);
    bad_v2_version[12] = 0x31; // version 3
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "plain HTTP, no header",
            get("/health"),
            "not a PROXY header",
        ),
        (
            "v1 with a bad address",
            b"PROXY TCP4 203.0.113.999 192.0.2.1 56324 443\r\n".to_vec(),
            "malformed PROXY header",
        ),
        (
            "v1 without its CRLF within 107 bytes",
            [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat(),
            "malformed PROXY header",
        ),
        (
            "v1 with a control byte",
            b"PROXY TCP4 203.0.113.7\x00 192.0.2.1 56324 443\r\n".to_vec(),
            "malformed PROXY header",
        ),
        ("v2 of version 3", bad_v2_version, "malformed PROXY header"),
        (
            "the peer closes mid-header",
            v2(CLIENT, FRONT)[..20].to_vec(),
            "closed before its PROXY header ended",
        ),
    ];
    for (count, (case, bytes, reason)) in cases.into_iter().enumerate() {
        let mut stream = connect(addr).unwrap();
        stream.write_all(&bytes).unwrap();
        if case.contains("closes") {
            stream.shutdown(std::net::Shutdown::Write).unwrap();
        } else {
            // Whatever a client sends after a bad header is never served.
            let _ = stream.write_all(&get("/health"));
        }
        closed_without_answer(&stream)
            .with_context(|| case.to_owned())
            .unwrap();
        let line = wait_for_refusals(&server, count + 1).unwrap();
        assert!(line.contains(reason), "{case}: {line}");
        assert_eq!(refusals(&server).len(), count + 1, "{case}: one line each");
        // The server goes on serving.
        assert_eq!(healthy().0, 200, "after {case}");
    }
    assert_eq!(refusals(&server).len(), 6, "{}", server.output());
}

#[test]
fn no_header_within_5_s_closes_the_connection_and_others_are_served_meanwhile() {
    let dir = TempDir::new();
    let cmd = binary_with(
        &dir,
        &[
            ("LISTEN", "proxy=127.0.0.1:0"),
            ("PROXY_TRUSTED", "127.0.0.1"),
        ],
    );
    let (server, addr) = start(cmd, "proxy-timeout").unwrap();
    let addr = addr.expect("a TCP listener");

    let connected = Instant::now();
    let silent = connect(addr).unwrap();
    // A part of a header, then silence: the deadline is for the whole header.
    let mut partial = connect(addr).unwrap();
    partial.write_all(b"PROXY TCP4 203.0.113.7 ").unwrap();
    let waiting: Vec<_> = [silent, partial]
        .into_iter()
        .map(|stream| {
            std::thread::spawn(move || closed_without_answer(&stream).map(|_| connected.elapsed()))
        })
        .collect();
    // Meanwhile other connections are served at once.
    let started = Instant::now();
    for _ in 0..3 {
        let (status, _) =
            proxied_get(connect(addr).unwrap(), &v1(CLIENT, FRONT), "/health").unwrap();
        assert_eq!(status, 200);
    }
    // Well before the silent ones are closed: nothing waited for them.
    assert!(started.elapsed() < Duration::from_secs(4));
    for waiting in waiting {
        let waited = waiting.join().unwrap().unwrap();
        assert!(
            waited >= Duration::from_millis(4500) && waited < Duration::from_secs(10),
            "closed after {waited:?}, not at the 5 s deadline"
        );
    }
    wait_for_refusals(&server, 2).unwrap();
    let lines = refusals(&server);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains("no PROXY header within 5 s")),
        "{lines:#?}"
    );
}

/// Waits for `count` "serving" lines; returns them in order.
fn serving_lines(server: &mut Running, count: usize) -> Result<Vec<String>> {
    let end = Instant::now() + DEADLINE;
    loop {
        let lines: Vec<String> = server
            .output()
            .lines()
            .filter(|l| l.contains(" serving ") && l.contains(" role="))
            .map(str::to_owned)
            .collect();
        if lines.len() >= count {
            return Ok(lines);
        }
        if Instant::now() >= end {
            bail!("no {count} serving lines:\n{}", server.output());
        }
        // Returns once output grows, or after 100 ms.
        let _ = server.wait_for_line("\u{0}never", Duration::from_millis(100));
    }
}

#[test]
fn a_peer_outside_proxy_trusted_is_closed_with_one_warn_line() {
    let dir = TempDir::new();
    // 10.0.0.0/8 is only a setting here (no traffic goes there): the test's
    // peer, 127.0.0.1, is outside it. A plain listener beside the proxy one
    // shows the server still serving.
    let cmd = binary_with(
        &dir,
        &[
            ("LISTEN", "proxy=127.0.0.1:0,127.0.0.1:0"),
            ("PROXY_TRUSTED", "10.0.0.0/8"),
        ],
    );
    let mut server = Running::spawn(cmd, "proxy-untrusted").unwrap();
    let lines = serving_lines(&mut server, 2).unwrap();
    let address = |proxy: bool| -> SocketAddr {
        lines
            .iter()
            .find(|l| (field(l, "marks") == Some("proxy")) == proxy)
            .and_then(|l| field(l, "address")?.parse().ok())
            .unwrap_or_else(|| panic!("no listener with proxy={proxy} in {lines:#?}"))
    };
    let (proxied, plain) = (address(true), address(false));

    for count in 1..=2 {
        // A valid header from an untrusted peer: closed, never read.
        let mut stream = connect(proxied).unwrap();
        let _ = stream.write_all(&[v1(CLIENT, FRONT), get("/health")].concat());
        closed_without_answer(&stream).unwrap();
        let line = wait_for_refusals(&server, count).unwrap();
        assert!(line.contains("PROXY_TRUSTED"), "{line}");
        assert!(
            line.contains("127.0.0.1:"),
            "the line names the peer: {line}"
        );
        let (status, _) = http_get(plain, "/health").unwrap();
        assert_eq!(status, 200);
    }
    assert_eq!(refusals(&server).len(), 2, "{}", server.output());
}

/// The last line of what a refused start printed.
fn last_line(stderr: &str) -> &str {
    stderr.trim_end().lines().last().unwrap_or_default()
}

#[test]
fn a_tcp_proxy_listener_needs_proxy_trusted_and_a_bad_entry_is_named() {
    let dir = TempDir::new();
    // The variables, and what the one line must name.
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: &[Case<'_>] = &[
        (&[("LISTEN", "proxy=127.0.0.1:0")], &["PROXY_TRUSTED"]),
        (&[("LISTEN", "tls+proxy=127.0.0.1:0")], &["PROXY_TRUSTED"]),
        (
            &[
                ("LISTEN", "proxy=127.0.0.1:0"),
                ("PROXY_TRUSTED", "127.0.0.1,10.0.0.0/33"),
            ],
            &["PROXY_TRUSTED", "10.0.0.0/33"],
        ),
        (
            &[
                ("LISTEN", "proxy=127.0.0.1:0"),
                ("PROXY_TRUSTED", "localhost"),
            ],
            &["PROXY_TRUSTED", "localhost"],
        ),
        // A bad entry is refused even where no listener needs it.
        (
            &[("LISTEN", "127.0.0.1:0"), ("PROXY_TRUSTED", "10.0.0.1/8x")],
            &["PROXY_TRUSTED", "10.0.0.1/8x"],
        ),
    ];
    for (vars, named) in cases {
        let (status, stderr) =
            run_to_exit(binary_with(&dir, vars), DEADLINE).expect("exits at once");
        let line = last_line(&stderr);
        assert_eq!(status.code(), Some(78), "{vars:?}: {stderr}");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{vars:?}: one line: {stderr}"
        );
        for name in *named {
            assert!(
                line.contains(name),
                "{vars:?}: {line:?} does not name {name}"
            );
        }
    }
}
