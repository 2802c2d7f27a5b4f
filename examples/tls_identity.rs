//! An app that tells each client who it is: with `TLS_CLIENT_CA_FILE` set,
//! `/whoami` answers the verified client certificate's subject and SANs;
//! without a client certificate (a plain listener, or TLS without mTLS) it
//! answers "anonymous".
//!
//! Run with (certificates of your own; docs/tls.md shows how to make them):
//!
//! ```sh
//! LISTEN=tls=127.0.0.1:8443 TLS_CERT_FILE=server.pem TLS_KEY_FILE=server.key \
//!   TLS_CLIENT_CA_FILE=ca.pem cargo run --example tls_identity
//! curl --cacert ca.pem --cert alice.pem --key alice.key https://localhost:8443/whoami
//! ```

use axum::{Router, routing::get};
use portkeeper::ClientIdentity;

/// One line per fact: `subject=...`, then `san=...` for each SAN.
async fn whoami(client: Option<ClientIdentity>) -> String {
    match client {
        None => "anonymous\n".to_owned(),
        Some(client) => {
            let mut out = format!("subject={}\n", client.subject());
            for san in client.sans() {
                out.push_str(&format!("san={san}\n"));
            }
            out
        }
    }
}

fn main() -> std::process::ExitCode {
    let app = Router::new().route("/whoami", get(whoami));
    portkeeper::run(app)
}
