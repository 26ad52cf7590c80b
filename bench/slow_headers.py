"""Slow-header clients, run as a script by bench/abuse.py and tests/test_abuse_http.py.

``python bench/slow_headers.py PORT COUNT [PAUSE]``: COUNT clients each send a request's headers one line a
second, reconnecting PAUSE seconds (default 0) after the server closes them. Prints "ready" once each has
connected; stops at the end of stdin and prints, as one JSON line, what it saw. A script of its own (not a
function) so the attack runs in another process, off the event loop and descriptors of whoever measures it.
"""

from __future__ import annotations

import asyncio
import json
import sys


async def client(port: int, pause: float, seen: dict[str, int], count: int, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            seen["connect_failed"] += 1
            await asyncio.sleep(0.1)
            continue
        seen["connections"] += 1
        if seen["connections"] == count:
            print("ready", flush=True)
        try:
            writer.write(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            line = 0
            while not stop.is_set():
                try:
                    data = await asyncio.wait_for(reader.read(4096), 1.0)
                except TimeoutError:
                    writer.write(b"X-Slow-%d: 1\r\n" % line)
                    line += 1
                    continue
                for code in ("408", "503"):
                    seen[code] += data.startswith(b"HTTP/1.1 " + code.encode())
                seen["closed_by_server"] += 1
                break
        except OSError:
            seen["closed_by_server"] += 1
        writer.close()
        if pause:
            await asyncio.sleep(pause)


async def main(port: int, count: int, pause: float) -> None:
    seen = {"connections": 0, "closed_by_server": 0, "408": 0, "503": 0, "connect_failed": 0}
    stop = asyncio.Event()

    def on_stdin() -> None:
        if sys.stdin.read() == "":  # the end of stdin: the caller is done measuring
            stop.set()

    asyncio.get_running_loop().add_reader(sys.stdin.fileno(), on_stdin)
    await asyncio.gather(*(client(port, pause, seen, count, stop) for _ in range(count)))
    print(json.dumps(seen), flush=True)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]) if len(sys.argv) > 3 else 0.0))
