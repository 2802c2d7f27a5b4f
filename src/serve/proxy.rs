//! The PROXY protocol (v1 text, v2 binary) on listeners marked `proxy`:
//! behind HAProxy's `send-proxy-v2`, an AWS NLB, or a local proxy on a Unix
//! socket, the first bytes of a connection name the real client.
//!
//! [`read_header`] reads exactly one header, never a byte past it: what
//! follows is TLS or HTTP for the next layer. Parsing is the `ppp` crate's;
//! what is ours is finding where the header ends on a stream, and
//! [`ProxySettings`], the peers allowed to send one (`PROXY_TRUSTED`).
//!
//! How the end is found: we peek at what has arrived. A v2 header says its
//! length in its first 16 bytes, so once they are in, the rest is read
//! exactly. A v1 header ends at its CRLF, at most 107 bytes in. When what
//! has arrived is only part of a header, every byte of it belongs to the
//! header, so it is consumed and the next peek waits for new bytes: no
//! re-peek of the same bytes (which would spin on a readiness that stays
//! set), and a peer that closes mid-header is seen at once (a peek of 0
//! bytes). A header usually arrives in one segment, so that path is rare.

// Wired into the accept loop separately; until then nothing calls in.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use ppp::{v1, v2};
use tokio::io::AsyncReadExt as _;

use crate::settings::{ConfigError, Environment, Variable};

const PROXY_TRUSTED: Variable = Variable::unset(
    "PROXY_TRUSTED",
    "addresses or networks (CIDR) allowed to send a PROXY header on listeners marked `proxy`, comma-separated; Unix-socket peers are always trusted",
);

/// The peers allowed to send a PROXY header: `PROXY_TRUSTED`, comma-separated
/// IP addresses or CIDR networks. Unset or empty means none, so a TCP listener
/// marked `proxy` then refuses every peer. A Unix-socket peer is always
/// trusted: whoever may connect to the socket file is the local proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ProxySettings {
    /// The trusted networks; a single address is a /32 or /128 network.
    pub(crate) trusted: Vec<IpNet>,
}

impl ProxySettings {
    /// The PROXY protocol's variables, in the order of the documentation.
    pub(crate) const VARIABLES: &'static [Variable] = &[PROXY_TRUSTED];

    /// Reads and checks `PROXY_TRUSTED`.
    pub(crate) fn from_env(env: &Environment) -> Result<Self, ConfigError> {
        let trusted = env.setting(&PROXY_TRUSTED)?.parse(parse_trusted)?;
        Ok(ProxySettings { trusted })
    }

    /// Whether a TCP peer may send a header. An IPv4-mapped IPv6 peer (a
    /// dual-stack listener's view of an IPv4 client) counts as its IPv4
    /// address.
    pub(crate) fn trusts(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.trusted.iter().any(|network| network.contains(&peer))
    }
}

/// Comma-separated addresses or CIDR networks; empty entries (a trailing
/// comma) are skipped. The error names the entry that is neither.
fn parse_trusted(value: &str) -> Result<Vec<IpNet>, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let network = match entry.parse::<IpNet>() {
                Ok(network) => network,
                // An IPv4-mapped entry is written for an IPv4 peer: keep the
                // IPv4 form, which `trusts` compares with.
                Err(_) => match entry.parse::<IpAddr>() {
                    Ok(addr) => IpNet::from(addr.to_canonical()),
                    Err(_) => {
                        return Err(format!(
                            "comma-separated IP addresses or CIDR networks such as 10.0.0.0/8, 192.0.2.7, fd00::/8; {entry:?} is neither"
                        ));
                    }
                },
            };
            // `10.1.2.3/8` means the network 10.0.0.0/8.
            Ok(network.trunc())
        })
        .collect()
}

/// How long a peer has to send the whole header.
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// What a valid header said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proxied {
    /// The original client (source) and the address it connected to (destination).
    Addresses {
        /// The original client.
        source: SocketAddr,
        /// The address the client connected to, on the proxy.
        destination: SocketAddr,
    },
    /// v2 LOCAL (the balancer's own health check) or v1 UNKNOWN, or a
    /// non-IP v2 family: the connection's own peer stands.
    Local,
}

/// Why no header could be read. Each is one line; peer bytes appear only
/// as a short, escaped excerpt.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    /// The whole header did not arrive within [`HEADER_TIMEOUT`].
    #[error("no PROXY header within {} s", HEADER_TIMEOUT.as_secs())]
    Timeout,
    /// The peer closed (or half-closed) before the header's last byte.
    #[error("the connection closed before its PROXY header ended")]
    Closed,
    /// The bytes start like a header but are not a valid one.
    #[error("malformed PROXY header: {0}")]
    Malformed(String),
    /// The first bytes are not a header's: a peer speaking TLS or HTTP directly.
    #[error("not a PROXY header")]
    NotHeader,
    /// The socket failed (a reset, for one).
    #[error("reading the PROXY header failed: {0}")]
    Io(#[source] std::io::Error),
}

/// The start of a v1 header, space included.
const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest v1 header, CRLF included.
const V1_MAX: usize = 107;
/// The fixed part of a v2 header: the signature, version and command,
/// family and protocol, and the length of the rest (bytes 14..16).
const V2_FIXED: usize = 16;
/// The most bytes a peer's excerpt shows in an error.
const EXCERPT: usize = 48;

/// Reads exactly one header from the start of the stream (never a byte
/// past its end: the rest is TLS or HTTP for the next layer), within
/// [`HEADER_TIMEOUT`]. `stream` is the accepted socket.
pub(crate) async fn read_header(stream: &mut super::Stream) -> Result<Proxied, ProxyError> {
    tokio::time::timeout(HEADER_TIMEOUT, read_header_untimed(stream))
        .await
        .unwrap_or(Err(ProxyError::Timeout))
}

/// Where the header stands, given the bytes so far.
#[derive(Debug, PartialEq, Eq)]
enum Progress {
    /// The header is this many bytes long in all.
    Length(usize),
    /// Every byte so far is the header's, and more are needed.
    Incomplete,
}

async fn read_header_untimed(stream: &mut super::Stream) -> Result<Proxied, ProxyError> {
    // The bytes consumed so far: only ever part of the header.
    let mut header = Vec::with_capacity(V1_MAX);
    let mut peeked = [0u8; V1_MAX];
    let length = loop {
        // Peek no further than a header could reach: a v1 header ends
        // within V1_MAX bytes, and a v2 one is read exactly once its fixed
        // part is in (fewer than V1_MAX bytes).
        let room = V1_MAX - header.len();
        let n = peek(stream, &mut peeked[..room])
            .await
            .map_err(ProxyError::Io)?;
        if n == 0 {
            return Err(ProxyError::Closed);
        }
        let consumed = header.len();
        header.extend_from_slice(&peeked[..n]);
        match progress(&header)? {
            Progress::Length(length) => {
                // The peeked bytes are still in the socket: consume only the
                // header's (below).
                header.truncate(consumed);
                break length;
            }
            Progress::Incomplete => {
                // All of them are the header's: consume them, so the next
                // peek waits for new bytes.
                read_exact(stream, &mut header[consumed..]).await?;
            }
        }
    };
    let consumed = header.len();
    header.resize(length, 0);
    read_exact(stream, &mut header[consumed..]).await?;
    parse(&header)
}

/// Fills `buf` from the stream; an end of stream first is [`ProxyError::Closed`].
async fn read_exact(stream: &mut super::Stream, buf: &mut [u8]) -> Result<(), ProxyError> {
    match stream.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => Err(ProxyError::Closed),
        Err(err) => Err(ProxyError::Io(err)),
    }
}

/// Where a header starting with `bytes` stands; what cannot become a
/// header is refused at once.
fn progress(bytes: &[u8]) -> Result<Progress, ProxyError> {
    if starts_like(bytes, v2::PROTOCOL_PREFIX) {
        if bytes.len() < V2_FIXED {
            return Ok(Progress::Incomplete);
        }
        // ppp checks the version, command, family and that the length can
        // hold the family's addresses; it then asks for the rest.
        return match v2::Header::try_from(&bytes[..V2_FIXED]) {
            Ok(header) => Ok(Progress::Length(header.len())),
            Err(v2::ParseError::Partial(_, length)) => Ok(Progress::Length(V2_FIXED + length)),
            Err(err) => Err(malformed(&err, None)),
        };
    }
    if starts_like(bytes, V1_PREFIX) {
        // v1 is printable ASCII up to its CRLF: anything else is refused
        // without waiting for the rest.
        let line = bytes.iter().position(|&b| b == b'\r');
        let text = &bytes[..line.unwrap_or(bytes.len())];
        if let Some(bad) = text.iter().position(|b| !(b' '..=b'~').contains(b)) {
            return Err(ProxyError::Malformed(format!(
                "a byte that is not printable ASCII at offset {bad} ({})",
                excerpt(bytes)
            )));
        }
        return match line {
            // ppp is given the line only once its CRLF is in: on a part
            // that ends after a space ("... 56324 ") it reports an invalid
            // port, not a partial header. It judges the LF (or what came in
            // its place) too.
            Some(cr) if cr + 2 > V1_MAX => Err(ProxyError::Malformed(format!(
                "no CRLF within {V1_MAX} bytes ({})",
                excerpt(bytes)
            ))),
            Some(cr) if cr + 1 < bytes.len() => Ok(Progress::Length(cr + 2)),
            Some(_) => Ok(Progress::Incomplete),
            None if bytes.len() >= V1_MAX => Err(ProxyError::Malformed(format!(
                "no CRLF within {V1_MAX} bytes ({})",
                excerpt(bytes)
            ))),
            None => Ok(Progress::Incomplete),
        };
    }
    Err(ProxyError::NotHeader)
}

/// Whether `bytes` is a prefix of `signature`, or starts with all of it.
fn starts_like(bytes: &[u8], signature: &[u8]) -> bool {
    let common = bytes.len().min(signature.len());
    bytes[..common] == signature[..common]
}

/// Parses a whole header, `length` bytes as [`progress`] found.
fn parse(header: &[u8]) -> Result<Proxied, ProxyError> {
    if header.starts_with(v2::PROTOCOL_PREFIX) {
        let parsed = v2::Header::try_from(header).map_err(|err| malformed(&err, None))?;
        return Ok(match (parsed.command, parsed.addresses) {
            (v2::Command::Proxy, v2::Addresses::IPv4(ip)) => Proxied::Addresses {
                source: (ip.source_address, ip.source_port).into(),
                destination: (ip.destination_address, ip.destination_port).into(),
            },
            (v2::Command::Proxy, v2::Addresses::IPv6(ip)) => Proxied::Addresses {
                source: (ip.source_address, ip.source_port).into(),
                destination: (ip.destination_address, ip.destination_port).into(),
            },
            // LOCAL, or a family with no IP address (unspecified, Unix).
            _ => Proxied::Local,
        });
    }
    let parsed = v1::Header::try_from(header).map_err(|err| malformed(&err, Some(header)))?;
    Ok(match parsed.addresses {
        v1::Addresses::Tcp4(ip) => Proxied::Addresses {
            source: (ip.source_address, ip.source_port).into(),
            destination: (ip.destination_address, ip.destination_port).into(),
        },
        v1::Addresses::Tcp6(ip) => Proxied::Addresses {
            source: (ip.source_address, ip.source_port).into(),
            destination: (ip.destination_address, ip.destination_port).into(),
        },
        v1::Addresses::Unknown => Proxied::Local,
    })
}

/// ppp's reason (a sentence), with an excerpt of a v1 line: v1's reasons do
/// not show the value they refuse.
fn malformed(err: &dyn std::error::Error, line: Option<&[u8]>) -> ProxyError {
    // Some of ppp's reasons hold a raw CRLF ("must end in '\r\n'"): escaped,
    // the error stays on one line.
    let mut reason = String::new();
    for c in err.to_string().trim_end_matches('.').chars() {
        if c.is_control() {
            reason.extend(c.escape_default());
        } else {
            reason.push(c);
        }
    }
    ProxyError::Malformed(match line {
        Some(line) => format!("{reason} ({})", excerpt(line)),
        None => reason.to_owned(),
    })
}

/// At most [`EXCERPT`] bytes of the peer's, escaped and quoted.
fn excerpt(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(EXCERPT)];
    let more = if bytes.len() > EXCERPT { "..." } else { "" };
    format!("\"{}\"{more}", shown.escape_ascii())
}

/// Copies the bytes waiting on the stream into `buf` without consuming
/// them, waiting for some if there are none; 0 at the end of the stream.
async fn peek(stream: &mut super::Stream, buf: &mut [u8]) -> std::io::Result<usize> {
    match stream {
        tokio_util::either::Either::Left(tcp) => tcp.peek(buf).await,
        #[cfg(unix)]
        tokio_util::either::Either::Right(unix) => peek_unix(unix, buf).await,
        #[cfg(not(unix))]
        tokio_util::either::Either::Right(tcp) => tcp.peek(buf).await,
    }
}

/// `UnixStream` has no `peek`: `recv` with `MSG_PEEK`, driven by tokio's
/// readiness (a `WouldBlock` clears it, so the wait is for new bytes).
#[cfg(unix)]
async fn peek_unix(stream: &tokio::net::UnixStream, buf: &mut [u8]) -> std::io::Result<usize> {
    use nix::sys::socket::{MsgFlags, recv};
    use std::os::fd::AsRawFd as _;
    use tokio::io::Interest;

    let fd = stream.as_raw_fd();
    loop {
        stream.readable().await?;
        match stream.try_io(Interest::READABLE, || {
            recv(fd, buf, MsgFlags::MSG_PEEK).map_err(std::io::Error::from)
        }) {
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;
    use tokio::io::AsyncWriteExt as _;
    use tokio::net::{TcpListener, TcpStream};
    use tokio_util::either::Either;

    /// What the client sends after the header: the next layer's bytes.
    const NEXT: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    /// A bound on every wait of a test but the header's own timeout.
    const BOUND: Duration = Duration::from_secs(10);

    /// A loopback TCP connection: the client's end and the accepted one.
    async fn tcp_pair() -> (
        Either<TcpStream, tokio::net::UnixStream>,
        super::super::Stream,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        // Each write goes out at once, so a split header arrives split.
        client.set_nodelay(true).unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        (Either::Left(client), Either::Left(accepted))
    }

    /// A Unix socketpair: the client's end and the server's.
    async fn unix_pair() -> (
        Either<TcpStream, tokio::net::UnixStream>,
        super::super::Stream,
    ) {
        let (client, server) = tokio::net::UnixStream::pair().unwrap();
        (Either::Right(client), Either::Right(server))
    }

    /// Sends `chunks` (pausing between them) then closes; returns what
    /// `read_header` made of it and every byte the stream had left.
    async fn exchange(
        (mut client, mut server): (
            Either<TcpStream, tokio::net::UnixStream>,
            super::super::Stream,
        ),
        chunks: &[&[u8]],
    ) -> (Result<Proxied, ProxyError>, Vec<u8>) {
        let chunks: Vec<Vec<u8>> = chunks.iter().map(|c| c.to_vec()).collect();
        let sender = tokio::spawn(async move {
            for (i, chunk) in chunks.iter().enumerate() {
                if i > 0 {
                    // The point of the test: the header arrives in parts.
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
                client.write_all(chunk).await.unwrap();
            }
            client.shutdown().await.unwrap();
        });
        let result = tokio::time::timeout(BOUND, read_header(&mut server))
            .await
            .unwrap();
        let mut rest = Vec::new();
        if result.is_ok() {
            tokio::time::timeout(BOUND, server.read_to_end(&mut rest))
                .await
                .unwrap()
                .unwrap();
        }
        tokio::time::timeout(BOUND, sender).await.unwrap().unwrap();
        (result, rest)
    }

    /// `header` then NEXT, in one write and split at each of `splits`, over
    /// TCP and a Unix socketpair: the same result, NEXT left intact.
    async fn parses(header: &[u8], splits: &[usize]) -> Proxied {
        let whole = [header, NEXT].concat();
        let (expected, rest) = exchange(tcp_pair().await, &[&whole]).await;
        let expected = expected.unwrap();
        assert_eq!(rest, NEXT);
        let (result, rest) = exchange(unix_pair().await, &[&whole]).await;
        assert_eq!(result.unwrap(), expected);
        assert_eq!(rest, NEXT);
        for &at in splits {
            let (first, second) = whole.split_at(at);
            for pair in [tcp_pair().await, unix_pair().await] {
                let (result, rest) = exchange(pair, &[first, second]).await;
                assert_eq!(result.unwrap(), expected, "split at {at}");
                assert_eq!(rest, NEXT, "split at {at}");
            }
        }
        expected
    }

    /// The error for `bytes` sent then closed, over TCP and Unix alike.
    async fn refused(chunks: &[&[u8]]) -> ProxyError {
        let (tcp, _) = exchange(tcp_pair().await, chunks).await;
        let (unix, _) = exchange(unix_pair().await, chunks).await;
        let tcp = tcp.unwrap_err();
        assert_eq!(tcp.to_string(), unix.unwrap_err().to_string());
        let message = tcp.to_string();
        assert_eq!(message.lines().count(), 1, "{message}");
        tcp
    }

    fn addresses(source: &str, destination: &str) -> Proxied {
        Proxied::Addresses {
            source: source.parse().unwrap(),
            destination: destination.parse().unwrap(),
        }
    }

    /// A v2 header by hand: signature, version/command, family/protocol,
    /// length, then `body`.
    fn v2_header(version_command: u8, family_protocol: u8, body: &[u8]) -> Vec<u8> {
        let mut header = v2::PROTOCOL_PREFIX.to_vec();
        header.extend([version_command, family_protocol]);
        header.extend(u16::try_from(body.len()).unwrap().to_be_bytes());
        header.extend(body);
        header
    }

    const V2_IPV4_BODY: [u8; 12] = [192, 0, 2, 1, 198, 51, 100, 2, 0xdc, 0x04, 0x01, 0xbb];

    #[tokio::test]
    async fn v1_tcp4() {
        let header = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n";
        // Split in the prefix, after a space (where the port is still
        // empty), and between the CR and the LF.
        let proxied = parses(header, &[3, 39, header.len() - 1]).await;
        assert_eq!(proxied, addresses("192.0.2.1:56324", "198.51.100.2:443"));
    }

    #[tokio::test]
    async fn v1_tcp6() {
        let header = b"PROXY TCP6 2001:db8::1 2001:db8::2 56324 443\r\n";
        let proxied = parses(header, &[20]).await;
        assert_eq!(
            proxied,
            addresses("[2001:db8::1]:56324", "[2001:db8::2]:443")
        );
    }

    #[tokio::test]
    async fn v1_unknown() {
        assert_eq!(parses(b"PROXY UNKNOWN\r\n", &[]).await, Proxied::Local);
        let header = b"PROXY UNKNOWN ffff:f::1 ffff:f::2 1 2\r\n";
        assert_eq!(parses(header, &[]).await, Proxied::Local);
    }

    #[tokio::test]
    async fn v2_proxy_ipv4() {
        let header = v2_header(0x21, 0x11, &V2_IPV4_BODY);
        // Split in the signature, in the length, and in the addresses.
        let proxied = parses(&header, &[5, 15, 20]).await;
        assert_eq!(proxied, addresses("192.0.2.1:56324", "198.51.100.2:443"));
    }

    #[tokio::test]
    async fn v2_proxy_ipv6() {
        let source: SocketAddr = "[2001:db8::1]:56324".parse().unwrap();
        let destination: SocketAddr = "[2001:db8::2]:443".parse().unwrap();
        let header = v2::Builder::with_addresses(0x21, v2::Protocol::Stream, (source, destination))
            .build()
            .unwrap();
        assert_eq!(header.len(), 16 + 36);
        let proxied = parses(&header, &[30]).await;
        assert_eq!(
            proxied,
            Proxied::Addresses {
                source,
                destination
            }
        );
    }

    #[tokio::test]
    async fn v2_local_and_non_ip_families_keep_the_peer() {
        // LOCAL with no addresses, as a balancer's health check sends it.
        assert_eq!(
            parses(&v2_header(0x20, 0x00, &[]), &[]).await,
            Proxied::Local
        );
        // LOCAL with addresses: they are not the client's.
        let local = v2_header(0x20, 0x11, &V2_IPV4_BODY);
        assert_eq!(parses(&local, &[]).await, Proxied::Local);
        // PROXY over a Unix family: no IP address to give.
        let unix = v2_header(0x21, 0x31, &[0; 216]);
        assert_eq!(parses(&unix, &[100]).await, Proxied::Local);
    }

    #[tokio::test]
    async fn v2_with_tlvs() {
        let source: SocketAddr = "192.0.2.1:56324".parse().unwrap();
        let destination: SocketAddr = "198.51.100.2:443".parse().unwrap();
        let header = v2::Builder::with_addresses(0x21, v2::Protocol::Stream, (source, destination))
            .write_tlv(v2::Type::Authority, b"api.example.com")
            .unwrap()
            // As an AWS NLB sends it: a VPC endpoint id in a custom TLV.
            .write_tlv(0xEA, b"\x01vpce-0123456789abcdef")
            .unwrap()
            .build()
            .unwrap();
        assert!(header.len() > 16 + 12 + 20);
        let proxied = parses(&header, &[35]).await;
        assert_eq!(
            proxied,
            Proxied::Addresses {
                source,
                destination
            }
        );
    }

    #[tokio::test]
    async fn malformed_v1_is_refused() {
        let err = refused(&[b"PROXY TCP4 192.0.2.300 198.51.100.2 1 2\r\nGET"]).await;
        let message = err.to_string();
        assert!(matches!(err, ProxyError::Malformed(_)), "{message}");
        assert!(message.starts_with("malformed PROXY header: "), "{message}");
        assert!(message.contains("192.0.2.300"), "{message}");
        let err = refused(&[b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX"]).await;
        assert!(matches!(err, ProxyError::Malformed(_)), "{err}");
        let err = refused(&[b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n"]).await;
        assert!(matches!(err, ProxyError::Malformed(_)), "{err}");
    }

    #[tokio::test]
    async fn v1_without_crlf_is_refused_after_107_bytes() {
        let mut long = b"PROXY TCP6 ".to_vec();
        long.resize(200, b'1');
        // The refusal comes without waiting: the client does not close.
        let (mut client, mut server) = tcp_pair().await;
        client.write_all(&long).await.unwrap();
        let err = tokio::time::timeout(BOUND, read_header(&mut server))
            .await
            .unwrap()
            .unwrap_err();
        let message = err.to_string();
        assert!(message.contains("no CRLF within 107 bytes"), "{message}");
        // The excerpt is short.
        assert!(message.len() < 120, "{message}");
        // A CR as the 107th byte leaves no room for the LF.
        let mut last = b"PROXY UNKNOWN ".to_vec();
        last.resize(106, b'x');
        last.extend(b"\r\n");
        assert!(matches!(refused(&[&last]).await, ProxyError::Malformed(_)));
    }

    #[tokio::test]
    async fn v1_with_a_control_byte_is_refused_with_an_escaped_excerpt() {
        let err = refused(&[b"PROXY \x1b[31mred"]).await;
        let message = err.to_string();
        assert!(message.contains("\\x1b[31mred"), "{message}");
        assert!(!message.contains('\x1b'), "{message}");
    }

    #[tokio::test]
    async fn malformed_v2_is_refused() {
        let bad_version = v2_header(0x11, 0x11, &V2_IPV4_BODY);
        let err = refused(&[&bad_version]).await;
        assert!(matches!(err, ProxyError::Malformed(_)), "{err}");
        let bad_command = v2_header(0x22, 0x11, &V2_IPV4_BODY);
        let err = refused(&[&bad_command]).await;
        assert!(matches!(err, ProxyError::Malformed(_)), "{err}");
        // A length too short for the family's addresses.
        let short = v2_header(0x21, 0x11, &V2_IPV4_BODY[..8]);
        let err = refused(&[&short]).await;
        assert!(matches!(err, ProxyError::Malformed(_)), "{err}");
    }

    #[tokio::test]
    async fn v2_longer_than_sent_then_closed() {
        let mut header = v2_header(0x21, 0x11, &V2_IPV4_BODY);
        // Says 200 bytes follow the fixed part; 12 do.
        header[14..16].copy_from_slice(&200u16.to_be_bytes());
        let err = refused(&[&header]).await;
        assert!(matches!(err, ProxyError::Closed), "{err}");
        assert_eq!(
            err.to_string(),
            "the connection closed before its PROXY header ended"
        );
    }

    #[tokio::test]
    async fn a_peer_closing_mid_header() {
        for partial in [
            &b"PROXY TCP4 192.0.2.1 198.51"[..],
            b"PROX",
            &v2::PROTOCOL_PREFIX[..7],
            &v2_header(0x21, 0x11, &V2_IPV4_BODY)[..20],
        ] {
            let err = refused(&[partial]).await;
            assert!(matches!(err, ProxyError::Closed), "{err}");
        }
        assert!(matches!(refused(&[]).await, ProxyError::Closed));
    }

    #[tokio::test]
    async fn a_peer_speaking_http_or_tls_directly() {
        // The client keeps its end open: the refusal does not wait.
        for first in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"\x16\x03\x01\x02\x00\x01",
            b"PRI * HTTP/2.0",
        ] {
            let (mut client, mut server) = tcp_pair().await;
            client.write_all(first).await.unwrap();
            let err = tokio::time::timeout(BOUND, read_header(&mut server))
                .await
                .unwrap()
                .unwrap_err();
            assert!(matches!(err, ProxyError::NotHeader), "{err}");
            assert_eq!(err.to_string(), "not a PROXY header");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_sent_times_out() {
        for (mut client, mut server) in [tcp_pair().await, unix_pair().await] {
            // Part of a header, then silence: the same bound.
            client.write_all(b"PROXY TCP4 ").await.unwrap();
            let started = tokio::time::Instant::now();
            let err = read_header(&mut server).await.unwrap_err();
            assert!(matches!(err, ProxyError::Timeout), "{err}");
            assert_eq!(err.to_string(), "no PROXY header within 5 s");
            assert_eq!(started.elapsed(), HEADER_TIMEOUT);
            drop(client);
        }
        let (_client, mut server) = tcp_pair().await;
        let err = read_header(&mut server).await.unwrap_err();
        assert!(matches!(err, ProxyError::Timeout), "{err}");
    }

    fn settings(value: &str) -> Result<ProxySettings, ConfigError> {
        let env = Environment::new(
            [],
            [(OsString::from("PROXY_TRUSTED"), OsString::from(value))],
        );
        ProxySettings::from_env(&env)
    }

    #[test]
    fn trusted_addresses_and_networks() {
        let unset = ProxySettings::from_env(&Environment::new([], [])).unwrap();
        assert!(unset.trusted.is_empty());
        assert!(settings("").unwrap().trusted.is_empty());
        let parsed = settings(" 10.0.0.0/8, 192.0.2.7 ,fd00::/8,2001:db8::1,10.1.2.3/16,").unwrap();
        let expected: Vec<IpNet> = [
            "10.0.0.0/8",
            "192.0.2.7/32",
            "fd00::/8",
            "2001:db8::1/128",
            "10.1.0.0/16",
        ]
        .iter()
        .map(|n| n.parse().unwrap())
        .collect();
        assert_eq!(parsed.trusted, expected);
        // A mapped entry is its IPv4 address.
        assert_eq!(
            settings("::ffff:192.0.2.7").unwrap().trusted,
            vec!["192.0.2.7/32".parse::<IpNet>().unwrap()]
        );
    }

    #[test]
    fn a_bad_entry_names_the_variable_the_value_and_what_is_expected() {
        for (value, entry) in [
            ("10.0.0.0/8,proxy.internal", "proxy.internal"),
            ("10.0.0.0/33", "10.0.0.0/33"),
            ("192.0.2.7:443", "192.0.2.7:443"),
            ("fe80::1%eth0", "fe80::1%eth0"),
        ] {
            let message = settings(value).unwrap_err().to_string();
            assert!(message.starts_with("PROXY_TRUSTED: "), "{message}");
            assert!(message.contains(&format!("{value:?}")), "{message}");
            assert!(
                message.contains("IP addresses or CIDR networks"),
                "{message}"
            );
            assert!(
                message.contains(&format!("{entry:?} is neither")),
                "{message}"
            );
            assert_eq!(message.lines().count(), 1, "{message}");
        }
    }

    #[test]
    fn trusts_v4_v6_and_mapped_v4() {
        let settings = settings("10.0.0.0/8,192.0.2.7,fd00::/8").unwrap();
        let trusts = |peer: &str| settings.trusts(peer.parse().unwrap());
        assert!(trusts("10.1.2.3"));
        assert!(trusts("192.0.2.7"));
        assert!(!trusts("192.0.2.8"));
        assert!(!trusts("11.0.0.1"));
        assert!(trusts("fd12::1"));
        assert!(!trusts("fe80::1"));
        assert!(trusts("::ffff:10.9.9.9"));
        assert!(trusts("::ffff:192.0.2.7"));
        assert!(!trusts("::ffff:192.0.2.8"));
        // No list trusts no one.
        assert!(!ProxySettings::default().trusts("127.0.0.1".parse().unwrap()));
    }
}
