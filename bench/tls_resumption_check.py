#!/usr/bin/env python3
"""Counts which TLS connections offer a session to resume, to check that a load
client makes full handshakes (how the handshake row of bench/run.sh was chosen).

    tls_resumption_check.py LISTEN_PORT SERVER_PORT

A TCP proxy on 127.0.0.1:LISTEN_PORT to 127.0.0.1:SERVER_PORT that reads each
connection's ClientHello and sorts it: `psk` (TLS 1.3 pre_shared_key, a
resumption), `ticket` (a non-empty TLS 1.2 session ticket), or `full`
(neither: the server must make a full handshake). It prints the counts every
second; stop it with Ctrl-C. For example:

    bench/tls_resumption_check.py 47001 "$SERVER_PORT" &
    h2load --h1 -c 10 -n 10 https://127.0.0.1:47001/health           # 10 full
    h2load --h1 -c 10 -n 500 -H 'Connection: close' https://...       # reconnections offer psk
    wrk -c 5 -d 2s -H 'Connection: close' https://127.0.0.1:47001/     # psk after the first

(TLS 1.3's legacy session id is random in every OpenSSL ClientHello, so it
says nothing; the pre_shared_key extension is what a resumption sends.)
"""

import asyncio
import collections
import struct
import sys

PRE_SHARED_KEY = 41
SESSION_TICKET = 35
counts = collections.Counter()


def kind(hello: bytes) -> str:
    """`psk`, `ticket` or `full` for a TLS record holding a ClientHello."""
    # The record header (5), the handshake header (4), version (2), random (32).
    at = 5 + 4 + 2 + 32
    at += 1 + hello[at]  # session id
    at += 2 + struct.unpack(">H", hello[at : at + 2])[0]  # cipher suites
    at += 1 + hello[at]  # compression methods
    end = at + 2 + struct.unpack(">H", hello[at : at + 2])[0]
    at += 2
    offers = set()
    while at < end:
        extension, length = struct.unpack(">HH", hello[at : at + 4])
        at += 4
        if extension == PRE_SHARED_KEY:
            offers.add("psk")
        elif extension == SESSION_TICKET and length > 0:
            offers.add("ticket")
        at += length
    return "+".join(sorted(offers)) or "full"


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def proxy(client_reader, client_writer, server_port):
    server_reader, server_writer = await asyncio.open_connection("127.0.0.1", server_port)
    first = b""
    # The whole first record: its length is in bytes 3-4 of the header.
    while len(first) < 5 or len(first) < 5 + struct.unpack(">H", first[3:5])[0]:
        chunk = await client_reader.read(65536)
        if not chunk:
            break
        first += chunk
    try:
        counts[kind(first)] += 1
    except (IndexError, struct.error):
        counts["not a ClientHello"] += 1
    server_writer.write(first)
    await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))


async def main():
    if len(sys.argv) != 3:
        sys.exit("usage: tls_resumption_check.py LISTEN_PORT SERVER_PORT")
    listen_port, server_port = int(sys.argv[1]), int(sys.argv[2])
    server = await asyncio.start_server(
        lambda r, w: proxy(r, w, server_port), "127.0.0.1", listen_port, backlog=1024
    )
    async with server:
        while True:
            await asyncio.sleep(1)
            print(dict(counts), flush=True)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
