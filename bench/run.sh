#!/usr/bin/env bash
# Benchmarks portkeeper against examples/baseline.rs (bare axum::serve) in one
# run and prints a Markdown table. Both serve the router of bench/router.rs:
# portkeeper through examples/bench_app.rs, with its built-in routes off. Rows:
# start-up (fixed port, inherited fd, systemd-socket-activate), port search,
# throughput of GET /health and of a 1 KiB JSON POST /echo over HTTP/1.1 (wrk)
# and HTTP/2 (h2load), the portkeeper binary's built-in /health, instructions
# per request under callgrind, idle RSS.
# Loopback only; takes about four minutes after the release build.
#
#   bench/run.sh                                   # the defaults below
#   bench/run.sh --load-rounds 8 --runs 100        # more rounds, less noise
#   bench/run.sh --only load,rss                   # sections: startup, search, load, instructions, rss
set -euo pipefail
cd "$(dirname "$0")/.."

runs=${BENCH_RUNS:-40}               # start-up runs per scenario and server
search_runs=${BENCH_SEARCH_RUNS:-15} # runs per busy-port count
load_rounds=${BENCH_LOAD_ROUNDS:-5}  # rounds of every workload per server, after a warm-up
load_seconds=${BENCH_LOAD_SECONDS:-3}
connections=${BENCH_CONNECTIONS:-50}

# The tools it drives: wrk and h2load for load, systemd-socket-activate for
# activation, valgrind (callgrind) to count instructions per request.
need_apt=()
command -v wrk >/dev/null || need_apt+=(wrk)
command -v h2load >/dev/null || need_apt+=(nghttp2-client)
command -v systemd-socket-activate >/dev/null || need_apt+=(systemd)
command -v valgrind >/dev/null || need_apt+=(valgrind)
if [ ${#need_apt[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}"
fi

# The search row holds 1,001 ports at once, and the load clients open 50 connections.
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 4096 ]; then
    ulimit -n 4096 2>/dev/null || ulimit -n "$(ulimit -Hn)"
fi

cargo build --release --quiet --bin portkeeper \
    --example bench_app --example baseline --example bench_driver

# The servers run from installed copies, as a deployment runs them. The
# linker writes its output piecemeal, and the page cache then holds it in
# small pieces that cost more page faults at exec than a file written in one
# go by install or cp (to a config error exit: portkeeper 105 -> 98 faults,
# the baseline 93 -> 89), which weighs on the larger executable.
installed=$(mktemp -d)
trap 'rm -rf "$installed"' EXIT
install -m 755 target/release/portkeeper target/release/examples/bench_app \
    target/release/examples/baseline "$installed/"

target/release/examples/bench_driver \
    --portkeeper "$installed/bench_app" \
    --baseline "$installed/baseline" \
    --builtin "$installed/portkeeper" \
    --runs "$runs" --search-runs "$search_runs" \
    --load-rounds "$load_rounds" --load-seconds "$load_seconds" \
    --connections "$connections" "$@"
