//! The configuration, composed: each module owns its settings type, its
//! variables and their parsing (`listener`, `logging`, `debug_routes`,
//! `upgrade`, `auth`, `serve`, `lifecycle`); this module only puts the pieces
//! together, applies the typed [`Overrides`] a program gave `Server`, and
//! chains the owners' lists of variables into [`variables`].
//!
//! Only `server.rs` imports it; the owners import the shared machinery from
//! `settings`, so no module imports this one back.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::time::Duration;

use crate::auth::{Auth, Secret};
use crate::debug_routes;
use crate::lifecycle::StopSettings;
use crate::listener::{Endpoint, ListenSettings, ListenSpec, Marks, Role};
use crate::logging::LogSettings;
use crate::serve::{Limits, ProxySettings};
use crate::settings::{ConfigError, Environment, Variable, check_duration};
use crate::tls::TlsSettings;
use crate::upgrade::UpgradeSettings;

/// Every variable portkeeper reads, owner by owner, in the order of the
/// documentation (README, `docs/configuration.md`, `--help`).
pub(crate) fn variables() -> impl Iterator<Item = &'static Variable> {
    [
        ListenSettings::VARIABLES,
        ProxySettings::VARIABLES,
        LogSettings::VARIABLES,
        debug_routes::VARIABLES,
        UpgradeSettings::VARIABLES,
        Auth::VARIABLES,
        Limits::VARIABLES,
        TlsSettings::VARIABLES,
        StopSettings::VARIABLES,
    ]
    .into_iter()
    .flatten()
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// Where to bind when no socket is inherited, and which inherited ones serve the app.
    pub(crate) listener: ListenSettings,
    /// The certificate pair, client certificates and handshake bounds of
    /// TLS listeners (read, and checked, in a build without TLS too).
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(crate) tls: TlsSettings,
    /// The peers that may send PROXY headers to listeners marked `proxy`.
    pub(crate) proxy: ProxySettings,
    /// What to log and how: `LOG_LEVEL` (or `DEBUG`), `RUST_LOG`, `LOG_FORMAT`.
    pub(crate) log: LogSettings,
    /// Development diagnostics (`DEBUG`): the debug routes, debug logging.
    pub(crate) debug: bool,
    /// Hot reload of a replaced executable.
    pub(crate) upgrade: UpgradeSettings,
    /// Whether requests need a bearer token, and which tokens are accepted.
    pub(crate) auth: Auth,
    /// Bounds on what one client may cost: time for headers and requests, body size.
    pub(crate) limits: Limits,
    /// How long to keep serving before the drain, and how long the drain may take.
    pub(crate) stop: StopSettings,
}

/// What `Server::bind` or `Server::bind_all` asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Bind {
    /// One TCP address, in place of `HOST` and `API_PORT` (and `LISTEN`).
    One(SocketAddr),
    /// Several, in place of `LISTEN` (and `HOST`, `API_PORT`, the search).
    All(Vec<SocketAddr>),
}

/// Settings given typed in code (`Server`'s setters): each replaces its
/// variable once the environment has been read and checked.
#[derive(Debug, Clone, Default)]
pub(crate) struct Overrides {
    pub(crate) shutdown_timeout: Option<Duration>,
    pub(crate) shutdown_delay: Option<Duration>,
    pub(crate) header_read_timeout: Option<Duration>,
    pub(crate) request_timeout: Option<Duration>,
    pub(crate) write_timeout: Option<Duration>,
    pub(crate) max_body_bytes: Option<usize>,
    pub(crate) max_connections: Option<usize>,
    pub(crate) bind: Option<Bind>,
    pub(crate) auto_find_port: Option<RangeInclusive<u16>>,
    /// Redacted in `Debug`.
    pub(crate) api_tokens: Option<Vec<Secret>>,
    pub(crate) debug: Option<bool>,
    pub(crate) reload: Option<bool>,
}

impl Config {
    /// Reads and validates the configuration from a collected environment.
    #[cfg(test)]
    pub(crate) fn from_env(env: &Environment) -> Result<Self, ConfigError> {
        Config::load(env, &Overrides::default())
    }

    /// Reads and validates the environment, then applies `overrides`; a
    /// typed value out of range is refused naming its setter.
    pub(crate) fn load(env: &Environment, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut listener = overrides.apply_listener(ListenSettings::from_env(env)?)?;
        let tls = TlsSettings::from_env(env)?;
        listener.unmarked.tls = tls.unmarked;
        let proxy = ProxySettings::from_env(env)?;
        let debug = overrides
            .debug
            .map_or_else(|| debug_routes::debug_from_env(env), Ok)?;
        // DEBUG=true means more logging unless LOG_LEVEL says otherwise.
        let log = LogSettings::from_env(env, debug)?;
        let mut upgrade = UpgradeSettings::from_env(env)?;
        upgrade.reload = overrides.reload.unwrap_or(upgrade.reload);
        let limits = overrides.apply_limits(Limits::from_env(env)?)?;
        let stop = overrides.apply_stop(StopSettings::from_env(env)?)?;
        // Last: it may read a token file, which is pointless if anything else
        // is wrong. Typed tokens replace the variables, files unread.
        let auth = match &overrides.api_tokens {
            Some(tokens) => Auth::from_tokens("api_tokens", tokens)?,
            None => Auth::from_env(env)?,
        };
        Ok(Config {
            listener,
            tls,
            proxy,
            log,
            debug,
            upgrade,
            auth,
            limits,
            stop,
        })
    }
}

impl Overrides {
    fn apply_listener(&self, mut listener: ListenSettings) -> Result<ListenSettings, ConfigError> {
        match &self.bind {
            None => {}
            Some(Bind::One(address)) => {
                listener.ip = address.ip();
                listener.port = address.port();
                listener.listen = None;
            }
            Some(Bind::All(addresses)) if addresses.is_empty() => {
                return Err(ConfigError::invalid(
                    "bind_all",
                    "[]",
                    "at least one address",
                ));
            }
            Some(Bind::All(addresses)) => {
                let specs = addresses.iter().map(|address| ListenSpec {
                    marks: Marks::default(),
                    role: Role::App,
                    endpoint: Endpoint::Tcp(*address),
                });
                listener.listen = Some(specs.collect());
            }
        }
        if let Some(range) = &self.auto_find_port {
            if *range.start() == 0 || range.start() > range.end() {
                return Err(ConfigError::invalid(
                    "auto_find_port",
                    format!("{range:?}"),
                    "a range of ports from 1 to 65535, start not above end",
                ));
            }
            listener.search = Some(range.clone());
        }
        Ok(listener)
    }

    fn apply_limits(&self, mut limits: Limits) -> Result<Limits, ConfigError> {
        if let Some(value) = self.header_read_timeout {
            limits.header_read_timeout =
                check_duration("header_read_timeout", value, Limits::TIMEOUT_SECS)?;
        }
        if let Some(value) = self.request_timeout {
            limits.request_timeout =
                check_duration("request_timeout", value, Limits::TIMEOUT_SECS)?;
        }
        if let Some(value) = self.write_timeout {
            limits.write_timeout = check_duration("write_timeout", value, Limits::TIMEOUT_SECS)?;
        }
        if let Some(bytes) = self.max_body_bytes {
            limits.max_body_bytes = Limits::check_body_limit(bytes).map_err(|expected| {
                ConfigError::invalid("max_body_bytes", bytes.to_string(), expected)
            })?;
        }
        if let Some(cap) = self.max_connections {
            limits.max_connections = Limits::check_max_connections(cap).map_err(|expected| {
                ConfigError::invalid("max_connections", cap.to_string(), expected)
            })?;
        }
        Ok(limits)
    }

    fn apply_stop(&self, mut stop: StopSettings) -> Result<StopSettings, ConfigError> {
        if let Some(value) = self.shutdown_timeout {
            stop.shutdown_timeout = check_duration("shutdown_timeout", value, StopSettings::SECS)?;
        }
        if let Some(value) = self.shutdown_delay {
            stop.shutdown_delay = check_duration("shutdown_delay", value, StopSettings::SECS)?;
        }
        Ok(stop)
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::settings::PROTOCOL_VARIABLES;

    fn env(pairs: &[(&str, &str)]) -> Environment {
        Environment::new(
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())),
            [],
        )
    }

    fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_env(&env(pairs))
    }

    fn error(pairs: &[(&str, &str)]) -> String {
        config(pairs)
            .expect_err("config should be refused")
            .to_string()
    }

    fn names() -> Vec<&'static str> {
        variables().map(|v| v.name).collect()
    }

    #[test]
    fn defaults_match_the_design() {
        let cfg = config(&[]).unwrap();
        assert_eq!(cfg.listener.ip, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!(cfg.listener.port, 5050);
        assert_eq!(cfg.log, LogSettings::default());
        assert!(!cfg.debug && !cfg.upgrade.reload && !cfg.auth.is_required());
        assert_eq!(cfg.limits.max_body_bytes, 1_048_576);
        assert_eq!(cfg.stop.shutdown_timeout, Duration::from_secs(30));
    }

    #[test]
    fn debug_turns_on_debug_logging() {
        let cfg = config(&[("DEBUG", "true")]).unwrap();
        assert!(cfg.debug);
        assert_eq!(cfg.log.level, tracing::level_filters::LevelFilter::DEBUG);
        assert_eq!(
            error(&[("DEBUG", "maybe")]),
            "DEBUG: \"maybe\" is not valid (expected true or false (also 1/0, yes/no, on/off))"
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
        assert_eq!(cfg.listener.port, 7001);
        assert!(cfg.debug);
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
        let overrides = Overrides {
            api_tokens: Some(vec![Secret::new(TOKEN.to_owned())]),
            ..Overrides::default()
        };
        let shown = format!("{overrides:?}");
        assert!(
            !shown.contains(TOKEN) && shown.contains("redacted"),
            "{shown}"
        );
        let refused = error(&[("AUTH_REQUIRED", "false"), ("API_TOKEN", TOKEN)]);
        assert!(
            refused.starts_with("API_TOKEN:") && !refused.contains(TOKEN),
            "{refused}"
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
    fn every_setter_overrides_its_variable() {
        let env = env(&[
            ("HOST", "::1"),
            ("API_PORT", "7000"),
            ("SHUTDOWN_TIMEOUT", "5"),
            ("SHUTDOWN_DELAY", "5"),
            ("HEADER_READ_TIMEOUT", "5"),
            ("REQUEST_TIMEOUT", "5"),
            ("MAX_BODY_BYTES", "5"),
            ("WRITE_TIMEOUT", "5"),
            ("MAX_CONNECTIONS", "5"),
            ("DEBUG", "true"),
            ("RELOAD", "true"),
        ]);
        let overrides = Overrides {
            shutdown_timeout: Some(Duration::from_secs(7)),
            shutdown_delay: Some(Duration::from_millis(1500)),
            header_read_timeout: Some(Duration::from_secs(8)),
            request_timeout: Some(Duration::from_secs(9)),
            write_timeout: Some(Duration::from_secs(11)),
            max_body_bytes: Some(10),
            max_connections: Some(12),
            bind: Some(Bind::One("127.0.0.1:6000".parse().unwrap())),
            auto_find_port: Some(6001..=6010),
            api_tokens: Some(vec![Secret::new("tok-0123456789abcdef".to_owned())]),
            debug: Some(false),
            reload: Some(false),
        };
        let cfg = Config::load(&env, &overrides).unwrap();
        assert_eq!(cfg.stop.shutdown_timeout, Duration::from_secs(7));
        assert_eq!(cfg.stop.shutdown_delay, Duration::from_millis(1500));
        assert_eq!(cfg.limits.header_read_timeout, Duration::from_secs(8));
        assert_eq!(cfg.limits.request_timeout, Duration::from_secs(9));
        assert_eq!(cfg.limits.max_body_bytes, 10);
        assert_eq!(cfg.limits.write_timeout, Duration::from_secs(11));
        assert_eq!(cfg.limits.max_connections, 12);
        assert_eq!(cfg.listener.ip, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(cfg.listener.port, 6000);
        assert_eq!(cfg.listener.search, Some(6001..=6010));
        assert!(cfg.auth.is_required());
        assert!(!cfg.debug && !cfg.upgrade.reload);
        // Without DEBUG, the default log level is the variable's again.
        assert_eq!(cfg.log.level, tracing::level_filters::LevelFilter::INFO);

        // bind_all replaces LISTEN.
        let listen = Environment::new([("LISTEN".to_owned(), "/run/x.sock".to_owned())], []);
        let addresses: Vec<SocketAddr> =
            vec!["127.0.0.1:1".parse().unwrap(), "[::1]:2".parse().unwrap()];
        let overrides = Overrides {
            bind: Some(Bind::All(addresses.clone())),
            ..Overrides::default()
        };
        let specs = Config::load(&listen, &overrides)
            .unwrap()
            .listener
            .listen
            .unwrap();
        let bound: Vec<&Endpoint> = specs.iter().map(|spec| &spec.endpoint).collect();
        assert_eq!(
            bound,
            addresses
                .iter()
                .map(|a| Endpoint::Tcp(*a))
                .collect::<Vec<_>>()
                .iter()
                .collect::<Vec<_>>()
        );
        // bind replaces LISTEN too.
        let overrides = Overrides {
            bind: Some(Bind::One("127.0.0.1:0".parse().unwrap())),
            ..Overrides::default()
        };
        assert_eq!(
            Config::load(&listen, &overrides).unwrap().listener.listen,
            None
        );
    }

    #[test]
    fn bad_typed_values_are_refused_naming_the_setter() {
        let refused = |overrides: Overrides| {
            Config::load(&Environment::default(), &overrides)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            refused(Overrides {
                header_read_timeout: Some(Duration::ZERO),
                ..Overrides::default()
            }),
            "header_read_timeout: \"0s\" is not valid (expected a duration from 1s to 3600s)"
        );
        for (setter, overrides) in [
            (
                "request_timeout",
                Overrides {
                    request_timeout: Some(Duration::from_secs(3601)),
                    ..Overrides::default()
                },
            ),
            (
                "write_timeout",
                Overrides {
                    write_timeout: Some(Duration::ZERO),
                    ..Overrides::default()
                },
            ),
            (
                "max_connections",
                Overrides {
                    max_connections: Some(1_000_001),
                    ..Overrides::default()
                },
            ),
            (
                "shutdown_timeout",
                Overrides {
                    shutdown_timeout: Some(Duration::from_secs(86_401)),
                    ..Overrides::default()
                },
            ),
            (
                "shutdown_delay",
                Overrides {
                    shutdown_delay: Some(Duration::MAX),
                    ..Overrides::default()
                },
            ),
            (
                "max_body_bytes",
                Overrides {
                    max_body_bytes: Some(usize::MAX),
                    ..Overrides::default()
                },
            ),
            (
                "bind_all",
                Overrides {
                    bind: Some(Bind::All(Vec::new())),
                    ..Overrides::default()
                },
            ),
            (
                "auto_find_port",
                Overrides {
                    auto_find_port: Some(0..=10),
                    ..Overrides::default()
                },
            ),
            (
                "api_tokens",
                Overrides {
                    api_tokens: Some(vec![Secret::new("short".to_owned())]),
                    ..Overrides::default()
                },
            ),
        ] {
            let message = refused(overrides);
            assert!(message.starts_with(&format!("{setter}: ")), "{message}");
            assert_eq!(message.lines().count(), 1, "{message}");
        }
    }

    /// `config.example.env` documents every variable, with its real default.
    #[test]
    fn example_env_is_in_step_with_the_code() {
        let example = include_str!("../config.example.env");
        let documented: Vec<(String, String, bool)> = example
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(commented) => (commented, false),
                None => (line, true),
            })
            .filter_map(|(line, active)| {
                let (name, value) = line.split_once('=')?;
                Some((name, value, active))
            })
            .filter(|(name, _, _)| name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'))
            .map(|(name, value, active)| (name.to_owned(), value.to_owned(), active))
            .collect();
        for variable in variables() {
            let entry = documented.iter().find(|(n, _, _)| n == variable.name);
            let Some((_, value, active)) = entry else {
                panic!(
                    "{} is read by the code but missing from config.example.env",
                    variable.name
                );
            };
            // A default is written out, uncommented; an unset variable is commented.
            match variable.default {
                Some(default) => assert!(
                    *active && value == default,
                    "config.example.env: {}={value}, the code's default is {default}",
                    variable.name
                ),
                None => assert!(!active, "config.example.env sets {}", variable.name),
            }
        }
        for (name, _, _) in &documented {
            assert!(
                names().contains(&name.as_str()),
                "config.example.env documents {name}, which the code does not read"
            );
        }
        // Loading the file changes nothing.
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

    /// The `(name, default, meaning)` rows of a table whose first cell is
    /// one `VARIABLE` and whose last is the meaning.
    fn table_rows<'a>(lines: &[&'a str]) -> Vec<(&'a str, &'a str, &'a str)> {
        lines
            .iter()
            .filter_map(|line| {
                let inner = line.strip_prefix('|')?.strip_suffix('|')?;
                let cells: Vec<&str> = inner.split(" | ").map(str::trim).collect();
                let name = cells.first()?.strip_prefix('`')?.strip_suffix('`')?;
                let is_name = name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_');
                is_name.then(|| (name, cells[1], *cells.last().unwrap_or(&"")))
            })
            .collect()
    }

    /// README's table and docs/configuration.md's list every variable the
    /// code reads, in order, and nothing else, with the code's defaults and meanings.
    #[test]
    fn docs_are_in_step_with_the_code_and_the_example() {
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
            let listed: Vec<&str> = rows.iter().map(|(name, _, _)| *name).collect();
            assert_eq!(listed, names(), "{doc}'s table lists other variables");
            for ((name, default, meaning), variable) in rows.into_iter().zip(variables()) {
                let expected = variable
                    .default
                    .map_or_else(|| "unset".to_owned(), |d| format!("`{d}`"));
                assert_eq!(default, expected, "{doc}: the default of {name}");
                assert_eq!(meaning, variable.meaning, "{doc}: the meaning of {name}");
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

    /// Names are exact: a lower-case spelling, or (under a prefix) a bare
    /// one, is someone else's variable; protocol variables are never ours to
    /// take from `.env`.
    #[test]
    fn each_variable_is_read_by_its_exact_name() {
        let ours = || variables().filter(|v| !PROTOCOL_VARIABLES.contains(&v.name));
        let lower = ours()
            .map(|v| (v.name.to_ascii_lowercase(), "bad value".to_owned()))
            .collect::<Vec<_>>();
        assert!(Config::from_env(&Environment::new(lower, [])).is_ok());
        let bare = ours()
            .map(|v| (OsString::from(v.name), OsString::from("bad value")))
            .collect::<Vec<_>>();
        assert!(Config::from_env(&Environment::with_prefix("APP_", [], bare)).is_ok());
        for variable in ours() {
            if variable.name == "RUST_LOG" {
                continue;
            }
            let prefixed = Environment::with_prefix(
                "APP_",
                [(format!("APP_{}", variable.name), "bad value".to_owned())],
                [],
            );
            let message = Config::from_env(&prefixed).unwrap_err().to_string();
            assert!(
                message.starts_with(&format!("APP_{}", variable.name)),
                "{message}"
            );
        }
    }

    /// Each validation message names the variable whose value it refuses.
    #[test]
    fn errors_name_the_variable_they_refuse() {
        for name in names() {
            // RUST_LOG is never refused; CREDENTIALS_DIRECTORY is a protocol
            // variable (never from .env), and a path that may be provisioned
            // without being used.
            if ["RUST_LOG", "CREDENTIALS_DIRECTORY"].contains(&name) {
                continue;
            }
            let message = error(&[(name, "bad value")]);
            assert!(message.starts_with(name), "{name}: {message}");
        }
    }
}
