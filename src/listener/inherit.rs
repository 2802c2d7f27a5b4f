//! Adopting a listening socket handed over by systemd or systemfd (the LISTEN_FDS protocol).
//!
//! This is the only code that knows the protocol. It works in two steps:
//! [`plan`] reads the LISTEN_* values (collected by `startup.rs`) and decides,
//! without touching any fd, whether sockets were handed to *this* process;
//! [`adopt`] then takes the planned fd numbers itself, checks each, and
//! closes the fds it does not serve, whatever their type.
//!
//! The protocol, as systemd documents it in `sd_listen_fds(3)`:
//! - `LISTEN_FDS=n`: n sockets, at fds 3..3+n (`LISTEN_FDS_FIRST_FD` moves the start).
//! - `LISTEN_PID=pid`: the process they are meant for. A different pid means
//!   they were meant for a parent that exec'd us without cleaning up, so they
//!   are ignored. A *missing* `LISTEN_PID` is accepted on purpose: `systemfd
//!   --no-pid` omits it because `cargo watch` sits between it and us, and that
//!   development loop is one of the three ways this server runs.
//! - `LISTEN_FDNAMES=a:b`: one name per fd, from `FileDescriptorName=` (or the
//!   socket unit's name when none is set).
//!
//! The variables are read and never removed (`sd_listen_fds(0)`): writing
//! the environment is unsound once other threads exist, and `listen()` may
//! run inside a multi-threaded host. That is why this reader is ours:
//! `listenfd` always removes `LISTEN_FDS` and `LISTEN_PID`. `LISTEN_PID`
//! keeps our children from adopting the fds, and a process-wide flag keeps
//! this process from adopting them twice ([`claim`]).
//!
//! The trade-off: without `LISTEN_PID` (systemfd) a child process the app
//! starts sees `LISTEN_FDS` too, but not the fds, which are close-on-exec
//! here. A portkeeper in that child then stops with an error naming the fd
//! ("not open (nothing was passed at this fd)"), never adopting whatever
//! else sits at that number; start such children without `LISTEN_FDS`.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};

use socket2::{Socket, Type};

use super::{Endpoint, ListenError, Marks, Role, Source};

/// More inherited fds than this is not a handoff but garbage in LISTEN_FDS;
/// the bound keeps us from walking millions of fd numbers.
const MAX_FDS: usize = 4096;

/// The LISTEN_* variables as found in the process environment.
#[derive(Debug, Default, Clone)]
pub(crate) struct HandoffVars {
    /// `LISTEN_FDS`
    pub(crate) listen_fds: Option<String>,
    /// `LISTEN_PID`
    pub(crate) listen_pid: Option<String>,
    /// `LISTEN_FDNAMES`
    pub(crate) listen_fdnames: Option<String>,
    /// `LISTEN_FDS_FIRST_FD`
    pub(crate) listen_fds_first_fd: Option<String>,
}

impl HandoffVars {
    /// The variable names, read (never removed) by `startup.rs`.
    pub(crate) const NAMES: [&'static str; 4] = [
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "LISTEN_FDS_FIRST_FD",
    ];

    /// Builds the set from a lookup function (the process environment, or a test table).
    pub(crate) fn from_lookup(mut lookup: impl FnMut(&str) -> Option<String>) -> Self {
        let [fds, pid, names, first] = Self::NAMES;
        HandoffVars {
            listen_fds: lookup(fds),
            listen_pid: lookup(pid),
            listen_fdnames: lookup(names),
            listen_fds_first_fd: lookup(first),
        }
    }
}

/// What the LISTEN_* variables say about this process.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Handoff {
    /// Nothing was handed over.
    None,
    /// Sockets were handed to another process (LISTEN_PID is not ours): ignore them.
    ForAnotherProcess {
        /// The pid in LISTEN_PID.
        pid: u32,
    },
    /// Sockets were handed to us.
    Offered(Offer),
}

/// Sockets handed to this process, before any fd is touched.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Offer {
    /// systemd (LISTEN_PID = ours) or systemfd (no LISTEN_PID).
    pub(crate) source: Source,
    /// The fd numbers, in order.
    pub(crate) fds: Vec<i32>,
    /// One name per fd, when LISTEN_FDNAMES was set.
    pub(crate) names: Option<Vec<String>>,
}

impl Offer {
    fn name(&self, index: usize) -> Option<&str> {
        self.names.as_ref()?.get(index).map(String::as_str)
    }
}

/// Reads the LISTEN_* variables. Malformed values are errors, not "nothing
/// inherited": a systemd unit that hands over garbage should say so loudly.
pub(crate) fn plan(vars: &HandoffVars, our_pid: u32) -> Result<Handoff, ListenError> {
    let Some(count) = vars.listen_fds.as_deref() else {
        return Ok(Handoff::None);
    };
    // No trimming, in any of the numbers: " 1 " is a mistake in whatever
    // wrote the variable, worth reporting rather than guessing at.
    let count: usize = digits(count).filter(|&n| n <= MAX_FDS).ok_or_else(|| {
        ListenError::invalid_handoff(
            "LISTEN_FDS",
            count,
            format!("a count of inherited sockets from 0 to {MAX_FDS}, digits only"),
        )
    })?;
    let source = match vars.listen_pid.as_deref() {
        None | Some("") => Source::Systemfd,
        Some(pid) => {
            let pid: u32 = digits(pid).ok_or_else(|| {
                ListenError::invalid_handoff(
                    "LISTEN_PID",
                    pid,
                    "a process id, digits only".to_owned(),
                )
            })?;
            if pid != our_pid {
                return Ok(Handoff::ForAnotherProcess { pid });
            }
            Source::Systemd
        }
    };
    if count == 0 {
        return Ok(Handoff::None);
    }
    let first_fd = match vars.listen_fds_first_fd.as_deref() {
        None => 3,
        Some(value) => digits::<i32>(value)
            .filter(|&fd| fd.checked_add(count as i32).is_some())
            .ok_or_else(|| {
                ListenError::invalid_handoff(
                    "LISTEN_FDS_FIRST_FD",
                    value,
                    "a file descriptor number, digits only (default 3)".to_owned(),
                )
            })?,
    };
    let names = match vars.listen_fdnames.as_deref() {
        None => None,
        Some(value) => {
            let names: Vec<String> = value.split(':').map(str::to_owned).collect();
            if names.len() != count {
                return Err(ListenError::invalid_handoff(
                    "LISTEN_FDNAMES",
                    value,
                    format!(
                        "{count} colon-separated name(s), one per socket in LISTEN_FDS={count}"
                    ),
                ));
            }
            Some(names)
        }
    };
    Ok(Handoff::Offered(Offer {
        source,
        fds: (first_fd..).take(count).collect(),
        names,
    }))
}

/// A number written in ASCII digits alone: no sign, no spaces (which
/// `str::parse` would take or refuse case by case).
fn digits<T: std::str::FromStr>(value: &str) -> Option<T> {
    let plain = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
    plain.then(|| value.parse().ok()).flatten()
}

/// A handed-over socket that has been checked and is ready to serve.
#[derive(Debug)]
pub(crate) struct Adopted {
    /// The listening socket, nonblocking and close-on-exec.
    pub(crate) socket: super::Socket,
    /// What it serves.
    pub(crate) role: Role,
    /// What it speaks besides plain HTTP, by its name.
    pub(crate) marks: Marks,
    /// Its local address or path.
    pub(crate) address: Endpoint,
    /// The fd number it arrived as.
    pub(crate) fd: i32,
    /// Its LISTEN_FDNAMES entry, if names were given.
    pub(crate) name: Option<String>,
}

/// The role and marks of each handed-over fd, by name ([`Marks::from_fd_name`]):
/// `wanted` (LISTEN_FD_NAME) is the app, `https` the app over TLS, `admin`
/// the built-in routes, each optionally with `+tls`, `+proxy`, `+redirect`;
/// anything else is not served (`None`). Without names every fd serves the
/// app, with `unmarked` (`TLS=true`: systemfd's `https::` names nothing).
/// When names are given but none is the app's or admin, the first fd serves
/// the app, with a warning, as a unit without `FileDescriptorName=` expects.
pub(crate) fn roles(offer: &Offer, wanted: &str, unmarked: Marks) -> Vec<Option<(Role, Marks)>> {
    let Some(names) = &offer.names else {
        return vec![Some((Role::App, unmarked)); offer.fds.len()];
    };
    let mut roles: Vec<Option<(Role, Marks)>> = names
        .iter()
        .map(|name| Marks::from_fd_name(name, wanted))
        .collect();
    if !roles.iter().flatten().any(|(role, _)| *role == Role::App) && roles.first() == Some(&None) {
        if names.len() > 1 {
            tracing::warn!(
                wanted,
                names = names.join(":"),
                "no inherited socket is named LISTEN_FD_NAME; serving the first"
            );
        }
        roles[0] = Some((Role::App, unmarked));
    }
    roles
}

/// Set once this process has taken the handed-over fds (adopted or closed
/// them). The protocol hands each fd number over once; a second `OwnedFd`
/// for the same number would close a socket twice, or someone else's.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// Lets an offer through only while nobody in this process has taken the
/// handed-over fds. A second [`Server::listen`](crate::Server::listen) (an
/// embedding program serving twice, or again after a failed start) finds the
/// handoff consumed: it says so in a warning and binds as if nothing had been
/// handed over, as a second `sd_listen_fds(1)` would find nothing. The
/// variables themselves stay as they were: we never write the environment.
pub(crate) fn claim(handoff: Handoff) -> Handoff {
    match handoff {
        Handoff::Offered(offer) if TAKEN.load(Ordering::Acquire) => {
            tracing::warn!(
                fds = ?offer.fds,
                "the inherited sockets were taken by an earlier listen() in this process; \
                 binding as if none were handed over"
            );
            Handoff::None
        }
        other => other,
    }
}

/// Takes every handed-over socket that has a role (see [`roles`]), checks
/// each, and closes the others (whatever their type) with a log line each.
///
/// The fd numbers are the offer's; the environment is neither read again
/// nor written (see the module docs). Runs at most once per process: a
/// second call (two `listen()` racing past [`claim`]) is an error.
pub(crate) fn adopt(
    offer: &Offer,
    wanted: &str,
    unmarked: Marks,
) -> Result<Vec<Adopted>, ListenError> {
    if TAKEN.swap(true, Ordering::AcqRel) {
        return Err(ListenError::UnusableFd {
            fd: offer.fds.first().copied().unwrap_or(3),
            name: offer.name(0).map(str::to_owned),
            reason: "the inherited sockets were already taken by another listen() in this process"
                .to_owned(),
        });
    }
    // First every fd is looked at, and every one that is not served closed,
    // so none is left open (and inherited by our children) when a served
    // one turns out to be unusable below.
    let mut served = Vec::new();
    for (index, role) in roles(offer, wanted, unmarked).into_iter().enumerate() {
        let fd = offer.fds[index];
        let found = inspect(fd);
        match role {
            Some(role) => {
                let taken = match found {
                    Found::Socket => Ok(take(fd)),
                    other => Err(other.describe()),
                };
                served.push((index, role, taken));
            }
            None => close_unserved(
                fd,
                offer.name(index).unwrap_or_default(),
                found,
                offer.source,
            ),
        }
    }
    served
        .into_iter()
        .map(|(index, role, taken)| {
            let fd = offer.fds[index];
            let name = offer.name(index).map(str::to_owned);
            match taken {
                Ok(owned) => adopt_one(owned, fd, name, role),
                Err(reason) => Err(ListenError::UnusableFd { fd, name, reason }),
            }
        })
        .collect()
}

/// Closes an inherited fd that no listener serves, so its clients are
/// refused instead of queued, and no child of ours inherits it. Any socket
/// is closed; a non-socket only when `LISTEN_PID` named us (systemd may hand
/// over FIFOs and files too), since without it (systemfd) the number may be
/// our host's own file.
fn close_unserved(fd: RawFd, name: &str, found: Found, source: Source) {
    match found {
        Found::Socket => {
            drop(take(fd));
            tracing::info!(fd, name, "closed an inherited socket that is not served");
        }
        Found::Other(what) if source != Source::Systemfd => {
            drop(take(fd));
            tracing::info!(fd, name, what, "closed an inherited fd that is not served");
        }
        Found::Other(what) => tracing::warn!(
            fd,
            name,
            what,
            "an inherited fd that is not served is not a socket; without LISTEN_PID it may not be ours, so it is left open"
        ),
        Found::Closed => {
            tracing::info!(fd, name, "an inherited fd that is not served was not open")
        }
        Found::Unknown(error) => tracing::warn!(
            fd,
            name,
            error,
            "an inherited fd is not served and cannot be checked, so it is left open"
        ),
    }
}

/// Where the kernel lists this process's open fds, one entry per number.
#[cfg(target_os = "linux")]
const FD_DIR: &str = "/proc/self/fd";
#[cfg(not(target_os = "linux"))]
const FD_DIR: &str = "/dev/fd";

/// What an inherited fd number holds, found without touching the fd.
#[derive(Debug)]
enum Found {
    /// An open socket, of any kind.
    Socket,
    /// Nothing: the number is not open.
    Closed,
    /// An open fd that is not a socket (what it is, as the kernel names it).
    Other(String),
    /// The fd table cannot be read.
    Unknown(String),
}

impl Found {
    /// Why a served fd cannot be served (for anything but a socket).
    fn describe(self) -> String {
        match self {
            Found::Socket => "it is a socket".to_owned(),
            Found::Closed => "it is not open (nothing was passed at this fd)".to_owned(),
            Found::Other(what) => format!("it is not a socket but {what}; {EXPECTED}"),
            Found::Unknown(error) => format!("it cannot be checked ({FD_DIR}: {error})"),
        }
    }
}

/// Looks the fd number up in [`FD_DIR`]: whether it is open, and a socket.
/// A path lookup needs no `unsafe`, where `fstat` on a bare number would.
fn inspect(fd: RawFd) -> Found {
    use std::os::unix::fs::FileTypeExt;
    let entry = std::path::Path::new(FD_DIR).join(fd.to_string());
    match std::fs::metadata(&entry) {
        Ok(meta) if meta.file_type().is_socket() => Found::Socket,
        Ok(meta) => Found::Other(match std::fs::read_link(&entry) {
            Ok(target) => target.display().to_string(),
            Err(_) if meta.is_dir() => "a directory".to_owned(),
            Err(_) => "a file".to_owned(),
        }),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Found::Closed,
        Err(err) => Found::Unknown(err.to_string()),
    }
}

/// Takes ownership of an inherited fd number that [`inspect`] just found
/// open and a socket (or, for [`close_unserved`], open), so that dropping
/// it closes it.
#[allow(unsafe_code)]
fn take(fd: RawFd) -> OwnedFd {
    // SAFETY: `OwnedFd` needs `fd` open and owned by nobody else.
    // - Open: `inspect` has just found it in the kernel's fd table; no code
    //   of ours closes it in between.
    // - Ours alone: the LISTEN_FDS protocol hands these numbers to this
    //   process to own (`plan` has checked that LISTEN_PID is ours or absent,
    //   and only the offer's numbers come here). `TAKEN` lets `adopt` (the
    //   only caller, directly or through `close_unserved`) run once per
    //   process, and `plan` yields each number once, so we make one
    //   `OwnedFd` per number at most. Without
    //   LISTEN_PID (systemfd) only a socket is taken: a stale LISTEN_FDS (the
    //   variable inherited without its fds) then cannot take a number that
    //   now holds someone else's file, epoll instance or pipe.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// What a served fd must be.
const EXPECTED: &str = "expected a listening TCP or Unix stream socket (check ListenStream= in the socket unit, or -s http::PORT for systemfd)";

/// Checks that a taken socket is a listening TCP or Unix stream socket and
/// makes it ready to serve: close-on-exec (systemd passes it without, so our
/// children would inherit it) and nonblocking (tokio needs it).
fn adopt_one(
    owned: OwnedFd,
    fd: RawFd,
    name: Option<String>,
    (role, marks): (Role, Marks),
) -> Result<Adopted, ListenError> {
    let unusable = |reason: String| ListenError::UnusableFd {
        fd,
        name: name.clone(),
        reason,
    };
    let socket = Socket::from(owned);
    socket
        .set_cloexec(true)
        .map_err(|err| unusable(format!("it cannot be made close-on-exec: {err}")))?;
    let local = socket
        .local_addr()
        .map_err(|err| unusable(format!("its local address cannot be read: {err}")))?;
    let ty = socket
        .r#type()
        .map_err(|err| unusable(format!("its type cannot be read: {err}")))?;
    let inet = local.is_ipv4() || local.is_ipv6();
    let unix = local.is_unix();
    let kind = match ty {
        Type::STREAM if inet => "TCP",
        Type::STREAM if unix => "Unix stream",
        other => {
            let what = match other {
                Type::DGRAM if inet => "a UDP socket".to_owned(),
                Type::DGRAM if unix => "a Unix datagram socket".to_owned(),
                Type::SEQPACKET if unix => "a Unix seqpacket socket".to_owned(),
                _ => format!(
                    "a socket of address family {} and type {other:?}",
                    local.family()
                ),
            };
            return Err(unusable(format!("it is {what}; {EXPECTED}")));
        }
    };
    match socket.is_listener() {
        Ok(true) => {}
        Ok(false) if socket.peer_addr().is_ok() => {
            return Err(unusable(format!(
                "it is a connected {kind} socket, not a listening one (a socket unit with \
                 Accept=yes hands over connections; portkeeper needs Accept=no)"
            )));
        }
        Ok(false) => {
            return Err(unusable(format!(
                "it is a {kind} socket that is not listening (whoever passed it must call \
                 listen() before handing it over)"
            )));
        }
        Err(err) => return Err(unusable(format!("its state cannot be read: {err}"))),
    }
    socket
        .set_nonblocking(true)
        .map_err(|err| unusable(format!("it cannot be made nonblocking: {err}")))?;
    let (socket, address) = if unix {
        let address = match local.as_pathname() {
            Some(path) => Endpoint::Path(path.to_owned()),
            None => match local.as_abstract_namespace() {
                Some(name) => Endpoint::Abstract(String::from_utf8_lossy(name).into_owned()),
                None => Endpoint::Unnamed,
            },
        };
        (
            super::Socket::Unix(UnixListener::from(OwnedFd::from(socket))),
            address,
        )
    } else {
        let address = local
            .as_socket()
            .ok_or_else(|| unusable("its local address cannot be read".to_owned()))?;
        (super::Socket::Tcp(socket.into()), Endpoint::Tcp(address))
    };
    Ok(Adopted {
        socket,
        role,
        marks,
        address,
        fd,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(fds: Option<&str>, pid: Option<&str>, names: Option<&str>) -> HandoffVars {
        HandoffVars {
            listen_fds: fds.map(str::to_owned),
            listen_pid: pid.map(str::to_owned),
            listen_fdnames: names.map(str::to_owned),
            listen_fds_first_fd: None,
        }
    }

    #[test]
    fn nothing_set_means_nothing_inherited() {
        assert_eq!(plan(&vars(None, None, None), 42).unwrap(), Handoff::None);
        assert_eq!(
            plan(&vars(Some("0"), None, None), 42).unwrap(),
            Handoff::None
        );
    }

    #[test]
    fn missing_pid_is_systemfd_and_our_pid_is_systemd() {
        let Handoff::Offered(offer) = plan(&vars(Some("1"), None, None), 42).unwrap() else {
            panic!("expected an offer");
        };
        assert_eq!(offer.source, Source::Systemfd);
        assert_eq!(offer.fds, vec![3]);
        let Handoff::Offered(offer) = plan(&vars(Some("2"), Some("42"), None), 42).unwrap() else {
            panic!("expected an offer");
        };
        assert_eq!(offer.source, Source::Systemd);
        assert_eq!(offer.fds, vec![3, 4]);
    }

    #[test]
    fn another_pid_is_not_for_us() {
        assert_eq!(
            plan(&vars(Some("1"), Some("7"), None), 42).unwrap(),
            Handoff::ForAnotherProcess { pid: 7 }
        );
    }

    #[test]
    fn first_fd_moves_the_start() {
        let mut v = vars(Some("2"), None, None);
        v.listen_fds_first_fd = Some("10".to_owned());
        let Handoff::Offered(offer) = plan(&v, 1).unwrap() else {
            panic!("expected an offer");
        };
        assert_eq!(offer.fds, vec![10, 11]);
    }

    #[test]
    fn names_give_roles_every_http_fd_serves_and_others_are_closed() {
        let Handoff::Offered(offer) =
            plan(&vars(Some("4"), None, Some("metrics:http:admin:http")), 1).unwrap()
        else {
            panic!("expected an offer");
        };
        let plain = Marks::default();
        let app = Some((Role::App, plain));
        let admin = Some((Role::Admin, plain));
        assert_eq!(roles(&offer, "http", plain), vec![None, app, admin, app]);
        // No fd named LISTEN_FD_NAME: the first serves the app, as before.
        assert_eq!(roles(&offer, "web", plain), vec![app, None, admin, None]);
        let Handoff::Offered(unnamed) = plan(&vars(Some("2"), None, None), 1).unwrap() else {
            panic!("expected an offer");
        };
        assert_eq!(roles(&unnamed, "http", plain), vec![app; 2]);
        // TLS=true marks the sockets systemfd hands over without names.
        let tls = Marks { tls: true, ..plain };
        assert_eq!(
            roles(&unnamed, "http", tls),
            vec![Some((Role::App, tls)); 2]
        );
    }

    #[test]
    fn names_carry_tls_proxy_and_redirect_marks() {
        let Handoff::Offered(offer) = plan(
            &vars(
                Some("5"),
                None,
                Some("https:http+proxy:admin+tls:https+proxy+redirect:http+bogus"),
            ),
            1,
        )
        .unwrap() else {
            panic!("expected an offer");
        };
        let marks = |tls, proxy, redirect| Marks {
            tls,
            proxy,
            redirect,
        };
        assert_eq!(
            roles(&offer, "http", Marks::default()),
            vec![
                Some((Role::App, marks(true, false, false))),
                Some((Role::App, marks(false, true, false))),
                Some((Role::Admin, marks(true, false, false))),
                Some((Role::App, marks(true, true, true))),
                // An unknown mark: not ours to serve, so it is closed.
                None,
            ]
        );
        // A successor reads back the name each listener is handed over with.
        for (role, marks) in roles(&offer, "http", Marks::default())
            .into_iter()
            .flatten()
        {
            for app_name in ["http", "web"] {
                let name = marks.fd_name(role, app_name);
                assert_eq!(
                    Marks::from_fd_name(&name, app_name),
                    Some((role, marks)),
                    "{name}"
                );
            }
        }
    }

    /// `inspect` tells an open socket, another open fd and a closed number
    /// apart without taking any of them.
    #[cfg(target_os = "linux")]
    #[test]
    fn inspect_tells_sockets_from_other_fds_and_closed_numbers() {
        use std::os::fd::AsRawFd;
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(matches!(inspect(socket.as_raw_fd()), Found::Socket));
        let file = std::fs::File::open("/dev/null").unwrap();
        match inspect(file.as_raw_fd()) {
            Found::Other(what) => assert_eq!(what, "/dev/null"),
            other => panic!("expected another fd, got {other:?}"),
        }
        // Far above any number this test process has open.
        assert!(matches!(inspect(1 << 29), Found::Closed));
    }

    #[test]
    fn garbage_is_refused_with_the_variable_named() {
        for (v, name) in [
            (vars(Some("abc"), None, None), "LISTEN_FDS"),
            (vars(Some(" 1 "), None, None), "LISTEN_FDS"),
            (vars(Some("-1"), None, None), "LISTEN_FDS"),
            (vars(Some("99999999"), None, None), "LISTEN_FDS"),
            (vars(Some("1"), Some("me"), None), "LISTEN_PID"),
            (vars(Some("1"), Some(" 1 "), None), "LISTEN_PID"),
            (vars(Some("1"), Some("+1"), None), "LISTEN_PID"),
            (vars(Some("+1"), None, None), "LISTEN_FDS"),
            (vars(Some("2"), None, Some("http")), "LISTEN_FDNAMES"),
        ] {
            let err = plan(&v, 1)
                .expect_err("garbage must be refused")
                .to_string();
            assert!(err.starts_with(name), "{err}");
        }
        for first in ["-3", " 3 ", "3 ", "+3", ""] {
            let mut v = vars(Some("1"), None, None);
            v.listen_fds_first_fd = Some(first.to_owned());
            let err = plan(&v, 1).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("LISTEN_FDS_FIRST_FD: {first:?}")),
                "{err}"
            );
        }
    }
}
