//! The router of a listener marked `redirect`: every request gets a `308`
//! to the same host, path and query over HTTPS, on the TLS listener's port.
//!
//! 308 rather than 301: a client repeats the same method and body (a POST
//! stays a POST), and the answer may be cached as permanent.

use axum::Router;
use axum::extract::Request;
use axum::http::uri::Authority;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// A router that sends every request to `https://<host>[:port]<path>`;
/// `port` is the TLS listener's, left out when it is 443 or unknown (a TLS
/// listener on a Unix socket, behind a proxy on 443).
pub(crate) fn router(port: Option<u16>) -> Router {
    let port = port.filter(|&port| port != 443);
    Router::new().fallback(move |request: Request| async move { redirect(&request, port) })
}

fn redirect(request: &Request, port: Option<u16>) -> Response {
    // HTTP/2 carries the host in the URI (:authority), HTTP/1.1 in Host.
    let authority = request.uri().authority().cloned().or_else(|| {
        request
            .headers()
            .get(header::HOST)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<Authority>().ok())
    });
    let Some(authority) = authority else {
        return (
            StatusCode::BAD_REQUEST,
            "a Host header is needed to redirect to https\n",
        )
            .into_response();
    };
    let host = authority.host();
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |path| path.as_str());
    let location = match port {
        Some(port) => format!("https://{host}:{port}{path}"),
        None => format!("https://{host}{path}"),
    };
    match HeaderValue::try_from(location) {
        Ok(location) => (
            StatusCode::PERMANENT_REDIRECT,
            [(header::LOCATION, location)],
        )
            .into_response(),
        Err(_) => (
            StatusCode::BAD_REQUEST,
            "the request cannot be redirected\n",
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt as _;

    async fn location(port: Option<u16>, request: Request) -> (StatusCode, Option<String>) {
        let response = router(port).oneshot(request).await.unwrap();
        let location = response
            .headers()
            .get(header::LOCATION)
            .map(|value| value.to_str().unwrap().to_owned());
        (response.status(), location)
    }

    fn get(uri: &str, host: Option<&str>) -> Request {
        let mut builder = Request::builder().uri(uri);
        if let Some(host) = host {
            builder = builder.header(header::HOST, host);
        }
        builder.body(axum::body::Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn same_host_and_path_on_the_tls_port() {
        assert_eq!(
            location(Some(8443), get("/a/b?c=1", Some("example.com:8080"))).await,
            (
                StatusCode::PERMANENT_REDIRECT,
                Some("https://example.com:8443/a/b?c=1".to_owned())
            )
        );
        // 443 is https's own port, so it is left out.
        assert_eq!(
            location(Some(443), get("/", Some("example.com"))).await.1,
            Some("https://example.com/".to_owned())
        );
        assert_eq!(
            location(Some(8443), get("/x", Some("[::1]:8080"))).await.1,
            Some("https://[::1]:8443/x".to_owned())
        );
        // HTTP/2: the host is the URI's authority.
        assert_eq!(
            location(None, get("http://example.org:80/p", None)).await.1,
            Some("https://example.org/p".to_owned())
        );
    }

    #[tokio::test]
    async fn a_request_without_a_host_is_refused() {
        assert_eq!(
            location(Some(8443), get("/", None)).await,
            (StatusCode::BAD_REQUEST, None)
        );
        assert_eq!(
            location(Some(8443), get("/", Some("bad host"))).await,
            (StatusCode::BAD_REQUEST, None)
        );
    }
}
