#!/usr/bin/env bash
# A configuration error under socket activation, under a real systemd user
# manager (../shared/tools/systemd-user-manager, systemd 252): issue 13.12.
#
# The service gets AUTO_FIND_PORT=sometimes (refused at start: exit 78). One
# connection to the socket, then: how often did the service start, what do
# the socket and the service units say, at which journal priority is the
# fatal line, and does the port still take connections? Prints what it saw;
# exits non-zero when the fatal line is not at priority err (3).
#
# Usage: tests/manager/config_error.sh [BINARY]   (run as root)
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
binary=${1:-$root/target/debug/portkeeper}
tool=$root/../shared/tools/systemd-user-manager
[ -x "$tool/start.sh" ] || { echo "no manager tool at $tool" >&2; exit 2; }

. "$root/tests/manager/lib.sh"
prepare_units
install_service -e "s|^ExecStart=.*|ExecStart=$UNITS/portkeeper\nWorkingDirectory=$UNITS\nEnvironment=AUTO_FIND_PORT=sometimes|"

start_manager
sc start portkeeper.socket

started=$(date +%s.%N)
code=$(curl -s -m 10 -o /dev/null -w '%{http_code}' "127.0.0.1:$port/health" || true)
answered=$(date +%s.%N)
sleep 2
echo "first request: http_code=$code after $(echo "$answered - $started" | bc) s"
for unit in portkeeper.service portkeeper.socket; do
    echo "$unit: $(sc show "$unit" -p ActiveState -p SubState -p Result -p ExecMainStatus | tr '\n' ' ')"
done
echo "--- systemctl --user status portkeeper.service"
sc status portkeeper.service 2>&1 | sed -n '1,20p' || true
echo "--- fatal lines in the journal (priority, message)"
# (This manager's journal has no _SYSTEMD_USER_UNIT field; the identifier serves.)
"$tool/journal.sh" -o json SYSLOG_IDENTIFIER=portkeeper 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    e = json.loads(line)
    m = e.get("MESSAGE", "")
    if isinstance(m, str) and "error:" in m:
        print(e.get("PRIORITY"), m)
' | tee "$work/fatal"
echo "service starts: $(wc -l <"$work/fatal") (one fatal line each)"
port_state=$(curl -s -m 3 -o /dev/null -w '%{http_code}' "127.0.0.1:$port/health" 2>&1 || true)
echo "a later connection: http_code=$port_state (000: refused or no answer)"
[ -s "$work/fatal" ] && ! grep -qv '^3 ' "$work/fatal"
