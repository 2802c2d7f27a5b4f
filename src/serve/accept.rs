//! The pause after accept errors such as EMFILE: short, growing while the
//! errors last, and logged once per spell rather than once per error; and
//! the cap on open connections (`MAX_CONNECTIONS`), at which the accept
//! loops wait, also logged once per spell.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;

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

/// The cap on open connections (`MAX_CONNECTIONS`), shared by every accept
/// loop: each accepted connection holds a permit until its stream is dropped
/// (also after an upgrade). At the cap the loops stop accepting, so new
/// connections wait in the kernel's queue (and its backlog bounds them)
/// rather than being accepted and closed, and accepting resumes when a
/// connection ends.
pub(super) struct ConnectionLimit {
    /// `None`: no cap (`MAX_CONNECTIONS=0`).
    permits: Option<Arc<Semaphore>>,
    cap: usize,
    /// Whether a spell at the cap is on: the one load the common path pays.
    in_spell: AtomicBool,
    spell: Mutex<Option<LimitSpell>>,
    metrics: Arc<Metrics>,
}

#[derive(Debug)]
struct LimitSpell {
    began: std::time::Instant,
    last_reached: std::time::Instant,
    times: u64,
}

/// What [`ConnectionLimit::try_admit`] says.
pub(super) enum Admit {
    /// Below the cap (or no cap): the connection's permit, if there is a cap.
    Now(Option<OwnedSemaphorePermit>),
    /// At the cap: wait for a connection to close.
    Wait(Arc<Semaphore>),
}

impl ConnectionLimit {
    /// A cap of `cap` open connections; 0 for none.
    pub(super) fn new(cap: usize, metrics: Arc<Metrics>) -> Self {
        metrics.set_max_connections(cap);
        ConnectionLimit {
            permits: (cap > 0).then(|| Arc::new(Semaphore::new(cap))),
            cap,
            in_spell: AtomicBool::new(false),
            spell: Mutex::new(None),
            metrics,
        }
    }

    /// A permit for one more connection, or where to wait for one. Reaching
    /// the cap is counted each time, and logged once per spell.
    pub(super) fn try_admit(&self) -> Admit {
        let Some(permits) = &self.permits else {
            return Admit::Now(None);
        };
        match Arc::clone(permits).try_acquire_owned() {
            Ok(permit) => {
                if self.in_spell.load(Ordering::Relaxed) {
                    self.maybe_end_spell();
                }
                Admit::Now(Some(permit))
            }
            Err(_) => {
                self.reached();
                Admit::Wait(Arc::clone(permits))
            }
        }
    }

    #[cold]
    fn reached(&self) {
        self.metrics.connection_limit_reached();
        let now = std::time::Instant::now();
        let mut spell = self.spell.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *spell {
            Some(spell) => {
                spell.times += 1;
                spell.last_reached = now;
            }
            None => {
                tracing::warn!(
                    max_connections = self.cap,
                    "MAX_CONNECTIONS reached: not accepting until a connection closes"
                );
                *spell = Some(LimitSpell {
                    began: now,
                    last_reached: now,
                    times: 1,
                });
                self.in_spell.store(true, Ordering::Relaxed);
            }
        }
    }

    /// A spell at the cap is over at the first connection admitted at once
    /// [`ACCEPT_SPELL_QUIET`] after the cap was last reached.
    #[cold]
    fn maybe_end_spell(&self) {
        let mut spell = self.spell.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(over) = spell.as_ref() {
            if over.last_reached.elapsed() >= ACCEPT_SPELL_QUIET {
                let lasted_ms = over.last_reached.duration_since(over.began).as_millis();
                tracing::info!(
                    times = over.times,
                    lasted_ms = u64::try_from(lasted_ms).unwrap_or(u64::MAX),
                    "below MAX_CONNECTIONS again"
                );
                *spell = None;
                self.in_spell.store(false, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_connection_limit_admits_up_to_its_cap() {
        let metrics = Arc::new(Metrics::new([]));
        let limit = ConnectionLimit::new(2, Arc::clone(&metrics));
        let admit = || match limit.try_admit() {
            Admit::Now(permit) => Some(permit.expect("a cap gives permits")),
            Admit::Wait(_) => None,
        };
        let (first, _second) = (admit().unwrap(), admit().unwrap());
        assert!(
            admit().is_none() && admit().is_none(),
            "admitted above the cap"
        );
        let text = metrics.render();
        assert!(text.contains("portkeeper_max_connections 2\n"), "{text}");
        assert!(
            text.contains("portkeeper_connection_limit_reached_total 2\n"),
            "{text}"
        );
        drop(first);
        assert!(admit().is_some(), "a closed connection frees its place");
        let unlimited = ConnectionLimit::new(0, metrics);
        assert!(matches!(unlimited.try_admit(), Admit::Now(None)));
    }

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
