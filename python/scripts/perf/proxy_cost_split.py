"""The proxy's CPU split into a per-request and a per-token part (python/docs/bench.md).

Starts tritonserver (scripted engine, zero delay) and the proxy, then sends sequential
streaming chat requests from a raw-socket client in a subprocess (no HTTP library): 1000
requests of 1 output token, then 300 of 128, twice. The proxy's user and system CPU come
from /proc; the marginal cost per token is (cost of a 128-token request - cost of a
1-token request) / 127. Run from the repo root:

    python python/scripts/perf/proxy_cost_split.py
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
from trtllm_stack.bench.proxy_vs_direct import running_stack

CLIENT = r"""
import json, socket, sys, time
host, port, n, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
msg = {"role": "user", "content": "hello " * 120}
body = json.dumps({"model": "qwen3", "messages": [msg], "stream": True,
                   "max_tokens": out, "min_tokens": out, "ignore_eos": True}).encode()
req = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
       f"Content-Length: {len(body)}\r\n\r\n").encode() + body
s = socket.create_connection((host, port))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for _ in range(n):
    s.sendall(req)
    buf = b""
    while not buf.endswith(b"0\r\n\r\n"):
        data = s.recv(65536)
        if not data:
            raise SystemExit("connection closed")
        buf += data
"""


def proxy_cpu(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def main() -> None:
    with running_stack(Path(tempfile.mkdtemp())) as stack:
        host, port = stack.proxy_url.rsplit("/", 1)[1].split(":")

        def run(n: int, out: int) -> tuple[float, float]:
            u0, s0 = proxy_cpu(stack.proxy_pid)
            subprocess.run([sys.executable, "-c", CLIENT, host, port, str(n), str(out)], check=True)
            u1, s1 = proxy_cpu(stack.proxy_pid)
            return (u1 - u0) / n * 1e6, (s1 - s0) / n * 1e6

        run(30, 128)  # warm-up
        for _ in range(2):
            one, full = run(1000, 1), run(300, 128)
            split = {
                "per_request_us": {"user": round(one[0]), "sys": round(one[1])},
                "per_token_us": {
                    "user": round((full[0] - one[0]) / 127, 1),
                    "sys": round((full[1] - one[1]) / 127, 1),
                },
            }
            print(json.dumps(split), flush=True)


if __name__ == "__main__":
    main()
