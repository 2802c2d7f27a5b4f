//! Where the listening socket comes from: inherited, else a fixed port, else a search.
//!
//! This module is the policy (DESIGN.md's listener chain); the mechanisms live
//! in submodules: `inherit` (the LISTEN_FDS protocol, Unix only), `bind`
//! (socket2) and `holder` (who holds a busy port, Linux only). Whatever the
//! path, the result is one [`Bound`] listener that is already listening, plus
//! a [`ListenerInfo`] describing where it came from.

mod axum_serve;
mod bind;
#[cfg(unix)]
#[allow(unreachable_pub)] // Until issue 13's upgrade work lands.
pub(crate) mod handover;
#[cfg(target_os = "linux")]
mod holder;
#[cfg(unix)]
pub(crate) mod inherit;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::ops::RangeInclusive;

use serde::Serialize;

use crate::config::BindPlan;

pub use axum_serve::Listener;

/// Where the listener came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Source {
    /// Inherited with LISTEN_PID equal to our pid (systemd socket activation).
    Systemd,
    /// Inherited without LISTEN_PID (`systemfd --no-pid`).
    Systemfd,
    /// Inherited from the previous portkeeper process by a binary upgrade
    /// (SIGUSR2, a service's SIGHUP, or `RELOAD=true`); whoever opened the socket first, this
    /// process got it from its predecessor.
    Handoff,
    /// Bound by us on `HOST:API_PORT`.
    Fixed,
    /// Bound by us after a search of the port range.
    Searched,
}

impl Source {
    /// The name shown in logs and `/info`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Source::Systemd => "systemd",
            Source::Systemfd => "systemfd",
            Source::Handoff => "handoff",
            Source::Fixed => "fixed",
            Source::Searched => "searched",
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the running server knows and reports about its listener.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ListenerInfo {
    /// Where it came from.
    pub(crate) source: Source,
    /// The local address it listens on.
    pub(crate) address: SocketAddr,
    /// The inherited fd number, if inherited.
    pub(crate) fd: Option<i32>,
    /// The inherited fd's LISTEN_FDNAMES entry, if any.
    pub(crate) fd_name: Option<String>,
    /// Ports found busy before this one, in the order tried (searches only).
    pub(crate) busy_ports: Vec<u16>,
}

/// A listening socket and its description.
#[derive(Debug)]
pub(crate) struct Bound {
    /// The socket, listening and nonblocking, ready for `tokio::net::TcpListener::from_std`.
    pub(crate) listener: TcpListener,
    /// Where it came from.
    pub(crate) info: ListenerInfo,
}

/// Opens the listener by the chain: an adopted socket if one was handed over,
/// else `HOST:API_PORT`, else (with a search range) the first free port.
pub(crate) fn open(
    #[cfg(unix)] handoff: Option<&inherit::Offer>,
    fd_name: &str,
    plan: &BindPlan,
) -> Result<Bound, ListenError> {
    #[cfg(unix)]
    if let Some(offer) = handoff {
        let adopted = inherit::adopt(offer, fd_name)?;
        return Ok(Bound {
            listener: adopted.listener,
            info: ListenerInfo {
                source: offer.source,
                address: adopted.address,
                fd: Some(adopted.fd),
                fd_name: adopted.name,
                busy_ports: Vec::new(),
            },
        });
    }
    #[cfg(not(unix))]
    let _ = fd_name;
    bind_own(plan)
}

fn bind_own(plan: &BindPlan) -> Result<Bound, ListenError> {
    let opening = std::time::Instant::now();
    let first = SocketAddr::new(plan.ip, plan.port);
    let (socket, source, busy_ports) = match &plan.search {
        None => match bind::try_bind(first) {
            Ok(bind::Attempt::Bound(socket)) => (socket, Source::Fixed, Vec::new()),
            Ok(bind::Attempt::Busy) => {
                return Err(ListenError::PortBusy {
                    address: first,
                    holder: holder_of(plan.port),
                });
            }
            Err(source) => return Err(ListenError::bind_failed(first, source)),
        },
        Some(range) => match bind::search(plan.ip, bind::candidates(plan.port, range.clone())) {
            bind::Found::Bound { socket, busy } => (socket, Source::Searched, busy),
            bind::Found::Exhausted(exhausted) => {
                return Err(ListenError::RangeExhausted {
                    address: first,
                    range: range.clone(),
                    busy: exhausted.busy.len(),
                    holder: holder_of(plan.port),
                });
            }
            bind::Found::Failed { port, error } => {
                return Err(ListenError::bind_failed(
                    SocketAddr::new(plan.ip, port),
                    error,
                ));
            }
        },
    };
    socket
        .set_nonblocking(true)
        .map_err(|source| ListenError::bind_failed(first, source))?;
    let address = socket
        .local_addr()
        .ok()
        .and_then(|addr| addr.as_socket())
        .unwrap_or(first);
    // How long binding (a search included) took; bench/run.sh reads this line.
    tracing::debug!(
        listener_us = u64::try_from(opening.elapsed().as_micros()).unwrap_or(u64::MAX),
        busy_ports = busy_ports.len(),
        "listener opened"
    );
    Ok(Bound {
        listener: socket.into(),
        info: ListenerInfo {
            source,
            address,
            fd: None,
            fd_name: None,
            busy_ports,
        },
    })
}

#[cfg(target_os = "linux")]
fn holder_of(port: u16) -> Option<String> {
    holder::describe_holder(port)
}

#[cfg(not(target_os = "linux"))]
fn holder_of(_port: u16) -> Option<String> {
    None
}

/// " (held by pid 12 (name))" or nothing.
fn held_by(holder: &Option<String>) -> String {
    holder
        .as_ref()
        .map(|h| format!(", held by {h}"))
        .unwrap_or_default()
}

/// Why no listener could be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum ListenError {
    /// A LISTEN_* variable is malformed.
    #[error("{name}: {value:?} is not valid (expected {expected})")]
    InvalidHandoff {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What it should be.
        expected: String,
    },
    /// The handed-over fd is not a listening TCP socket.
    #[error("inherited fd {fd}{} cannot be served: {reason}", .name.as_ref().map(|n| format!(" (name {n:?})")).unwrap_or_default())]
    UnusableFd {
        /// The fd number.
        fd: i32,
        /// Its LISTEN_FDNAMES entry.
        name: Option<String>,
        /// What is wrong with it.
        reason: String,
    },
    /// `API_PORT` is taken and no search was asked for.
    #[error("cannot listen on {address}: address in use{} (stop that process, choose another API_PORT, or set AUTO_FIND_PORT=true to search PORT_RANGE_START..=PORT_RANGE_END)", held_by(.holder))]
    PortBusy {
        /// The address tried.
        address: SocketAddr,
        /// Who holds it, when Linux can tell.
        holder: Option<String>,
    },
    /// `API_PORT` and every port of the range are taken.
    #[error("cannot listen on {address} or any port of {}..={}: all {busy} port(s) tried are in use{} (widen PORT_RANGE_START..=PORT_RANGE_END, or free a port)", .range.start(), .range.end(), held_by(.holder))]
    RangeExhausted {
        /// The first address tried (`HOST:API_PORT`).
        address: SocketAddr,
        /// The range searched.
        range: RangeInclusive<u16>,
        /// How many ports were busy.
        busy: usize,
        /// Who holds `API_PORT`, when Linux can tell.
        holder: Option<String>,
    },
    /// HOST is not an address of this machine.
    #[error(
        "cannot listen on {address}: HOST is not an address of this machine (use 0.0.0.0, 127.0.0.1 or one of this machine's addresses)"
    )]
    AddressNotAvailable {
        /// The address tried.
        address: SocketAddr,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// The port needs privileges we do not have.
    #[error(
        "cannot listen on {address}: permission denied (ports below 1024 need privileges: choose API_PORT 1024 or above, or use the systemd socket unit)"
    )]
    PermissionDenied {
        /// The address tried.
        address: SocketAddr,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// Any other failure to bind or listen.
    #[error("cannot listen on {address}")]
    Bind {
        /// The address tried.
        address: SocketAddr,
        /// The system's error.
        #[source]
        source: io::Error,
    },
}

impl ListenError {
    /// True when the error is a setting to fix (exit 78) rather than a busy
    /// port (69) or a system failure.
    pub(crate) fn is_configuration(&self) -> bool {
        matches!(
            self,
            ListenError::InvalidHandoff { .. }
                | ListenError::UnusableFd { .. }
                | ListenError::AddressNotAvailable { .. }
        )
    }

    /// True when the address or range is taken by others (exit 69).
    pub(crate) fn is_unavailable(&self) -> bool {
        matches!(
            self,
            ListenError::PortBusy { .. } | ListenError::RangeExhausted { .. }
        )
    }

    /// True when the system refused us the port for lack of privileges (exit 77).
    pub(crate) fn is_permission(&self) -> bool {
        matches!(self, ListenError::PermissionDenied { .. })
    }

    #[cfg(unix)]
    fn invalid_handoff(name: &'static str, value: &str, expected: String) -> Self {
        ListenError::InvalidHandoff {
            name,
            value: value.to_owned(),
            expected,
        }
    }

    fn bind_failed(address: SocketAddr, source: io::Error) -> Self {
        match source.kind() {
            io::ErrorKind::AddrNotAvailable => ListenError::AddressNotAvailable { address, source },
            io::ErrorKind::PermissionDenied => ListenError::PermissionDenied { address, source },
            _ => ListenError::Bind { address, source },
        }
    }
}
