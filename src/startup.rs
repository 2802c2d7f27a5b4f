//! Everything done before the runtime exists: the listener chain, the handoff
//! variables, and what the process learns about its manager.
//!
//! These steps read the process environment and never write it: writing it
//! while another thread may read it is undefined behaviour, and
//! [`Server::listen`](crate::Server::listen) may run inside a multi-threaded
//! host. The `LISTEN_*` variables stay as they were (`LISTEN_PID` keeps
//! children from adopting; a successor gets its own set from `handover`).

use std::sync::Arc;

use crate::config::Config;
use crate::lifecycle::{Edge, Supervision};
use crate::listener::{self, ListenError, ListenSettings, Source};
use crate::notify;
use crate::settings::{ConfigError, protocol_var};
use crate::upgrade::{self, Succession, UpgradePlan};

/// Opens the listeners by the chain. `from_predecessor`: a binary upgrade
/// started us, so a socket handed to our pid is reported as `handoff`.
#[cfg(unix)]
pub(crate) fn open_listener(
    settings: &ListenSettings,
    from_predecessor: bool,
) -> Result<listener::Bound, ListenError> {
    use listener::inherit::{self, Handoff, HandoffVars};
    let vars = HandoffVars::from_lookup(protocol_var);
    let handoff = inherit::plan(&vars, std::process::id()).map(inherit::claim);
    handoff.and_then(|handoff| {
        let offer = match handoff {
            Handoff::Offered(mut offer) => {
                if from_predecessor && offer.source == Source::Systemd {
                    offer.source = Source::Handoff;
                }
                Some(offer)
            }
            Handoff::ForAnotherProcess { pid } => {
                tracing::info!(
                    listen_pid = pid,
                    "LISTEN_FDS is meant for another process; ignoring it"
                );
                None
            }
            Handoff::None => None,
        };
        listener::open(offer.as_ref(), &settings.listen_fd_name, settings)
    })
}

#[cfg(not(unix))]
pub(crate) fn open_listener(
    settings: &ListenSettings,
    _from_predecessor: bool,
) -> Result<listener::Bound, ListenError> {
    listener::open(&settings.listen_fd_name, settings)
}

/// DEBUG=true is meant for a developer's machine: say so loudly when a TCP
/// socket (whatever its source) is reachable from other hosts.
pub(crate) fn warn_if_debug_is_exposed(debug: bool, bound: &listener::Bound) {
    for address in bound.listeners.iter().filter_map(|l| l.info.address.tcp()) {
        warn_if_exposed(debug, address);
    }
}

fn warn_if_exposed(debug: bool, address: std::net::SocketAddr) {
    if debug && !address.ip().is_loopback() {
        tracing::warn!(
            %address,
            "DEBUG=true on an address other hosts can reach; use HOST=127.0.0.1 (or ::1) for development, DEBUG=false elsewhere"
        );
    }
}

/// The service manager's sockets and watchdog, from the real environment.
pub(crate) fn supervision() -> Supervision {
    let notifier = match notify::Notifier::connect(protocol_var("NOTIFY_SOCKET").as_deref()) {
        Ok(notifier) => notifier,
        Err(err) => {
            // Readiness is advice to the manager; serving matters more.
            tracing::warn!(error = %format!("{err:#}"), "cannot notify the service manager");
            None
        }
    };
    Supervision {
        watchdog_interval: notify::watchdog_interval(
            protocol_var("WATCHDOG_USEC").as_deref(),
            protocol_var("WATCHDOG_PID").as_deref(),
            std::process::id(),
        ),
        notifier,
    }
}

/// How to start a successor, and the predecessor waiting for our READY=1.
pub(crate) fn succession(
    reload: bool,
    bound: &listener::Bound,
    executable: std::io::Result<std::path::PathBuf>,
    handoff_notify: Option<&str>,
) -> Succession {
    let plan = match executable {
        Ok(executable) => Some(UpgradePlan {
            executable,
            args: std::env::args_os().skip(1).collect(),
            watch_executable: reload,
        }),
        Err(err) => {
            tracing::warn!(error = %err, "cannot tell the executable's path");
            None
        }
    };
    let predecessor = match handoff_notify {
        // Only a process that really took the socket over may report ready:
        // one that bound a port of its own would move the service elsewhere.
        Some(value) if bound.came_by_handoff() => notify::Notifier::connect(Some(value))
            .unwrap_or_else(|err| {
                let cause = std::error::Error::source(&err).map(ToString::to_string);
                tracing::warn!(
                    value,
                    error = cause.unwrap_or_default(),
                    "{} cannot be reached; the process that started us will time out",
                    upgrade::HANDOFF_NOTIFY_VAR
                );
                None
            }),
        Some(value) => {
            tracing::warn!(
                value,
                source = %bound.primary().info.source,
                "{} is set but no socket was handed to us; not reporting to it",
                upgrade::HANDOFF_NOTIFY_VAR
            );
            None
        }
        None => None,
    };
    Succession { plan, predecessor }
}

/// What the marked listeners need, checked against what is configured: the
/// certificate pair loaded when a listener serves TLS (refused, exit 78, when
/// it is missing or bad), trusted peers when a TCP listener takes PROXY
/// headers, a TLS listener to send a `redirect` listener's requests to.
pub(crate) fn edge(config: &Config, bound: &listener::Bound) -> Result<Edge, ConfigError> {
    let infos = || bound.listeners.iter().map(|l| &l.info);
    let marked = |pick: fn(&listener::Marks) -> bool| infos().find(|info| pick(&info.marks));
    if let Some(info) = marked(|marks| marks.redirect) {
        if marked(|marks| marks.tls).is_none() {
            return Err(ConfigError::invalid(
                "LISTEN",
                format!("redirect={}", info.address),
                "a tls listener beside a redirect one, to send its requests to (add a tls= entry, or drop redirect=)",
            ));
        }
    }
    let proxied_tcp = infos().find(|info| info.marks.proxy && info.address.tcp().is_some());
    if let (Some(info), true) = (proxied_tcp, config.proxy.trusted.is_empty()) {
        return Err(ConfigError::invalid(
            "PROXY_TRUSTED",
            "",
            format!(
                "the addresses of the load balancers that send PROXY headers: {} takes them over TCP, and no peer is trusted",
                info.address
            ),
        ));
    }
    #[cfg(feature = "tls")]
    let tls = match marked(|marks| marks.tls) {
        None => None,
        Some(info) => Some(load_tls(config, info)?),
    };
    #[cfg(not(feature = "tls"))]
    if let Some(info) = marked(|marks| marks.tls) {
        return Err(ConfigError::invalid(
            "LISTEN",
            format!("{}={}", info.marks, info.address),
            "a listener without tls: this program was built without portkeeper's tls feature",
        ));
    }
    Ok(Edge {
        #[cfg(feature = "tls")]
        tls,
        proxy: Arc::new(config.proxy.clone()),
    })
}

#[cfg(feature = "tls")]
fn load_tls(
    config: &Config,
    info: &listener::ListenerInfo,
) -> Result<crate::tls::Tls, ConfigError> {
    let Some(pair) = &config.tls.pair else {
        return Err(ConfigError::invalid(
            "TLS_CERT_FILE",
            "",
            format!(
                "a PEM certificate chain, with TLS_KEY_FILE (or systemd credentials tls-cert and tls-key): {} serves TLS",
                info.address
            ),
        ));
    };
    let tls = crate::tls::Tls::load(&config.tls, pair)?;
    let serving = tls.serving();
    tracing::info!(
        cert = %pair.cert.display(),
        serial = serving.serial,
        subject = serving.subject,
        not_after = serving.not_after,
        client_certificates = config.tls.client_ca.is_some(),
        "TLS certificate loaded"
    );
    Ok(tls)
}
