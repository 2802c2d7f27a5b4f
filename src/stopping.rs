//! [`Stopping`]: how a handler learns that this process has begun to stop or to hand over.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

/// Tells a handler that this process has begun to stop (SIGTERM, SIGINT, the
/// graceful-shutdown future) or to hand its listeners to a successor (a
/// binary upgrade), so that a long-lived stream (a WebSocket, server-sent
/// events) can end itself instead of holding the drain until
/// `SHUTDOWN_TIMEOUT`.
///
/// An axum extractor, available to every request that portkeeper serves:
///
/// ```no_run
/// use axum::{Router, routing::get};
/// use portkeeper::Stopping;
///
/// async fn events(stopping: Stopping) -> &'static str {
///     // A real handler would stream until `stopping.wait()` completes.
///     stopping.wait().await;
///     "bye"
/// }
///
/// let app: Router = Router::new().route("/events", get(events));
/// # let _ = app;
/// ```
#[derive(Debug, Clone, Default)]
pub struct Stopping(
    // In an `Arc` of its own per connection ([`Stopping::for_connection`]):
    // every request gets a clone, and a `CancellationToken`'s clone locks
    // and counts on its node, which all connections share. An `Arc` clone is
    // one increment, on a count only that connection's requests touch.
    Arc<CancellationToken>,
);

impl Stopping {
    /// A new signal, not begun.
    pub(crate) fn new() -> Self {
        Stopping(Arc::default())
    }

    /// The same signal, for one connection's requests to clone.
    pub(crate) fn for_connection(&self) -> Self {
        Stopping(Arc::new(CancellationToken::clone(&self.0)))
    }

    /// Begins the stop: every [`Stopping::wait`] completes.
    pub(crate) fn begin(&self) {
        self.0.cancel();
    }

    /// Completes once this process has begun to stop or to hand over; at
    /// once if it already has.
    ///
    /// ```no_run
    /// // A handler that holds its answer until the stop begins.
    /// async fn until_stop(stopping: portkeeper::Stopping) -> &'static str {
    ///     stopping.wait().await;
    ///     "stopping"
    /// }
    /// # let _ = until_stop;
    /// ```
    pub async fn wait(&self) {
        self.0.cancelled().await;
    }

    /// Whether this process has begun to stop or to hand over.
    ///
    /// ```no_run
    /// // Tells a client not to reconnect here once the stop has begun.
    /// async fn status(stopping: portkeeper::Stopping) -> &'static str {
    ///     if stopping.is_stopping() { "leaving" } else { "serving" }
    /// }
    /// # let _ = status;
    /// ```
    pub fn is_stopping(&self) -> bool {
        self.0.is_cancelled()
    }
}
