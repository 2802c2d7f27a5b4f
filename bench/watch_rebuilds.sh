#!/usr/bin/env bash
# The development loop under load: `systemfd --no-pid -- cargo watch -x run`,
# rebuilt REBUILDS times (default 20) by touching a source file, with
# CLIENTS (default 4) keep-alive clients sending 300 ms requests
# (DEBUG=true's /debug/sleep?ms=300). Prints what bench/restart_load.rs
# counts: sent, succeeded, refused, failed otherwise.
#
# A request waits in systemfd's queue while cargo builds (nothing serves
# then), so the client's timeout is 30 s, not restart_load's 10 s: a slow
# build is not a lost request. LOAD_TIMEOUT_S overrides it.
#
# Usage: bench/watch_rebuilds.sh [REBUILDS] [CLIENTS] [CHECKOUT]
#
# CHECKOUT (default: this one) is the source tree cargo watch runs in and
# whose src/lib.rs is touched; give an export of an older commit to measure
# it (`git archive <commit> | tar -x -C DIR`), built into this checkout's
# target/ (CARGO_TARGET_DIR) so that only the crate itself is compiled.
# cargo-watch and systemfd are installed when missing. Loopback only; the
# port is the kernel's choice; every wait is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
here=$PWD

rebuilds=${1:-20}
clients=${2:-4}
checkout=$(cd "${3:-$here}" && pwd)

command -v systemfd >/dev/null || cargo install systemfd --locked
command -v cargo-watch >/dev/null || cargo install cargo-watch --locked
cargo build --release --quiet --example restart_load
load=$here/target/release/examples/restart_load

work=$(mktemp -d "${TMPDIR:-/tmp}/portkeeper-watch.XXXXXX")
watcher=
cleanup() {
    if [ -n "$watcher" ]; then
        # systemfd's children first (cargo watch stops its command), then systemfd.
        for child in $(pgrep -P "$watcher" || true); do kill -TERM "$child" 2>/dev/null || true; done
        for _ in $(seq 100); do kill -0 "$watcher" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$watcher" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# A free loopback port, chosen by the kernel.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

cd "$checkout"
CARGO_TARGET_DIR=$here/target cargo build --quiet --bin portkeeper
CARGO_TARGET_DIR=$here/target DEBUG=true HOST=127.0.0.1 \
    systemfd --no-pid -b 128 -s "http::127.0.0.1:$port" -- \
    cargo watch -x 'run --bin portkeeper' >"$work/watch.log" 2>&1 &
watcher=$!
for _ in $(seq 600); do
    grep -q ' serving ' "$work/watch.log" 2>/dev/null && break
    sleep 0.1
done
grep -q ' serving ' "$work/watch.log" || { cat "$work/watch.log" >&2; exit 1; }

LOAD_TIMEOUT_S=${LOAD_TIMEOUT_S:-30} LOAD_PATH='/debug/sleep?ms=300' timeout 1200 \
    "$load" "127.0.0.1:$port" "cargo-watch-x-run" "$rebuilds" "touch '$checkout/src/lib.rs'" "$clients"
if [ -n "${KEEP_LOG:-}" ]; then cp "$work/watch.log" "$KEEP_LOG"; fi
