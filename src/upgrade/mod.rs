//! Binary upgrades without a refused connection: hand the listener to a new executable, then drain.
//!
//! On SIGUSR2, on SIGHUP when we have no controlling terminal (a service:
//! `systemctl reload`), or with `RELOAD=true` when the executable file is
//! replaced (see [`watch`]), the running server starts the executable at its
//! own path as a child and hands it the listening socket by the LISTEN_FDS
//! protocol ([`crate::listener::handover`]). Both processes accept from the
//! same socket while the child starts, so the kernel's queue never stops
//! taking connections. The child reports `READY=1` to a private datagram
//! socket of ours, named in [`HANDOFF_NOTIFY_VAR`] (the `sd_notify` protocol,
//! so the child's ordinary readiness code does the job). Only then do we stop
//! accepting and drain. If the child exits, or is not ready within
//! [`READY_TIMEOUT`], it is killed and we keep serving, with a log line why.
//!
//! The child runs in a process group of its own, and a failed upgrade kills
//! the whole group: a wrapper script that forks (no `exec`) would otherwise
//! leave its children alive holding the inherited socket, and once we stop,
//! the port would accept connections that nobody answers. On a terminal
//! (see [`terminal`]) the child instead joins our group, the terminal's
//! foreground job, so that Ctrl-C and `stty tostop` treat it as the job it
//! is; a failed one is then killed with its lineage (its descendants, and
//! whatever names it in `LISTEN_PID`), and the first process stays until
//! the last successor ends, so the shell does not take the terminal back.
//!
//! SIGHUP on a terminal is a hang-up (the terminal was closed: the kernel
//! sends SIGHUP to its session), so there it means "stop", as for any
//! program: an upgrade would leave an orphan holding the port with nobody to
//! stop it. Whether we have a terminal is decided once, at start-up: after a
//! hang-up the kernel has already taken the terminal away. A process on a
//! terminal also stops when it finds the terminal gone without a SIGHUP of
//! its own (a successor whose streams are not on the terminal runs in a
//! process group of its own, which the kernel's SIGHUP does not reach; and
//! the session leader's exit takes the terminal away). A SIGHUP ignored at start-up (`nohup`)
//! stays ignored, and then the terminal is not watched either.
//!
//! Under systemd, `NOTIFY_SOCKET` keeps naming the manager in the child: the
//! readiness of a handoff travels on its own variable, so no message ever
//! goes to the wrong socket. Once the child is ready we send `MAINPID=<child>`
//! with the child's own `STATUS=` (its URL, relayed from its `READY=1`), the
//! manager follows the new process, and the child's later messages
//! (watchdog, `STOPPING=1`, the next upgrade's `MAINPID=`) are accepted from
//! it. With a manager, the new process is started orphaned, so that it is
//! the manager's own child ([`handover::Parent::Reaper`](crate::listener::handover::Parent)):
//! systemd 252 does not wait for a main process that is not its child
//! ("alien") and would SIGKILL it on `systemctl stop` instead of letting it
//! drain. Its pid then comes from the kernel with its `READY=1`
//! (`SCM_CREDENTIALS`), and only a process of its group may report ready.

#[cfg(unix)]
mod control;
mod settings;
#[cfg(unix)]
mod terminal;
#[cfg(unix)]
pub(crate) mod watch;

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::notify::Notifier;

pub(crate) use settings::UpgradeSettings;
#[cfg(unix)]
pub(crate) use terminal::Foreground;

/// Nothing to keep without Unix process groups.
#[cfg(not(unix))]
#[derive(Debug, Default)]
pub(crate) struct Foreground;

#[cfg(not(unix))]
impl Foreground {
    pub(crate) fn at_start(
        _source: crate::listener::Source,
        _under_manager: bool,
        _signals: bool,
        _upgrades: bool,
    ) -> Self {
        Foreground
    }

    pub(crate) async fn stay(
        self,
        served: Result<(), crate::error::Error>,
    ) -> Result<(), crate::error::Error> {
        served
    }
}

/// The variable that tells a process started by a handoff where to report
/// `READY=1`: its predecessor's private `sd_notify` socket (`@name` = abstract).
/// Read from the real environment, never removed from it; a successor's
/// command gets a fresh one.
pub(crate) const HANDOFF_NOTIFY_VAR: &str = crate::settings::HANDOFF_NOTIFY_VAR;

/// How long a new executable may take to say it is ready. Start-up is
/// milliseconds (nothing is bound, the socket is inherited); the margin is for
/// a loaded machine and a cold disk cache.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// What this process needs to start its successor, collected by `main.rs`.
#[derive(Debug, Clone)]
pub(crate) struct UpgradePlan {
    /// The executable's path, read at start-up: once the file is replaced,
    /// `/proc/self/exe` names the deleted old inode, while this path names the
    /// new file.
    pub(crate) executable: PathBuf,
    /// Our command-line arguments, passed on unchanged.
    pub(crate) args: Vec<OsString>,
    /// `RELOAD=true`: watch `executable` and hand over when it is replaced.
    pub(crate) watch_executable: bool,
}

/// Both ends of the upgrade protocol, as far as this process takes part.
#[derive(Debug, Default)]
pub(crate) struct Succession {
    /// How to start a successor; `None` when the executable's path is unknown.
    pub(crate) plan: Option<UpgradePlan>,
    /// Our predecessor, waiting for our `READY=1`, when a handoff started us.
    pub(crate) predecessor: Option<Notifier>,
}

/// Why a handoff was attempted.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Trigger {
    /// SIGUSR2, or SIGHUP without a controlling terminal; the signal's name.
    Signal(&'static str),
    /// `RELOAD=true` saw a new executable file.
    ExecutableReplaced,
    /// `portkeeper upgrade` (this pid) asked on the control socket ([`control`]).
    Requested(u32),
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Trigger::Signal(name) => name,
            Trigger::ExecutableReplaced => "executable replaced",
            Trigger::Requested(pid) => return write!(f, "portkeeper upgrade (pid {pid})"),
        })
    }
}

/// Why this process stops serving, other than SIGTERM or SIGINT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Departure {
    /// A new process (this pid) took the listener over; drain and exit.
    HandedOver(u32),
    /// SIGHUP with a controlling terminal: the terminal was closed. Stop as
    /// on SIGTERM (`STOPPING=1`, drain), and start no successor.
    HungUp,
    /// The development watcher that started us (cargo watch) is gone: stop
    /// as on SIGTERM, with the drain.
    WatcherGone,
}

/// Why a handoff did not happen; the old process keeps serving.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandoffError {
    /// The executable could not be started at all.
    #[error("cannot start {executable}")]
    Spawn {
        /// The path tried.
        executable: String,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// Waiting for the started process failed (a system error, not the
    /// new executable's).
    #[error("cannot wait for the new process {pid}")]
    Wait {
        /// The child's pid.
        pid: u32,
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
    /// The new process, started as an orphan under a service manager, and
    /// all it started exited before it said it was ready.
    #[error(
        "the new process (group {group}) exited before it was ready (its error is logged above)"
    )]
    Vanished {
        /// Its process group's id.
        group: u32,
    },
    /// The child did not say it was ready in time; it was killed.
    #[error("the new process {pid} was not ready within {}s and was killed", READY_TIMEOUT.as_secs())]
    TimedOut {
        /// The child's pid.
        pid: u32,
    },
}

/// Hands the listener over on request; see the module docs.
pub(crate) struct Upgrader {
    #[cfg(unix)]
    inner: imp::Upgrader,
}

impl Upgrader {
    /// Prepares for upgrades that hand over `sockets` (duplicates kept for
    /// the children, each with its name); an empty set turns upgrades off.
    /// Installs the SIGUSR2 and SIGHUP handlers at once, so a signal that
    /// comes right after we report ready is handled and not the default
    /// "terminate". Must be called inside the tokio runtime.
    pub(crate) fn new(
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

    /// No upgrades at all (`Server::upgrades(false)`): no SIGUSR2 or SIGHUP
    /// handler, no executable watch, no terminal watch; the host's own
    /// handlers for those signals are left alone.
    pub(crate) fn off() -> Self {
        #[cfg(unix)]
        {
            Upgrader {
                inner: imp::Upgrader::off(),
            }
        }
        #[cfg(not(unix))]
        {
            Upgrader {}
        }
    }

    /// Waits for triggers and attempts a handoff for each; returns once a new
    /// process has taken over, or when the terminal hung up. Never returns
    /// when neither can happen here. Dropping the future kills a child that is
    /// not ready yet, with everything it started.
    pub(crate) async fn until_handed_over(self) -> Departure {
        #[cfg(unix)]
        return self.inner.until_handed_over().await;
        #[cfg(not(unix))]
        std::future::pending().await
    }
}

#[cfg(unix)]
mod imp {
    use std::os::unix::net::UnixDatagram;
    use std::os::unix::process::CommandExt as _;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use tokio::signal::unix::{Signal, SignalKind, signal};

    use super::watch::ExecutableWatch;
    use super::{Departure, HANDOFF_NOTIFY_VAR, HandoffError, READY_TIMEOUT, Trigger, UpgradePlan};
    use crate::listener::handover::{self, Parent};
    use crate::notify::Notifier;

    pub(super) struct Upgrader {
        signals: Signals,
        /// `None` when upgrades are off (the executable or the socket is unknown).
        handoff: Option<Handoff>,
        watch: Option<ExecutableWatch>,
        control: super::control::Control,
    }

    /// What starting a successor needs.
    struct Handoff {
        plan: UpgradePlan,
        sockets: Vec<handover::Handed>,
        manager: Option<Arc<Notifier>>,
        /// A terminal's job (see [`super::terminal`]): the new process joins
        /// our process group, the terminal's foreground job, instead of
        /// leading one of its own in the background.
        job: bool,
    }

    /// The signals this module answers; a handler that cannot be installed is
    /// `None` (and logged).
    struct Signals {
        usr2: Option<Signal>,
        hangup: Option<Signal>,
        /// What SIGHUP means here, decided at start-up.
        hangup_means: Hangup,
    }

    /// What SIGHUP means to this process.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Hangup {
        /// No controlling terminal (a service): an upgrade.
        Upgrade,
        /// A controlling terminal: the terminal hung up; stop. Also when the
        /// terminal goes away without a SIGHUP for us (see [`terminal_gone`]).
        Stop,
        /// Ignored when we started (`nohup`): kept ignored, as asked.
        Ignored,
    }

    /// How often a process on a terminal checks that it still has one.
    const TERMINAL_POLL: std::time::Duration = std::time::Duration::from_millis(500);

    /// What a signal asks for.
    enum Request {
        Upgrade(Trigger),
        Stop,
        WatcherGone,
    }

    impl Signals {
        fn install() -> Self {
            let install = |kind, name: &str| match signal(kind) {
                Ok(signal) => Some(signal),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot handle {name}; it keeps its default action");
                    None
                }
            };
            let hangup_means = if crate::signals::was_ignored(crate::signals::SIGHUP) {
                Hangup::Ignored
            } else if has_controlling_terminal() {
                Hangup::Stop
            } else {
                Hangup::Upgrade
            };
            match hangup_means {
                Hangup::Ignored => tracing::info!(
                    "SIGHUP is ignored (nohup): closing the terminal does not stop this process; upgrade with SIGUSR2"
                ),
                Hangup::Stop => {
                    tracing::debug!("on a terminal: SIGHUP stops; upgrade with SIGUSR2")
                }
                Hangup::Upgrade => tracing::debug!("no terminal: SIGHUP and SIGUSR2 upgrade"),
            }
            Signals {
                usr2: install(SignalKind::user_defined2(), "SIGUSR2"),
                // Installing a handler would undo nohup's "ignore".
                hangup: (hangup_means != Hangup::Ignored)
                    .then(|| install(SignalKind::hangup(), "SIGHUP"))
                    .flatten(),
                hangup_means,
            }
        }

        /// No handlers at all.
        fn none() -> Self {
            Signals {
                usr2: None,
                hangup: None,
                hangup_means: Hangup::Ignored,
            }
        }

        async fn next(&mut self) -> Request {
            let on_terminal = self.hangup_means == Hangup::Stop;
            tokio::select! {
                Some(()) = recv(&mut self.usr2) => Request::Upgrade(Trigger::Signal("SIGUSR2")),
                Some(()) = recv(&mut self.hangup) => {
                    if on_terminal {
                        Request::Stop
                    } else {
                        Request::Upgrade(Trigger::Signal("SIGHUP"))
                    }
                }
                () = terminal_gone(), if on_terminal => Request::Stop,
                () = super::terminal::watcher_gone() => Request::WatcherGone,
                else => std::future::pending().await,
            }
        }

        /// Completes on a terminal hang-up only (other signals are left queued).
        async fn hung_up(&mut self) {
            if self.hangup_means != Hangup::Stop {
                return std::future::pending().await;
            }
            tokio::select! {
                Some(()) = recv(&mut self.hangup) => {}
                () = terminal_gone() => {}
            }
        }
    }

    /// Completes once this process has lost its controlling terminal. The
    /// kernel sends SIGHUP on a hang-up only to the session leader and the
    /// foreground process group; a successor started by SIGUSR2 outside a
    /// terminal's job (see [`super::terminal::is_job`]) runs in a group of
    /// its own, in the background, and would otherwise outlive its
    /// terminal, holding the port. The terminal also goes when the session
    /// leader exits (a server started as `tmux new 'portkeeper'` or over
    /// ssh, upgraded: the old process was the leader), and its window with it.
    async fn terminal_gone() {
        loop {
            tokio::time::sleep(TERMINAL_POLL).await;
            if lost_controlling_terminal() {
                return;
            }
        }
    }

    /// True when this process has a controlling terminal: opening `/dev/tty`
    /// succeeds exactly then (ENXIO otherwise), and opening it does not
    /// acquire one. Any other failure (no `/dev/tty` in a service's private
    /// `/dev`) also counts as none.
    pub(super) fn has_controlling_terminal() -> bool {
        std::fs::File::open("/dev/tty").is_ok()
    }

    /// True only when `/dev/tty` says for certain that we have no terminal
    /// (ENXIO): running out of file descriptors must not look like a hang-up.
    fn lost_controlling_terminal() -> bool {
        std::fs::File::open("/dev/tty")
            .is_err_and(|err| err.raw_os_error() == Some(nix::errno::Errno::ENXIO as i32))
    }

    impl Upgrader {
        pub(super) fn new(
            plan: Option<UpgradePlan>,
            sockets: Vec<handover::Handed>,
            manager: Option<Arc<Notifier>>,
        ) -> Self {
            let signals = Signals::install();
            let handoff = match (plan, sockets.is_empty()) {
                (None, _) => {
                    tracing::warn!(
                        "the executable's path is unknown; binary upgrades (SIGUSR2, SIGHUP, RELOAD) are off"
                    );
                    None
                }
                (Some(_), true) => None,
                (Some(plan), false) => Some(Handoff {
                    job: super::terminal::is_job(manager.is_some()),
                    plan,
                    sockets,
                    manager,
                }),
            };
            let watch = handoff
                .as_ref()
                .filter(|h| h.plan.watch_executable)
                .map(|h| {
                    tracing::info!(executable = %h.plan.executable.display(), "RELOAD: watching the executable");
                    ExecutableWatch::new(h.plan.executable.clone())
                });
            let control = match handoff {
                Some(_) => super::control::Control::bind(),
                None => super::control::Control::none(),
            };
            Upgrader {
                signals,
                handoff,
                watch,
                control,
            }
        }

        pub(super) fn off() -> Self {
            Upgrader {
                signals: Signals::none(),
                handoff: None,
                watch: None,
                control: super::control::Control::none(),
            }
        }

        pub(super) async fn until_handed_over(mut self) -> Departure {
            loop {
                let trigger = tokio::select! {
                    request = self.signals.next() => match request {
                        Request::Upgrade(trigger) => trigger,
                        Request::Stop => return Departure::HungUp,
                        Request::WatcherGone => return Departure::WatcherGone,
                    },
                    () = changed(&mut self.watch) => Trigger::ExecutableReplaced,
                    pid = self.control.requested() => Trigger::Requested(pid),
                };
                let Some(handoff) = &self.handoff else {
                    tracing::warn!(trigger = %trigger, "binary upgrades are off (see the warning at start-up); this process keeps serving");
                    continue;
                };
                // A hang-up while the new process starts: give it up (its
                // group is killed when the future is dropped) and stop.
                let result = tokio::select! {
                    result = handoff.hand_over(trigger) => result,
                    () = self.signals.hung_up() => return Departure::HungUp,
                };
                self.control.answer(&result);
                match result {
                    Ok(pid) => {
                        crate::metrics::upgrade_done();
                        return Departure::HandedOver(pid);
                    }
                    Err(err) => {
                        crate::metrics::upgrade_failed();
                        tracing::error!(
                            error = %format!("{err:#}"),
                            trigger = %trigger,
                            "binary upgrade failed; this process keeps serving (fix the new executable, then try again)"
                        );
                    }
                }
            }
        }
    }

    impl Handoff {
        async fn hand_over(&self, trigger: Trigger) -> Result<u32, HandoffError> {
            let executable = self.plan.executable.display().to_string();
            tracing::info!(trigger = %trigger, executable, "binary upgrade: starting the new executable");
            let (ready, ready_name) = ready_socket().map_err(HandoffError::ReadySocket)?;
            let spawn_failed = |source| HandoffError::Spawn {
                executable: executable.clone(),
                source,
            };
            // Under a service manager the new process must be the manager's
            // own child, or systemd will not wait for it to drain on stop
            // (see `Parent::Reaper`). Elsewhere it is ours, for its exit status.
            let parent = if self.manager.is_some() {
                Parent::Reaper
            } else {
                Parent::Us
            };
            let mut cmd = handover::command(
                &self.plan.executable,
                &self.plan.args,
                &self.sockets,
                parent,
            )
            .map_err(spawn_failed)?;
            cmd.env(HANDOFF_NOTIFY_VAR, &ready_name);
            let kin = if self.job {
                // On a terminal: our own group, the foreground job, so that
                // Ctrl-C reaches the new process and `stty tostop` does not
                // stop it (SIGTTOU) when it writes before it is ready.
                Kin::Lineage
            } else {
                // A group of its own, led by the process we start (pgid =
                // its pid), so that a failed upgrade can kill everything it
                // started.
                cmd.process_group(0);
                Kin::Group
            };
            let child = tokio::process::Command::from(cmd)
                .spawn()
                .map_err(spawn_failed)?;
            let mut candidate = Candidate::new(child, kin);
            let group = candidate.pid;
            let child = candidate.child.as_mut().expect("set above");
            let ready = tokio::select! {
                result = wait_ready(&ready, group, kin) => result.map_err(HandoffError::ReadySocket)?,
                status = gone(child, parent, group) => {
                    let status = status.map_err(|source| HandoffError::Wait { pid: group, source })?;
                    candidate.child = None;
                    // Dropping `candidate` kills what the child left behind.
                    return Err(match status {
                        Some(status) => HandoffError::Exited { pid: group, status },
                        None => HandoffError::Vanished { group },
                    });
                }
                () = tokio::time::sleep(READY_TIMEOUT) => {
                    return Err(HandoffError::TimedOut { pid: group });
                }
            };
            // The new process serves now; it must outlive us. On a terminal
            // the first process waits for it (`Foreground::stay`).
            if let Some(child) = candidate.adopt() {
                if self.job {
                    super::terminal::keep_successor(child);
                }
            }
            let pid = ready.pid;
            if let Some(manager) = &self.manager {
                // The new process's own STATUS= (its URL), relayed with the
                // MAINPID= that lets the manager accept its messages.
                let status = ready.status.unwrap_or_else(|| {
                    format!("took the listener over from pid {}", std::process::id())
                });
                manager.notify(&format!("MAINPID={pid}\nSTATUS={status}"));
            }
            tracing::info!(successor = pid, "binary upgrade: the new process is ready");
            Ok(pid)
        }
    }

    /// Completes when the new process is gone. Our own child: with its exit
    /// status. An orphan: nothing to read an exit status from, so once the
    /// starting shell has exited, the group is watched. Our shell sets
    /// `LISTEN_PID` to the new process's pid just before `exec`, and what it
    /// starts inherits the variable: the new process is gone when the group
    /// is empty, or when its members name in `LISTEN_PID` only processes that
    /// are no longer there. So a wrapper that fails while its children live on
    /// is seen at once, not after [`READY_TIMEOUT`].
    async fn gone(
        child: &mut tokio::process::Child,
        parent: Parent,
        group: u32,
    ) -> std::io::Result<Option<std::process::ExitStatus>> {
        let status = child.wait().await?;
        if parent == Parent::Us {
            return Ok(Some(status));
        }
        loop {
            // /proc reads block: off the runtime's workers.
            let gone = tokio::task::spawn_blocking(move || group_is_gone(group))
                .await
                .unwrap_or(false);
            if gone {
                return Ok(None);
            }
            tokio::time::sleep(GROUP_POLL).await;
        }
    }

    /// True when the orphaned new process of `group` is gone (see [`gone`]).
    /// `false` when /proc cannot tell: then readiness or the timeout decides.
    fn group_is_gone(group: u32) -> bool {
        let Some(members) = live_members(group) else {
            return false;
        };
        let named: Vec<u32> = members.iter().filter_map(|&pid| listen_pid(pid)).collect();
        // Members but no LISTEN_PID yet: our shell has not exec'd.
        let main_gone = !named.is_empty() && !named.iter().any(|pid| members.contains(pid));
        members.is_empty() || main_gone
    }

    /// How often an orphaned new process's group is checked for life.
    const GROUP_POLL: std::time::Duration = std::time::Duration::from_millis(100);

    /// The members of process group `group` that have not exited; `None`
    /// when /proc cannot be read. Zombies do not count: an orphan is reaped
    /// by the manager, or by an init that may take its time (containers).
    fn live_members(group: u32) -> Option<Vec<u32>> {
        let pgid = i32::try_from(group).ok()?;
        if let Err(nix::errno::Errno::ESRCH) =
            nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), None)
        {
            return Some(Vec::new());
        }
        let group = group.to_string();
        let members = std::fs::read_dir("/proc")
            .ok()?
            .flatten()
            .filter_map(|entry| {
                let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
                let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
                // "pid (comm) state ppid pgrp ...": comm may hold spaces.
                let (_, rest) = stat.rsplit_once(')')?;
                let mut fields = rest.split_whitespace();
                let state = fields.next()?;
                let pgrp = fields.nth(1)?;
                (pgrp == group && !matches!(state, "Z" | "X")).then_some(pid)
            })
            .collect();
        Some(members)
    }

    /// The `LISTEN_PID` a process was started with.
    fn listen_pid(pid: u32) -> Option<u32> {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        environ
            .split(|&b| b == 0)
            .find_map(|var| var.strip_prefix(b"LISTEN_PID="))
            .and_then(|value| std::str::from_utf8(value).ok()?.parse().ok())
    }

    /// How the new process and what it starts are told from other processes.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Kin {
        /// A process group of its own, led by the new process.
        Group,
        /// On a terminal, in our process group: the new process, its
        /// descendants, and whatever names it in `LISTEN_PID` (a helper it
        /// started whose parent has exited, reparented since).
        Lineage,
    }

    impl Kin {
        /// True when `pid` belongs to the new process `root`.
        fn contains(self, root: u32, pid: u32) -> bool {
            match self {
                Kin::Group => in_group(pid, root),
                Kin::Lineage => pid == root || lineage(root).contains(&pid),
            }
        }
    }

    /// A child that has not said it is ready: killed with everything it
    /// started if we give up on it, including when the whole upgrade is
    /// cancelled by SIGTERM or a hang-up.
    struct Candidate {
        /// `None` once reaped (or adopted).
        child: Option<tokio::process::Child>,
        /// The child's pid; with [`Kin::Group`] also its process group's id.
        pid: u32,
        kin: Kin,
        adopted: bool,
    }

    impl Candidate {
        fn new(child: tokio::process::Child, kin: Kin) -> Self {
            Candidate {
                pid: child.id().unwrap_or_default(),
                child: Some(child),
                kin,
                adopted: false,
            }
        }

        /// The new process serves: nothing is killed; its handle, unless reaped.
        fn adopt(&mut self) -> Option<tokio::process::Child> {
            self.adopted = true;
            self.child.take()
        }
    }

    impl Drop for Candidate {
        fn drop(&mut self) {
            if self.adopted {
                return;
            }
            use nix::sys::signal::{Signal, killpg};
            use nix::unistd::Pid;
            match self.kin {
                Kin::Group => {
                    // The group outlives its leader while any member lives,
                    // and its id is not reused until then: killing it after
                    // the child exited reaches exactly what the child left
                    // behind. ESRCH: nothing left.
                    let group = i32::try_from(self.pid).unwrap_or_default();
                    if group > 0 {
                        match killpg(Pid::from_raw(group), Signal::SIGKILL) {
                            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                            Err(err) => tracing::warn!(
                                error = %err,
                                pgid = group,
                                "cannot kill the failed new process's group; kill it by hand (kill -KILL -- -{group})"
                            ),
                        }
                    }
                }
                // Our group is the terminal's job (and the shell's, and ours):
                // only the new process's own lineage goes. Killed until none
                // is left, so that a fork between the scan and the kill is
                // caught by the next scan.
                Kin::Lineage => {
                    for round in 0..LINEAGE_ROUNDS {
                        let mut found = lineage(self.pid);
                        // Not reaped yet: its pid is still its own.
                        if round == 0 && self.child.is_some() {
                            found.push(self.pid);
                        }
                        if found.is_empty() {
                            break;
                        }
                        for pid in found {
                            if let Ok(pid) = i32::try_from(pid) {
                                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                            }
                        }
                    }
                }
            }
            if let Some(child) = &mut self.child {
                // Also the direct child, should the group kill have failed;
                // tokio reaps it in the background.
                let _ = child.start_kill();
            }
        }
    }

    /// How many times a failed new process's lineage is scanned and killed.
    const LINEAGE_ROUNDS: usize = 5;

    /// The living processes that descend from `root` (not `root` itself), by
    /// parent links, and those whose environment names `root` in
    /// `LISTEN_PID`: what `root` started whose parent has exited since (our
    /// shell sets `LISTEN_PID` to `root` just before `exec`, and children
    /// inherit it). Read from /proc; empty when it cannot be read.
    fn lineage(root: u32) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        let mut parents = Vec::new();
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // "pid (comm) state ppid ...": comm may hold spaces.
            let Some((_, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let mut fields = rest.split_whitespace();
            let state = fields.next().unwrap_or("Z");
            let Some(ppid) = fields.next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if !matches!(state, "Z" | "X") {
                parents.push((pid, ppid));
            }
        }
        let mut found: Vec<u32> = Vec::new();
        let mut frontier = vec![root];
        while let Some(parent) = frontier.pop() {
            for &(pid, ppid) in &parents {
                if ppid == parent && pid != root && !found.contains(&pid) {
                    found.push(pid);
                    frontier.push(pid);
                }
            }
        }
        for &(pid, _) in &parents {
            if pid != root && !found.contains(&pid) && listen_pid(pid) == Some(root) {
                found.push(pid);
            }
        }
        found
    }

    async fn recv(signal: &mut Option<Signal>) -> Option<()> {
        match signal {
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
        // Every datagram then carries its sender's pid, set by the kernel.
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::PassCred, &true)?;
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

    /// The new process's `READY=1`: who sent it, and its `STATUS=`.
    struct Ready {
        pid: u32,
        status: Option<String>,
    }

    /// Reads datagrams until one from the new process (one of its group, or
    /// on a terminal of its lineage) carries `READY=1` (other lines, such as
    /// `STATUS=`, are logged and skipped). The kernel tells the sender's pid
    /// (`SO_PASSCRED`), so no other local process can end the handoff.
    async fn wait_ready(
        socket: &tokio::net::UnixDatagram,
        group: u32,
        kin: Kin,
    ) -> std::io::Result<Ready> {
        use std::os::fd::AsRawFd as _;
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, sender) = socket
                .async_io(tokio::io::Interest::READABLE, || {
                    receive_with_sender(socket.as_raw_fd(), &mut buf)
                })
                .await?;
            let message = String::from_utf8_lossy(&buf[..n]);
            // On a terminal the check scans /proc: off the runtime's workers.
            let ours = match sender {
                Some(pid) => tokio::task::spawn_blocking(move || kin.contains(group, pid))
                    .await
                    .unwrap_or(false),
                None => false,
            };
            let Some(pid) = sender.filter(|_| ours) else {
                tracing::warn!(
                    sender,
                    %message,
                    "binary upgrade: ignoring a message from outside the new process's group"
                );
                continue;
            };
            if super::is_ready(&message) {
                let status = message
                    .lines()
                    .find_map(|line| line.strip_prefix("STATUS="))
                    .map(str::to_owned);
                return Ok(Ready { pid, status });
            }
            tracing::debug!(%message, "binary upgrade: message from the new process");
        }
    }

    /// One datagram into `buf`, and its sender's pid from the kernel's
    /// credentials message.
    fn receive_with_sender(
        fd: std::os::fd::RawFd,
        buf: &mut [u8],
    ) -> std::io::Result<(usize, Option<u32>)> {
        use nix::sys::socket::{ControlMessageOwned, MsgFlags, UnixCredentials, recvmsg};
        let mut iov = [std::io::IoSliceMut::new(buf)];
        let mut space = nix::cmsg_space!(UnixCredentials);
        let msg = recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_DONTWAIT)?;
        let sender = msg.cmsgs()?.find_map(|cmsg| match cmsg {
            ControlMessageOwned::ScmCredentials(cred) => u32::try_from(cred.pid()).ok(),
            _ => None,
        });
        Ok((msg.bytes, sender))
    }

    /// True when process `pid` is in process group `group`.
    fn in_group(pid: u32, group: u32) -> bool {
        let (Ok(pid), Ok(group)) = (i32::try_from(pid), i32::try_from(group)) else {
            return false;
        };
        nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid)))
            .is_ok_and(|pgid| pgid.as_raw() == group)
    }
}

/// True when an `sd_notify` message contains the line `READY=1`.
fn is_ready(message: &str) -> bool {
    message.lines().any(|line| line == "READY=1")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed `wait()` is ours, not the executable's: its message must
    /// not say the executable could not be started.
    #[test]
    fn a_failed_wait_is_not_reported_as_a_failed_start() {
        let err = HandoffError::Wait {
            pid: 42,
            source: std::io::Error::from(std::io::ErrorKind::Interrupted),
        };
        let message = err.to_string();
        assert_eq!(message, "cannot wait for the new process 42");
        assert!(!message.contains("cannot start"));
    }

    #[test]
    fn ready_is_a_whole_line() {
        assert!(is_ready("READY=1\nSTATUS=serving"));
        assert!(is_ready("STATUS=x\nREADY=1"));
        assert!(!is_ready("STATUS=READY=1"));
        assert!(!is_ready("READY=10"));
    }
}
