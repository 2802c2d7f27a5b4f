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

/// TLS typed in code, as a host program configures it (`tls`, `tls_files`,
/// `tls_client_ca`, no variable set), and `ClientIdentity` in its handler.
#[cfg(feature = "tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_tls_setters_serve_https_and_the_handler_sees_the_client_certificate() -> Result<()> {
    use std::io::{Read, Write};
    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject as _;

    use crate::certs::Ca;

    let dir = crate::support::TempDir::new();
    let ca = Ca::new("embedding CA");
    let (cert, key) = ca.server(7).write(dir.path(), "cert.pem", "key.pem");
    let ca_file = dir.path().join("clients-ca.pem");
    std::fs::write(&ca_file, &ca.pem)?;
    let listening = quiet_server()
        .tls(true)
        .tls_files(&cert, &key)
        .tls_client_ca(&ca_file)
        .listen()?;
    let addr = listening.local_addr().context("a TCP listener")?;
    let app = Router::new().route(
        "/whoami",
        get(|identity: portkeeper::ClientIdentity| async move { identity.subject().to_owned() }),
    );
    let (stop, server) = spawn_serving(listening, app);

    // A client with alice's certificate, over blocking rustls.
    let alice = ca.client();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates({
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der.clone())?;
        roots
    })
    .with_client_auth_cert(
        vec![alice.der.clone()],
        rustls::pki_types::PrivateKeyDer::from_pem_slice(alice.key.as_bytes())?,
    )?;
    let response = tokio::task::spawn_blocking(move || -> Result<String> {
        let name = rustls::pki_types::ServerName::try_from("localhost")?;
        let connection = rustls::ClientConnection::new(Arc::new(client), name)?;
        let tcp = std::net::TcpStream::connect(addr)?;
        tcp.set_read_timeout(Some(DEADLINE))?;
        let mut tls = rustls::StreamOwned::new(connection, tcp);
        tls.write_all(b"GET /whoami HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut response = String::new();
        // The server's close_notify ends the body; a bare close is also an end.
        let _ = tls.read_to_string(&mut response);
        Ok(response)
    })
    .await??;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("CN=alice,O=Example"), "{response}");

    let _ = stop.send(());
    tokio::time::timeout(DEADLINE, server).await???;
    Ok(())
}
