"""``n`` > 1 for non-streaming replies: n engine requests, one reply with n choices.

Why n requests and not the backend's ``num_return_sequences``: streamed responses of the
TensorRT-LLM backend then interleave the sequences (told apart by the ``sequence_index``
output), which our engine client does not demultiplex yet; n requests give the same result
with the backend's KV-cache reuse sharing the prompt. Each choice gets its own seed (the
request's seed + i, or a random base): TensorRT-LLM's default seed is the same for every
request, so n unseeded requests would sample n identical replies. Streaming with n > 1 is
rejected (400) until the stream side is done. n itself is bounded by ``max_n``
(request_limits.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from trtllm_stack.proxy.engine import ChunkStream
from trtllm_stack.proxy.errors import InvalidRequest, ProxyError, engine_failure, json_response
from trtllm_stack.triton.tensors import EngineRequest

_SEED_LIMIT = 2**64


def check_n(n: int | None, stream: bool) -> int:
    n = n or 1
    if n > 1 and stream:
        raise InvalidRequest("n > 1 is supported for non-streaming requests only", param="n")
    return n


def seeded(req: EngineRequest, n: int) -> list[EngineRequest]:
    base = req.seed if req.seed is not None else secrets.randbits(63)
    return [dataclasses.replace(req, seed=(base + i) % _SEED_LIMIT) for i in range(n)]


def merge(replies: list[dict[str, Any]]) -> dict[str, Any]:
    """One reply: the choices renumbered 0..n-1, completion tokens summed (the prompt once)."""
    out = dict(replies[0])
    choices = []
    completion = 0
    for i, reply in enumerate(replies):
        choice = dict(reply["choices"][0])
        choice["index"] = i
        choices.append(choice)
        completion += reply["usage"]["completion_tokens"]
    prompt = out["usage"]["prompt_tokens"]
    out["choices"] = choices
    out["usage"] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    return out


async def serve_n(
    ctx: Any,
    request: Request,
    plan: Any,
    n: int,
    aggregate: Callable[[ChunkStream, Any], Awaitable[dict[str, Any]]],
) -> Response:
    """Like serve_plan's non-stream path, with n engine requests under one lease."""
    from trtllm_stack.proxy.serving_base import ClientGone, until_disconnect

    lease = ctx.admit()
    pumps: list[ChunkStream] = []

    def close_all() -> None:
        for pump in pumps:
            pump.close()
        lease.release()

    try:
        for i, req in enumerate(seeded(plan.engine_req, n)):
            pumps.append(await ctx.start(req, f"{plan.request_id}-{i}"))
        work = asyncio.gather(*(aggregate(pump, lease) for pump in pumps))
        replies = await until_disconnect(request, work)
    except ClientGone:
        ctx.metrics.count_error("client_disconnected")
        close_all()
        return Response(status_code=499)
    except ProxyError:
        close_all()
        raise
    except Exception as exc:
        close_all()
        raise engine_failure(exc) from None
    except BaseException:
        close_all()
        raise
    close_all()
    return json_response(200, merge(list(replies)))
