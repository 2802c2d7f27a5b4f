//! Upgrade requests that get an answer: the server side of `portkeeper upgrade <pid>`.
//!
//! A signal cannot carry an answer, so `kill -USR2` (and an `ExecReload=`
//! that sends one) returns before anyone knows whether the new executable
//! came up. At start the server binds a private datagram socket named after
//! its pid, `@portkeeper-control-<pid>` (abstract, Linux: nothing on disk,
//! nothing left behind), with `SO_PASSCRED`, so the kernel tells the sender's
//! pid and uid of every request. A process of our own uid, or root, may send
//! `UPGRADE` from a socket bound to a name of its own; the upgrader then runs
//! the same handoff as on SIGUSR2 and answers to that name, in one datagram:
//!
//! - `READY pid=<new pid>`: the new process is ready and serving; this one drains;
//! - `FAILED <one line>`: why not, and whether this process keeps serving.
//!
//! A request that comes while an upgrade is under way (whatever started it)
//! gets that upgrade's outcome. A request from another user, or one that is
//! not `UPGRADE`, is answered `FAILED` and starts nothing. If the upgrade is
//! abandoned because this process stops (SIGTERM, a terminal's hang-up), the
//! requester is told so. The socket closes with the upgrader, that is once
//! this process has handed over or begun to stop; the successor binds its own.
//!
//! The client is `main.rs`'s `upgrade` command; both sides spell the name and
//! the messages as here, and `tests/it/operations.rs` holds them together.

use super::HandoffError;

/// The control socket's abstract name for the server of pid `pid`.
pub(crate) fn socket_name(pid: u32) -> String {
    format!("portkeeper-control-{pid}")
}

/// The one request understood.
const REQUEST: &str = "UPGRADE";

/// The upgrade requests this process answers; inert when it has no socket.
pub(crate) struct Control {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    socket: Option<tokio::net::UnixDatagram>,
    /// Who waits for the outcome of the upgrade being attempted.
    waiting: Vec<Requester>,
}

/// A process that asked for an upgrade, and where its answer goes (`None`:
/// it sent from an unnamed socket, so no answer can reach it).
struct Requester {
    pid: u32,
    #[cfg(any(target_os = "linux", target_os = "android"))]
    reply_to: Option<nix::sys::socket::UnixAddr>,
}

impl Control {
    /// Binds `@portkeeper-control-<our pid>`. A failure (another server in
    /// this process has the name, no abstract sockets) is logged: upgrades
    /// by signal work all the same.
    pub(crate) fn bind() -> Self {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            let name = socket_name(std::process::id());
            match imp::bind(&name) {
                Ok(socket) => {
                    tracing::debug!(socket = %format!("@{name}"), "upgrade requests: listening");
                    return Control {
                        socket: Some(socket),
                        waiting: Vec::new(),
                    };
                }
                Err(err) => tracing::info!(
                    error = %err,
                    socket = %format!("@{name}"),
                    "cannot open the control socket: `portkeeper upgrade` cannot reach this process; SIGUSR2 still upgrades"
                ),
            }
        }
        Self::none()
    }

    /// No socket: upgrades are off, or only signals start them.
    pub(crate) fn none() -> Self {
        Control {
            #[cfg(any(target_os = "linux", target_os = "android"))]
            socket: None,
            waiting: Vec::new(),
        }
    }

    /// Completes with the requester's pid when an allowed `UPGRADE` request
    /// arrives; others are answered `FAILED` here. Never completes without
    /// a socket. Cancel-safe: a request is taken only when it is complete.
    pub(crate) async fn requested(&mut self) -> u32 {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Some(socket) = &self.socket {
            loop {
                match imp::receive(socket).await {
                    Ok(received) => {
                        if let Some(requester) = imp::admit(socket, received) {
                            let pid = requester.pid;
                            self.waiting.push(requester);
                            return pid;
                        }
                    }
                    Err(err) => {
                        // Not expected on a datagram socket; do not spin.
                        tracing::warn!(error = %err, "upgrade requests: cannot receive; no longer listening");
                        self.socket = None;
                        break;
                    }
                }
            }
        }
        std::future::pending().await
    }

    /// Tells everyone waiting, and every request that came while the upgrade
    /// ran, how it went.
    pub(crate) fn answer(&mut self, outcome: &Result<u32, HandoffError>) {
        let reply = match outcome {
            Ok(pid) => format!("READY pid={pid}"),
            Err(err) => format!("FAILED {}; this process keeps serving", one_line(err)),
        };
        self.reply_all(&reply);
    }

    #[cfg_attr(
        not(any(target_os = "linux", target_os = "android")),
        allow(unused_variables)
    )]
    fn reply_all(&mut self, reply: &str) {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Some(socket) = &self.socket {
            // Requests queued while the upgrade ran share its outcome.
            while let Ok(Some(received)) = imp::try_receive(socket) {
                if let Some(requester) = imp::admit(socket, received) {
                    self.waiting.push(requester);
                }
            }
            for requester in self.waiting.drain(..) {
                imp::reply(socket, &requester, reply);
            }
        }
        self.waiting.clear();
    }
}

impl Drop for Control {
    /// The upgrade was abandoned: this process stops (SIGTERM, a hang-up)
    /// before the new process was ready, and kills it.
    fn drop(&mut self) {
        if !self.waiting.is_empty() {
            self.reply_all(
                "FAILED abandoned: this process is stopping (SIGTERM, or its terminal hung up), and the new process was killed",
            );
        }
    }
}

/// An error and its causes, on one line.
fn one_line(err: &dyn std::error::Error) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line.replace(['\n', '\r'], " ")
}

/// Why a request is refused, if it is.
fn refusal(message: &str, sender_uid: Option<u32>, our_uids: [u32; 2]) -> Option<String> {
    match sender_uid {
        None => return Some("refused: the kernel did not tell the sender's user".into()),
        Some(uid) if uid != 0 && !our_uids.contains(&uid) => {
            return Some(format!(
                "refused: uid {uid} is neither this server's user ({}) nor root",
                our_uids[0]
            ));
        }
        Some(_) => {}
    }
    if message.trim_end() != REQUEST {
        let shown: String = message.chars().take(40).collect();
        return Some(format!(
            "unknown request {shown:?} (the only request is {REQUEST})"
        ));
    }
    None
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod imp {
    use std::os::fd::AsRawFd as _;

    use nix::sys::socket::{ControlMessageOwned, MsgFlags, UnixAddr, UnixCredentials};

    use super::Requester;

    /// One datagram: its text, the sender's pid and uid (from the kernel),
    /// and its address.
    pub(super) struct Received {
        message: String,
        pid: Option<u32>,
        uid: Option<u32>,
        from: Option<UnixAddr>,
    }

    pub(super) fn bind(name: &str) -> std::io::Result<tokio::net::UnixDatagram> {
        #[cfg(target_os = "android")]
        use std::os::android::net::SocketAddrExt;
        #[cfg(target_os = "linux")]
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        let socket = std::os::unix::net::UnixDatagram::bind_addr(&addr)?;
        socket.set_nonblocking(true)?;
        // Every datagram then carries its sender's pid and uid, set by the kernel.
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::PassCred, &true)?;
        tokio::net::UnixDatagram::from_std(socket)
    }

    pub(super) async fn receive(socket: &tokio::net::UnixDatagram) -> std::io::Result<Received> {
        socket
            .async_io(tokio::io::Interest::READABLE, || receive_now(socket))
            .await
    }

    /// A request already queued, if any.
    pub(super) fn try_receive(
        socket: &tokio::net::UnixDatagram,
    ) -> std::io::Result<Option<Received>> {
        // Straight to the socket: tokio's idea of its readiness may be stale,
        // as nobody polled it while the upgrade ran (a WouldBlock here only
        // makes the next `receive` check again).
        match receive_now(socket) {
            Ok(received) => Ok(Some(received)),
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(err) => Err(err),
        }
    }

    fn receive_now(socket: &tokio::net::UnixDatagram) -> std::io::Result<Received> {
        let mut buf = [0u8; 512];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!(UnixCredentials);
        let msg = nix::sys::socket::recvmsg::<UnixAddr>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_DONTWAIT,
        )?;
        let (mut pid, mut uid) = (None, None);
        for cmsg in msg.cmsgs()? {
            if let ControlMessageOwned::ScmCredentials(cred) = cmsg {
                pid = u32::try_from(cred.pid()).ok();
                uid = Some(cred.uid());
            }
        }
        let from = msg.address.filter(|addr| !addr.is_unnamed());
        let bytes = msg.bytes;
        Ok(Received {
            message: String::from_utf8_lossy(&buf[..bytes]).into_owned(),
            pid,
            uid,
            from,
        })
    }

    /// The requester, when the request is allowed; otherwise it is answered
    /// `FAILED` here.
    pub(super) fn admit(
        socket: &tokio::net::UnixDatagram,
        received: Received,
    ) -> Option<Requester> {
        let requester = Requester {
            pid: received.pid.unwrap_or_default(),
            reply_to: received.from,
        };
        let ours = [
            nix::unistd::getuid().as_raw(),
            nix::unistd::geteuid().as_raw(),
        ];
        if let Some(reason) = super::refusal(&received.message, received.uid, ours) {
            tracing::warn!(
                sender = requester.pid,
                uid = received.uid,
                "upgrade request not taken: {reason}"
            );
            reply(socket, &requester, &format!("FAILED {reason}"));
            return None;
        }
        tracing::info!(
            requester = requester.pid,
            "upgrade requested (portkeeper upgrade)"
        );
        Some(requester)
    }

    /// Sends `reply` to `requester`, without waiting: its socket is fresh
    /// and waits for this one datagram.
    pub(super) fn reply(socket: &tokio::net::UnixDatagram, requester: &Requester, reply: &str) {
        let Some(to) = &requester.reply_to else {
            tracing::debug!(
                requester = requester.pid,
                reply,
                "upgrade request: no address to answer to"
            );
            return;
        };
        if let Err(err) = nix::sys::socket::sendto(
            socket.as_raw_fd(),
            reply.as_bytes(),
            to,
            MsgFlags::MSG_DONTWAIT,
        ) {
            tracing::warn!(
                error = %err,
                requester = requester.pid,
                reply,
                "upgrade request: cannot answer (the requester gave up?)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_user_or_root_may_ask_and_only_for_an_upgrade() {
        let ours = [1000, 1000];
        assert_eq!(refusal("UPGRADE", Some(1000), ours), None);
        assert_eq!(refusal("UPGRADE\n", Some(0), ours), None);
        let other = refusal("UPGRADE", Some(1001), ours).unwrap();
        assert!(other.contains("uid 1001"), "{other}");
        assert!(refusal("UPGRADE", None, ours).is_some());
        let unknown = refusal("STOP", Some(1000), ours).unwrap();
        assert!(unknown.contains("\"STOP\""), "{unknown}");
    }

    #[test]
    fn a_failure_is_answered_on_one_line_with_its_cause() {
        let err = HandoffError::Spawn {
            executable: "/usr/local/bin/portkeeper".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        let line = one_line(&err);
        assert!(
            line.starts_with("cannot start /usr/local/bin/portkeeper: "),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }
}
