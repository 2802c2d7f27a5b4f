#!/usr/bin/env python3
"""Holds N slow-loris connections open against HOST:PORT for SECONDS.

Each connection sends a request line and then one header line every second,
never finishing the headers. When the server closes one (as it should at
HEADER_READ_TIMEOUT), it is reopened at once, so N stay open throughout.
Prints "ready" once all N are open, and at the end one line of figures:
how many the server closed and how long it held them.
"""
import asyncio
import statistics
import sys
import time


async def hold(host, port, stats, stop):
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            stats["connect_errors"] += 1
            await asyncio.sleep(0.1)
            continue
        stats["open"] += 1
        opened = time.monotonic()
        closed_by_server = False
        try:
            writer.write(b"GET /health HTTP/1.1\r\nHost: loris\r\n")
            await writer.drain()
            while not stop.is_set():
                writer.write(b"X-Loris: 1\r\n")
                await writer.drain()
                try:
                    data = await asyncio.wait_for(reader.read(1024), timeout=1.0)
                except asyncio.TimeoutError:
                    continue
                if not data:
                    closed_by_server = True
                    break
        except (ConnectionError, OSError):
            closed_by_server = True
        finally:
            stats["open"] -= 1
            writer.close()
        if closed_by_server and not stop.is_set():
            stats["closed_by_server"] += 1
            stats["held"].append(time.monotonic() - opened)


async def main(host, port, count, seconds):
    stats = {"open": 0, "closed_by_server": 0, "connect_errors": 0, "held": []}
    stop = asyncio.Event()
    tasks = [asyncio.create_task(hold(host, port, stats, stop)) for _ in range(count)]
    deadline = time.monotonic() + seconds
    announced = False
    while time.monotonic() < deadline:
        if not announced and stats["open"] >= count:
            print(f"ready open={stats['open']}", flush=True)
            announced = True
        await asyncio.sleep(0.05)
    open_at_end = stats["open"]
    stop.set()
    await asyncio.wait(tasks, timeout=5)
    held = stats["held"]
    median = f"{statistics.median(held):.1f}s" if held else "n/a"
    print(
        f"slowloris: open_at_end={open_at_end} closed_by_server={stats['closed_by_server']} "
        f"median_held={median} connect_errors={stats['connect_errors']}",
        flush=True,
    )


if __name__ == "__main__":
    host, port, count, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    asyncio.run(main(host, port, count, seconds))
