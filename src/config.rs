//! Configuration: the environment (and `.env`) turned into a validated [`Config`].
//!
//! Parsing happens in two layers. [`RawConfig`] mirrors the environment: every
//! variable is an optional string, deserialized by `envy` from the variables
//! whose names are exactly ours (upper case: `api_port` is someone else's
//! variable). [`Config::try_from`] then turns those strings into domain types
//! and refuses bad values with a [`ConfigError`] that names the variable, the
//! value and what was expected.
//!
//! This module never reads the process environment for configuration:
//! `main.rs` collects the variables (see [`Environment`]) and hands them in,
//! which keeps the code testable without `set_var`. The one exception is
//! [`protocol_var`]: the variables of the service-manager protocols
//! ([`PROTOCOL_VARIABLES`]) come only from the real environment, never from `.env`.
//!
//! [`VARIABLES`] lists every variable; `docs/configuration.md` describes each
//! one and `config.example.env` is a commented copy with the defaults. A test
//! keeps the three (and README's table) in step.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr};
use std::ops::RangeInclusive;
use std::path::Path;
use std::time::Duration;

use tracing::level_filters::LevelFilter;

use crate::auth::{self, Auth};
use crate::listener::{Endpoint, ListenSpec, Role};
use crate::logging::{LogFormat, LogSettings};

/// Every variable portkeeper reads, spelled as in the environment: the
/// upper-case form of a [`RawConfig`] field (a test keeps the two in step).
pub(crate) const VARIABLES: &[&str] = &[
    "HOST",
    "API_PORT",
    "AUTO_FIND_PORT",
    "PORT_RANGE_START",
    "PORT_RANGE_END",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "RUST_LOG",
    "DEBUG",
    "RELOAD",
    "AUTH_REQUIRED",
    "API_TOKEN",
    "API_TOKEN_FILE",
    "CREDENTIALS_DIRECTORY",
    "HEADER_READ_TIMEOUT",
    "REQUEST_TIMEOUT",
    "MAX_BODY_BYTES",
    "SHUTDOWN_TIMEOUT",
    "SHUTDOWN_DELAY",
    "LISTEN_FD_NAME",
    "LISTEN",
    "ADMIN_LISTEN",
    "UNIX_SOCKET_MODE",
    "PORT",
];

/// The variables of the service-manager protocols (socket activation,
/// sd_notify, the watchdog, the journal, our own upgrade handoff). They
/// describe this very process, so they come only from the real environment:
/// one found in `.env` is ignored with a warning.
pub(crate) const PROTOCOL_VARIABLES: &[&str] = &[
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "LISTEN_FDS_FIRST_FD",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "JOURNAL_STREAM",
    crate::upgrade::HANDOFF_NOTIFY_VAR,
];

/// The value of a protocol variable ([`PROTOCOL_VARIABLES`]) in the real
/// process environment, never in `.env`. A non-UTF-8 value is converted
/// lossily, so it fails to parse by name instead of passing for "unset".
pub(crate) fn protocol_var(name: &str) -> Option<String> {
    debug_assert!(PROTOCOL_VARIABLES.contains(&name), "{name}");
    std::env::var_os(name).map(|value| value.to_string_lossy().into_owned())
}

/// The environment as it was given: every variable optional, every value a
/// string. Field `api_port` holds `API_PORT`, and so on.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
pub(crate) struct RawConfig {
    /// `HOST`: the address to bind.
    pub(crate) host: Option<String>,
    /// `API_PORT`: the port to bind first.
    pub(crate) api_port: Option<String>,
    /// `AUTO_FIND_PORT`: search the range when `API_PORT` is busy.
    pub(crate) auto_find_port: Option<String>,
    /// `PORT_RANGE_START`: first port of the search range.
    pub(crate) port_range_start: Option<String>,
    /// `PORT_RANGE_END`: last port of the search range.
    pub(crate) port_range_end: Option<String>,
    /// `LOG_LEVEL`: the default log level.
    pub(crate) log_level: Option<String>,
    /// `LOG_FORMAT`: `text` or `json` lines on stderr.
    pub(crate) log_format: Option<String>,
    /// `RUST_LOG`: an `EnvFilter` that overrides `LOG_LEVEL`.
    pub(crate) rust_log: Option<String>,
    /// `DEBUG`: development diagnostics.
    pub(crate) debug: Option<String>,
    /// `RELOAD`: hand the socket over when the executable is replaced.
    pub(crate) reload: Option<String>,
    /// `AUTH_REQUIRED`: require a bearer token.
    pub(crate) auth_required: Option<String>,
    /// `API_TOKEN`: accepted bearer tokens, comma-separated. A secret.
    pub(crate) api_token: Option<Secret>,
    /// `API_TOKEN_FILE`: a file of accepted bearer tokens, one per line.
    pub(crate) api_token_file: Option<String>,
    /// `CREDENTIALS_DIRECTORY`: systemd's directory of credentials (`api-token`).
    pub(crate) credentials_directory: Option<String>,
    /// `HEADER_READ_TIMEOUT`: seconds to receive a request's headers.
    pub(crate) header_read_timeout: Option<String>,
    /// `REQUEST_TIMEOUT`: seconds from a request's headers to its response.
    pub(crate) request_timeout: Option<String>,
    /// `MAX_BODY_BYTES`: the largest request body accepted.
    pub(crate) max_body_bytes: Option<String>,
    /// `SHUTDOWN_TIMEOUT`: seconds to let in-flight requests finish.
    pub(crate) shutdown_timeout: Option<String>,
    /// `SHUTDOWN_DELAY`: seconds to keep serving, not ready, before the drain.
    pub(crate) shutdown_delay: Option<String>,
    /// `LISTEN_FD_NAME`: which inherited socket to serve.
    pub(crate) listen_fd_name: Option<String>,
    /// `LISTEN`: addresses to bind, comma-separated.
    pub(crate) listen: Option<String>,
    /// `ADMIN_LISTEN`: addresses for the built-in routes alone.
    pub(crate) admin_listen: Option<String>,
    /// `UNIX_SOCKET_MODE`: permissions of the Unix socket files we bind.
    pub(crate) unix_socket_mode: Option<String>,
    /// `PORT`: the platforms' port, used when `API_PORT` is unset.
    pub(crate) port: Option<String>,
}

/// A secret's value (`API_TOKEN`): `Debug` shows `<redacted>`, never the value.
#[derive(Clone, serde::Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(transparent)]
pub(crate) struct Secret(String);

impl Secret {
    /// The value, for the code that needs it (token parsing).
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl RawConfig {
    /// Each variable's value in `env`, by its exact (upper-case) name.
    pub(crate) fn from_environment(env: &Environment) -> Result<Self, ConfigError> {
        // envy lower-cases names to match fields; giving it only our exact
        // names keeps `api_port=1` from setting API_PORT.
        let ours = VARIABLES
            .iter()
            .filter_map(|&name| Some((name.to_owned(), env.get(name)?.to_owned())));
        envy::from_iter(ours).map_err(ConfigError::Environment)
    }
}

/// Variables whose values are secrets: never shown in `Debug` or in errors.
const SECRETS: &[&str] = &["API_TOKEN"];

/// The process environment as `main.rs` collected it: `.env` first, real variables on top.
///
/// Only variables with UTF-8 names and values are kept; a non-UTF-8 value for
/// one of [`VARIABLES`] is remembered so it can be refused by name instead of
/// being silently ignored. [`PROTOCOL_VARIABLES`] found in `.env` are left
/// out and remembered, for [`Environment::warn_ignored`].
#[derive(Debug, Default, Clone)]
pub(crate) struct Environment {
    vars: BTreeMap<String, String>,
    not_utf8: Vec<String>,
    ignored: Vec<String>,
}

impl Environment {
    /// Builds the environment from `.env` pairs (lower precedence) and real variables.
    pub(crate) fn new(
        dotenv: impl IntoIterator<Item = (String, String)>,
        real: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Self {
        let mut env = Environment::default();
        for (name, value) in dotenv {
            if PROTOCOL_VARIABLES.contains(&name.as_str()) {
                env.ignored.push(name);
            } else {
                env.vars.insert(name, value);
            }
        }
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
    /// start the server with settings the user did not choose. So is
    /// anything but a regular file: reading a FIFO would hang the start.
    pub(crate) fn read_dotenv(path: &Path) -> Result<Vec<(String, String)>, ConfigError> {
        let file = match open_regular_file(path) {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(ConfigError::dotenv(path, dotenvy::Error::Io(err))),
        };
        dotenvy::from_read_iter(file)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| ConfigError::dotenv(path, err))
    }

    /// The value of one variable, if set. Never a [`PROTOCOL_VARIABLES`]
    /// value from `.env`.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// The [`PROTOCOL_VARIABLES`] that `.env` set and that were ignored.
    #[cfg(test)]
    pub(crate) fn ignored(&self) -> &[String] {
        &self.ignored
    }

    /// Logs a warning for each protocol variable `.env` set: call it once
    /// logging is set up.
    pub(crate) fn warn_ignored(&self) {
        for name in &self.ignored {
            tracing::warn!(
                variable = name,
                "{name} in .env is ignored: it describes this process, so only the real environment may set it"
            );
        }
    }
}

/// Opens `path` for reading if it is a regular file (symbolic links
/// followed). Anything else is refused before `open`, which would block on
/// a FIFO with no writer; the error says what the file is.
pub(crate) fn open_regular_file(path: &Path) -> std::io::Result<std::fs::File> {
    let kind = std::fs::metadata(path)?.file_type();
    if !kind.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("it is {}, not a regular file", describe_file_type(kind)),
        ));
    }
    std::fs::File::open(path)
}

fn describe_file_type(kind: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "a named pipe (FIFO)";
        }
        if kind.is_socket() {
            return "a socket";
        }
        if kind.is_char_device() || kind.is_block_device() {
            return "a device";
        }
    }
    if kind.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// Where the server should get its socket from when nothing is inherited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BindPlan {
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
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// How to bind when no socket is inherited.
    pub(crate) bind: BindPlan,
    /// What to log and how: `LOG_LEVEL` (or `DEBUG`), `RUST_LOG`, `LOG_FORMAT`.
    pub(crate) log: LogSettings,
    /// Development diagnostics.
    pub(crate) debug: bool,
    /// Hot reload of a replaced executable.
    pub(crate) reload: bool,
    /// Whether requests need a bearer token, and which tokens are accepted.
    pub(crate) auth: Auth,
    /// Bounds on what one client may cost: time for headers and requests, body size.
    pub(crate) limits: Limits,
    /// How long in-flight requests may take to finish after a stop signal.
    pub(crate) shutdown_timeout: Duration,
    /// How long to keep accepting, with `/ready` at 503, after a stop signal
    /// and before the drain (load balancers need time to stop sending).
    pub(crate) shutdown_delay: Duration,
    /// Which inherited socket to serve, by its LISTEN_FDNAMES entry.
    pub(crate) listen_fd_name: String,
}

/// Bounds that keep one client from holding the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Time to receive a request's headers, counted from when the connection
    /// starts waiting for them: it also closes idle keep-alive connections.
    pub(crate) header_read_timeout: Duration,
    /// Time from a request's headers to its response.
    pub(crate) request_timeout: Duration,
    /// The largest request body accepted.
    pub(crate) max_body_bytes: usize,
}

/// Default values, in one place; `config.example.env` repeats them for people.
mod defaults {
    pub(super) const HOST: &str = "0.0.0.0";
    pub(super) const API_PORT: u16 = 5050;
    pub(super) const PORT_RANGE_START: u16 = 5050;
    pub(super) const PORT_RANGE_END: u16 = 5100;
    pub(super) const LOG_LEVEL: &str = "info";
    pub(super) const LOG_FORMAT: &str = "text";
    pub(super) const SHUTDOWN_TIMEOUT_SECS: u64 = 30;
    pub(super) const SHUTDOWN_DELAY_SECS: u64 = 0;
    pub(super) const LISTEN_FD_NAME: &str = "http";
    pub(super) const HEADER_READ_TIMEOUT_SECS: u64 = 10;
    pub(super) const REQUEST_TIMEOUT_SECS: u64 = 30;
    pub(super) const MAX_BODY_BYTES: usize = 1024 * 1024;
    pub(super) const UNIX_SOCKET_MODE: &str = "0660";
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
    pub(crate) fn from_env(env: &Environment) -> Result<Self, ConfigError> {
        if let Some(name) = env.not_utf8.first() {
            return Err(ConfigError::NotUtf8 { name: name.clone() });
        }
        Config::try_from(RawConfig::from_environment(env)?)
    }
}

impl RawConfig {
    /// Pairs each variable's name with its raw value, for validation messages.
    fn settings(&self) -> Settings<'_> {
        fn s<'a>(name: &'static str, value: &'a Option<String>) -> Setting<'a> {
            Setting {
                name,
                value: value.as_deref(),
            }
        }
        Settings {
            host: s("HOST", &self.host),
            api_port: s("API_PORT", &self.api_port),
            auto_find_port: s("AUTO_FIND_PORT", &self.auto_find_port),
            port_range_start: s("PORT_RANGE_START", &self.port_range_start),
            port_range_end: s("PORT_RANGE_END", &self.port_range_end),
            log_level: s("LOG_LEVEL", &self.log_level),
            log_format: s("LOG_FORMAT", &self.log_format),
            rust_log: s("RUST_LOG", &self.rust_log),
            debug: s("DEBUG", &self.debug),
            reload: s("RELOAD", &self.reload),
            auth_required: s("AUTH_REQUIRED", &self.auth_required),
            api_token: Setting {
                name: "API_TOKEN",
                value: self.api_token.as_ref().map(Secret::expose),
            },
            api_token_file: s("API_TOKEN_FILE", &self.api_token_file),
            credentials_directory: s("CREDENTIALS_DIRECTORY", &self.credentials_directory),
            header_read_timeout: s("HEADER_READ_TIMEOUT", &self.header_read_timeout),
            request_timeout: s("REQUEST_TIMEOUT", &self.request_timeout),
            max_body_bytes: s("MAX_BODY_BYTES", &self.max_body_bytes),
            shutdown_timeout: s("SHUTDOWN_TIMEOUT", &self.shutdown_timeout),
            shutdown_delay: s("SHUTDOWN_DELAY", &self.shutdown_delay),
            listen_fd_name: s("LISTEN_FD_NAME", &self.listen_fd_name),
            listen: s("LISTEN", &self.listen),
            admin_listen: s("ADMIN_LISTEN", &self.admin_listen),
            unix_socket_mode: s("UNIX_SOCKET_MODE", &self.unix_socket_mode),
            port: s("PORT", &self.port),
        }
    }
}

/// [`RawConfig`]'s values, each with its variable's name.
struct Settings<'a> {
    host: Setting<'a>,
    api_port: Setting<'a>,
    auto_find_port: Setting<'a>,
    port_range_start: Setting<'a>,
    port_range_end: Setting<'a>,
    log_level: Setting<'a>,
    log_format: Setting<'a>,
    rust_log: Setting<'a>,
    debug: Setting<'a>,
    reload: Setting<'a>,
    auth_required: Setting<'a>,
    api_token: Setting<'a>,
    api_token_file: Setting<'a>,
    credentials_directory: Setting<'a>,
    header_read_timeout: Setting<'a>,
    request_timeout: Setting<'a>,
    max_body_bytes: Setting<'a>,
    shutdown_timeout: Setting<'a>,
    shutdown_delay: Setting<'a>,
    listen_fd_name: Setting<'a>,
    listen: Setting<'a>,
    admin_listen: Setting<'a>,
    unix_socket_mode: Setting<'a>,
    port: Setting<'a>,
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Self, ConfigError> {
        let s = raw.settings();
        // First: with LISTEN, HOST and API_PORT are refused, whatever their values.
        let listen = match s.listen.value {
            None => None,
            Some(_) => {
                if let Some(other) = [&s.host, &s.api_port, &s.auto_find_port]
                    .into_iter()
                    .find(|setting| setting.value.is_some())
                {
                    return Err(ConfigError::Invalid {
                        name: s.listen.name,
                        value: s.listen.value.unwrap_or_default().to_owned(),
                        expected: format!(
                            "LISTEN alone: {} is set too (LISTEN replaces HOST, API_PORT and AUTO_FIND_PORT; unset one of them)",
                            other.name
                        ),
                    });
                }
                Some(s.listen.parse_or("", |v| parse_listen(v, Role::App))?)
            }
        };
        let ip = s.host.parse_or(defaults::HOST, parse_host)?;
        // API_PORT wins; PORT (Heroku, Cloud Run, Render) is the fallback.
        let port_setting = if s.api_port.value.is_none() && s.port.value.is_some() {
            &s.port
        } else {
            &s.api_port
        };
        let port = port_setting.parse_or(&defaults::API_PORT.to_string(), |v| {
            parse_port(v, 0, "a port number from 0 to 65535 (0 = any free port)")
        })?;
        let admin = match s.admin_listen.value {
            None => Vec::new(),
            Some(_) => s
                .admin_listen
                .parse_or("", |v| parse_listen(v, Role::Admin))?,
        };
        let unix_mode = s
            .unix_socket_mode
            .parse_or(defaults::UNIX_SOCKET_MODE, parse_mode)?;
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
        let log = LogSettings {
            level: s.log_level.parse_or(default_level, parse_log_level)?,
            // Not validated here: a directive that does not parse costs a
            // warning once logging is set up (`logging::init`), never the start.
            directives: s
                .rust_log
                .value
                .filter(|value| !value.trim().is_empty())
                .map(str::to_owned),
            format: s
                .log_format
                .parse_or(defaults::LOG_FORMAT, parse_log_format)?,
        };
        let listen_fd_name = s
            .listen_fd_name
            .parse_or(defaults::LISTEN_FD_NAME, parse_fd_name)?;
        let shutdown_secs = s.shutdown_timeout.parse_or(
            &defaults::SHUTDOWN_TIMEOUT_SECS.to_string(),
            parse_shutdown_secs,
        )?;
        let delay_secs = s.shutdown_delay.parse_or(
            &defaults::SHUTDOWN_DELAY_SECS.to_string(),
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
                listen,
                admin,
                unix_mode,
            },
            log,
            debug,
            reload: s.reload.parse_or("false", parse_bool)?,
            auth,
            limits,
            shutdown_timeout: Duration::from_secs(shutdown_secs),
            shutdown_delay: Duration::from_secs(delay_secs),
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

fn parse_log_level(value: &str) -> Result<LevelFilter, String> {
    match value.to_ascii_lowercase().as_str() {
        "trace" => Ok(LevelFilter::TRACE),
        "debug" => Ok(LevelFilter::DEBUG),
        "info" => Ok(LevelFilter::INFO),
        // "warning" and "critical" are Python's logging names, which the
        // seed's users will have in their .env.
        "warn" | "warning" => Ok(LevelFilter::WARN),
        "error" | "critical" => Ok(LevelFilter::ERROR),
        _ => Err("one of trace, debug, info, warn, error".to_owned()),
    }
}

fn parse_log_format(value: &str) -> Result<LogFormat, String> {
    match value.to_ascii_lowercase().as_str() {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err("text or json".to_owned()),
    }
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

/// A configuration that cannot be used. Exit status 78 (EX_CONFIG).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum ConfigError {
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
    /// The environment could not be deserialized (not expected: every
    /// variable is read as a string).
    #[error("cannot read the environment")]
    Environment(#[source] envy::Error),
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
        assert_eq!(cfg.log, LogSettings::default());
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
    fn log_level_in_any_case_and_rust_log_kept_for_the_filter() {
        let level = |pairs: &[(&str, &str)]| config(pairs).unwrap().log.level;
        assert_eq!(level(&[("LOG_LEVEL", "DEBUG")]), LevelFilter::DEBUG);
        assert_eq!(level(&[("LOG_LEVEL", "Warning")]), LevelFilter::WARN);
        assert_eq!(level(&[("LOG_LEVEL", "critical")]), LevelFilter::ERROR);
        assert_eq!(level(&[("DEBUG", "true")]), LevelFilter::DEBUG);
        assert_eq!(
            level(&[("DEBUG", "true"), ("LOG_LEVEL", "warn")]),
            LevelFilter::WARN
        );
        assert!(error(&[("LOG_LEVEL", "loud")]).starts_with("LOG_LEVEL: \"loud\""));
        // RUST_LOG is EnvFilter's to judge, at logging set-up, as a warning.
        let cfg = config(&[("RUST_LOG", "warn,tower=trce,portkeeper[conn]=debug")]).unwrap();
        assert_eq!(
            cfg.log.directives.as_deref(),
            Some("warn,tower=trce,portkeeper[conn]=debug")
        );
        assert_eq!(config(&[("RUST_LOG", " ")]).unwrap().log.directives, None);
    }

    #[test]
    fn log_format_is_text_or_json() {
        let format = |value| config(&[("LOG_FORMAT", value)]).unwrap().log.format;
        assert_eq!(format("text"), LogFormat::Text);
        assert_eq!(format("JSON"), LogFormat::Json);
        assert_eq!(
            error(&[("LOG_FORMAT", "yaml")]),
            "LOG_FORMAT: \"yaml\" is not valid (expected text or json)"
        );
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
        assert_eq!(config(&[]).unwrap().shutdown_delay, Duration::ZERO);
        assert_eq!(
            config(&[("SHUTDOWN_DELAY", "5")]).unwrap().shutdown_delay,
            Duration::from_secs(5)
        );
        assert!(error(&[("SHUTDOWN_DELAY", "-1")]).starts_with("SHUTDOWN_DELAY"));
        assert!(error(&[("SHUTDOWN_DELAY", "2s")]).starts_with("SHUTDOWN_DELAY"));
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
            api_token: Some(Secret(TOKEN.to_owned())),
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

    #[test]
    fn listen_takes_tcp_unix_and_abstract_addresses_with_roles() {
        let cfg = config(&[
            (
                "LISTEN",
                "127.0.0.1:5050, [::1]:5050,/run/pk.sock,@pk,admin=127.0.0.1:9",
            ),
            ("ADMIN_LISTEN", "/run/pk-admin.sock"),
            ("UNIX_SOCKET_MODE", "0600"),
        ])
        .unwrap();
        let listen = cfg.bind.listen.unwrap();
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
        assert_eq!(cfg.bind.admin[0].role, Role::Admin);
        assert_eq!(cfg.bind.unix_mode, 0o600);
        assert_eq!(config(&[]).unwrap().bind.unix_mode, 0o660);
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
        assert!(error(&[("UNIX_SOCKET_MODE", "0999")]).starts_with("UNIX_SOCKET_MODE"));
        assert!(error(&[("UNIX_SOCKET_MODE", "1777")]).starts_with("UNIX_SOCKET_MODE"));
    }

    #[test]
    fn port_is_used_when_api_port_is_unset_and_api_port_wins() {
        assert_eq!(config(&[("PORT", "8080")]).unwrap().bind.port, 8080);
        let both = config(&[("PORT", "8080"), ("API_PORT", "7000")]).unwrap();
        assert_eq!(both.bind.port, 7000);
        assert!(error(&[("PORT", "x")]).starts_with("PORT: "));
        // Platforms set PORT everywhere: with LISTEN it is ignored, not refused.
        assert!(config(&[("PORT", "8080"), ("LISTEN", "127.0.0.1:1")]).is_ok());
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

    /// The lines of `doc` from the heading `section` to the next heading of its level.
    fn section<'a>(doc: &'a str, section: &str) -> Vec<&'a str> {
        let level = section.split(' ').next().unwrap();
        doc.lines()
            .skip_while(|line| *line != section)
            .skip(1)
            .take_while(|line| !line.starts_with(&format!("{level} ")))
            .collect()
    }

    /// The `(name, default)` rows of a table whose first cell is one `VARIABLE`.
    fn table_rows<'a>(lines: &[&'a str]) -> Vec<(&'a str, &'a str)> {
        lines
            .iter()
            .filter_map(|line| {
                let mut cells = line.strip_prefix('|')?.split('|').map(str::trim);
                let name = cells.next()?.strip_prefix('`')?.strip_suffix('`')?;
                let is_name = name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_');
                is_name.then(|| (name, cells.next().unwrap_or_default()))
            })
            .collect()
    }

    /// README's table and docs/configuration.md's list every variable the
    /// code reads, and nothing else, with config.example.env's defaults.
    #[test]
    fn docs_are_in_step_with_the_code_and_the_example() {
        let example = include_str!("../config.example.env");
        let default_of = |name: &str| {
            example.lines().find_map(|line| {
                let value = line.strip_prefix(name)?.strip_prefix('=')?;
                Some(format!("`{value}`"))
            })
        };
        let docs = [
            (
                "README.md",
                section(include_str!("../README.md"), "## Configuration"),
            ),
            (
                "docs/configuration.md",
                section(include_str!("../docs/configuration.md"), "## Variables"),
            ),
        ];
        for (doc, lines) in docs {
            let rows = table_rows(&lines);
            let names: Vec<&str> = rows.iter().map(|(name, _)| *name).collect();
            assert_eq!(names, VARIABLES, "{doc}'s table lists other variables");
            for (name, default) in rows {
                let expected = default_of(name).unwrap_or_else(|| "unset".to_owned());
                assert_eq!(default, expected, "{doc}: the default of {name}");
            }
        }
        let protocol = section(
            include_str!("../docs/configuration.md"),
            "## Protocol variables",
        )
        .join("\n");
        for name in PROTOCOL_VARIABLES {
            assert!(
                protocol.contains(&format!("`{name}`")),
                "docs/configuration.md does not list the protocol variable {name}"
            );
        }
    }

    #[test]
    fn each_variable_is_read_by_its_exact_name() {
        let values = VARIABLES
            .iter()
            .map(|name| (name.to_string(), format!("value of {name}")));
        let raw = RawConfig::from_environment(&Environment::new(values, [])).unwrap();
        // Every field of RawConfig is one of VARIABLES, lower-cased, and holds its value.
        let fields = serde_json::to_value(&raw).unwrap();
        let fields = fields.as_object().unwrap();
        assert_eq!(fields.len(), VARIABLES.len(), "{fields:?}");
        for name in VARIABLES {
            let field = name.to_ascii_lowercase();
            assert_eq!(
                fields[&field],
                serde_json::json!(format!("value of {name}")),
                "{field}"
            );
        }
        // Names are exact: a lower-case spelling is someone else's variable.
        let lower = Environment::new([("api_port".to_owned(), "1".to_owned())], []);
        assert_eq!(RawConfig::from_environment(&lower).unwrap().api_port, None);
    }

    /// Each validation message names the variable whose value it refuses
    /// (the names in `settings()` are spelled as in VARIABLES).
    #[test]
    fn errors_name_the_variable_they_refuse() {
        for name in VARIABLES {
            // RUST_LOG is never refused; CREDENTIALS_DIRECTORY is a path
            // that may be provisioned without being used.
            if ["RUST_LOG", "CREDENTIALS_DIRECTORY"].contains(name) {
                continue;
            }
            let message = error(&[(name, "bad value")]);
            assert!(message.starts_with(name), "{name}: {message}");
        }
    }

    #[test]
    fn protocol_variables_in_dotenv_are_ignored_and_remembered() {
        let env = Environment::new(
            [
                ("NOTIFY_SOCKET".to_owned(), "/run/x".to_owned()),
                ("LISTEN_FDS".to_owned(), "1".to_owned()),
                ("HOST".to_owned(), "::1".to_owned()),
            ],
            [(OsString::from("WATCHDOG_USEC"), OsString::from("1000"))],
        );
        assert_eq!(env.get("NOTIFY_SOCKET"), None);
        assert_eq!(env.get("LISTEN_FDS"), None);
        assert_eq!(env.get("WATCHDOG_USEC"), Some("1000"));
        assert_eq!(env.get("HOST"), Some("::1"));
        assert_eq!(env.ignored(), ["NOTIFY_SOCKET", "LISTEN_FDS"]);
    }

    #[cfg(unix)]
    #[test]
    fn a_dotenv_that_is_not_a_regular_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("portkeeper-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let message = Environment::read_dotenv(&dir).unwrap_err().to_string();
        std::fs::remove_dir(&dir).unwrap();
        assert!(
            message.contains("it is a directory, not a regular file"),
            "{message}"
        );
        assert!(
            Environment::read_dotenv(&dir).unwrap().is_empty(),
            "missing is fine"
        );
    }
}
