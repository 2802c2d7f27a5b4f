//! Events as text lines on stderr, in `tracing-subscriber`'s `fmt` format:
//! `2026-11-25T19:29:50.288865Z  INFO message key=value ...`.
//!
//! Why not `fmt` itself: it is built on `tracing-subscriber`'s span
//! `Registry`; with it, start-up took about 40,000 more instructions and 9
//! more page faults before the first request could be served (under
//! callgrind, and /proc/PID/stat). This server records no spans, so a
//! subscriber that only writes events does the same job.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Writes each event as one line on stderr; spans are given ids and ignored.
#[derive(Debug)]
pub(super) struct StderrLines {
    /// Colour the level and dim the time, for a terminal.
    ansi: bool,
    next_span_id: AtomicU64,
}

impl StderrLines {
    pub(super) fn new(ansi: bool) -> Self {
        StderrLines {
            ansi,
            next_span_id: AtomicU64::new(1),
        }
    }
}

impl Subscriber for StderrLines {
    /// The filter layered on top (`Targets`) decides.
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    /// Dependencies may open spans: each gets an id of its own, as the
    /// `Subscriber` contract asks, and is not shown.
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(self.next_span_id.fetch_add(1, Ordering::Relaxed))
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let line = format_line(SystemTime::now(), event, self.ansi);
        // One write per line, so lines from different threads never interleave.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

fn format_line(now: SystemTime, event: &Event<'_>, ansi: bool) -> String {
    let mut line = String::with_capacity(160);
    let level = *event.metadata().level();
    let (dim, colour, reset) = if ansi {
        ("\x1b[2m", level_colour(level), "\x1b[0m")
    } else {
        ("", "", "")
    };
    let _ = write!(
        line,
        "{dim}{}{reset} {colour}{level:>5}{reset} ",
        Timestamp(now)
    );
    let mut fields = Fields {
        line: &mut line,
        separator_due: false,
        ansi,
    };
    // The message first, then the other fields in order, as `fmt` does.
    event.record(&mut MessageOnly(&mut fields));
    event.record(&mut fields);
    line.push('\n');
    line
}

fn level_colour(level: Level) -> &'static str {
    match level {
        Level::TRACE => "\x1b[35m",
        Level::DEBUG => "\x1b[34m",
        Level::INFO => "\x1b[32m",
        Level::WARN => "\x1b[33m",
        Level::ERROR => "\x1b[31m",
    }
}

struct Fields<'a> {
    line: &'a mut String,
    /// Something was written after the level: the next field needs a space.
    separator_due: bool,
    ansi: bool,
}

/// Writes the `message` field only.
struct MessageOnly<'a, 'b>(&'a mut Fields<'b>);

impl Visit for MessageOnly<'_, '_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(Escaped(self.0.line), "{value:?}");
            self.0.separator_due = true;
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            let _ = Escaped(self.0.line).write_str(value);
            self.0.separator_due = true;
        }
    }
}

/// Writes every field but `message` as `name=value`: strings quoted, other
/// values in their `Debug` form (`%` fields arrive as `Display`).
impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let name = field.name();
        // `log` records bridged into tracing carry their origin in `log.*` fields.
        if name == "message" || name.starts_with("log.") {
            return;
        }
        if self.separator_due {
            self.line.push(' ');
        }
        self.separator_due = true;
        if self.ansi {
            let _ = write!(self.line, "\x1b[3m{name}\x1b[0m=");
        } else {
            let _ = write!(self.line, "{name}=");
        }
        let _ = write!(Escaped(self.line), "{value:?}");
    }
}

/// Writes through to the line with control characters escaped, so that no
/// value (a request path in a debug line, say) can break the line or send
/// escape sequences to a terminal.
struct Escaped<'a>(&'a mut String);

impl std::fmt::Write for Escaped<'_> {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        // Most text has no control character: copy it whole. (0xC2 starts
        // the two-byte encodings of U+0080..U+00BF, which hold the C1 controls.)
        if !text.bytes().any(|b| b < 0x20 || b == 0x7f || b == 0xc2) {
            self.0.push_str(text);
            return Ok(());
        }
        for c in text.chars() {
            if c.is_control() {
                let _ = write!(self.0, "{}", c.escape_default());
            } else {
                self.0.push(c);
            }
        }
        Ok(())
    }
}

/// RFC 3339 in UTC with microseconds: `2026-11-25T19:29:50.288865Z`.
struct Timestamp(SystemTime);

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A clock set before 1970 shows as the epoch rather than failing.
        let since_epoch = self.0.duration_since(UNIX_EPOCH).unwrap_or_default();
        let seconds = since_epoch.as_secs();
        let (year, month, day) = civil_from_days(seconds / 86_400);
        let in_day = seconds % 86_400;
        // Digit by digit: `write!` with padded numbers costs about ten times
        // as much, on every line.
        let mut text = *b"0000-00-00T00:00:00.000000Z";
        put_digits(&mut text[0..4], year);
        put_digits(&mut text[5..7], month);
        put_digits(&mut text[8..10], day);
        put_digits(&mut text[11..13], in_day / 3600);
        put_digits(&mut text[14..16], in_day / 60 % 60);
        put_digits(&mut text[17..19], in_day % 60);
        put_digits(&mut text[20..26], u64::from(since_epoch.subsec_micros()));
        f.write_str(std::str::from_utf8(&text).map_err(|_| std::fmt::Error)?)
    }
}

/// Writes the last `digits.len()` decimal digits of `value`, zero-padded.
fn put_digits(digits: &mut [u8], mut value: u64) {
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// (year, month, day) of the proleptic Gregorian calendar, `days` after
/// 1970-01-01. Howard Hinnant's `civil_from_days`, for days on or after the epoch.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153; // March = 0
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(seconds: u64, micros: u32) -> String {
        let time = UNIX_EPOCH + Duration::new(seconds, micros * 1000);
        Timestamp(time).to_string()
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        // `date -u -d @951782400`: the leap day of a year divisible by 400.
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
        assert_eq!(at(1_798_227_000, 288_865), "2026-12-25T19:30:00.288865Z");
        assert_eq!(at(4_107_542_399, 999_999), "2100-02-28T23:59:59.999999Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000000Z");
    }

    #[test]
    fn every_day_follows_the_one_before() {
        let mut previous = civil_from_days(0);
        for days in 1..200_000 {
            let (year, month, day) = civil_from_days(days);
            let next_day = (previous.0, previous.1, previous.2 + 1);
            let next_month = (previous.0, previous.1 + 1, 1);
            let next_year = (previous.0 + 1, 1, 1);
            assert!(
                [next_day, next_month, next_year].contains(&(year, month, day)),
                "{previous:?} -> {:?}",
                (year, month, day)
            );
            previous = (year, month, day);
        }
    }

    /// Formats the events logged in `log` with this subscriber, without ANSI.
    fn lines_of(log: impl FnOnce()) -> Vec<String> {
        let captured = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let subscriber = Capture(std::sync::Arc::clone(&captured));
        tracing::subscriber::with_default(subscriber, log);
        captured.lock().unwrap().clone()
    }

    /// `StderrLines` writing to a vector instead of stderr.
    struct Capture(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

    impl Subscriber for Capture {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let line = format_line(UNIX_EPOCH, event, false);
            self.0.lock().unwrap().push(line);
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    #[test]
    fn lines_read_like_tracing_subscribers_fmt() {
        let address: std::net::SocketAddr = "127.0.0.1:5050".parse().unwrap();
        let lines = lines_of(|| {
            tracing::info!(source = "fixed", %address, port = 5050, fd = None::<i32>, "serving {address}");
            tracing::warn!("no fields");
            tracing::error!(attempt = 2, ok = false);
        });
        assert_eq!(
            lines,
            [
                "1970-01-01T00:00:00.000000Z  INFO serving 127.0.0.1:5050 source=\"fixed\" address=127.0.0.1:5050 port=5050\n",
                "1970-01-01T00:00:00.000000Z  WARN no fields\n",
                "1970-01-01T00:00:00.000000Z ERROR attempt=2 ok=false\n",
            ]
        );
    }

    #[test]
    fn control_characters_cannot_break_a_line_or_reach_the_terminal() {
        let lines = lines_of(|| {
            let path = "/a\nb\x1b[31m";
            tracing::debug!(path = %path, "got {path}");
        });
        assert_eq!(lines.len(), 1);
        let line = &lines[0];
        assert_eq!(line.matches('\n').count(), 1, "{line:?}");
        assert!(!line.contains('\x1b'), "{line:?}");
        assert!(line.contains(r"got /a\nb\u{1b}[31m"), "{line:?}");
        // A C1 control (U+009B, a one-character escape sequence on some
        // terminals) is escaped too; other non-ASCII text passes as it is.
        let lines = lines_of(|| tracing::warn!("ä\u{9b}31m é"));
        assert!(
            lines[0].ends_with(" WARN ä\\u{9b}31m é\n"),
            "{:?}",
            lines[0]
        );
    }
}
