#!/usr/bin/env bash
# The rolling restart behind HAProxy (tests/it/haproxy.rs), repeated: three
# instances behind HAProxy health-checking GET /ready, rolled one by one under
# keep-alive load as a Deployment rolls (maxSurge 1, maxUnavailable 0), once
# with SHUTDOWN_DELAY=2 and once with SHUTDOWN_DELAY=0. Prints each run's
# requests and failures and the totals (the figures in docs/kubernetes.md).
#
# Loopback only, ports owned by the test, every wait bounded.
# Usage: bench/haproxy_roll.sh [RUNS]   (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
runs=${1:-5}
if ! command -v haproxy >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy
fi
haproxy -v | head -n1
cargo test --quiet --test it --no-run
log=$(mktemp "${TMPDIR:-/tmp}/portkeeper-roll.XXXXXX")
trap 'rm -f "$log"' EXIT
for _ in $(seq "$runs"); do
    if ! PORTKEEPER_REQUIRE_PEERS=1 PORTKEEPER_ROLL_REPORT=1 \
        cargo test --quiet --test it haproxy:: -- --nocapture >"$log" 2>&1; then
        grep -E '^roll client|^haproxy roll|panicked' "$log" >&2 || tail -n 40 "$log" >&2
        echo "a roll failed (above)" >&2
    fi
    grep -m1 '^haproxy roll' "$log" || true
done | tee /dev/stderr | awk '
    { for (i = 1; i <= NF; i++) if ($i ~ /^SHUTDOWN_DELAY=/) { d = $i; r[d] += $(i+1); f[d] += $(i+3) } }
    END { for (d in r) printf "total %s %d requests, %d failed\n", d, r[d], f[d] }'
