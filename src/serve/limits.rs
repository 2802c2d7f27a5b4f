//! Bounds that keep one client from holding the server: `HEADER_READ_TIMEOUT`,
//! `REQUEST_TIMEOUT`, `WRITE_TIMEOUT`, `MAX_BODY_BYTES` and `MAX_CONNECTIONS`.

use std::ops::RangeInclusive;
use std::time::Duration;

use crate::settings::{ConfigError, Environment, Variable, parse_secs};

const HEADER_READ_TIMEOUT: Variable = Variable::new(
    "HEADER_READ_TIMEOUT",
    "10",
    "seconds to send a request's headers; also the idle keep-alive timeout",
);
const REQUEST_TIMEOUT: Variable = Variable::new(
    "REQUEST_TIMEOUT",
    "30",
    "seconds from a request's headers to its response (503 after)",
);
const WRITE_TIMEOUT: Variable = Variable::new(
    "WRITE_TIMEOUT",
    "30",
    "seconds a response waiting to be sent may go without progress (the connection is closed after)",
);
const MAX_BODY_BYTES: Variable = Variable::new(
    "MAX_BODY_BYTES",
    "1048576",
    "largest request body accepted (413 above)",
);
const MAX_CONNECTIONS: Variable = Variable::new(
    "MAX_CONNECTIONS",
    "10000",
    "open connections at most; more wait in the kernel's queue until one closes (0: no limit)",
);

/// The limits' variables, in the order of the documentation.
const VARIABLES: &[Variable] = &[
    HEADER_READ_TIMEOUT,
    REQUEST_TIMEOUT,
    WRITE_TIMEOUT,
    MAX_BODY_BYTES,
    MAX_CONNECTIONS,
];

/// The header and request timeouts, in seconds: an hour is already generous
/// for an API, and anything longer is more likely a unit mix-up (milliseconds).
const TIMEOUT_SECS: RangeInclusive<u64> = 1..=3_600;

/// The largest body limit: 1 GiB, beyond which "no limit" is what was meant.
const MAX_BODY_LIMIT: usize = 1024 * 1024 * 1024;

/// The largest connection cap: a million, beyond which "no limit" (0) is
/// what was meant.
const MAX_CONNECTIONS_LIMIT: usize = 1_000_000;

/// Bounds that keep one client from holding the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Time to receive a request's headers, counted from when the connection
    /// starts waiting for them: it also closes idle keep-alive connections.
    pub(crate) header_read_timeout: Duration,
    /// Time from a request's headers to its response.
    pub(crate) request_timeout: Duration,
    /// Time a connection with output waiting (a response not yet written, or
    /// an HTTP/2 stream held back by the peer's flow-control window) may go
    /// without writing any of it; it is closed after.
    pub(crate) write_timeout: Duration,
    /// The largest request body accepted.
    pub(crate) max_body_bytes: usize,
    /// Open connections at most (0: no limit); at the cap the accept loops
    /// wait, and new connections wait in the kernel's queue.
    pub(crate) max_connections: usize,
}

impl Limits {
    /// The limits' variables, in the order of the documentation.
    pub(crate) const VARIABLES: &'static [Variable] = VARIABLES;

    /// The bounds of the timeouts, in seconds, for the typed setters.
    pub(crate) const TIMEOUT_SECS: RangeInclusive<u64> = TIMEOUT_SECS;

    /// Reads and checks the limits' variables.
    pub(crate) fn from_env(env: &Environment) -> Result<Self, ConfigError> {
        let timeout = |v: &str| parse_secs(v, TIMEOUT_SECS).map(Duration::from_secs);
        Ok(Limits {
            header_read_timeout: env.setting(&HEADER_READ_TIMEOUT)?.parse(timeout)?,
            request_timeout: env.setting(&REQUEST_TIMEOUT)?.parse(timeout)?,
            write_timeout: env.setting(&WRITE_TIMEOUT)?.parse(timeout)?,
            max_body_bytes: env.setting(&MAX_BODY_BYTES)?.parse(parse_body_limit)?,
            max_connections: env
                .setting(&MAX_CONNECTIONS)?
                .parse(parse_max_connections)?,
        })
    }
}

impl Limits {
    /// A body limit in bytes, up to [`MAX_BODY_LIMIT`]; the error says what is expected.
    pub(crate) fn check_body_limit(bytes: usize) -> Result<usize, String> {
        if bytes <= MAX_BODY_LIMIT {
            Ok(bytes)
        } else {
            Err(format!(
                "a number of bytes from 0 to {MAX_BODY_LIMIT} (e.g. 1048576 for 1 MiB)"
            ))
        }
    }
}

impl Limits {
    /// A connection cap up to [`MAX_CONNECTIONS_LIMIT`] (0: none); the error
    /// says what is expected.
    pub(crate) fn check_max_connections(cap: usize) -> Result<usize, String> {
        if cap <= MAX_CONNECTIONS_LIMIT {
            Ok(cap)
        } else {
            Err(format!(
                "a number of connections from 0 (no limit) to {MAX_CONNECTIONS_LIMIT}"
            ))
        }
    }
}

fn parse_max_connections(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(cap) => Limits::check_max_connections(cap),
        Err(_) => Limits::check_max_connections(usize::MAX),
    }
}

fn parse_body_limit(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(bytes) => Limits::check_body_limit(bytes),
        Err(_) => Limits::check_body_limit(usize::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(pairs: &[(&str, &str)]) -> Result<Limits, ConfigError> {
        let env = Environment::new(
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())),
            [],
        );
        Limits::from_env(&env)
    }

    #[test]
    fn defaults_match_the_design() {
        assert_eq!(
            limits(&[]).unwrap(),
            Limits {
                header_read_timeout: Duration::from_secs(10),
                request_timeout: Duration::from_secs(30),
                write_timeout: Duration::from_secs(30),
                max_body_bytes: 1_048_576,
                max_connections: 10_000,
            }
        );
    }

    #[test]
    fn limits_are_bounded() {
        let l = limits(&[
            ("HEADER_READ_TIMEOUT", "1"),
            ("REQUEST_TIMEOUT", "3600"),
            ("WRITE_TIMEOUT", "1"),
            ("MAX_BODY_BYTES", "0"),
            ("MAX_CONNECTIONS", "0"),
        ])
        .unwrap();
        assert_eq!(l.write_timeout, Duration::from_secs(1));
        assert_eq!(l.max_connections, 0);
        assert_eq!(l.header_read_timeout, Duration::from_secs(1));
        assert_eq!(l.request_timeout, Duration::from_secs(3600));
        assert_eq!(l.max_body_bytes, 0);
        for (name, value) in [
            ("HEADER_READ_TIMEOUT", "0"),
            ("HEADER_READ_TIMEOUT", "3601"),
            ("REQUEST_TIMEOUT", "2.5"),
            ("REQUEST_TIMEOUT", ""),
            ("WRITE_TIMEOUT", "0"),
            ("MAX_CONNECTIONS", "-1"),
            ("MAX_CONNECTIONS", "1000001"),
            ("MAX_BODY_BYTES", "1MB"),
            ("MAX_BODY_BYTES", "1073741825"),
        ] {
            let message = limits(&[(name, value)]).unwrap_err().to_string();
            assert!(
                message.starts_with(&format!("{name}: {value:?} is not valid")),
                "{message}"
            );
        }
    }
}
