//! A host program that embeds portkeeper the way a real application would:
//! its own `#[tokio::main]`, its own tracing subscriber (JSON lines, installed
//! first), its own configuration prefix (`APP_`), its own SIGTERM and SIGHUP
//! handling, and a WebSocket handler that ends itself when a stop begins.
//!
//! `tests/host.rs` runs it plainly and under systemfd. What it prints on
//! stdout (`host: ...` lines) is what the tests read.
//!
//! Modes (the only argument):
//! - none: portkeeper's signal handlers and upgrades off; SIGTERM is the
//!   host's, passed to `with_graceful_shutdown`; SIGHUP is the host's too.
//! - `--portkeeper-signals`: portkeeper handles SIGTERM/SIGINT while it
//!   serves; `GET /stop` ends serving; afterwards the host has no handler of
//!   its own, so SIGINT must terminate it (the handlers went with `serve`).

use std::future::IntoFuture;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::response::Response;
use axum::routing::get;
use portkeeper::{Server, Stopping};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;

#[tokio::main]
async fn main() -> ExitCode {
    // The host's own subscriber, installed before portkeeper starts: its
    // events must come out in this format, through this subscriber.
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .init();
    let portkeeper_signals = std::env::args().nth(1).as_deref() == Some("--portkeeper-signals");

    let listening = match Server::from_env_prefixed("APP_")
        // Typed settings override APP_SHUTDOWN_TIMEOUT and friends.
        .shutdown_timeout(Duration::from_secs(2))
        .signals(portkeeper_signals)
        .upgrades(false)
        .listen()
    {
        Ok(listening) => listening,
        Err(err) => return err.report(),
    };
    // Read after listen(): it must not have changed the environment.
    println!(
        "host: LISTEN_FDS after listen: {}",
        std::env::var("LISTEN_FDS").unwrap_or_else(|_| "unset".to_owned())
    );
    println!(
        "host: listening on {}",
        listening
            .local_addr()
            .map_or_else(|| "no TCP address".to_owned(), |a| a.to_string())
    );

    let stop = Arc::new(Notify::new());
    let app = Router::new()
        .route("/hello", get(|| async { "hello from the host" }))
        .route("/slow", get(slow))
        .route("/ws", get(ws))
        .route(
            "/stop",
            get({
                let stop = Arc::clone(&stop);
                move || async move {
                    stop.notify_one();
                    "stopping"
                }
            }),
        );

    let mut serving = listening.serve(app);
    if !portkeeper_signals {
        let mut term = signal(SignalKind::terminate()).expect("the host's SIGTERM handler");
        serving = serving.with_graceful_shutdown(async move {
            term.recv().await;
            println!("host: SIGTERM handled by the host");
        });
        // The host's own SIGHUP handler keeps working: portkeeper's upgrades are off.
        let mut hangup = signal(SignalKind::hangup()).expect("the host's SIGHUP handler");
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                println!("host: SIGHUP handled by the host");
            }
        });
    }
    let stop_route = Arc::clone(&stop);
    serving = serving.with_graceful_shutdown(async move { stop_route.notified().await });

    // The serve future is Send: it runs as a task of the host's.
    let started = Instant::now();
    let result = tokio::spawn(serving.into_future()).await;
    println!(
        "host: serve returned {:?} after {} ms",
        result.as_ref().map(|r| r.is_ok()),
        started.elapsed().as_millis()
    );
    if portkeeper_signals {
        // No handler of ours or portkeeper's now: SIGINT must end the process.
        println!("host: waiting without signal handlers");
        tokio::time::sleep(Duration::from_secs(120)).await;
        println!("host: still alive after the wait");
        return ExitCode::from(3);
    }
    // The host lives on after serve, until its stdin closes (bounded): any
    // connection serve left behind would still be open now, and the tests
    // check that none is.
    println!("host: lingering");
    let stdin_closed = tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
    });
    let _ = tokio::time::timeout(Duration::from_secs(60), stdin_closed).await;
    match result {
        Ok(Ok(())) => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}

/// A request that outlives any drain: the bounded drain must close it.
async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_secs(600)).await;
    "too late"
}

async fn ws(upgrade: WebSocketUpgrade, stopping: Stopping) -> Response {
    upgrade.on_upgrade(move |socket| echo(socket, stopping))
}

/// Echoes until the client leaves or this process begins to stop; then says
/// "going away" (1001), so the client reconnects, to a successor if any.
async fn echo(mut socket: WebSocket, stopping: Stopping) {
    loop {
        tokio::select! {
            () = stopping.wait() => {
                let _ = socket
                    .send(Message::Close(Some(CloseFrame {
                        code: close_code::AWAY,
                        reason: "server stopping".into(),
                    })))
                    .await;
                return;
            }
            message = socket.recv() => match message {
                Some(Ok(Message::Text(text))) => {
                    if socket.send(Message::Text(text)).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}
