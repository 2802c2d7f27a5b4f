#!/usr/bin/env bash
# TLS through restarts: does any HTTPS client see "connection refused" or a failed request?
#
# Keeps TLS load on portkeeper (bench/tls_restart_load.rs: hyper over
# tokio-rustls, ALPN http/1.1 or h2, each connection's requests one after
# another; with h2, STREAMS=4 at once per connection) while the server is
# upgraded RESTARTS times (default 10) through each path, for each protocol:
#
#   sigusr2   TLS=true on HOST:API_PORT; `kill -USR2`: portkeeper starts its
#             successor itself and hands it the listener named `https`
#   reload    the same with RELOAD=true, the executable replaced by a copy
#             (new inode), as a build or an installer does
#   systemfd  `systemfd --no-pid -s https::PORT` with TLS=true: the first
#             process adopts the unnamed fd (TLS=true marks it), each
#             `kill -USR2` hands it on as `https`
#
# The certificate is a throwaway CA and a `localhost` leaf made here with
# openssl. For each run it prints requests sent, succeeded, refused, failed
# otherwise, then two kinds sent again on a new connection and not counted
# as failed: unsent (hyper handed the request back, never sent: the
# connection was closing) and goaway (h2 only: failed by the server's
# GOAWAY with NO_ERROR, opened after it or above its last stream id, so
# not processed, RFC 9113 §8.7; hyper's client does not retry these itself,
# hyperium/hyper#2500), the TLS handshakes made, the worst latency of a request overlapping an upgrade,
# the worst before the first upgrade, p99, and the mean upgrade time. Each
# successor's /info is checked: fd_name `https`, tls true, same address.
#
# Loopback only; ports from the kernel (API_PORT=0), except systemfd's,
# which is taken from a server started on port 0 and stopped. Every step is
# bounded in time. Usage: bench/tls_restarts.sh [RESTARTS] [CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

restarts=${1:-10}
connections=${2:-8}

command -v systemfd >/dev/null || cargo install systemfd --locked
CARGO_INCREMENTAL=0 cargo build --release --quiet --bin portkeeper --example tls_restart_load
bin=$PWD/target/release/portkeeper
load=$PWD/target/release/examples/tls_restart_load

work=$(mktemp -d "${TMPDIR:-/tmp}/portkeeper-tls-bench.XXXXXX")
started=()   # pids this script started, killed on exit
cleanup() {
    for pid in "${started[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# A CA and a leaf for localhost/127.0.0.1 (P-256, as a current CA issues).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=bench-ca -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
    -keyout "$work/key.pem" -out "$work/leaf.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$work/ext"
openssl x509 -req -in "$work/leaf.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" \
    -CAcreateserial -days 2 -extfile "$work/ext" -out "$work/cert.pem" 2>/dev/null
export CA_FILE=$work/ca.pem
tls_env=(TLS=true TLS_CERT_FILE="$work/cert.pem" TLS_KEY_FILE="$work/key.pem")

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

# GET /info over TLS from the process now listening on $1.
info() { curl -s --max-time 5 --cacert "$CA_FILE" --resolve "localhost:${1##*:}:127.0.0.1" "https://localhost:${1##*:}/info"; }

# Checks the final successor's /info: handed over, named https, TLS.
check_successor() { # label address
    local body
    body=$(info "$2")
    if echo "$body" | grep -q '"source":"handoff","role":"app","tls":true' &&
        echo "$body" | grep -q "\"address\":\"$2\"" &&
        echo "$body" | grep -q '"fd_name":"https"'; then
        printf '%-14s   successor: source=handoff tls=true fd_name=https address=%s\n' "$1" "$2"
    else
        printf '%-14s   successor /info NOT as expected: %s\n' "$1" "$body"
    fi
}

run_load() { # label protocol address restart-command
    local out
    out=$(timeout 600 "$load" "$3" "$1" "$2" "$restarts" "$4" "$connections") || {
        echo "$out"
        echo "$1: the load run did not complete" >&2
        return 1
    }
    echo "$out"
    final_pid=$(echo "$out" | sed -nE 's/.* final_pid=([0-9]+).*/\1/p')
    check_successor "$1" "$3"
}

# Stops the last successor (the pid the load tool saw last), within 10 s.
finish() {
    local final_pid=$1
    [ -n "$final_pid" ] || return 0
    kill -TERM "$final_pid" 2>/dev/null || true
    for _ in $(seq 200); do kill -0 "$final_pid" 2>/dev/null || return 0; sleep 0.05; done
    kill -KILL "$final_pid" 2>/dev/null || true
}

echo "portkeeper TLS restart benchmark: $restarts upgrades per run, $connections TLS connections (h2: ${STREAMS:-4} streams each), GET /info"
echo "machine: $(nproc) cores; $(uname -sr); $(openssl version)"
echo

for proto in h1 h2; do
    # sigusr2: the server upgrades itself.
    env HOST=127.0.0.1 API_PORT=0 "${tls_env[@]}" "$bin" >"$work/sigusr2-$proto.log" 2>&1 &
    started+=($!)
    address=$(serving_address "$work/sigusr2-$proto.log")
    run_load "sigusr2/$proto" "$proto" "$address" 'kill -USR2 $PID' || true
    finish "${final_pid:-}"

    # reload: RELOAD=true, the executable replaced by a fresh copy each time.
    mkdir -p "$work/reload"
    cp "$bin" "$work/reload/portkeeper"
    env HOST=127.0.0.1 API_PORT=0 RELOAD=true "${tls_env[@]}" "$work/reload/portkeeper" \
        >"$work/reload-$proto.log" 2>&1 &
    started+=($!)
    address=$(serving_address "$work/reload-$proto.log")
    run_load "reload/$proto" "$proto" "$address" \
        "cp '$bin' '$work/reload/portkeeper.new' && mv -f '$work/reload/portkeeper.new' '$work/reload/portkeeper'" || true
    finish "${final_pid:-}"

    # systemfd: it binds the port and hands over an unnamed fd; TLS=true marks it.
    env HOST=127.0.0.1 API_PORT=0 "${tls_env[@]}" "$bin" >"$work/port.log" 2>&1 &
    probe=$!
    port=$(serving_address "$work/port.log")
    port=${port##*:}
    kill -TERM "$probe"; wait "$probe" || true
    env "${tls_env[@]}" systemfd --no-pid -b 1024 -s "https::127.0.0.1:$port" -- "$bin" \
        </dev/null >"$work/systemfd-$proto.log" 2>&1 &
    started+=($!)
    address=$(serving_address "$work/systemfd-$proto.log")
    grep -Eq 'source=systemfd role="app" marks="?tls' "$work/systemfd-$proto.log" ||
        echo "systemfd/$proto: the first process did not serve TLS on systemfd's fd" >&2
    run_load "systemfd/$proto" "$proto" "$address" 'kill -USR2 $PID' || true
    finish "${final_pid:-}"
done
