//! The TLS runtime against a real rustls client over an in-memory pipe,
//! with certificates made here by rcgen (same provider, ring).

use std::net::{IpAddr, Ipv4Addr};

use super::runtime::{Accepted, HandshakeError};
use super::settings::PairPaths;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::version::{TLS12, TLS13};
use rustls::{ClientConfig, ProtocolVersion, RootCertStore, SupportedProtocolVersion};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream as ClientStream;

use super::*;
use crate::metrics::Metrics;
use crate::settings::Environment;

/// A directory of its own under the system's temporary one, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "portkeeper-tls-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `name` as a rotation tool does: a new file renamed over the old.
    fn replace(&self, name: &str, content: &str) -> PathBuf {
        let path = self.path(name);
        let next = self.path(&format!(".{name}.new"));
        std::fs::write(&next, content).unwrap();
        std::fs::rename(&next, &path).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A test CA that issues server and client certificates.
struct Ca {
    pem: String,
    der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
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

    /// A server certificate for `localhost` with `serial`.
    fn server(&self, serial: u64) -> Pair {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.serial_number = Some(SerialNumber::from(serial));
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        self.issue(params)
    }

    /// A client certificate for alice, with a SAN of each kind.
    fn client(&self) -> Pair {
        let mut params = CertificateParams::new(vec!["alice.example.com".to_owned()]).unwrap();
        // The most general first, as CAs write them; RFC 4514 shows it last.
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Example, Inc.");
        params.distinguished_name.push(DnType::CommonName, "alice");
        params.subject_alt_names.extend([
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::Rfc822Name("alice@example.com".try_into().unwrap()),
            SanType::URI("spiffe://example.org/alice".try_into().unwrap()),
        ]);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    fn issue(&self, params: CertificateParams) -> Pair {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Pair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }
}

/// A certificate and its key, as PEM and as DER.
struct Pair {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

fn pair_paths(dir: &TempDir) -> PairPaths {
    PairPaths {
        cert: dir.path("cert.pem"),
        key: dir.path("key.pem"),
        cert_setting: "TLS_CERT_FILE".to_owned(),
        key_setting: "TLS_KEY_FILE".to_owned(),
    }
}

/// Writes `pair` into `dir` (renamed into place) and returns its paths.
fn write_pair(dir: &TempDir, pair: &Pair) -> PairPaths {
    dir.replace("cert.pem", &pair.cert_pem);
    dir.replace("key.pem", &pair.key_pem);
    pair_paths(dir)
}

fn settings(pair: &PairPaths, client_ca: Option<&Path>) -> TlsSettings {
    TlsSettings {
        unmarked: true,
        pair: Some(pair.clone()),
        client_ca: client_ca.map(Path::to_owned),
        client_ca_setting: "TLS_CLIENT_CA_FILE".to_owned(),
        handshake_timeout: Duration::from_secs(10),
        max_handshakes: 1000,
    }
}

fn load_error(pair: &PairPaths) -> String {
    let message = Tls::load(&settings(pair, None), pair)
        .unwrap_err()
        .to_string();
    assert_eq!(message.lines().count(), 1, "{message}");
    message
}

/// A client that trusts `ca`, offers `alpn`, speaks `versions` and
/// presents `identity` when given.
fn connector(
    ca: &Ca,
    versions: &[&'static SupportedProtocolVersion],
    alpn: &[&[u8]],
    identity: Option<&Pair>,
) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots.add(ca.der.clone()).unwrap();
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(pair) => builder
            .with_client_auth_cert(
                vec![pair.der.clone()],
                PrivateKeyDer::try_from(pair.key_der.clone()).unwrap(),
            )
            .unwrap(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

type Handshake = (
    Result<Accepted<DuplexStream>, HandshakeError>,
    std::io::Result<ClientStream<DuplexStream>>,
);

/// One handshake over an in-memory pipe, both sides at once.
async fn handshake(tls: &Tls, connector: &TlsConnector, metrics: &Metrics) -> Handshake {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let name = ServerName::try_from("localhost").unwrap();
    tokio::join!(tls.accept(server, metrics), connector.connect(name, client))
}

/// The leaf certificate a client was served.
fn served(client: &ClientStream<DuplexStream>) -> CertificateDer<'static> {
    client.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// A counter of `/metrics`, by its sample name with labels.
fn counter(metrics: &Metrics, sample: &str) -> u64 {
    metrics
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no sample {sample}"))
}

fn handshakes(metrics: &Metrics, result: &str) -> u64 {
    counter(
        metrics,
        &format!("portkeeper_tls_handshakes_total{{result=\"{result}\"}}"),
    )
}

fn reloads(metrics: &Metrics, result: &str) -> u64 {
    counter(
        metrics,
        &format!("portkeeper_tls_certificate_reloads_total{{result=\"{result}\"}}"),
    )
}

#[test]
fn a_good_pair_loads() {
    let dir = TempDir::new();
    let ca = Ca::new("Test CA");
    let paths = write_pair(&dir, &ca.server(7));
    let tls = Tls::load(&settings(&paths, None), &paths).unwrap();
    assert_eq!(tls.serving().serial, "07");
    assert_eq!(tls.serving().subject, "CN=localhost");
}

#[test]
fn a_missing_or_unreadable_file_is_refused_by_name() {
    let dir = TempDir::new();
    let ca = Ca::new("Test CA");
    let paths = write_pair(&dir, &ca.server(1));
    let missing = PairPaths {
        cert: dir.path("nowhere.pem"),
        ..paths.clone()
    };
    assert_eq!(
        load_error(&missing),
        format!("TLS_CERT_FILE ({}): does not exist", missing.cert.display())
    );
    // A directory where the key should be: not read, and said so.
    std::fs::create_dir(dir.path("keydir")).unwrap();
    let directory = PairPaths {
        key: dir.path("keydir"),
        ..paths.clone()
    };
    assert_eq!(
        load_error(&directory),
        format!(
            "TLS_KEY_FILE ({}): cannot be read: it is a directory, not a regular file",
            directory.key.display()
        )
    );
    // Unreadable by permissions (root reads anything, so only as another user).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&paths.key, std::fs::Permissions::from_mode(0o000)).unwrap();
        if std::fs::read(&paths.key).is_err() {
            let message = load_error(&paths);
            assert!(
                message.starts_with("TLS_KEY_FILE (") && message.contains("permission denied"),
                "{message}"
            );
        }
    }
}

#[test]
fn a_file_that_is_not_pem_is_refused_by_name() {
    let dir = TempDir::new();
    let ca = Ca::new("Test CA");
    let paths = write_pair(&dir, &ca.server(1));
    dir.replace("cert.pem", "hello, this is not a certificate\n");
    assert_eq!(
        load_error(&paths),
        format!(
            "TLS_CERT_FILE ({}): holds no certificate (expected PEM \"-----BEGIN CERTIFICATE-----\" blocks, the server's first)",
            paths.cert.display()
        )
    );
    dir.replace(
        "cert.pem",
        "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n",
    );
    let message = load_error(&paths);
    assert!(
        message.starts_with(&format!(
            "TLS_CERT_FILE ({}): is not valid PEM",
            paths.cert.display()
        )),
        "{message}"
    );
    // Valid PEM, not a certificate inside.
    dir.replace(
        "cert.pem",
        "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
    );
    let message = load_error(&paths);
    assert!(
        message.contains("certificate 1 is not a valid X.509 certificate"),
        "{message}"
    );
}

/// The key's lines never reach an error: a key where the certificate
/// should be, a certificate where the key should be, a damaged key.
#[test]
fn errors_never_show_key_material() {
    let dir = TempDir::new();
    let ca = Ca::new("Test CA");
    let server = ca.server(1);
    let paths = write_pair(&dir, &server);
    let key_lines: Vec<&str> = server
        .key_pem
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    assert!(!key_lines.is_empty());
    let shows_key = |message: &str| key_lines.iter().any(|line| message.contains(line));

    dir.replace("cert.pem", &server.key_pem);
    let message = load_error(&paths);
    assert!(message.contains("holds no certificate"), "{message}");
    assert!(!shows_key(&message), "{message}");

    dir.replace("cert.pem", &server.cert_pem);
    dir.replace("key.pem", &server.cert_pem);
    let message = load_error(&paths);
    assert!(
        message.starts_with(&format!(
            "TLS_KEY_FILE ({}): holds no private key",
            paths.key.display()
        )),
        "{message}"
    );

    // A key whose base64 is damaged, and one whose END line is gone.
    let damaged = server.key_pem.replacen('A', "*", 1).replacen('B', "*", 1);
    let damaged = if damaged == server.key_pem {
        server.key_pem.replacen('M', "*", 1)
    } else {
        damaged
    };
    for bad in [damaged, server.key_pem.replace("-----END", "-----FIN")] {
        dir.replace("key.pem", &bad);
        let message = load_error(&paths);
        assert!(message.starts_with("TLS_KEY_FILE ("), "{message}");
        assert!(!shows_key(&message), "{message}");
        let bad_lines: Vec<&str> = bad.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(
            !bad_lines.iter().any(|line| message.contains(line)),
            "{message}"
        );
    }
    // A key block holding nonsense: rustls refuses it without quoting it.
    dir.replace(
        "key.pem",
        "-----BEGIN PRIVATE KEY-----\naGVsbG8gd29ybGQgc2VjcmV0\n-----END PRIVATE KEY-----\n",
    );
    let message = load_error(&paths);
    assert!(
        message.starts_with(&format!(
            "TLS_KEY_FILE ({}): the private key cannot be used",
            paths.key.display()
        )),
        "{message}"
    );
    assert!(!message.contains("aGVsbG8gd29ybGQgc2VjcmV0"), "{message}");
}

#[test]
fn a_key_of_another_certificate_is_refused() {
    let dir = TempDir::new();
    let ca = Ca::new("Test CA");
    let server = ca.server(1);
    let other = ca.server(2);
    dir.replace("cert.pem", &server.cert_pem);
    dir.replace("key.pem", &other.key_pem);
    let paths = pair_paths(&dir);
    assert_eq!(
        load_error(&paths),
        format!(
            "TLS_KEY_FILE ({}): the private key does not match the certificate in {} (expected the key the certificate was issued for)",
            paths.key.display(),
            paths.cert.display()
        )
    );
}

/// From the environment: systemd's credentials name the pair, and a bad
/// file is refused naming the credential.
#[test]
fn credentials_are_loaded_and_named_in_errors() {
    let dir = TempDir::new();
    let ca = Ca::new("Test CA");
    let server = ca.server(3);
    dir.replace("tls-cert", &server.cert_pem);
    dir.replace("tls-key", &server.key_pem);
    let env = || {
        Environment::new(
            [("TLS".to_owned(), "true".to_owned())],
            [(
                "CREDENTIALS_DIRECTORY".into(),
                dir.0.clone().into_os_string(),
            )],
        )
    };
    let settings = TlsSettings::from_env(&env()).unwrap();
    let pair = settings.pair.clone().unwrap();
    let tls = Tls::load(&settings, &pair).unwrap();
    assert_eq!(tls.serving().serial, "03");
    dir.replace("tls-key", &ca.server(4).key_pem);
    let settings = TlsSettings::from_env(&env()).unwrap();
    let message = Tls::load(&settings, &pair).unwrap_err().to_string();
    assert!(
        message.starts_with(&format!(
            "credential tls-key ({}): the private key does not match",
            pair.key.display()
        )),
        "{message}"
    );
}

#[test]
fn a_bad_client_ca_file_is_refused_by_name() {
    let dir = TempDir::new();
    let ca = Ca::new("Test CA");
    let paths = write_pair(&dir, &ca.server(1));
    let bad = dir.replace("ca.pem", "no CA here\n");
    let message = Tls::load(&settings(&paths, Some(&bad)), &paths)
        .unwrap_err()
        .to_string();
    assert!(
        message.starts_with(&format!(
            "TLS_CLIENT_CA_FILE ({}): holds no certificate",
            bad.display()
        )),
        "{message}"
    );
}

#[tokio::test]
async fn alpn_chooses_h2_when_offered_and_tls_1_2_works() {
    let dir = TempDir::new();
    let ca = Ca::new("Test CA");
    let server = ca.server(1);
    let paths = write_pair(&dir, &server);
    let tls = Tls::load(&settings(&paths, None), &paths).unwrap();
    let metrics = Metrics::new([]);

    let both = connector(&ca, &[&TLS13, &TLS12], &[b"h2", b"http/1.1"], None);
    let (accepted, client) = handshake(&tls, &both, &metrics).await;
    let (accepted, mut client) = (accepted.unwrap(), client.unwrap());
    let connection = accepted.stream.get_ref().1;
    assert_eq!(connection.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(
        connection.protocol_version(),
        Some(ProtocolVersion::TLSv1_3)
    );
    assert_eq!(client.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(accepted.identity, None);
    assert_eq!(served(&client), server.der);
    // Data flows both ways.
    let mut stream = accepted.stream;
    client.write_all(b"ping").await.unwrap();
    let mut buf = [0; 4];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");

    let old = connector(&ca, &[&TLS12], &[b"http/1.1"], None);
    let (accepted, client) = handshake(&tls, &old, &metrics).await;
    let accepted = accepted.unwrap();
    client.unwrap();
    let connection = accepted.stream.get_ref().1;
    assert_eq!(
        connection.protocol_version(),
        Some(ProtocolVersion::TLSv1_2)
    );
    assert_eq!(connection.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(handshakes(&metrics, "ok"), 2);
    assert_eq!(handshakes(&metrics, "failed"), 0);

    // A client that trusts another CA gives up: the server counts a failure.
    let stranger = connector(&Ca::new("Other CA"), &[&TLS13], &[], None);
    let (accepted, client) = handshake(&tls, &stranger, &metrics).await;
    assert!(client.is_err());
    assert!(matches!(accepted, Err(HandshakeError::Failed(_))));
    assert_eq!(handshakes(&metrics, "failed"), 1);
}

/// A -> B -> a bad pair (refused, B keeps serving) -> C; a connection made
/// on A keeps working through it all.
#[tokio::test(start_paused = true)]
async fn rotation_serves_new_pairs_and_refuses_bad_ones() {
    let dir = TempDir::new();
    let ca = Ca::new("Test CA");
    let (a, b, c) = (ca.server(10), ca.server(11), ca.server(12));
    let paths = write_pair(&dir, &a);
    let tls = Tls::load(&settings(&paths, None), &paths).unwrap();
    let metrics = Arc::new(Metrics::new([]));
    let client = connector(&ca, &[&TLS13], &[b"h2"], None);

    let (kept_server, kept_client) = handshake(&tls, &client, &metrics).await;
    let (mut kept_server, mut kept_client) = (kept_server.unwrap().stream, kept_client.unwrap());
    assert_eq!(served(&kept_client), a.der);

    let watch = tokio::spawn(tls.clone().watch_files(Arc::clone(&metrics)));
    /// Waits (virtual time, bounded) until `reloads{result}` reaches `count`.
    async fn reloaded(metrics: &Metrics, result: &str, count: u64) {
        for _ in 0..30 {
            if reloads(metrics, result) >= count {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        panic!("no {result} reload within 30 s");
    }

    write_pair(&dir, &b);
    reloaded(&metrics, "ok", 1).await;
    let (_, seen) = handshake(&tls, &client, &metrics).await;
    assert_eq!(served(&seen.unwrap()), b.der);
    assert_eq!(tls.serving().serial, "0b");

    // A bad pair: C's certificate with A's key.
    dir.replace("cert.pem", &c.cert_pem);
    dir.replace("key.pem", &a.key_pem);
    reloaded(&metrics, "refused", 1).await;
    let (_, seen) = handshake(&tls, &client, &metrics).await;
    assert_eq!(served(&seen.unwrap()), b.der);
    // The same bad files are not tried again.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(reloads(&metrics, "refused"), 1);
    assert_eq!(reloads(&metrics, "ok"), 1);

    dir.replace("key.pem", &c.key_pem);
    reloaded(&metrics, "ok", 2).await;
    let (_, seen) = handshake(&tls, &client, &metrics).await;
    assert_eq!(served(&seen.unwrap()), c.der);
    assert_eq!(reloads(&metrics, "refused"), 1);

    // The connection made on A still carries data both ways.
    kept_client.write_all(b"still here").await.unwrap();
    let mut buf = [0; 10];
    kept_server.read_exact(&mut buf).await.unwrap();
    kept_server.write_all(&buf).await.unwrap();
    let mut back = [0; 10];
    kept_client.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"still here");
    watch.abort();
}

#[tokio::test]
async fn client_certificates_are_required_and_their_identity_given() {
    let dir = TempDir::new();
    let ca = Ca::new("Test CA");
    let clients = Ca::new("Client CA");
    let paths = write_pair(&dir, &ca.server(1));
    let ca_file = dir.replace("clients.pem", &clients.pem);
    let tls = Tls::load(&settings(&paths, Some(&ca_file)), &paths).unwrap();
    let metrics = Metrics::new([]);

    let alice = clients.client();
    let with_cert = connector(&ca, &[&TLS13, &TLS12], &[], Some(&alice));
    let (accepted, client) = handshake(&tls, &with_cert, &metrics).await;
    client.unwrap();
    let identity = accepted.unwrap().identity.expect("a verified identity");
    assert_eq!(identity.subject(), "CN=alice,O=Example\\, Inc.");
    assert_eq!(
        identity.sans(),
        [
            "DNS:alice.example.com",
            "IP:127.0.0.1",
            "email:alice@example.com",
            "URI:spiffe://example.org/alice",
        ]
    );

    // TLS 1.2 too.
    let old = connector(&ca, &[&TLS12], &[], Some(&alice));
    let (accepted, _) = handshake(&tls, &old, &metrics).await;
    assert_eq!(accepted.unwrap().identity, Some(identity));

    let without = connector(&ca, &[&TLS13], &[], None);
    let (accepted, _) = handshake(&tls, &without, &metrics).await;
    assert!(
        matches!(accepted, Err(HandshakeError::Failed(_))),
        "no certificate was accepted"
    );

    let mallory = Ca::new("Client CA").client();
    let foreign = connector(&ca, &[&TLS13], &[], Some(&mallory));
    let (accepted, _) = handshake(&tls, &foreign, &metrics).await;
    assert!(
        matches!(accepted, Err(HandshakeError::Failed(_))),
        "another CA's certificate was accepted"
    );
    assert_eq!(handshakes(&metrics, "ok"), 2);
    assert_eq!(handshakes(&metrics, "failed"), 2);
}

#[tokio::test(start_paused = true)]
async fn a_silent_client_times_out() {
    let dir = TempDir::new();
    let ca = Ca::new("Test CA");
    let paths = write_pair(&dir, &ca.server(1));
    let tls = Tls::load(&settings(&paths, None), &paths).unwrap();
    let metrics = Metrics::new([]);
    let (_client, server) = tokio::io::duplex(1024);
    let started = tokio::time::Instant::now();
    let err = tls.accept(server, &metrics).await.err().unwrap();
    assert!(matches!(err, HandshakeError::TimedOut), "{err}");
    assert_eq!(err.to_string(), "TLS handshake timed out");
    assert_eq!(started.elapsed(), Duration::from_secs(10));
    assert_eq!(handshakes(&metrics, "timed_out"), 1);
}

#[test]
fn handshakes_are_capped() {
    let dir = TempDir::new();
    let ca = Ca::new("Test CA");
    let paths = write_pair(&dir, &ca.server(1));
    let capped = TlsSettings {
        max_handshakes: 2,
        ..settings(&paths, None)
    };
    let tls = Tls::load(&capped, &paths).unwrap();
    let first = tls.try_handshake_permit().unwrap();
    let _second = tls.try_handshake_permit().unwrap();
    assert!(tls.try_handshake_permit().is_none());
    drop(first);
    let _third = tls.try_handshake_permit().unwrap();
    assert!(tls.try_handshake_permit().is_none());
}
