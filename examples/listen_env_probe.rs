//! A test probe for `tests/it/inherit_env.rs`, not an example to copy.
//!
//! Calls `Server::listen()` the way an embedding program may: from inside a
//! multi-threaded tokio runtime, with worker threads already running. Then
//! prints, one `NAME=value` line each on stdout, the `LISTEN_*` variables as
//! the process sees them afterwards (`<unset>` when absent), the number of
//! threads, the listener's address, and the address a second `listen()` in
//! the same process gets (the handoff is taken once).

use std::process::ExitCode;

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("listen_env_probe: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let first = match portkeeper::Server::from_env().listen() {
            Ok(listening) => listening,
            Err(err) => return err.report(),
        };
        for name in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"] {
            let value = std::env::var(name).unwrap_or_else(|_| "<unset>".to_owned());
            println!("{name}={value}");
        }
        let threads = std::fs::read_dir("/proc/self/task").map_or(0, Iterator::count);
        println!("threads={threads}");
        println!("local_addr={}", describe(first.local_addr()));
        // The first listener is still open: a second listen() must not
        // adopt its fd again, and binds a port of its own instead.
        let second =
            portkeeper::Server::from_vars([("HOST", "127.0.0.1"), ("API_PORT", "0")]).listen();
        match second {
            Ok(second) => println!("second_addr={}", describe(second.local_addr())),
            Err(err) => println!("second_error={err}"),
        }
        drop(first);
        ExitCode::SUCCESS
    })
}

fn describe(address: Option<std::net::SocketAddr>) -> String {
    address.map_or_else(|| "<none>".to_owned(), |a| a.to_string())
}
