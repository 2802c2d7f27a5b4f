//! Handing our listening socket to a child process: the giving side of the LISTEN_FDS protocol.
//!
//! [`inherit`](super::inherit) adopts a socket; this module passes one on, so
//! a new executable can take over the port without it ever being closed (the
//! binary upgrade of SIGUSR2, SIGHUP and `RELOAD=true`). The child receives:
//! - every socket, at fds 3, 4, ..., without close-on-exec, via `command-fds`
//!   (which does the `dup2` between fork and exec, so we need no `unsafe` of
//!   our own);
//! - `LISTEN_FDS=<count>` and `LISTEN_FDNAMES=<name>:<name>...`, one name per
//!   socket (its role's name), so the child serves the same set;
//! - `LISTEN_PID=<its own pid>`. The pid is unknown before the fork, so the
//!   child is started through `/bin/sh -c 'LISTEN_PID=$$ ... exec "$0" "$@"'`:
//!   `$$` is the shell's pid, which `exec` hands on to the executable. A
//!   systemd watchdog (`WATCHDOG_PID`) is moved to the child the same way.
//!
//! [`Parent::Reaper`] starts that shell from a second one that exits at once,
//! so the new process is orphaned from the start: the kernel makes it a
//! child of the nearest subreaper, which under systemd is the service
//! manager itself (PID 1, or a user manager). systemd supervises a main
//! process that is its own child like the one it started; one that is not
//! ("alien") it cannot wait for, so on `systemctl stop` it sends SIGKILL
//! at once instead of letting it drain.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::Command;

use command_fds::{CommandFdExt, FdMapping};

/// The fd number the child finds the first socket at (`SD_LISTEN_FDS_START`).
const CHILD_FD: i32 = 3;

/// One socket to hand over: our own duplicate of it, and its name.
#[derive(Debug)]
pub(crate) struct Handed {
    /// A duplicate of the listening socket, kept for the children.
    pub(crate) fd: OwnedFd,
    /// Its LISTEN_FDNAMES entry in the child.
    pub(crate) name: String,
}

/// Sets `LISTEN_PID` (and, when present, `WATCHDOG_PID`) to the shell's own
/// pid, then becomes the executable in `$0` with the arguments in `$@`.
const EXEC_WITH_OWN_PID: &str = r#"LISTEN_PID=$$; export LISTEN_PID
if [ -n "${WATCHDOG_PID:-}" ]; then WATCHDOG_PID=$$; export WATCHDOG_PID; fi
exec "$0" "$@""#;

/// Runs [`EXEC_WITH_OWN_PID`] (in `$0`) in a shell of its own, in the
/// background, and exits: that shell is orphaned at once.
const START_ORPHANED: &str = r#"/bin/sh -c "$0" "$@" &"#;

/// The shell that sets the child's pid variables; POSIX guarantees one here.
const SHELL: &str = "/bin/sh";

/// Whose child the new process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Parent {
    /// Ours: we can wait for it and read its exit status.
    Us,
    /// The nearest subreaper's (under systemd: the service manager's); the
    /// command's own process exits as soon as the new process is started.
    Reaper,
}

/// A command that starts `executable` with `args` and hands it `sockets` as
/// fds 3, 4, ..., with their names. The sockets are duplicated; ours stay
/// open and served.
///
/// The rest of the environment is inherited as it is, less what was handed
/// to *us*, which stays in our environment (we never write it): our
/// `LISTEN_PID`, `LISTEN_FDS_FIRST_FD` and predecessor's
/// `PORTKEEPER_HANDOFF_NOTIFY` are removed from the child's, so it gets
/// exactly its own `LISTEN_FDS`/`LISTEN_FDNAMES`/`LISTEN_PID` (the caller
/// sets a `PORTKEEPER_HANDOFF_NOTIFY` of its own afterwards).
pub(crate) fn command(
    executable: &Path,
    args: &[OsString],
    sockets: &[Handed],
    parent: Parent,
) -> std::io::Result<Command> {
    let mut mappings = Vec::with_capacity(sockets.len());
    for (child_fd, socket) in (CHILD_FD..).zip(sockets) {
        mappings.push(FdMapping {
            parent_fd: socket.fd.try_clone()?,
            child_fd,
        });
    }
    let names: Vec<&str> = sockets.iter().map(|s| s.name.as_str()).collect();
    let mut cmd = Command::new(SHELL);
    cmd.arg("-c");
    if parent == Parent::Reaper {
        cmd.arg(START_ORPHANED);
    }
    cmd.arg(EXEC_WITH_OWN_PID)
        .arg(executable)
        .args(args)
        .env("LISTEN_FDS", sockets.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS_FIRST_FD")
        .env_remove(crate::settings::HANDOFF_NOTIFY_VAR);
    cmd.fd_mappings(mappings).map_err(std::io::Error::other)?;
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shell trick, run for real: the child sees fds 3 and 4 open and its own pid.
    #[cfg(target_os = "linux")] // /proc/self/fd
    #[test]
    fn child_gets_fd_3_and_its_own_pid() {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let sockets = [
            Handed {
                fd: socket.try_clone().unwrap().into(),
                name: "web".to_owned(),
            },
            Handed {
                fd: admin.try_clone().unwrap().into(),
                name: "admin".to_owned(),
            },
        ];
        let mut cmd = command(
            Path::new(SHELL),
            &[
                "-c".into(),
                // Prints "<LISTEN_PID> <$$> <names> <fd 3 is open>".
                r#"[ -e /proc/self/fd/3 ] && [ -e /proc/self/fd/4 ] && o=open || o=closed; echo "$LISTEN_PID $$ $LISTEN_FDNAMES $LISTEN_FDS $o""#.into(),
            ],
            &sockets,
            Parent::Us,
        )
        .unwrap();
        let output = cmd.output().unwrap();
        let text = String::from_utf8(output.stdout).unwrap();
        let fields: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(fields.len(), 5, "{text:?}");
        assert_eq!(fields[0], fields[1], "LISTEN_PID must be the child's pid");
        assert_eq!(&fields[2..], ["web:admin", "2", "open"]);
    }

    /// Nothing handed to us reaches the child: our `LISTEN_PID`,
    /// `LISTEN_FDS_FIRST_FD` and `PORTKEEPER_HANDOFF_NOTIFY` stay in our
    /// environment (we never write it), so the command removes them.
    #[test]
    fn the_child_gets_its_own_variables_and_none_of_ours() {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let sockets = [Handed {
            fd: socket.try_clone().unwrap().into(),
            name: "http".to_owned(),
        }];
        let cmd = command(Path::new(SHELL), &[], &sockets, Parent::Us).unwrap();
        let envs: std::collections::HashMap<_, _> = cmd
            .get_envs()
            .map(|(k, v)| (k.to_str().unwrap(), v.map(|v| v.to_str().unwrap())))
            .collect();
        assert_eq!(envs["LISTEN_FDS"], Some("1"));
        assert_eq!(envs["LISTEN_FDNAMES"], Some("http"));
        for removed in [
            "LISTEN_PID",
            "LISTEN_FDS_FIRST_FD",
            crate::settings::HANDOFF_NOTIFY_VAR,
        ] {
            assert_eq!(envs.get(removed), Some(&None), "{removed} must be removed");
        }
    }

    /// With `Parent::Reaper` the command exits at once and the new process
    /// is someone else's child, yet it sees fd 3 and its own pid as before.
    #[cfg(target_os = "linux")]
    #[test]
    fn an_orphaned_child_gets_fd_3_and_its_own_pid() {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let sockets = [Handed {
            fd: socket.try_clone().unwrap().into(),
            name: "web".to_owned(),
        }];
        let dir = std::env::temp_dir().join(format!("pk-handover-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("out");
        let mut cmd = command(
            Path::new(SHELL),
            &[
                "-c".into(),
                // The starter exits right after starting us: wait (bounded) until
                // the kernel has reparented us, or the parent check races it.
                r#"[ -e /proc/self/fd/3 ] && o=open || o=closed; n=0; while { [ ! -e "$1.starter" ] || [ "$(cut -d' ' -f4 /proc/$$/stat)" = "$(cat "$1.starter")" ]; } && [ $n -lt 1000 ]; do sleep 0.01; n=$((n+1)); done; ppid=$(cut -d' ' -f4 /proc/$$/stat); echo "$LISTEN_PID $$ $o $ppid" > "$1.tmp"; mv "$1.tmp" "$1""#.into(),
                "sh".into(),
                out.clone().into(),
            ],
            &sockets,
            Parent::Reaper,
        )
        .unwrap();
        let mut started = cmd.spawn().unwrap();
        let starter = started.id();
        std::fs::write(dir.join("out.starter"), starter.to_string()).unwrap();
        assert!(started.wait().unwrap().success());
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let text = loop {
            if let Ok(text) = std::fs::read_to_string(&out) {
                break text;
            }
            assert!(std::time::Instant::now() < end, "the orphan never wrote");
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let _ = std::fs::remove_dir_all(&dir);
        let fields: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(fields.len(), 4, "{text:?}");
        assert_eq!(fields[0], fields[1], "LISTEN_PID must be the child's pid");
        assert_eq!(fields[2], "open");
        assert_ne!(
            fields[3],
            starter.to_string(),
            "orphaned: not the starter's child"
        );
        assert_ne!(fields[3], std::process::id().to_string(), "and not ours");
    }
}
