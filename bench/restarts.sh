#!/usr/bin/env bash
# Restarts under load: does any client see "connection refused" or a failed request?
#
# Keeps HTTP/1.1 keep-alive load on portkeeper (bench/restart_load.rs, our own
# client: it tells refused from other failures exactly) while the server is
# restarted RESTARTS times (default 20) through each path:
#
#   baseline  plain restart, no handed-over socket: a wrapper loop runs
#             portkeeper on a fixed port; each restart is SIGTERM, and the
#             loop starts a new one, which binds the port again
#   systemfd  the same wrapper loop under `systemfd --no-pid`: systemfd holds
#             the socket, each new portkeeper adopts it (development path 1)
#   sighup    `kill -USR2` (the upgrade signal; SIGHUP too under a service): portkeeper starts its successor itself (path 3)
#   reload    RELOAD=true and the executable replaced by a copy (new inode),
#             as a build or an installer does (path 4)
#   cargo-watch  (only with WITH_CARGO_WATCH=1) the real development loop,
#             `systemfd --no-pid -- cargo watch -s 'exec cargo run'`, each
#             restart a real rebuild after `touch src/lib.rs` (a debug build
#             in this checkout; cargo-watch is installed when missing)
#
# For each it prints requests sent, succeeded, refused, failed otherwise, the
# worst latency of a request overlapping a restart, the worst latency before
# the first restart (steady state), p99, and the mean restart time.
#
# Then a cross-check with a stock tool: wrk (installed with apt-get when
# missing) against the baseline and the SIGHUP path, with wrk's own error
# counts. wrk does not tell refused from other errors ("connect" covers
# both), which is why the figures above come from our own client.
#
# Loopback only; ports come from the kernel (API_PORT=0). Every step is
# bounded in time. Usage: bench/restarts.sh [RESTARTS] [CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

restarts=${1:-20}
connections=${2:-8}

# The load tool is built from this repository; systemfd is installed if missing.
command -v systemfd >/dev/null || cargo install systemfd --locked
if ! command -v wrk >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk
fi
cargo build --release --quiet --bin portkeeper --example restart_load
bin=$PWD/target/release/portkeeper
load=$PWD/target/release/examples/restart_load

work=$(mktemp -d "${TMPDIR:-/tmp}/portkeeper-bench.XXXXXX")
started=()   # pids this script started, killed on exit
cleanup() {
    touch "$work/stop"
    for pid in "${started[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# Waits (bounded) for "serving ... address=" in a log; prints the address.
serving_address() {
    local log=$1
    for _ in $(seq 200); do
        if grep -q ' serving ' "$log" 2>/dev/null; then
            grep -m1 ' serving ' "$log" | sed -E 's/.* address=([^ ]+).*/\1/'
            return 0
        fi
        sleep 0.05
    done
    echo "no serving line in $log:" >&2
    cat "$log" >&2
    return 1
}

# A loopback port the kernel picks: start portkeeper on port 0, read it, stop it.
kernel_port() {
    local log=$work/port.log
    HOST=127.0.0.1 API_PORT=0 "$bin" >"$log" 2>&1 &
    local pid=$!
    local address
    address=$(serving_address "$log")
    kill -TERM "$pid"
    wait "$pid" || true
    echo "${address##*:}"
}

# Stops what one path left running: the last server (by the pid the load tool
# saw last), then the wrapper, within 10 s.
finish() {
    local final_pid=$1 wrapper=${2:-}
    touch "$work/stop"
    [ -n "$final_pid" ] && kill -TERM "$final_pid" 2>/dev/null || true
    if [ -n "$wrapper" ]; then
        for _ in $(seq 200); do kill -0 "$wrapper" 2>/dev/null || break; sleep 0.05; done
        kill -KILL "$wrapper" 2>/dev/null || true
        wait "$wrapper" 2>/dev/null || true
    fi
    sleep 0.5
    rm -f "$work/stop"
}

run_load() { # label address restart-command
    local out
    out=$(timeout 600 "$load" "$2" "$1" "$restarts" "$3" "$connections") || {
        echo "$out"
        echo "$1: the load run did not complete" >&2
        return 1
    }
    echo "$out"
    final_pid=$(echo "$out" | sed -nE 's/.* final_pid=([0-9]+).*/\1/p')
}

# The restarting wrapper for baseline and systemfd: runs portkeeper again
# each time it exits, until the stop file appears.
wrapper_script='while [ ! -e "$STOP" ]; do "$BIN"; done'

echo "portkeeper restart benchmark: $restarts restarts per path, $connections keep-alive connections, GET /info"
echo "machine: $(nproc) cores; $(uname -sr)"
echo

# baseline: plain restart on a fixed port, nothing holds the socket in between.
port=$(kernel_port)
STOP=$work/stop BIN=$bin HOST=127.0.0.1 API_PORT=$port sh -c "$wrapper_script" >"$work/baseline.log" 2>&1 &
wrapper=$!; started+=("$wrapper")
serving_address "$work/baseline.log" >/dev/null
run_load baseline "127.0.0.1:$port" 'kill -TERM $PID' || true
finish "${final_pid:-}" "$wrapper"

# systemfd: the same loop, but systemfd holds the socket across restarts.
port=$(kernel_port)
STOP=$work/stop BIN=$bin HOST=127.0.0.1 API_PORT=0 \
    systemfd --no-pid -b 1024 -s "http::127.0.0.1:$port" -- sh -c "$wrapper_script" >"$work/systemfd.log" 2>&1 &
wrapper=$!; started+=("$wrapper")
serving_address "$work/systemfd.log" >/dev/null
run_load systemfd "127.0.0.1:$port" 'kill -TERM $PID' || true
finish "${final_pid:-}" "$wrapper"

# sighup: the server upgrades itself.
HOST=127.0.0.1 API_PORT=0 "$bin" >"$work/sighup.log" 2>&1 &
started+=($!)
address=$(serving_address "$work/sighup.log")
run_load sighup "$address" 'kill -USR2 $PID' || true
finish "${final_pid:-}"

# reload: RELOAD=true, the executable replaced by a fresh copy each time.
mkdir -p "$work/reload"
cp "$bin" "$work/reload/portkeeper"
HOST=127.0.0.1 API_PORT=0 RELOAD=true "$work/reload/portkeeper" >"$work/reload.log" 2>&1 &
started+=($!)
address=$(serving_address "$work/reload.log")
run_load reload "$address" \
    "cp '$bin' '$work/reload/portkeeper.new' && mv -f '$work/reload/portkeeper.new' '$work/reload/portkeeper'" || true
finish "${final_pid:-}"

# cargo-watch (opt-in): real rebuilds under systemfd.
if [ -n "${WITH_CARGO_WATCH:-}" ]; then
    command -v cargo-watch >/dev/null || cargo install cargo-watch --locked
    cargo build --quiet --bin portkeeper
    port=$(kernel_port)
    HOST=127.0.0.1 systemfd --no-pid -b 1024 -s "http::127.0.0.1:$port" -- \
        cargo watch -s 'exec cargo run' >"$work/cargo-watch.log" 2>&1 &
    wrapper=$!; started+=("$wrapper")
    serving_address "$work/cargo-watch.log" >/dev/null
    run_load cargo-watch "127.0.0.1:$port" 'touch src/lib.rs' || true
    # cargo watch outlives its command: stop it (it stops the server), then systemfd.
    for child in $(pgrep -P "$wrapper"); do kill -TERM "$child" 2>/dev/null || true; done
    finish "" "$wrapper"
fi

# Cross-check with wrk: the same restarts, driven from here, wrk's counts.
pid_at() { curl -s --max-time 5 "http://$1/info" | sed -nE 's/.*"pid":([0-9]+).*/\1/p'; }
wrk_check() { # label address restart-command
    local label=$1 address=$2 restart=$3 old new
    wrk -t2 -c"$connections" -d600s --timeout 10s "http://$address/info" >"$work/wrk.out" 2>&1 &
    local wrk_pid=$!
    sleep 1
    for _ in $(seq "$restarts"); do
        old=$(pid_at "$address")
        PID=$old sh -c "$restart"
        for _ in $(seq 600); do
            new=$(pid_at "$address" || true)
            [ -n "$new" ] && [ "$new" != "$old" ] && break
            sleep 0.05
        done
        sleep 0.7
    done
    kill -INT "$wrk_pid"; wait "$wrk_pid" || true
    local errors
    errors=$(grep -E 'Socket errors|Non-2xx' "$work/wrk.out" | xargs || true)
    printf '%-10s (wrk) %s; %s\n' "$label" "$(grep -E 'requests in' "$work/wrk.out" | xargs)" \
        "${errors:-no socket errors, no non-2xx responses}"
    final_pid=$(pid_at "$address")
}
echo
port=$(kernel_port)
STOP=$work/stop BIN=$bin HOST=127.0.0.1 API_PORT=$port sh -c "$wrapper_script" >"$work/baseline-wrk.log" 2>&1 &
wrapper=$!; started+=("$wrapper")
serving_address "$work/baseline-wrk.log" >/dev/null
wrk_check baseline "127.0.0.1:$port" 'kill -TERM $PID'
finish "${final_pid:-}" "$wrapper"

HOST=127.0.0.1 API_PORT=0 "$bin" >"$work/sighup-wrk.log" 2>&1 &
started+=($!)
address=$(serving_address "$work/sighup-wrk.log")
wrk_check sighup "$address" 'kill -USR2 $PID'
finish "${final_pid:-}"
