//! The stop's settings: how long to keep serving before the drain, and how long the drain may take.

use std::ops::RangeInclusive;
use std::time::Duration;

use crate::settings::{ConfigError, Environment, Variable, parse_secs};

const SHUTDOWN_TIMEOUT: Variable = Variable::new(
    "SHUTDOWN_TIMEOUT",
    "30",
    "seconds in-flight requests get after SIGTERM or SIGINT",
);
const SHUTDOWN_DELAY: Variable = Variable::new(
    "SHUTDOWN_DELAY",
    "0",
    "seconds between a stop signal (`/ready` at 503) and the drain, for load balancers",
);

/// The stop's variables, in the order of the documentation.
const VARIABLES: &[Variable] = &[SHUTDOWN_TIMEOUT, SHUTDOWN_DELAY];

/// The longest shutdown timeout or delay we accept: a day is already far
/// beyond any sensible value, and the bound keeps `Duration` arithmetic far
/// from overflow.
const SHUTDOWN_SECS: RangeInclusive<u64> = 0..=86_400;

/// `SHUTDOWN_TIMEOUT` and `SHUTDOWN_DELAY`, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StopSettings {
    /// How long in-flight requests may take to finish after a stop begins.
    pub(crate) shutdown_timeout: Duration,
    /// How long to keep accepting, with `/ready` at 503, after a stop signal
    /// and before the drain (load balancers need time to stop sending).
    pub(crate) shutdown_delay: Duration,
}

impl StopSettings {
    /// The stop's variables (associated, so `lifecycle/mod.rs` needs no export).
    pub(crate) const VARIABLES: &'static [Variable] = VARIABLES;

    /// The bounds of both, for the typed setters.
    pub(crate) const SECS: RangeInclusive<u64> = SHUTDOWN_SECS;

    /// Reads and checks the stop's variables.
    pub(crate) fn from_env(env: &Environment) -> Result<Self, ConfigError> {
        let secs = |v: &str| parse_secs(v, SHUTDOWN_SECS).map(Duration::from_secs);
        Ok(StopSettings {
            shutdown_timeout: env.setting(&SHUTDOWN_TIMEOUT)?.parse(secs)?,
            shutdown_delay: env.setting(&SHUTDOWN_DELAY)?.parse(secs)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stop(pairs: &[(&str, &str)]) -> Result<StopSettings, ConfigError> {
        let env = Environment::new(
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())),
            [],
        );
        StopSettings::from_env(&env)
    }

    fn error(pairs: &[(&str, &str)]) -> String {
        stop(pairs).unwrap_err().to_string()
    }

    #[test]
    fn shutdown_timeout_and_delay_are_checked() {
        let defaults = stop(&[]).unwrap();
        assert_eq!(defaults.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(defaults.shutdown_delay, Duration::ZERO);
        assert_eq!(
            stop(&[("SHUTDOWN_TIMEOUT", "0")]).unwrap().shutdown_timeout,
            Duration::ZERO
        );
        assert_eq!(
            stop(&[("SHUTDOWN_DELAY", "5")]).unwrap().shutdown_delay,
            Duration::from_secs(5)
        );
        assert!(error(&[("SHUTDOWN_TIMEOUT", "1.5")]).starts_with("SHUTDOWN_TIMEOUT"));
        assert!(error(&[("SHUTDOWN_TIMEOUT", "999999")]).starts_with("SHUTDOWN_TIMEOUT"));
        assert!(error(&[("SHUTDOWN_DELAY", "-1")]).starts_with("SHUTDOWN_DELAY"));
        assert!(error(&[("SHUTDOWN_DELAY", "2s")]).starts_with("SHUTDOWN_DELAY"));
    }
}
