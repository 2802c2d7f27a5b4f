#!/usr/bin/env bash
# Certificate rotation under TLS load: does any request fail, and how soon
# does a new connection get the new certificate?
#
# Serves TLS=true on 127.0.0.1 (kernel-chosen port) with a pair in files, and
# keeps three loads on it for the whole run:
#   h2load over h2 and over HTTP/1.1 (--h1), each on connections opened at the
#   start and held: established connections keep the pair they began with;
#   a loop of curl, a new TLS connection per request: new handshakes.
# Meanwhile it rotates the pair ROTATIONS times (default 10) as certbot does:
# a new key and a certificate with a new serial written beside the old ones,
# then renamed over them. After each, `openssl s_client` opens new
# connections until one shows the new serial (bounded at 15 s) and the time
# is printed. At the end: each load's requests, succeeded and failed, and the
# reload metrics.
#
# Loopback only; every wait is bounded. Usage: bench/tls_rotation.sh [ROTATIONS]
set -euo pipefail
cd "$(dirname "$0")/.."

rotations=${1:-10}
CARGO_INCREMENTAL=0 cargo build --release --quiet --bin portkeeper
bin=$PWD/target/release/portkeeper

work=$(mktemp -d "${TMPDIR:-/tmp}/portkeeper-tls-rotation.XXXXXX")
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=rotation-ca -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$work/ext"

# A new key and leaf with serial $1, renamed over cert.pem and key.pem.
issue() {
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
        -keyout "$work/key.new" -out "$work/leaf.csr" 2>/dev/null
    openssl x509 -req -in "$work/leaf.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" \
        -set_serial "$1" -days 2 -extfile "$work/ext" -out "$work/cert.new" 2>/dev/null
    mv -f "$work/key.new" "$work/key.pem"
    mv -f "$work/cert.new" "$work/cert.pem"
}

# The serial a new connection gets (hex, as openssl prints it).
serial_now() {
    timeout 5 openssl s_client -connect "$address" </dev/null 2>/dev/null |
        openssl x509 -noout -serial 2>/dev/null | sed 's/serial=//'
}

issue 1000
env HOST=127.0.0.1 API_PORT=0 TLS=true TLS_CERT_FILE="$work/cert.pem" TLS_KEY_FILE="$work/key.pem" \
    "$bin" >"$work/server.log" 2>&1 &
server=$!
pids+=("$server")
for _ in $(seq 200); do grep -q ' serving ' "$work/server.log" && break; sleep 0.05; done
address=$(grep -m1 ' serving ' "$work/server.log" | sed -E 's/.* address=([^ ]+).*/\1/')
port=${address##*:}
url="https://127.0.0.1:$port/health"

duration=$((rotations * 6 + 10))
h2load -D "$duration" -c 8 -m 4 "$url" >"$work/h2.txt" 2>&1 &
h2=$!
h2load --h1 -D "$duration" -c 8 "$url" >"$work/h1.txt" 2>&1 &
h1=$!
pids+=("$h2" "$h1")
# New connections, one request each, until told to stop.
(
    sent=0 failed=0
    while [ ! -e "$work/stop" ]; do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 --cacert "$work/ca.pem" "$url" || true)
        sent=$((sent + 1))
        [ "$code" = 200 ] || failed=$((failed + 1))
    done
    echo "$sent $failed" >"$work/curl.txt"
) &
curl_loop=$!
pids+=("$curl_loop")

echo "portkeeper TLS rotation: $rotations rotations under load (h2load h2 and h1 on held connections, curl on new ones)"
echo "machine: $(nproc) cores; $(uname -sr); $(openssl version)"
sleep 3
for i in $(seq "$rotations"); do
    serial=$((1000 + i))
    want=$(printf '%X' "$serial")
    [ $(( ${#want} % 2 )) -eq 0 ] || want="0$want"
    began=$(date +%s.%N)
    issue "$serial"
    seen=""
    for _ in $(seq 150); do
        seen=$(serial_now || true)
        [ "$seen" = "$want" ] && break
        sleep 0.1
    done
    took=$(echo "$(date +%s.%N) - $began" | bc)
    if [ "$seen" = "$want" ]; then
        printf 'rotation %2d: serial %s seen by a new connection after %.1f s\n' "$i" "$want" "$took"
    else
        printf 'rotation %2d: serial %s NOT seen within 15 s (saw %s)\n' "$i" "$want" "${seen:-nothing}"
    fi
    sleep 2
done
touch "$work/stop"
wait "$curl_loop" || true
# h2load ends at its duration, a little after the last rotation.
timeout 60 tail --pid="$h2" -f /dev/null || true
timeout 60 tail --pid="$h1" -f /dev/null || true
echo
echo "h2load h2:  $(grep -E '^requests:' "$work/h2.txt")"
echo "h2load h1:  $(grep -E '^requests:' "$work/h1.txt")"
read -r sent failed <"$work/curl.txt"
echo "curl (a new connection each): sent $sent, failed $failed"
curl -s --cacert "$work/ca.pem" "https://127.0.0.1:$port/metrics" |
    grep -E '^portkeeper_tls_(certificate_reloads|handshakes)_total' || true
kill -TERM "$server"
wait "$server" || true
