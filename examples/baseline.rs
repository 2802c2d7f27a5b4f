//! The benchmark baseline: the least a server can do to serve the benchmark router.
//!
//! axum serving the router of `bench/router.rs` (`GET /health`, `POST /echo`;
//! `examples/bench_app.rs` serves the same one through portkeeper) on a socket
//! bound with the standard library, through `axum::serve`. It reads `HOST` and `API_PORT` the way portkeeper does (same
//! defaults, `API_PORT=0` for a kernel-chosen port) and nothing else: no `.env`,
//! no search, no logging framework, no graceful stop. `bench/run.sh` measures
//! portkeeper against it in the same run.
//!
//! So that the inherited-socket scenarios compare like with like, it also
//! adopts fd 3 when `LISTEN_FDS` is set (through `listenfd`, as the simplest
//! systemfd/systemd server would), and sets it nonblocking first, as tokio
//! requires. That is read before the runtime starts, because `listenfd`
//! removes the variables from the environment.
//!
//! It prints one line on stderr, `baseline serving address=IP:PORT`, so the
//! benchmark can find a kernel-chosen port.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::process::ExitCode;

#[path = "../bench/router.rs"]
mod router;

/// BSD's EX_CONFIG, as portkeeper uses for bad settings.
const EXIT_CONFIG: u8 = 78;
/// BSD's EX_OSERR, for a socket or runtime the system refused.
const EXIT_OS_ERROR: u8 = 71;

fn main() -> ExitCode {
    let listener = match open_listener() {
        Ok(listener) => listener,
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
    match runtime.block_on(serve(listener)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("baseline: error: cannot serve: {err}");
            ExitCode::from(EXIT_OS_ERROR)
        }
    }
}

async fn serve(listener: TcpListener) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    axum::serve(listener, router::router()).await
}

/// The inherited fd 3 when `LISTEN_FDS` is set, else `HOST:API_PORT` bound with std.
fn open_listener() -> Result<TcpListener, (String, u8)> {
    let listener = if std::env::var_os("LISTEN_FDS").is_some() {
        listenfd::ListenFd::from_env()
            .take_tcp_listener(0)
            .map_err(|err| (format!("inherited fd 3: {err}"), EXIT_CONFIG))?
            .ok_or_else(|| {
                (
                    "LISTEN_FDS is set but fd 3 is not a TCP listener".to_owned(),
                    EXIT_CONFIG,
                )
            })?
    } else {
        let address = SocketAddr::new(host()?, api_port()?);
        TcpListener::bind(address)
            .map_err(|err| (format!("cannot listen on {address}: {err}"), EXIT_OS_ERROR))?
    };
    // tokio's from_std expects a nonblocking socket (it panics in debug builds otherwise).
    listener.set_nonblocking(true).map_err(|err| {
        (
            format!("cannot set the socket nonblocking: {err}"),
            EXIT_OS_ERROR,
        )
    })?;
    Ok(listener)
}

fn host() -> Result<IpAddr, (String, u8)> {
    let Some(value) = std::env::var("HOST").ok() else {
        return Ok(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    };
    if value.eq_ignore_ascii_case("localhost") {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    let literal = value.trim_start_matches('[').trim_end_matches(']');
    literal.parse().map_err(|_| {
        (
            format!("HOST: {value:?} is not valid (expected an IP address or localhost)"),
            EXIT_CONFIG,
        )
    })
}

fn api_port() -> Result<u16, (String, u8)> {
    let Some(value) = std::env::var("API_PORT").ok() else {
        return Ok(5050);
    };
    value.parse().map_err(|_| {
        (
            format!("API_PORT: {value:?} is not valid (expected a port number 0-65535)"),
            EXIT_CONFIG,
        )
    })
}
