//! Telling the service manager how we are: `sd_notify` READY, STATUS, STOPPING, WATCHDOG.
//!
//! The protocol is one datagram of `KEY=value` lines to the Unix socket named
//! by `NOTIFY_SOCKET` (`sd_notify(3)`). The name is a path, or an abstract
//! socket when it starts with `@`. The sd-notify crate (0.5) cannot reach
//! abstract sockets, so this module speaks the protocol itself with std.
//! Without `NOTIFY_SOCKET` there is no [`Notifier`] and nothing is sent.

use std::io;
use std::time::Duration;

/// A connection to the service manager's notification socket.
#[derive(Debug)]
pub struct Notifier {
    #[cfg(unix)]
    socket: std::os::unix::net::UnixDatagram,
}

/// A `NOTIFY_SOCKET` value that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("NOTIFY_SOCKET: {value:?} cannot be reached")]
pub struct NotifyError {
    value: String,
    #[source]
    source: io::Error,
}

impl Notifier {
    /// Connects to the socket named by a `NOTIFY_SOCKET` value; `None` without one.
    pub fn connect(notify_socket: Option<&str>) -> Result<Option<Self>, NotifyError> {
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
        Ok(Notifier { socket })
    }

    #[cfg(not(unix))]
    fn connect_to(_value: &str) -> io::Result<Self> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "sd_notify needs Unix sockets",
        ))
    }

    /// Sends one notification: `KEY=value` lines, newline-separated.
    pub fn send(&self, message: &str) -> io::Result<()> {
        #[cfg(unix)]
        self.socket.send(message.as_bytes())?;
        #[cfg(not(unix))]
        let _ = message;
        Ok(())
    }

    /// Sends a notification and logs, rather than fails, when it cannot be
    /// delivered: a manager that went away must not take the server with it.
    pub fn notify(&self, message: &str) {
        if let Err(err) = self.send(message) {
            tracing::warn!(error = %err, message, "sd_notify failed");
        }
    }
}

/// `READY=1` with a one-line status.
pub fn ready_message(status: &str) -> String {
    format!("READY=1\nSTATUS={}", one_line(status))
}

/// `STOPPING=1` with a one-line status.
pub fn stopping_message(status: &str) -> String {
    format!("STOPPING=1\nSTATUS={}", one_line(status))
}

/// The watchdog message.
pub const WATCHDOG: &str = "WATCHDOG=1";

/// A newline would start a new `KEY=value` line, so statuses are flattened.
fn one_line(status: &str) -> String {
    status.replace('\n', " ")
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, as `sd_watchdog_enabled(3)`
/// advises, when the watchdog is meant for us (`WATCHDOG_PID` absent or ours).
pub fn watchdog_interval(
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
    Some(Duration::from_micros(usec) / 2)
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
        assert_eq!(watchdog_interval(None, None, 9), None);
    }
}
