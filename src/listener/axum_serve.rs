//! The listening socket as an [`axum::serve::Listener`], for users who want only the socket.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

use super::ListenerInfo;

/// A listening socket opened by portkeeper's listener chain (inherited from
/// systemd or systemfd, or bound to a fixed or searched port), ready for
/// [`axum::serve()`].
///
/// Get one from [`Listening::into_listener`](crate::Listening::into_listener)
/// inside a tokio runtime. Serving it with `axum::serve` gives up portkeeper's
/// drain, readiness and upgrades: use [`Listening::serve`](crate::Listening::serve)
/// for those.
///
/// ```no_run
/// use axum::{routing::get, Router};
///
/// fn main() -> std::process::ExitCode {
///     // Opened before the runtime exists, see `Server::listen`.
///     let listening = match portkeeper::Server::from_env().listen() {
///         Ok(listening) => listening,
///         Err(err) => return err.report(),
///     };
///     let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
///     runtime.block_on(async {
///         let listener = listening.into_listener().expect("a tokio listener");
///         let app = Router::new().route("/", get(|| async { "hello" }));
///         axum::serve(listener, app).await.expect("serving");
///     });
///     std::process::ExitCode::SUCCESS
/// }
/// ```
#[derive(Debug)]
pub struct Listener {
    socket: TcpListener,
    info: ListenerInfo,
}

impl Listener {
    pub(crate) fn new(socket: TcpListener, info: ListenerInfo) -> Self {
        Listener { socket, info }
    }

    /// Where the socket came from: `systemd`, `systemfd`, `handoff`, `fixed` or `searched`.
    pub fn source(&self) -> &'static str {
        self.info.source.as_str()
    }
}

impl axum::serve::Listener for Listener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    /// Accepts the next connection; errors are logged and retried, as
    /// `axum::serve` expects of a listener.
    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        axum::serve::Listener::accept(&mut self.socket).await
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}
