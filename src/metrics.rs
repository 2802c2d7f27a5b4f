//! `GET /metrics`: what the server counts, in the OpenMetrics text format
//! that Prometheus scrapes.
//!
//! Built on `prometheus-client` (the Prometheus project's Rust client) with a
//! [`Registry`] of our own per server, never a process-wide recorder: an
//! application that embeds portkeeper and has its own `metrics` or
//! `prometheus` recorder keeps it, and nothing here conflicts with it.
//!
//! | metric | type | what |
//! |---|---|---|
//! | `portkeeper_http_requests_total{class}` | counter | answered requests by status class (`1xx` … `5xx`), the application's routes included |
//! | `portkeeper_http_request_duration_seconds` | histogram | from a request's headers to its response's headers |
//! | `portkeeper_open_connections` | gauge | accepted connections not yet closed |
//! | `portkeeper_max_connections` | gauge | `MAX_CONNECTIONS`, the cap on open connections (0: none) |
//! | `portkeeper_connection_limit_reached_total` | counter | times accepting paused at `MAX_CONNECTIONS` until a connection closed |
//! | `portkeeper_write_timeouts_total` | counter | connections closed for making no write progress for `WRITE_TIMEOUT` |
//! | `portkeeper_http_requests_in_flight` | gauge | requests whose response has not been sent whole |
//! | `portkeeper_upgrades_total{outcome}` | counter | binary upgrades `done` (handed over) and `failed` (this process kept serving) |
//! | `portkeeper_listener_info{source,address,fd_name}` | gauge, always 1 | the listener served, the info-metric convention |
//! | `portkeeper_tls_handshakes_total{result}` | counter | TLS handshakes `ok`, `failed`, `timed_out` (`TLS_HANDSHAKE_TIMEOUT`) and `over_cap` (closed at `TLS_MAX_HANDSHAKES`); with the `tls` feature |
//! | `portkeeper_tls_certificate_reloads_total{result}` | counter | certificate files reloaded after a change: `ok`, or `refused` (the previous pair kept serving); with the `tls` feature |
//!
//! The upgrade counters are the process's, not one server's: a handoff hands
//! over the process's sockets. They live in a static and every registry shows them.

use std::sync::LazyLock;
use std::time::Duration;

use axum::http::StatusCode;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::listener::ListenerInfo;

/// The content type of [`Metrics::render`]'s text.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = [(&'static str, &'static str); 1];

/// Binary upgrades of this process, by outcome (see the module docs).
static UPGRADES: LazyLock<Family<Labels, Counter>> = LazyLock::new(Family::default);

/// Counts a binary upgrade that handed the listener over.
pub(crate) fn upgrade_done() {
    UPGRADES.get_or_create(&[("outcome", "done")]).inc();
}

/// Counts a binary upgrade that failed (the process keeps serving).
pub(crate) fn upgrade_failed() {
    UPGRADES.get_or_create(&[("outcome", "failed")]).inc();
}

/// One server's metrics and the registry that renders them.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    /// By status class, `1xx` to `5xx`: clones of the family's counters, so
    /// that counting a request is one atomic add, not a look-up under a lock.
    classes: [Counter; 5],
    duration: Histogram,
    in_flight: Gauge,
    connections: Connections,
    max_connections: Gauge,
    limit_reached: Counter,
    write_timeouts: Counter,
    #[cfg(feature = "tls")]
    tls: TlsCounters,
}

/// The TLS counters, one per label value, created at 0.
#[cfg(feature = "tls")]
#[derive(Debug)]
struct TlsCounters {
    /// By [`HandshakeOutcome`], in its order.
    handshakes: [Counter; 4],
    reloads_ok: Counter,
    reloads_refused: Counter,
}

/// How a TLS handshake ended, for `portkeeper_tls_handshakes_total{result}`.
#[cfg(feature = "tls")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandshakeOutcome {
    /// Finished: the connection is served.
    Ok,
    /// Failed by the client or the connection (no common version, a refused certificate).
    Failed,
    /// Not finished within `TLS_HANDSHAKE_TIMEOUT`.
    TimedOut,
    /// Not begun: `TLS_MAX_HANDSHAKES` were in progress, the connection was closed.
    OverCap,
}

#[cfg(feature = "tls")]
impl HandshakeOutcome {
    const ALL: [HandshakeOutcome; 4] = [
        HandshakeOutcome::Ok,
        HandshakeOutcome::Failed,
        HandshakeOutcome::TimedOut,
        HandshakeOutcome::OverCap,
    ];

    fn label(self) -> &'static str {
        match self {
            HandshakeOutcome::Ok => "ok",
            HandshakeOutcome::Failed => "failed",
            HandshakeOutcome::TimedOut => "timed_out",
            HandshakeOutcome::OverCap => "over_cap",
        }
    }
}

#[cfg(feature = "tls")]
impl TlsCounters {
    fn register(registry: &mut Registry) -> Self {
        let handshakes = Family::<Labels, Counter>::default();
        let by_outcome = HandshakeOutcome::ALL
            .map(|o| handshakes.get_or_create(&[("result", o.label())]).clone());
        registry.register(
            "tls_handshakes",
            "TLS handshakes by result: ok, failed, timed_out (TLS_HANDSHAKE_TIMEOUT), over_cap (closed at TLS_MAX_HANDSHAKES)",
            handshakes,
        );
        let reloads = Family::<Labels, Counter>::default();
        let reloads_ok = reloads.get_or_create(&[("result", "ok")]).clone();
        let reloads_refused = reloads.get_or_create(&[("result", "refused")]).clone();
        registry.register(
            "tls_certificate_reloads",
            "Certificate files reloaded after a change: ok, or refused (the previous pair kept serving)",
            reloads,
        );
        TlsCounters {
            handshakes: by_outcome,
            reloads_ok,
            reloads_refused,
        }
    }
}

impl Metrics {
    /// A registry with every metric, and the listeners as info.
    pub(crate) fn new<'a>(listeners: impl IntoIterator<Item = &'a ListenerInfo>) -> Self {
        let mut registry = Registry::with_prefix("portkeeper");
        let requests = Family::<Labels, Counter>::default();
        // Created up front: a rate over them is defined from the first scrape.
        let classes = CLASSES.map(|class| requests.get_or_create(&[("class", class)]).clone());
        registry.register(
            "http_requests",
            "Requests answered, by status class",
            requests,
        );
        // 1 ms to ~33 s.
        let duration = Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
            0.001, 2.0, 16,
        ));
        registry.register_with_unit(
            "http_request_duration",
            "Time from a request's headers to its response's headers",
            prometheus_client::registry::Unit::Seconds,
            duration.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "http_requests_in_flight",
            "Requests whose response has not been sent whole",
            in_flight.clone(),
        );
        let connections = Connections(Gauge::default());
        registry.register(
            "open_connections",
            "Accepted connections not yet closed",
            connections.0.clone(),
        );
        let max_connections = Gauge::default();
        registry.register(
            "max_connections",
            "MAX_CONNECTIONS, the cap on open connections (0: no cap)",
            max_connections.clone(),
        );
        let limit_reached = Counter::default();
        registry.register(
            "connection_limit_reached",
            "Times accepting paused at MAX_CONNECTIONS until a connection closed",
            limit_reached.clone(),
        );
        let write_timeouts = Counter::default();
        registry.register(
            "write_timeouts",
            "Connections closed for making no write progress for WRITE_TIMEOUT",
            write_timeouts.clone(),
        );
        // Shown at 0 before the first upgrade, as the classes are.
        for outcome in ["done", "failed"] {
            let _ = UPGRADES.get_or_create(&[("outcome", outcome)]);
        }
        registry.register(
            "upgrades",
            "Binary upgrades of this process: done (handed over) or failed (kept serving)",
            UPGRADES.clone(),
        );
        let info = Family::<Vec<(&'static str, String)>, Gauge>::default();
        for listener in listeners {
            let labels = vec![
                ("source", listener.source.to_string()),
                ("role", listener.role.as_str().to_owned()),
                ("address", listener.address.to_string()),
                ("fd_name", listener.fd_name.clone().unwrap_or_default()),
            ];
            info.get_or_create(&labels).set(1);
        }
        registry.register("listener_info", "The listeners served (always 1)", info);
        #[cfg(feature = "tls")]
        let tls = TlsCounters::register(&mut registry);
        Metrics {
            registry,
            classes,
            duration,
            in_flight,
            connections,
            max_connections,
            limit_reached,
            write_timeouts,
            #[cfg(feature = "tls")]
            tls,
        }
    }

    /// Counts a reload of the certificate files: `ok`, or refused (`false`).
    #[cfg(feature = "tls")]
    pub(crate) fn tls_reload(&self, ok: bool) {
        if ok {
            self.tls.reloads_ok.inc();
        } else {
            self.tls.reloads_refused.inc();
        }
    }

    /// Counts a TLS handshake by how it ended.
    #[cfg(feature = "tls")]
    pub(crate) fn tls_handshake(&self, outcome: HandshakeOutcome) {
        self.tls.handshakes[outcome as usize].inc();
    }

    /// Shows the cap on open connections (0: none).
    pub(crate) fn set_max_connections(&self, cap: usize) {
        self.max_connections
            .set(i64::try_from(cap).unwrap_or(i64::MAX));
    }

    /// Accepting paused at the cap on open connections.
    pub(crate) fn connection_limit_reached(&self) {
        self.limit_reached.inc();
    }

    /// A connection was closed for making no write progress.
    pub(crate) fn write_timed_out(&self) {
        self.write_timeouts.inc();
    }

    /// Counts a request as in flight, until [`Metrics::request_ended`].
    pub(crate) fn request_began(&self) {
        self.in_flight.inc();
    }

    /// Counts a request's answer by status class, and the time its response
    /// head took.
    pub(crate) fn request_answered(&self, status: StatusCode, took: Duration) {
        self.duration.observe(took.as_secs_f64());
        self.classes[class_index(status.as_u16())].inc();
    }

    /// A request's response has been sent whole, or it was cancelled.
    pub(crate) fn request_ended(&self) {
        self.in_flight.dec();
    }

    /// The open-connections gauge, for the accept loop.
    pub(crate) fn connections(&self) -> Connections {
        self.connections.clone()
    }

    /// Everything, in the OpenMetrics text format.
    pub(crate) fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

/// The open-connections gauge: [`Connections::open`] counts one until dropped.
#[derive(Debug, Clone, Default)]
pub(crate) struct Connections(Gauge);

impl Connections {
    /// Counts a connection as open until the guard is dropped.
    pub(crate) fn open(&self) -> OpenConnection {
        self.0.inc();
        OpenConnection(self.0.clone())
    }
}

/// One open connection, counted until dropped.
#[derive(Debug)]
pub(crate) struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The status classes, in the order of [`class_index`].
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Where a status's class is in [`CLASSES`].
fn class_index(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 5) - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes() {
        let class = |status| CLASSES[class_index(status)];
        assert_eq!(class(101), "1xx");
        assert_eq!(class(204), "2xx");
        assert_eq!(class(308), "3xx");
        assert_eq!(class(404), "4xx");
        assert_eq!(class(503), "5xx");
        assert_eq!(class(599), "5xx");
    }

    #[test]
    fn upgrades_are_counted_by_outcome() {
        let metrics = Metrics::new([]);
        let done = |text: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix("portkeeper_upgrades_total{outcome=\"done\"} "))
                .and_then(|value| value.parse::<u64>().ok())
                .unwrap()
        };
        let before = done(&metrics.render());
        upgrade_done();
        assert_eq!(done(&metrics.render()), before + 1);
    }

    /// The value of one sample line of `text`, such as
    /// `portkeeper_tls_handshakes_total{result="ok"}`.
    #[cfg(feature = "tls")]
    fn sample(text: &str, name: &str) -> Option<u64> {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|value| value.parse().ok())
    }

    #[cfg(feature = "tls")]
    #[test]
    fn tls_counters_start_at_zero_and_count_by_result() {
        let metrics = Metrics::new([]);
        let handshakes = |result: &str| {
            sample(
                &metrics.render(),
                &format!("portkeeper_tls_handshakes_total{{result=\"{result}\"}}"),
            )
        };
        let reloads = |result: &str| {
            sample(
                &metrics.render(),
                &format!("portkeeper_tls_certificate_reloads_total{{result=\"{result}\"}}"),
            )
        };
        for result in ["ok", "failed", "timed_out", "over_cap"] {
            assert_eq!(handshakes(result), Some(0), "{result}");
        }
        assert_eq!(reloads("ok"), Some(0));
        assert_eq!(reloads("refused"), Some(0));
        metrics.tls_handshake(HandshakeOutcome::Ok);
        metrics.tls_handshake(HandshakeOutcome::Ok);
        metrics.tls_handshake(HandshakeOutcome::TimedOut);
        metrics.tls_handshake(HandshakeOutcome::OverCap);
        metrics.tls_reload(false);
        assert_eq!(handshakes("ok"), Some(2));
        assert_eq!(handshakes("failed"), Some(0));
        assert_eq!(handshakes("timed_out"), Some(1));
        assert_eq!(handshakes("over_cap"), Some(1));
        assert_eq!(reloads("ok"), Some(0));
        assert_eq!(reloads("refused"), Some(1));
    }

    #[test]
    fn connections_are_counted_until_dropped() {
        let metrics = Metrics::new([]);
        let first = metrics.connections().open();
        let second = metrics.connections().open();
        assert!(metrics.render().contains("portkeeper_open_connections 2\n"));
        drop((first, second));
        assert!(metrics.render().contains("portkeeper_open_connections 0\n"));
    }
}
