//! Process-wide signal dispositions, held only while a server serves.
//!
//! tokio installs a signal's handler for the rest of the process's life:
//! once `serve` is over, a SIGINT would still be caught, and go nowhere, so
//! Ctrl-C would no longer stop the program that embedded us. So each signal
//! we handle also gets, once per process, signal-hook's "conditional default"
//! action beside tokio's. Its flag is on whenever no server holds the signal:
//! the signal then does what it did before portkeeper was there (SIGINT,
//! SIGTERM, SIGHUP and SIGUSR2 terminate), unless it was ignored when first
//! held (`nohup`, a background job's SIGINT), which stays ignored.
//!
//! A program that handles these signals itself turns ours off
//! (`Server::signals(false)`, `Server::upgrades(false)`): then nothing here
//! runs and its handlers are the only ones.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

pub(crate) use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGTERM, SIGUSR2};

/// The signals portkeeper may handle, each with its process-wide state.
const HANDLED: [i32; 4] = [SIGTERM, SIGINT, SIGHUP, SIGUSR2];

/// One signal's process-wide state.
struct Slot {
    /// How many servers hold the signal now.
    holders: Mutex<usize>,
    /// On: the signal takes its default action (read in the signal handler).
    default_action: Arc<AtomicBool>,
    /// Set at the first hold: whether the signal was ignored before we
    /// touched it, and whether the conditional default could be installed.
    first: OnceLock<First>,
}

#[derive(Debug, Clone, Copy)]
struct First {
    ignored: bool,
    restorable: bool,
}

fn slot(signal: i32) -> &'static Slot {
    static SLOTS: OnceLock<[Slot; 4]> = OnceLock::new();
    let slots = SLOTS.get_or_init(|| {
        std::array::from_fn(|_| Slot {
            holders: Mutex::new(0),
            default_action: Arc::new(AtomicBool::new(false)),
            first: OnceLock::new(),
        })
    });
    let index = HANDLED
        .iter()
        .position(|&s| s == signal)
        .expect("only the signals in HANDLED are held");
    &slots[index]
}

/// Signals held by one server; dropping it gives them back.
#[derive(Debug)]
pub(crate) struct Held {
    signals: Vec<i32>,
}

impl Held {
    /// Holds `signals` for one server: call it before installing tokio's
    /// handlers for them, so that an ignored signal is seen as ignored.
    pub(crate) fn new(signals: &[i32]) -> Self {
        for &signal in signals {
            let slot = slot(signal);
            slot.first.get_or_init(|| {
                let ignored = ignored_now(signal);
                let restorable = match signal_hook::flag::register_conditional_default(
                    signal,
                    Arc::clone(&slot.default_action),
                ) {
                    Ok(_) => true,
                    Err(err) => {
                        tracing::warn!(error = %err, signal, "cannot arrange for the signal's default action once serving ends");
                        false
                    }
                };
                First {
                    ignored,
                    restorable,
                }
            });
            let mut holders = slot.holders.lock().unwrap_or_else(|e| e.into_inner());
            *holders += 1;
            slot.default_action.store(false, Ordering::SeqCst);
        }
        Held {
            signals: signals.to_vec(),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        for &signal in &self.signals {
            let slot = slot(signal);
            let mut holders = slot.holders.lock().unwrap_or_else(|e| e.into_inner());
            *holders = holders.saturating_sub(1);
            let back_to_default = *holders == 0
                && slot
                    .first
                    .get()
                    .is_some_and(|first| first.restorable && !first.ignored);
            if back_to_default {
                slot.default_action.store(true, Ordering::SeqCst);
            }
        }
    }
}

/// Whether `signal` was ignored before portkeeper first held it (`nohup`
/// for SIGHUP); before the first hold, whether it is ignored now.
pub(crate) fn was_ignored(signal: i32) -> bool {
    match slot(signal).first.get() {
        Some(first) => first.ignored,
        None => ignored_now(signal),
    }
}

/// Whether `signal` is ignored now, from the `SigIgn` mask of
/// `/proc/self/status` (bit 0 is signal 1). Without `/proc`: not ignored.
/// Read once for all signals: what is asked is the state before we touched
/// any of them, and a start-up is a few milliseconds.
fn ignored_now(signal: i32) -> bool {
    static IGNORED: OnceLock<u64> = OnceLock::new();
    let mask = IGNORED.get_or_init(|| {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                let mask = status.lines().find_map(|l| l.strip_prefix("SigIgn:"))?;
                u64::from_str_radix(mask.trim(), 16).ok()
            })
            .unwrap_or(0)
    });
    mask & (1 << (signal - 1)) != 0
}
