//! The identity of a verified client certificate (mTLS), as handlers see it.

use std::fmt::Write as _;
use std::net::IpAddr;

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::objects::{oid_registry, oid2abbrev};
use x509_parser::x509::X509Name;

/// The verified client certificate's identity (mTLS): its subject and its
/// subject alternative names.
///
/// With `TLS_CLIENT_CA_FILE` set, every client must present a certificate
/// that chains to one of those CAs, or its handshake fails; a handler then
/// learns who the client is from this. The certificate has been verified
/// (chain, validity, client-auth usage) before a handler ever sees it; what
/// a subject or a SAN is allowed to do is the application's decision.
///
/// ```no_run
/// use portkeeper::ClientIdentity;
///
/// fn may_deploy(client: &ClientIdentity) -> bool {
///     client.subject() == "CN=ci,O=Example"
///         || client.sans().iter().any(|san| san == "URI:spiffe://example.org/ci")
/// }
/// # let _ = may_deploy;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientIdentity {
    subject: String,
    sans: Vec<String>,
}

impl ClientIdentity {
    /// The subject's distinguished name in the string form of RFC 4514:
    /// the most specific part first, comma-separated, special characters
    /// escaped (`CN=alice,O=Example`).
    ///
    /// ```no_run
    /// # fn show(client: &portkeeper::ClientIdentity) {
    /// println!("request from {}", client.subject());
    /// # }
    /// ```
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Subject alternative names as `"DNS:host"`, `"IP:addr"`, `"email:x@y"`,
    /// `"URI:..."`, in the certificate's order (other kinds are left out).
    ///
    /// ```no_run
    /// # fn check(client: &portkeeper::ClientIdentity) -> bool {
    /// client.sans().iter().any(|san| san == "email:alice@example.com")
    /// # }
    /// ```
    pub fn sans(&self) -> &[String] {
        &self.sans
    }

    /// Reads the identity of a certificate rustls has verified; `None` when
    /// it cannot be parsed (rustls would not have accepted it).
    pub(crate) fn from_certificate(cert: &CertificateDer<'_>) -> Option<ClientIdentity> {
        let (_, cert) = x509_parser::parse_x509_certificate(cert).ok()?;
        let sans = match cert.subject_alternative_name() {
            Ok(Some(extension)) => extension
                .value
                .general_names
                .iter()
                .filter_map(show_general_name)
                .collect(),
            _ => Vec::new(),
        };
        Some(ClientIdentity {
            subject: rfc4514(cert.subject()),
            sans,
        })
    }
}

fn show_general_name(name: &GeneralName<'_>) -> Option<String> {
    Some(match name {
        GeneralName::DNSName(host) => format!("DNS:{host}"),
        GeneralName::RFC822Name(email) => format!("email:{email}"),
        GeneralName::URI(uri) => format!("URI:{uri}"),
        GeneralName::IPAddress(bytes) => {
            let ip = match bytes.len() {
                4 => IpAddr::from(<[u8; 4]>::try_from(*bytes).ok()?),
                16 => IpAddr::from(<[u8; 16]>::try_from(*bytes).ok()?),
                _ => return None,
            };
            format!("IP:{ip}")
        }
        _ => return None,
    })
}

/// A distinguished name as RFC 4514 writes it: the RDNs in reverse order
/// (the certificate holds the most general first), multi-valued ones joined
/// by `+`. A value that is no string type is `#` and its content in hex.
fn rfc4514(name: &X509Name<'_>) -> String {
    let mut out = String::new();
    for (index, rdn) in name
        .iter()
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .enumerate()
    {
        if index > 0 {
            out.push(',');
        }
        for (position, attribute) in rdn.iter().enumerate() {
            if position > 0 {
                out.push('+');
            }
            let oid = attribute.attr_type();
            match oid2abbrev(oid, oid_registry()) {
                Ok(short) => out.push_str(short),
                Err(_) => out.push_str(&oid.to_id_string()),
            }
            out.push('=');
            match attribute.as_str() {
                Ok(value) => escape_into(&mut out, value),
                Err(_) => {
                    out.push('#');
                    for byte in attribute.as_slice() {
                        let _ = write!(out, "{byte:02x}");
                    }
                }
            }
        }
    }
    out
}

/// RFC 4514 section 2.4: `,+"\<>;` anywhere, a leading space or `#`, a
/// trailing space, and NUL are escaped.
fn escape_into(out: &mut String, value: &str) {
    let last = value.chars().count().saturating_sub(1);
    for (index, c) in value.chars().enumerate() {
        match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' => {
                out.push('\\');
                out.push(c);
            }
            ' ' | '#' if index == 0 => {
                out.push('\\');
                out.push(c);
            }
            ' ' if index == last => out.push_str("\\ "),
            '\0' => out.push_str("\\00"),
            _ => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_as_rfc_4514_says() {
        let escaped = |value: &str| {
            let mut out = String::new();
            escape_into(&mut out, value);
            out
        };
        assert_eq!(escaped("alice"), "alice");
        assert_eq!(escaped("Example, Inc."), "Example\\, Inc.");
        assert_eq!(escaped("a+b=c"), "a\\+b=c");
        assert_eq!(escaped("#1 "), "\\#1\\ ");
        assert_eq!(escaped(" x"), "\\ x");
        assert_eq!(escaped("<\"q\";>\\"), "\\<\\\"q\\\"\\;\\>\\\\");
    }
}
