//! Notes: a small JSON API with live updates, served by portkeeper.
//!
//! Run with:
//! ```text
//! cargo run --example notes                                          # http://127.0.0.1:5050/notes
//! systemfd --no-pid -s http::5050 -- cargo watch -x 'run --example notes'   # edit, save, no refused request
//! ```
//! Try it:
//! ```text
//! curl -d '{"text":"buy milk"}' -H 'content-type: application/json' localhost:5050/notes
//! curl localhost:5050/notes                          # list
//! curl -X DELETE localhost:5050/notes/1              # delete
//! curl -N 'localhost:5050/events?count=5&every_ms=500'   # server-sent events
//! websocat ws://localhost:5050/ws                    # a WebSocket echo
//! curl --http2-prior-knowledge localhost:5050/notes  # the same API over HTTP/2
//! ```
//! `kill -USR2 <pid>` hands the socket to a fresh process: open event streams
//! finish on the old one; WebSockets are closed with "going away" (1001,
//! through `portkeeper::Stopping`) so that clients reconnect to the new one;
//! new connections reach the new one.
//!
//! The app keeps its own `GET /health` (with the number of notes). portkeeper's
//! built-in `/health` and `/info` answer first at those paths, so with
//! `NOTES_BUILTINS_AT=/_portkeeper` this example moves them there and its own
//! `/health` is served.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use futures_util::stream::{self, Stream};
use portkeeper::Stopping;
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize)]
struct Note {
    id: u64,
    text: String,
    /// Who created it: the client's address as the server saw it.
    created_by: SocketAddr,
}

#[derive(Default)]
struct Notes {
    next_id: u64,
    notes: BTreeMap<u64, Note>,
}

type Shared = Arc<Mutex<Notes>>;

#[derive(Deserialize)]
struct NewNote {
    text: String,
}

async fn list(State(notes): State<Shared>) -> Json<Vec<Note>> {
    let notes = notes.lock().unwrap_or_else(|e| e.into_inner());
    Json(notes.notes.values().cloned().collect())
}

async fn create(
    State(notes): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(new): Json<NewNote>,
) -> (StatusCode, Json<Note>) {
    let mut notes = notes.lock().unwrap_or_else(|e| e.into_inner());
    notes.next_id += 1;
    let note = Note {
        id: notes.next_id,
        text: new.text,
        created_by: peer,
    };
    notes.notes.insert(note.id, note.clone());
    (StatusCode::CREATED, Json(note))
}

async fn remove(State(notes): State<Shared>, Path(id): Path<u64>) -> StatusCode {
    let mut notes = notes.lock().unwrap_or_else(|e| e.into_inner());
    match notes.notes.remove(&id) {
        Some(_) => StatusCode::NO_CONTENT,
        None => StatusCode::NOT_FOUND,
    }
}

async fn health(State(notes): State<Shared>) -> Json<serde_json::Value> {
    let count = notes.lock().unwrap_or_else(|e| e.into_inner()).notes.len();
    Json(serde_json::json!({ "status": "ok", "notes": count }))
}

#[derive(Deserialize)]
struct Ticks {
    count: Option<u32>,
    every_ms: Option<u64>,
}

/// `count` events, one every `every_ms`, each naming the process that sent it.
async fn events(Query(ticks): Query<Ticks>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let count = ticks.count.unwrap_or(10).min(10_000);
    let every = Duration::from_millis(ticks.every_ms.unwrap_or(1000).min(60_000));
    let pid = std::process::id();
    Sse::new(stream::unfold(0, move |n| async move {
        if n == count {
            return None;
        }
        if n > 0 {
            tokio::time::sleep(every).await;
        }
        let data = serde_json::json!({ "n": n, "pid": pid }).to_string();
        Some((Ok(Event::default().data(data)), n + 1))
    }))
}

/// Greets with the serving process's pid, then echoes every message until
/// the client leaves or this process begins to stop or to hand over.
async fn ws(upgrade: WebSocketUpgrade, stopping: Stopping) -> Response {
    upgrade
        .on_upgrade(move |socket| echo(socket, stopping))
        .into_response()
}

async fn echo(mut socket: WebSocket, stopping: Stopping) {
    let greeting = format!("connected to pid {}", std::process::id());
    if socket.send(Message::text(greeting)).await.is_err() {
        return;
    }
    loop {
        let message = tokio::select! {
            // "Going away" (1001): the client reconnects, and after a binary
            // upgrade reaches the new process, while this one exits at once
            // instead of waiting SHUTDOWN_TIMEOUT for the socket to close.
            () = stopping.wait() => {
                let _ = socket
                    .send(Message::Close(Some(CloseFrame {
                        code: close_code::AWAY,
                        reason: "server stopping".into(),
                    })))
                    .await;
                return;
            }
            message = socket.recv() => message,
        };
        match message {
            Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                if socket.send(message).await.is_err() {
                    return;
                }
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(Message::Close(_)) | Err(_)) | None => return,
        }
    }
}

fn app() -> Router {
    Router::new()
        .route("/notes", get(list).post(create))
        .route("/notes/{id}", delete(remove))
        .route("/health", get(health))
        .route("/events", get(events))
        .route("/ws", get(ws))
        .with_state(Shared::default())
}

fn main() -> std::process::ExitCode {
    let server = portkeeper::Server::from_env();
    let server = match std::env::var("NOTES_BUILTINS_AT") {
        Ok(prefix) => server.builtin_routes_at(&prefix),
        Err(_) => server,
    };
    server.run(app())
}
