//! What a connection's handlers can extract without a request extension:
//! its [`Stopping`] and, on a TLS listener with client certificates, the
//! verified client's identity.
//!
//! A task-local rather than a request extension: an extension is a boxed
//! clone made, and freed, for every request (about 300 instructions of an
//! HTTP/1.1 `/health`, docs/benchmarks.md), while the scope costs a swap per
//! poll of the connection, and nothing for a request that never asks.

use std::future::Future;
#[cfg(feature = "tls")]
use std::sync::Arc;

use crate::stopping::Stopping;
#[cfg(feature = "tls")]
use crate::tls::ClientIdentity;

/// One connection's extractable context.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionScope {
    pub(crate) stopping: Stopping,
    /// The verified client certificate's identity (TLS with `TLS_CLIENT_CA_FILE`).
    #[cfg(feature = "tls")]
    pub(crate) identity: Option<Arc<ClientIdentity>>,
}

tokio::task_local! {
    /// The context of the connection whose task this is.
    static CURRENT: ConnectionScope;
}

impl ConnectionScope {
    /// A connection's context: its stop signal, no client identity.
    pub(crate) fn new(stopping: Stopping) -> Self {
        ConnectionScope {
            stopping,
            #[cfg(feature = "tls")]
            identity: None,
        }
    }

    /// Runs `task` (a connection, or one of its HTTP/2 streams) with this
    /// context as the one its handlers extract.
    pub(crate) fn scope<F: Future>(self, task: F) -> impl Future<Output = F::Output> {
        CURRENT.scope(self, task)
    }
}

/// `read` applied to the current connection's context, if this task serves
/// one of portkeeper's connections.
pub(crate) fn current<T>(read: impl FnOnce(&ConnectionScope) -> T) -> Option<T> {
    CURRENT.try_with(read).ok()
}

/// hyper's executor for one connection's HTTP/2 streams: each runs in a
/// task of its own, in the connection's scope.
#[derive(Debug, Clone)]
pub(crate) struct ScopedExecutor(pub(crate) ConnectionScope);

impl<F> hyper::rt::Executor<F> for ScopedExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, task: F) {
        tokio::spawn(self.0.clone().scope(task));
    }
}

/// A handler gets the connection's [`Stopping`]; a request served by
/// another server (a test calling the router directly) may carry one as an
/// extension.
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Stopping {
    type Rejection = (axum::http::StatusCode, &'static str);

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        current(|scope| scope.stopping.clone())
            .or_else(|| parts.extensions.get::<Stopping>().cloned())
            .ok_or((
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "portkeeper::Stopping is available only to requests that portkeeper serves",
            ))
    }
}

/// A handler gets the client certificate's verified identity on a TLS
/// listener with `TLS_CLIENT_CA_FILE` (where the handshake already refused
/// clients without one); elsewhere the request is refused with 403. Take
/// `Option<ClientIdentity>` to serve both kinds of listener.
#[cfg(feature = "tls")]
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientIdentity {
    type Rejection = (axum::http::StatusCode, &'static str);

    async fn from_request_parts(
        _parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        current_identity().ok_or((
            axum::http::StatusCode::FORBIDDEN,
            "a verified client certificate is required\n",
        ))
    }
}

#[cfg(feature = "tls")]
impl<S: Send + Sync> axum::extract::OptionalFromRequestParts<S> for ClientIdentity {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        _parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(current_identity())
    }
}

#[cfg(feature = "tls")]
fn current_identity() -> Option<ClientIdentity> {
    current(|scope| scope.identity.as_deref().cloned()).flatten()
}
