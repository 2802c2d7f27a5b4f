//! The portkeeper side of `bench/run.sh`: the benchmark router
//! (`bench/router.rs`, the one `examples/baseline.rs` serves through
//! `axum::serve`) served by portkeeper, without its built-in `/health` and
//! `/info`, so that both sides answer the same requests with the same routing.

#[path = "../bench/router.rs"]
mod router;

fn main() -> std::process::ExitCode {
    portkeeper::Server::from_env()
        .without_builtin_routes()
        .run(router::router())
}
