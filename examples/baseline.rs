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

use std::net::TcpListener;
use std::process::ExitCode;

#[path = "../bench/router.rs"]
mod router;
#[path = "../bench/baseline_socket.rs"]
mod socket;

use socket::{EXIT_OS_ERROR, open_listener};

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
