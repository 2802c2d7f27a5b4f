//! The public API as a host program uses it: `listen()` inside its own
//! multi-threaded runtime, the serve future spawned as a task, stopped by the
//! host's own future, and `Stopping` seen by a handler.

use std::future::IntoFuture;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::routing::get;
use portkeeper::{Server, Stopping};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::DEADLINE;

/// The serve future is `Send`: `tokio::spawn` takes it (this does not
/// compile otherwise).
fn _serve_future_is_send(listening: portkeeper::Listening) {
    fn is_send<T: Send + 'static>(_: &T) {}
    let future = listening.serve(Router::new()).into_future();
    is_send(&future);
}

/// A server on a kernel-chosen loopback port, with no process-wide effect:
/// the test process is shared by every test.
fn quiet_server() -> Server {
    Server::from_vars([("HOST", "127.0.0.1"), ("API_PORT", "0")])
        .signals(false)
        .upgrades(false)
}

/// Serves `app` as a task of the test's own runtime, as a host program
/// would, until the returned sender is used (or dropped).
fn spawn_serving(
    listening: portkeeper::Listening,
    app: Router,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), portkeeper::Error>>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        listening
            .serve(app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .into_future(),
    );
    (stop, server)
}

async fn get_text(addr: std::net::SocketAddr, path: &str) -> Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawned_server_serves_and_stops_on_the_hosts_future() -> Result<()> {
    // listen() from inside a multi-threaded runtime, as from #[tokio::main].
    let listening = quiet_server().listen()?;
    let addr = listening.local_addr().context("a TCP address")?;
    let app = Router::new().route("/hello", get(|| async { "hello from the host" }));
    let (stop, server) = spawn_serving(listening, app);
    let response = tokio::time::timeout(DEADLINE, get_text(addr, "/hello")).await??;
    assert!(response.contains("hello from the host"), "{response}");
    stop.send(()).ok();
    tokio::time::timeout(DEADLINE, server)
        .await
        .context("serve did not end after the host's stop")??
        .context("serve failed")?;
    // The listener is closed once serve is over.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_learns_that_the_stop_began() -> Result<()> {
    let listening = quiet_server()
        // Far longer than the test's deadline: only Stopping can end the stream in time.
        .with_graceful_shutdown(std::future::pending())
        .listen()?;
    let addr = listening.local_addr().context("a TCP address")?;
    let app = Router::new().route(
        "/wait",
        get(|stopping: Stopping| async move {
            let before = stopping.is_stopping();
            stopping.wait().await;
            format!("stopping seen, before={before}")
        }),
    );
    let (stop, server) = spawn_serving(listening, app);
    let waiting = tokio::spawn(get_text(addr, "/wait"));
    // The request is in flight once the server counts it; /metrics says so.
    let in_flight = async {
        loop {
            let metrics = get_text(addr, "/metrics").await.unwrap_or_default();
            if metrics.lines().any(|line| {
                line.starts_with("portkeeper_http_requests_in_flight ") && line.ends_with(" 2")
            }) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(DEADLINE, in_flight)
        .await
        .context("the /wait request never began")?;
    stop.send(()).ok();
    let response = tokio::time::timeout(DEADLINE, waiting).await???;
    assert!(
        response.contains("stopping seen, before=false"),
        "{response}"
    );
    tokio::time::timeout(DEADLINE, server).await???;
    Ok(())
}

/// HTTP/2 streams run in tasks of their own: `Stopping` reaches them too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_handler_learns_that_the_stop_began() -> Result<()> {
    use http_body_util::BodyExt as _;
    let listening = quiet_server().listen()?;
    let addr = listening.local_addr().context("a TCP address")?;
    let began = std::sync::Arc::new(tokio::sync::Notify::new());
    let app = Router::new().route(
        "/wait",
        get({
            let began = std::sync::Arc::clone(&began);
            move |stopping: Stopping| async move {
                began.notify_one();
                stopping.wait().await;
                "stopping seen over HTTP/2"
            }
        }),
    );
    let (stop, server) = spawn_serving(listening, app);
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await?;
    tokio::spawn(connection);
    let request = axum::http::Request::get(format!("http://{addr}/wait"))
        .body(http_body_util::Empty::<axum::body::Bytes>::new())?;
    let response = tokio::spawn(sender.send_request(request));
    tokio::time::timeout(DEADLINE, began.notified())
        .await
        .context("the handler never ran")?;
    stop.send(()).ok();
    let response = tokio::time::timeout(DEADLINE, response).await???;
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await?.to_bytes();
    assert_eq!(&body[..], b"stopping seen over HTTP/2");
    tokio::time::timeout(DEADLINE, server).await???;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bare_listener_serves_with_axum_serve() -> Result<()> {
    let listener = quiet_server().listen()?.into_listener()?;
    let addr = axum::serve::Listener::local_addr(&listener)?;
    let app = Router::new().route("/hello", get(|| async { "plain axum" }));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .into_future(),
    );
    let response = tokio::time::timeout(DEADLINE, get_text(addr, "/hello")).await??;
    assert!(response.contains("plain axum"), "{response}");
    stop.send(()).ok();
    tokio::time::timeout(DEADLINE, server).await???;
    Ok(())
}
