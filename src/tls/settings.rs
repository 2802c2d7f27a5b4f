//! TLS's variables: `TLS`, the certificate pair (`TLS_CERT_FILE` and
//! `TLS_KEY_FILE`, else the systemd credentials `tls-cert` and `tls-key`),
//! `TLS_CLIENT_CA_FILE`, `TLS_HANDSHAKE_TIMEOUT` and `TLS_MAX_HANDSHAKES`.
//!
//! Compiled with or without the `tls` feature: parsing needs no rustls, and
//! the variables are documented either way. No file is read here (only the
//! credential's presence is looked at); `Tls::load` reads them.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::settings::{ConfigError, Environment, Setting, Variable, parse_bool, parse_secs};

const TLS: Variable = Variable::new(
    "TLS",
    "false",
    "serve TLS on the listeners without a mark of their own (`HOST:API_PORT`, the port search, unnamed inherited sockets)",
);
const TLS_CERT_FILE: Variable = Variable::unset(
    "TLS_CERT_FILE",
    "PEM certificate chain, leaf first (else the systemd credential `tls-cert`)",
);
const TLS_KEY_FILE: Variable = Variable::unset(
    "TLS_KEY_FILE",
    "PEM private key of the certificate (else the systemd credential `tls-key`)",
);
const TLS_CLIENT_CA_FILE: Variable = Variable::unset(
    "TLS_CLIENT_CA_FILE",
    "PEM CA certificates: clients must present a certificate that chains to one (mTLS)",
);
const TLS_HANDSHAKE_TIMEOUT: Variable = Variable::new(
    "TLS_HANDSHAKE_TIMEOUT",
    "10",
    "seconds a client gets to complete the TLS handshake (closed after)",
);
const TLS_MAX_HANDSHAKES: Variable = Variable::new(
    "TLS_MAX_HANDSHAKES",
    "1000",
    "TLS handshakes in progress at once; a connection beyond it is closed",
);

/// The bounds of `TLS_HANDSHAKE_TIMEOUT`: a handshake is a few round trips,
/// and more than five minutes is a unit mix-up (milliseconds).
const HANDSHAKE_SECS: RangeInclusive<u64> = 1..=300;

/// The bounds of `TLS_MAX_HANDSHAKES`.
const MAX_HANDSHAKES: RangeInclusive<usize> = 1..=1_000_000;

/// The systemd credentials the pair is read from when the variables are unset.
pub(crate) const CREDENTIAL_CERT: &str = "tls-cert";
/// See [`CREDENTIAL_CERT`].
pub(crate) const CREDENTIAL_KEY: &str = "tls-key";

/// The TLS settings, checked; the files are read by `Tls::load`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsSettings {
    /// `TLS=true`: the listeners that carry no mark of their own (HOST:API_PORT and the port search,
    /// inherited sockets without a name, as `systemfd -s https::8443` gives) serve TLS.
    pub(crate) unmarked: bool,
    /// The certificate pair: TLS_CERT_FILE + TLS_KEY_FILE, else systemd credentials
    /// `$CREDENTIALS_DIRECTORY/tls-cert` + `tls-key` when `tls-cert` exists there; None otherwise.
    pub(crate) pair: Option<PairPaths>,
    /// TLS_CLIENT_CA_FILE: PEM CA certificates client certificates must chain to (mTLS required).
    pub(crate) client_ca: Option<PathBuf>,
    /// `TLS_CLIENT_CA_FILE` as spelled (with any prefix), for errors.
    pub(crate) client_ca_setting: String,
    /// TLS_HANDSHAKE_TIMEOUT (seconds, default 10).
    pub(crate) handshake_timeout: Duration,
    /// TLS_MAX_HANDSHAKES (default 1000): handshakes in progress at once; a connection beyond it is closed.
    pub(crate) max_handshakes: usize,
}

/// Where the certificate chain and its key are, and how the user named each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PairPaths {
    /// The PEM certificate chain, leaf first.
    pub(crate) cert: PathBuf,
    /// The PEM private key.
    pub(crate) key: PathBuf,
    /// How the user named the certificate, for errors: `TLS_CERT_FILE` as
    /// spelled (with any prefix) or `credential tls-cert`.
    pub(crate) cert_setting: String,
    /// The same for the key: `TLS_KEY_FILE` or `credential tls-key`.
    pub(crate) key_setting: String,
}

impl TlsSettings {
    /// TLS's variables, in the order of the documentation.
    pub(crate) const VARIABLES: &'static [Variable] = &[
        TLS,
        TLS_CERT_FILE,
        TLS_KEY_FILE,
        TLS_CLIENT_CA_FILE,
        TLS_HANDSHAKE_TIMEOUT,
        TLS_MAX_HANDSHAKES,
    ];

    /// Reads and checks TLS's variables, and finds the pair: the variables,
    /// else the systemd credentials when `tls-cert` is there. A half pair,
    /// or TLS asked for (`TLS=true`, a client CA) without a pair, is refused.
    pub(crate) fn from_env(env: &Environment) -> Result<Self, ConfigError> {
        let tls = env.setting(&TLS)?;
        let unmarked = tls.parse(parse_bool)?;
        let cert = env.setting(&TLS_CERT_FILE)?;
        let key = env.setting(&TLS_KEY_FILE)?;
        let client_ca = env.setting(&TLS_CLIENT_CA_FILE)?;
        let handshake_timeout = env
            .setting(&TLS_HANDSHAKE_TIMEOUT)?
            .parse(|v| parse_secs(v, HANDSHAKE_SECS).map(Duration::from_secs))?;
        let max_handshakes = env
            .setting(&TLS_MAX_HANDSHAKES)?
            .parse(parse_max_handshakes)?;
        let pair = match (cert.parse_opt(parse_path)?, key.parse_opt(parse_path)?) {
            (Some(cert_path), Some(key_path)) => Some(PairPaths {
                cert: cert_path,
                key: key_path,
                cert_setting: cert.name.clone(),
                key_setting: key.name.clone(),
            }),
            (Some(_), None) => return Err(half_pair(&cert, &key)),
            (None, Some(_)) => return Err(half_pair(&key, &cert)),
            (None, None) => credentials(env.protocol("CREDENTIALS_DIRECTORY"))?,
        };
        let client_ca_path = client_ca.parse_opt(parse_path)?;
        if pair.is_none() {
            let wanted = if unmarked {
                Some((&tls, "\"true\""))
            } else if client_ca_path.is_some() {
                Some((&client_ca, "set"))
            } else {
                None
            };
            if let Some((setting, what)) = wanted {
                return Err(ConfigError::Owner(
                    format!(
                        "{}: {what} but no certificate is configured (set {} and {}, or add LoadCredential={CREDENTIAL_CERT}:... and {CREDENTIAL_KEY}:... to the unit)",
                        setting.name,
                        env.spelled(TLS_CERT_FILE.name),
                        env.spelled(TLS_KEY_FILE.name),
                    )
                    .into(),
                ));
            }
        }
        Ok(TlsSettings {
            unmarked,
            pair,
            client_ca: client_ca_path,
            client_ca_setting: client_ca.name,
            handshake_timeout,
            max_handshakes,
        })
    }
}

/// One of the pair's variables is set without the other.
fn half_pair(set: &Setting<'_>, missing: &Setting<'_>) -> ConfigError {
    ConfigError::Owner(
        format!(
            "{}: set without {} (expected both: the PEM certificate chain and its private key)",
            set.name, missing.name
        )
        .into(),
    )
}

/// The pair from systemd's credentials, when `tls-cert` is there; its key must be too.
fn credentials(directory: Option<&str>) -> Result<Option<PairPaths>, ConfigError> {
    let Some(directory) = directory.filter(|d| !d.is_empty()) else {
        return Ok(None);
    };
    let directory = Path::new(directory);
    let cert = directory.join(CREDENTIAL_CERT);
    if !cert.exists() {
        return Ok(None);
    }
    let key = directory.join(CREDENTIAL_KEY);
    if !key.exists() {
        return Err(ConfigError::Owner(
            format!(
                "credential {CREDENTIAL_KEY}: {} does not exist, but credential {CREDENTIAL_CERT} does (expected both: add LoadCredential={CREDENTIAL_KEY}:... to the unit)",
                key.display()
            )
            .into(),
        ));
    }
    Ok(Some(PairPaths {
        cert,
        key,
        cert_setting: format!("credential {CREDENTIAL_CERT}"),
        key_setting: format!("credential {CREDENTIAL_KEY}"),
    }))
}

/// A file's path: anything but empty (`TLS_CERT_FILE=` is a mistake, not "unset").
fn parse_path(value: &str) -> Result<PathBuf, String> {
    if value.is_empty() {
        Err("the path of a PEM file".to_owned())
    } else {
        Ok(PathBuf::from(value))
    }
}

fn parse_max_handshakes(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(cap) if MAX_HANDSHAKES.contains(&cap) => Ok(cap),
        _ => Err(format!(
            "a number of handshakes from {} to {}",
            MAX_HANDSHAKES.start(),
            MAX_HANDSHAKES.end()
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> Environment {
        let vars = vars.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned()));
        Environment::new(vars, [])
    }

    fn error(vars: &[(&str, &str)]) -> String {
        TlsSettings::from_env(&env(vars)).unwrap_err().to_string()
    }

    #[test]
    fn defaults_serve_no_tls() {
        let settings = TlsSettings::from_env(&env(&[])).unwrap();
        assert!(!settings.unmarked);
        assert_eq!(settings.pair, None);
        assert_eq!(settings.client_ca, None);
        assert_eq!(settings.handshake_timeout, Duration::from_secs(10));
        assert_eq!(settings.max_handshakes, 1000);
    }

    #[test]
    fn the_pair_comes_from_the_variables_as_spelled() {
        let env = Environment::with_prefix(
            "APP_",
            [
                ("APP_TLS".to_owned(), "on".to_owned()),
                (
                    "APP_TLS_CERT_FILE".to_owned(),
                    "/etc/tls/cert.pem".to_owned(),
                ),
                ("APP_TLS_KEY_FILE".to_owned(), "/etc/tls/key.pem".to_owned()),
                (
                    "APP_TLS_CLIENT_CA_FILE".to_owned(),
                    "/etc/tls/ca.pem".to_owned(),
                ),
                ("APP_TLS_HANDSHAKE_TIMEOUT".to_owned(), "3".to_owned()),
                ("APP_TLS_MAX_HANDSHAKES".to_owned(), "2".to_owned()),
            ],
            [],
        );
        let settings = TlsSettings::from_env(&env).unwrap();
        assert!(settings.unmarked);
        let pair = settings.pair.unwrap();
        assert_eq!(pair.cert, Path::new("/etc/tls/cert.pem"));
        assert_eq!(pair.key, Path::new("/etc/tls/key.pem"));
        assert_eq!(pair.cert_setting, "APP_TLS_CERT_FILE");
        assert_eq!(pair.key_setting, "APP_TLS_KEY_FILE");
        assert_eq!(settings.client_ca.unwrap(), Path::new("/etc/tls/ca.pem"));
        assert_eq!(settings.client_ca_setting, "APP_TLS_CLIENT_CA_FILE");
        assert_eq!(settings.handshake_timeout, Duration::from_secs(3));
        assert_eq!(settings.max_handshakes, 2);
    }

    #[test]
    fn a_half_pair_names_the_missing_variable() {
        assert_eq!(
            error(&[("TLS_CERT_FILE", "/c.pem")]),
            "TLS_CERT_FILE: set without TLS_KEY_FILE (expected both: the PEM certificate chain and its private key)"
        );
        let message = error(&[("TLS_KEY_FILE", "/k.pem")]);
        assert!(
            message.starts_with("TLS_KEY_FILE: set without TLS_CERT_FILE"),
            "{message}"
        );
        let message = error(&[("TLS_CERT_FILE", ""), ("TLS_KEY_FILE", "/k.pem")]);
        assert!(
            message.starts_with("TLS_CERT_FILE: \"\" is not valid"),
            "{message}"
        );
    }

    #[test]
    fn tls_without_a_certificate_is_refused() {
        let message = error(&[("TLS", "true")]);
        assert!(
            message.starts_with(
                "TLS: \"true\" but no certificate is configured (set TLS_CERT_FILE and TLS_KEY_FILE"
            ),
            "{message}"
        );
        let message = error(&[("TLS_CLIENT_CA_FILE", "/ca.pem")]);
        assert!(
            message.starts_with("TLS_CLIENT_CA_FILE: set but no certificate is configured"),
            "{message}"
        );
    }

    #[test]
    fn bounds_are_enforced_naming_the_variable() {
        for (name, bad) in [
            ("TLS", "maybe"),
            ("TLS_HANDSHAKE_TIMEOUT", "0"),
            ("TLS_HANDSHAKE_TIMEOUT", "301"),
            ("TLS_HANDSHAKE_TIMEOUT", "1.5"),
            ("TLS_MAX_HANDSHAKES", "0"),
            ("TLS_MAX_HANDSHAKES", "1000001"),
        ] {
            let message = error(&[(name, bad)]);
            assert!(
                message.starts_with(&format!("{name}: \"{bad}\" is not valid (expected ")),
                "{message}"
            );
            assert_eq!(message.lines().count(), 1, "{message}");
        }
        let edges = env(&[
            ("TLS_HANDSHAKE_TIMEOUT", "300"),
            ("TLS_MAX_HANDSHAKES", "1000000"),
        ]);
        let settings = TlsSettings::from_env(&edges).unwrap();
        assert_eq!(settings.handshake_timeout, Duration::from_secs(300));
        assert_eq!(settings.max_handshakes, 1_000_000);
    }

    /// The credentials are a fallback: found when `tls-cert` is there, the
    /// key required beside it, the variables winning over them.
    #[test]
    fn the_pair_falls_back_to_systemd_credentials() {
        let dir = std::env::temp_dir().join(format!("portkeeper-tls-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let creds = |vars: &[(&str, &str)]| {
            let vars = vars.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned()));
            let real = [(
                OsString::from("CREDENTIALS_DIRECTORY"),
                OsString::from(dir.as_os_str()),
            )];
            TlsSettings::from_env(&Environment::new(vars, real))
        };
        // No tls-cert there: no pair (the directory may hold other credentials).
        assert_eq!(creds(&[]).unwrap().pair, None);
        std::fs::write(dir.join("tls-cert"), "cert").unwrap();
        let message = creds(&[]).unwrap_err().to_string();
        assert!(
            message.starts_with(&format!(
                "credential tls-key: {} does not exist",
                dir.join("tls-key").display()
            )),
            "{message}"
        );
        std::fs::write(dir.join("tls-key"), "key").unwrap();
        let pair = creds(&[("TLS", "true")]).unwrap().pair.unwrap();
        assert_eq!(pair.cert, dir.join("tls-cert"));
        assert_eq!(pair.key, dir.join("tls-key"));
        assert_eq!(pair.cert_setting, "credential tls-cert");
        assert_eq!(pair.key_setting, "credential tls-key");
        let pair = creds(&[("TLS_CERT_FILE", "/c.pem"), ("TLS_KEY_FILE", "/k.pem")])
            .unwrap()
            .pair
            .unwrap();
        assert_eq!(pair.cert_setting, "TLS_CERT_FILE");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
