//! Logging: journald when stderr is the journal, else lines (text or JSON) on stderr.
//!
//! Under systemd, `JOURNAL_STREAM` holds the `device:inode` of the stream
//! that connects stderr to the journal. When it matches what fd 2 really is
//! (systemd.exec(5) asks programs to compare: stderr may have been
//! redirected since), events go to journald's native socket through
//! `tracing-journald`, one journal entry per event: the message is `MESSAGE`,
//! the level is `PRIORITY` (ERROR 3, WARN 4, INFO 5 "notice", DEBUG 6,
//! TRACE 7: the crate's default mapping), `SYSLOG_IDENTIFIER` is the
//! executable's name, and every event field becomes a journal field named in
//! upper case with an `F_` prefix. So the start-up event's `source`,
//! `address`, `port`, `pid`, `fd` and `fd_name` arrive as `F_SOURCE`,
//! `F_ADDRESS`, ..., and `journalctl -u portkeeper F_SOURCE=systemd` finds
//! them. The prefix keeps our names from colliding with journald's own fields
//! (`PRIORITY`, `MESSAGE`).
//!
//! Anywhere else, and whenever the journal cannot be reached, `tracing-subscriber`'s
//! `fmt` layer writes to stderr: readable lines by default (`LOG_FORMAT=text`),
//! one JSON object per line with `LOG_FORMAT=json`.
//!
//! The filter is `tracing-subscriber`'s `EnvFilter`, so `RUST_LOG` has the
//! syntax every Rust user knows, span filters included. Logging is advice: a
//! directive that does not parse is left out with a warning, never a reason
//! to stop, and a program that embeds portkeeper and has installed its own
//! global subscriber keeps it.

use std::io::IsTerminal;

use tracing::level_filters::LevelFilter;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::Directive;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::settings::{ConfigError, Environment, Variable, protocol_var};

const LOG_LEVEL: Variable = Variable::new(
    "LOG_LEVEL",
    "INFO",
    "trace, debug, info, warn or error; `RUST_LOG` wins when set",
);
const LOG_FORMAT: Variable = Variable::new(
    "LOG_FORMAT",
    "text",
    "`text` lines, or `json`: one object per line",
);
const RUST_LOG: Variable = Variable::unset(
    "RUST_LOG",
    "`EnvFilter` directives such as `warn,portkeeper=debug`; a typo is a warning",
);

/// How log lines on stderr are written (`LOG_FORMAT`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum LogFormat {
    /// Readable lines: time, level, target, message, `key=value` fields.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// What to log and how: the validated `LOG_LEVEL`, `RUST_LOG` and `LOG_FORMAT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogSettings {
    /// The level from `LOG_LEVEL` (or `DEBUG=true`), used when `RUST_LOG`
    /// is unset or holds no directive that parses.
    pub(crate) level: LevelFilter,
    /// `RUST_LOG` as given, in `EnvFilter` syntax; it wins over `level`.
    pub(crate) directives: Option<String>,
    /// How lines on stderr are written.
    pub(crate) format: LogFormat,
}

impl LogSettings {
    /// Logging's variables, in the order of the documentation.
    pub(crate) const VARIABLES: &'static [Variable] = &[LOG_LEVEL, LOG_FORMAT, RUST_LOG];

    /// Reads and checks `LOG_LEVEL` and `LOG_FORMAT`, and keeps `RUST_LOG`.
    /// With `debug` (`DEBUG=true`) the level is debug unless `LOG_LEVEL` says otherwise.
    pub(crate) fn from_env(env: &Environment, debug: bool) -> Result<Self, ConfigError> {
        let level = env.setting(&LOG_LEVEL)?;
        let level = if debug {
            level.parse_or("debug", parse_log_level)?
        } else {
            level.parse(parse_log_level)?
        };
        Ok(LogSettings {
            level,
            // Not validated here: a directive that does not parse costs a
            // warning once logging is set up (`init`), never the start.
            directives: env
                .setting(&RUST_LOG)?
                .value
                .filter(|value| !value.trim().is_empty())
                .map(str::to_owned),
            format: env.setting(&LOG_FORMAT)?.parse(parse_log_format)?,
        })
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

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            level: LevelFilter::INFO,
            directives: None,
            format: LogFormat::Text,
        }
    }
}

/// Where log events go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogTarget {
    /// Structured entries in the systemd journal.
    Journald,
    /// Lines on stderr, in the configured [`LogFormat`].
    Stderr,
    /// A global subscriber was already installed (by a program that embeds
    /// portkeeper); it was kept, and receives portkeeper's events.
    Existing,
}

/// Installs the global subscriber and returns where events go.
///
/// Reads `JOURNAL_STREAM` from the real process environment. The journal's
/// socket is missing in containers and CI even under systemd, and a missing
/// journal must never stop the server, so that case falls back to stderr
/// with a warning.
pub(crate) fn init(settings: &LogSettings) -> LogTarget {
    let (filter, rejected) = filter(settings);
    let journal_stream = protocol_var("JOURNAL_STREAM");
    let stderr_is_journal = journal_stream
        .as_deref()
        .is_some_and(stderr_is_journal_stream);
    let (journald, journal_error) = match stderr_is_journal.then(tracing_journald::layer) {
        Some(Ok(layer)) => (Some(layer), None),
        Some(Err(err)) => (None, Some(err)),
        None => (None, None),
    };
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match (journald, settings.format) {
        (Some(layer), _) => registry
            .with(layer)
            .try_init()
            .map(|()| LogTarget::Journald),
        (None, LogFormat::Json) => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init()
            .map(|()| LogTarget::Stderr),
        (None, LogFormat::Text) => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            .try_init()
            .map(|()| LogTarget::Stderr),
    };
    let target = installed.unwrap_or_else(|_| {
        tracing::debug!("a global subscriber is already installed; portkeeper logs through it");
        LogTarget::Existing
    });
    if let Some(err) = journal_error {
        tracing::warn!(error = %err, "journald is not reachable; logging to stderr");
    } else if let Some(value) = journal_stream.filter(|_| !stderr_is_journal) {
        tracing::debug!(
            JOURNAL_STREAM = value,
            "stderr is not the stream JOURNAL_STREAM names (it was redirected); logging to stderr"
        );
    }
    for (directive, error) in rejected {
        tracing::warn!(
            directive,
            error,
            "RUST_LOG: ignoring a directive that does not parse (expected EnvFilter syntax such as info,portkeeper=debug,tower=warn)"
        );
    }
    target
}

/// The `EnvFilter` for `settings`, and the `RUST_LOG` directives left out
/// because they do not parse (each with the parser's reason).
///
/// `RUST_LOG` is split on commas as `EnvFilter` itself splits it; the
/// directives are parsed one by one so that a typo costs that directive only.
fn filter(settings: &LogSettings) -> (EnvFilter, Vec<(String, String)>) {
    let mut valid = Vec::new();
    let mut rejected = Vec::new();
    let directives = settings.directives.as_deref().unwrap_or_default();
    for text in directives
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        match text.parse::<Directive>() {
            Ok(_) => valid.push(text),
            Err(err) => rejected.push((text.to_owned(), err.to_string())),
        }
    }
    // The default directive applies only when no directive is valid.
    let mut filter = EnvFilter::builder()
        .with_default_directive(settings.level.into())
        .parse_lossy(valid.join(","));
    if !rejected.is_empty() {
        // The warnings about the typo must be seen even when the valid
        // directives name other crates only.
        if let Ok(ours) = format!("{}=warn", module_path!()).parse::<Directive>() {
            filter = filter.add_directive(ours);
        }
    }
    (filter, rejected)
}

/// The `sd-daemon(3)` prefix that gives a line on stderr journal priority
/// `err`: systemd reads a leading `<3>` on a line of the journal stream as
/// the priority (`SyslogLevelPrefix=`, on by default) and strips it.
pub(crate) const ERR_PREFIX: &str = "<3>";

/// Whether fd 2 is the stream `JOURNAL_STREAM` (`device:inode`, in decimal)
/// names, as `systemd.exec(5)` advises to check: a process that inherited the
/// variable but writes elsewhere (a terminal, a pipe) gets `false`.
#[cfg(unix)]
pub(crate) fn stderr_is_journal_stream(value: &str) -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some((device, inode)) = value.split_once(':') else {
        return false;
    };
    let (Ok(device), Ok(inode)) = (device.parse::<u64>(), inode.parse::<u64>()) else {
        return false;
    };
    // fstat of a duplicate of fd 2: std has no fstat on a borrowed fd, and
    // /proc may not be mounted.
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    std::fs::File::from(fd)
        .metadata()
        .is_ok_and(|meta| meta.dev() == device && meta.ino() == inode)
}

#[cfg(not(unix))]
pub(crate) fn stderr_is_journal_stream(_: &str) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(level: LevelFilter, directives: Option<&str>) -> LogSettings {
        LogSettings {
            level,
            directives: directives.map(str::to_owned),
            format: LogFormat::Text,
        }
    }

    fn from_env(pairs: &[(&str, &str)], debug: bool) -> Result<LogSettings, ConfigError> {
        let env = Environment::new(
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())),
            [],
        );
        LogSettings::from_env(&env, debug)
    }

    #[test]
    fn log_level_in_any_case_and_rust_log_kept_for_the_filter() {
        let level = |pairs: &[(&str, &str)], debug| from_env(pairs, debug).unwrap().level;
        assert_eq!(from_env(&[], false).unwrap(), LogSettings::default());
        assert_eq!(level(&[("LOG_LEVEL", "DEBUG")], false), LevelFilter::DEBUG);
        assert_eq!(level(&[("LOG_LEVEL", "Warning")], false), LevelFilter::WARN);
        assert_eq!(
            level(&[("LOG_LEVEL", "critical")], false),
            LevelFilter::ERROR
        );
        assert_eq!(level(&[], true), LevelFilter::DEBUG);
        assert_eq!(level(&[("LOG_LEVEL", "warn")], true), LevelFilter::WARN);
        let refused = from_env(&[("LOG_LEVEL", "loud")], false).unwrap_err();
        assert!(refused.to_string().starts_with("LOG_LEVEL: \"loud\""));
        // RUST_LOG is EnvFilter's to judge, at logging set-up, as a warning.
        let kept = from_env(
            &[("RUST_LOG", "warn,tower=trce,portkeeper[conn]=debug")],
            false,
        );
        assert_eq!(
            kept.unwrap().directives.as_deref(),
            Some("warn,tower=trce,portkeeper[conn]=debug")
        );
        assert_eq!(
            from_env(&[("RUST_LOG", " ")], false).unwrap().directives,
            None
        );
    }

    #[test]
    fn log_format_is_text_or_json() {
        let format = |value| from_env(&[("LOG_FORMAT", value)], false).unwrap().format;
        assert_eq!(format("text"), LogFormat::Text);
        assert_eq!(format("JSON"), LogFormat::Json);
        assert_eq!(
            from_env(&[("LOG_FORMAT", "yaml")], false)
                .unwrap_err()
                .to_string(),
            "LOG_FORMAT: \"yaml\" is not valid (expected text or json)"
        );
    }

    #[test]
    fn a_bad_directive_is_left_out_and_the_rest_kept() {
        let (built, rejected) = filter(&settings(
            LevelFilter::ERROR,
            Some("warn,tower=trce,portkeeper[conn]=debug"),
        ));
        let shown = built.to_string();
        assert!(shown.contains("portkeeper[conn]=debug"), "{shown}");
        assert!(shown.contains("warn"), "{shown}");
        assert!(!shown.contains("tower"), "{shown}");
        assert_eq!(rejected.len(), 1, "{rejected:?}");
        assert_eq!(rejected[0].0, "tower=trce");
    }

    #[test]
    fn the_level_applies_when_rust_log_is_unset_or_all_wrong() {
        let (built, rejected) = filter(&settings(LevelFilter::DEBUG, None));
        assert_eq!(built.to_string(), "debug");
        assert!(rejected.is_empty());
        let (built, rejected) = filter(&settings(LevelFilter::ERROR, Some("portkeeper=loud")));
        assert_eq!(built.to_string(), "portkeeper::logging=warn,error");
        assert_eq!(rejected.len(), 1);
        let (built, _) = filter(&settings(LevelFilter::WARN, Some("portkeeper=trace")));
        assert_eq!(built.to_string(), "portkeeper=trace");
    }

    #[test]
    fn the_warning_about_a_typo_is_let_through() {
        let (built, rejected) =
            filter(&settings(LevelFilter::INFO, Some("hyper=debug,tower=trce")));
        assert_eq!(rejected.len(), 1);
        let shown = built.to_string();
        assert!(shown.contains("hyper=debug"), "{shown}");
        assert!(shown.contains("portkeeper::logging=warn"), "{shown}");
    }

    /// A program that embeds portkeeper and set up its own logging keeps it.
    #[test]
    fn an_installed_global_subscriber_is_kept_without_a_panic() {
        // The only test in this binary that installs a global subscriber.
        tracing_subscriber::registry()
            .try_init()
            .expect("no global subscriber yet");
        assert_eq!(init(&LogSettings::default()), LogTarget::Existing);
        // And again, as a second `portkeeper::run` in the same process would.
        assert_eq!(init(&LogSettings::default()), LogTarget::Existing);
    }

    #[cfg(unix)]
    #[test]
    fn journal_stream_must_name_stderr() {
        assert!(!stderr_is_journal_stream("1:1"));
        assert!(!stderr_is_journal_stream("garbage"));
        assert!(!stderr_is_journal_stream(""));
        use std::os::fd::AsFd;
        use std::os::unix::fs::MetadataExt;
        let fd = std::io::stderr().as_fd().try_clone_to_owned().unwrap();
        let meta = std::fs::File::from(fd).metadata().unwrap();
        let value = format!("{}:{}", meta.dev(), meta.ino());
        assert!(stderr_is_journal_stream(&value), "{value}");
    }
}
