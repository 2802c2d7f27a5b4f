//! Certificates for the TLS tests, made with rcgen and ring (the server's
//! provider): a CA that signs server pairs for localhost/127.0.0.1 and
//! client pairs, self-signed localhost pairs, their PEM files in a test's
//! directory, and rustls clients that trust them.
//!
//! Not behind the `tls` feature as a whole: systemd.rs, compiled in every
//! build, makes its self-signed pairs here. What only the TLS modules use is.

#[cfg(feature = "tls")]
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
#[cfg(feature = "tls")]
use std::sync::Arc;

#[cfg(feature = "tls")]
use rcgen::{
    BasicConstraints, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rcgen::{Certificate, CertificateParams, KeyPair};
#[cfg(feature = "tls")]
use rustls::pki_types::CertificateDer;
#[cfg(feature = "tls")]
use rustls::{ClientConfig, RootCertStore};

/// A test CA that issues server and client certificates.
#[cfg(feature = "tls")]
pub(crate) struct Ca {
    pub(crate) pem: String,
    pub(crate) der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM, and the certificate as DER.
pub(crate) struct Pair {
    pub(crate) cert: String,
    pub(crate) key: String,
    #[cfg(feature = "tls")]
    pub(crate) der: CertificateDer<'static>,
}

#[cfg(feature = "tls")]
impl Ca {
    /// A CA with the common name `name`.
    pub(crate) fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for localhost and 127.0.0.1 with `serial`.
    pub(crate) fn server(&self, serial: u64) -> Pair {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params.serial_number = Some(SerialNumber::from(serial));
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A client certificate for alice with a SAN of each kind.
    pub(crate) fn client(&self) -> Pair {
        let mut params = CertificateParams::new(vec!["alice.example.com".to_owned()]).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Example");
        params.distinguished_name.push(DnType::CommonName, "alice");
        params.subject_alt_names.extend([
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::Rfc822Name("alice@example.com".try_into().unwrap()),
            SanType::URI("spiffe://example.org/alice".try_into().unwrap()),
        ]);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    /// A rustls client that trusts this CA alone.
    pub(crate) fn client_config(&self) -> Arc<ClientConfig> {
        Arc::new(client_trusting(self.der.clone()))
    }

    fn issue(&self, params: CertificateParams) -> Pair {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Pair::of(&cert, &key)
    }
}

impl Pair {
    /// A self-signed certificate for localhost (a SAN, no IP) and its key.
    pub(crate) fn self_signed_localhost() -> Self {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        Pair::of(&cert, &key)
    }

    fn of(cert: &Certificate, key: &KeyPair) -> Self {
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
            #[cfg(feature = "tls")]
            der: cert.der().clone(),
        }
    }

    /// Writes the certificate and the key into `dir` as `cert` and `key`;
    /// returns their paths.
    pub(crate) fn write(&self, dir: &Path, cert: &str, key: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join(cert), dir.join(key));
        std::fs::write(&cert, &self.cert).unwrap();
        std::fs::write(&key, &self.key).unwrap();
        (cert, key)
    }

    /// Puts the pair at `cert` and `key` as a rotation tool (certbot) does:
    /// each file written beside, then renamed over the old one, the
    /// certificate first.
    #[cfg(feature = "tls")]
    pub(crate) fn replace(&self, cert: &Path, key: &Path) {
        for (path, content) in [(cert, &self.cert), (key, &self.key)] {
            let next = path.with_extension("new");
            std::fs::write(&next, content).unwrap();
            std::fs::rename(&next, path).unwrap();
        }
    }

    /// A rustls client that trusts this (self-signed) certificate alone.
    #[cfg(feature = "tls")]
    pub(crate) fn client_config(&self) -> Arc<ClientConfig> {
        Arc::new(client_trusting(self.der.clone()))
    }
}

/// A rustls client (ring, as the server has it) that trusts `root` alone;
/// not yet shared, so a caller can still set its ALPN protocols.
#[cfg(feature = "tls")]
pub(crate) fn client_trusting(root: CertificateDer<'static>) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    roots.add(root).unwrap();
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}
