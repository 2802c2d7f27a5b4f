//! TLS: the settings (always compiled, so the variables are documented and
//! checked without the feature), and with the `tls` feature the runtime:
//! one rustls [`ServerConfig`](rustls::ServerConfig) with the ring provider
//! installed explicitly, the certificate pair behind a resolver that the
//! rotation watch swaps, the handshake with its timeout and its cap, and the
//! verified client identity (mTLS).
//!
//! The listeners decide which connections are TLS; this module only turns an
//! accepted stream into a TLS stream.

#[cfg(feature = "tls")]
mod certs;
#[cfg(feature = "tls")]
mod identity;
mod settings;

#[cfg(feature = "tls")]
pub use identity::ClientIdentity;
pub(crate) use settings::TlsSettings;

#[cfg(feature = "tls")]
pub(crate) use runtime::Tls;

#[cfg(feature = "tls")]
mod runtime {
    use std::path::Path;
    use std::sync::{Arc, RwLock};
    use std::time::Duration;

    use rustls::ServerConfig;
    use rustls::crypto::CryptoProvider;
    use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
    use rustls::sign::CertifiedKey;
    use rustls::version::{TLS12, TLS13};
    use tokio::io::{AsyncRead, AsyncWrite};
    use tokio::sync::{OwnedSemaphorePermit, Semaphore};

    use super::certs::{self, CertError, Summary};
    use super::identity::ClientIdentity;
    use super::settings::{PairPaths, TlsSettings};
    use crate::metrics::{HandshakeOutcome, Metrics};
    use crate::settings::ConfigError;

    /// How often the rotation watch looks at the pair's files.
    const WATCH_EVERY: Duration = Duration::from_secs(2);

    /// The protocols offered by ALPN, preferred first.
    const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

    /// The TLS side of the server: cheap to clone (one `Arc`), shared by
    /// every TLS listener and the rotation watch.
    #[derive(Clone)]
    pub(crate) struct Tls {
        inner: Arc<Inner>,
    }

    struct Inner {
        acceptor: tokio_rustls::TlsAcceptor,
        resolver: Arc<Resolver>,
        provider: Arc<CryptoProvider>,
        pair: PairPaths,
        handshake_timeout: Duration,
        handshakes: Arc<Semaphore>,
        /// The files as `load` found them, before reading: the watch's start.
        loaded: (Option<Stamp>, Option<Stamp>),
    }

    impl std::fmt::Debug for Tls {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            // Paths and public facts only; the key is never shown.
            f.debug_struct("Tls")
                .field("cert", &self.inner.pair.cert)
                .field("key", &self.inner.pair.key)
                .field("serial", &self.serving().serial)
                .field("handshake_timeout", &self.inner.handshake_timeout)
                .finish_non_exhaustive()
        }
    }

    /// The pair new handshakes get, swapped whole by a reload.
    struct Resolver {
        current: RwLock<(Arc<CertifiedKey>, Summary)>,
    }

    impl std::fmt::Debug for Resolver {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Resolver")
        }
    }

    impl ResolvesServerCert for Resolver {
        fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            // A poisoned lock still holds a whole pair: the swap is one assignment.
            let current = self.current.read().unwrap_or_else(|e| e.into_inner());
            Some(Arc::clone(&current.0))
        }
    }

    impl Resolver {
        fn swap(&self, key: Arc<CertifiedKey>, summary: Summary) {
            *self.current.write().unwrap_or_else(|e| e.into_inner()) = (key, summary);
        }

        fn summary(&self) -> Summary {
            let current = self.current.read().unwrap_or_else(|e| e.into_inner());
            current.1.clone()
        }
    }

    impl Tls {
        /// Loads the pair and the client CAs and builds the one rustls
        /// `ServerConfig`: ring, TLS 1.3 and 1.2, ALPN `h2` and `http/1.1`,
        /// client certificates required when `client_ca` is set. Any bad
        /// file is a [`ConfigError`] naming its setting and its path.
        pub(crate) fn load(settings: &TlsSettings, pair: &PairPaths) -> Result<Tls, ConfigError> {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let loaded = stamps(pair);
            let (key, summary) = certs::load_pair(pair, &provider)?;
            let resolver = Arc::new(Resolver {
                current: RwLock::new((key, summary)),
            });
            let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
                .with_protocol_versions(&[&TLS13, &TLS12])
                .map_err(|err| ConfigError::Owner(format!("TLS: {err}").into()))?;
            let builder = match &settings.client_ca {
                None => builder.with_no_client_auth(),
                Some(path) => {
                    let setting = &settings.client_ca_setting;
                    let roots = certs::load_client_cas(setting, path)?;
                    let verifier = WebPkiClientVerifier::builder_with_provider(
                        Arc::new(roots),
                        Arc::clone(&provider),
                    )
                    .build()
                    .map_err(|err| CertError {
                        setting: setting.clone(),
                        path: path.clone(),
                        problem: format!("cannot verify clients with these CAs ({err})"),
                    })?;
                    builder.with_client_cert_verifier(verifier)
                }
            };
            let mut config =
                builder.with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
            config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
            Ok(Tls {
                inner: Arc::new(Inner {
                    acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
                    resolver,
                    provider,
                    pair: pair.clone(),
                    handshake_timeout: settings.handshake_timeout,
                    handshakes: Arc::new(Semaphore::new(settings.max_handshakes)),
                    loaded,
                }),
            })
        }

        /// The certificate new handshakes get: its serial, subject and expiry
        /// (for the start-up log and `/info`; nothing secret).
        pub(crate) fn serving(&self) -> Summary {
            self.inner.resolver.summary()
        }

        /// The rotation watch: every 2 s, looks at both files (symbolic links
        /// followed: length, mtime, ctime, inode); once a change has held
        /// still for one look (a cert and a key replaced one after the other
        /// are read together), loads the new pair. A good pair is served to
        /// new handshakes (established connections keep theirs); a bad one is
        /// refused with one error line and the old pair keeps serving, and
        /// the same files are not tried again until they change. Runs until
        /// dropped.
        pub(crate) async fn watch_files(self, metrics: Arc<Metrics>) {
            let pair = &self.inner.pair;
            let mut interval = tokio::time::interval(WATCH_EVERY);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick is at once; a change since `load` is a change.
            interval.tick().await;
            let mut tried = self.inner.loaded.clone();
            let mut previous = tried.clone();
            loop {
                interval.tick().await;
                let now = stamps(pair);
                if now != previous {
                    // Still being written: look again before reading.
                    previous = now;
                    continue;
                }
                if now == tried {
                    continue;
                }
                tried = now;
                match certs::load_pair(pair, &self.inner.provider) {
                    Ok((key, summary)) => {
                        tracing::info!(
                            cert = %pair.cert.display(),
                            key = %pair.key.display(),
                            serial = %summary.serial,
                            subject = %summary.subject,
                            not_after = %summary.not_after,
                            "TLS certificate reloaded: new handshakes get serial {} (valid until {})",
                            summary.serial,
                            summary.not_after,
                        );
                        self.inner.resolver.swap(key, summary);
                        metrics.tls_reload(true);
                    }
                    Err(err) => {
                        tracing::error!(
                            "TLS certificate not reloaded, the previous one keeps serving: {err}"
                        );
                        metrics.tls_reload(false);
                    }
                }
            }
        }

        /// One handshake within `TLS_HANDSHAKE_TIMEOUT`, counted by outcome;
        /// the stream and, with mTLS, the verified client's identity. A
        /// failure is expected (scanners, a wrong CA) and logged at debug.
        pub(crate) async fn accept<IO: AsyncRead + AsyncWrite + Unpin>(
            &self,
            io: IO,
            metrics: &Metrics,
        ) -> Result<Accepted<IO>, HandshakeError> {
            let handshake = self.inner.acceptor.accept(io);
            let result = match tokio::time::timeout(self.inner.handshake_timeout, handshake).await {
                Err(_) => Err(HandshakeError::TimedOut),
                Ok(Err(err)) => Err(HandshakeError::Failed(err)),
                Ok(Ok(stream)) => Ok(stream),
            };
            match result {
                Ok(stream) => {
                    metrics.tls_handshake(HandshakeOutcome::Ok);
                    let identity = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .and_then(ClientIdentity::from_certificate)
                        .map(Arc::new);
                    Ok(Accepted { stream, identity })
                }
                Err(err) => {
                    metrics.tls_handshake(match err {
                        HandshakeError::TimedOut => HandshakeOutcome::TimedOut,
                        HandshakeError::Failed(_) => HandshakeOutcome::Failed,
                    });
                    tracing::debug!("{err}");
                    Err(err)
                }
            }
        }

        /// A permit for one handshake, held until it ends; `None` when
        /// `TLS_MAX_HANDSHAKES` are in progress (the caller closes the
        /// connection and counts `HandshakeOutcome::OverCap`).
        pub(crate) fn try_handshake_permit(&self) -> Option<OwnedSemaphorePermit> {
            Arc::clone(&self.inner.handshakes).try_acquire_owned().ok()
        }
    }

    /// A finished handshake.
    pub(crate) struct Accepted<IO> {
        /// The TLS stream, to serve HTTP on (ALPN says which version).
        pub(crate) stream: tokio_rustls::server::TlsStream<IO>,
        /// The verified client certificate's identity, with mTLS.
        pub(crate) identity: Option<Arc<ClientIdentity>>,
    }

    /// Why a handshake did not finish.
    #[derive(Debug, thiserror::Error)]
    pub(crate) enum HandshakeError {
        /// Not finished within `TLS_HANDSHAKE_TIMEOUT`.
        #[error("TLS handshake timed out")]
        TimedOut,
        /// The client or the connection failed it (no common version, a
        /// certificate refused, a reset).
        #[error("TLS handshake failed: {0}")]
        Failed(std::io::Error),
    }

    /// What says a file changed: length, mtime, ctime, device and inode
    /// (symbolic links followed, so a swapped link is a change); `None`
    /// while it cannot be looked at.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Stamp {
        len: u64,
        modified: Option<std::time::SystemTime>,
        #[cfg(unix)]
        changed: (i64, i64),
        #[cfg(unix)]
        file: (u64, u64),
    }

    fn stamp(path: &Path) -> Option<Stamp> {
        let meta = std::fs::metadata(path).ok()?;
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt as _;
        Some(Stamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            #[cfg(unix)]
            changed: (meta.ctime(), meta.ctime_nsec()),
            #[cfg(unix)]
            file: (meta.dev(), meta.ino()),
        })
    }

    fn stamps(pair: &PairPaths) -> (Option<Stamp>, Option<Stamp>) {
        (stamp(&pair.cert), stamp(&pair.key))
    }
}

#[cfg(all(test, feature = "tls"))]
mod tests;
