//! Binary upgrades without a refused connection: hand the listener to a new executable, then drain.
//!
//! On SIGHUP, or with `RELOAD=true` when the executable file is replaced (see
//! [`watch`]), the running server starts the executable at its own path as a
//! child and hands it the listening socket by the LISTEN_FDS protocol
//! ([`crate::listener::handover`]). Both processes accept from the same socket
//! while the child starts, so the kernel's queue never stops taking
//! connections. The child reports `READY=1` to a private datagram socket of
//! ours, named in [`HANDOFF_NOTIFY_VAR`] (the `sd_notify` protocol, so the
//! child's ordinary readiness code does the job). Only then do we stop
//! accepting and drain. If the child exits, or is not ready within
//! [`READY_TIMEOUT`], it is killed and we keep serving, with a log line why.
//!
//! Under systemd, `NOTIFY_SOCKET` keeps naming the manager in the child: the
//! readiness of a handoff travels on its own variable, so no message ever
//! goes to the wrong socket. Once the child is ready we send `MAINPID=<child>`,
//! the manager follows the new process, and the child's later messages
//! (watchdog, `STOPPING=1`, the next upgrade's `MAINPID=`) are accepted from it.

#[cfg(unix)]
pub mod watch;

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::notify::Notifier;

/// The variable that tells a process started by a handoff where to report
/// `READY=1`: its predecessor's private `sd_notify` socket (`@name` = abstract).
/// `main.rs` reads and removes it, like the `LISTEN_*` variables.
pub const HANDOFF_NOTIFY_VAR: &str = "PORTKEEPER_HANDOFF_NOTIFY";

/// How long a new executable may take to say it is ready. Start-up is
/// milliseconds (nothing is bound, the socket is inherited); the margin is for
/// a loaded machine and a cold disk cache.
pub const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// What this process needs to start its successor, collected by `main.rs`.
#[derive(Debug, Clone)]
pub struct UpgradePlan {
    /// The executable's path, read at start-up: once the file is replaced,
    /// `/proc/self/exe` names the deleted old inode, while this path names the
    /// new file.
    pub executable: PathBuf,
    /// Our command-line arguments, passed on unchanged.
    pub args: Vec<OsString>,
    /// `RELOAD=true`: watch `executable` and hand over when it is replaced.
    pub watch_executable: bool,
}

/// Both ends of the upgrade protocol, as far as this process takes part.
#[derive(Debug, Default)]
pub struct Succession {
    /// How to start a successor; `None` when the executable's path is unknown.
    pub plan: Option<UpgradePlan>,
    /// Our predecessor, waiting for our `READY=1`, when a handoff started us.
    pub predecessor: Option<Notifier>,
}

/// Why a handoff was attempted.
#[derive(Debug, Clone, Copy)]
pub enum Trigger {
    /// SIGHUP.
    Signal,
    /// `RELOAD=true` saw a new executable file.
    ExecutableReplaced,
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Trigger::Signal => "SIGHUP",
            Trigger::ExecutableReplaced => "executable replaced",
        })
    }
}

/// Why a handoff did not happen; the old process keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    /// The executable could not be started at all.
    #[error("cannot start {executable}")]
    Spawn {
        /// The path tried.
        executable: String,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The readiness socket could not be made.
    #[error("cannot open the readiness socket for the new process")]
    ReadySocket(#[source] std::io::Error),
    /// The child exited before it said it was ready.
    #[error(
        "the new process {pid} exited with {status} before it was ready (its error is logged above)"
    )]
    Exited {
        /// The child's pid.
        pid: u32,
        /// How it exited.
        status: std::process::ExitStatus,
    },
    /// The child did not say it was ready in time; it was killed.
    #[error("the new process {pid} was not ready within {}s and was killed", READY_TIMEOUT.as_secs())]
    TimedOut {
        /// The child's pid.
        pid: u32,
    },
}

/// Hands the listener over on request; see the module docs.
pub struct Upgrader {
    #[cfg(unix)]
    inner: Option<imp::Upgrader>,
}

impl Upgrader {
    /// Prepares for upgrades that hand over `sockets` (duplicates kept for
    /// the children, each with its name). An empty set turns upgrades off. Installs the SIGHUP handler at once, so a SIGHUP that comes
    /// right after we report ready is an upgrade and not the default "terminate".
    /// Must be called inside the tokio runtime.
    pub fn new(
        plan: Option<UpgradePlan>,
        sockets: Vec<crate::listener::Handed>,
        manager: Option<Arc<Notifier>>,
    ) -> Self {
        #[cfg(unix)]
        {
            Upgrader {
                inner: imp::Upgrader::new(plan, sockets, manager),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = (plan, sockets, manager);
            Upgrader {}
        }
    }

    /// Waits for triggers and attempts a handoff for each; returns the new
    /// process's pid once one has taken over. Never returns when upgrades are
    /// impossible here. Dropping the future kills a child that is not ready yet.
    pub async fn until_handed_over(self) -> u32 {
        #[cfg(unix)]
        if let Some(inner) = self.inner {
            return inner.until_handed_over().await;
        }
        std::future::pending().await
    }
}

#[cfg(unix)]
mod imp {
    use std::os::unix::net::UnixDatagram;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use tokio::signal::unix::{Signal, SignalKind, signal};

    use super::watch::ExecutableWatch;
    use super::{HANDOFF_NOTIFY_VAR, HandoffError, READY_TIMEOUT, Trigger, UpgradePlan};
    use crate::listener::handover;
    use crate::notify::Notifier;

    pub(super) struct Upgrader {
        plan: UpgradePlan,
        sockets: Vec<handover::Handed>,
        manager: Option<Arc<Notifier>>,
        hangup: Option<Signal>,
        watch: Option<ExecutableWatch>,
    }

    impl Upgrader {
        pub(super) fn new(
            plan: Option<UpgradePlan>,
            sockets: Vec<handover::Handed>,
            manager: Option<Arc<Notifier>>,
        ) -> Option<Self> {
            let hangup = match signal(SignalKind::hangup()) {
                Ok(hangup) => Some(hangup),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot handle SIGHUP; binary upgrades by signal are off");
                    None
                }
            };
            let Some(plan) = plan else {
                tracing::warn!(
                    "the executable's path is unknown; binary upgrades (SIGHUP, RELOAD) are off"
                );
                // tokio keeps the SIGHUP handler installed after `hangup` is
                // dropped, so a stray SIGHUP still does not kill the server.
                return None;
            };
            if sockets.is_empty() {
                return None;
            }
            let watch = plan.watch_executable.then(|| {
                tracing::info!(executable = %plan.executable.display(), "RELOAD: watching the executable");
                ExecutableWatch::new(plan.executable.clone())
            });
            Some(Upgrader {
                plan,
                sockets,
                manager,
                hangup,
                watch,
            })
        }

        pub(super) async fn until_handed_over(mut self) -> u32 {
            loop {
                let trigger = tokio::select! {
                    Some(()) = recv(&mut self.hangup) => Trigger::Signal,
                    () = changed(&mut self.watch) => Trigger::ExecutableReplaced,
                };
                match self.hand_over(trigger).await {
                    Ok(pid) => return pid,
                    Err(err) => tracing::error!(
                        error = %format!("{err:#}"),
                        trigger = %trigger,
                        "binary upgrade failed; this process keeps serving"
                    ),
                }
            }
        }

        async fn hand_over(&self, trigger: Trigger) -> Result<u32, HandoffError> {
            let executable = self.plan.executable.display().to_string();
            tracing::info!(trigger = %trigger, executable, "binary upgrade: starting the new executable");
            let (ready, ready_name) = ready_socket().map_err(HandoffError::ReadySocket)?;
            let spawn_failed = |source| HandoffError::Spawn {
                executable: executable.clone(),
                source,
            };
            let mut cmd = handover::command(&self.plan.executable, &self.plan.args, &self.sockets)
                .map_err(spawn_failed)?;
            cmd.env(HANDOFF_NOTIFY_VAR, &ready_name);
            let child = tokio::process::Command::from(cmd)
                .spawn()
                .map_err(spawn_failed)?;
            let mut candidate = Candidate(Some(child));
            let pid = candidate.id();
            let child = candidate.0.as_mut().expect("set above");
            tokio::select! {
                result = wait_ready(&ready) => result.map_err(HandoffError::ReadySocket)?,
                status = child.wait() => {
                    let status = status.map_err(spawn_failed)?;
                    candidate.0 = None;
                    return Err(HandoffError::Exited { pid, status });
                }
                () = tokio::time::sleep(READY_TIMEOUT) => {
                    return Err(HandoffError::TimedOut { pid });
                }
            }
            // The child serves now; it must outlive us.
            candidate.0 = None;
            if let Some(manager) = &self.manager {
                manager.notify(&format!(
                    "MAINPID={pid}\nSTATUS=handed the listener over to pid {pid}"
                ));
            }
            tracing::info!(successor = pid, "binary upgrade: the new process is ready");
            Ok(pid)
        }
    }

    /// A child that has not said it is ready: killed if we give up on it,
    /// including when the whole upgrade is cancelled by SIGTERM.
    struct Candidate(Option<tokio::process::Child>);

    impl Candidate {
        fn id(&self) -> u32 {
            self.0.as_ref().and_then(|c| c.id()).unwrap_or_default()
        }
    }

    impl Drop for Candidate {
        fn drop(&mut self) {
            if let Some(child) = &mut self.0 {
                // tokio reaps it in the background after the kill.
                let _ = child.start_kill();
            }
        }
    }

    async fn recv(hangup: &mut Option<Signal>) -> Option<()> {
        match hangup {
            Some(signal) => signal.recv().await,
            None => std::future::pending().await,
        }
    }

    async fn changed(watch: &mut Option<ExecutableWatch>) {
        match watch {
            Some(watch) => watch.replaced().await,
            None => std::future::pending().await,
        }
    }

    /// A fresh datagram socket for one handoff's `READY=1`, and its
    /// `NOTIFY_SOCKET`-style name. Abstract on Linux: nothing to clean up,
    /// nothing left behind if we are killed.
    fn ready_socket() -> std::io::Result<(tokio::net::UnixDatagram, String)> {
        static ATTEMPT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "portkeeper-handoff-{}-{}",
            std::process::id(),
            ATTEMPT.fetch_add(1, Ordering::Relaxed)
        );
        let socket = bind_named(&name)?;
        socket.set_nonblocking(true)?;
        Ok((
            tokio::net::UnixDatagram::from_std(socket)?,
            format!("@{name}"),
        ))
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn bind_named(name: &str) -> std::io::Result<UnixDatagram> {
        #[cfg(target_os = "android")]
        use std::os::android::net::SocketAddrExt;
        #[cfg(target_os = "linux")]
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        UnixDatagram::bind_addr(&addr)
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    fn bind_named(_name: &str) -> std::io::Result<UnixDatagram> {
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "binary upgrades need abstract Unix sockets (Linux)",
        ))
    }

    /// Reads datagrams until one carries `READY=1` (other lines, such as
    /// `STATUS=`, are logged and skipped).
    async fn wait_ready(socket: &tokio::net::UnixDatagram) -> std::io::Result<()> {
        let mut buf = vec![0u8; 4096];
        loop {
            let n = socket.recv(&mut buf).await?;
            let message = String::from_utf8_lossy(&buf[..n]);
            if super::is_ready(&message) {
                return Ok(());
            }
            tracing::debug!(%message, "binary upgrade: message from the new process");
        }
    }
}

/// True when an `sd_notify` message contains the line `READY=1`.
fn is_ready(message: &str) -> bool {
    message.lines().any(|line| line == "READY=1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_is_a_whole_line() {
        assert!(is_ready("READY=1\nSTATUS=serving"));
        assert!(is_ready("STATUS=x\nREADY=1"));
        assert!(!is_ready("STATUS=READY=1"));
        assert!(!is_ready("READY=10"));
    }
}
