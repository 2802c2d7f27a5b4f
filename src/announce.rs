//! The start-up message: where to reach the server, and where its socket came from.
//!
//! The URLs are exact addresses, never a host name: for a wildcard address
//! (0.0.0.0 or ::) they are the loopback URL and this machine's own addresses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::listener::{Endpoint, ListenerInfo};

/// The URLs a person can open to reach a server listening on `address`.
///
/// `interfaces` are this machine's addresses, used only when `address` is a
/// wildcard; loopback comes first, then the others in the order given.
pub(crate) fn urls(address: SocketAddr, interfaces: &[IpAddr]) -> Vec<String> {
    let port = address.port();
    let ips: Vec<IpAddr> = match address.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => std::iter::once(IpAddr::V4(Ipv4Addr::LOCALHOST))
            .chain(
                interfaces
                    .iter()
                    .copied()
                    .filter(|ip| ip.is_ipv4() && !ip.is_loopback()),
            )
            .collect(),
        // A dual-stack `::` socket serves IPv4 too.
        IpAddr::V6(ip) if ip.is_unspecified() => std::iter::once(IpAddr::V4(Ipv4Addr::LOCALHOST))
            .chain(std::iter::once(IpAddr::V6(Ipv6Addr::LOCALHOST)))
            .chain(interfaces.iter().copied().filter(|ip| !ip.is_loopback()))
            .collect(),
        ip => vec![ip],
    };
    ips.into_iter()
        .map(|ip| match address {
            // A link-local address with its interface, as a URL writes it
            // (RFC 6874: `%25` and the number; `curl -g` takes it).
            SocketAddr::V6(v6) if v6.scope_id() != 0 && ip == IpAddr::V6(*v6.ip()) => {
                format!("http://[{}%25{}]:{port}/", v6.ip(), v6.scope_id())
            }
            _ => format!("http://{}/", SocketAddr::new(ip, port)),
        })
        .collect()
}

/// The URLs for a server listening on `address`, listing this machine's
/// interfaces only when `address` is a wildcard.
///
/// Listing interfaces is a netlink round trip plus an ioctl per address, on
/// the way to serving the first request; a specific address does not need it.
pub(crate) fn urls_for(address: SocketAddr) -> Vec<String> {
    let interfaces = if address.ip().is_unspecified() {
        interface_addresses()
    } else {
        Vec::new()
    };
    urls(address, &interfaces)
}

/// This machine's interface addresses, or none when they cannot be listed.
pub(crate) fn interface_addresses() -> Vec<IpAddr> {
    if_addrs::get_if_addrs()
        .map(|ifaces| {
            ifaces
                .into_iter()
                .map(|iface| iface.ip())
                // Link-local IPv6 needs a zone to be usable in a URL; skip it.
                .filter(|ip| !matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80))
                .collect()
        })
        .unwrap_or_default()
}

/// What a person can use to reach one listener: URLs for TCP,
/// `unix:<path>` (or `unix:@name`) for a Unix socket.
pub(crate) fn reach(info: &ListenerInfo) -> Vec<String> {
    match &info.address {
        Endpoint::Tcp(address) if info.marks.tls => urls_for(*address)
            .into_iter()
            .map(|url| url.replacen("http://", "https://", 1))
            .collect(),
        Endpoint::Tcp(address) => urls_for(*address),
        Endpoint::Path(_) | Endpoint::Abstract(_) => vec![format!("unix:{}", info.address)],
        Endpoint::Unnamed => Vec::new(),
    }
}

/// Logs the start-up message for one listener: one structured "serving"
/// event, then one line per URL.
///
/// The "serving" message repeats the address, role and source in words
/// because `journalctl` shows only the message by default; its fields
/// (`F_SOURCE`, `F_ROLE`, `F_ADDRESS`, `F_PORT`, `F_PATH`, `F_PID`, `F_FD`,
/// `F_FD_NAME` in the journal) are there for queries. A URL line is its
/// message alone.
pub(crate) fn log_serving(info: &ListenerInfo, urls: &[String]) {
    // `address` and the message are for people: the path's control
    // characters escaped (`Endpoint`'s Display). `path` is the path as it
    // is, for queries: a text log quotes and escapes it, and the journal
    // keeps it whole.
    let path = match &info.address {
        Endpoint::Tcp(_) | Endpoint::Unnamed => None,
        Endpoint::Path(path) => Some(path.to_string_lossy().into_owned()),
        Endpoint::Abstract(name) => Some(format!("@{name}")),
    };
    // The role, then the marks if any: "app", "app+tls".
    let marks = Some(info.marks.to_string()).filter(|marks| !marks.is_empty());
    let role = match &marks {
        None => info.role.as_str().to_owned(),
        Some(marks) => format!("{}+{marks}", info.role.as_str()),
    };
    tracing::info!(
        source = %info.source,
        role = info.role.as_str(),
        marks,
        address = %info.address,
        port = info.address.tcp().map(|a| a.port()),
        path,
        pid = std::process::id(),
        fd = info.fd,
        fd_name = info.fd_name.as_deref(),
        busy_ports = info.busy_ports.len(),
        "serving {} ({role}, listener from {})",
        info.address,
        info.source
    );
    let scheme = if info.marks.tls { "https" } else { "http" };
    for url in urls {
        match url.strip_prefix("unix:") {
            Some(path) => match path.strip_prefix('@') {
                Some(name) => {
                    tracing::info!("try curl --abstract-unix-socket {name} {scheme}://localhost/")
                }
                None => tracing::info!("try curl --unix-socket {path} {scheme}://localhost/"),
            },
            None => tracing::info!("open {url}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_specific_address_is_its_own_url() {
        assert_eq!(
            urls("127.0.0.1:5050".parse().unwrap(), &[]),
            vec!["http://127.0.0.1:5050/"]
        );
        assert_eq!(
            urls("[::1]:8080".parse().unwrap(), &[]),
            vec!["http://[::1]:8080/"]
        );
    }

    #[test]
    fn a_link_local_url_keeps_its_interface() {
        assert_eq!(
            urls("[fe80::1%2]:8080".parse().unwrap(), &[]),
            vec!["http://[fe80::1%252]:8080/"]
        );
    }

    #[test]
    fn urls_for_a_wildcard_start_with_loopback_and_for_an_address_are_that_address() {
        assert_eq!(
            urls_for("127.0.0.1:5050".parse().unwrap()),
            vec!["http://127.0.0.1:5050/"]
        );
        let wildcard = urls_for("0.0.0.0:5050".parse().unwrap());
        assert_eq!(wildcard[0], "http://127.0.0.1:5050/");
        assert!(wildcard.iter().all(|url| url.ends_with(":5050/")));
    }

    #[test]
    fn wildcards_list_loopback_first_then_this_machine() {
        let ifaces: Vec<IpAddr> = vec![
            "127.0.0.1".parse().unwrap(),
            "10.1.2.3".parse().unwrap(),
            "2001:db8::5".parse().unwrap(),
        ];
        assert_eq!(
            urls("0.0.0.0:5050".parse().unwrap(), &ifaces),
            vec!["http://127.0.0.1:5050/", "http://10.1.2.3:5050/"]
        );
        assert_eq!(
            urls("[::]:5050".parse().unwrap(), &ifaces),
            vec![
                "http://127.0.0.1:5050/",
                "http://[::1]:5050/",
                "http://10.1.2.3:5050/",
                "http://[2001:db8::5]:5050/"
            ]
        );
    }
}
