"""Where the proxy's time to first token goes (python/docs/bench.md, "added TTFT at c=1").

Starts tritonserver (scripted engine) and the proxy in this process, patches timestamps
into the request path, and sends 300 sequential streaming requests from a raw-socket
client in a subprocess (no HTTP library in the measurement). Prints medians per phase.
Run from the repo root: python python/scripts/perf/ttft_breakdown.py
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests/integration/proxy"))
import itertools

from proxy_helpers import start_proxy

import trtllm_stack.proxy.app as appmod
import trtllm_stack.proxy.serving_base as sb
import trtllm_stack.proxy.serving_chat as sc
from trtllm_stack.tokenizer import bundled_qwen3_tokenizer_dir
from trtllm_stack.triton.model_repo import ScriptedEngineOptions, write_model_repository
from trtllm_stack.triton.server import TritonServer

marks = []
cur = {}


def mark(k):
    cur[k] = time.perf_counter()


orig_call = appmod.ProxyApp.__call__


async def call(self, scope, receive, send):
    if scope["type"] == "http" and scope["path"].endswith("/chat/completions"):
        cur.clear()
        mark("asgi")
    await orig_call(self, scope, receive, send)
    if "asgi" in cur:
        marks.append(dict(cur))


appmod.ProxyApp.__call__ = call
orig_handle = sc.ChatService.handle


async def handle(self, request, body):
    mark("handler")
    return await orig_handle(self, request, body)


sc.ChatService.handle = handle
orig_plan = sc.ChatService.plan


async def plan(self, body):
    r = await orig_plan(self, body)
    mark("planned")
    return r


sc.ChatService.plan = plan


class Marked:
    """Marks the first batch of a request (EngineStream has __slots__, so wrap it)."""

    def __init__(self, inner):
        self.inner = inner

    async def next_batch(self):
        b = await self.inner.next_batch()
        if "first_chunk" not in cur:
            mark("first_chunk")
        return b

    def close(self):
        self.inner.close()


orig_start = sb.ServingContext.start


async def start(self, req, rid):
    r = await orig_start(self, req, rid)
    mark("opened")
    return Marked(r)


sb.ServingContext.start = start

base = Path(tempfile.mkdtemp())
opts = ScriptedEngineOptions(event_log=base / "ev.jsonl", default_reply_tokens=512)
repo = write_model_repository(
    base / "repo", engine="scripted", tokenizer_dir=bundled_qwen3_tokenizer_dir(), scripted=opts
)
server = TritonServer(repo, log_path=base / "log")
ep = server.start()
proxy = start_proxy(bundled_qwen3_tokenizer_dir(), triton_url=ep.grpc_url)
orig_body_send = None
client = r"""
import socket, time, json, sys
host, port = sys.argv[1], int(sys.argv[2])
words = " ".join(["hello world"]*64)
body = json.dumps({"model":"qwen3","messages":[{"role":"user","content":words}],"max_tokens":128,"stream":True}).encode()
req = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
out = []
s = socket.create_connection((host, port)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for i in range(300):
    t0 = time.perf_counter(); s.sendall(req); buf = b""; tf = None
    while True:
        d = s.recv(65536); buf += d
        if tf is None and b'"content":"' in buf.split(b"\r\n\r\n",1)[-1].replace(b'"content":""', b''):
            tf = time.perf_counter()
        if b"data: [DONE]" in buf and buf.endswith(b"0\r\n\r\n"): break
    out.append((t0, tf))
print(json.dumps(out))
"""
port = proxy.base_url.rsplit(":", 1)[1]
res = json.loads(
    subprocess.run(
        [sys.executable, "-c", client, "127.0.0.1", port], capture_output=True, text=True
    ).stdout
)
proxy.stop()
server.stop()
res = res[50:]
ms = marks[50:]


def med(xs):
    return statistics.median(xs) * 1e3


print("client TTFT p50 ms", med([b - a for a, b in res]))
print("client send -> asgi", med([m["asgi"] - a for (a, _), m in zip(res, ms, strict=False)]))
keys = ["asgi", "handler", "planned", "opened", "first_chunk"]
for a, b in itertools.pairwise(keys):
    print(f"{a} -> {b}", med([m[b] - m[a] for m in ms]))
print(
    "first_chunk -> client sees",
    med([tf - m["first_chunk"] for (a, tf), m in zip(res, ms, strict=False)]),
)
