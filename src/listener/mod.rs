//! Where the listening socket comes from: inherited, else a fixed port, else a search.
//!
//! This module is the policy (DESIGN.md's listener chain); the mechanisms live
//! in submodules: `inherit` (the LISTEN_FDS protocol, Unix only), `bind`
//! (socket2) and `holder` (who holds a busy port, Linux only). Whatever the
//! path, the result is a [`Bound`] set of listeners (TCP or Unix, each with a
//! [`Role`]), already listening, each with a [`ListenerInfo`] describing
//! where it came from.

mod axum_serve;
mod bind;
#[cfg(unix)]
pub(crate) mod handover;
#[cfg(target_os = "linux")]
mod holder;
#[cfg(unix)]
pub(crate) mod inherit;
mod settings;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::ops::RangeInclusive;

use serde::Serialize;

pub use axum_serve::Listener;
#[cfg(unix)]
pub(crate) use handover::Handed;
pub(crate) use settings::ListenSettings;

/// Binary upgrades hand sockets over on Unix only; elsewhere there is nothing to hand.
#[cfg(not(unix))]
#[derive(Debug)]
pub(crate) struct Handed;

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

/// What a listener serves, chosen by its name (inherited fds) or by the
/// variable that asked for it (`LISTEN`, `ADMIN_LISTEN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Role {
    /// The application (fds named `LISTEN_FD_NAME`, `http` by default).
    App,
    /// The built-in routes only (fds named [`ADMIN_FD_NAME`], `ADMIN_LISTEN`).
    Admin,
}

impl Role {
    /// The name shown in logs and `/info`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Role::App => "app",
            Role::Admin => "admin",
        }
    }
}

/// The LISTEN_FDNAMES name of the admin role's sockets.
pub(crate) const ADMIN_FD_NAME: &str = "admin";

/// The LISTEN_FDNAMES name of app sockets that serve TLS
/// (`FileDescriptorName=https`): the same as `<LISTEN_FD_NAME>+tls`.
pub(crate) const HTTPS_FD_NAME: &str = "https";

/// What a listener speaks besides plain HTTP. Set by a `LISTEN` entry's
/// prefix (`tls=`, `tls+proxy=`, `redirect=`), by an inherited fd's name
/// (`https`, `http+proxy`, ...), or by `TLS=true` for the listeners that
/// carry no marks of their own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Marks {
    /// Serves TLS.
    pub(crate) tls: bool,
    /// Each connection begins with a PROXY protocol header from a trusted peer.
    pub(crate) proxy: bool,
    /// Answers every request with a 308 to the same host and path over TLS.
    pub(crate) redirect: bool,
}

impl Marks {
    /// The marks' words, in the order they are written.
    const WORDS: [&'static str; 3] = ["tls", "proxy", "redirect"];

    /// Sets the mark `word` names; false when it names none.
    fn set(&mut self, word: &str) -> bool {
        match word {
            "tls" => self.tls = true,
            "proxy" => self.proxy = true,
            "redirect" => self.redirect = true,
            _ => return false,
        }
        true
    }

    fn words(self) -> impl Iterator<Item = &'static str> {
        let set = [self.tls, self.proxy, self.redirect];
        Self::WORDS
            .into_iter()
            .zip(set)
            .filter_map(|(word, set)| set.then_some(word))
    }

    /// The LISTEN_FDNAMES name a successor gets for a listener of `role`
    /// with these marks, that [`Marks::from_fd_name`] reads back: `http`,
    /// `https`, `admin+tls`, `http+proxy+redirect`, ...
    pub(crate) fn fd_name(self, role: Role, app_name: &str) -> String {
        let (mut name, rest) = match role {
            Role::App if self.tls && app_name == "http" => {
                (HTTPS_FD_NAME.to_owned(), Marks { tls: false, ..self })
            }
            Role::App => (app_name.to_owned(), self),
            Role::Admin => (ADMIN_FD_NAME.to_owned(), self),
        };
        for word in rest.words() {
            name.push('+');
            name.push_str(word);
        }
        name
    }

    /// The role and marks an inherited fd's name gives: `<app_name>`,
    /// `https` or `admin`, each optionally followed by `+tls`, `+proxy`,
    /// `+redirect`. `None`: not ours to serve.
    pub(crate) fn from_fd_name(name: &str, app_name: &str) -> Option<(Role, Marks)> {
        let mut words = name.split('+');
        let base = words.next()?;
        let mut marks = Marks::default();
        let role = if base == app_name {
            Role::App
        } else if base == HTTPS_FD_NAME {
            marks.tls = true;
            Role::App
        } else if base == ADMIN_FD_NAME {
            Role::Admin
        } else {
            return None;
        };
        words.all(|word| marks.set(word)).then_some((role, marks))
    }

    /// Parses a `LISTEN` prefix's words (`tls`, `proxy`, `redirect`), with
    /// the role words `app` and `admin` when `roles` allows them.
    pub(crate) fn parse_prefix(prefix: &str, roles: bool) -> Result<(Option<Role>, Marks), String> {
        let mut role = None;
        let mut marks = Marks::default();
        for word in prefix.split('+').map(str::trim) {
            let this_role = match word {
                "app" => Role::App,
                "admin" => Role::Admin,
                word if marks.set(word) => continue,
                other => {
                    return Err(format!(
                        "{other:?} is not a role prefix (app, admin) or a mark (tls, proxy, redirect; joined with +, as in admin+tls=)"
                    ));
                }
            };
            if !roles {
                return Err(format!(
                    "{word:?} is a role prefix, and every address here is admin (put app listeners in LISTEN)"
                ));
            }
            if role.replace(this_role).is_some() {
                return Err(format!("{prefix:?} names two roles"));
            }
        }
        Ok((role, marks))
    }
}

impl std::fmt::Display for Marks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let words: Vec<&str> = self.words().collect();
        f.write_str(&words.join("+"))
    }
}

/// Where a listener listens: a TCP address, a Unix socket path, or an
/// abstract Unix socket name (Linux).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix socket file.
    Path(std::path::PathBuf),
    /// An abstract Unix socket, `@name`.
    Abstract(String),
    /// A Unix socket without a name (inherited).
    Unnamed,
}

impl Endpoint {
    /// The TCP address, for a TCP listener.
    pub(crate) fn tcp(&self) -> Option<SocketAddr> {
        match self {
            Endpoint::Tcp(addr) => Some(*addr),
            _ => None,
        }
    }
}

/// For people (logs, error lines): a path or name with its control
/// characters escaped, so a line stays one line and no escape sequence
/// reaches a terminal.
impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(addr) => write!(f, "{addr}"),
            Endpoint::Path(path) => write!(f, "{}", Escaped(&path.to_string_lossy())),
            Endpoint::Abstract(name) => write!(f, "@{}", Escaped(name)),
            Endpoint::Unnamed => f.write_str("(unnamed unix socket)"),
        }
    }
}

/// For programs (`/info`'s JSON, which escapes by itself): the path or name
/// as it is, to connect to.
impl Serialize for Endpoint {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Endpoint::Path(path) => serializer.serialize_str(&path.to_string_lossy()),
            Endpoint::Abstract(name) => serializer.collect_str(&format_args!("@{name}")),
            other => serializer.collect_str(other),
        }
    }
}

/// Text printed on a log or error line: control characters (`\n`, ESC, C1),
/// the bidirectional overrides and the backslash itself escaped as Rust
/// writes them (`\n`, `\u{1b}`, `\\`); everything else as it is.
pub(crate) struct Escaped<'a>(pub(crate) &'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        for c in self.0.chars() {
            let bidi = matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
            if c.is_control() || bidi || c == '\\' {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// How two TCP addresses of one listener set collide, if they do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Clash {
    /// The same address twice.
    Same,
    /// Different addresses that Linux will not bind both of (EADDRINUSE):
    /// a wildcard and a specific address of its family, or `[::]` (which
    /// also takes IPv4) and a specific IPv4 address, on one port.
    Overlap,
}

/// Whether `a` and `b` can both be bound by one server. Port 0 is the
/// kernel's choice of a free port, so two of them never collide. `0.0.0.0`
/// and `[::]` of one port do not either: the `[::]` socket is then made
/// IPv6-only ([`v6_only_beside`]).
pub(crate) fn clash(a: SocketAddr, b: SocketAddr) -> Option<Clash> {
    if a.port() != b.port() || a.port() == 0 {
        return None;
    }
    if a == b {
        return Some(Clash::Same);
    }
    let (a_any, b_any) = (a.ip().is_unspecified(), b.ip().is_unspecified());
    let overlap = match (a.is_ipv4(), b.is_ipv4()) {
        // A wildcard and another address of its own family.
        (true, true) | (false, false) => a_any || b_any,
        // `[::]` also takes every IPv4 address, unless 0.0.0.0 is listed too.
        (true, false) => b_any && !a_any,
        (false, true) => a_any && !b_any,
    };
    overlap.then_some(Clash::Overlap)
}

/// True when the `[::]` socket for `addr` must be IPv6-only: an IPv4
/// wildcard of the same port is among `others`, and serves IPv4.
pub(crate) fn v6_only_beside(addr: SocketAddr, others: &[SocketAddr]) -> bool {
    addr.is_ipv6()
        && addr.ip().is_unspecified()
        && addr.port() != 0
        && others.iter().any(|other| {
            other.is_ipv4() && other.ip().is_unspecified() && other.port() == addr.port()
        })
}

/// One address of `LISTEN` or `ADMIN_LISTEN`, with the role it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListenSpec {
    /// What it serves.
    pub(crate) role: Role,
    /// What it speaks besides plain HTTP.
    pub(crate) marks: Marks,
    /// Where to listen (never [`Endpoint::Unnamed`]).
    pub(crate) endpoint: Endpoint,
}

/// What the running server knows and reports about one listener.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ListenerInfo {
    /// Where it came from.
    pub(crate) source: Source,
    /// What it serves.
    pub(crate) role: Role,
    /// What it speaks besides plain HTTP (`tls`, `proxy`, `redirect`).
    #[serde(flatten)]
    pub(crate) marks: Marks,
    /// The local address it listens on, or its Unix socket path.
    pub(crate) address: Endpoint,
    /// The inherited fd number, if inherited.
    pub(crate) fd: Option<i32>,
    /// The inherited fd's LISTEN_FDNAMES entry, if any.
    pub(crate) fd_name: Option<String>,
    /// Ports found busy before this one, in the order tried (searches only).
    pub(crate) busy_ports: Vec<u16>,
}

/// A listening stream socket, TCP or Unix.
#[derive(Debug)]
pub(crate) enum Socket {
    /// TCP.
    Tcp(TcpListener),
    /// A Unix stream socket.
    #[cfg(unix)]
    Unix(std::os::unix::net::UnixListener),
}

impl Socket {
    /// Another fd for the same socket.
    #[cfg(unix)]
    pub(crate) fn duplicate(&self) -> io::Result<std::os::fd::OwnedFd> {
        Ok(match self {
            Socket::Tcp(socket) => socket.try_clone()?.into(),
            Socket::Unix(socket) => socket.try_clone()?.into(),
        })
    }
}

/// A socket file we created (`LISTEN=/path`): removed at a normal stop, if
/// it is still ours, and left in place when a successor took the socket over.
#[cfg(unix)]
#[derive(Debug)]
pub(crate) struct SocketFile {
    path: std::path::PathBuf,
    dev: u64,
    ino: u64,
}

#[cfg(unix)]
impl SocketFile {
    /// True when `path` (followed, as `bind` would) is this socket file.
    fn is_at(&self, path: &std::path::Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).is_ok_and(|meta| meta.dev() == self.dev && meta.ino() == self.ino)
    }

    /// The path, escaped for a log line.
    fn shown(&self) -> Endpoint {
        Endpoint::Path(self.path.clone())
    }

    /// Removes the file if it is still the socket we created (not one that
    /// another process put there since).
    pub(crate) fn remove(&self) {
        use std::os::unix::fs::MetadataExt;
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if meta.dev() == self.dev && meta.ino() == self.ino => {
                match std::fs::remove_file(&self.path) {
                    Ok(()) => {
                        tracing::debug!(path = %self.shown(), "removed the socket file")
                    }
                    Err(err) => {
                        tracing::warn!(path = %self.shown(), error = %err, "cannot remove the socket file")
                    }
                }
            }
            _ => {
                tracing::debug!(path = %self.shown(), "the socket file is no longer ours; leaving it")
            }
        }
    }
}

/// One listening socket and its description.
#[derive(Debug)]
pub(crate) struct BoundListener {
    /// The socket, listening and nonblocking.
    pub(crate) socket: Socket,
    /// Where it came from and what it serves.
    pub(crate) info: ListenerInfo,
    /// The socket file to remove at a normal stop (Unix paths we bound).
    #[cfg(unix)]
    pub(crate) file: Option<SocketFile>,
}

/// Every listener the server serves: at least one.
#[derive(Debug)]
pub(crate) struct Bound {
    /// In order: inherited fds in fd order, or `LISTEN` then `ADMIN_LISTEN`.
    pub(crate) listeners: Vec<BoundListener>,
}

impl Bound {
    /// The first listener of the app role (else the first): what
    /// `Listening::local_addr`, `/info`'s `listener` and the ready status show.
    pub(crate) fn primary(&self) -> &BoundListener {
        self.listeners
            .iter()
            .find(|l| l.info.role == Role::App)
            .unwrap_or(&self.listeners[0])
    }

    /// True when any listener came from a predecessor's handoff.
    pub(crate) fn came_by_handoff(&self) -> bool {
        self.listeners
            .iter()
            .any(|l| l.info.source == Source::Handoff)
    }
}

/// Opens the listeners by the chain: the sockets handed over, if any; else
/// `LISTEN` (and `ADMIN_LISTEN`); else `HOST:API_PORT`, else (with a search
/// range) the first free port.
pub(crate) fn open(
    #[cfg(unix)] handoff: Option<&inherit::Offer>,
    fd_name: &str,
    plan: &ListenSettings,
) -> Result<Bound, ListenError> {
    #[cfg(unix)]
    if let Some(offer) = handoff {
        if plan.listen.is_some() || !plan.admin.is_empty() {
            tracing::info!("sockets were handed over; LISTEN and ADMIN_LISTEN are not bound");
        }
        let listeners = inherit::adopt(offer, fd_name, plan.unmarked)?
            .into_iter()
            .map(|adopted| BoundListener {
                file: our_socket_file(offer.source, &adopted.address, plan),
                info: ListenerInfo {
                    source: offer.source,
                    role: adopted.role,
                    marks: adopted.marks,
                    address: adopted.address,
                    fd: Some(adopted.fd),
                    fd_name: adopted.name,
                    busy_ports: Vec::new(),
                },
                socket: adopted.socket,
            })
            .collect();
        return Ok(Bound { listeners });
    }
    #[cfg(not(unix))]
    let _ = fd_name;
    let mut listeners = Vec::new();
    // Every TCP address asked for: a `[::]` beside `0.0.0.0` of its port is IPv6-only.
    let tcp: Vec<SocketAddr> = plan
        .listen
        .iter()
        .flatten()
        .chain(&plan.admin)
        .filter_map(|spec| spec.endpoint.tcp())
        .collect();
    let mut bind_all = || -> Result<(), ListenError> {
        match &plan.listen {
            Some(specs) => {
                for spec in specs {
                    let listener = bind_spec(spec, plan.unix_mode, &tcp, &listeners)?;
                    listeners.push(listener);
                }
            }
            None => listeners.push(bind_own(plan)?),
        }
        for spec in &plan.admin {
            let listener = bind_spec(spec, plan.unix_mode, &tcp, &listeners)?;
            listeners.push(listener);
        }
        Ok(())
    };
    if let Err(err) = bind_all() {
        // No socket file of ours outlives a failed start.
        #[cfg(unix)]
        for file in listeners.iter().filter_map(|l| l.file.as_ref()) {
            file.remove();
        }
        return Err(err);
    }
    Ok(Bound { listeners })
}

/// The socket file of a listener handed over by our predecessor, when our
/// own `LISTEN` or `ADMIN_LISTEN` names its path: the predecessor bound it
/// (the same settings), so the last process of the line removes it at a
/// normal stop. A socket from systemd or systemfd is never ours to remove.
#[cfg(unix)]
fn our_socket_file(
    source: Source,
    address: &Endpoint,
    plan: &ListenSettings,
) -> Option<SocketFile> {
    use std::os::unix::fs::MetadataExt;
    let Endpoint::Path(path) = address else {
        return None;
    };
    let ours = source == Source::Handoff
        && plan
            .listen
            .iter()
            .flatten()
            .chain(&plan.admin)
            .any(|spec| spec.endpoint == *address);
    if !ours {
        return None;
    }
    let meta = std::fs::symlink_metadata(path).ok()?;
    Some(SocketFile {
        path: path.clone(),
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

/// Binds one address of `LISTEN` or `ADMIN_LISTEN`. `tcp` is every TCP
/// address asked for, `ours` the listeners this server has bound so far:
/// an address that collides with one of ours is a setting to fix (the
/// settings refuse the ones they can see; this catches the rest, such as
/// `Server::bind_all`'s or a second name for one socket file).
fn bind_spec(
    spec: &ListenSpec,
    unix_mode: u32,
    tcp: &[SocketAddr],
    ours: &[BoundListener],
) -> Result<BoundListener, ListenError> {
    let (socket, address, file) = match &spec.endpoint {
        Endpoint::Tcp(addr) => {
            let v6_only = v6_only_beside(*addr, tcp);
            let socket = match bind::try_bind_v6_only(*addr, v6_only) {
                Ok(bind::Attempt::Bound(socket)) => socket,
                Ok(bind::Attempt::Busy) => {
                    let mine = ours.iter().find_map(|l| {
                        let bound = l.info.address.tcp()?;
                        clash(*addr, bound).map(|_| bound)
                    });
                    if let Some(bound) = mine {
                        return Err(ListenError::OwnOverlap {
                            endpoint: addr.to_string(),
                            ours: bound.to_string(),
                        });
                    }
                    return Err(ListenError::ListedAddressBusy {
                        address: *addr,
                        holder: holder_of(addr.port()),
                    });
                }
                Err(source) => return Err(ListenError::listed_bind_failed(*addr, source)),
            };
            socket
                .set_nonblocking(true)
                .map_err(|source| ListenError::listed_bind_failed(*addr, source))?;
            let address = socket
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .unwrap_or(*addr);
            (Socket::Tcp(socket.into()), Endpoint::Tcp(address), None)
        }
        #[cfg(unix)]
        Endpoint::Path(path) => {
            if let Some(file) = ours
                .iter()
                .filter_map(|l| l.file.as_ref())
                .find(|file| file.is_at(path))
            {
                return Err(ListenError::OwnOverlap {
                    endpoint: spec.endpoint.to_string(),
                    ours: Endpoint::Path(file.path.clone()).to_string(),
                });
            }
            let (socket, file) = bind::bind_unix_path(path, unix_mode)?;
            (Socket::Unix(socket), spec.endpoint.clone(), Some(file))
        }
        #[cfg(unix)]
        Endpoint::Abstract(name) => {
            let socket = bind::bind_unix_abstract(name)?;
            (Socket::Unix(socket), spec.endpoint.clone(), None)
        }
        // Unix sockets off Unix; `Unnamed` never comes from the configuration.
        other => {
            let _ = (unix_mode, ours);
            return Err(ListenError::UnixSocket {
                endpoint: other.to_string(),
                reason: "not an address this system can listen on".to_owned(),
                class: ErrorClass::Config,
            });
        }
    };
    tracing::debug!(%address, role = spec.role.as_str(), "listener opened");
    Ok(BoundListener {
        socket,
        info: ListenerInfo {
            source: Source::Fixed,
            role: spec.role,
            marks: spec.marks,
            address,
            fd: None,
            fd_name: None,
            busy_ports: Vec::new(),
        },
        #[cfg(unix)]
        file,
    })
}

fn bind_own(plan: &ListenSettings) -> Result<BoundListener, ListenError> {
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
    Ok(BoundListener {
        socket: Socket::Tcp(socket.into()),
        info: ListenerInfo {
            source,
            role: Role::App,
            marks: plan.unmarked,
            address: Endpoint::Tcp(address),
            fd: None,
            fd_name: None,
            busy_ports,
        },
        #[cfg(unix)]
        file: None,
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
    /// An address of `LISTEN` or `ADMIN_LISTEN` is taken.
    #[error("cannot listen on {address}: address in use{} (stop that process, or change LISTEN or ADMIN_LISTEN)", held_by(.holder))]
    ListedAddressBusy {
        /// The address tried.
        address: SocketAddr,
        /// Who holds it, when Linux can tell.
        holder: Option<String>,
    },
    /// An address of `LISTEN` or `ADMIN_LISTEN` collides with a listener
    /// this server has already bound.
    #[error(
        "cannot listen on {endpoint}: this server already listens on {ours}, which takes it too (list each address once: change ADMIN_LISTEN, LISTEN, HOST:API_PORT or bind_all)"
    )]
    OwnOverlap {
        /// The address or path that could not be bound.
        endpoint: String,
        /// Our listener that holds it.
        ours: String,
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
    /// HOST (or an address of LISTEN) is not an address of this machine.
    #[error(
        "cannot listen on {address}: {setting} is not an address of this machine (use 0.0.0.0, 127.0.0.1 or one of this machine's addresses)"
    )]
    AddressNotAvailable {
        /// The address tried.
        address: SocketAddr,
        /// Where it came from: `HOST`, or `LISTEN or ADMIN_LISTEN`.
        setting: &'static str,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// A link-local address's scope id names no interface of this machine.
    #[error(
        "cannot listen on {address}: {setting} names interface {scope_id} after %, which this machine does not have (`ip link` lists the interfaces' numbers)"
    )]
    NoSuchInterface {
        /// The address tried.
        address: SocketAddr,
        /// Its scope id.
        scope_id: u32,
        /// Where it came from.
        setting: &'static str,
    },
    /// The port needs privileges we do not have.
    #[error(
        "cannot listen on {address}: permission denied (ports below 1024 need privileges: choose a port of 1024 or above in {setting}, or use the systemd socket unit)"
    )]
    PermissionDenied {
        /// The address tried.
        address: SocketAddr,
        /// Where its port came from: `API_PORT`, or `LISTEN or ADMIN_LISTEN`.
        setting: &'static str,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// A Unix socket of `LISTEN` or `ADMIN_LISTEN` cannot be had.
    #[error("cannot listen on {endpoint}: {reason}")]
    UnixSocket {
        /// The path or `@name`.
        endpoint: String,
        /// Why, and what to do.
        reason: String,
        /// Which exit status it deserves.
        class: ErrorClass,
    },
    /// `Listening::into_listener` needs exactly one TCP listener.
    #[error(
        "into_listener needs exactly one TCP listener, and there are {count} listener(s) ({kinds}); serve them with Listening::serve"
    )]
    NotOneTcpListener {
        /// How many listeners there are.
        count: usize,
        /// Their addresses.
        kinds: String,
    },
    /// `Listening::into_listener` on a listener marked tls, proxy or redirect:
    /// a bare socket would serve it as plain HTTP.
    #[error(
        "into_listener hands over a bare socket, and {address} is marked {marks} (served as plain HTTP it would not work); serve it with Listening::serve"
    )]
    MarkedListener {
        /// The listener's address.
        address: String,
        /// Its marks.
        marks: Marks,
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

/// Which exit status a Unix socket error deserves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorClass {
    /// A setting to fix (78): a missing directory, a file in the way.
    Config,
    /// Another process listens there (69).
    Busy,
    /// Permission denied (77).
    Permission,
    /// Anything else (71).
    System,
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
                | ListenError::NoSuchInterface { .. }
                | ListenError::NotOneTcpListener { .. }
                | ListenError::MarkedListener { .. }
                | ListenError::OwnOverlap { .. }
                | ListenError::UnixSocket {
                    class: ErrorClass::Config,
                    ..
                }
        )
    }

    /// True when the address or range is taken by others (exit 69).
    pub(crate) fn is_unavailable(&self) -> bool {
        matches!(
            self,
            ListenError::PortBusy { .. }
                | ListenError::ListedAddressBusy { .. }
                | ListenError::RangeExhausted { .. }
                | ListenError::UnixSocket {
                    class: ErrorClass::Busy,
                    ..
                }
        )
    }

    /// True when the system refused us the port for lack of privileges (exit 77).
    pub(crate) fn is_permission(&self) -> bool {
        matches!(
            self,
            ListenError::PermissionDenied { .. }
                | ListenError::UnixSocket {
                    class: ErrorClass::Permission,
                    ..
                }
        )
    }

    #[cfg(unix)]
    fn invalid_handoff(name: &'static str, value: &str, expected: String) -> Self {
        ListenError::InvalidHandoff {
            name,
            value: value.to_owned(),
            expected,
        }
    }

    /// A failed bind of `HOST:API_PORT` (or the search).
    fn bind_failed(address: SocketAddr, source: io::Error) -> Self {
        Self::failed_for(address, source, "HOST", "API_PORT")
    }

    /// A failed bind of an address of `LISTEN` or `ADMIN_LISTEN`.
    fn listed_bind_failed(address: SocketAddr, source: io::Error) -> Self {
        const LISTED: &str = "LISTEN or ADMIN_LISTEN";
        Self::failed_for(address, source, LISTED, LISTED)
    }

    fn failed_for(
        address: SocketAddr,
        source: io::Error,
        address_setting: &'static str,
        port_setting: &'static str,
    ) -> Self {
        // ENODEV: the scope id of a link-local address is no interface.
        #[cfg(target_os = "linux")]
        if let SocketAddr::V6(v6) = address
            && v6.scope_id() != 0
            && source.raw_os_error() == Some(nix::errno::Errno::ENODEV as i32)
        {
            return ListenError::NoSuchInterface {
                address,
                scope_id: v6.scope_id(),
                setting: address_setting,
            };
        }
        match source.kind() {
            io::ErrorKind::AddrNotAvailable => ListenError::AddressNotAvailable {
                address,
                setting: address_setting,
                source,
            },
            io::ErrorKind::PermissionDenied => ListenError::PermissionDenied {
                address,
                setting: port_setting,
                source,
            },
            _ => ListenError::Bind { address, source },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_for_people_and_kept_for_programs() {
        let path = Endpoint::Path("/run/a\nb\u{1b}[31m\u{202e}c\\d é.sock".into());
        assert_eq!(
            path.to_string(),
            "/run/a\\nb\\u{1b}[31m\\u{202e}c\\\\d é.sock"
        );
        let json = serde_json::to_string(&path).unwrap();
        assert_eq!(json, "\"/run/a\\nb\\u001b[31m\u{202e}c\\\\d é.sock\"");
        let name = Endpoint::Abstract("pk\r".into());
        assert_eq!(name.to_string(), "@pk\\r");
    }

    #[test]
    fn clashes_are_the_ones_linux_refuses() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            clash(a("127.0.0.1:80"), a("127.0.0.1:80")),
            Some(Clash::Same)
        );
        assert_eq!(
            clash(a("0.0.0.0:80"), a("10.0.0.1:80")),
            Some(Clash::Overlap)
        );
        assert_eq!(clash(a("[::1]:80"), a("[::]:80")), Some(Clash::Overlap));
        assert_eq!(clash(a("[::]:80"), a("127.0.0.1:80")), Some(Clash::Overlap));
        assert_eq!(clash(a("0.0.0.0:80"), a("[::]:80")), None);
        assert_eq!(clash(a("127.0.0.1:80"), a("[::1]:80")), None);
        assert_eq!(clash(a("127.0.0.1:0"), a("127.0.0.1:0")), None);
        assert_eq!(clash(a("127.0.0.1:80"), a("127.0.0.1:81")), None);
        let listed = [a("0.0.0.0:80"), a("[::]:80"), a("[::]:81")];
        assert!(v6_only_beside(a("[::]:80"), &listed));
        assert!(!v6_only_beside(a("[::]:81"), &listed));
        assert!(!v6_only_beside(a("[::]:0"), &[a("0.0.0.0:0")]));
    }
}
