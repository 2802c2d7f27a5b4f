#!/usr/bin/env bash
# Benchmarks portkeeper against examples/baseline.rs (bare axum) in one run and
# prints a Markdown table: start-up (fixed port, inherited fd, systemd-socket-
# activate), port search, /health throughput and p99 under wrk, instructions
# per request under callgrind, idle RSS.
# Loopback only; takes about two and a half minutes after the release build.
#
#   bench/run.sh                  # the defaults below
#   BENCH_RUNS=40 BENCH_LOAD_ROUNDS=3 bench/run.sh   # quicker, noisier
#   bench/run.sh --only load,rss  # sections: startup, search, load, instructions, rss
set -euo pipefail
cd "$(dirname "$0")/.."

runs=${BENCH_RUNS:-100}              # start-up runs per scenario and server
search_runs=${BENCH_SEARCH_RUNS:-15} # runs per busy-port count
load_rounds=${BENCH_LOAD_ROUNDS:-8}  # wrk rounds per server, alternating, after a warm-up
load_seconds=${BENCH_LOAD_SECONDS:-6}
connections=${BENCH_CONNECTIONS:-50}

# The tools it drives: wrk for load, systemd-socket-activate for activation,
# valgrind (callgrind) to count instructions per request.
need_apt=()
command -v wrk >/dev/null || need_apt+=(wrk)
command -v systemd-socket-activate >/dev/null || need_apt+=(systemd)
command -v valgrind >/dev/null || need_apt+=(valgrind)
if [ ${#need_apt[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}"
fi

# The search row holds 1,001 ports at once, and wrk opens 50 connections.
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 4096 ]; then
    ulimit -n 4096 2>/dev/null || ulimit -n "$(ulimit -Hn)"
fi

cargo build --release --quiet --bin portkeeper --example baseline --example bench_driver

# Both servers run from installed copies, as a deployment runs them. The
# linker writes its output piecemeal, and the page cache then holds it in
# small pieces that cost more page faults at exec than a file written in one
# go by install or cp (to a config error exit: portkeeper 105 -> 98 faults,
# the baseline 93 -> 89), which weighs on the larger executable.
installed=$(mktemp -d)
trap 'rm -rf "$installed"' EXIT
install -m 755 target/release/portkeeper target/release/examples/baseline "$installed/"

target/release/examples/bench_driver \
    --portkeeper "$installed/portkeeper" \
    --baseline "$installed/baseline" \
    --runs "$runs" --search-runs "$search_runs" \
    --load-rounds "$load_rounds" --load-seconds "$load_seconds" \
    --connections "$connections" "$@"
