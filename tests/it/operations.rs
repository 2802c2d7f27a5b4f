//! What an operator sees: the binary's page at `/`, the start-up line on tokens.

use crate::support::*;

#[test]
fn the_binary_answers_its_front_page_with_links_to_the_built_in_routes() {
    let dir = TempDir::new();
    let mut server = Running::spawn(loopback_server(&dir), "front-page").unwrap();
    let addr = server.serving_address().unwrap();
    let (status, body) = http_get(addr, "/").unwrap();
    assert_eq!(status, 200, "{body}");
    for route in ["/health", "/ready", "/info", "/metrics"] {
        assert!(
            body.contains(&format!("href=\"{route}\"")),
            "no link to {route}: {body}"
        );
    }
    assert!(body.contains("portkeeper"), "{body}");
}

#[test]
fn the_token_policy_line_names_the_paths_that_need_no_token() {
    let dir = TempDir::new();
    let mut cmd = loopback_server(&dir);
    cmd.env("AUTH_REQUIRED", "true")
        .env("API_TOKEN", "operations-test-token-0123456789");
    let mut server = Running::spawn(cmd, "token-policy").unwrap();
    let line = server
        .wait_for_line("bearer token required", DEADLINE)
        .unwrap();
    assert!(line.contains("/health"), "{line}");
    assert!(line.contains("/ready"), "{line}");
    // And what it says holds.
    let addr = server.serving_address().unwrap();
    assert_eq!(http_get(addr, "/ready").unwrap().0, 200);
    assert_eq!(http_get(addr, "/health").unwrap().0, 200);
    assert_eq!(http_get(addr, "/info").unwrap().0, 401);
}
