//! The pause after accept errors such as EMFILE: short, growing while the
//! errors last, and logged once per spell rather than once per error.

use std::time::Duration;

/// The first pause after an accept error such as EMFILE, doubled while the
/// error lasts, up to [`ACCEPT_BACKOFF_MAX`]: short, so the server answers
/// again as soon as descriptors are free.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(1);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_millis(100);

/// The pause after accept errors (EMFILE and friends): growing while they
/// last, with one log line when a spell of errors begins and one when it is
/// over. A spell is over at the first success [`ACCEPT_SPELL_QUIET`] after its
/// last error: while descriptors trickle free, successes and errors alternate.
#[derive(Debug, Default)]
pub(super) struct AcceptBackoff {
    /// Zero after a success, so the next error pauses the least.
    pause: Duration,
    spell: Option<ErrorSpell>,
}

#[derive(Debug)]
struct ErrorSpell {
    began: std::time::Instant,
    last_error: std::time::Instant,
    errors: u64,
}

/// How long accepts must go without an error for a spell of errors to be over.
const ACCEPT_SPELL_QUIET: Duration = Duration::from_secs(1);

impl AcceptBackoff {
    pub(super) fn failed(&mut self, err: &std::io::Error) -> Duration {
        let now = std::time::Instant::now();
        match &mut self.spell {
            Some(spell) => {
                spell.errors += 1;
                spell.last_error = now;
            }
            None => {
                tracing::error!(error = %err, "accept failed; retrying with a short backoff until it succeeds");
                self.spell = Some(ErrorSpell {
                    began: now,
                    last_error: now,
                    errors: 1,
                });
            }
        }
        self.pause = if self.pause.is_zero() {
            ACCEPT_BACKOFF_MIN
        } else {
            (self.pause * 2).min(ACCEPT_BACKOFF_MAX)
        };
        self.pause
    }

    pub(super) fn succeeded(&mut self) {
        self.pause = Duration::ZERO;
        let Some(spell) = &self.spell else { return };
        if spell.last_error.elapsed() >= ACCEPT_SPELL_QUIET {
            let lasted_ms = spell.last_error.duration_since(spell.began).as_millis();
            tracing::warn!(
                errors = spell.errors,
                lasted_ms = u64::try_from(lasted_ms).unwrap_or(u64::MAX),
                "accepting connections again"
            );
            self.spell = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_backoff_grows_to_its_cap_and_resets() {
        let mut backoff = AcceptBackoff::default();
        let err = std::io::Error::from_raw_os_error(24); // EMFILE
        let pauses: Vec<Duration> = (0..10).map(|_| backoff.failed(&err)).collect();
        assert_eq!(pauses[0], ACCEPT_BACKOFF_MIN);
        assert_eq!(pauses[1], ACCEPT_BACKOFF_MIN * 2);
        assert!(pauses.windows(2).all(|w| w[0] <= w[1]), "{pauses:?}");
        assert_eq!(*pauses.last().unwrap(), ACCEPT_BACKOFF_MAX);
        backoff.succeeded();
        assert_eq!(backoff.failed(&err), ACCEPT_BACKOFF_MIN);
        // Within a spell, a success resets the pause but not the spell.
        assert_eq!(backoff.spell.as_ref().map(|s| s.errors), Some(11));
    }
}
