//! Adopting a listening socket handed over by systemd or systemfd (the LISTEN_FDS protocol).
//!
//! This is the only code that knows the protocol. It works in two steps:
//! [`plan`] reads the LISTEN_* values (collected by `main.rs`) and decides,
//! without touching any fd, whether sockets were handed to *this* process;
//! [`adopt`] then takes the chosen socket through `listenfd`, checks it, and
//! closes the fds it does not serve.
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

use std::io;

use listenfd::ListenFd;
use socket2::Socket;

use super::{ADMIN_FD_NAME, Endpoint, ListenError, Role, Source};

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
    /// The variable names, so `main.rs` can read and then remove them.
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
    // No trimming: listenfd, which takes the fds afterwards, reads the
    // value as it is, and " 1 " would mean 1 here and nothing there.
    let count: usize = count
        .parse()
        .ok()
        .filter(|&n| n <= MAX_FDS)
        .ok_or_else(|| {
            ListenError::invalid_handoff(
                "LISTEN_FDS",
                count,
                format!("a count of inherited sockets from 0 to {MAX_FDS}, digits only"),
            )
        })?;
    let source = match vars.listen_pid.as_deref().map(str::trim) {
        None | Some("") => Source::Systemfd,
        Some(pid) => {
            let pid: u32 = pid.parse().map_err(|_| {
                ListenError::invalid_handoff("LISTEN_PID", pid, "a process id".to_owned())
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
        Some(value) => value
            .trim()
            .parse::<i32>()
            .ok()
            .filter(|&fd| fd >= 0 && fd.checked_add(count as i32).is_some())
            .ok_or_else(|| {
                ListenError::invalid_handoff(
                    "LISTEN_FDS_FIRST_FD",
                    value,
                    "a file descriptor number (default 3)".to_owned(),
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

/// A handed-over socket that has been checked and is ready to serve.
#[derive(Debug)]
pub(crate) struct Adopted {
    /// The listening socket, nonblocking and close-on-exec.
    pub(crate) socket: super::Socket,
    /// What it serves.
    pub(crate) role: Role,
    /// Its local address or path.
    pub(crate) address: Endpoint,
    /// The fd number it arrived as.
    pub(crate) fd: i32,
    /// Its LISTEN_FDNAMES entry, if names were given.
    pub(crate) name: Option<String>,
}

/// The role of each handed-over fd, by name: `wanted` (LISTEN_FD_NAME) is
/// the app, [`ADMIN_FD_NAME`] the built-in routes, anything else is not
/// served (`None`). Without names every fd serves the app. When names are
/// given but none is `wanted` or admin, the first fd serves the app, with a
/// warning, as a unit without `FileDescriptorName=` expects.
pub(crate) fn roles(offer: &Offer, wanted: &str) -> Vec<Option<Role>> {
    let Some(names) = &offer.names else {
        return vec![Some(Role::App); offer.fds.len()];
    };
    let mut roles: Vec<Option<Role>> = names
        .iter()
        .map(|name| {
            if name == wanted {
                Some(Role::App)
            } else if name == ADMIN_FD_NAME {
                Some(Role::Admin)
            } else {
                None
            }
        })
        .collect();
    if !roles.contains(&Some(Role::App)) && roles.first() == Some(&None) {
        if names.len() > 1 {
            tracing::warn!(
                wanted,
                names = names.join(":"),
                "no inherited socket is named LISTEN_FD_NAME; serving the first"
            );
        }
        roles[0] = Some(Role::App);
    }
    roles
}

/// Takes every handed-over socket that has a role (see [`roles`]), checks
/// each, and closes the others with a log line each.
///
/// `listenfd` reads LISTEN_FDS/LISTEN_PID again and removes them from the
/// environment, so this must run in the single-threaded part of `main`.
pub(crate) fn adopt(offer: &Offer, wanted: &str) -> Result<Vec<Adopted>, ListenError> {
    let mut handed = ListenFd::from_env();
    if handed.len() != offer.fds.len() {
        // Only possible if the environment changed between plan and adopt.
        return Err(ListenError::invalid_handoff(
            "LISTEN_FDS",
            &handed.len().to_string(),
            format!("{} socket(s), as read a moment earlier", offer.fds.len()),
        ));
    }
    let mut adopted = Vec::new();
    for (index, role) in roles(offer, wanted).into_iter().enumerate() {
        let fd = offer.fds[index];
        let name = offer.name(index).map(str::to_owned);
        let Some(role) = role else {
            let closed = take_any(&mut handed, index);
            let name = name.unwrap_or_default();
            match closed {
                Ok(true) => {
                    tracing::info!(fd, name, "closed an inherited socket that is not served")
                }
                _ => tracing::warn!(
                    fd,
                    name,
                    "an inherited fd is not served and could not be closed"
                ),
            }
            continue;
        };
        adopted.push(adopt_one(&mut handed, index, fd, name, role)?);
    }
    Ok(adopted)
}

fn adopt_one(
    handed: &mut ListenFd,
    index: usize,
    fd: i32,
    name: Option<String>,
    role: Role,
) -> Result<Adopted, ListenError> {
    let unusable = |reason: String| ListenError::UnusableFd {
        fd,
        name: name.clone(),
        reason,
    };
    let (socket, unix) = match handed.take_tcp_listener(index) {
        Ok(Some(listener)) => (Socket::from(listener), false),
        Ok(None) => return Err(unusable("it was already taken".to_owned())),
        Err(_) => match handed.take_unix_listener(index) {
            Ok(Some(listener)) => (Socket::from(listener), true),
            Ok(None) => return Err(unusable("it was already taken".to_owned())),
            Err(_) => return Err(unusable(describe_non_tcp(handed, index, fd))),
        },
    };
    let kind = if unix { "Unix stream" } else { "TCP" };
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
    let local = socket
        .local_addr()
        .map_err(|err| unusable(format!("its local address cannot be read: {err}")))?;
    let (socket, address) = if unix {
        let address = match local.as_pathname() {
            Some(path) => Endpoint::Path(path.to_owned()),
            None => match local.as_abstract_namespace() {
                Some(name) => Endpoint::Abstract(String::from_utf8_lossy(name).into_owned()),
                None => Endpoint::Unnamed,
            },
        };
        let fd: std::os::fd::OwnedFd = socket.into();
        (
            super::Socket::Unix(std::os::unix::net::UnixListener::from(fd)),
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
        address,
        fd,
        name,
    })
}

/// Says what an fd that is not a TCP socket is instead. listenfd leaves a
/// socket in place when a typed take fails, so each take is a probe.
fn describe_non_tcp(handed: &mut ListenFd, index: usize, fd: i32) -> String {
    const EXPECTED: &str = "expected a listening TCP or Unix stream socket (check ListenStream= in the socket unit, or -s http::PORT for systemfd)";
    let kind = if handed.take_udp_socket(index).is_ok_and(|s| s.is_some()) {
        "a UDP socket".to_owned()
    } else if handed.take_unix_datagram(index).is_ok_and(|s| s.is_some()) {
        "a Unix datagram socket".to_owned()
    } else {
        describe_non_socket(fd)
    };
    format!("it is {kind}; {EXPECTED}")
}

/// Tells "nothing at this fd" from "a file, not a socket", where Linux's
/// `/proc/self/fd` can say so without an `unsafe` fstat.
fn describe_non_socket(fd: i32) -> String {
    const VAGUE: &str = "not an open socket";
    if !std::path::Path::new("/proc/self/fd").is_dir() {
        return VAGUE.to_owned();
    }
    match std::fs::read_link(format!("/proc/self/fd/{fd}")) {
        Ok(target) => format!("not a socket but {}", target.display()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            "not open (nothing was passed at this fd)".to_owned()
        }
        Err(_) => VAGUE.to_owned(),
    }
}

/// Takes (and so closes, on drop) whatever kind of socket sits at `index`.
fn take_any(handed: &mut ListenFd, index: usize) -> io::Result<bool> {
    Ok(handed.take_tcp_listener(index)?.is_some()
        || handed.take_udp_socket(index).is_ok_and(|s| s.is_some())
        || handed.take_unix_listener(index).is_ok_and(|s| s.is_some())
        || handed.take_unix_datagram(index).is_ok_and(|s| s.is_some()))
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
        assert_eq!(
            roles(&offer, "http"),
            vec![None, Some(Role::App), Some(Role::Admin), Some(Role::App)]
        );
        // No fd named LISTEN_FD_NAME: the first serves the app, as before.
        assert_eq!(
            roles(&offer, "web"),
            vec![Some(Role::App), None, Some(Role::Admin), None]
        );
        let Handoff::Offered(unnamed) = plan(&vars(Some("2"), None, None), 1).unwrap() else {
            panic!("expected an offer");
        };
        assert_eq!(roles(&unnamed, "http"), vec![Some(Role::App); 2]);
    }

    #[test]
    fn garbage_is_refused_with_the_variable_named() {
        for (v, name) in [
            (vars(Some("abc"), None, None), "LISTEN_FDS"),
            (vars(Some(" 1 "), None, None), "LISTEN_FDS"),
            (vars(Some("-1"), None, None), "LISTEN_FDS"),
            (vars(Some("99999999"), None, None), "LISTEN_FDS"),
            (vars(Some("1"), Some("me"), None), "LISTEN_PID"),
            (vars(Some("2"), None, Some("http")), "LISTEN_FDNAMES"),
        ] {
            let err = plan(&v, 1)
                .expect_err("garbage must be refused")
                .to_string();
            assert!(err.starts_with(name), "{err}");
        }
        let mut v = vars(Some("1"), None, None);
        v.listen_fds_first_fd = Some("-3".to_owned());
        assert!(
            plan(&v, 1)
                .unwrap_err()
                .to_string()
                .starts_with("LISTEN_FDS_FIRST_FD")
        );
    }
}
