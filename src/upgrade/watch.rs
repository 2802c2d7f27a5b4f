//! `RELOAD=true`: noticing that our executable file was replaced, by polling its metadata.
//!
//! Every [`POLL_INTERVAL`] we `stat` the executable's path and compare its
//! identity (device, inode, size, modification time, mode) with the file we
//! run. A replacement is reported once the new identity has been seen on two
//! polls in a row (so a file still being written is not started) and the file
//! is non-empty and executable. Each new identity is reported once: if its
//! handoff fails, nothing is retried until the file changes again.
//!
//! Why polling rather than inotify (the `notify` crate): a running executable
//! cannot be rewritten in place on Linux (`ETXTBSY`), so every replacement —
//! cargo's hard link, `install`, a package manager's rename — puts a new inode
//! at the path. An inotify watch on the file follows the *old* inode and sees
//! nothing; one would have to watch the directory and filter its events. One
//! `stat` every half second costs nothing measurable, needs no extra thread or
//! dependency, works the same on every Unix, and the half-second delay is far
//! below the time a build takes.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

/// How often the executable's metadata is read.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// What tells one executable file from another at the same path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    device: u64,
    inode: u64,
    size: u64,
    modified_ns: i128,
    mode: u32,
}

impl Identity {
    fn of(path: &std::path::Path) -> Option<Self> {
        let meta = std::fs::metadata(path).ok()?;
        Some(Identity {
            device: meta.dev(),
            inode: meta.ino(),
            size: meta.len(),
            modified_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            mode: meta.mode(),
        })
    }

    /// A file we would try to start: not empty, and executable by someone.
    fn is_startable(&self) -> bool {
        self.size > 0 && self.mode & 0o111 != 0
    }
}

/// Watches one executable path; see the module docs.
#[derive(Debug)]
pub(crate) struct ExecutableWatch {
    path: PathBuf,
    debounce: Debounce,
}

impl ExecutableWatch {
    /// Starts watching `path`, taking the file there now as the one we run.
    pub(crate) fn new(path: PathBuf) -> Self {
        let running = Identity::of(&path);
        if running.is_none() {
            tracing::warn!(executable = %path.display(), "RELOAD: the executable cannot be read; waiting for it to appear");
        }
        ExecutableWatch {
            path,
            debounce: Debounce::new(running),
        }
    }

    /// Completes when a new, settled executable is at the path. Cancel-safe:
    /// the state changes only between awaits.
    pub(crate) async fn replaced(&mut self) {
        loop {
            tokio::time::sleep(POLL_INTERVAL).await;
            if self.debounce.observe(Identity::of(&self.path)) {
                tracing::info!(executable = %self.path.display(), "RELOAD: the executable was replaced");
                return;
            }
        }
    }
}

/// The decision, without the file system: which observation is a replacement.
#[derive(Debug)]
struct Debounce {
    /// The file last started (at first: the one we run).
    current: Option<Identity>,
    /// A new file seen once, waiting to be seen unchanged.
    pending: Option<Identity>,
}

impl Debounce {
    fn new(current: Option<Identity>) -> Self {
        Debounce {
            current,
            pending: None,
        }
    }

    /// Takes one poll's result; true when it completes a replacement.
    fn observe(&mut self, seen: Option<Identity>) -> bool {
        let Some(seen) = seen else {
            // Gone for a moment during a replace: wait for the new file.
            self.pending = None;
            return false;
        };
        if Some(seen) == self.current {
            self.pending = None;
            return false;
        }
        if self.pending == Some(seen) && seen.is_startable() {
            self.current = Some(seen);
            self.pending = None;
            return true;
        }
        self.pending = Some(seen);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(inode: u64, size: u64) -> Option<Identity> {
        Some(Identity {
            device: 1,
            inode,
            size,
            modified_ns: 7,
            mode: 0o100755,
        })
    }

    #[test]
    fn the_running_file_is_not_a_replacement() {
        let mut d = Debounce::new(file(1, 100));
        assert!(!d.observe(file(1, 100)));
        assert!(!d.observe(file(1, 100)));
    }

    #[test]
    fn a_new_file_counts_once_it_is_seen_unchanged() {
        let mut d = Debounce::new(file(1, 100));
        assert!(!d.observe(file(2, 10)), "first sight: maybe still written");
        assert!(!d.observe(file(2, 50)), "still growing");
        assert!(d.observe(file(2, 50)), "settled");
        assert!(
            !d.observe(file(2, 50)),
            "reported once, even if its start fails"
        );
        assert!(!d.observe(file(3, 50)));
        assert!(d.observe(file(3, 50)), "the next replacement counts again");
    }

    #[test]
    fn a_missing_or_unstartable_file_is_not_started() {
        let mut d = Debounce::new(file(1, 100));
        assert!(!d.observe(None));
        assert!(!d.observe(None));
        assert!(!d.observe(file(2, 0)));
        assert!(!d.observe(file(2, 0)), "empty");
        let mut not_executable = file(3, 100).unwrap();
        not_executable.mode = 0o100644;
        assert!(!d.observe(Some(not_executable)));
        assert!(!d.observe(Some(not_executable)), "no execute bit");
    }

    #[test]
    fn identity_reads_a_real_file_and_sees_a_new_inode() {
        let dir = std::env::temp_dir().join(format!("pk-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("exe");
        std::fs::write(&path, b"one").unwrap();
        let first = Identity::of(&path).unwrap();
        let next = dir.join("exe.new");
        std::fs::write(&next, b"one").unwrap();
        std::fs::rename(&next, &path).unwrap();
        let second = Identity::of(&path).unwrap();
        assert_ne!(first, second, "a renamed-over file is another file");
        let _ = std::fs::remove_dir_all(dir);
    }
}
