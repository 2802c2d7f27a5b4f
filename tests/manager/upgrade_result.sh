#!/usr/bin/env bash
# `systemctl reload` reports the upgrade's outcome, under a real systemd user
# manager (../shared/tools/systemd-user-manager, systemd 252): issue 21.14.
#
# The shipped unit's ExecReload= is `portkeeper upgrade $MAINPID`, which asks
# the server on its control socket and waits for the answer. Four reloads:
#   1. a good executable: `systemctl reload` exits 0, and by then MainPID is
#      the new process, which answers /info;
#   2. a broken replacement executable (its server fails at start; its
#      `upgrade` command works, as a new build's would): the reload exits
#      non-zero, the journal says why, the old process is still MainPID and
#      still serves;
#   3. the real executable with a setting the new process refuses (.env in
#      the working directory, read afresh by the new process): the same;
#   4. fixed again: exit 0, a new MainPID.
# Prints one line per reload; exits non-zero when any of them is not as above.
#
# Usage: tests/manager/upgrade_result.sh [BINARY]   (run as root)
# The manager is stopped with stop.sh on every exit path.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
binary=${1:-$root/target/debug/portkeeper}
tool=$root/../shared/tools/systemd-user-manager
[ -x "$tool/start.sh" ] || { echo "no manager tool at $tool" >&2; exit 2; }
[ -x "$binary" ] || { echo "no binary at $binary (cargo build first)" >&2; exit 2; }
# One manager per machine (the tool's cgroup is machine-wide).
for cg in /sys/fs/cgroup/*/pkum /sys/fs/cgroup/pkum; do
    if [ -s "$cg/cgroup.procs" ]; then
        echo "another test manager is running ($cg); try again once it is stopped" >&2
        exit 2
    fi
done

. "$root/tests/manager/lib.sh"
prepare_units
cp "$binary" "$UNITS/portkeeper.good"
# Every /usr/local/bin/portkeeper (ExecStart= and ExecReload=) is the test's copy.
install_service -e "s|/usr/local/bin/portkeeper|$UNITS/portkeeper|g" \
    -e "s|^ExecStart=.*|&\nWorkingDirectory=$UNITS|"
grep -q "^ExecReload=$UNITS/portkeeper upgrade \$MAINPID\$" "$UNITS/portkeeper.service" ||
    { echo "the shipped unit's ExecReload= is not \`portkeeper upgrade \$MAINPID\`:" >&2; grep '^ExecReload' "$UNITS/portkeeper.service" >&2; exit 2; }

start_manager
sc start portkeeper.socket

prop() { sc show portkeeper.service -p "$1" --value; }
pid_of() { curl -s -m 5 "127.0.0.1:$port/info" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])'; }
# Puts a file in place as a new inode, as an installer does.
install_as() { cp "$1" "$UNITS/portkeeper.next" && chmod 755 "$UNITS/portkeeper.next" && mv "$UNITS/portkeeper.next" "$UNITS/portkeeper"; }
journal_since() { "$tool/journal.sh" -o cat --since "@$1" 2>/dev/null || true; }

failures=0
check() { # name, condition-result (0 = as expected), details
    if [ "$2" = 0 ]; then echo "ok:   $1: $3"; else echo "FAIL: $1: $3"; failures=$((failures + 1)); fi
}

# A reload; sets: rc, took, main (MainPID after it returns), served (the /info pid), said (journal lines since)
reload() {
    local since start end
    since=$(date +%s.%N)
    start=$since
    set +e
    sc reload portkeeper.service >"$work/reload.out" 2>&1
    rc=$?
    set -e
    end=$(date +%s.%N)
    took=$(echo "$end - $start" | bc)
    main=$(prop MainPID)
    served=$(pid_of || echo none)
    sleep 0.5 # the journal's own queue
    said=$(journal_since "$since")
}

first=$(pid_of) # the first connection starts the service

# 1. A good executable.
reload
check "good executable" "$([ "$rc" = 0 ] && [ "$main" != "$first" ] && [ "$served" = "$main" ] && echo 0 || echo 1)" \
    "reload exit=$rc in ${took}s, MainPID $first -> $main, /info pid=$served"
good=$main

# 2. A broken replacement: its server exits 1 at start.
cat >"$work/broken" <<EOF
#!/bin/sh
[ "\$1" = upgrade ] && exec $UNITS/portkeeper.good "\$@"
echo "broken build: refusing to start" >&2
exit 1
EOF
install_as "$work/broken"
reload
why=$(printf '%s\n' "$said" | grep -E 'upgrade of pid [0-9]+ failed' || true)
check "broken executable" "$([ "$rc" != 0 ] && [ "$main" = "$good" ] && [ "$served" = "$good" ] &&
    [ -n "$why" ] && grep -q 'broken build: refusing to start' <<<"$said" && echo 0 || echo 1)" \
    "reload exit=$rc in ${took}s, MainPID=$main, /info pid=$served, state=$(prop ActiveState); journal: ${why:-nothing}"
echo "      systemctl said: $(tr '\n' ' ' <"$work/reload.out")"

# 3. The real executable, with a setting the new process refuses.
install_as "$UNITS/portkeeper.good"
echo "AUTO_FIND_PORT=sometimes" >"$UNITS/.env"
reload
why=$(printf '%s\n' "$said" | grep -E 'upgrade of pid [0-9]+ failed' || true)
check "refused setting" "$([ "$rc" != 0 ] && [ "$main" = "$good" ] && [ "$served" = "$good" ] &&
    [ -n "$why" ] && grep -q 'AUTO_FIND_PORT' <<<"$said" && echo 0 || echo 1)" \
    "reload exit=$rc in ${took}s, MainPID=$main, /info pid=$served; journal: ${why:-nothing}"
rm "$UNITS/.env"

# 4. Fixed: the reload goes through again.
reload
check "fixed" "$([ "$rc" = 0 ] && [ "$main" != "$good" ] && [ "$served" = "$main" ] && echo 0 || echo 1)" \
    "reload exit=$rc in ${took}s, MainPID $good -> $main, /info pid=$served, state=$(prop ActiveState)"

sc stop portkeeper.service portkeeper.socket
echo "upgrade results under systemctl reload: $((4 - failures)) of 4 as expected"
[ "$failures" = 0 ]
