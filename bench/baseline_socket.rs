//! How the benchmark baselines get their socket, shared so that
//! `examples/baseline.rs` (plain) and `examples/baseline_tls.rs` (TLS) bind
//! alike: the inherited fd 3 when `LISTEN_FDS` is set (through `listenfd`, as
//! the simplest systemfd/systemd server would), else `HOST:API_PORT` bound
//! with the standard library, with portkeeper's defaults (`API_PORT=0` for a
//! kernel-chosen port). Each includes this file with `#[path]`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};

/// BSD's EX_CONFIG, as portkeeper uses for bad settings.
pub(crate) const EXIT_CONFIG: u8 = 78;
/// BSD's EX_OSERR, for a socket or runtime the system refused.
pub(crate) const EXIT_OS_ERROR: u8 = 71;

/// The inherited fd 3 when `LISTEN_FDS` is set, else `HOST:API_PORT` bound with std.
pub(crate) fn open_listener() -> Result<TcpListener, (String, u8)> {
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
