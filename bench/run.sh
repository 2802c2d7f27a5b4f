#!/usr/bin/env bash
# Benchmarks portkeeper against examples/baseline.rs (bare axum::serve) in one
# run and prints a Markdown table. Both serve the router of bench/router.rs:
# portkeeper through examples/bench_app.rs, with its built-in routes off. Rows:
# start-up (fixed port, inherited fd, systemd-socket-activate), port search,
# throughput of GET /health and of a 1 KiB JSON POST /echo over HTTP/1.1 (wrk)
# and HTTP/2 (h2load), the portkeeper binary's built-in /health, instructions
# per request under callgrind, idle RSS; and over TLS, against
# examples/baseline_tls.rs (the same router behind tokio-rustls, hand-glued):
# HTTP/1.1 and HTTP/2 throughput, full handshakes per second, RSS with 1,000
# idle TLS connections (bench/tls_idle.py).
# Loopback only; takes about eight minutes after the release build.
#
#   bench/run.sh                                   # the defaults below
#   bench/run.sh --load-rounds 8 --runs 100        # more rounds, less noise
#   bench/run.sh --only load,rss,tls               # sections: startup, search, load, instructions, rss, tls, tls-instructions
set -euo pipefail
cd "$(dirname "$0")/.."

runs=${BENCH_RUNS:-40}               # start-up runs per scenario and server
search_runs=${BENCH_SEARCH_RUNS:-15} # runs per busy-port count
load_rounds=${BENCH_LOAD_ROUNDS:-5}  # rounds of every workload per server, after a warm-up
load_seconds=${BENCH_LOAD_SECONDS:-3}
connections=${BENCH_CONNECTIONS:-50}

# The tools it drives: wrk and h2load for load, systemd-socket-activate for
# activation, valgrind (callgrind) to count instructions per request, openssl
# for the TLS rows' certificate and python3 to hold idle TLS connections.
need_apt=()
command -v wrk >/dev/null || need_apt+=(wrk)
command -v h2load >/dev/null || need_apt+=(nghttp2-client)
command -v systemd-socket-activate >/dev/null || need_apt+=(systemd)
command -v valgrind >/dev/null || need_apt+=(valgrind)
command -v openssl >/dev/null || need_apt+=(openssl)
command -v python3 >/dev/null || need_apt+=(python3)
if [ ${#need_apt[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}"
fi

# The search row holds 1,001 ports at once, the load clients open 50
# connections, and the TLS RSS row 1,000.
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 4096 ]; then
    ulimit -n 4096 2>/dev/null || ulimit -n "$(ulimit -Hn)"
fi

cargo build --release --quiet --bin portkeeper \
    --example bench_app --example baseline --example baseline_tls --example bench_driver

# The servers run from installed copies, as a deployment runs them. The
# linker writes its output piecemeal, and the page cache then holds it in
# small pieces that cost more page faults at exec than a file written in one
# go by install or cp (to a config error exit: portkeeper 105 -> 98 faults,
# the baseline 93 -> 89), which weighs on the larger executable.
installed=$(mktemp -d)
trap 'rm -rf "$installed"' EXIT
install -m 755 target/release/portkeeper target/release/examples/bench_app \
    target/release/examples/baseline target/release/examples/baseline_tls "$installed/"

# One self-signed P-256 certificate for both TLS servers (the names are the
# ones the clients dial, so bench/tls_idle.py can verify it).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$installed/key.pem" -out "$installed/cert.pem" -days 1 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    2>"$installed/openssl.log" || { cat "$installed/openssl.log" >&2; exit 1; }

target/release/examples/bench_driver \
    --portkeeper "$installed/bench_app" \
    --baseline "$installed/baseline" \
    --builtin "$installed/portkeeper" \
    --baseline-tls "$installed/baseline_tls" \
    --tls-cert "$installed/cert.pem" --tls-key "$installed/key.pem" \
    --runs "$runs" --search-runs "$search_runs" \
    --load-rounds "$load_rounds" --load-seconds "$load_seconds" \
    --connections "$connections" "$@"
