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

/// The shell that sets the child's pid variables; POSIX guarantees one here.
const SHELL: &str = "/bin/sh";

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
) -> std::io::Result<Command> {
    let duplicate: OwnedFd = socket.try_clone()?.into();
    let mut cmd = Command::new(SHELL);
    cmd.arg("-c")
        .arg(EXEC_WITH_OWN_PID)
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
        )
        .unwrap();
        let output = cmd.output().unwrap();
        let text = String::from_utf8(output.stdout).unwrap();
        let fields: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(fields.len(), 5, "{text:?}");
        assert_eq!(fields[0], fields[1], "LISTEN_PID must be the child's pid");
        assert_eq!(&fields[2..], ["web", "1", "open"]);
    }
}
