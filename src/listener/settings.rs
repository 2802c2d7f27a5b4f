//! The listener's settings: where to bind when nothing is inherited, and
//! which inherited sockets serve the app.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;

use super::{Clash, Endpoint, ListenSpec, Marks, Role, clash};
use crate::settings::{ConfigError, Environment, Variable, parse_bool, parse_port};

const HOST: Variable = Variable::new(
    "HOST",
    "0.0.0.0",
    "address to bind: an IPv4 or IPv6 literal, or `localhost`",
);
const API_PORT: Variable = Variable::new(
    "API_PORT",
    "5050",
    "port to bind first; `0` = any free port",
);
const PORT: Variable = Variable::unset(
    "PORT",
    "the platforms' port (Heroku, Cloud Run, Render): used when `API_PORT` is unset",
);
const AUTO_FIND_PORT: Variable = Variable::new(
    "AUTO_FIND_PORT",
    "false",
    "search the range when `API_PORT` is busy",
);
const PORT_RANGE_START: Variable =
    Variable::new("PORT_RANGE_START", "5050", "first port of the search range");
const PORT_RANGE_END: Variable = Variable::new(
    "PORT_RANGE_END",
    "5100",
    "last port of the search range (included)",
);
const LISTEN: Variable = Variable::unset(
    "LISTEN",
    "addresses to bind instead of `HOST:API_PORT`: `IP:PORT`, `[V6]:PORT`, `/unix/path`, `@abstract`, comma-separated",
);
const ADMIN_LISTEN: Variable = Variable::unset(
    "ADMIN_LISTEN",
    "addresses for the built-in routes alone; the app listeners then serve the app alone",
);
const UNIX_SOCKET_MODE: Variable = Variable::new(
    "UNIX_SOCKET_MODE",
    "0660",
    "permissions of the Unix socket files portkeeper binds",
);
const LISTEN_FD_NAME: Variable = Variable::new(
    "LISTEN_FD_NAME",
    "http",
    "inherited sockets of this `LISTEN_FDNAMES` name serve the app (all of them); `admin` ones serve `/health` and `/info`",
);

/// The listener's variables, in the order of the documentation.
const VARIABLES: &[Variable] = &[
    HOST,
    API_PORT,
    PORT,
    AUTO_FIND_PORT,
    PORT_RANGE_START,
    PORT_RANGE_END,
    LISTEN,
    ADMIN_LISTEN,
    UNIX_SOCKET_MODE,
    LISTEN_FD_NAME,
];

/// Where the server gets its sockets when nothing is inherited, and which
/// inherited ones serve the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListenSettings {
    /// The address to bind.
    pub(crate) ip: IpAddr,
    /// The port tried first (`0` = the kernel's choice).
    pub(crate) port: u16,
    /// With `AUTO_FIND_PORT=true`, the ports to try after `port`, in order.
    pub(crate) search: Option<RangeInclusive<u16>>,
    /// `LISTEN`: when set, these addresses replace `HOST:API_PORT` and the search.
    pub(crate) listen: Option<Vec<ListenSpec>>,
    /// `ADMIN_LISTEN`: addresses for the built-in routes alone.
    pub(crate) admin: Vec<ListenSpec>,
    /// `UNIX_SOCKET_MODE`: permissions of the Unix socket files we bind.
    pub(crate) unix_mode: u32,
    /// Which inherited sockets serve the app, by their LISTEN_FDNAMES entry.
    pub(crate) listen_fd_name: String,
    /// The marks of the listeners that carry none of their own
    /// (`HOST:API_PORT`, inherited sockets without names): `TLS=true`,
    /// which the TLS settings own and `Config` copies here.
    pub(crate) unmarked: Marks,
}

impl ListenSettings {
    /// The listener's variables, in the order of the documentation.
    pub(crate) const VARIABLES: &'static [Variable] = VARIABLES;

    /// Reads and checks the listener's variables.
    pub(crate) fn from_env(env: &Environment) -> Result<Self, ConfigError> {
        let host = env.setting(&HOST)?;
        let api_port = env.setting(&API_PORT)?;
        let auto_find_port = env.setting(&AUTO_FIND_PORT)?;
        let listen_setting = env.setting(&LISTEN)?;
        // First: with LISTEN, HOST and API_PORT are refused, whatever their values.
        let listen = match listen_setting.value {
            None => None,
            Some(value) => {
                if let Some(other) = [&host, &api_port, &auto_find_port]
                    .into_iter()
                    .find(|setting| setting.is_set())
                {
                    return Err(ConfigError::Invalid {
                        name: listen_setting.name.clone(),
                        value: value.to_owned(),
                        expected: format!(
                            "{} alone: {} is set too ({} replaces {}, {} and {}; unset one of them)",
                            listen_setting.name,
                            other.name,
                            listen_setting.name,
                            host.name,
                            api_port.name,
                            auto_find_port.name,
                        ),
                    });
                }
                let specs = listen_setting.parse_or("", |v| parse_listen(v, Some(Role::App)))?;
                if !specs.iter().any(|spec| spec.role == Role::App) {
                    return Err(ConfigError::Invalid {
                        name: listen_setting.name.clone(),
                        value: value.to_owned(),
                        expected: format!(
                            "at least one app address: {} has no app listener, only admin= entries (add an address without admin=, or put these in {})",
                            listen_setting.name,
                            env.spelled(ADMIN_LISTEN.name),
                        ),
                    });
                }
                Some(specs)
            }
        };
        let ip = host.parse(parse_host)?;
        // API_PORT wins; PORT (Heroku, Cloud Run, Render) is the fallback.
        let port_setting = env.setting(&PORT)?;
        let port_setting = if !api_port.is_set() && port_setting.is_set() {
            port_setting
        } else {
            api_port
        };
        let port = port_setting
            .parse(|v| parse_port(v, 0, "a port number from 0 to 65535 (0 = any free port)"))?;
        let admin_setting = env.setting(&ADMIN_LISTEN)?;
        let admin = admin_setting
            .parse_opt(|v| parse_listen(v, None))?
            .unwrap_or_default();
        let unix_mode = env.setting(&UNIX_SOCKET_MODE)?.parse(parse_mode)?;
        let auto_find_port = auto_find_port.parse(parse_bool)?;
        let start = env.setting(&PORT_RANGE_START)?;
        let range_start = start.parse(|v| parse_port(v, 1, "a port number from 1 to 65535"))?;
        let end = env.setting(&PORT_RANGE_END)?;
        let range_end = end.parse(|v| parse_port(v, 1, "a port number from 1 to 65535"))?;
        if range_start > range_end {
            return Err(ConfigError::Invalid {
                name: start.name,
                value: range_start.to_string(),
                expected: format!("a port not above {} ({range_end})", end.name),
            });
        }
        // Each address once, and none that another takes too: both would
        // be ours, and the second bind would fail blaming our own pid.
        // (HOST:API_PORT against ADMIN_LISTEN is left to the bind, which
        // knows the port a search found: `ListenError::OwnOverlap`.)
        let mut entries: Vec<Entry> = match (&listen, listen_setting.value) {
            (Some(specs), Some(value)) => specs
                .iter()
                .map(|spec| Entry::new(&listen_setting.name, value, &spec.endpoint))
                .collect(),
            _ => Vec::new(),
        };
        if let Some(value) = admin_setting.value {
            entries.extend(
                admin
                    .iter()
                    .map(|spec| Entry::new(&admin_setting.name, value, &spec.endpoint)),
            );
        }
        check_apart(&entries)?;
        let listen_fd_name = env.setting(&LISTEN_FD_NAME)?.parse(parse_fd_name)?;
        Ok(ListenSettings {
            ip,
            port,
            search: auto_find_port.then_some(range_start..=range_end),
            listen,
            admin,
            unix_mode,
            listen_fd_name,
            unmarked: Marks::default(),
        })
    }
}

/// One address of the listener set, with the variable it came from.
struct Entry {
    name: String,
    value: String,
    endpoint: Endpoint,
}

impl Entry {
    fn new(name: &str, value: &str, endpoint: &Endpoint) -> Self {
        Entry {
            name: name.to_owned(),
            value: value.to_owned(),
            endpoint: endpoint.clone(),
        }
    }
}

/// Refuses an address listed twice (TCP, path or abstract name) and two
/// TCP addresses that Linux will not bind both of ([`clash`]), naming the
/// variable of the later one.
fn check_apart(entries: &[Entry]) -> Result<(), ConfigError> {
    for (index, later) in entries.iter().enumerate() {
        for earlier in &entries[..index] {
            let elsewhere = if earlier.name == later.name {
                String::new()
            } else {
                format!(" in {}", earlier.name)
            };
            let twice = |b: &Endpoint| {
                let also = if elsewhere.is_empty() {
                    String::new()
                } else {
                    format!(" (also{elsewhere})")
                };
                format!("each address once: {b} is listed twice{also}")
            };
            let expected = match (&earlier.endpoint, &later.endpoint) {
                (Endpoint::Tcp(a), Endpoint::Tcp(b)) => match clash(*a, *b) {
                    None => continue,
                    Some(Clash::Same) => twice(&later.endpoint),
                    Some(Clash::Overlap) => format!(
                        "addresses that do not overlap: {b} and {a}{elsewhere} overlap ({})",
                        overlap_reason(*a, *b)
                    ),
                },
                (a, b) if a == b => twice(b),
                _ => continue,
            };
            return Err(ConfigError::Invalid {
                name: later.name.clone(),
                value: later.value.clone(),
                expected,
            });
        }
    }
    Ok(())
}

/// Why two overlapping TCP addresses cannot both be bound.
fn overlap_reason(a: SocketAddr, b: SocketAddr) -> String {
    let port = a.port();
    match (a.is_ipv4(), b.is_ipv4()) {
        (true, true) => {
            format!("0.0.0.0:{port} takes every IPv4 address of port {port}: list one of them")
        }
        (false, false) => {
            format!("[::]:{port} takes every IPv6 address of port {port}: list one of them")
        }
        _ => format!(
            "[::]:{port} takes IPv4 too: list one of them, or write 0.0.0.0:{port},[::]:{port} for every address of both families"
        ),
    }
}

fn parse_host(value: &str) -> Result<IpAddr, String> {
    const EXPECTED: &str = "an IPv4 or IPv6 address (e.g. 0.0.0.0, 127.0.0.1, ::) or localhost";
    if value.eq_ignore_ascii_case("localhost") {
        // A fixed loopback address, never a name lookup: "localhost" in
        // /etc/hosts could point anywhere, or at ::1 on one machine and
        // 127.0.0.1 on the next.
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    // Accept the bracketed form people copy from URLs: [::1].
    let literal = value
        .strip_prefix('[')
        .and_then(|v| v.strip_suffix(']'))
        .unwrap_or(value);
    let ip: IpAddr = literal.parse().map_err(|_| EXPECTED.to_owned())?;
    if let IpAddr::V6(v6) = ip
        && let Some(v4) = v6.to_ipv4_mapped()
    {
        return Err(format!(
            "{EXPECTED}; {value} is an IPv4-mapped IPv6 address, an IPv4 address in IPv6 form (write {v4})"
        ));
    }
    Ok(ip)
}

fn parse_fd_name(value: &str) -> Result<String, String> {
    // systemd's FileDescriptorName= rules: printable ASCII, no colon, at most 255 bytes.
    let valid = !value.is_empty()
        && value.len() <= 255
        && value.bytes().all(|b| b.is_ascii_graphic() && b != b':');
    if valid {
        Ok(value.to_owned())
    } else {
        Err("a socket name of 1 to 255 printable characters without ':' or spaces".to_owned())
    }
}

/// The longest Unix socket path: `sun_path` holds 108 bytes with the final NUL.
const MAX_UNIX_PATH: usize = 107;

/// Parses `LISTEN` or `ADMIN_LISTEN`: comma-separated addresses, each
/// `IP:PORT`, `[V6]:PORT`, an absolute path (a Unix socket) or `@name` (an
/// abstract one). In `LISTEN` (`role` is `Some(App)`), each may be preceded
/// by `app=` or `admin=` to choose its role; in `ADMIN_LISTEN` (`role` is
/// `None`) every address is admin and a prefix is refused.
fn parse_listen(value: &str, role: Option<Role>) -> Result<Vec<ListenSpec>, String> {
    const EXPECTED: &str = "comma-separated addresses: IP:PORT, [IPV6]:PORT, /absolute/path or @abstract, each optionally prefixed by a role (app= or admin=) and marks (tls=, proxy=, redirect=, joined as in admin+tls=)";
    const EXPECTED_ADMIN: &str = "comma-separated addresses: IP:PORT, [IPV6]:PORT, /absolute/path or @abstract, optionally prefixed by marks (tls=, proxy=, tls+proxy=), without a role (every one is admin)";
    let expected = if role.is_some() {
        EXPECTED
    } else {
        EXPECTED_ADMIN
    };
    let mut specs = Vec::new();
    for entry in value.split(',').map(str::trim) {
        if entry.is_empty() {
            return Err(format!("{expected}; an entry is empty"));
        }
        // A path or an abstract name may hold '=': only an entry that starts
        // otherwise has a prefix.
        let prefix = entry
            .split_once('=')
            .filter(|_| !entry.starts_with(['/', '@', '[']));
        let (role, marks, address) = match prefix {
            None => (role.unwrap_or(Role::Admin), Marks::default(), entry),
            Some((prefix, address)) => {
                let (named, marks) = Marks::parse_prefix(prefix, role.is_some())
                    .map_err(|why| format!("{expected}; {why}"))?;
                let role = named.or(role).unwrap_or(Role::Admin);
                (role, marks, address.trim())
            }
        };
        if marks.redirect && (marks.tls || role == Role::Admin) {
            return Err(format!(
                "{expected}; {entry:?}: redirect is for a plain app listener (it sends every request to the tls one)"
            ));
        }
        specs.push(ListenSpec {
            role,
            marks,
            endpoint: parse_endpoint(address).map_err(|why| format!("{expected}; {why}"))?,
        });
    }
    Ok(specs)
}

/// One address of `LISTEN` or `ADMIN_LISTEN`, without its role; the error
/// says what is wrong and what to write.
fn parse_endpoint(address: &str) -> Result<Endpoint, String> {
    if let Some(name) = address.strip_prefix('@') {
        if name.is_empty() || name.len() > MAX_UNIX_PATH - 1 {
            return Err(format!(
                "an abstract name has 1 to {} bytes",
                MAX_UNIX_PATH - 1
            ));
        }
        return Ok(Endpoint::Abstract(name.to_owned()));
    }
    if address.starts_with('/') {
        if address.len() > MAX_UNIX_PATH {
            return Err(format!(
                "the Unix socket path {address:?} has {} bytes, more than the {MAX_UNIX_PATH} a socket address holds (choose a shorter path)",
                address.len()
            ));
        }
        if address.ends_with('/') {
            return Err(format!("{address:?} names a directory"));
        }
        return Ok(Endpoint::Path(address.into()));
    }
    let addr = match address.parse::<SocketAddr>() {
        Ok(addr) => addr,
        // std takes a scope id only as a number: `[fe80::1%2]:80`.
        Err(_) if address.starts_with('[') && address.contains('%') => {
            return Err(format!(
                "{address:?} has a scope id that is not a number: write the interface's number after %, e.g. [fe80::1%2]:8080 (`ip link` lists the numbers)"
            ));
        }
        Err(_) => return Err(format!("{address:?} is none of these")),
    };
    if let SocketAddr::V6(v6) = addr {
        let port = v6.port();
        let link_local = v6.ip().segments()[0] & 0xffc0 == 0xfe80;
        if let Some(v4) = v6.ip().to_ipv4_mapped() {
            return Err(format!(
                "{address:?} is an IPv4-mapped IPv6 address, an IPv4 address in IPv6 form (write {v4}:{port})"
            ));
        }
        match (v6.scope_id(), link_local) {
            // Kept: a link-local address is bound on that interface.
            (0, false) | (1.., true) => {}
            (scope, false) => {
                return Err(format!(
                    "{address:?} has a scope id (%{scope}), which only a link-local address (fe80::/10) takes; the system would ignore it (write [{}]:{port})",
                    v6.ip()
                ));
            }
            (0, true) => {
                return Err(format!(
                    "{address:?} is a link-local address, which needs its interface: write the interface's number after %, e.g. [{}%2]:{port} (`ip link` lists the numbers)",
                    v6.ip()
                ));
            }
        }
    }
    Ok(Endpoint::Tcp(addr))
}

/// An octal file mode such as 0660 or 660, at most 0777.
fn parse_mode(value: &str) -> Result<u32, String> {
    let digits = value.strip_prefix("0o").unwrap_or(value);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o777 && !digits.is_empty() => Ok(mode),
        _ => Err("an octal file mode from 0000 to 0777, such as 0660".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Result<ListenSettings, ConfigError> {
        let env = Environment::new(
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())),
            [],
        );
        ListenSettings::from_env(&env)
    }

    fn error(pairs: &[(&str, &str)]) -> String {
        settings(pairs)
            .expect_err("settings should be refused")
            .to_string()
    }

    #[test]
    fn defaults_match_the_design() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.ip, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!(s.port, 5050);
        assert_eq!(s.search, None);
        assert_eq!(s.listen, None);
        assert_eq!(s.unix_mode, 0o660);
        assert_eq!(s.listen_fd_name, "http");
    }

    #[test]
    fn auto_find_port_enables_the_range() {
        let s = settings(&[
            ("AUTO_FIND_PORT", "YES"),
            ("PORT_RANGE_START", "6000"),
            ("PORT_RANGE_END", "6000"),
        ])
        .unwrap();
        assert_eq!(s.search, Some(6000..=6000));
    }

    #[test]
    fn host_accepts_literals_and_localhost_only() {
        assert_eq!(
            settings(&[("HOST", "localhost")]).unwrap().ip,
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        );
        assert_eq!(
            settings(&[("HOST", "[::1]")]).unwrap().ip,
            "::1".parse::<IpAddr>().unwrap()
        );
        assert!(error(&[("HOST", "example.com")]).starts_with("HOST: \"example.com\""));
    }

    #[test]
    fn ports_are_bounded() {
        assert_eq!(settings(&[("API_PORT", "0")]).unwrap().port, 0);
        assert!(error(&[("API_PORT", "65536")]).starts_with("API_PORT: \"65536\""));
        assert!(error(&[("API_PORT", "-1")]).starts_with("API_PORT: \"-1\""));
        assert!(error(&[("API_PORT", "")]).starts_with("API_PORT: \"\""));
        assert!(error(&[("PORT_RANGE_START", "0")]).starts_with("PORT_RANGE_START: \"0\""));
        assert_eq!(
            error(&[("PORT_RANGE_START", "9000"), ("PORT_RANGE_END", "8000")]),
            "PORT_RANGE_START: \"9000\" is not valid (expected a port not above PORT_RANGE_END (8000))"
        );
    }

    #[test]
    fn fd_name_and_mode_are_checked() {
        assert!(error(&[("LISTEN_FD_NAME", "a:b")]).starts_with("LISTEN_FD_NAME"));
        assert!(error(&[("UNIX_SOCKET_MODE", "0999")]).starts_with("UNIX_SOCKET_MODE"));
        assert!(error(&[("UNIX_SOCKET_MODE", "1777")]).starts_with("UNIX_SOCKET_MODE"));
    }

    #[test]
    fn listen_takes_tcp_unix_and_abstract_addresses_with_roles() {
        let s = settings(&[
            (
                "LISTEN",
                "127.0.0.1:5050, [::1]:5050,/run/pk.sock,@pk,admin=127.0.0.1:9",
            ),
            ("ADMIN_LISTEN", "/run/pk-admin.sock"),
            ("UNIX_SOCKET_MODE", "0600"),
        ])
        .unwrap();
        let listen = s.listen.unwrap();
        assert_eq!(listen.len(), 5);
        assert_eq!(
            listen[0].endpoint,
            Endpoint::Tcp("127.0.0.1:5050".parse().unwrap())
        );
        assert_eq!(
            listen[1].endpoint,
            Endpoint::Tcp("[::1]:5050".parse().unwrap())
        );
        assert_eq!(listen[2].endpoint, Endpoint::Path("/run/pk.sock".into()));
        assert_eq!(listen[3].endpoint, Endpoint::Abstract("pk".into()));
        assert_eq!(listen[4].role, Role::Admin);
        assert!(listen[..4].iter().all(|spec| spec.role == Role::App));
        assert_eq!(s.admin[0].role, Role::Admin);
        assert_eq!(s.unix_mode, 0o600);
    }

    #[test]
    fn bad_listen_values_are_refused_naming_listen() {
        let long = format!("/{}", "x".repeat(120));
        for value in [
            "",
            "localhost:80",
            "127.0.0.1",
            "a,,b",
            "web=127.0.0.1:1",
            long.as_str(),
            "relative/path",
        ] {
            let err = error(&[("LISTEN", value)]);
            assert!(err.starts_with("LISTEN: "), "{value}: {err}");
        }
        assert!(error(&[("LISTEN", &long)]).contains("more than the 107"));
        assert!(error(&[("LISTEN", "web=127.0.0.1:1")]).contains("not a role"));
        for other in ["HOST", "API_PORT", "AUTO_FIND_PORT"] {
            let err = error(&[("LISTEN", "127.0.0.1:1"), (other, "1")]);
            assert!(err.starts_with("LISTEN: ") && err.contains(other), "{err}");
        }
    }

    #[test]
    fn an_address_twice_or_overlapping_is_refused_naming_the_later_variable() {
        for (listen, admin, needle) in [
            ("127.0.0.1:8080,127.0.0.1:8080", None, "LISTEN: "),
            ("/run/a.sock,/run//a.sock", None, "LISTEN: "),
            ("@pk,admin=@pk", None, "LISTEN: "),
            ("127.0.0.1:8080", Some("127.0.0.1:8080"), "ADMIN_LISTEN: "),
            ("/run/a.sock", Some("/run/a.sock"), "ADMIN_LISTEN: "),
            ("127.0.0.1:8080,0.0.0.0:8080", None, "LISTEN: "),
            ("[::1]:8080,[::]:8080", None, "LISTEN: "),
            ("[::]:8080,127.0.0.1:8080", None, "LISTEN: "),
            ("0.0.0.0:8080", Some("10.0.0.1:8080"), "ADMIN_LISTEN: "),
        ] {
            let mut vars = vec![("LISTEN", listen)];
            vars.extend(admin.map(|admin| ("ADMIN_LISTEN", admin)));
            let err = error(&vars);
            assert!(err.starts_with(needle), "{vars:?}: {err}");
            assert!(
                err.contains("listed twice") || err.contains("overlap"),
                "{vars:?}: {err}"
            );
        }
        // Apart: kernel-chosen ports, other ports, other addresses, and the
        // two wildcards of one port (the `[::]` one is then IPv6-only).
        for listen in [
            "127.0.0.1:0,127.0.0.1:0,0.0.0.0:0",
            "127.0.0.1:8080,127.0.0.1:8081",
            "127.0.0.1:8080,127.0.0.2:8080,[::1]:8080",
            "0.0.0.0:8080,[::]:8080",
            "[::]:8080,0.0.0.0:8080",
            "/run/a.sock,/run/b.sock,@a.sock",
        ] {
            assert!(settings(&[("LISTEN", listen)]).is_ok(), "{listen}");
        }
    }

    #[test]
    fn admin_listen_takes_no_role_prefix_and_listen_needs_an_app_address() {
        for value in ["app=127.0.0.1:1", "admin=127.0.0.1:1", "web=/run/a.sock"] {
            let err = error(&[("ADMIN_LISTEN", value)]);
            assert!(
                err.starts_with("ADMIN_LISTEN: ") && err.contains("role prefix"),
                "{err}"
            );
        }
        let err = error(&[("LISTEN", "admin=127.0.0.1:1,admin=/run/a.sock")]);
        assert!(err.contains("LISTEN has no app listener"), "{err}");
        // A path or an abstract name may hold '=' without being a role.
        let s = settings(&[("LISTEN", "/run/a=b.sock"), ("ADMIN_LISTEN", "@x=y")]).unwrap();
        assert_eq!(
            s.listen.unwrap()[0].endpoint,
            Endpoint::Path("/run/a=b.sock".into())
        );
        assert_eq!(s.admin[0].endpoint, Endpoint::Abstract("x=y".into()));
    }

    #[test]
    fn entries_take_tls_proxy_and_redirect_marks() {
        let s = settings(&[
            (
                "LISTEN",
                "tls=0.0.0.0:8443, redirect=0.0.0.0:8080, tls+proxy=/run/pk.sock, admin+tls=127.0.0.1:9443, app+proxy=@pk",
            ),
            ("ADMIN_LISTEN", "tls=127.0.0.1:9444,proxy=/run/a.sock"),
        ])
        .unwrap();
        let marks = |tls, proxy, redirect| Marks {
            tls,
            proxy,
            redirect,
        };
        let listen = s.listen.unwrap();
        let got: Vec<(Role, Marks)> = listen.iter().map(|spec| (spec.role, spec.marks)).collect();
        assert_eq!(
            got,
            vec![
                (Role::App, marks(true, false, false)),
                (Role::App, marks(false, false, true)),
                (Role::App, marks(true, true, false)),
                (Role::Admin, marks(true, false, false)),
                (Role::App, marks(false, true, false)),
            ]
        );
        assert_eq!(listen[2].endpoint, Endpoint::Path("/run/pk.sock".into()));
        assert_eq!(s.admin[0].marks, marks(true, false, false));
        assert_eq!(s.admin[1].marks, marks(false, true, false));
        // An entry without marks stays plain, and TLS=true is not read here.
        let plain = settings(&[("LISTEN", "127.0.0.1:1")]).unwrap();
        assert_eq!(plain.listen.unwrap()[0].marks, Marks::default());
    }

    #[test]
    fn bad_marks_are_refused_naming_the_variable_and_the_entry() {
        for (name, value, needle) in [
            ("LISTEN", "tsl=127.0.0.1:1", "\"tsl\" is not a role prefix"),
            ("LISTEN", "app+admin=127.0.0.1:1", "names two roles"),
            (
                "LISTEN",
                "tls+redirect=127.0.0.1:1",
                "redirect is for a plain app listener",
            ),
            (
                "LISTEN",
                "admin+redirect=127.0.0.1:1",
                "redirect is for a plain app listener",
            ),
            ("ADMIN_LISTEN", "admin+tls=127.0.0.1:1", "role prefix"),
            (
                "ADMIN_LISTEN",
                "redirect=127.0.0.1:1",
                "redirect is for a plain app listener",
            ),
        ] {
            let err = error(&[(name, value)]);
            assert!(
                err.starts_with(&format!("{name}: ")) && err.contains(needle),
                "{value}: {err}"
            );
        }
    }

    #[test]
    fn mapped_addresses_and_scope_ids_are_explicit() {
        let err = error(&[("LISTEN", "[::ffff:127.0.0.1]:8080")]);
        assert!(
            err.contains("IPv4-mapped") && err.contains("write 127.0.0.1:8080"),
            "{err}"
        );
        let err = error(&[("HOST", "::ffff:10.0.0.1")]);
        assert!(
            err.starts_with("HOST: ") && err.contains("write 10.0.0.1"),
            "{err}"
        );
        let err = error(&[("LISTEN", "[::1%1]:8080")]);
        assert!(
            err.contains("scope id (%1)") && err.contains("write [::1]:8080"),
            "{err}"
        );
        let err = error(&[("LISTEN", "[fe80::1]:8080")]);
        assert!(err.contains("needs its interface"), "{err}");
        let err = error(&[("LISTEN", "[fe80::1%eth0]:8080")]);
        assert!(err.contains("interface's number"), "{err}");
        // A link-local address keeps its interface, to be bound with it.
        let s = settings(&[("LISTEN", "[fe80::1%2]:8080")]).unwrap();
        match s.listen.unwrap()[0].endpoint {
            Endpoint::Tcp(std::net::SocketAddr::V6(v6)) => assert_eq!(v6.scope_id(), 2),
            ref other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_cross_check_names_prefixed_variables() {
        let env = Environment::with_prefix(
            "APP_",
            [
                ("APP_LISTEN".to_owned(), "127.0.0.1:1".to_owned()),
                ("APP_HOST".to_owned(), "::1".to_owned()),
            ],
            [],
        );
        let err = ListenSettings::from_env(&env).unwrap_err().to_string();
        assert!(
            err.starts_with("APP_LISTEN: ") && err.contains("APP_HOST is set too"),
            "{err}"
        );
    }

    #[test]
    fn port_is_used_when_api_port_is_unset_and_api_port_wins() {
        assert_eq!(settings(&[("PORT", "8080")]).unwrap().port, 8080);
        let both = settings(&[("PORT", "8080"), ("API_PORT", "7000")]).unwrap();
        assert_eq!(both.port, 7000);
        assert!(error(&[("PORT", "x")]).starts_with("PORT: "));
        // Platforms set PORT everywhere: with LISTEN it is ignored, not refused.
        assert!(settings(&[("PORT", "8080"), ("LISTEN", "127.0.0.1:1")]).is_ok());
    }
}
