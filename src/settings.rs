//! The machinery every settings owner uses: the collected [`Environment`]
//! (with an optional prefix), one [`Setting`] at a time, the shared parsers,
//! [`ConfigError`], and the [`Variable`] descriptor each owner lists its
//! variables with.
//!
//! A leaf: it imports nothing from the crate, so every module that owns
//! settings (`listener`, `logging`, `auth`, ...) can use it without a circle.
//!
//! Owners never read the process environment: `server.rs` collects the
//! variables (and `.env`) into an [`Environment`] and hands it in, which keeps
//! parsing testable without `set_var`. The one exception is [`protocol_var`]:
//! the variables of the service-manager protocols ([`PROTOCOL_VARIABLES`])
//! describe this very process, so they come only from the real environment.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::Path;

/// One variable portkeeper reads: its name, its default and what it means.
///
/// [`variables()`](crate::variables) lists them all, in the order of the
/// documentation; `--help`, README, `docs/configuration.md` and
/// `config.example.env` are kept in step with that list by tests.
///
/// ```
/// let port = portkeeper::variables()
///     .into_iter()
///     .find(|variable| variable.name == "API_PORT")
///     .expect("API_PORT is read");
/// assert_eq!(port.default, Some("5050"));
/// println!("{}: {}", port.name, port.meaning);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Variable {
    /// The name, as spelled in the environment (without any prefix given to
    /// `Server::from_env_prefixed`).
    pub name: &'static str,
    /// The default, as it would be written in `.env`; `None` when unset
    /// means something of its own (no token, no `LISTEN` list).
    pub default: Option<&'static str>,
    /// One line on what it does.
    pub meaning: &'static str,
}

impl Variable {
    /// A variable with a default.
    pub(crate) const fn new(
        name: &'static str,
        default: &'static str,
        meaning: &'static str,
    ) -> Self {
        Variable {
            name,
            default: Some(default),
            meaning,
        }
    }

    /// A variable that is unset by default.
    pub(crate) const fn unset(name: &'static str, meaning: &'static str) -> Self {
        Variable {
            name,
            default: None,
            meaning,
        }
    }
}

/// The variables of the service-manager protocols (socket activation,
/// sd_notify, the watchdog, the journal, systemd's credentials, our own
/// upgrade handoff). They describe this very process, so they come only from
/// the real environment, never with a prefix: one found in `.env` is ignored
/// with a warning.
pub(crate) const PROTOCOL_VARIABLES: &[&str] = &[
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "LISTEN_FDS_FIRST_FD",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "JOURNAL_STREAM",
    "CREDENTIALS_DIRECTORY",
    HANDOFF_NOTIFY_VAR,
];

/// Where a process started by a binary upgrade reports ready (see `upgrade`).
pub(crate) const HANDOFF_NOTIFY_VAR: &str = "PORTKEEPER_HANDOFF_NOTIFY";

/// Variables whose values are secrets: a `.env` line setting one is never quoted in an error.
const SECRETS: &[&str] = &["API_TOKEN"];

/// The value of a protocol variable ([`PROTOCOL_VARIABLES`]) in the real
/// process environment, never in `.env`. A non-UTF-8 value is converted
/// lossily, so it fails to parse by name instead of passing for "unset".
pub(crate) fn protocol_var(name: &str) -> Option<String> {
    debug_assert!(PROTOCOL_VARIABLES.contains(&name), "{name}");
    std::env::var_os(name).map(|value| value.to_string_lossy().into_owned())
}

/// The real environment's protocol variables alone: what `Server::from_vars`
/// still takes from the process.
pub(crate) fn real_protocol_vars() -> impl Iterator<Item = (OsString, OsString)> {
    std::env::vars_os().filter(|(name, _)| {
        name.to_str()
            .is_some_and(|name| PROTOCOL_VARIABLES.contains(&name))
    })
}

/// The environment as `server.rs` collected it: `.env` first, real variables
/// on top, under a prefix (`APP_` reads `APP_HOST` for `HOST`) or none.
///
/// Only UTF-8 names and values are kept; a non-UTF-8 value is remembered so
/// that an owner reading that variable refuses it by name instead of taking
/// it for unset. [`PROTOCOL_VARIABLES`] found in `.env` are left out and
/// remembered, for [`Environment::warn_ignored`]; in the real environment
/// they are kept apart, unprefixed ([`Environment::protocol`]).
#[derive(Debug, Default, Clone)]
pub(crate) struct Environment {
    prefix: String,
    /// Our variables, by their unprefixed names.
    vars: BTreeMap<String, String>,
    /// Protocol variables from the real environment.
    protocol: BTreeMap<String, String>,
    /// Unprefixed names whose real value is not UTF-8.
    not_utf8: BTreeSet<String>,
    ignored: Vec<String>,
}

impl Environment {
    /// Builds the environment from `.env` pairs (lower precedence) and real
    /// variables, without a prefix.
    pub(crate) fn new(
        dotenv: impl IntoIterator<Item = (String, String)>,
        real: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Self {
        Environment::with_prefix("", dotenv, real)
    }

    /// As [`Environment::new`], keeping only the variables whose names start
    /// with `prefix` (stripped): with `APP_`, `APP_HOST` is `HOST` and a bare
    /// `HOST` is someone else's. Protocol variables are never prefixed.
    pub(crate) fn with_prefix(
        prefix: &str,
        dotenv: impl IntoIterator<Item = (String, String)>,
        real: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Self {
        let mut env = Environment {
            prefix: prefix.to_owned(),
            ..Environment::default()
        };
        for (name, value) in dotenv {
            if is_protocol(&name) {
                env.ignored.push(name);
            } else if let Some(ours) = name.strip_prefix(prefix) {
                env.vars.insert(ours.to_owned(), value);
            }
        }
        for (name, value) in real {
            let Ok(name) = name.into_string() else {
                // A name that is not UTF-8 is none of ours.
                continue;
            };
            if is_protocol(&name) {
                env.protocol
                    .insert(name, value.to_string_lossy().into_owned());
                continue;
            }
            let Some(ours) = name.strip_prefix(prefix) else {
                continue;
            };
            match value.into_string() {
                Ok(value) => {
                    env.not_utf8.remove(ours);
                    env.vars.insert(ours.to_owned(), value);
                }
                Err(_) => {
                    env.vars.remove(ours);
                    env.not_utf8.insert(ours.to_owned());
                }
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

    /// The prefix every one of our names carries here (`""` for none).
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `name` as the user spells it here: with the prefix.
    pub(crate) fn spelled(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// One variable, by its unprefixed name, with its value and its name as
    /// spelled; a value that is not UTF-8 is refused here, naming it.
    pub(crate) fn setting(&self, variable: &Variable) -> Result<Setting<'_>, ConfigError> {
        if self.not_utf8.contains(variable.name) {
            return Err(ConfigError::NotUtf8 {
                name: self.spelled(variable.name),
            });
        }
        Ok(Setting {
            name: self.spelled(variable.name),
            value: self.vars.get(variable.name).map(String::as_str),
            default: variable.default,
        })
    }

    /// A protocol variable's value from the real environment (never from
    /// `.env`, never prefixed).
    pub(crate) fn protocol(&self, name: &str) -> Option<&str> {
        debug_assert!(PROTOCOL_VARIABLES.contains(&name), "{name}");
        self.protocol.get(name).map(String::as_str)
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

fn is_protocol(name: &str) -> bool {
    PROTOCOL_VARIABLES.contains(&name)
}

/// One variable's name (as spelled), raw value and default, so every parse
/// error can name both.
#[derive(Debug, Clone)]
pub(crate) struct Setting<'a> {
    /// The name as the user spells it (with the prefix).
    pub(crate) name: String,
    /// The value, if set.
    pub(crate) value: Option<&'a str>,
    default: Option<&'static str>,
}

impl Setting<'_> {
    /// Whether the variable is set at all.
    pub(crate) fn is_set(&self) -> bool {
        self.value.is_some()
    }

    /// Parses the value, or the variable's default when unset.
    pub(crate) fn parse<T>(
        &self,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        self.parse_or(self.default.unwrap_or_default(), parse)
    }

    /// Parses the value when set; `None` when unset.
    pub(crate) fn parse_opt<T>(
        &self,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        match self.value {
            None => Ok(None),
            Some(value) => self.parse_or(value, parse).map(Some),
        }
    }

    /// Parses the value, or `default` when unset. An empty value is refused:
    /// `API_PORT=` is far more likely a mistake than a wish for the default.
    pub(crate) fn parse_or<T>(
        &self,
        default: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        let value = self.value.unwrap_or(default);
        parse(value.trim()).map_err(|expected| ConfigError::Invalid {
            name: self.name.clone(),
            value: value.to_owned(),
            expected,
        })
    }
}

/// A port from `min` to 65535.
pub(crate) fn parse_port(value: &str, min: u16, expected: &str) -> Result<u16, String> {
    match value.parse::<u16>() {
        Ok(port) if port >= min => Ok(port),
        _ => Err(expected.to_owned()),
    }
}

/// A boolean, in the spellings people use in `.env` files.
pub(crate) fn parse_bool(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("true or false (also 1/0, yes/no, on/off)".to_owned()),
    }
}

/// A whole number of seconds within `range`.
pub(crate) fn parse_secs(value: &str, range: std::ops::RangeInclusive<u64>) -> Result<u64, String> {
    match value.parse::<u64>() {
        Ok(secs) if range.contains(&secs) => Ok(secs),
        _ => Err(secs_expected(&range)),
    }
}

/// What [`parse_secs`] expects, for the typed setters' messages too.
pub(crate) fn secs_expected(range: &std::ops::RangeInclusive<u64>) -> String {
    format!(
        "a whole number of seconds from {} to {}",
        range.start(),
        range.end()
    )
}

/// A typed duration (from a setter such as `header_read_timeout`) checked
/// against the same bounds as its variable, in seconds; refused naming `setter`.
pub(crate) fn check_duration(
    setter: &str,
    value: std::time::Duration,
    secs: std::ops::RangeInclusive<u64>,
) -> Result<std::time::Duration, ConfigError> {
    let min = std::time::Duration::from_secs(*secs.start());
    let max = std::time::Duration::from_secs(*secs.end());
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError::invalid(
            setter,
            show_duration(value),
            format!("a duration from {}s to {}s", secs.start(), secs.end()),
        ))
    }
}

/// `30s` for whole seconds, else `Duration`'s own `Debug` (`1.5s`, `10ms`).
pub(crate) fn show_duration(value: std::time::Duration) -> String {
    if value.subsec_nanos() == 0 {
        format!("{}s", value.as_secs())
    } else {
        format!("{value:?}")
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

/// A configuration that cannot be used. Exit status 78 (EX_CONFIG).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum ConfigError {
    /// A variable (or a typed setter) has a value outside what it accepts.
    #[error("{name}: {value:?} is not valid (expected {expected})")]
    Invalid {
        /// The variable as the user spelled it (prefix included), or the setter.
        name: String,
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
    /// An owner's own error (a token setting), whose message follows the
    /// same rule: one line naming the setting, never a secret.
    #[error(transparent)]
    Owner(Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl ConfigError {
    pub(crate) fn dotenv(path: &Path, err: dotenvy::Error) -> Self {
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

    /// A typed value refused: `name` is the setter (`header_read_timeout`).
    pub(crate) fn invalid(
        name: &str,
        value: impl Into<String>,
        expected: impl Into<String>,
    ) -> Self {
        ConfigError::Invalid {
            name: name.to_owned(),
            value: value.into(),
            expected: expected.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: Variable = Variable::new("HOST", "0.0.0.0", "address");
    const API_TOKEN: Variable = Variable::unset("API_TOKEN", "token");

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn real(list: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        list.iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    #[test]
    fn real_variables_win_over_dotenv() {
        let env = Environment::new(pairs(&[("HOST", "::1")]), real(&[("HOST", "127.0.0.1")]));
        assert_eq!(env.setting(&HOST).unwrap().value, Some("127.0.0.1"));
        assert_eq!(env.setting(&API_TOKEN).unwrap().value, None);
    }

    #[test]
    fn a_prefix_reads_prefixed_names_and_ignores_bare_ones() {
        let env = Environment::with_prefix(
            "APP_",
            pairs(&[("APP_API_TOKEN", "from-dotenv"), ("HOST", "::1")]),
            real(&[
                ("APP_HOST", "127.0.0.1"),
                ("API_TOKEN", "the host's own"),
                ("NOTIFY_SOCKET", "/run/notify"),
                ("APP_NOTIFY_SOCKET", "/elsewhere"),
            ]),
        );
        let host = env.setting(&HOST).unwrap();
        assert_eq!(
            (host.name.as_str(), host.value),
            ("APP_HOST", Some("127.0.0.1"))
        );
        assert_eq!(env.setting(&API_TOKEN).unwrap().value, Some("from-dotenv"));
        // Protocol variables are never prefixed.
        assert_eq!(env.protocol("NOTIFY_SOCKET"), Some("/run/notify"));
        // Errors name the variable as the user spelled it.
        let err = env
            .setting(&HOST)
            .unwrap()
            .parse_or("", |_| Err::<(), _>("an address".to_owned()))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "APP_HOST: \"127.0.0.1\" is not valid (expected an address)"
        );
        let bare = Environment::with_prefix("APP_", [], real(&[("HOST", "::1")]));
        assert_eq!(bare.setting(&HOST).unwrap().value, None);
    }

    #[test]
    fn protocol_variables_in_dotenv_are_ignored_and_remembered() {
        let env = Environment::new(
            pairs(&[
                ("NOTIFY_SOCKET", "/run/x"),
                ("LISTEN_FDS", "1"),
                ("CREDENTIALS_DIRECTORY", "/tmp"),
                ("HOST", "::1"),
            ]),
            real(&[("WATCHDOG_USEC", "1000")]),
        );
        assert_eq!(env.protocol("NOTIFY_SOCKET"), None);
        assert_eq!(env.protocol("LISTEN_FDS"), None);
        assert_eq!(env.protocol("CREDENTIALS_DIRECTORY"), None);
        assert_eq!(env.protocol("WATCHDOG_USEC"), Some("1000"));
        assert_eq!(env.setting(&HOST).unwrap().value, Some("::1"));
        assert_eq!(
            env.ignored(),
            ["NOTIFY_SOCKET", "LISTEN_FDS", "CREDENTIALS_DIRECTORY"]
        );
    }

    #[cfg(unix)]
    #[test]
    fn non_utf8_values_are_refused_when_read() {
        use std::os::unix::ffi::OsStringExt;
        let bad = || OsString::from_vec(vec![0xff, 0xfe]);
        let env = Environment::with_prefix(
            "APP_",
            [],
            [
                (OsString::from("SOMETHING_ELSE"), bad()),
                (OsString::from("APP_HOST"), bad()),
            ],
        );
        assert_eq!(
            env.setting(&HOST).unwrap_err().to_string(),
            "APP_HOST: the value is not valid UTF-8 (expected plain text)"
        );
        assert!(env.setting(&API_TOKEN).is_ok());
    }

    #[test]
    fn booleans_accept_common_spellings() {
        for (value, expected) in [("TRUE", true), ("1", true), ("on", true), ("No", false)] {
            assert_eq!(parse_bool(value), Ok(expected), "{value}");
        }
        assert!(parse_bool("maybe").is_err());
    }

    #[test]
    fn a_secret_line_is_never_quoted() {
        const TOKEN: &str = "tok-0123456789abcdef";
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

    #[cfg(unix)]
    #[test]
    fn a_dotenv_that_is_not_a_regular_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("portkeeper-settings-{}", std::process::id()));
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
