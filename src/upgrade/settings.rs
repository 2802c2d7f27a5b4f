//! The upgrade's setting: `RELOAD`, hand the socket to a replaced executable.

use crate::settings::{ConfigError, Environment, Variable, parse_bool};

const RELOAD: Variable = Variable::new(
    "RELOAD",
    "false",
    "hand the socket to a replaced executable",
);

/// `RELOAD`, validated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct UpgradeSettings {
    /// Watch the executable and hand over when it is replaced.
    pub(crate) reload: bool,
}

impl UpgradeSettings {
    /// The upgrade's variables, in the order of the documentation.
    pub(crate) const VARIABLES: &'static [Variable] = &[RELOAD];

    /// Reads and checks `RELOAD`.
    pub(crate) fn from_env(env: &Environment) -> Result<Self, ConfigError> {
        Ok(UpgradeSettings {
            reload: env.setting(&RELOAD)?.parse(parse_bool)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_is_a_boolean() {
        let env = |value: &str| Environment::new([("RELOAD".to_owned(), value.to_owned())], []);
        assert!(
            !UpgradeSettings::from_env(&Environment::default())
                .unwrap()
                .reload
        );
        assert!(UpgradeSettings::from_env(&env("on")).unwrap().reload);
        assert!(
            UpgradeSettings::from_env(&env("sometimes"))
                .unwrap_err()
                .to_string()
                .starts_with("RELOAD: \"sometimes\"")
        );
    }
}
