#!/usr/bin/env python3
"""Holds idle TLS keep-alive connections open, for the idle-RSS row of bench/run.sh.

    tls_idle.py HOST PORT COUNT CA_FILE

Opens COUNT connections to HOST:PORT one after the other, each a full TLS
handshake (ALPN http/1.1, the server's certificate verified against CA_FILE)
and one `GET /health` answered 200, then leaves them idle with keep-alive.
It prints `open COUNT` once all are open, and then, for each line read on
stdin, `open K`: how many of them the server still holds open. It closes them
all and exits at end of input. An error ends it with one line on stderr and
status 1.
"""

import resource
import select
import socket
import ssl
import sys

# Every step is bounded: a server that stops answering fails the run.
TIMEOUT_SECONDS = 10
REQUEST = b"GET /health HTTP/1.1\r\nHost: bench\r\n\r\n"


def fail(message):
    print(f"tls_idle.py: error: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def one_request(conn):
    """Sends GET /health and reads its whole response (Content-Length framed)."""
    conn.sendall(REQUEST)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            raise ConnectionError("closed before the response headers")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    if not head.startswith(b"HTTP/1.1 200 "):
        raise ConnectionError(f"expected 200, got {head.splitlines()[0]!r}")
    length = None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length is None:
        raise ConnectionError("no content-length in the response")
    while len(body) < length:
        chunk = conn.recv(4096)
        if not chunk:
            raise ConnectionError("closed inside the response body")
        body += chunk


def still_open(conns):
    """How many connections the server has not closed. Only a readable one
    can be closed: it is read without blocking, and EOF or an error means
    closed, while nothing to read past TLS's own records means open."""
    # poll, not select: the descriptors go past select's 1,024.
    poller = select.poll()
    for conn in conns:
        poller.register(conn, select.POLLIN)
    readable = {fd for fd, _ in poller.poll(0)}
    closed = 0
    for conn in conns:
        if conn.fileno() not in readable:
            continue
        conn.setblocking(False)
        try:
            if conn.recv(1) == b"":
                closed += 1
        except ssl.SSLWantReadError:
            pass
        except OSError:
            closed += 1
        conn.settimeout(TIMEOUT_SECONDS)
    return len(conns) - closed


def main():
    if len(sys.argv) != 5:
        fail("usage: tls_idle.py HOST PORT COUNT CA_FILE")
    host, port, count, ca_file = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < count + 64:
        if hard != resource.RLIM_INFINITY and hard < count + 64:
            fail(f"the open-file limit {hard} is below COUNT {count} + 64")
        resource.setrlimit(resource.RLIMIT_NOFILE, (count + 64, hard))
    context = ssl.create_default_context(cafile=ca_file)
    context.set_alpn_protocols(["http/1.1"])
    conns = []
    for i in range(count):
        try:
            raw = socket.create_connection((host, port), timeout=TIMEOUT_SECONDS)
            conn = context.wrap_socket(raw, server_hostname=host)
            one_request(conn)
        except (OSError, ValueError) as err:
            fail(f"connection {i + 1} of {count}: {err}")
        conns.append(conn)
    print(f"open {len(conns)}", flush=True)
    for _ in sys.stdin:
        print(f"open {still_open(conns)}", flush=True)
    for conn in conns:
        conn.close()


if __name__ == "__main__":
    main()
