//! The stop's settings: how long to keep serving before the drain, and how long the drain may take.

use std::time::Duration;

/// `SHUTDOWN_TIMEOUT` and `SHUTDOWN_DELAY`, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StopSettings {
    /// How long in-flight requests may take to finish after a stop begins.
    pub(crate) shutdown_timeout: Duration,
    /// How long to keep accepting, with `/ready` at 503, after a stop signal
    /// and before the drain (load balancers need time to stop sending).
    pub(crate) shutdown_delay: Duration,
}
