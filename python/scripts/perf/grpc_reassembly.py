"""Time grpc_wire's reassembly of one large gRPC message arriving in 16 KiB DATA frames
(the event loop is blocked for this long). Run from the repo root:

    python python/scripts/perf/grpc_reassembly.py [MiB]

Quadratic reassembly (``partial + payload`` per frame) took seconds at 16 MiB; linear
reassembly grows with the size. Point PYTHONPATH at another checkout to compare.
"""

from __future__ import annotations

import asyncio
import struct
import sys
import time

from trtllm_stack.triton.grpc_wire import H2Connection


class _Transport:
    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


def _frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return struct.pack(">BHBBI", n >> 16, n & 0xFFFF, ftype, flags, sid) + payload


async def main(mib: int) -> None:
    from hpack import Encoder

    conn = H2Connection("t", asyncio.get_running_loop())
    conn.connection_made(_Transport())  # type: ignore[arg-type]
    conn.data_received(_frame(4, 0, 0))
    stream = conn.start_call("/s/m", b"x", end_stream=True)
    conn.data_received(_frame(1, 4, stream.id, Encoder().encode([(":status", "200")])))
    body = b"\x07" * (mib << 20)
    wire = struct.pack(">BI", 0, len(body)) + body
    frames = [_frame(0, 0, stream.id, wire[i : i + 16384]) for i in range(0, len(wire), 16384)]
    start = time.perf_counter()
    for f in frames:
        conn.data_received(f)
    took = time.perf_counter() - start
    assert len(stream.messages) == 1 and len(stream.messages[0]) == len(body)
    print(f"{mib} MiB in {len(frames)} frames: {took * 1000:.1f} ms")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 16))
