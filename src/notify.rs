//! Telling the service manager how we are: `sd_notify` READY, STATUS, STOPPING, WATCHDOG.
//!
//! The protocol is one datagram of `KEY=value` lines to the Unix socket named
//! by `NOTIFY_SOCKET` (`sd_notify(3)`). The name is a path, or an abstract
//! socket when it starts with `@`. The sd-notify crate (0.5) cannot reach
//! abstract sockets, so this module speaks the protocol itself with std.
//! Without `NOTIFY_SOCKET` there is no [`Notifier`] and nothing is sent.
//!
//! Notifications are advice to the manager, never a reason to stop serving.
//! The socket is non-blocking: a datagram to a socket whose queue is full
//! (a manager that stopped reading, a test that never reads) would otherwise
//! block the runtime thread that sends it, and with it `/health` and the
//! SIGTERM handler. A send that cannot be made at once is dropped and costs a
//! warning, at most one every [`WARNING_INTERVAL`] (with the number of
//! failures in between), so a stuck socket cannot flood the log either.

use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most one "sd_notify failed" warning per this interval; the failures in
/// between are counted and reported with the next warning.
pub(crate) const WARNING_INTERVAL: Duration = Duration::from_secs(30);

/// The shortest interval between two `WATCHDOG=1` pings, whatever
/// `WATCHDOG_USEC` says. `WATCHDOG_USEC=1` would otherwise mean a ping every
/// half microsecond: about a million datagrams in 3 s. systemd cannot check a
/// watchdog that precisely anyway; a `WatchdogSec=` under 100 ms is a mistake.
pub(crate) const MIN_WATCHDOG_INTERVAL: Duration = Duration::from_millis(50);

/// A connection to the service manager's notification socket.
#[derive(Debug)]
pub(crate) struct Notifier {
    #[cfg(unix)]
    socket: std::os::unix::net::UnixDatagram,
    failures: Mutex<FailureLog>,
}

/// What a send should log.
enum Report {
    Nothing,
    /// Sends work again after failures.
    Recovered,
    /// A failure to warn about, with the failures not logged since the last warning.
    Failed {
        suppressed: u64,
    },
}

/// Rate limiting of the warnings about failed sends.
#[derive(Debug, Default)]
struct FailureLog {
    /// When the last warning was logged.
    last_warning: Option<Instant>,
    /// Failures since then that were not logged.
    suppressed: u64,
}

impl FailureLog {
    /// Records one failure at `now`; `Some(suppressed)` when a warning is due,
    /// with the number of failures not logged since the last one.
    fn failed(&mut self, now: Instant) -> Option<u64> {
        match self.last_warning {
            Some(last) if now.duration_since(last) < WARNING_INTERVAL => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last_warning = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }

    /// Records a successful send; true when sends had been failing.
    fn succeeded(&mut self) -> bool {
        let was_failing = self.last_warning.is_some();
        *self = FailureLog::default();
        was_failing
    }
}

/// A `NOTIFY_SOCKET` value that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("NOTIFY_SOCKET: {value:?} cannot be reached")]
pub(crate) struct NotifyError {
    value: String,
    #[source]
    source: io::Error,
}

impl Notifier {
    /// Connects to the socket named by a `NOTIFY_SOCKET` value; `None` without one.
    pub(crate) fn connect(notify_socket: Option<&str>) -> Result<Option<Self>, NotifyError> {
        let Some(value) = notify_socket.filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        Self::connect_to(value)
            .map(Some)
            .map_err(|source| NotifyError {
                value: value.to_owned(),
                source,
            })
    }

    #[cfg(unix)]
    fn connect_to(value: &str) -> io::Result<Self> {
        use std::os::unix::net::UnixDatagram;
        let socket = UnixDatagram::unbound()?;
        match value.strip_prefix('@') {
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Some(name) => {
                #[cfg(target_os = "android")]
                use std::os::android::net::SocketAddrExt;
                #[cfg(target_os = "linux")]
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
                socket.connect_addr(&addr)?;
            }
            _ => socket.connect(value)?,
        }
        // Never wait for the manager: see the module docs.
        socket.set_nonblocking(true)?;
        Ok(Notifier {
            socket,
            failures: Mutex::default(),
        })
    }

    #[cfg(not(unix))]
    fn connect_to(_value: &str) -> io::Result<Self> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "sd_notify needs Unix sockets",
        ))
    }

    /// Sends one notification: `KEY=value` lines, newline-separated. Never
    /// blocks: a full socket queue is an error of kind `WouldBlock`.
    pub(crate) fn send(&self, message: &str) -> io::Result<()> {
        #[cfg(unix)]
        self.socket.send(message.as_bytes())?;
        #[cfg(not(unix))]
        let _ = message;
        Ok(())
    }

    /// Sends a notification and logs, rather than fails, when it cannot be
    /// delivered: a manager that went away or stopped reading must not take
    /// the server with it. Warnings are rate limited (see the module docs).
    pub(crate) fn notify(&self, message: &str) {
        let result = self.send(message);
        // Decide under the lock, log after it: a slow log sink must not hold
        // up other senders.
        let decision = {
            // A poisoned lock only means another thread panicked while deciding.
            let mut failures = self
                .failures
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match &result {
                Ok(()) if failures.succeeded() => Report::Recovered,
                Ok(()) => Report::Nothing,
                Err(_) => failures
                    .failed(Instant::now())
                    .map_or(Report::Nothing, |suppressed| Report::Failed { suppressed }),
            }
        };
        match (decision, result) {
            (Report::Recovered, _) => tracing::info!("sd_notify works again"),
            (Report::Failed { suppressed }, Err(err)) => {
                let notification = message.lines().next().unwrap_or_default();
                tracing::warn!(
                    error = %err,
                    notification,
                    suppressed,
                    "sd_notify failed; the service manager may not see readiness or watchdog pings (is NOTIFY_SOCKET read?); at most one such warning every {}s",
                    WARNING_INTERVAL.as_secs()
                );
            }
            _ => {}
        }
    }
}

/// `READY=1` with a one-line status.
pub(crate) fn ready_message(status: &str) -> String {
    format!("READY=1\nSTATUS={}", one_line(status))
}

/// `STOPPING=1` with a one-line status.
pub(crate) fn stopping_message(status: &str) -> String {
    format!("STOPPING=1\nSTATUS={}", one_line(status))
}

/// The watchdog message.
pub(crate) const WATCHDOG: &str = "WATCHDOG=1";

/// A newline would start a new `KEY=value` line, so statuses are flattened.
fn one_line(status: &str) -> String {
    status.replace('\n', " ")
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, as `sd_watchdog_enabled(3)`
/// advises, but never more often than [`MIN_WATCHDOG_INTERVAL`]; only when the
/// watchdog is meant for us (`WATCHDOG_PID` absent or ours).
pub(crate) fn watchdog_interval(
    watchdog_usec: Option<&str>,
    watchdog_pid: Option<&str>,
    our_pid: u32,
) -> Option<Duration> {
    let usec: u64 = watchdog_usec?.trim().parse().ok().filter(|&u| u > 0)?;
    match watchdog_pid.map(str::trim) {
        None | Some("") => {}
        Some(pid) if pid.parse() == Ok(our_pid) => {}
        Some(_) => return None,
    }
    Some((Duration::from_micros(usec) / 2).max(MIN_WATCHDOG_INTERVAL))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_socket_means_no_notifier() {
        assert!(Notifier::connect(None).unwrap().is_none());
        assert!(Notifier::connect(Some("")).unwrap().is_none());
    }

    #[test]
    fn an_unreachable_socket_is_an_error_naming_the_variable() {
        let err = Notifier::connect(Some("/nonexistent/notify.sock")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("NOTIFY_SOCKET: \"/nonexistent/notify.sock\"")
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn path_and_abstract_sockets_receive_messages() {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr, UnixDatagram};

        let dir = std::env::temp_dir().join(format!("pk-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let by_path = UnixDatagram::bind(&path).unwrap();
        let name = format!("pk-notify-test-{}", std::process::id());
        let by_name =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();

        for (value, receiver) in [
            (path.to_str().unwrap().to_owned(), &by_path),
            (format!("@{name}"), &by_name),
        ] {
            let notifier = Notifier::connect(Some(&value)).unwrap().unwrap();
            notifier.send(&ready_message("serving\non x")).unwrap();
            receiver
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut buf = [0u8; 256];
            let n = receiver.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving on x");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[cfg(unix)]
    #[test]
    fn a_full_socket_fails_at_once_instead_of_blocking() {
        use std::os::unix::net::UnixDatagram;
        let dir = std::env::temp_dir().join(format!("pk-notify-full-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let _never_read = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::connect(path.to_str()).unwrap().unwrap();
        // net.unix.max_dgram_qlen is 10 by default (512 on some systems):
        // the queue is full long before 10 000 datagrams.
        let started = Instant::now();
        let err = (0..10_000)
            .find_map(|_| notifier.send(WATCHDOG).err())
            .expect("a send to a socket nobody reads fails once its queue is full");
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn failure_warnings_are_rate_limited_and_count_the_rest() {
        let mut log = FailureLog::default();
        let t0 = Instant::now();
        assert_eq!(log.failed(t0), Some(0), "the first failure is logged");
        for i in 1..100 {
            assert_eq!(log.failed(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(log.failed(t0 + WARNING_INTERVAL), Some(99));
        assert!(log.succeeded(), "recovery is reported");
        assert!(!log.succeeded());
        assert_eq!(
            log.failed(t0 + WARNING_INTERVAL + Duration::from_millis(1)),
            Some(0),
            "after a recovery the next failure is news"
        );
    }

    #[test]
    fn watchdog_is_half_the_interval_and_only_for_us() {
        assert_eq!(
            watchdog_interval(Some("2000000"), None, 9),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            watchdog_interval(Some("2000000"), Some("9"), 9),
            Some(Duration::from_secs(1))
        );
        assert_eq!(watchdog_interval(Some("2000000"), Some("8"), 9), None);
        assert_eq!(watchdog_interval(Some("0"), None, 9), None);
        assert_eq!(
            watchdog_interval(Some("1"), None, 9),
            Some(MIN_WATCHDOG_INTERVAL),
            "a tiny WATCHDOG_USEC must not turn into a flood of pings"
        );
        assert_eq!(watchdog_interval(None, None, 9), None);
    }
}
