"""CPU per token of the engine client alone: EngineClient (triton/grpc_wire.py) against
the grpc.aio client it replaced (python/docs/bench.md). Usage, from the repo root:

    git show 5f0b069:python/trtllm_stack/triton/client.py > /tmp/old_client.py
    python python/scripts/perf/client_cpu.py /tmp/old_client.py
"""

import asyncio
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
import uvloop

from trtllm_stack.tokenizer import bundled_qwen3_tokenizer_dir
from trtllm_stack.triton.client import EngineClient
from trtllm_stack.triton.model_repo import ScriptedEngineOptions, write_model_repository
from trtllm_stack.triton.server import TritonServer
from trtllm_stack.triton.tensors import EngineRequest

spec = importlib.util.spec_from_file_location("old_client", sys.argv[1])
old = importlib.util.module_from_spec(spec)
sys.modules["old_client"] = old
spec.loader.exec_module(old)

base = Path(tempfile.mkdtemp())
opts = ScriptedEngineOptions(event_log=base / "ev.jsonl", default_reply_tokens=512)
repo = write_model_repository(
    base / "repo", engine="scripted", tokenizer_dir=bundled_qwen3_tokenizer_dir(), scripted=opts
)
server = TritonServer(repo, log_path=base / "log")
ep = server.start()


async def run(client, conc, n_req):
    req = EngineRequest(
        prompt_ids=list(range(100, 228)),
        max_tokens=128,
        end_id=151645,
        pad_id=151643,
        streaming=True,
        min_tokens=128,
    )
    tokens = 0

    async def one():
        nonlocal tokens
        async for ch in client.generate(req):
            tokens += len(ch.token_ids)

    async def worker(k):
        for _ in range(k):
            await one()

    await asyncio.gather(*[worker(4) for _ in range(conc)])  # warm
    tokens = 0
    c0 = time.process_time()
    t0 = time.perf_counter()
    await asyncio.gather(*[worker(n_req // conc) for _ in range(conc)])
    c1 = time.process_time()
    t1 = time.perf_counter()
    return (c1 - c0) / tokens * 1e6, tokens / (t1 - t0)


async def main():
    for conc in (1, 64):
        for name, cls in (("new", EngineClient), ("old", old.EngineClient), ("new", EngineClient)):
            client = cls(ep.grpc_url)
            cpu, tps = await run(client, conc, 64 if conc == 1 else 256)
            await client.close()
            print(f"c={conc} {name}: {cpu:.1f} us/token, {tps:.0f} tok/s", flush=True)


try:
    uvloop.run(main())
finally:
    server.stop()
