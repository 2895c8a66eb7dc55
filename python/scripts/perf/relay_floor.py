"""The CPU floor of a Python relay on this machine: one message in, one chunk out.

A uvloop process receives 150-byte messages over loopback TCP at RATE per second (a
producer process, like Triton sending one response per token) and writes each one,
framed as an SSE event, to a consumer process (like the client). No parsing, no JSON,
no detokenizing: what remains is the wake-up, the read and the write that every
per-token stream pays at concurrency 1 (python/docs/bench.md, "The floor at c=1").

    python python/scripts/perf/relay_floor.py callback   # write from data_received
    python python/scripts/perf/relay_floor.py task       # hand over to a task via a queue
"""

import asyncio
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import uvloop

ME = str(Path(__file__).resolve())

RATE = 4500  # messages per second: the scripted engine's rate at c=1 on this box
N = 20000


def producer(port: int) -> None:
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    msg, gap, t = b"x" * 150, 1 / RATE, time.perf_counter()
    for _ in range(N):
        t += gap
        while time.perf_counter() < t:
            pass
        s.sendall(msg)
    s.close()


def consumer(port: int) -> None:
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while s.recv(65536):
        pass


async def relay(mode: str) -> None:
    loop = asyncio.get_running_loop()
    out: list[asyncio.Transport] = []
    connected, done = asyncio.Event(), asyncio.Event()
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    class Out(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            out.append(transport)  # type: ignore[arg-type]
            connected.set()

    class In(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            if mode == "callback":
                out[0].write(b"data: " + data + b"\n\n")
            else:
                queue.put_nowait(data)

        def connection_lost(self, exc: Exception | None) -> None:
            queue.put_nowait(None)
            done.set()

    s_out = await loop.create_server(Out, "127.0.0.1", 0)
    s_in = await loop.create_server(In, "127.0.0.1", 0)
    cons = subprocess.Popen(  # noqa: ASYNC220 (started once, before measuring)
        [sys.executable, ME, "consumer", str(s_out.sockets[0].getsockname()[1])]
    )
    await connected.wait()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    prod = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, ME, "producer", str(s_in.sockets[0].getsockname()[1])]
    )
    if mode == "task":
        while (data := await queue.get()) is not None:
            out[0].write(b"data: " + data + b"\n\n")
    await done.wait()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    user = (r1.ru_utime - r0.ru_utime) / N * 1e6
    system = (r1.ru_stime - r0.ru_stime) / N * 1e6
    print(f"{mode}: user {user:.1f} + sys {system:.1f} = {user + system:.1f} us per message")
    prod.wait()
    cons.kill()


if __name__ == "__main__":
    if sys.argv[1] == "producer":
        producer(int(sys.argv[2]))
    elif sys.argv[1] == "consumer":
        consumer(int(sys.argv[2]))
    else:
        uvloop.run(relay(sys.argv[1]))
