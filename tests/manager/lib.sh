# Shared by the tests/manager scripts: a private systemd user manager
# (../shared/tools/systemd-user-manager) with the shipped units installed
# for a test copy of the binary. Source it once `root`, `binary` and `tool`
# are set.

# A work directory, removed (and the manager stopped) on every exit path; a
# free loopback port; the binary copied; the socket unit moved to that port.
prepare_units() {
    work=$(mktemp -d /tmp/pk-manager.XXXXXX)
    export PKUM=$work/pkum UNITS=$work/units
    mkdir -p "$UNITS"
    trap cleanup EXIT
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    cp "$binary" "$UNITS/portkeeper"
    sed -e "s/^ListenStream=5050$/ListenStream=127.0.0.1:$port/" -e '/^BindIPv6Only=/d' \
        "$root/systemd/portkeeper.socket" >"$UNITS/portkeeper.socket"
}

cleanup() {
    "$tool/stop.sh" || true
    rm -rf "$work"
}

# The shipped service unit, through the sed expressions given, less the
# hardening lines that break start-up, readiness or the journal in a user
# manager (services run as root there; the manager tool's README).
install_service() {
    grep -v -E '^(DynamicUser|PrivateTmp|ProtectProc|ProcSubset|ProtectControlGroups|ProtectKernelTunables|ProtectHome)=' \
        "$root/systemd/portkeeper.service" |
        sed "$@" >"$UNITS/portkeeper.service"
}

# Starts the manager in a session of its own and waits (bounded) for its socket.
start_manager() {
    setsid "$tool/start.sh" >"$work/manager.log" 2>&1 </dev/null &
    for _ in $(seq 100); do [ -S "$PKUM/xdg/systemd/private" ] && break; sleep 0.1; done
    [ -S "$PKUM/xdg/systemd/private" ] || { echo "the manager did not start:" >&2; cat "$work/manager.log" >&2; exit 1; }
    export XDG_RUNTIME_DIR=$PKUM/xdg
}

sc() { systemctl --user --no-pager "$@"; }
