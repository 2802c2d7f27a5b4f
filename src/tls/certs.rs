//! Reading the certificate pair and the client CAs from PEM files, into the
//! forms rustls serves: a [`CertifiedKey`] whose key is checked against its
//! certificate, and a [`RootCertStore`].
//!
//! Every failure is a [`CertError`]: one line naming the setting, the file
//! and what is wrong with it. Key material never appears in one: the PEM
//! parser's own errors (which quote the offending line) are replaced by our
//! words, and no error of rustls that could carry key bytes is shown.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::settings::PairPaths;
use crate::settings::{ConfigError, open_regular_file};

/// The largest PEM file read: a chain of a few certificates is a few
/// kilobytes, so anything beyond this is not one (a log, a disk image).
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// A PEM file that cannot be used, naming how the user named it and where it is.
#[derive(Debug, thiserror::Error)]
#[error("{setting} ({}): {problem}", path.display())]
pub(crate) struct CertError {
    /// `TLS_CERT_FILE` as spelled, or `credential tls-cert`, ...
    pub(crate) setting: String,
    /// The file.
    pub(crate) path: PathBuf,
    /// What is wrong, in our words (never the file's content).
    pub(crate) problem: String,
}

impl From<CertError> for ConfigError {
    fn from(err: CertError) -> Self {
        ConfigError::Owner(Box::new(err))
    }
}

/// What the log says of a pair just loaded: never the key, only the leaf
/// certificate's public facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Summary {
    /// The leaf's serial number, in hex bytes (`01:a2:...`).
    pub(crate) serial: String,
    /// The leaf's subject.
    pub(crate) subject: String,
    /// The end of the leaf's validity.
    pub(crate) not_after: String,
}

/// Loads the chain and the key of `pair` and checks that they belong together.
pub(crate) fn load_pair(
    pair: &PairPaths,
    provider: &CryptoProvider,
) -> Result<(Arc<CertifiedKey>, Summary), CertError> {
    let cert_err = |problem: String| CertError {
        setting: pair.cert_setting.clone(),
        path: pair.cert.clone(),
        problem,
    };
    let key_err = |problem: String| CertError {
        setting: pair.key_setting.clone(),
        path: pair.key.clone(),
        problem,
    };
    let chain = read_certificates(&pair.cert).map_err(cert_err)?;
    let summary = summarize(&chain[0]).map_err(cert_err)?;
    let key = read_key(&pair.key).map_err(key_err)?;
    // rustls's key errors name the key's kind, never its bytes.
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|err| key_err(format!("the private key cannot be used ({err})")))?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => {}
        // A key kind whose public half rustls cannot derive: nothing to compare.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(key_err(format!(
                "the private key does not match the certificate in {} (expected the key the certificate was issued for)",
                pair.cert.display()
            )));
        }
        Err(err) => return Err(cert_err(format!("the certificate cannot be used ({err})"))),
    }
    Ok((Arc::new(certified), summary))
}

/// Loads the CA certificates client certificates must chain to.
pub(crate) fn load_client_cas(setting: &str, path: &Path) -> Result<RootCertStore, CertError> {
    let err = |problem: String| CertError {
        setting: setting.to_owned(),
        path: path.to_owned(),
        problem,
    };
    let mut roots = RootCertStore::empty();
    for (index, cert) in read_certificates(path)
        .map_err(err)?
        .into_iter()
        .enumerate()
    {
        roots.add(cert).map_err(|e| {
            err(format!(
                "certificate {} is not a usable CA certificate ({e})",
                index + 1
            ))
        })?;
    }
    Ok(roots)
}

/// The certificates of a PEM file, in order; at least one.
fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_file(path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_problem)?;
    if chain.is_empty() {
        return Err(
            "holds no certificate (expected PEM \"-----BEGIN CERTIFICATE-----\" blocks, the server's first)"
                .to_owned(),
        );
    }
    for (index, cert) in chain.iter().enumerate() {
        if let Err(err) = x509_parser::parse_x509_certificate(cert) {
            return Err(format!(
                "certificate {} is not a valid X.509 certificate ({err})",
                index + 1
            ));
        }
    }
    Ok(chain)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1): the first one.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|err| match err {
        pem::Error::NoItemsFound => "holds no private key (expected a PEM \"-----BEGIN PRIVATE KEY-----\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\" block)".to_owned(),
        other => pem_problem(other),
    })
}

/// The whole file, if it is a regular file of a sane size.
fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    let file = open_regular_file(path).map_err(|err| match err.kind() {
        std::io::ErrorKind::NotFound => "does not exist".to_owned(),
        std::io::ErrorKind::PermissionDenied => {
            "cannot be read: permission denied (expected a file this user can read)".to_owned()
        }
        _ => format!("cannot be read: {err}"),
    })?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|err| format!("cannot be read: {err}"))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(format!(
            "is larger than {MAX_PEM_BYTES} bytes (expected a PEM file)"
        ));
    }
    Ok(bytes)
}

/// A PEM syntax error in our words: the parser's own quote the offending
/// line, which may be a line of a key.
fn pem_problem(err: pem::Error) -> String {
    let what = match err {
        pem::Error::MissingSectionEnd { .. } => "a PEM block has no END line",
        pem::Error::IllegalSectionStart { .. } => "a PEM BEGIN line is malformed",
        pem::Error::Base64Decode(_) => "a PEM block is not valid base64",
        pem::Error::SectionTooLarge => "a PEM block is too large",
        pem::Error::Io(_) => "cannot be read",
        _ => "cannot be parsed",
    };
    format!("is not valid PEM: {what} (the content is not shown)")
}

/// The leaf's serial, subject and expiry, for the log.
fn summarize(leaf: &CertificateDer<'_>) -> Result<Summary, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|err| format!("certificate 1 is not a valid X.509 certificate ({err})"))?;
    Ok(Summary {
        serial: cert.tbs_certificate.raw_serial_as_string(),
        subject: cert.subject().to_string(),
        not_after: cert.validity().not_after.to_string(),
    })
}
