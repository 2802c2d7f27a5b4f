//! The listener's settings: where to bind when nothing is inherited, and
//! which inherited sockets serve the app.

use std::net::{IpAddr, Ipv4Addr};
use std::ops::RangeInclusive;

use super::{Endpoint, ListenSpec, Role};
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
                Some(listen_setting.parse_or("", |v| parse_listen(v, Role::App))?)
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
        let admin = env
            .setting(&ADMIN_LISTEN)?
            .parse_opt(|v| parse_listen(v, Role::Admin))?
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
        let listen_fd_name = env.setting(&LISTEN_FD_NAME)?.parse(parse_fd_name)?;
        Ok(ListenSettings {
            ip,
            port,
            search: auto_find_port.then_some(range_start..=range_end),
            listen,
            admin,
            unix_mode,
            listen_fd_name,
        })
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
    literal.parse().map_err(|_| EXPECTED.to_owned())
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
/// abstract one), optionally preceded by `app=` or `admin=` to choose the
/// role (default: `role`).
fn parse_listen(value: &str, role: Role) -> Result<Vec<ListenSpec>, String> {
    const EXPECTED: &str = "comma-separated addresses: IP:PORT, [IPV6]:PORT, /absolute/path or @abstract, each optionally prefixed by app= or admin=";
    let mut specs = Vec::new();
    for entry in value.split(',').map(str::trim) {
        if entry.is_empty() {
            return Err(format!("{EXPECTED}; an entry is empty"));
        }
        let (role, address) = match entry.split_once('=') {
            Some(("app", address)) => (Role::App, address.trim()),
            Some(("admin", address)) => (Role::Admin, address.trim()),
            Some((other, _)) => {
                return Err(format!(
                    "{EXPECTED}; {other:?} is not a role (the roles are app and admin)"
                ));
            }
            None => (role, entry),
        };
        let endpoint = if let Some(name) = address.strip_prefix('@') {
            if name.is_empty() || name.len() > MAX_UNIX_PATH - 1 {
                return Err(format!(
                    "{EXPECTED}; an abstract name has 1 to {} bytes",
                    MAX_UNIX_PATH - 1
                ));
            }
            Endpoint::Abstract(name.to_owned())
        } else if address.starts_with('/') {
            if address.len() > MAX_UNIX_PATH {
                return Err(format!(
                    "{EXPECTED}; the Unix socket path {address:?} has {} bytes, more than the {MAX_UNIX_PATH} a socket address holds (choose a shorter path)",
                    address.len()
                ));
            }
            if address.ends_with('/') {
                return Err(format!("{EXPECTED}; {address:?} names a directory"));
            }
            Endpoint::Path(address.into())
        } else {
            match address.parse::<std::net::SocketAddr>() {
                Ok(addr) => Endpoint::Tcp(addr),
                Err(_) => return Err(format!("{EXPECTED}; {address:?} is none of these")),
            }
        };
        specs.push(ListenSpec { role, endpoint });
    }
    Ok(specs)
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
