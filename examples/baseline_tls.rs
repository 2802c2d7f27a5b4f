//! The TLS benchmark baseline: the benchmark router behind TLS, glued
//! together by hand the way axum's `low-level-rustls` example does it.
//!
//! The router of `bench/router.rs` (`examples/bench_app.rs` serves the same
//! one through portkeeper), on a socket got as `examples/baseline.rs` gets
//! its own (`bench/baseline_socket.rs`: fd 3 under `LISTEN_FDS`, else
//! `HOST:API_PORT`). Each accepted connection is handed to a task that runs
//! the handshake with tokio-rustls and then serves HTTP/1.1 or HTTP/2 with
//! hyper-util's `auto::Builder`, as `axum::serve` does for plain TCP.
//!
//! TLS is set up as portkeeper's: rustls with the ring provider, its safe
//! default protocol versions (1.2 and 1.3), no client authentication, ALPN
//! `h2` then `http/1.1`, the certificate chain and key read as PEM from
//! `TLS_CERT_FILE` and `TLS_KEY_FILE`. Nothing else: no handshake timeout,
//! no header timeout, no logging, no graceful stop, no `TCP_NODELAY`.
//! `bench/run.sh` measures portkeeper's TLS listener against it in the same run.
//!
//! It prints one line on stderr, `baseline serving address=IP:PORT`, so the
//! benchmark can find a kernel-chosen port.

use std::net::TcpListener;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

#[path = "../bench/router.rs"]
mod router;
#[path = "../bench/baseline_socket.rs"]
mod socket;

use socket::{EXIT_CONFIG, EXIT_OS_ERROR, open_listener};

fn main() -> ExitCode {
    let prepared = tls_config().and_then(|config| Ok((config, open_listener()?)));
    let (config, listener) = match prepared {
        Ok(prepared) => prepared,
        Err((message, status)) => {
            eprintln!("baseline: error: {message}");
            return ExitCode::from(status);
        }
    };
    let address = listener
        .local_addr()
        .map(|addr| addr.to_string())
        .unwrap_or_default();
    eprintln!("baseline serving address={address}");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("baseline: error: cannot start the async runtime: {err}");
            return ExitCode::from(EXIT_OS_ERROR);
        }
    };
    match runtime.block_on(serve(listener, TlsAcceptor::from(Arc::new(config)))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("baseline: error: cannot serve: {err}");
            ExitCode::from(EXIT_OS_ERROR)
        }
    }
}

async fn serve(listener: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let router = router::router();
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _peer)) => tcp,
            // As axum::serve: a connection reset before accept is nothing; out
            // of descriptors (or the like), wait for some to be freed.
            Err(err) if is_connection_error(&err) => continue,
            Err(err) => {
                eprintln!("baseline: accept: {err}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        // The handshake runs in the connection's task, so a slow one does
        // not hold up the accept loop.
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let _ = Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .await;
        });
    }
}

fn is_connection_error(err: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        err.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// rustls with ring, the chain and key of `TLS_CERT_FILE` and `TLS_KEY_FILE`,
/// ALPN `h2` and `http/1.1`.
fn tls_config() -> Result<ServerConfig, (String, u8)> {
    let cert_file = setting("TLS_CERT_FILE")?;
    let key_file = setting("TLS_KEY_FILE")?;
    let chain = CertificateDer::pem_file_iter(&cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|err| {
            (
                format!("TLS_CERT_FILE: cannot read {cert_file:?}: {err} (expected a PEM certificate chain)"),
                EXIT_CONFIG,
            )
        })?;
    if chain.is_empty() {
        return Err((
            format!(
                "TLS_CERT_FILE: {cert_file:?} holds no certificate (expected a PEM certificate chain)"
            ),
            EXIT_CONFIG,
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&key_file).map_err(|err| {
        (
            format!("TLS_KEY_FILE: cannot read {key_file:?}: {err} (expected a PEM private key)"),
            EXIT_CONFIG,
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| (format!("TLS: {err}"), EXIT_CONFIG))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|err| {
            (
                format!("TLS_KEY_FILE: {key_file:?} does not fit {cert_file:?}: {err}"),
                EXIT_CONFIG,
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

fn setting(name: &str) -> Result<String, (String, u8)> {
    std::env::var(name).map_err(|_| {
        (
            format!("{name} is not set (expected the path of a PEM file)"),
            EXIT_CONFIG,
        )
    })
}
