#!/usr/bin/env bash
# Reload, then stop with a request in flight, under a real systemd user manager
# (../shared/tools/systemd-user-manager, systemd 252): issue 13.10 and 13.11.
#
# Each trial: start the service through its socket, `systemctl --user reload`
# RELOADS times (a binary upgrade each: the old process hands the socket over
# and exits), check that the last successor is the main process and that
# `systemctl status` shows its URL, then start a 2 s request and
# `systemctl --user stop` while it runs. A trial passes when the request is
# answered (200) and the unit ends inactive with Result=success. The test copy
# sets WatchdogSec=1s, so a successor whose pings the manager refused would be
# killed (Result=watchdog). Prints one line per trial and the counts.
#
# Usage: tests/manager/reload_stop.sh [TRIALS] [BINARY] [RELOADS]   (run as root)
# The manager is stopped with stop.sh on every exit path.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
trials=${1:-20}
binary=${2:-$root/target/debug/portkeeper}
reloads=${3:-1}
tool=$root/../shared/tools/systemd-user-manager
[ -x "$tool/start.sh" ] || { echo "no manager tool at $tool" >&2; exit 2; }
[ -x "$binary" ] || { echo "no binary at $binary (cargo build first)" >&2; exit 2; }

. "$root/tests/manager/lib.sh"
prepare_units
install_service -e "s|/usr/local/bin/portkeeper|$UNITS/portkeeper|g" \
    -e "s|^ExecStart=.*|ExecStart=$UNITS/portkeeper\nWorkingDirectory=$UNITS\nEnvironment=DEBUG=true|" \
    -e "s|^WatchdogSec=.*|WatchdogSec=1s|"
grep -q '^ExecReload=' "$UNITS/portkeeper.service" || { echo "the shipped unit has no ExecReload=" >&2; exit 2; }

start_manager
sc start portkeeper.socket

prop() { sc show portkeeper.service -p "$1" --value; }
pid_of() { curl -s -m 5 "127.0.0.1:$port/info" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])'; }

passed=0 failed=0
for trial in $(seq "$trials"); do
    sc reset-failed portkeeper.service 2>/dev/null || true
    first=$(pid_of)   # the first connection starts the service
    new=$first
    for _ in $(seq "$reloads"); do
        old=$new
        sc reload portkeeper.service
        for _ in $(seq 100); do
            new=$(pid_of || echo "$old")
            [ "$new" != "$old" ] && break
            sleep 0.05
        done
        sleep 1.2   # past a watchdog period, and past the old process's exit
    done
    old=$first
    main=$(prop MainPID)
    status=$(prop StatusText)
    code_file=$work/code.$trial
    curl -s -m 20 -o /dev/null -w '%{http_code}' "127.0.0.1:$port/debug/sleep?ms=2000" >"$code_file" &
    curl_pid=$!
    # Stop only once the request is in flight: /metrics counts itself, so
    # 2 means the slow request has reached the server. Under load a fixed
    # pause was not always enough, and a request arriving after the stop
    # started the service again through its socket.
    for _ in $(seq 200); do
        in_flight=$(curl -s -m 5 "127.0.0.1:$port/metrics" | sed -n 's/^portkeeper_http_requests_in_flight //p')
        [ "${in_flight:-0}" -ge 2 ] && break
        sleep 0.05
    done
    started=$(date +%s.%N)
    sc stop portkeeper.service
    stopped=$(date +%s.%N)
    wait "$curl_pid" || true
    code=$(cat "$code_file")
    state=$(prop ActiveState) result=$(prop Result)
    verdict=FAIL
    if [ "$new" != "$old" ] && [ "$main" = "$new" ] && [ "$code" = 200 ] &&
        [ "$state" = inactive ] && [ "$result" = success ] && [[ $status == serving\ http://* ]]; then
        verdict=ok passed=$((passed + 1))
    else
        failed=$((failed + 1))
    fi
    printf 'trial %2d: %-4s old=%s new=%s MainPID=%s status="%s" request=%s stop=%.2fs %s/%s\n' \
        "$trial" "$verdict" "$old" "$new" "$main" "$status" "$code" \
        "$(echo "$stopped - $started" | bc)" "$state" "$result"
done
echo "reload then stop with a request in flight: $passed passed, $failed failed of $trials"
[ "$failed" = 0 ]
