#!/usr/bin/env python3
"""A throttling TCP proxy for bench/remote.sh: LISTEN_PORT -> TARGET_PORT on
127.0.0.1, every byte the server sends delayed by DELAY_MS and all of them
sharing RATE_MBIT of bandwidth.

It stands in for `tc qdisc ... netem delay 20ms rate 100mbit` on machines
whose kernel has no netem (tc answers "Specified qdisc kind is unknown"),
and throttles only the S3 traffic, not the object store's own loopback
traffic between its components.

    bench/throttle.py LISTEN_PORT TARGET_PORT DELAY_MS RATE_MBIT
"""

import asyncio
import sys
import time


class Link:
    """The shared downlink: when the next byte may leave."""

    def __init__(self, rate_mbit):
        self.bytes_per_s = rate_mbit * 1e6 / 8
        self.free_at = 0.0

    def schedule(self, n):
        now = time.monotonic()
        start = max(now, self.free_at)
        self.free_at = start + n / self.bytes_per_s
        return self.free_at


async def pump_up(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def pump_down(reader, writer, link, delay):
    """Server to client: each chunk leaves `delay` after it arrived, and
    not before the link has carried what went before it."""
    queue = asyncio.Queue()

    async def deliver():
        while (item := await queue.get()) is not None:
            due, data = item
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        writer.close()

    task = asyncio.create_task(deliver())
    try:
        while data := await reader.read(16384):
            done = link.schedule(len(data))
            await queue.put((max(done, time.monotonic() + delay), data))
    except ConnectionError:
        pass
    await queue.put(None)
    try:
        await task
    except ConnectionError:
        pass


async def main():
    listen, target, delay_ms, rate = (int(a) for a in sys.argv[1:5])
    link = Link(rate)

    async def handle(client_reader, client_writer):
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(
            pump_up(client_reader, server_writer),
            pump_down(server_reader, client_writer, link, delay_ms / 1000),
        )

    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    print(f"throttling 127.0.0.1:{listen} -> {target}: {delay_ms} ms, {rate} Mbit/s", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
