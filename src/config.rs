//! Configuration: the environment (and `.env`) turned into a validated [`Config`].
//!
//! Parsing happens in two layers. [`RawConfig`] mirrors the environment: every
//! variable is an optional string, looked up by its exact name. [`Config::try_from`]
//! then turns those strings into domain types and refuses bad values with a
//! [`ConfigError`] that names the variable, the value and what was expected.
//!
//! This module never reads the process environment itself: `main.rs` collects
//! the variables (see [`Environment`]) and hands them in, which keeps the code
//! testable without `set_var`.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `HOST` | `0.0.0.0` | address to bind: an IPv4 or IPv6 literal, or `localhost` (= 127.0.0.1) |
//! | `API_PORT` | `5050` | port to bind first; `0` asks the kernel for any free port |
//! | `AUTO_FIND_PORT` | `false` | when `API_PORT` is busy, search `PORT_RANGE_START..=PORT_RANGE_END` |
//! | `PORT_RANGE_START` | `5050` | first port of the search range |
//! | `PORT_RANGE_END` | `5100` | last port of the search range (included) |
//! | `LOG_LEVEL` | `INFO` | trace, debug, info, warn or error, any case; `RUST_LOG` wins when set |
//! | `DEBUG` | `false` | development diagnostics: debug logging and error detail |
//! | `RELOAD` | `false` | hot reload: hand the socket to a replaced executable |
//! | `AUTH_REQUIRED` | `false` | require a bearer token on every route but health checks |
//! | `API_TOKEN` | unset | the accepted bearer token(s), separated by commas for rotation |
//! | `API_TOKEN_FILE` | unset | a file of accepted tokens, one per line (instead of `API_TOKEN`) |
//! | `CREDENTIALS_DIRECTORY` | set by systemd | where the `api-token` credential is read when neither of the above is set |
//! | `HEADER_READ_TIMEOUT` | `10` | seconds a client gets to send a request's headers, and an idle connection to start the next request |
//! | `REQUEST_TIMEOUT` | `30` | seconds a request may take from its headers to its response (503 after) |
//! | `MAX_BODY_BYTES` | `1048576` | the largest request body accepted (413 above) |
//! | `SHUTDOWN_TIMEOUT` | `30` | seconds in-flight requests get to finish after SIGTERM/SIGINT |
//! | `LISTEN_FD_NAME` | `http` | which inherited socket to serve when several are passed (LISTEN_FDNAMES) |
//! | `RUST_LOG` | unset | `target=level` directives, comma-separated; overrides `LOG_LEVEL` |
//!
//! Booleans accept `true/false/1/0/yes/no/on/off` in any case. `config.example.env`
//! documents the same variables; a test keeps the two in step.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr};
use std::ops::RangeInclusive;
use std::path::Path;
use std::time::Duration;

use crate::auth::{self, Auth};

/// Declares [`RawConfig`] and [`VARIABLES`] together, so each variable's name is
/// written exactly once: the lookup, and its spelling in messages, come from
/// the same token.
macro_rules! raw_config {
    ($($(#[doc = $doc:literal])* $field:ident => $var:ident,)*) => {
        /// The environment as it was given: every variable optional, every value a string.
        #[derive(Default, Clone)]
        pub struct RawConfig {
            $($(#[doc = $doc])* pub $field: Option<String>,)*
        }

        /// Shows every variable; the values of secrets (`API_TOKEN`) are redacted.
        impl std::fmt::Debug for RawConfig {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let mut shown = f.debug_struct("RawConfig");
                $(
                    let value = self.$field.as_deref();
                    if SECRETS.contains(&stringify!($var)) {
                        shown.field(stringify!($field), &value.map(|_| "<redacted>"));
                    } else {
                        shown.field(stringify!($field), &value);
                    }
                )*
                shown.finish()
            }
        }

        /// Every variable portkeeper reads, spelled as in the environment.
        pub const VARIABLES: &[&str] = &[$(stringify!($var)),*];

        impl RawConfig {
            /// Each variable's value in `env`, by its exact (upper-case) name.
            pub fn from_environment(env: &Environment) -> Self {
                RawConfig { $($field: env.get(stringify!($var)).map(str::to_owned),)* }
            }

            /// Pairs each variable's name with its raw value, for validation messages.
            fn settings(&self) -> Settings<'_> {
                Settings { $($field: Setting { name: stringify!($var), value: self.$field.as_deref() },)* }
            }
        }

        struct Settings<'a> {
            $($field: Setting<'a>,)*
        }
    };
}

raw_config! {
    /// `HOST`: the address to bind.
    host => HOST,
    /// `API_PORT`: the port to bind first.
    api_port => API_PORT,
    /// `AUTO_FIND_PORT`: search the range when `API_PORT` is busy.
    auto_find_port => AUTO_FIND_PORT,
    /// `PORT_RANGE_START`: first port of the search range.
    port_range_start => PORT_RANGE_START,
    /// `PORT_RANGE_END`: last port of the search range.
    port_range_end => PORT_RANGE_END,
    /// `LOG_LEVEL`: the default log level.
    log_level => LOG_LEVEL,
    /// `DEBUG`: development diagnostics.
    debug => DEBUG,
    /// `RELOAD`: hand the socket over when the executable is replaced.
    reload => RELOAD,
    /// `AUTH_REQUIRED`: require a bearer token.
    auth_required => AUTH_REQUIRED,
    /// `SHUTDOWN_TIMEOUT`: seconds to let in-flight requests finish.
    shutdown_timeout => SHUTDOWN_TIMEOUT,
    /// `LISTEN_FD_NAME`: which inherited socket to serve.
    listen_fd_name => LISTEN_FD_NAME,
    /// `RUST_LOG`: a `tracing` filter that overrides `LOG_LEVEL`.
    rust_log => RUST_LOG,
    /// `API_TOKEN`: accepted bearer tokens, comma-separated. A secret.
    api_token => API_TOKEN,
    /// `API_TOKEN_FILE`: a file of accepted bearer tokens, one per line.
    api_token_file => API_TOKEN_FILE,
    /// `CREDENTIALS_DIRECTORY`: systemd's directory of credentials (`api-token`).
    credentials_directory => CREDENTIALS_DIRECTORY,
    /// `HEADER_READ_TIMEOUT`: seconds to receive a request's headers.
    header_read_timeout => HEADER_READ_TIMEOUT,
    /// `REQUEST_TIMEOUT`: seconds from a request's headers to its response.
    request_timeout => REQUEST_TIMEOUT,
    /// `MAX_BODY_BYTES`: the largest request body accepted.
    max_body_bytes => MAX_BODY_BYTES,
}

/// Variables whose values are secrets: never shown in `Debug` or in errors.
const SECRETS: &[&str] = &["API_TOKEN"];

/// The process environment as `main.rs` collected it: `.env` first, real variables on top.
///
/// Only variables with UTF-8 names and values are kept; a non-UTF-8 value for
/// one of [`VARIABLES`] is remembered so it can be refused by name instead of
/// being silently ignored.
#[derive(Debug, Default, Clone)]
pub struct Environment {
    vars: BTreeMap<String, String>,
    not_utf8: Vec<String>,
}

impl Environment {
    /// Builds the environment from `.env` pairs (lower precedence) and real variables.
    pub fn new(
        dotenv: impl IntoIterator<Item = (String, String)>,
        real: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Self {
        let mut env = Environment {
            vars: dotenv.into_iter().collect(),
            not_utf8: Vec::new(),
        };
        for (name, value) in real {
            match (name.into_string(), value.into_string()) {
                (Ok(name), Ok(value)) => {
                    env.vars.insert(name, value);
                }
                (Ok(name), Err(_)) if VARIABLES.contains(&name.as_str()) => env.not_utf8.push(name),
                // Foreign variables that are not UTF-8 are none of our business.
                _ => {}
            }
        }
        env
    }

    /// Reads `.env` from `path` if it exists. A missing file is not an error;
    /// an unreadable or malformed one is, since silently ignoring it would
    /// start the server with settings the user did not choose.
    pub fn read_dotenv(path: &Path) -> Result<Vec<(String, String)>, ConfigError> {
        let iter = match dotenvy::from_path_iter(path) {
            Ok(iter) => iter,
            Err(dotenvy::Error::Io(err)) if err.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Vec::new());
            }
            Err(err) => return Err(ConfigError::dotenv(path, err)),
        };
        iter.collect::<Result<Vec<_>, _>>()
            .map_err(|err| ConfigError::dotenv(path, err))
    }

    /// The value of one variable, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }
}

/// Where the server should get its socket from when nothing is inherited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindPlan {
    /// The address to bind.
    pub ip: IpAddr,
    /// The port tried first (`0` = the kernel's choice).
    pub port: u16,
    /// With `AUTO_FIND_PORT=true`, the ports to try after `port`, in order.
    pub search: Option<RangeInclusive<u16>>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// How to bind when no socket is inherited.
    pub bind: BindPlan,
    /// The log filter: `RUST_LOG` if set, else `LOG_LEVEL` lowercased.
    pub log_filter: String,
    /// Development diagnostics.
    pub debug: bool,
    /// Hot reload of a replaced executable.
    pub reload: bool,
    /// Whether requests need a bearer token, and which tokens are accepted.
    pub auth: Auth,
    /// Bounds on what one client may cost: time for headers and requests, body size.
    pub limits: Limits,
    /// How long in-flight requests may take to finish after a stop signal.
    pub shutdown_timeout: Duration,
    /// Which inherited socket to serve, by its LISTEN_FDNAMES entry.
    pub listen_fd_name: String,
}

/// Bounds that keep one client from holding the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Time to receive a request's headers, counted from when the connection
    /// starts waiting for them: it also closes idle keep-alive connections.
    pub header_read_timeout: Duration,
    /// Time from a request's headers to its response.
    pub request_timeout: Duration,
    /// The largest request body accepted.
    pub max_body_bytes: usize,
}

/// Default values, in one place; `config.example.env` repeats them for people.
mod defaults {
    pub(super) const HOST: &str = "0.0.0.0";
    pub(super) const API_PORT: u16 = 5050;
    pub(super) const PORT_RANGE_START: u16 = 5050;
    pub(super) const PORT_RANGE_END: u16 = 5100;
    pub(super) const LOG_LEVEL: &str = "info";
    pub(super) const SHUTDOWN_TIMEOUT_SECS: u64 = 30;
    pub(super) const LISTEN_FD_NAME: &str = "http";
    pub(super) const HEADER_READ_TIMEOUT_SECS: u64 = 10;
    pub(super) const REQUEST_TIMEOUT_SECS: u64 = 30;
    pub(super) const MAX_BODY_BYTES: usize = 1024 * 1024;
}

/// The longest header or request timeout: an hour is already generous for
/// an API, and anything longer is more likely a unit mix-up (milliseconds).
const MAX_TIMEOUT_SECS: u64 = 3_600;

/// The largest body limit: 1 GiB, beyond which "no limit" is what was meant.
const MAX_BODY_LIMIT: usize = 1024 * 1024 * 1024;

/// The longest shutdown grace we accept: a day is already far beyond any
/// sensible value, and the bound keeps `Duration` arithmetic far from overflow.
const MAX_SHUTDOWN_TIMEOUT_SECS: u64 = 86_400;

impl Config {
    /// Reads and validates the configuration from a collected environment.
    pub fn from_env(env: &Environment) -> Result<Self, ConfigError> {
        if let Some(name) = env.not_utf8.first() {
            return Err(ConfigError::NotUtf8 { name: name.clone() });
        }
        Config::try_from(RawConfig::from_environment(env))
    }
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Self, ConfigError> {
        let s = raw.settings();
        let ip = s.host.parse_or(defaults::HOST, parse_host)?;
        let port = s.api_port.parse_or(&defaults::API_PORT.to_string(), |v| {
            parse_port(v, 0, "a port number from 0 to 65535 (0 = any free port)")
        })?;
        let auto_find_port = s.auto_find_port.parse_or("false", parse_bool)?;
        let range_start = s
            .port_range_start
            .parse_or(&defaults::PORT_RANGE_START.to_string(), |v| {
                parse_port(v, 1, "a port number from 1 to 65535")
            })?;
        let range_end = s
            .port_range_end
            .parse_or(&defaults::PORT_RANGE_END.to_string(), |v| {
                parse_port(v, 1, "a port number from 1 to 65535")
            })?;
        if range_start > range_end {
            return Err(ConfigError::Invalid {
                name: s.port_range_start.name,
                value: range_start.to_string(),
                expected: format!("a port not above PORT_RANGE_END ({range_end})"),
            });
        }
        let debug = s.debug.parse_or("false", parse_bool)?;
        // DEBUG=true means more logging unless LOG_LEVEL says otherwise.
        let default_level = if debug { "debug" } else { defaults::LOG_LEVEL };
        let log_level = s.log_level.parse_or(default_level, parse_log_level)?;
        let rust_log = match s.rust_log.value {
            Some(value) if !value.trim().is_empty() => Some(s.rust_log.parse_or("", parse_filter)?),
            _ => None,
        };
        let listen_fd_name = s
            .listen_fd_name
            .parse_or(defaults::LISTEN_FD_NAME, parse_fd_name)?;
        let shutdown_secs = s.shutdown_timeout.parse_or(
            &defaults::SHUTDOWN_TIMEOUT_SECS.to_string(),
            parse_shutdown_secs,
        )?;
        let limits = Limits {
            header_read_timeout: s.header_read_timeout.parse_or(
                &defaults::HEADER_READ_TIMEOUT_SECS.to_string(),
                parse_timeout,
            )?,
            request_timeout: s
                .request_timeout
                .parse_or(&defaults::REQUEST_TIMEOUT_SECS.to_string(), parse_timeout)?,
            max_body_bytes: s
                .max_body_bytes
                .parse_or(&defaults::MAX_BODY_BYTES.to_string(), parse_body_limit)?,
        };
        // Last: it may read a token file, which is pointless if anything else is wrong.
        let auth = auth::load(auth::TokenSettings {
            required: s.auth_required.parse_or("false", parse_bool)?,
            api_token: s.api_token.value,
            api_token_file: s.api_token_file.value,
            credentials_directory: s.credentials_directory.value,
        })?;

        Ok(Config {
            bind: BindPlan {
                ip,
                port,
                search: auto_find_port.then_some(range_start..=range_end),
            },
            log_filter: rust_log.unwrap_or(log_level),
            debug,
            reload: s.reload.parse_or("false", parse_bool)?,
            auth,
            limits,
            shutdown_timeout: Duration::from_secs(shutdown_secs),
            listen_fd_name,
        })
    }
}

/// One variable's name and raw value, so every parse error can name both.
struct Setting<'a> {
    name: &'static str,
    value: Option<&'a str>,
}

impl Setting<'_> {
    /// Parses the value, or `default` when unset. An empty value is refused:
    /// `API_PORT=` is far more likely a mistake than a wish for the default.
    fn parse_or<T>(
        &self,
        default: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        let value = self.value.unwrap_or(default);
        parse(value.trim()).map_err(|expected| ConfigError::Invalid {
            name: self.name,
            value: value.to_owned(),
            expected,
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

fn parse_port(value: &str, min: u16, expected: &str) -> Result<u16, String> {
    match value.parse::<u16>() {
        Ok(port) if port >= min => Ok(port),
        _ => Err(expected.to_owned()),
    }
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("true or false (also 1/0, yes/no, on/off)".to_owned()),
    }
}

fn parse_log_level(value: &str) -> Result<String, String> {
    let level = value.to_ascii_lowercase();
    match level.as_str() {
        "trace" | "debug" | "info" | "warn" | "error" => Ok(level),
        // Python's logging names, which the seed's users will have in their .env.
        "warning" => Ok("warn".to_owned()),
        "critical" => Ok("error".to_owned()),
        _ => Err("one of trace, debug, info, warn, error".to_owned()),
    }
}

/// `RUST_LOG` in the syntax of `tracing-subscriber`'s `Targets`: a level,
/// `target=level` directives, or both, comma-separated.
///
/// Not `EnvFilter`: its span filters have nothing to match in a server that
/// records no spans, and its regex engine was a sixth of the executable's
/// code (353 KiB of 2.0 MiB), which every start-up paid for in relocations
/// and page faults. A span filter is refused rather than silently taken for
/// a target name.
fn parse_filter(value: &str) -> Result<String, String> {
    const EXPECTED: &str = "target=level directives such as info or portkeeper=debug,tower=warn";
    let names_a_span = value.split(',').any(|directive| {
        let target = directive.split('=').next().unwrap_or_default();
        target.replace("[{", "").contains('[')
    });
    if names_a_span {
        return Err(format!(
            "{EXPECTED}; span filters in [brackets] are not supported, portkeeper records no spans"
        ));
    }
    value
        .parse::<tracing_subscriber::filter::Targets>()
        .map(|_| value.to_owned())
        .map_err(|_| EXPECTED.to_owned())
}

fn parse_shutdown_secs(value: &str) -> Result<u64, String> {
    match value.parse::<u64>() {
        Ok(secs) if secs <= MAX_SHUTDOWN_TIMEOUT_SECS => Ok(secs),
        _ => Err(format!(
            "a whole number of seconds from 0 to {MAX_SHUTDOWN_TIMEOUT_SECS}"
        )),
    }
}

fn parse_timeout(value: &str) -> Result<Duration, String> {
    match value.parse::<u64>() {
        Ok(secs) if (1..=MAX_TIMEOUT_SECS).contains(&secs) => Ok(Duration::from_secs(secs)),
        _ => Err(format!(
            "a whole number of seconds from 1 to {MAX_TIMEOUT_SECS}"
        )),
    }
}

fn parse_body_limit(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(bytes) if bytes <= MAX_BODY_LIMIT => Ok(bytes),
        _ => Err(format!(
            "a number of bytes from 0 to {MAX_BODY_LIMIT} (e.g. 1048576 for 1 MiB)"
        )),
    }
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

/// A configuration that cannot be used. Exit status 78 (EX_CONFIG).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A variable has a value outside what it accepts.
    #[error("{name}: {value:?} is not valid (expected {expected})")]
    Invalid {
        /// The variable, as spelled in the environment.
        name: &'static str,
        /// The value as given.
        value: String,
        /// What the variable accepts.
        expected: String,
    },
    /// One of our variables holds bytes that are not UTF-8.
    #[error("{name}: the value is not valid UTF-8 (expected plain text)")]
    NotUtf8 {
        /// The variable, as spelled in the environment.
        name: String,
    },
    /// `.env` exists but could not be read or parsed.
    #[error("{path}: cannot be read as a .env file: {reason} (expected lines of NAME=value)")]
    Dotenv {
        /// Where the file is.
        path: String,
        /// What went wrong, with the line where dotenvy reports it.
        reason: String,
    },
    /// A token setting is wrong; the message never contains a token.
    #[error(transparent)]
    Token(#[from] auth::TokenError),
}

impl ConfigError {
    fn dotenv(path: &Path, err: dotenvy::Error) -> Self {
        let reason = match &err {
            // dotenvy quotes the whole line, which may hold a token.
            dotenvy::Error::LineParse(line, index)
                if SECRETS.iter().any(|name| line.contains(name)) =>
            {
                format!(
                    "a line setting a secret cannot be parsed at index {index} (the line is not shown)"
                )
            }
            _ => err.to_string(),
        };
        ConfigError::Dotenv {
            path: path.display().to_string(),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = Environment::new(
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())),
            [],
        );
        Config::from_env(&env)
    }

    fn error(pairs: &[(&str, &str)]) -> String {
        config(pairs)
            .expect_err("config should be refused")
            .to_string()
    }

    #[test]
    fn defaults_match_the_design() {
        let cfg = config(&[]).unwrap();
        assert_eq!(cfg.bind.ip, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!(cfg.bind.port, 5050);
        assert_eq!(cfg.bind.search, None);
        assert_eq!(cfg.log_filter, "info");
        assert!(!cfg.debug && !cfg.reload && !cfg.auth.is_required());
        assert_eq!(
            cfg.limits,
            Limits {
                header_read_timeout: Duration::from_secs(10),
                request_timeout: Duration::from_secs(30),
                max_body_bytes: 1_048_576,
            }
        );
        assert_eq!(cfg.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(cfg.listen_fd_name, "http");
    }

    #[test]
    fn auto_find_port_enables_the_range() {
        let cfg = config(&[
            ("AUTO_FIND_PORT", "YES"),
            ("PORT_RANGE_START", "6000"),
            ("PORT_RANGE_END", "6000"),
        ])
        .unwrap();
        assert_eq!(cfg.bind.search, Some(6000..=6000));
    }

    #[test]
    fn booleans_accept_common_spellings() {
        for (value, expected) in [("TRUE", true), ("1", true), ("on", true), ("No", false)] {
            assert_eq!(
                config(&[("DEBUG", value)]).unwrap().debug,
                expected,
                "{value}"
            );
        }
        assert_eq!(
            error(&[("DEBUG", "maybe")]),
            "DEBUG: \"maybe\" is not valid (expected true or false (also 1/0, yes/no, on/off))"
        );
    }

    #[test]
    fn host_accepts_literals_and_localhost_only() {
        assert_eq!(
            config(&[("HOST", "localhost")]).unwrap().bind.ip,
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        );
        assert_eq!(
            config(&[("HOST", "[::1]")]).unwrap().bind.ip,
            "::1".parse::<IpAddr>().unwrap()
        );
        assert!(error(&[("HOST", "example.com")]).starts_with("HOST: \"example.com\""));
    }

    #[test]
    fn ports_are_bounded() {
        assert_eq!(config(&[("API_PORT", "0")]).unwrap().bind.port, 0);
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
    fn log_level_in_any_case_and_rust_log_wins() {
        assert_eq!(
            config(&[("LOG_LEVEL", "DEBUG")]).unwrap().log_filter,
            "debug"
        );
        assert_eq!(
            config(&[("LOG_LEVEL", "Warning")]).unwrap().log_filter,
            "warn"
        );
        let cfg = config(&[("LOG_LEVEL", "error"), ("RUST_LOG", "portkeeper=trace")]).unwrap();
        assert_eq!(cfg.log_filter, "portkeeper=trace");
        assert!(error(&[("LOG_LEVEL", "loud")]).starts_with("LOG_LEVEL: \"loud\""));
        assert!(error(&[("RUST_LOG", "portkeeper=loud")]).starts_with("RUST_LOG"));
        let with_fields = config(&[("RUST_LOG", "warn,portkeeper[{port}]=debug,hyper=info")]);
        assert_eq!(
            with_fields.unwrap().log_filter,
            "warn,portkeeper[{port}]=debug,hyper=info"
        );
        let span_filter = error(&[("RUST_LOG", "info,[request{path=/a}]=debug")]);
        assert!(span_filter.starts_with("RUST_LOG"), "{span_filter}");
        assert!(span_filter.contains("span filters"), "{span_filter}");
        assert!(error(&[("RUST_LOG", "portkeeper[accept]=debug")]).contains("span filters"));
        assert_eq!(config(&[("DEBUG", "true")]).unwrap().log_filter, "debug");
        let quiet = config(&[("DEBUG", "true"), ("LOG_LEVEL", "warn")]).unwrap();
        assert_eq!(quiet.log_filter, "warn");
    }

    #[test]
    fn shutdown_timeout_and_fd_name_are_checked() {
        assert_eq!(
            config(&[("SHUTDOWN_TIMEOUT", "0")])
                .unwrap()
                .shutdown_timeout,
            Duration::ZERO
        );
        assert!(error(&[("SHUTDOWN_TIMEOUT", "1.5")]).starts_with("SHUTDOWN_TIMEOUT"));
        assert!(error(&[("SHUTDOWN_TIMEOUT", "999999")]).starts_with("SHUTDOWN_TIMEOUT"));
        assert!(error(&[("LISTEN_FD_NAME", "a:b")]).starts_with("LISTEN_FD_NAME"));
    }

    #[test]
    fn limits_are_bounded() {
        let cfg = config(&[
            ("HEADER_READ_TIMEOUT", "1"),
            ("REQUEST_TIMEOUT", "3600"),
            ("MAX_BODY_BYTES", "0"),
        ])
        .unwrap();
        assert_eq!(cfg.limits.header_read_timeout, Duration::from_secs(1));
        assert_eq!(cfg.limits.request_timeout, Duration::from_secs(3600));
        assert_eq!(cfg.limits.max_body_bytes, 0);
        for (name, value) in [
            ("HEADER_READ_TIMEOUT", "0"),
            ("HEADER_READ_TIMEOUT", "3601"),
            ("REQUEST_TIMEOUT", "2.5"),
            ("REQUEST_TIMEOUT", ""),
            ("MAX_BODY_BYTES", "1MB"),
            ("MAX_BODY_BYTES", "1073741825"),
        ] {
            let message = error(&[(name, value)]);
            assert!(
                message.starts_with(&format!("{name}: {value:?} is not valid")),
                "{message}"
            );
        }
    }

    #[test]
    fn a_token_is_never_shown_in_debug_or_errors() {
        const TOKEN: &str = "tok-0123456789abcdef";
        let cfg = config(&[("AUTH_REQUIRED", "true"), ("API_TOKEN", TOKEN)]).unwrap();
        assert!(cfg.auth.is_required());
        let shown = format!("{cfg:?}");
        assert!(
            !shown.contains(TOKEN) && shown.contains("redacted"),
            "{shown}"
        );
        let raw = RawConfig {
            api_token: Some(TOKEN.to_owned()),
            ..RawConfig::default()
        };
        let shown = format!("{raw:?}");
        assert!(
            !shown.contains(TOKEN) && shown.contains("redacted"),
            "{shown}"
        );
        let refused = error(&[("AUTH_REQUIRED", "false"), ("API_TOKEN", TOKEN)]);
        assert!(
            refused.starts_with("API_TOKEN:") && !refused.contains(TOKEN),
            "{refused}"
        );
        let dotenv = format!("API_TOKEN=\"{TOKEN}\nHOST=::1\n");
        let err = dotenvy::from_read_iter(dotenv.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map(|_| ())
            .map_err(|err| ConfigError::dotenv(Path::new(".env"), err).to_string());
        let message = err.expect_err("an unterminated quote is refused");
        assert!(
            message.starts_with(".env:") && !message.contains(TOKEN),
            "{message}"
        );
    }

    #[test]
    fn auth_required_needs_a_token() {
        assert_eq!(
            error(&[("AUTH_REQUIRED", "true")]),
            "AUTH_REQUIRED: \"true\" but no token is configured (set API_TOKEN, API_TOKEN_FILE, or the systemd credential api-token)"
        );
    }

    #[test]
    fn real_variables_win_over_dotenv() {
        let env = Environment::new(
            [
                ("API_PORT".to_owned(), "7000".to_owned()),
                ("DEBUG".to_owned(), "true".to_owned()),
            ],
            [(OsString::from("API_PORT"), OsString::from("7001"))],
        );
        let cfg = Config::from_env(&env).unwrap();
        assert_eq!(cfg.bind.port, 7001);
        assert!(cfg.debug);
    }

    #[cfg(unix)]
    #[test]
    fn non_utf8_values_are_refused_only_for_our_variables() {
        use std::os::unix::ffi::OsStringExt;
        let bad = || OsString::from_vec(vec![0xff, 0xfe]);
        let foreign = Environment::new([], [(OsString::from("SOMETHING_ELSE"), bad())]);
        assert!(Config::from_env(&foreign).is_ok());
        let ours = Environment::new([], [(OsString::from("HOST"), bad())]);
        assert_eq!(
            Config::from_env(&ours).unwrap_err().to_string(),
            "HOST: the value is not valid UTF-8 (expected plain text)"
        );
    }

    /// `config.example.env` documents every variable, with its real default.
    #[test]
    fn example_env_is_in_step_with_the_code() {
        let example = include_str!("../config.example.env");
        let documented: Vec<(String, String)> = example
            .lines()
            .map(|line| line.trim_start_matches("# "))
            .filter_map(|line| line.split_once('='))
            .filter(|(name, _)| name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'))
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect();
        for name in VARIABLES {
            assert!(
                documented.iter().any(|(n, _)| n == name),
                "{name} is read by the code but missing from config.example.env"
            );
        }
        for (name, _) in &documented {
            assert!(
                VARIABLES.contains(&name.as_str()),
                "config.example.env documents {name}, which the code does not read"
            );
        }
        // The uncommented values are the defaults: loading them changes nothing.
        let pairs: Vec<(String, String)> = dotenvy::from_read_iter(example.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        let from_file = Config::from_env(&Environment::new(pairs, [])).unwrap();
        let defaults = config(&[]).unwrap();
        assert_eq!(format!("{from_file:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn each_variable_is_read_by_its_exact_name() {
        let values = VARIABLES
            .iter()
            .map(|name| (name.to_string(), format!("value of {name}")));
        let raw = RawConfig::from_environment(&Environment::new(values, []));
        let settings = raw.settings();
        assert_eq!(settings.api_port.value, Some("value of API_PORT"));
        assert_eq!(
            settings.listen_fd_name.value,
            Some("value of LISTEN_FD_NAME")
        );
        assert_eq!(settings.rust_log.value, Some("value of RUST_LOG"));

        // Names are exact: a lower-case spelling is someone else's variable.
        let lower = Environment::new([("api_port".to_owned(), "1".to_owned())], []);
        assert_eq!(RawConfig::from_environment(&lower).api_port, None);
    }
}
