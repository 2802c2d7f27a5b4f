//! Handing our listening socket to a child process: the giving side of the LISTEN_FDS protocol.
//!
//! [`inherit`](super::inherit) adopts a socket; this module passes one on, so
//! a new executable can take over the port without it ever being closed (the
//! binary upgrade of SIGUSR2, SIGHUP and `RELOAD=true`). The child receives:
//! - the socket at fd 3, without close-on-exec, via `command-fds` (which does
//!   the `dup2` between fork and exec, so we need no `unsafe` of our own);
//! - `LISTEN_FDS=1` and `LISTEN_FDNAMES=<name>`;
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
use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::Command;

use command_fds::{CommandFdExt, FdMapping};

/// The fd number the child finds the socket at (`SD_LISTEN_FDS_START`).
const CHILD_FD: i32 = 3;

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
pub enum Parent {
    /// Ours: we can wait for it and read its exit status.
    Us,
    /// The nearest subreaper's (under systemd: the service manager's); the
    /// command's own process exits as soon as the new process is started.
    Reaper,
}

/// A command that starts `executable` with `args` and hands it `socket` as fd 3,
/// named `fd_name`. The socket is duplicated; ours stays open and served.
///
/// The rest of the environment is inherited as it is: `main.rs` has already
/// removed the `LISTEN_*` variables we were started with.
pub fn command(
    executable: &Path,
    args: &[OsString],
    socket: &TcpListener,
    fd_name: &str,
    parent: Parent,
) -> std::io::Result<Command> {
    let duplicate: OwnedFd = socket.try_clone()?.into();
    let mut cmd = Command::new(SHELL);
    cmd.arg("-c");
    if parent == Parent::Reaper {
        cmd.arg(START_ORPHANED);
    }
    cmd.arg(EXEC_WITH_OWN_PID)
        .arg(executable)
        .args(args)
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", fd_name)
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS_FIRST_FD");
    cmd.fd_mappings(vec![FdMapping {
        parent_fd: duplicate,
        child_fd: CHILD_FD,
    }])
    .map_err(std::io::Error::other)?;
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shell trick, run for real: the child sees fd 3 open and its own pid.
    #[cfg(target_os = "linux")] // /proc/self/fd
    #[test]
    fn child_gets_fd_3_and_its_own_pid() {
        let socket = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut cmd = command(
            Path::new(SHELL),
            &[
                "-c".into(),
                // Prints "<LISTEN_PID> <$$> <names> <fd 3 is open>".
                r#"[ -e /proc/self/fd/3 ] && o=open || o=closed; echo "$LISTEN_PID $$ $LISTEN_FDNAMES $LISTEN_FDS $o""#.into(),
            ],
            &socket,
            "web",
            Parent::Us,
        )
        .unwrap();
        let output = cmd.output().unwrap();
        let text = String::from_utf8(output.stdout).unwrap();
        let fields: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(fields.len(), 5, "{text:?}");
        assert_eq!(fields[0], fields[1], "LISTEN_PID must be the child's pid");
        assert_eq!(&fields[2..], ["web", "1", "open"]);
    }

    /// With `Parent::Reaper` the command exits at once and the new process
    /// is someone else's child, yet it sees fd 3 and its own pid as before.
    #[cfg(target_os = "linux")]
    #[test]
    fn an_orphaned_child_gets_fd_3_and_its_own_pid() {
        let socket = TcpListener::bind("127.0.0.1:0").unwrap();
        let dir = std::env::temp_dir().join(format!("pk-handover-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("out");
        let mut cmd = command(
            Path::new(SHELL),
            &[
                "-c".into(),
                r#"[ -e /proc/self/fd/3 ] && o=open || o=closed; ppid=$(cut -d' ' -f4 /proc/$$/stat); echo "$LISTEN_PID $$ $o $ppid" > "$1.tmp"; mv "$1.tmp" "$1""#.into(),
                "sh".into(),
                out.clone().into(),
            ],
            &socket,
            "web",
            Parent::Reaper,
        )
        .unwrap();
        let mut started = cmd.spawn().unwrap();
        let starter = started.id();
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
