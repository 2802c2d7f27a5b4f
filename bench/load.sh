#!/usr/bin/env bash
# Load benchmark for portkeeper (a script that prints figures, not a timed test).
#
#   1. 1,000 concurrent connections for 30 s on /health: requests/s and errors
#      (target: 0 errors), and the server's peak RSS.
#   2. Latency of normal requests (p50/p99) without, then with, 500 slow-loris
#      connections held open (bench/slowloris.py), and peak RSS under each.
#
# Loopback only; every server takes its port from the kernel (API_PORT=0) and
# the script reads it back from the "serving ... address=" log line. Every
# step is bounded in time. Installs wrk when it is missing. Usage:
#   bench/load.sh            # full run (about 2 minutes after the build)
#   LOAD_SECONDS=10 bench/load.sh
set -euo pipefail
cd "$(dirname "$0")/.."

LOAD_SECONDS=${LOAD_SECONDS:-30}
LOAD_CONNECTIONS=${LOAD_CONNECTIONS:-1000}
LORIS_CONNECTIONS=${LORIS_CONNECTIONS:-500}
LATENCY_SECONDS=${LATENCY_SECONDS:-10}
LATENCY_CONNECTIONS=${LATENCY_CONNECTIONS:-10}

say() { printf '%s\n' "$*"; }
die() { printf 'bench: %s\n' "$*" >&2; exit 1; }

# --- tools -------------------------------------------------------------------
if ! command -v wrk >/dev/null; then
    say "installing wrk"
    if [ "$(id -u)" -eq 0 ]; then apt_get=(apt-get); else apt_get=(sudo apt-get); fi
    "${apt_get[@]}" update -qq
    DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y -qq wrk
fi
command -v python3 >/dev/null || die "python3 is needed for the slow-loris client"

# 1,000 client sockets plus 1,000 server sockets (wrk and the server inherit
# this limit) do not fit in the usual soft limit of 1024.
want_fds=$(( (LOAD_CONNECTIONS + LORIS_CONNECTIONS) * 2 + 1024 ))
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$want_fds" ]; then
    ulimit -n "$want_fds" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
fi
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge $(( LOAD_CONNECTIONS + 64 )) ] \
    || die "open-file limit $(ulimit -n) is too low for $LOAD_CONNECTIONS connections (raise the hard limit)"

say "building the release binary"
cargo build --release --quiet
binary=$PWD/target/release/portkeeper

work=$(mktemp -d)
server_pid=""
loris_pid=""
cleanup() {
    [ -n "$loris_pid" ] && kill "$loris_pid" 2>/dev/null || true
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# start_server NAME [VAR=value...]: starts a loopback server, sets $server_pid and $addr.
start_server() {
    local name=$1; shift
    (cd "$work" && exec env -i PATH="$PATH" HOST=127.0.0.1 API_PORT=0 LOG_LEVEL=info "$@" \
        "$binary" >"$work/$name.log" 2>&1) &
    server_pid=$!
    addr=""
    for _ in $(seq 100); do
        addr=$(sed -n 's/.* serving .*address=\([^ ]*\).*/\1/p' "$work/$name.log" | head -n1)
        [ -n "$addr" ] && break
        kill -0 "$server_pid" 2>/dev/null || die "$name exited: $(cat "$work/$name.log")"
        sleep 0.1
    done
    [ -n "$addr" ] || die "$name did not report its address within 10 s"
}

stop_server() {
    kill -TERM "$server_pid"
    timeout 40 tail --pid="$server_pid" -f /dev/null || kill -KILL "$server_pid"
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
}

# Peak resident set size of the server so far, in MiB.
peak_rss() { awk '/^VmHWM:/ { printf "%.1f MiB", $2 / 1024 }' "/proc/$server_pid/status"; }
current_rss() { awk '/^VmRSS:/ { printf "%.1f MiB", $2 / 1024 }' "/proc/$server_pid/status"; }

# run_wrk OUT THREADS CONNECTIONS SECONDS URL
run_wrk() {
    timeout $(( $4 + 30 )) wrk -t"$2" -c"$3" -d"$4"s --timeout 5s --latency "$5" >"$1" \
        || die "wrk failed: $(cat "$1")"
}
rps() { awk '/^Requests\/sec:/ { print $2 }' "$1"; }
requests() { awk '/requests in/ { print $1 }' "$1"; }
# Socket errors (connect, read, write, timeout) plus non-2xx/3xx answers.
errors() {
    awk '/Socket errors:/ { gsub(",", ""); n += $4 + $6 + $8 + $10 }
         /Non-2xx or 3xx responses:/ { n += $5 }
         END { print n + 0 }' "$1"
}
percentile() { awk -v p="$2%" '$1 == p { print $2 }' "$1"; }

say ""
say "== 1. $LOAD_CONNECTIONS concurrent connections for ${LOAD_SECONDS}s (GET /health)"
start_server load
say "server pid $server_pid at $addr, idle RSS $(current_rss)"
run_wrk "$work/load.txt" 2 "$LOAD_CONNECTIONS" "$LOAD_SECONDS" "http://$addr/health"
load_rps=$(rps "$work/load.txt")
say "requests: $(requests "$work/load.txt")  requests/s: $load_rps  errors: $(errors "$work/load.txt")"
say "latency p50 $(percentile "$work/load.txt" 50)  p99 $(percentile "$work/load.txt" 99)"
say "peak RSS under $LOAD_CONNECTIONS connections: $(peak_rss)"
grep -q "Socket errors" "$work/load.txt" && grep "Socket errors" "$work/load.txt"
stop_server

say ""
say "== 2. latency of normal requests without and with $LORIS_CONNECTIONS slow-loris connections"
start_server loris
say "server pid $server_pid at $addr (HEADER_READ_TIMEOUT default 10s), idle RSS $(current_rss)"
url="http://$addr/health"
run_wrk "$work/baseline.txt" 1 "$LATENCY_CONNECTIONS" "$LATENCY_SECONDS" "$url"
base_p50=$(percentile "$work/baseline.txt" 50)
base_p99=$(percentile "$work/baseline.txt" 99)
base_peak=$(peak_rss)
say "without: p50 $base_p50  p99 $base_p99  requests/s $(rps "$work/baseline.txt")  errors $(errors "$work/baseline.txt")  peak RSS $base_peak"

host=${addr%:*}
port=${addr##*:}
loris_seconds=$(( LATENCY_SECONDS + 25 ))
python3 bench/slowloris.py "$host" "$port" "$LORIS_CONNECTIONS" "$loris_seconds" >"$work/loris.txt" 2>&1 &
loris_pid=$!
for _ in $(seq 200); do
    grep -q '^ready' "$work/loris.txt" && break
    kill -0 "$loris_pid" 2>/dev/null || die "slow-loris client exited: $(cat "$work/loris.txt")"
    sleep 0.1
done
grep -q '^ready' "$work/loris.txt" || die "slow-loris client did not open $LORIS_CONNECTIONS connections in 20 s"
# Let the server's header timers start closing and the client reopening.
sleep 3
run_wrk "$work/loris-load.txt" 1 "$LATENCY_CONNECTIONS" "$LATENCY_SECONDS" "$url"
loris_p50=$(percentile "$work/loris-load.txt" 50)
loris_p99=$(percentile "$work/loris-load.txt" 99)
loris_peak=$(peak_rss)
say "with:    p50 $loris_p50  p99 $loris_p99  requests/s $(rps "$work/loris-load.txt")  errors $(errors "$work/loris-load.txt")  peak RSS $loris_peak"
timeout $(( loris_seconds + 15 )) tail --pid="$loris_pid" -f /dev/null || kill "$loris_pid"
wait "$loris_pid" 2>/dev/null || true
loris_pid=""
grep '^slowloris:' "$work/loris.txt" || true

# Ratios of the with/without figures (wrk prints units: us, ms, s).
to_us() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) print n; else if (v ~ /ms$/) print n * 1000; else print n * 1000000 }'; }
ratio() { awk -v a="$(to_us "$1")" -v b="$(to_us "$2")" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
say "ratio with/without: p50 x$(ratio "$loris_p50" "$base_p50")  p99 x$(ratio "$loris_p99" "$base_p99")"
stop_server

say ""
say "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) (shared machines add noise)"
