//! TLS: the settings (always compiled, so the variables are documented and
//! checked without the feature).

mod settings;

pub(crate) use settings::{PairPaths, TlsSettings};
