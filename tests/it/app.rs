//! The crate serving a real app: `examples/notes.rs` (a JSON API, server-sent
//! events, a WebSocket echo) run as a process, and each promise of the serving
//! core checked against it over real sockets.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::*;

/// The built `notes` example (cargo builds examples for `cargo test`).
pub(crate) fn notes_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/it-<hash> -> target/<profile>/examples/notes
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let path = profile_dir.join("examples").join("notes");
    assert!(
        path.is_file(),
        "{} is missing: build the examples (cargo test does)",
        path.display()
    );
    path
}

/// The notes app on 127.0.0.1 with a kernel-chosen port, in `dir`.
pub(crate) fn notes(dir: &TempDir) -> Command {
    let mut cmd = clean_command(notes_binary());
    cmd.current_dir(dir.path())
        .env("HOST", "127.0.0.1")
        .env("API_PORT", "0");
    cmd
}

/// A runtime for the async clients (HTTP/2, WebSocket).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A raw HTTP/1.1 request with a body over a fresh connection; returns the
/// raw response and the client's own address.
fn post(addr: SocketAddr, path: &str, body: &[u8], chunked: bool) -> Result<(String, SocketAddr)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(DEADLINE))?;
    let local = stream.local_addr()?;
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_owned()
    } else {
        format!("Content-Length: {}", body.len())
    };
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\n{framing}\r\n\r\n"
    )?;
    // The server may answer 413 and close before the whole body is sent.
    let sent = if chunked {
        stream
            .write_all(format!("{:x}\r\n", body.len()).as_bytes())
            .and_then(|()| stream.write_all(body))
            .and_then(|()| stream.write_all(b"\r\n0\r\n\r\n"))
    } else {
        stream.write_all(body)
    };
    let mut response = Vec::new();
    let read = stream.read_to_end(&mut response);
    if response.is_empty() {
        sent?;
        read?;
    }
    Ok((String::from_utf8_lossy(&response).into_owned(), local))
}

/// A JSON note whose text makes the whole body `len` bytes long.
fn note_of_len(len: usize) -> Vec<u8> {
    let prefix = br#"{"text":""#;
    let suffix = br#""}"#;
    let mut body = prefix.to_vec();
    body.resize(len - suffix.len(), b'x');
    body.extend_from_slice(suffix);
    body
}

#[test]
fn handlers_see_the_peer_address() {
    let dir = TempDir::new();
    let mut server = Running::spawn(notes(&dir), "notes-peer").unwrap();
    let addr = server.serving_address().unwrap();
    let (response, local) = post(addr, "/notes", br#"{"text":"milk"}"#, false).unwrap();
    let (status, body) = parse_response(&response).unwrap();
    assert_eq!(status, 201, "{response}");
    let note: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(note["created_by"], local.to_string());
    assert_eq!(note["text"], "milk");
}

#[test]
fn max_body_bytes_is_the_extractors_limit_above_and_below_axums_default() {
    const MIB: usize = 1024 * 1024;
    let dir = TempDir::new();
    // Above axum's own 2 MiB default: a 3 MiB JSON body reaches the handler.
    let mut large = notes(&dir);
    large.env("MAX_BODY_BYTES", (4 * MIB).to_string());
    let mut server = Running::spawn(large, "notes-4mib").unwrap();
    let addr = server.serving_address().unwrap();
    for chunked in [false, true] {
        let (response, _) = post(addr, "/notes", &note_of_len(3 * MIB), chunked).unwrap();
        assert!(
            response.starts_with("HTTP/1.1 201"),
            "3 MiB under a 4 MiB limit (chunked: {chunked}): {}",
            &response[..response.len().min(200)]
        );
        let (over, _) = post(addr, "/notes", &note_of_len(4 * MIB + 1), chunked).unwrap();
        assert!(over.starts_with("HTTP/1.1 413"), "{over:.200}");
    }
    drop(server);

    // Below it: 1 KiB is the limit, declared or streamed.
    let mut small = notes(&dir);
    small.env("MAX_BODY_BYTES", "1024");
    let mut server = Running::spawn(small, "notes-1kib").unwrap();
    let addr = server.serving_address().unwrap();
    for chunked in [false, true] {
        let (within, _) = post(addr, "/notes", &note_of_len(1024), chunked).unwrap();
        assert!(within.starts_with("HTTP/1.1 201"), "{within:.200}");
        let (over, _) = post(addr, "/notes", &note_of_len(2048), chunked).unwrap();
        assert!(
            over.starts_with("HTTP/1.1 413"),
            "2 KiB over a 1 KiB limit (chunked: {chunked}): {over:.200}"
        );
    }
}

/// Reads server-sent events from a raw HTTP/1.1 stream until it ends;
/// returns the JSON of each `data:` line.
fn read_events(stream: TcpStream) -> Result<Vec<serde_json::Value>> {
    let mut reader = BufReader::new(stream);
    let mut events = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        if let Some(data) = line.trim_end().strip_prefix("data: ") {
            events.push(serde_json::from_str(data).with_context(|| format!("event {data:?}"))?);
        }
        // The chunked terminator: the stream is over.
        if line == "0\r\n" {
            break;
        }
    }
    Ok(events)
}

fn open_events(addr: SocketAddr, count: u32, every_ms: u64) -> Result<TcpStream> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(DEADLINE))?;
    write!(
        stream,
        "GET /events?count={count}&every_ms={every_ms} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    Ok(stream)
}

#[test]
fn a_stream_longer_than_the_header_timeout_arrives_whole() {
    let dir = TempDir::new();
    let mut cmd = notes(&dir);
    cmd.env("HEADER_READ_TIMEOUT", "1");
    let mut server = Running::spawn(cmd, "notes-sse").unwrap();
    let addr = server.serving_address().unwrap();
    let started = Instant::now();
    let events = read_events(open_events(addr, 4, 1000).unwrap()).unwrap();
    let took = started.elapsed();
    assert_eq!(events.len(), 4, "{events:?}");
    assert_eq!(events[3]["n"], 3);
    assert!(took >= Duration::from_secs(3), "streamed for {took:?}");
}

#[test]
fn http2_with_prior_knowledge_and_http1_share_the_listener() {
    let dir = TempDir::new();
    let mut server = Running::spawn(notes(&dir), "notes-h2").unwrap();
    let addr = server.serving_address().unwrap();
    runtime().block_on(async {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("an HTTP/2 handshake");
        tokio::spawn(connection);
        for path in ["/notes", "/health"] {
            let request = hyper::Request::get(format!("http://{addr}{path}"))
                .body(Empty::<Bytes>::new())
                .unwrap();
            let response = sender.send_request(request).await.unwrap();
            assert_eq!(response.version(), hyper::Version::HTTP_2);
            assert_eq!(response.status(), 200, "{path}");
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert!(body.starts_with(b"[") || body.starts_with(b"{"), "{body:?}");
        }
    });
    assert_eq!(http_get(addr, "/notes").unwrap(), (200, "[]".to_owned()));
}

#[test]
fn a_websocket_upgrade_echoes() {
    let dir = TempDir::new();
    let mut server = Running::spawn(notes(&dir), "notes-ws").unwrap();
    let addr = server.serving_address().unwrap();
    runtime().block_on(async {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .expect("a WebSocket upgrade");
        let greeting = ws.next().await.unwrap().unwrap();
        assert_eq!(
            greeting,
            Message::text(format!("connected to pid {}", server.pid()))
        );
        ws.send(Message::text("ping 1")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("ping 1"));
    });
}

#[test]
fn builtin_routes_answer_first_and_move_with_the_builder() {
    let dir = TempDir::new();
    let mut plain = Running::spawn(notes(&dir), "notes-builtins").unwrap();
    let addr = plain.serving_address().unwrap();
    let health = get_json(addr, "/health").unwrap();
    assert_eq!(health, serde_json::json!({ "status": "ok" }));
    drop(plain);

    let mut cmd = notes(&dir);
    cmd.env("NOTES_BUILTINS_AT", "/_portkeeper");
    let mut moved = Running::spawn(cmd, "notes-moved").unwrap();
    let addr = moved.serving_address().unwrap();
    assert_eq!(get_json(addr, "/health").unwrap()["notes"], 0);
    let info = get_json(addr, "/_portkeeper/info").unwrap();
    assert_eq!(info["pid"], moved.pid());
    assert_eq!(http_get(addr, "/info").unwrap().0, 404);

    let mut cmd = notes(&dir);
    cmd.env("NOTES_BUILTINS_AT", "_portkeeper/");
    let (status, stderr) = run_to_exit(cmd, DEADLINE).unwrap();
    assert_eq!(status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("builtin_routes_at"), "{stderr}");
}

/// An HTTP/2 client with a stream open when the stop begins: the stream
/// finishes, the connection gets GOAWAY (no new stream is accepted on it),
/// and the server exits 0 without waiting for SHUTDOWN_TIMEOUT.
#[test]
fn http2_connections_get_goaway_and_finish_their_streams_on_stop() {
    let dir = TempDir::new();
    let mut server = Running::spawn(notes(&dir), "notes-h2-stop").unwrap();
    let addr = server.serving_address().unwrap();
    let rt = runtime();
    let (mut sender, streaming, connection) = rt.block_on(async {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        let connection = tokio::spawn(connection);
        let request = hyper::Request::get(format!("http://{addr}/events?count=3&every_ms=500"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        (sender, response, connection)
    });
    server.signal("TERM").unwrap();
    server.wait_for_line("stop requested", DEADLINE).unwrap();
    rt.block_on(async {
        let body = streaming.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&body);
        assert_eq!(text.matches("data: ").count(), 3, "{text}");
        let late = hyper::Request::get(format!("http://{addr}/notes"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        assert!(
            sender.send_request(late).await.is_err(),
            "a new stream after GOAWAY must be refused"
        );
        tokio::time::timeout(DEADLINE, connection)
            .await
            .expect("the server closes the connection")
            .unwrap()
            .unwrap();
    });
    let started = Instant::now();
    assert!(server.wait_exit(DEADLINE).unwrap().success());
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// How the server under test was started, for the upgrade test.
enum Start {
    Plain,
    Systemfd(PathBuf),
}

/// A WebSocket and an SSE stream open through a binary upgrade: both finish
/// on the old process, new connections reach the new one, nothing is refused.
fn long_lived_connections_finish_on_the_old_process(start: Start) -> Result<()> {
    let dir = TempDir::new();
    let cmd = match &start {
        Start::Plain => notes(&dir),
        Start::Systemfd(tool) => {
            let port = port_of(&owned_port_run(1)[0]);
            let mut cmd = clean_command(tool);
            cmd.current_dir(dir.path())
                .args(["--no-pid", "-b", "128", "-s"])
                .arg(format!("http::127.0.0.1:{port}"))
                .arg("--")
                .arg(notes_binary());
            cmd
        }
    };
    let mut launcher = Running::spawn(cmd, "notes-upgrade")?;
    let addr = launcher.serving_address()?;
    let first = get_json(addr, "/info")?;
    let old_pid = first["pid"].as_u64().context("pid")?;
    if let Start::Systemfd(_) = start {
        assert_eq!(first["listener"]["source"], "systemfd");
    }

    let rt = runtime();
    let mut ws = rt.block_on(async {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await?;
        let greeting = ws.next().await.context("greeting")??;
        anyhow::ensure!(greeting == Message::text(format!("connected to pid {old_pid}")));
        Ok::<_, anyhow::Error>(ws)
    })?;
    let events = std::thread::spawn(move || read_events(open_events(addr, 12, 250)?));

    let kill = Command::new("kill")
        .args(["-USR2", &old_pid.to_string()])
        .status()?;
    anyhow::ensure!(kill.success());
    // Every request during the handoff must be answered.
    let end = Instant::now() + DEADLINE;
    let new_pid = loop {
        let pid = get_json(addr, "/info")?["pid"].as_u64().context("pid")?;
        if pid != old_pid {
            break pid;
        }
        if Instant::now() > end {
            bail!("no successor within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let successor = Successor(u32::try_from(new_pid)?);

    // The old process's WebSocket says "going away" (the app awaits
    // portkeeper::Stopping), and a new one reaches the new process.
    rt.block_on(async {
        let code = close_code(&mut ws).await?;
        anyhow::ensure!(code == Some(CloseCode::Away), "{code:?}");
        let (mut fresh, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await?;
        let greeting = fresh.next().await.context("greeting")??;
        anyhow::ensure!(greeting == Message::text(format!("connected to pid {new_pid}")));
        fresh.close(None).await?;
        Ok::<_, anyhow::Error>(())
    })?;
    let events = events.join().expect("the SSE reader")?;
    assert_eq!(events.len(), 12, "every event arrives: {events:?}");
    assert!(
        events.iter().all(|e| e["pid"] == old_pid),
        "the stream stays with the old process: {events:?}"
    );
    // The old process leaves once its last long-lived connection is done.
    if let Start::Plain = start {
        assert!(launcher.wait_exit(DEADLINE)?.success());
    } else {
        let end = Instant::now() + DEADLINE;
        while !has_exited(u32::try_from(old_pid)?) {
            if Instant::now() > end {
                bail!("old pid {old_pid} still running");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert_eq!(get_json(addr, "/info")?["pid"], successor.0);
    Ok(())
}

/// The close code of the first close frame `ws` receives (other messages skipped).
async fn close_code<S>(ws: &mut S) -> Result<Option<CloseCode>>
where
    S: futures_util::Stream<Item = tokio_tungstenite::tungstenite::Result<Message>> + Unpin,
{
    loop {
        match tokio::time::timeout(DEADLINE, ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => return Ok(frame.map(|f| f.code)),
            Ok(Some(Ok(_))) => {}
            other => bail!("expected a close frame, got {other:?}"),
        }
    }
}

/// Issue 19.6: with 50 WebSockets open, a binary upgrade no longer waits
/// `SHUTDOWN_TIMEOUT` (60 s here): each WebSocket hears "going away" as the
/// handoff begins, the old process exits once they are closed, and every
/// client reconnects to the new process.
#[test]
fn fifty_websockets_go_away_on_an_upgrade_and_reconnect_to_the_successor() -> Result<()> {
    const SOCKETS: usize = 50;
    let dir = TempDir::new();
    let mut cmd = notes(&dir);
    cmd.env("SHUTDOWN_TIMEOUT", "60");
    let mut launcher = Running::spawn(cmd, "notes-50-ws")?;
    let addr = launcher.serving_address()?;
    let old_pid = get_json(addr, "/info")?["pid"].as_u64().context("pid")?;
    let rt = runtime();
    let mut sockets = rt.block_on(async {
        let mut sockets = Vec::new();
        for _ in 0..SOCKETS {
            let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await?;
            let greeting = ws.next().await.context("greeting")??;
            anyhow::ensure!(greeting == Message::text(format!("connected to pid {old_pid}")));
            sockets.push(ws);
        }
        Ok::<_, anyhow::Error>(sockets)
    })?;
    anyhow::ensure!(
        Command::new("kill")
            .args(["-USR2", &old_pid.to_string()])
            .status()?
            .success()
    );
    let end = Instant::now() + DEADLINE;
    let new_pid = loop {
        let pid = get_json(addr, "/info")?["pid"].as_u64().context("pid")?;
        if pid != old_pid {
            break pid;
        }
        anyhow::ensure!(Instant::now() < end, "no successor within {DEADLINE:?}");
        std::thread::sleep(Duration::from_millis(10));
    };
    let successor_seen = Instant::now();
    let _successor = Successor(u32::try_from(new_pid)?);
    let old = u32::try_from(old_pid)?;
    let old_exit = std::thread::spawn(move || {
        while !has_exited(old) && successor_seen.elapsed() < DEADLINE {
            std::thread::sleep(Duration::from_millis(5));
        }
        successor_seen.elapsed()
    });
    let (going_away, reconnected) = rt.block_on(async {
        let mut going_away = 0;
        let mut reconnected = 0;
        for ws in &mut sockets {
            if close_code(ws).await? == Some(CloseCode::Away) {
                going_away += 1;
            }
            let (mut fresh, _) =
                tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await?;
            let greeting = fresh.next().await.context("greeting")??;
            if greeting == Message::text(format!("connected to pid {new_pid}")) {
                reconnected += 1;
            }
            fresh.close(None).await?;
        }
        Ok::<_, anyhow::Error>((going_away, reconnected))
    })?;
    let status = launcher.wait_exit(DEADLINE)?;
    let old_exit = old_exit.join().expect("the exit watch");
    println!(
        "50 WebSockets through an upgrade: {going_away} heard going away, {reconnected} reconnected to the new process; the old process exited {} ms after the successor answered (SHUTDOWN_TIMEOUT=60 s)",
        old_exit.as_millis()
    );
    assert!(status.success(), "{status:?}");
    assert_eq!(going_away, SOCKETS);
    assert_eq!(reconnected, SOCKETS);
    Ok(())
}

#[test]
fn an_sse_stream_finishes_on_the_old_process_and_a_websocket_goes_away_on_an_upgrade() {
    long_lived_connections_finish_on_the_old_process(Start::Plain).unwrap();
}

#[test]
fn the_same_under_systemfd() {
    let Some(tool) = peer_tool("systemfd") else {
        return;
    };
    long_lived_connections_finish_on_the_old_process(Start::Systemfd(tool)).unwrap();
}
