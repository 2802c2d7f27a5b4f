//! TLS with real clients: curl (HTTP/1.1, HTTP/2, Unix sockets, client
//! certificates), `openssl s_client` (ALPN, versions, serials across
//! rotation), h2load, and systemfd, against the built binary.
//!
//! Certificates are made with rcgen (`certs`) in each test's directory: a CA,
//! a server certificate for localhost/127.0.0.1 it signed, a client
//! certificate from it, and one from another CA. The tools are second-tier (`peer_tool`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::certs::{Ca, Pair, client_trusting};
use crate::support::*;

/// How long a rotation may take to reach new connections (issue 20).
const ROTATION: Duration = Duration::from_secs(10);

/// The files of one test: the CA, the server pair (serial 0x11), a client
/// pair from the CA and one from a stranger CA.
struct Certs {
    ca: Ca,
    ca_file: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    client: (PathBuf, PathBuf),
    stranger: (PathBuf, PathBuf),
}

/// Serials here are kept within 0x10..0x80: one byte, as every tool prints it.
const FIRST_SERIAL: u8 = 0x11;

impl Certs {
    fn new(dir: &TempDir) -> Self {
        let ca = Ca::new("Portkeeper Test CA");
        let stranger_ca = Ca::new("Stranger CA");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &ca.pem).unwrap();
        let (cert, key) =
            ca.server(u64::from(FIRST_SERIAL))
                .write(dir.path(), "server.pem", "server.key");
        Certs {
            ca_file,
            cert,
            key,
            client: ca.client().write(dir.path(), "client.pem", "client.key"),
            stranger: stranger_ca
                .client()
                .write(dir.path(), "stranger.pem", "stranger.key"),
            ca,
        }
    }

    /// Replaces the pair as certbot does: each file written beside, then
    /// renamed over the old one.
    fn rotate(&self, pair: &Pair) {
        pair.replace(&self.cert, &self.key);
    }
}

/// The binary on loopback with the pair of `certs` and `LISTEN=listen`.
fn tls_server(dir: &TempDir, certs: &Certs, listen: &str) -> Command {
    // LISTEN replaces HOST and API_PORT: not loopback_server.
    let mut cmd = portkeeper(dir.path());
    cmd.env("LISTEN", listen)
        .env("TLS_CERT_FILE", &certs.cert)
        .env("TLS_KEY_FILE", &certs.key);
    cmd
}

/// Waits for `count` "serving" lines; returns each listener's marks
/// (empty for a plain one) and address, in the order they were logged.
fn listeners(server: &mut Running, count: usize) -> Vec<(String, String)> {
    let ready = wait_until(DEADLINE, || {
        server.output().matches(" serving ").count() >= count
    });
    let output = server.output();
    assert!(ready, "{count} listeners did not start:\n{output}");
    output
        .lines()
        .filter(|line| line.contains(" serving "))
        .map(|line| {
            let marks = field(line, "marks").unwrap_or_default().to_owned();
            let address = field(line, "address").expect("address=").to_owned();
            (marks, address)
        })
        .collect()
}

/// The address of the only listener marked `marks`.
fn marked(listeners: &[(String, String)], marks: &str) -> String {
    listeners
        .iter()
        .find(|(m, _)| m == marks)
        .unwrap_or_else(|| panic!("no {marks:?} listener in {listeners:?}"))
        .1
        .clone()
}

fn port(address: &str) -> u16 {
    address.parse::<SocketAddr>().unwrap().port()
}

/// Runs a tool to its end within 15 s (`timeout` kills it past that).
fn bounded(tool: &Path, args: &[&str]) -> Output {
    bounded_with_input(tool, args, b"")
}

fn bounded_with_input(tool: &Path, args: &[&str], input: &[u8]) -> Output {
    let mut cmd = clean_command("timeout");
    cmd.args(["-k", "2", "15"])
        .arg(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn timeout");
    let mut stdin = child.stdin.take().unwrap();
    // A peer tool that never reads its input must not block us.
    let _ = stdin.write_all(input);
    drop(stdin);
    child.wait_with_output().unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// curl, silent but for errors, trusting the test CA.
fn curl(curl: &Path, certs: &Certs, args: &[&str]) -> Output {
    let ca = certs.ca_file.to_str().unwrap();
    let mut all = vec!["-sS", "--max-time", "10", "--cacert", ca];
    all.extend_from_slice(args);
    bounded(curl, &all)
}

/// curl's answer as status code and body, insisting it succeeded.
fn curl_ok(tool: &Path, certs: &Certs, args: &[&str]) -> (String, String) {
    let mut all = vec!["-w", "\n%{http_code} %{http_version}"];
    all.extend_from_slice(args);
    let output = curl(tool, certs, &all);
    assert!(output.status.success(), "curl {args:?}: {}", text(&output));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let (body, status) = stdout.rsplit_once('\n').unwrap();
    (status.to_owned(), body.to_owned())
}

/// `openssl s_client` to `address` with `args`, stdin closed at once (so
/// it ends after the handshake).
fn s_client(openssl: &Path, address: &str, args: &[&str]) -> Output {
    let mut all = vec!["s_client", "-connect", address, "-servername", "localhost"];
    all.extend_from_slice(args);
    bounded(openssl, &all)
}

/// The serial a new connection sees, as `openssl x509 -serial` prints it
/// (hex, upper case); `None` when the handshake failed.
fn serial_seen(openssl: &Path, address: &str) -> Option<String> {
    let output = s_client(openssl, address, &[]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let begin = stdout.find("-----BEGIN CERTIFICATE-----")?;
    let end = stdout.find("-----END CERTIFICATE-----")? + "-----END CERTIFICATE-----".len();
    let x509 = bounded_with_input(
        openssl,
        &["x509", "-noout", "-serial"],
        stdout[begin..end].as_bytes(),
    );
    let line = String::from_utf8(x509.stdout).ok()?;
    Some(line.trim().strip_prefix("serial=")?.to_owned())
}

fn hex(serial: u8) -> String {
    format!("{serial:02X}")
}

/// A counter's value in a Prometheus text page.
fn metric(page: &str, name: &str) -> f64 {
    page.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{page}"))
}

fn metrics_page(plain: &str) -> String {
    let (status, body) = http_get(plain.parse().unwrap(), "/metrics").unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

/// The built example `name` (cargo builds examples for `cargo test`).
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>")
        .join("examples")
        .join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the examples (cargo build --examples)",
        path.display()
    );
    path
}

// ---- curl: HTTP/1.1, HTTP/2, listeners of every kind ----

#[test]
fn curl_gets_health_over_http1_and_http2_and_plain_and_tls_listeners_keep_their_protocol() {
    let Some(tool) = peer_tool("curl") else {
        return;
    };
    let dir = TempDir::new();
    let certs = Certs::new(&dir);
    let cmd = tls_server(&dir, &certs, "tls=127.0.0.1:0,127.0.0.1:0");
    let mut server = Running::spawn(cmd, "tls-mixed").unwrap();
    let all = listeners(&mut server, 2);
    let (tls, plain) = (marked(&all, "tls"), marked(&all, ""));
    let secure = format!("https://localhost:{}/health", port(&tls));

    let (status, body) = curl_ok(&tool, &certs, &["--http1.1", &secure]);
    assert_eq!(status, "200 1.1");
    assert!(body.contains("\"ok\""), "{body}");
    let (status, _) = curl_ok(&tool, &certs, &["--http2", &secure]);
    assert_eq!(status, "200 2", "ALPN h2");
    let (status, _) = curl_ok(&tool, &certs, &[&format!("http://{plain}/health")]);
    assert_eq!(status, "200 1.1");

    // Each listener speaks only its own protocol.
    let crossed = curl(&tool, &certs, &[&format!("http://{tls}/health")]);
    assert!(!crossed.status.success(), "{}", text(&crossed));
    let crossed = curl(
        &tool,
        &certs,
        &[&format!("https://localhost:{}/health", port(&plain))],
    );
    assert!(!crossed.status.success(), "{}", text(&crossed));
    // The plain listener still works after the crossed attempts.
    let (status, _) = curl_ok(&tool, &certs, &[&format!("http://{plain}/health")]);
    assert_eq!(status, "200 1.1");
}

#[test]
fn curl_gets_health_over_tls_on_a_unix_socket() {
    let Some(tool) = peer_tool("curl") else {
        return;
    };
    let dir = TempDir::new();
    let certs = Certs::new(&dir);
    let socket = dir.path().join("pk.sock");
    let cmd = tls_server(&dir, &certs, &format!("tls={}", socket.display()));
    let mut server = Running::spawn(cmd, "tls-unix").unwrap();
    listeners(&mut server, 1);
    let socket = socket.to_str().unwrap();
    for version in ["--http1.1", "--http2"] {
        let (status, body) = curl_ok(
            &tool,
            &certs,
            &[version, "--unix-socket", socket, "https://localhost/health"],
        );
        assert!(status.starts_with("200 "), "{version}: {status}");
        assert!(body.contains("\"ok\""), "{body}");
    }
}

#[test]
fn an_inherited_fd_named_https_serves_tls() {
    let Some(tool) = peer_tool("curl") else {
        return;
    };
    let dir = TempDir::new();
    let certs = Certs::new(&dir);
    let listener = loopback_listener();
    let addr = listener.local_addr().unwrap();
    // Through a shell, so LISTEN_PID can be the server's own pid (exec keeps it).
    let mut cmd = clean_command("sh");
    cmd.current_dir(dir.path())
        .arg("-c")
        .arg(r#"LISTEN_PID=$$; export LISTEN_PID; exec "$0""#)
        .arg(binary())
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "https")
        .env("TLS_CERT_FILE", &certs.cert)
        .env("TLS_KEY_FILE", &certs.key);
    hand_over(&mut cmd, vec![OwnedFd::from(listener)]);
    let mut server = Running::spawn(cmd, "tls-fd").unwrap();
    let all = listeners(&mut server, 1);
    assert_eq!(all, [("tls".to_owned(), addr.to_string())]);

    let (status, _) = curl_ok(
        &tool,
        &certs,
        &[
            "--http2",
            &format!("https://localhost:{}/health", addr.port()),
        ],
    );
    assert_eq!(status, "200 2");
    let (_, info) = curl_ok(
        &tool,
        &certs,
        &[&format!("https://localhost:{}/info", addr.port())],
    );
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["listener"]["source"], "systemd", "{info}");
    assert_eq!(info["listener"]["fd_name"], "https", "{info}");
    assert_eq!(info["listener"]["tls"], true, "{info}");
}

#[test]
fn systemfd_https_with_tls_true_serves_tls() {
    let (Some(systemfd), Some(tool)) = (peer_tool("systemfd"), peer_tool("curl")) else {
        return;
    };
    let dir = TempDir::new();
    let certs = Certs::new(&dir);
    // systemfd binds the port itself: one from the test-owned range.
    let port = port_of(&owned_port_run(1)[0]);
    let mut cmd = clean_command(systemfd);
    cmd.current_dir(dir.path())
        .env("TLS", "true")
        .env("TLS_CERT_FILE", &certs.cert)
        .env("TLS_KEY_FILE", &certs.key)
        .args(["--no-pid", "-s"])
        .arg(format!("https::127.0.0.1:{port}"))
        .arg("--")
        .arg(binary());
    let mut server = Running::spawn(cmd, "systemfd-https").unwrap();
    let all = listeners(&mut server, 1);
    assert_eq!(all, [("tls".to_owned(), format!("127.0.0.1:{port}"))]);
    let (status, _) = curl_ok(
        &tool,
        &certs,
        &["--http2", &format!("https://localhost:{port}/health")],
    );
    assert_eq!(status, "200 2");
}

#[test]
fn a_redirect_listener_sends_curl_to_the_tls_port_with_path_and_query() {
    let Some(tool) = peer_tool("curl") else {
        return;
    };
    let dir = TempDir::new();
    let certs = Certs::new(&dir);
    let cmd = tls_server(&dir, &certs, "tls=127.0.0.1:0,redirect=127.0.0.1:0");
    let mut server = Running::spawn(cmd, "tls-redirect").unwrap();
    let all = listeners(&mut server, 2);
    let (tls, redirect) = (marked(&all, "tls"), marked(&all, "redirect"));

    let output = curl(
        &tool,
        &certs,
        &["-i", &format!("http://{redirect}/a/b?x=1&y=%20")],
    );
    assert!(output.status.success(), "{}", text(&output));
    let response = String::from_utf8(output.stdout).unwrap();
    assert!(response.starts_with("HTTP/1.1 308"), "{response}");
    assert_eq!(
        response_header(&response, "location"),
        Some(format!("https://{tls}/a/b?x=1&y=%20").as_str()),
        "{response}"
    );
    // Followed by curl, by name, to the real TLS listener.
    let (status, body) = curl_ok(
        &tool,
        &certs,
        &[
            "-L",
            &format!("http://localhost:{}/health", port(&redirect)),
        ],
    );
    // Over HTTPS, curl's ALPN offer gets h2.
    assert_eq!(status, "200 2");
    assert!(body.contains("\"ok\""), "{body}");
    // The TLS port in /info is the one in Location.
    let (_, info) = curl_ok(
        &tool,
        &certs,
        &[&format!("https://localhost:{}/info", port(&tls))],
    );
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    let served: Vec<&serde_json::Value> = info["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["tls"] == true)
        .map(|l| &l["address"])
        .collect();
    assert_eq!(served, [&serde_json::Value::from(tls)], "{info}");
}

// ---- openssl s_client: ALPN and versions ----

#[test]
fn s_client_negotiates_alpn_and_only_tls_1_2_and_1_3() {
    let Some(openssl) = peer_tool("openssl") else {
        return;
    };
    let dir = TempDir::new();
    let certs = Certs::new(&dir);
    let mut server =
        Running::spawn(tls_server(&dir, &certs, "tls=127.0.0.1:0"), "s_client").unwrap();
    let tls = marked(&listeners(&mut server, 1), "tls");
    let ca = certs.ca_file.to_str().unwrap();

    let alpn = |offer: &str| {
        let output = s_client(&openssl, &tls, &["-CAfile", ca, "-alpn", offer]);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            stdout.contains("Verify return code: 0 (ok)"),
            "{}",
            text(&output)
        );
        stdout
    };
    assert!(alpn("h2,http/1.1").contains("ALPN protocol: h2\n"));
    assert!(alpn("http/1.1").contains("ALPN protocol: http/1.1\n"));

    for (flag, name) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let output = s_client(&openssl, &tls, &["-CAfile", ca, flag]);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            stdout.contains(&format!("New, {name}, Cipher is")),
            "{flag}: {}",
            text(&output)
        );
    }
    // SECLEVEL=0: the client really offers the old version, so it is the
    // server that refuses (with an alert), not the client's own policy.
    for flag in ["-tls1_1", "-tls1"] {
        let output = s_client(&openssl, &tls, &[flag, "-cipher", "DEFAULT:@SECLEVEL=0"]);
        let all = text(&output);
        assert!(!output.status.success(), "{flag}: {all}");
        assert!(all.contains("alert"), "{flag}: the server's alert: {all}");
        assert!(all.contains("Cipher is (NONE)"), "{flag}: {all}");
    }
}

// ---- h2load ----

#[test]
fn h2load_over_tls_gets_every_answer_over_h2() {
    let Some(h2load) = peer_tool("h2load") else {
        return;
    };
    let dir = TempDir::new();
    let certs = Certs::new(&dir);
    let mut server = Running::spawn(tls_server(&dir, &certs, "tls=127.0.0.1:0"), "h2load").unwrap();
    let tls = marked(&listeners(&mut server, 1), "tls");
    let url = format!("https://{tls}/health");
    let output = bounded(&h2load, &["-n", "2000", "-c", "10", "-m", "10", &url]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        stdout.contains("2000 succeeded, 0 failed, 0 errored, 0 timeout"),
        "{stdout}"
    );
    assert!(stdout.contains("Application protocol: h2"), "{stdout}");
    assert!(stdout.contains("status codes: 2000 2xx"), "{stdout}");
}

// ---- mTLS ----

#[test]
fn client_certificates_from_the_ca_are_shown_to_handlers_and_others_fail_the_handshake() {
    let (Some(tool), Some(openssl)) = (peer_tool("curl"), peer_tool("openssl")) else {
        return;
    };
    let dir = TempDir::new();
    let certs = Certs::new(&dir);
    let mut cmd = clean_command(example("tls_identity"));
    cmd.current_dir(dir.path())
        .env("LISTEN", "tls=127.0.0.1:0,127.0.0.1:0")
        .env("TLS_CERT_FILE", &certs.cert)
        .env("TLS_KEY_FILE", &certs.key)
        .env("TLS_CLIENT_CA_FILE", &certs.ca_file);
    let mut server = Running::spawn(cmd, "mtls").unwrap();
    let all = listeners(&mut server, 2);
    let (tls, plain) = (marked(&all, "tls"), marked(&all, ""));
    let whoami = format!("https://localhost:{}/whoami", port(&tls));
    let (cert, key) = (
        certs.client.0.to_str().unwrap(),
        certs.client.1.to_str().unwrap(),
    );

    for version in ["--http1.1", "--http2"] {
        let (status, body) = curl_ok(
            &tool,
            &certs,
            &[version, "--cert", cert, "--key", key, &whoami],
        );
        assert!(status.starts_with("200 "), "{status}");
        assert_eq!(
            body,
            "subject=CN=alice,O=Example\n\
             san=DNS:alice.example.com\n\
             san=IP:127.0.0.1\n\
             san=email:alice@example.com\n\
             san=URI:spiffe://example.org/alice\n"
        );
    }
    // The plain listener has no client certificate to show.
    let (status, body) = http_get(plain.parse().unwrap(), "/whoami").unwrap();
    assert_eq!((status, body.as_str()), (200, "anonymous\n"));

    let before = metric(
        &metrics_page(&plain),
        "portkeeper_tls_handshakes_total{result=\"failed\"}",
    );
    // No client certificate: curl fails, and s_client gets the alert.
    let output = curl(&tool, &certs, &[&whoami]);
    assert!(!output.status.success(), "{}", text(&output));
    let output = s_client(
        &openssl,
        &tls,
        // Waits for the server's word: in TLS 1.3 it comes after the client's Finished.
        &["-ign_eof", "-CAfile", certs.ca_file.to_str().unwrap()],
    );
    let all = text(&output);
    assert!(all.contains("alert certificate required"), "{all}");
    // A certificate from another CA: refused too.
    let (cert, key) = (
        certs.stranger.0.to_str().unwrap(),
        certs.stranger.1.to_str().unwrap(),
    );
    let output = curl(&tool, &certs, &["--cert", cert, "--key", key, &whoami]);
    assert!(!output.status.success(), "{}", text(&output));
    let output = s_client(
        &openssl,
        &tls,
        &[
            "-ign_eof",
            "-cert",
            cert,
            "-key",
            key,
            "-CAfile",
            certs.ca_file.to_str().unwrap(),
        ],
    );
    let all = text(&output);
    assert!(all.contains("alert"), "{all}");
    assert!(!all.contains("subject=CN=alice"), "{all}");

    // Each of the four shows in the metrics (the server counts a failure
    // as the connection ends: wait for it).
    let counted = wait_until(DEADLINE, || {
        metric(
            &metrics_page(&plain),
            "portkeeper_tls_handshakes_total{result=\"failed\"}",
        ) >= before + 4.0
    });
    assert!(counted, "{}", metrics_page(&plain));
}

// ---- rotation ----

/// Waits until a new connection sees `serial`, within [`ROTATION`].
fn await_serial(openssl: &Path, address: &str, serial: u8) -> Duration {
    let start = Instant::now();
    let mut seen = None;
    let arrived = wait_until(ROTATION, || {
        seen = serial_seen(openssl, address);
        seen.as_deref() == Some(hex(serial).as_str())
    });
    assert!(
        arrived,
        "serial {} not served within {ROTATION:?}; last seen {seen:?}",
        hex(serial)
    );
    start.elapsed()
}

/// A raw TLS connection (rustls, ring) that stays open: HTTP/1.1 keep-alive.
struct Held {
    stream: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

impl Held {
    fn open(certs: &Certs, address: &str) -> Self {
        let mut config = client_trusting(certs.ca.der.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let tcp = TcpStream::connect(address).unwrap();
        tcp.set_read_timeout(Some(DEADLINE)).unwrap();
        Held {
            stream: rustls::StreamOwned::new(connection, tcp),
        }
    }

    /// GET /health on this connection; the status line.
    fn health(&mut self) -> String {
        self.stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            self.stream.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        let length: usize = response_header(&head, "content-length")
            .expect("content-length")
            .parse()
            .unwrap();
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).unwrap();
        head.lines().next().unwrap().to_owned()
    }

    /// The serial of the certificate this connection was made with.
    fn serial(&self) -> String {
        let der = &self.stream.conn.peer_certificates().unwrap()[0];
        let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
        cert.raw_serial_as_string().replace(':', "").to_uppercase()
    }
}

#[test]
fn rotated_pairs_reach_new_connections_a_bad_pair_is_refused_and_held_connections_live_on() {
    let Some(openssl) = peer_tool("openssl") else {
        return;
    };
    let dir = TempDir::new();
    let certs = Certs::new(&dir);
    let cmd = tls_server(&dir, &certs, "tls=127.0.0.1:0,127.0.0.1:0");
    let mut server = Running::spawn(cmd, "rotation").unwrap();
    let all = listeners(&mut server, 2);
    let (tls, plain) = (marked(&all, "tls"), marked(&all, ""));
    assert_eq!(serial_seen(&openssl, &tls), Some(hex(FIRST_SERIAL)));

    let mut held = Held::open(&certs, &tls);
    assert_eq!(held.health(), "HTTP/1.1 200 OK");
    assert_eq!(held.serial(), hex(FIRST_SERIAL));

    let mut serial = FIRST_SERIAL;
    let mut took = Vec::new();
    for _ in 0..3 {
        serial += 1;
        certs.rotate(&certs.ca.server(u64::from(serial)));
        took.push(await_serial(&openssl, &tls, serial));
        // The connection made before every rotation still answers, with its pair.
        assert_eq!(held.health(), "HTTP/1.1 200 OK");
        assert_eq!(held.serial(), hex(FIRST_SERIAL));
    }
    eprintln!("rotations reached new connections after {took:?}");
    let page = metrics_page(&plain);
    assert_eq!(
        metric(
            &page,
            "portkeeper_tls_certificate_reloads_total{result=\"ok\"}"
        ),
        3.0
    );

    // A key that does not match: refused, one line naming the key file.
    let good = serial;
    let mismatched = Pair {
        key: certs.ca.server(u64::from(good + 2)).key,
        ..certs.ca.server(u64::from(good + 1))
    };
    certs.rotate(&mismatched);
    let line = server.wait_for_line("not reloaded", ROTATION).unwrap();
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains("TLS_KEY_FILE"), "{line}");
    assert!(line.contains(certs.key.to_str().unwrap()), "{line}");
    let page = metrics_page(&plain);
    assert_eq!(
        metric(
            &page,
            "portkeeper_tls_certificate_reloads_total{result=\"refused\"}"
        ),
        1.0
    );
    assert_eq!(serial_seen(&openssl, &tls), Some(hex(good)));
    assert_eq!(held.health(), "HTTP/1.1 200 OK");
    assert_eq!(
        server.output().matches("not reloaded").count(),
        1,
        "one line for one bad pair"
    );

    // A good pair after the bad one is served again.
    serial = good + 3;
    certs.rotate(&certs.ca.server(u64::from(serial)));
    await_serial(&openssl, &tls, serial);
    assert_eq!(held.health(), "HTTP/1.1 200 OK");
}

// ---- bad input ----

/// Runs the binary with `vars` (paths in the test's directory) and expects
/// exit 78 with one line that contains every one of `needles`.
fn refused(dir: &TempDir, vars: &[(&str, &Path)], needles: &[&str]) -> String {
    let mut cmd = if vars.iter().any(|(name, _)| *name == "LISTEN") {
        portkeeper(dir.path())
    } else {
        loopback_server(dir)
    };
    for (name, value) in vars {
        cmd.env(name, value);
    }
    let (status, stderr) = run_to_exit(cmd, DEADLINE).unwrap();
    assert_eq!(status.code(), Some(78), "{vars:?}: {stderr}");
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "{vars:?}: one line: {stderr}"
    );
    for needle in needles {
        assert!(stderr.contains(needle), "{vars:?}: {needle:?} in {stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn every_bad_tls_setting_stops_the_start_with_one_line_naming_it() {
    let dir = TempDir::new();
    let certs = Certs::new(&dir);
    let tls_listen = Path::new("tls=127.0.0.1:0");
    let missing = dir.path().join("missing.pem");
    let malformed = dir.path().join("malformed.pem");
    std::fs::write(
        &malformed,
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not PEM at all\n").unwrap();
    let other_key = dir.path().join("other.key");
    std::fs::write(&other_key, certs.ca.server(0x7f).key).unwrap();
    let cert = certs.cert.as_path();
    let key = certs.key.as_path();
    let path = |p: &Path| p.to_str().unwrap().to_owned();

    // A TLS listener and no pair at all.
    refused(&dir, &[("LISTEN", tls_listen)], &["TLS_CERT_FILE"]);
    refused(&dir, &[("TLS", Path::new("true"))], &["TLS_CERT_FILE"]);
    // A missing certificate file.
    refused(
        &dir,
        &[
            ("LISTEN", tls_listen),
            ("TLS_CERT_FILE", &missing),
            ("TLS_KEY_FILE", key),
        ],
        &["TLS_CERT_FILE", &path(&missing)],
    );
    // Malformed PEM: a block that is no certificate, and no PEM at all.
    refused(
        &dir,
        &[
            ("LISTEN", tls_listen),
            ("TLS_CERT_FILE", &malformed),
            ("TLS_KEY_FILE", key),
        ],
        &["TLS_CERT_FILE", &path(&malformed)],
    );
    refused(
        &dir,
        &[
            ("LISTEN", tls_listen),
            ("TLS_CERT_FILE", &garbage),
            ("TLS_KEY_FILE", key),
        ],
        &["TLS_CERT_FILE", &path(&garbage)],
    );
    refused(
        &dir,
        &[
            ("LISTEN", tls_listen),
            ("TLS_CERT_FILE", cert),
            ("TLS_KEY_FILE", &garbage),
        ],
        &["TLS_KEY_FILE", &path(&garbage)],
    );
    // A key that is not the certificate's.
    let line = refused(
        &dir,
        &[
            ("LISTEN", tls_listen),
            ("TLS_CERT_FILE", cert),
            ("TLS_KEY_FILE", &other_key),
        ],
        &["TLS_KEY_FILE", &path(&other_key), "does not match"],
    );
    assert_no_key_material(&line, &[&other_key], "the mismatch error");
    // Half a pair.
    refused(
        &dir,
        &[("LISTEN", tls_listen), ("TLS_CERT_FILE", cert)],
        &["TLS_KEY_FILE"],
    );
    // A malformed client CA file.
    refused(
        &dir,
        &[
            ("LISTEN", tls_listen),
            ("TLS_CERT_FILE", cert),
            ("TLS_KEY_FILE", key),
            ("TLS_CLIENT_CA_FILE", &malformed),
        ],
        &["TLS_CLIENT_CA_FILE", &path(&malformed)],
    );
    // A redirect listener with no TLS listener to send to.
    refused(
        &dir,
        &[("LISTEN", Path::new("redirect=127.0.0.1:0,127.0.0.1:0"))],
        &["LISTEN", "redirect"],
    );
    // A misspelt mark.
    refused(
        &dir,
        &[
            ("LISTEN", Path::new("tsl=127.0.0.1:0")),
            ("TLS_CERT_FILE", cert),
            ("TLS_KEY_FILE", key),
        ],
        &["LISTEN", "tsl"],
    );
}

/// Asserts that no line of the PEM bodies of `keys` appears in `text`.
fn assert_no_key_material(text: &str, keys: &[&Path], what: &str) {
    for key in keys {
        let pem = std::fs::read_to_string(key).unwrap();
        for line in pem.lines().filter(|l| !l.starts_with("-----")) {
            // A short last line could occur by chance; 16 characters cannot.
            if line.len() >= 16 {
                assert!(
                    !text.contains(line),
                    "{what} shows key material of {}: {line}",
                    key.display()
                );
            }
        }
    }
}

#[test]
fn key_material_never_shows_at_log_level_trace() {
    let (Some(tool), Some(openssl)) = (peer_tool("curl"), peer_tool("openssl")) else {
        return;
    };
    let dir = TempDir::new();
    let certs = Certs::new(&dir);
    // Kept aside: the files themselves are replaced below.
    let first_key = dir.path().join("first.key");
    std::fs::copy(&certs.key, &first_key).unwrap();
    let mut cmd = tls_server(&dir, &certs, "tls=127.0.0.1:0,127.0.0.1:0");
    cmd.env("LOG_LEVEL", "trace");
    let mut server = Running::spawn(cmd, "trace").unwrap();
    let all = listeners(&mut server, 2);
    let (tls, plain) = (marked(&all, "tls"), marked(&all, ""));
    for version in ["--http1.1", "--http2"] {
        curl_ok(
            &tool,
            &certs,
            &[version, &format!("https://localhost:{}/health", port(&tls))],
        );
    }
    serial_seen(&openssl, &tls);

    let bad = Pair {
        key: certs.ca.server(0x31).key,
        ..certs.ca.server(0x30)
    };
    certs.rotate(&bad);
    let bad_key = dir.path().join("bad.key");
    std::fs::write(&bad_key, &bad.key).unwrap();
    server.wait_for_line("not reloaded", ROTATION).unwrap();

    let (_, info) = http_get(plain.parse().unwrap(), "/info").unwrap();
    let metrics = metrics_page(&plain);
    server.signal("TERM").unwrap();
    let status = server.wait_exit(DEADLINE).unwrap();
    assert!(status.success(), "{status}");

    let output = server.output();
    assert!(output.contains("TRACE"), "trace lines were logged");
    let keys: [&Path; 2] = [&first_key, &bad_key];
    assert_no_key_material(&output, &keys, "the output");
    assert_no_key_material(&info, &keys, "/info");
    assert_no_key_material(&metrics, &keys, "/metrics");
}
