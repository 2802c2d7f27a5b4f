//! Process life outside a service manager: a terminal's job keeps its
//! terminal across upgrades, and a server under a development watcher drains.
//!
//! **On a terminal** (a controlling terminal, a standard stream on a
//! terminal, and no `NOTIFY_SOCKET`), the
//! shell waits for the process it started, and Ctrl-C and a hang-up reach
//! the terminal's foreground process group. So the first process stays the
//! job, as uvicorn's reloader does: it becomes a child subreaper
//! (`PR_SET_CHILD_SUBREAPER`) and starts each successor in its own process
//! group, the foreground one (see `Handoff::hand_over`), where Ctrl-C,
//! SIGHUP and the `stty tostop` rule (SIGTTOU for a *background* process
//! that writes) treat it as the foreground job it is. After handing over and
//! draining, the first process does not exit: [`Foreground::stay`] waits for
//! its successors (a successor's own successor is reparented to it when its
//! parent exits) and ends with the last one's exit status. Meanwhile it
//! holds SIGINT, SIGTERM, SIGHUP and SIGUSR2 and does nothing with them: the
//! foreground group got the same signal, so the serving process drains.
//! Only the first process stays; a successor exits after its drain as usual.
//!
//! **Under a development watcher** (an inherited socket without
//! `LISTEN_PID`: `systemfd --no-pid -- cargo watch -x run`), the watcher
//! stops its command with SIGTERM to the command's process group and SIGKILLs
//! that group as soon as its shell exits, which it does at once: the server
//! would be killed mid-drain. So at start the server leaves that group
//! (unless it is the terminal's foreground group, which Ctrl-C must reach)
//! and asks the kernel for SIGTERM when its parent exits
//! (`PR_SET_PDEATHSIG`): the watcher's shell dies, the server drains. Having
//! left the group, it no longer gets what the watcher forwards to it (Ctrl-C
//! on cargo watch sends SIGINT to the group, and exits), and the shell that
//! cargo watch puts between itself and `cargo run` waits for its child on
//! SIGINT: so the server also stops, with its drain, when its parent's
//! parent (the watcher) is gone ([`watcher_gone`]).

use std::sync::Mutex;

use crate::error::Error;
use crate::listener::Source;

/// The successor this process started and handed over to, kept so that
/// [`Foreground::stay`] reads its exit status (tokio would reap it on its own
/// if the handle were dropped).
static SUCCESSOR: Mutex<Option<tokio::process::Child>> = Mutex::new(None);

/// Keeps the handle of the successor that just took over (see [`SUCCESSOR`]).
pub(super) fn keep_successor(child: tokio::process::Child) {
    *SUCCESSOR.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
}

/// True when this process is a terminal's job: a controlling terminal, no
/// service manager, and a standard stream on a terminal (someone types or
/// reads there; a process whose streams all go elsewhere, such as a test
/// harness's child, keeps the plain behaviour). Successors then share our
/// process group.
pub(super) fn is_job(under_manager: bool) -> bool {
    use std::io::IsTerminal as _;
    let interactive = std::io::stdin().is_terminal()
        || std::io::stdout().is_terminal()
        || std::io::stderr().is_terminal();
    !under_manager && interactive && super::imp::has_controlling_terminal()
}

/// The first process of a terminal's job, which stays until its successors
/// end; inert everywhere else.
#[derive(Debug, Default)]
pub(crate) struct Foreground {
    /// Set when this process is a child subreaper that stays.
    #[cfg(target_os = "linux")]
    held: Option<crate::signals::Held>,
}

impl Foreground {
    /// Decides, where serving begins, what this process does about its
    /// terminal and its parent (see the module docs). `source` is the
    /// listeners' origin, `under_manager` says `NOTIFY_SOCKET` is set, and
    /// `signals` and `upgrades` are `Server::signals` and `Server::upgrades`.
    pub(crate) fn at_start(
        source: Source,
        under_manager: bool,
        signals: bool,
        upgrades: bool,
    ) -> Self {
        #[cfg(target_os = "linux")]
        {
            if source == Source::Systemfd && signals && !under_manager {
                follow_parent();
            }
            // A successor (source: handoff) exits after its drain; the first
            // process waits for it.
            if !signals || !upgrades || source == Source::Handoff || !is_job(under_manager) {
                return Foreground::default();
            }
            use crate::signals::{Held, SIGHUP, SIGINT, SIGTERM, SIGUSR2};
            match nix::sys::prctl::set_child_subreaper(true) {
                Ok(()) => Foreground {
                    // Held before the server's own handlers, and kept after
                    // they are given back, through `stay`.
                    held: Some(Held::new(&[SIGINT, SIGTERM, SIGHUP, SIGUSR2])),
                },
                Err(err) => {
                    tracing::warn!(error = %err, "cannot become a child subreaper: after an upgrade the terminal goes back to the shell");
                    Foreground::default()
                }
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (source, under_manager, signals, upgrades);
            Foreground::default()
        }
    }

    /// After serving ended: on a terminal, once this process has handed over,
    /// waits for its successors, and ends with the last one's exit status;
    /// otherwise returns `served` at once.
    pub(crate) async fn stay(self, served: Result<(), Error>) -> Result<(), Error> {
        #[cfg(target_os = "linux")]
        {
            let Some(held) = self.held else {
                return served;
            };
            let first = SUCCESSOR.lock().unwrap_or_else(|e| e.into_inner()).take();
            let Some(mut child) = first else {
                return served;
            };
            tracing::info!(
                successor = child.id(),
                "this process stays in the foreground until its successors stop (Ctrl-C stops the one serving)"
            );
            let mut last = match child.wait().await {
                Ok(status) => Some(status),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read the successor's exit status");
                    None
                }
            };
            // Each successor's own successor is ours once its parent exits.
            loop {
                let orphans = tokio::task::spawn_blocking(orphaned_successors)
                    .await
                    .unwrap_or_default();
                if orphans.is_empty() {
                    break;
                }
                for pid in orphans {
                    let status = tokio::task::spawn_blocking(move || wait_for(pid))
                        .await
                        .ok()
                        .flatten();
                    if status.is_some() {
                        last = status;
                    }
                }
            }
            drop(held);
            let result = served.and(exit_result(last));
            tracing::debug!("the last successor has stopped");
            result
        }
        #[cfg(not(target_os = "linux"))]
        served
    }
}

/// Our children that a successor left behind, found by the variable every
/// successor (and whatever it starts) has in its environment.
#[cfg(target_os = "linux")]
fn orphaned_successors() -> Vec<u32> {
    let me = std::process::id().to_string();
    let marker = format!("{}=", super::HANDOFF_NOTIFY_VAR);
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let (_, rest) = stat.rsplit_once(')')?;
            let mut fields = rest.split_whitespace();
            let state = fields.next()?;
            let ppid = fields.next()?;
            if ppid != me {
                return None;
            }
            // A zombie's environment is gone: reap it if it was one of ours,
            // which a reparented process of ours that exited already is.
            if matches!(state, "Z" | "X") {
                return Some(pid);
            }
            let environ = std::fs::read(entry.path().join("environ")).ok()?;
            environ
                .split(|&b| b == 0)
                .any(|var| var.starts_with(marker.as_bytes()))
                .then_some(pid)
        })
        .collect()
}

/// Waits for our child `pid` to exit; its status, as std tells it.
#[cfg(target_os = "linux")]
fn wait_for(pid: u32) -> Option<std::process::ExitStatus> {
    use nix::sys::wait::{WaitStatus, waitpid};
    use std::os::unix::process::ExitStatusExt as _;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).ok()?);
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => {
                return Some(std::process::ExitStatus::from_raw((code & 0xff) << 8));
            }
            Ok(WaitStatus::Signaled(_, signal, _)) => {
                return Some(std::process::ExitStatus::from_raw(signal as i32));
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return None,
        }
    }
}

/// What the first process returns for its last successor's exit status:
/// success, a stop cut short by a second signal (the same status), or a
/// failure that names the status (exit 71: `Error` has no kind that carries
/// another program's status).
#[cfg(target_os = "linux")]
fn exit_result(status: Option<std::process::ExitStatus>) -> Result<(), Error> {
    let Some(status) = status else {
        return Ok(());
    };
    // A successor whose drain a second Ctrl-C (or SIGTERM) cut exits 130
    // (143); the job ends the same way.
    match status.code() {
        _ if status.success() => Ok(()),
        Some(130) => Err(Error::forced("SIGINT", 2, 0)),
        Some(143) => Err(Error::forced("SIGTERM", 15, 0)),
        _ => Err(Error::system(
            "the last successor failed",
            std::io::Error::other(format!("it exited with {status}")),
        )),
    }
}

/// Under a development watcher: leaves its process group (unless that is the
/// terminal's foreground group) and stops when the parent exits.
#[cfg(target_os = "linux")]
fn follow_parent() {
    use nix::unistd::{Pid, getpgrp, getpid, getppid, setpgid};
    let parent = getppid();
    let group = getpgrp();
    let foreground = std::fs::File::open("/dev/tty")
        .ok()
        .and_then(|tty| nix::unistd::tcgetpgrp(&tty).ok());
    if group != getpid() && foreground != Some(group) {
        match setpgid(Pid::from_raw(0), Pid::from_raw(0)) {
            Ok(()) => {
                tracing::debug!(
                    left = group.as_raw(),
                    "left the watcher's process group: a SIGKILL to it cannot cut the drain"
                );
                // A signal the watcher sends its group (Ctrl-C forwarded)
                // no longer reaches us, and a shell between the watcher and
                // us waits for us on SIGINT: watch the watcher itself.
                if let Some(grandparent) = parent_of(parent.as_raw()) {
                    let _ = WATCHED.set((parent.as_raw(), grandparent));
                }
            }
            Err(err) => {
                tracing::debug!(error = %err, "cannot leave the parent's process group");
            }
        }
    }
    match nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM) {
        Ok(()) if getppid() != parent => tracing::warn!(
            parent = parent.as_raw(),
            "the process that started us is already gone; stop this one with SIGTERM"
        ),
        Ok(()) => tracing::debug!(
            parent = parent.as_raw(),
            "stops (with its drain) when the process that started it exits"
        ),
        Err(err) => tracing::debug!(error = %err, "cannot ask for SIGTERM when the parent exits"),
    }
}

/// Our parent and its parent at start, once we have left the watcher's
/// process group (see [`watcher_gone`]).
#[cfg(target_os = "linux")]
static WATCHED: std::sync::OnceLock<(i32, i32)> = std::sync::OnceLock::new();

/// How often the watcher is checked for life.
#[cfg(target_os = "linux")]
const WATCHER_POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// The parent of process `pid`, from /proc.
#[cfg(target_os = "linux")]
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Completes when the development watcher that started us is gone, after
/// we left its process group: our parent exited (`PR_SET_PDEATHSIG` has
/// sent SIGTERM already; this is the backstop), or our parent's parent did
/// (Ctrl-C: the watcher forwards SIGINT to its group, which we left, and
/// exits, while the shell between it and us waits for us). Never completes
/// otherwise.
pub(super) async fn watcher_gone() {
    #[cfg(target_os = "linux")]
    if let Some(&(parent, grandparent)) = WATCHED.get() {
        loop {
            tokio::time::sleep(WATCHER_POLL).await;
            let now = tokio::task::spawn_blocking(move || {
                (nix::unistd::getppid().as_raw(), parent_of(parent))
            })
            .await;
            let Ok((ours, theirs)) = now else { continue };
            if ours != parent || theirs != Some(grandparent) {
                tracing::info!(
                    watcher = grandparent,
                    parent,
                    "the development watcher that started this process is gone; stopping"
                );
                return;
            }
        }
    }
    std::future::pending().await
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn the_last_status_decides_the_result() {
        use std::os::unix::process::ExitStatusExt as _;
        assert!(exit_result(None).is_ok());
        assert!(exit_result(Some(std::process::ExitStatus::from_raw(0))).is_ok());
        let cut = exit_result(Some(std::process::ExitStatus::from_raw(130 << 8))).unwrap_err();
        assert_eq!(cut.exit_status(), 130);
        let failed = exit_result(Some(std::process::ExitStatus::from_raw(1 << 8))).unwrap_err();
        assert!(failed.to_string().contains("exit status: 1"), "{failed}");
    }
}
