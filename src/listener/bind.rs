//! Binding our own socket with socket2: one address, or the first free port of a list.
//!
//! The socket that binds and listens here is the socket the server keeps;
//! nothing is probed and closed and bound again, so no other process can take
//! the port in between.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;

use socket2::{Domain, Protocol, Socket, Type};

/// The accept queue length we ask for. The kernel caps it at `net.core.somaxconn`
/// (4096 on current Linux), so this is what a busy server gets, not a guess.
pub(crate) const BACKLOG: i32 = 1024;

/// What one attempt to take a port came to.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// Bound and listening: this socket is ours.
    Bound(Socket),
    /// Another socket has the port ("address in use" from bind or listen).
    Busy,
}

/// Binds `addr` and listens on it.
///
/// Only "address in use" counts as busy. On Linux a second SO_REUSEADDR socket
/// may bind a port that another socket has bound but not yet listened on;
/// `listen()` is then the call that reports the conflict, so it is checked too.
pub(crate) fn try_bind(addr: SocketAddr) -> io::Result<Attempt> {
    try_bind_v6_only(addr, false)
}

/// [`try_bind`], with a `[::]` socket made IPv6-only when `v6_only` (an IPv4
/// wildcard of the same port is listed beside it and serves IPv4).
pub(crate) fn try_bind_v6_only(addr: SocketAddr, v6_only: bool) -> io::Result<Attempt> {
    let socket = new_socket(addr, v6_only)?;
    Ok(match bind_and_listen(&socket, addr)? {
        Outcome::Listening => Attempt::Bound(socket),
        Outcome::BusyAtBind | Outcome::BusyAtListen => Attempt::Busy,
    })
}

/// A TCP socket for `addr`'s family with our options, not yet bound.
fn new_socket(addr: SocketAddr, v6_only: bool) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        // `::` serves IPv4 too, as people expect of "all addresses", unless
        // `0.0.0.0` of the port is listed beside it (`v6_only`); a specific
        // IPv6 address can only ever be IPv6. Set explicitly, since the
        // system default (net.ipv6.bindv6only) differs between machines.
        socket.set_only_v6(v6_only || !addr.ip().is_unspecified())?;
    }
    // SO_REUSEADDR lets a restarted server bind while old connections sit in
    // TIME_WAIT. Never SO_REUSEPORT: that would let two servers share the port
    // silently, which is the fight this crate exists to avoid. Windows'
    // SO_REUSEADDR means port stealing, so it is Unix only.
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    Ok(socket)
}

/// How one bind-and-listen on a socket went, short of a hard error.
enum Outcome {
    Listening,
    /// `bind()` said "in use": the socket is still unbound and may try another port.
    BusyAtBind,
    /// `listen()` said "in use": the socket is bound now and cannot be reused.
    BusyAtListen,
}

fn bind_and_listen(socket: &Socket, addr: SocketAddr) -> io::Result<Outcome> {
    match socket.bind(&addr.into()) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::AddrInUse => return Ok(Outcome::BusyAtBind),
        Err(err) => return Err(err),
    }
    match socket.listen(BACKLOG) {
        Ok(()) => Ok(Outcome::Listening),
        Err(err) if err.kind() == io::ErrorKind::AddrInUse => Ok(Outcome::BusyAtListen),
        Err(err) => Err(err),
    }
}

/// The ports a search tries, in order: `first`, then the range, each port once.
///
/// Nothing outside `first` and the range is ever tried.
pub(crate) fn candidates(first: u16, range: RangeInclusive<u16>) -> impl Iterator<Item = u16> {
    std::iter::once(first).chain(range.filter(move |&port| port != first))
}

/// A search that found nothing free.
#[derive(Debug)]
pub(crate) struct Exhausted {
    /// The ports that were busy, in the order tried.
    pub(crate) busy: Vec<u16>,
}

/// What a search came to: the socket and the ports skipped, or why it stopped.
pub(crate) enum Found {
    /// A port was free; `busy` lists the ports skipped before it.
    Bound { socket: Socket, busy: Vec<u16> },
    /// Every candidate was busy.
    Exhausted(Exhausted),
    /// An error other than "in use" stopped the search at `port`.
    Failed { port: u16, error: io::Error },
}

/// Tries each candidate port on `ip` in order and keeps the first that binds and listens.
///
/// A socket whose `bind()` failed is still unbound, so it goes on to the next
/// port: a busy port then costs one system call instead of four (socket,
/// setsockopt, bind, close), which is what keeps a search through a crowded
/// range in microseconds. Only a socket that bound but could not listen is
/// replaced.
pub(crate) fn search(ip: IpAddr, ports: impl Iterator<Item = u16>) -> Found {
    let mut busy = Vec::new();
    let mut unbound: Option<Socket> = None;
    for port in ports {
        let addr = SocketAddr::new(ip, port);
        let socket = match unbound.take().map_or_else(|| new_socket(addr, false), Ok) {
            Ok(socket) => socket,
            Err(error) => return Found::Failed { port, error },
        };
        match bind_and_listen(&socket, addr) {
            Ok(Outcome::Listening) => return Found::Bound { socket, busy },
            Ok(Outcome::BusyAtBind) => {
                busy.push(port);
                unbound = Some(socket);
            }
            Ok(Outcome::BusyAtListen) => busy.push(port),
            Err(error) => return Found::Failed { port, error },
        }
    }
    Found::Exhausted(Exhausted { busy })
}

/// Binds a Unix stream socket at `path` with permissions `mode`, listening.
///
/// There is no moment in which the socket file is more open than `mode`:
/// the socket's own mode is set (`fchmod`) before `bind`, and Linux creates
/// the file with that mode less the umask; [`set_socket_mode`] then adds
/// back what the umask took (never more than `mode`), without following a
/// symlink. A stale socket file (a connect to it is refused: nobody has it
/// open) is removed first; one another process has open is left alone.
#[cfg(unix)]
pub(crate) fn bind_unix_path(
    path: &std::path::Path,
    mode: u32,
) -> Result<(std::os::unix::net::UnixListener, super::SocketFile), super::ListenError> {
    use super::{ErrorClass, ListenError};
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let fail = |class: ErrorClass, reason: String| ListenError::UnixSocket {
        endpoint: super::Endpoint::Path(path.to_owned()).to_string(),
        reason,
        class,
    };
    let busy = |why: &str| {
        fail(
            ErrorClass::Busy,
            format!("{why} (stop it, or choose another path)"),
        )
    };
    let from_io = |err: io::Error, doing: &str| match err.kind() {
        io::ErrorKind::NotFound => fail(
            ErrorClass::Config,
            format!(
                "{doing}: the directory does not exist (create it, e.g. RuntimeDirectory= in the unit, or choose another path)"
            ),
        ),
        io::ErrorKind::PermissionDenied => fail(
            ErrorClass::Permission,
            format!("{doing}: permission denied (the directory must be writable by this user)"),
        ),
        io::ErrorKind::AddrInUse => busy("another process is listening on this socket"),
        io::ErrorKind::NotADirectory => fail(
            ErrorClass::Config,
            format!(
                "{doing}: {} is not a directory (a socket file goes in a directory: write a path such as /run/portkeeper/http.sock)",
                not_a_directory(path)
            ),
        ),
        _ => fail(ErrorClass::System, format!("{doing}: {err}")),
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match probe(path) {
            Ok(Probe::Stale) => {
                tracing::info!(path = %super::Endpoint::Path(path.to_owned()), "replacing a stale socket file");
                match std::fs::remove_file(path) {
                    Ok(()) => {}
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                    Err(err) => return Err(from_io(err, "removing the stale socket file")),
                }
            }
            Ok(Probe::InUse(why)) => return Err(busy(why)),
            Err(err) => return Err(from_io(err, "checking the existing socket")),
        },
        Ok(meta) => {
            let what = if meta.is_dir() {
                "a directory"
            } else if meta.is_file() {
                "a regular file"
            } else {
                "a file that is not a socket"
            };
            return Err(fail(
                ErrorClass::Config,
                format!("{what} is in the way (remove it, or choose another path)"),
            ));
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(from_io(err, "checking the path")),
    }
    let socket = unix_socket_with_mode(mode).map_err(|err| from_io(err, "creating the socket"))?;
    let address = socket2::SockAddr::unix(path).map_err(|err| from_io(err, "naming it"))?;
    socket
        .bind(&address)
        .map_err(|err| from_io(err, "binding"))?;
    // Not `from_io`: a NotFound here is /proc, not the directory.
    let meta = set_socket_mode(&socket, path, mode).map_err(|err| {
        fail(
            ErrorClass::System,
            format!("setting UNIX_SOCKET_MODE on the new socket file: {err}"),
        )
    })?;
    socket
        .listen(BACKLOG)
        .map_err(|err| from_io(err, "listening"))?;
    socket
        .set_nonblocking(true)
        .map_err(|err| from_io(err, "making it nonblocking"))?;
    let fd: std::os::fd::OwnedFd = socket.into();
    Ok((
        std::os::unix::net::UnixListener::from(fd),
        super::SocketFile {
            path: path.to_owned(),
            dev: meta.dev(),
            ino: meta.ino(),
        },
    ))
}

/// The first part of `path` that is there but not a directory (ENOTDIR),
/// escaped for the error line; the parent when none is found.
#[cfg(unix)]
fn not_a_directory(path: &std::path::Path) -> super::Endpoint {
    let mut ancestors: Vec<&std::path::Path> = path.ancestors().skip(1).collect();
    ancestors.reverse();
    let found = ancestors
        .into_iter()
        .find(|part| std::fs::metadata(part).is_ok_and(|meta| !meta.is_dir()))
        .or_else(|| path.parent())
        .unwrap_or(path);
    super::Endpoint::Path(found.to_owned())
}

/// What a connect to an existing socket file says about it.
#[cfg(unix)]
#[derive(Debug, PartialEq, Eq)]
enum Probe {
    /// Refused, or gone: no process has it open, so the file may go.
    Stale,
    /// Some process has it open; why we think so, for the error line.
    InUse(&'static str),
}

/// Connects to the socket file at `path`, without waiting, to tell a stale
/// file from another process's socket.
///
/// Only "refused" (and a file gone since) means stale: a socket file whose
/// socket is closed refuses every connect, of any type. Everything else
/// leaves the file alone. Non-blocking, because a blocking connect to a
/// listener whose accept queue is full waits until it accepts, and start-up
/// would hang with no output; on Linux a non-blocking Unix connect never
/// waits (it succeeds, is refused, or says EAGAIN), so no deadline is needed.
#[cfg(unix)]
fn probe(path: &std::path::Path) -> io::Result<Probe> {
    use nix::errno::Errno;
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    let err = match socket.connect(&socket2::SockAddr::unix(path)?) {
        Ok(()) => return Ok(Probe::InUse("another process is listening on this socket")),
        Err(err) => err,
    };
    let errno = err.raw_os_error().map(Errno::from_raw);
    Ok(match err.kind() {
        io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound => Probe::Stale,
        // EAGAIN: a live listener whose queue is full. EINPROGRESS (not
        // Linux): a live listener that will answer later.
        io::ErrorKind::WouldBlock => Probe::InUse(
            "another process is listening on this socket (its queue of connections is full)",
        ),
        _ if errno == Some(Errno::EINPROGRESS) => {
            Probe::InUse("another process is listening on this socket")
        }
        // A live socket of another type: a stream connect to it is refused
        // as the wrong type, not because nobody has it open.
        _ if errno == Some(Errno::EPROTOTYPE) => Probe::InUse(
            "another process has a socket of another type (datagram or seqpacket) here",
        ),
        _ => return Err(err),
    })
}

/// A Unix stream socket whose own mode is `mode`, so that `bind` creates its
/// file with at most `mode` (Linux takes the file's mode from the socket's,
/// less the umask). `fchmod` through `File`, which needs no `unsafe`.
#[cfg(unix)]
fn unix_socket_with_mode(mode: u32) -> io::Result<Socket> {
    use std::os::unix::fs::PermissionsExt;
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    let file = std::fs::File::from(std::os::fd::OwnedFd::from(socket));
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    Ok(Socket::from(std::os::fd::OwnedFd::from(file)))
}

/// Gives the socket file `socket` just bound at `path` exactly `mode`, and
/// returns its metadata (what [`super::SocketFile`] remembers).
///
/// Whoever may write the directory can put a symlink at `path` after our
/// `bind`; a `chmod(path)` would follow it and, run as root, open up any
/// file. So the path is looked up once, with `O_PATH | O_NOFOLLOW` (a
/// symlink is then the handle's own file, not its target); only a socket
/// owned by our user is changed, through that handle (`/proc/self/fd/N`
/// reaches the handle's inode; `fchmod` refuses an `O_PATH` handle).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn set_socket_mode(
    socket: &Socket,
    path: &std::path::Path,
    mode: u32,
) -> io::Result<std::fs::Metadata> {
    use nix::fcntl::OFlag;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
    let handle = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_PATH | OFlag::O_NOFOLLOW).bits())
        .open(path)?;
    let meta = handle.metadata()?;
    // The socket's own inode belongs to the user that created it, as does
    // the file its `bind` created.
    let ours = std::fs::File::from(std::os::fd::OwnedFd::from(socket.try_clone()?))
        .metadata()?
        .uid();
    if !meta.file_type().is_socket() || meta.uid() != ours {
        return Err(io::Error::other(
            "the path no longer holds our socket (replaced after bind); nothing changed",
        ));
    }
    if meta.permissions().mode() & 0o7777 == mode {
        return Ok(meta);
    }
    let through = format!("/proc/self/fd/{}", handle.as_raw_fd());
    std::fs::set_permissions(&through, std::fs::Permissions::from_mode(mode))
        .map_err(|err| io::Error::new(err.kind(), format!("chmod {through}: {err}")))?;
    handle.metadata()
}

/// Elsewhere there is no `O_PATH`: the mode the file was born with (the
/// socket's less the umask) must already be the whole mode, since a
/// `chmod(path)` could follow a symlink swapped in after `bind`.
#[cfg(all(unix, not(any(target_os = "linux", target_os = "android"))))]
fn set_socket_mode(
    _socket: &Socket,
    path: &std::path::Path,
    mode: u32,
) -> io::Result<std::fs::Metadata> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.file_type().is_socket() {
        return Err(io::Error::other(
            "the path no longer holds our socket (replaced after bind)",
        ));
    }
    if meta.permissions().mode() & 0o7777 != mode {
        return Err(io::Error::other(format!(
            "the umask took bits of {mode:04o} (run with a umask that keeps them)"
        )));
    }
    Ok(meta)
}

/// Binds an abstract Unix stream socket (`@name`, Linux): no file, no mode.
#[cfg(unix)]
pub(crate) fn bind_unix_abstract(
    name: &str,
) -> Result<std::os::unix::net::UnixListener, super::ListenError> {
    use super::{ErrorClass, ListenError};
    let fail = |class: ErrorClass, reason: String| ListenError::UnixSocket {
        endpoint: super::Endpoint::Abstract(name.to_owned()).to_string(),
        reason,
        class,
    };
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        #[cfg(target_os = "android")]
        use std::os::android::net::SocketAddrExt;
        #[cfg(target_os = "linux")]
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .map_err(|err| fail(ErrorClass::Config, err.to_string()))?;
        let socket = std::os::unix::net::UnixListener::bind_addr(&addr).map_err(|err| {
            if err.kind() == io::ErrorKind::AddrInUse {
                fail(
                    ErrorClass::Busy,
                    "another process is listening on this abstract socket (stop it, or choose another name)".to_owned(),
                )
            } else {
                fail(ErrorClass::System, err.to_string())
            }
        })?;
        socket
            .set_nonblocking(true)
            .map_err(|err| fail(ErrorClass::System, err.to_string()))?;
        Ok(socket)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    Err(fail(
        ErrorClass::Config,
        "abstract sockets exist only on Linux".to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file `bind` creates is never more open than the mode asked for,
    /// before any `chmod`: there is no window.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_unix_socket_file_is_born_with_at_most_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("pk-mode-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for mode in [0o600, 0o660, 0o666] {
            let path = dir.join(format!("{mode:o}.sock"));
            let _ = std::fs::remove_file(&path);
            let socket = unix_socket_with_mode(mode).unwrap();
            socket
                .bind(&socket2::SockAddr::unix(&path).unwrap())
                .unwrap();
            let born = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(born & !mode, 0, "{born:o} is wider than {mode:o}");
            // The default socket mode (0777 less the umask) would be wider.
            assert!(mode == 0o666 || born != 0o755, "{born:o}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A symlink swapped in at the path between `bind` and setting the mode
    /// (by whoever may write the directory) must not pass the mode on to
    /// its target.
    #[cfg(target_os = "linux")]
    #[test]
    fn setting_the_mode_does_not_follow_a_symlink_at_the_path() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("pk-nofollow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("precious");
        std::fs::write(&target, "not yours").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
        let link = dir.join("http.sock");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let socket = unix_socket_with_mode(0o600).unwrap();
        let result = set_socket_mode(&socket, &link, 0o666);
        let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(mode, 0o644, "the symlink's target was chmodded");
        assert!(result.is_err(), "a symlink is not our socket: {result:?}");
    }

    /// On our socket file it sets exactly the mode, umask or not.
    #[cfg(target_os = "linux")]
    #[test]
    fn setting_the_mode_on_a_socket_file_sets_exactly_that_mode() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = std::env::temp_dir().join(format!("pk-setmode-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("http.sock");
        let socket = unix_socket_with_mode(0o600).unwrap();
        socket
            .bind(&socket2::SockAddr::unix(&path).unwrap())
            .unwrap();
        let meta = set_socket_mode(&socket, &path, 0o666).unwrap();
        let on_disk = std::fs::symlink_metadata(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(on_disk.permissions().mode() & 0o777, 0o666);
        assert_eq!((meta.dev(), meta.ino()), (on_disk.dev(), on_disk.ino()));
    }

    /// A socket file of another user swapped in at the path is left as it is.
    #[cfg(target_os = "linux")]
    #[test]
    fn setting_the_mode_leaves_another_users_socket_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("pk-theirs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("http.sock");
        let theirs = std::os::unix::net::UnixListener::bind(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        // Only root can give a file away; as anyone else there is nothing to see.
        if std::os::unix::fs::lchown(&path, Some(65534), Some(65534)).is_ok() {
            let ours = unix_socket_with_mode(0o600).unwrap();
            assert!(set_socket_mode(&ours, &path, 0o666).is_err());
            let mode = std::fs::symlink_metadata(&path)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        drop(theirs);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Only a refused connect (or no file) makes a socket file stale; a live
    /// socket of another type, or a listener with a full queue, is in use,
    /// and the probe never waits.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_probe_calls_only_a_refused_socket_stale() {
        let dir = std::env::temp_dir().join(format!("pk-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let stale = dir.join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        assert_eq!(probe(&stale).unwrap(), Probe::Stale);
        assert_eq!(probe(&dir.join("missing.sock")).unwrap(), Probe::Stale);

        let listening = dir.join("listening.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&listening).unwrap();
        assert!(matches!(probe(&listening).unwrap(), Probe::InUse(_)));

        let dgram = dir.join("dgram.sock");
        let _dgram = std::os::unix::net::UnixDatagram::bind(&dgram).unwrap();
        assert!(matches!(probe(&dgram).unwrap(), Probe::InUse(_)));

        let seqpacket = dir.join("seqpacket.sock");
        let addr = socket2::SockAddr::unix(&seqpacket).unwrap();
        let seqpacket_socket = Socket::new(Domain::UNIX, Type::SEQPACKET, None).unwrap();
        seqpacket_socket.bind(&addr).unwrap();
        assert!(matches!(probe(&seqpacket).unwrap(), Probe::InUse(_)));

        let full = dir.join("full.sock");
        let addr = socket2::SockAddr::unix(&full).unwrap();
        let listener = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
        listener.bind(&addr).unwrap();
        listener.listen(0).unwrap();
        let mut queued = Vec::new();
        loop {
            let client = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
            client.set_nonblocking(true).unwrap();
            if client.connect(&addr).is_err() {
                break;
            }
            queued.push(client);
            assert!(queued.len() < 1000, "the queue never filled");
        }
        assert!(matches!(probe(&full).unwrap(), Probe::InUse(_)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    use std::net::{Ipv4Addr, TcpListener};

    const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[test]
    fn candidates_start_with_the_first_port_and_never_repeat() {
        let ports: Vec<u16> = candidates(5052, 5050..=5053).collect();
        assert_eq!(ports, vec![5052, 5050, 5051, 5053]);
        let ports: Vec<u16> = candidates(7000, 5050..=5051).collect();
        assert_eq!(ports, vec![7000, 5050, 5051]);
        let ports: Vec<u16> = candidates(65535, 65535..=65535).collect();
        assert_eq!(ports, vec![65535]);
    }

    #[test]
    fn a_listening_port_is_busy() {
        let held = TcpListener::bind((LOOPBACK, 0)).unwrap();
        let port = held.local_addr().unwrap().port();
        assert!(matches!(
            try_bind(SocketAddr::new(LOOPBACK, port)).unwrap(),
            Attempt::Busy
        ));
    }

    #[test]
    fn a_bound_but_not_listening_reuseaddr_socket_is_busy_at_listen() {
        // Reproduce the Linux case: the other socket has SO_REUSEADDR and is
        // bound, so our bind succeeds and listen() must report the conflict.
        let other = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        other.set_reuse_address(true).unwrap();
        other.bind(&SocketAddr::new(LOOPBACK, 0).into()).unwrap();
        let port = other.local_addr().unwrap().as_socket().unwrap().port();
        let mine = try_bind(SocketAddr::new(LOOPBACK, port)).unwrap();
        // Whichever listens first wins; we listen first, so ours is bound and
        // the other socket's listen must now fail.
        assert!(matches!(mine, Attempt::Bound(_)));
        assert_eq!(
            other.listen(1).unwrap_err().kind(),
            io::ErrorKind::AddrInUse
        );
    }

    #[test]
    fn search_skips_busy_ports_and_reports_them() {
        let held = TcpListener::bind((LOOPBACK, 0)).unwrap();
        let busy_port = held.local_addr().unwrap().port();
        let free = TcpListener::bind((LOOPBACK, 0)).unwrap();
        let free_port = free.local_addr().unwrap().port();
        drop(free);
        match search(LOOPBACK, [busy_port, free_port].into_iter()) {
            Found::Bound { socket, busy } => {
                assert_eq!(busy, vec![busy_port]);
                let addr = socket.local_addr().unwrap().as_socket().unwrap();
                assert_eq!(addr.port(), free_port);
            }
            Found::Exhausted(e) => panic!("free port {free_port} reported busy: {e:?}"),
            Found::Failed { port, error } => panic!("failed at {port}: {error}"),
        }
    }

    #[test]
    fn ipv6_loopback_binds_v6_only_and_the_wildcard_serves_ipv4_too() {
        let v6 = match try_bind("[::1]:0".parse().unwrap()) {
            Ok(Attempt::Bound(socket)) => socket,
            // A machine without IPv6 cannot say anything about it.
            Err(err) if err.kind() == io::ErrorKind::AddrNotAvailable => return,
            other => panic!("binding [::1]:0: {other:?}"),
        };
        assert!(v6.only_v6().unwrap());
        let Ok(Attempt::Bound(any)) = try_bind("[::]:0".parse().unwrap()) else {
            panic!("binding [::]:0 failed");
        };
        assert!(!any.only_v6().unwrap());
        let port = any.local_addr().unwrap().as_socket().unwrap().port();
        std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .expect("a dual-stack wildcard accepts IPv4 connections");
    }

    #[test]
    fn a_wildcard_beside_the_ipv4_wildcard_is_ipv6_only_and_both_bind() {
        let Ok(Attempt::Bound(v4)) = try_bind("0.0.0.0:0".parse().unwrap()) else {
            panic!("binding 0.0.0.0:0 failed");
        };
        let port = v4.local_addr().unwrap().as_socket().unwrap().port();
        let v6 = match try_bind_v6_only(SocketAddr::new("::".parse().unwrap(), port), true) {
            Ok(Attempt::Bound(socket)) => socket,
            // A machine without IPv6 cannot say anything about it.
            Err(err) if err.kind() == io::ErrorKind::AddrNotAvailable => return,
            Err(err) if err.kind() == io::ErrorKind::Unsupported => return,
            other => panic!("binding [::]:{port} beside 0.0.0.0:{port}: {other:?}"),
        };
        assert!(v6.only_v6().unwrap());
    }

    #[test]
    fn search_stops_on_errors_other_than_in_use() {
        // TEST-NET-1 is never assigned to a local interface.
        let foreign: IpAddr = "192.0.2.1".parse().unwrap();
        match search(foreign, [1025, 1026].into_iter()) {
            Found::Failed { port, error } => {
                assert_eq!(port, 1025);
                assert_eq!(error.kind(), io::ErrorKind::AddrNotAvailable);
            }
            _ => panic!("binding a foreign address must fail, not be skipped"),
        }
    }

    #[test]
    fn after_failed_binds_the_same_socket_takes_the_next_port() {
        // Two listening holders make bind() fail twice on the one socket the
        // search carries along; it must still bind and listen on the third
        // port, a bound-but-not-listening SO_REUSEADDR socket's, since we
        // listen first (the race `bind_and_listen` checks listen() for).
        let first = TcpListener::bind((LOOPBACK, 0)).unwrap();
        let second = TcpListener::bind((LOOPBACK, 0)).unwrap();
        let unlistened = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        unlistened.set_reuse_address(true).unwrap();
        unlistened
            .bind(&SocketAddr::new(LOOPBACK, 0).into())
            .unwrap();
        let ports = [
            first.local_addr().unwrap().port(),
            second.local_addr().unwrap().port(),
            unlistened.local_addr().unwrap().as_socket().unwrap().port(),
        ];
        match search(LOOPBACK, ports.into_iter()) {
            Found::Bound { socket, busy } => {
                assert_eq!(busy, ports[..2].to_vec());
                let addr = socket.local_addr().unwrap().as_socket().unwrap();
                assert_eq!(addr, SocketAddr::new(LOOPBACK, ports[2]));
                assert!(socket.is_listener().unwrap());
                // While ours is open, the other socket can no longer listen.
                assert_eq!(
                    unlistened.listen(1).unwrap_err().kind(),
                    io::ErrorKind::AddrInUse
                );
            }
            Found::Exhausted(e) => panic!("no port found: {e:?}"),
            Found::Failed { port, error } => panic!("failed at {port}: {error}"),
        }
    }
}
