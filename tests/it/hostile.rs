//! Clients that try to hold the server (issue 21): HTTP/2 windows never
//! opened, idle HTTP/2 connections, more connections than `MAX_CONNECTIONS`,
//! requests with two `Host` headers. The built binary, on loopback.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::support::*;

/// Starts the binary on a kernel-chosen loopback port with `vars`.
fn server(dir: &TempDir, label: &str, vars: &[(&str, &str)]) -> (Running, SocketAddr) {
    let mut cmd = loopback_server(dir);
    for (name, value) in vars {
        cmd.env(name, value);
    }
    let mut running = Running::spawn(cmd, label).unwrap();
    let addr = running.serving_address().unwrap();
    (running, addr)
}

/// The value of an unlabelled metric in `/metrics`' text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// `GET /metrics` over a fresh connection.
fn scrape(addr: SocketAddr) -> String {
    let (status, body) = http_get(addr, "/metrics").unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

/// RFC 9112, section 3.2: a request with more than one `Host` is a 400.
#[test]
fn two_host_headers_are_refused_with_400() {
    let dir = TempDir::new();
    let (_server, addr) = server(&dir, "two-hosts", &[]);
    for (hosts, status) in [("Host: a\r\n", "200"), ("Host: a\r\nHost: b\r\n", "400")] {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        write!(
            stream,
            "GET /health HTTP/1.1\r\n{hosts}Connection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(
            response.starts_with(&format!("HTTP/1.1 {status} ")),
            "{hosts:?}: {response}"
        );
    }
}

/// An HTTP/2 frame's type, as the wire has it.
const GOAWAY: u8 = 0x7;

/// An HTTP/2 connection (prior knowledge) idle past `HEADER_READ_TIMEOUT`
/// is told to go away (a GOAWAY frame) before it is closed, rather than
/// dropped without a word.
#[test]
fn an_idle_http2_connection_gets_a_goaway_before_it_is_closed() {
    let dir = TempDir::new();
    let (_server, addr) = server(&dir, "h2-idle", &[("HEADER_READ_TIMEOUT", "1")]);
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    // The preface and an empty SETTINGS frame; then nothing.
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .unwrap();
    stream.write_all(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]).unwrap();
    let started = Instant::now();
    let mut types = Vec::new();
    loop {
        let mut header = [0; 9];
        match stream.read_exact(&mut header) {
            Ok(()) => {}
            // The end of the connection (EOF or a reset).
            Err(err) if err.kind() != std::io::ErrorKind::WouldBlock => break,
            Err(err) => panic!("the connection is still open after {DEADLINE:?}: {err}"),
        }
        let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let mut payload = vec![0; length];
        stream.read_exact(&mut payload).unwrap();
        types.push(header[3]);
        if header[3] == GOAWAY {
            // Error code NO_ERROR: a graceful goodbye.
            assert_eq!(&payload[4..8], &[0, 0, 0, 0], "{payload:?}");
        }
    }
    assert!(
        types.contains(&GOAWAY),
        "closed after {:?} without a GOAWAY; frame types {types:?}",
        started.elapsed()
    );
}

/// 4 HTTP/2 connections of 10 streams each, from a client whose stream
/// windows start at 0 and never open: no response can be sent. Each
/// connection is closed at `WRITE_TIMEOUT`, and the server's open
/// connections and requests in flight go back to where they were.
#[test]
fn http2_clients_that_never_open_their_window_are_closed_at_the_write_timeout() {
    use http_body_util::Empty;
    use hyper::body::Bytes;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    const CONNECTIONS: usize = 4;
    const STREAMS: usize = 10;
    let dir = TempDir::new();
    let (_server, addr) = server(&dir, "h2-window", &[("WRITE_TIMEOUT", "1")]);
    let before = scrape(addr);
    let open_before = metric(&before, "portkeeper_open_connections").unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut clients = Vec::new();
        // Kept: a client whose senders are all dropped ends the connection itself.
        let mut senders = Vec::new();
        let mut responses = Vec::new();
        for _ in 0..CONNECTIONS {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut sender, connection) =
                hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                    .initial_stream_window_size(0)
                    .handshake(TokioIo::new(stream))
                    .await
                    .unwrap();
            clients.push(tokio::spawn(connection));
            for _ in 0..STREAMS {
                let request = hyper::Request::get(format!("http://{addr}/health"))
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                // The heads arrive (headers are not flow-controlled); the
                // bodies cannot, and are never read.
                let response = tokio::time::timeout(DEADLINE, sender.send_request(request))
                    .await
                    .expect("the response head arrives")
                    .unwrap();
                assert_eq!(response.status(), 200);
                responses.push(response);
            }
            senders.push(sender);
        }
        let during = scrape(addr);
        assert_eq!(
            metric(&during, "portkeeper_open_connections"),
            Some(open_before + CONNECTIONS as f64),
            "{during}"
        );
        for client in clients {
            tokio::time::timeout(DEADLINE, client)
                .await
                .expect("the server closes the connection")
                .unwrap()
                .ok();
        }
    });
    // The server counts a connection closed once its task has dropped it,
    // a moment after the client saw the end: look again for a while.
    let end = Instant::now() + DEADLINE;
    let after = loop {
        let text = scrape(addr);
        let back = metric(&text, "portkeeper_open_connections") == Some(open_before)
            && metric(&text, "portkeeper_http_requests_in_flight") == Some(1.0);
        if back || Instant::now() > end {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        metric(&after, "portkeeper_open_connections"),
        Some(open_before),
        "{after}"
    );
    // The scrape itself is the one request in flight.
    assert_eq!(
        metric(&after, "portkeeper_http_requests_in_flight"),
        Some(1.0),
        "{after}"
    );
    assert_eq!(
        metric(&after, "portkeeper_write_timeouts_total"),
        Some(CONNECTIONS as f64),
        "{after}"
    );
}

/// Sends `GET /health` on a keep-alive connection and reads the response
/// (its body is short and has a Content-Length).
fn health(stream: &mut TcpStream) -> std::io::Result<String> {
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")?;
    read_response(stream)
}

/// Reads one response with a Content-Length body.
fn read_response(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut read = Vec::new();
    let mut byte = [0];
    while !read.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte)?;
        read.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&read).into_owned();
    let length = response_header(&head, "content-length")
        .and_then(|value| value.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    stream.read_exact(&mut body)?;
    Ok(head + &String::from_utf8_lossy(&body))
}

/// With `MAX_CONNECTIONS=2`, a third connection waits in the kernel's queue,
/// unserved, until one of the two closes; reaching the cap is logged once.
#[test]
fn max_connections_keeps_the_next_connection_waiting_until_one_closes() {
    let dir = TempDir::new();
    let (server, addr) = server(&dir, "max-conn", &[("MAX_CONNECTIONS", "2")]);
    let connect = || {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream
    };
    let (mut first, mut second) = (connect(), connect());
    assert!(health(&mut first).unwrap().starts_with("HTTP/1.1 200"));
    assert!(health(&mut second).unwrap().starts_with("HTTP/1.1 200"));
    // The kernel completes the handshake; the server does not accept.
    let mut third = connect();
    third
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut fourth = connect();
    fourth
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    // Not served while two are open: nothing comes within a second (the
    // test cannot wait for something not to happen; a second is plenty for
    // an answer that would come at once).
    third
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut byte = [0];
    let early = third.read(&mut byte);
    assert!(
        matches!(&early, Err(err) if err.kind() == std::io::ErrorKind::WouldBlock),
        "the third connection was served while two were open: {early:?}"
    );
    third.set_read_timeout(Some(DEADLINE)).unwrap();
    let text = {
        second
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        read_response(&mut second).unwrap()
    };
    assert_eq!(
        metric(&text, "portkeeper_max_connections"),
        Some(2.0),
        "{text}"
    );
    assert!(
        metric(&text, "portkeeper_connection_limit_reached_total").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    // One closes: the third is accepted and answered.
    drop(first);
    let answer = read_response(&mut third).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(third);
    let answer = read_response(&mut fourth).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let logged = server.stderr().matches("MAX_CONNECTIONS reached").count();
    assert_eq!(logged, 1, "{}", server.stderr());
}
