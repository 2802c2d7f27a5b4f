#!/usr/bin/env python3
"""Slow TLS handshakes: do N stalled connections delay /health, and are they closed?

Starts portkeeper (the binary given, default target/release/portkeeper) with
a plain and a TLS listener in one process (LISTEN=127.0.0.1:0,tls=127.0.0.1:0)
and TLS_HANDSHAKE_TIMEOUT=T (default 3 s), then in one run:

1. without: for W seconds, GET /health over a fresh connection, alternating
   the plain and the TLS listener (a full TLS handshake each time);
2. opens N (default 500) connections to the TLS listener that never finish a
   handshake: half connect and send nothing, half send the first half of a
   real ClientHello; then the same W seconds of /health samples (W < T, so
   all N are open throughout: checked, none may be closed before T);
3. waits for the server to close every one of them (end of file or a reset
   read here), and reports how long each was held, and the metrics
   portkeeper_tls_handshakes_total{result=...}.

Prints p50/p99/max of /health per listener with and without the stalled
connections, the ratio, the hold times and the server's open fds. Needs
openssl (for a throwaway CA and localhost certificate). Loopback only; every
wait is bounded. Usage: bench/slow_handshakes.py [BINARY] [N] [T]
"""
import os
import re
import resource
import selectors
import socket
import ssl
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BINARY = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "target", "release", "portkeeper"))
STALLED = int(sys.argv[2]) if len(sys.argv) > 2 else 500
TIMEOUT = float(sys.argv[3]) if len(sys.argv) > 3 else 3.0
# Sampling window: the stalled connections must all still be open at its end.
WINDOW = max(0.5, min(8.0, TIMEOUT - 1.0))


def make_certs(work):
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    run("req", "-x509", *ec, "-days", "2", "-subj", "/CN=bench-ca",
        "-keyout", f"{work}/ca.key", "-out", f"{work}/ca.pem")
    run("req", *ec, "-subj", "/CN=localhost", "-keyout", f"{work}/key.pem", "-out", f"{work}/leaf.csr")
    with open(f"{work}/ext", "w") as ext:
        ext.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("x509", "-req", "-in", f"{work}/leaf.csr", "-CA", f"{work}/ca.pem", "-CAkey", f"{work}/ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", f"{work}/ext", "-out", f"{work}/cert.pem")


def start_server(work):
    env = {
        "PATH": os.environ.get("PATH", ""),
        "LISTEN": "127.0.0.1:0,tls=127.0.0.1:0",
        "TLS_CERT_FILE": f"{work}/cert.pem",
        "TLS_KEY_FILE": f"{work}/key.pem",
        "TLS_HANDSHAKE_TIMEOUT": f"{TIMEOUT:g}",
    }
    log = open(f"{work}/server.log", "w+")
    server = subprocess.Popen([BINARY], env=env, cwd=work, stdin=subprocess.DEVNULL,
                              stdout=log, stderr=subprocess.STDOUT)
    plain = tls = None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (plain is None or tls is None):
        if server.poll() is not None:
            break
        log.seek(0)
        for line in log:
            if " serving " not in line:
                continue
            address = re.search(r" address=(\S+)", line).group(1)
            host, port = address.rsplit(":", 1)
            if re.search(r' marks="?tls"? ', line):
                tls = (host, int(port))
            else:
                plain = (host, int(port))
        time.sleep(0.05)
    if plain is None or tls is None:
        server.kill()
        log.seek(0)
        sys.exit("portkeeper did not report two listeners:\n" + log.read())
    return server, plain, tls


def read_all(sock):
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except ssl.SSLEOFError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def get(address, path, context=None):
    """GET over a fresh connection; returns (seconds, status, body)."""
    began = time.perf_counter()
    sock = socket.create_connection(address, timeout=10)
    try:
        if context is not None:
            sock = context.wrap_socket(sock, server_hostname="localhost")
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
        response = read_all(sock)
    finally:
        sock.close()
    elapsed = time.perf_counter() - began
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return elapsed, status, body


def sample(plain, tls, context, seconds):
    """/health alternately on both listeners for `seconds`; latencies in ms."""
    results = {"plain": [], "tls": []}
    errors = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for name, address, ctx in (("plain", plain, None), ("tls", tls, context)):
            try:
                elapsed, status, _ = get(address, "/health", ctx)
            except OSError:
                errors += 1
                continue
            if status != 200:
                errors += 1
                continue
            results[name].append(elapsed * 1000)
    return results, errors


def partial_client_hello(context):
    """The first half of a real ClientHello (as a client that stalls sends)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = outgoing.read()
    return hello[: len(hello) // 2]


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))] if ordered else float("nan")


def metric(plain, result):
    _, _, body = get(plain, "/metrics")
    found = re.search(rf'portkeeper_tls_handshakes_total\{{result="{result}"\}} (\d+)', body.decode())
    return int(found.group(1)) if found else None


def open_fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def fd_limit(pid):
    try:
        with open(f"/proc/{pid}/limits") as limits:
            for line in limits:
                if line.startswith("Max open files"):
                    return line.split()[3]
    except OSError:
        return None


def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = STALLED + 100
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            sys.exit(f"ulimit -n is {soft} (hard {hard}): {STALLED} connections need {need}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    with tempfile.TemporaryDirectory(prefix="portkeeper-slow-hs.") as work:
        make_certs(work)
        server, plain, tls = start_server(work)
        try:
            run(server, plain, tls, work)
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def run(server, plain, tls, work):
    context = ssl.create_default_context(cafile=f"{work}/ca.pem")
    print(f"portkeeper slow-handshake benchmark: {STALLED} stalled TLS connections, "
          f"TLS_HANDSHAKE_TIMEOUT={TIMEOUT:g}s, /health sampled {WINDOW:g}s per phase")
    print(f"machine: {os.cpu_count()} cores; {os.uname().sysname} {os.uname().release}; "
          f"fd limit: server {fd_limit(server.pid)}, client {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}")
    # Warm-up: the first requests pay for page faults and lazy set-up.
    sample(plain, tls, context, 0.3)
    fds_before = open_fds(server.pid)
    without, errors_without = sample(plain, tls, context, WINDOW)

    hello = partial_client_hello(context)
    stalled = []
    for i in range(STALLED):
        sock = socket.create_connection(tls, timeout=10)
        if i % 2 == 1:
            sock.sendall(hello)
        sock.setblocking(False)
        stalled.append((sock, time.monotonic(), "partial-hello" if i % 2 else "silent"))
    opened_all = time.monotonic()
    time.sleep(0.1)  # let the server accept them all before measuring
    fds_with = open_fds(server.pid)
    with_stalled, errors_with = sample(plain, tls, context, WINDOW)
    sampled_until = time.monotonic()

    # Which were closed by the server, and when (bounded: T + 10 s).
    selector = selectors.DefaultSelector()
    for index, (sock, _, _) in enumerate(stalled):
        selector.register(sock, selectors.EVENT_READ, index)
    closed_at = {}
    how = {"eof": 0, "reset": 0}
    deadline = opened_all + TIMEOUT + 10
    while len(closed_at) < STALLED and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.05):
            sock = key.fileobj
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data, kind = b"", "reset"
            else:
                kind = "eof"
            if data:
                continue  # an alert before the close
            closed_at[key.data] = time.monotonic()
            how[kind] += 1
            selector.unregister(sock)
    closed_early = sum(1 for i, t in closed_at.items() if t < sampled_until)
    held = sorted(closed_at[i] - stalled[i][1] for i in closed_at)
    for sock, _, _ in stalled:
        sock.close()
    fds_after = open_fds(server.pid)

    print()
    print(f"{'listener':<8} {'stalled':>8} {'n':>6} {'p50_ms':>8} {'p99_ms':>8} {'max_ms':>8}")
    for name in ("plain", "tls"):
        for label, results in ((0, without), (STALLED, with_stalled)):
            values = results[name]
            print(f"{name:<8} {label:>8} {len(values):>6} {percentile(values, 50):>8.2f} "
                  f"{percentile(values, 99):>8.2f} {max(values, default=float('nan')):>8.2f}")
    for name in ("plain", "tls"):
        p50 = percentile(with_stalled[name], 50) / percentile(without[name], 50)
        p99 = percentile(with_stalled[name], 99) / percentile(without[name], 99)
        print(f"ratio with/without {name:<5}: p50 x{p50:.2f}, p99 x{p99:.2f}")
    print(f"/health errors: without={errors_without} with={errors_with}")
    if held:
        print(f"stalled: {STALLED} opened, {len(closed_at)} closed by the server "
              f"(eof {how['eof']}, reset {how['reset']}), {closed_early} before the sampling ended; "
              f"held min {held[0]:.2f}s, median {held[len(held) // 2]:.2f}s, max {held[-1]:.2f}s "
              f"(TLS_HANDSHAKE_TIMEOUT={TIMEOUT:g}s)")
    else:
        print(f"stalled: {STALLED} opened, none closed by the server within {TIMEOUT + 10:g}s")
    print(f"metrics: timed_out={metric(plain, 'timed_out')} over_cap={metric(plain, 'over_cap')} "
          f"failed={metric(plain, 'failed')} ok={metric(plain, 'ok')}")
    print(f"server open fds: before={fds_before} with stalled={fds_with} after={fds_after}")
    ok = len(closed_at) == STALLED and closed_early == 0 and errors_with == 0
    if not ok:
        sys.exit("FAILED: see above")


if __name__ == "__main__":
    main()
