"""``POST /v1/completions``: raw prompt (text or token ids), no chat template."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from trtllm_stack.proxy.engine import ChunkStream
from trtllm_stack.proxy.errors import InvalidRequest
from trtllm_stack.proxy.protocol import CompletionRequest
from trtllm_stack.proxy.serving_base import (
    Lease,
    ServingContext,
    collect,
    completion_logprobs,
    count_finished,
    new_request_id,
    serve_plan,
    stamp_usage,
    stream_failed,
    stream_finished,
    usage,
)
from trtllm_stack.proxy.sse import ChunkTemplate, dumps
from trtllm_stack.text.pipeline import TextPipeline
from trtllm_stack.triton.tensors import EngineChunk, EngineRequest


@dataclass(slots=True)
class CompletionPlan:
    request_id: str
    created: int
    model: str
    engine_req: EngineRequest
    prompt_tokens: int
    stops: list[str]
    include_usage: bool
    continuous_usage: bool  # stream_options.continuous_usage_stats (vLLM)
    want_logprobs: bool


def _text_chars(prompt: Any) -> int:
    """Characters to tokenize (token-id prompts: none)."""
    if isinstance(prompt, str):
        return len(prompt)
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        return len(prompt[0])
    return 0


class CompletionService:
    def __init__(self, ctx: ServingContext) -> None:
        self.ctx = ctx

    def _prompt_ids(self, prompt: Any) -> Sequence[int]:
        if isinstance(prompt, str):
            return self.ctx.encode(prompt)
        if isinstance(prompt, list) and len(prompt) > 1 and not isinstance(prompt[0], int):
            raise InvalidRequest(
                "batched prompts are not supported: send one prompt per request", param="prompt"
            )
        if isinstance(prompt, list) and len(prompt) == 1 and not isinstance(prompt[0], int):
            return self._prompt_ids(prompt[0])
        ids = list(prompt)
        vocab = len(self.ctx.tokenizer)
        for i in ids:
            if not 0 <= i < vocab:
                raise InvalidRequest(f"token id {i} is outside the vocabulary", param="prompt")
        return ids

    async def plan(self, body: CompletionRequest) -> CompletionPlan:
        ctx = self.ctx
        ctx.check_model(body.model)
        if body.n not in (None, 1):
            raise InvalidRequest("only n=1 is supported", param="n")
        if body.best_of not in (None, 1):
            raise InvalidRequest(
                "best_of is not supported: TensorRT-LLM's sampling has no best-of selection"
                " (tensorrt_llm/sampling_params.py, _get_sampling_config: best_of has 'no"
                " corresponding param' when sampling)",
                param="best_of",
            )
        if body.echo:
            raise InvalidRequest("echo is not supported", param="echo")
        if body.suffix:
            raise InvalidRequest("suffix is not supported", param="suffix")
        if body.logprobs:
            raise InvalidRequest(
                "only logprobs=0 (the chosen tokens' log probabilities) is supported; the"
                " engine does not return alternatives",
                param="logprobs",
            )
        prompt_ids = await ctx.prompt.run(_text_chars(body.prompt), self._prompt_ids, body.prompt)
        want_logprobs = body.logprobs is not None
        engine_req = await ctx.engine_request(
            body, prompt_ids, max_tokens=body.max_tokens, want_log_probs=want_logprobs, chat=False
        )
        request_id, created = new_request_id("cmpl")
        return CompletionPlan(
            request_id=request_id,
            created=created,
            model=body.model,
            engine_req=engine_req,
            prompt_tokens=len(prompt_ids),
            stops=body.stop_list(),
            include_usage=bool(
                body.stream and body.stream_options and body.stream_options.include_usage
            ),
            continuous_usage=body.continuous_usage(),
            want_logprobs=want_logprobs,
        )

    async def handle(self, request: Request, body: CompletionRequest) -> Response:
        ctx = self.ctx
        ctx.metrics.requests.labels("completions").inc()
        plan = await self.plan(body)
        ctx.metrics.prompt_tokens.inc(plan.prompt_tokens)
        return await serve_plan(
            ctx,
            request,
            plan,
            stream=bool(body.stream),
            aggregate=lambda pump, lease: self._aggregate(plan, pump, lease),
            events=lambda pump, first, lease: self._stream(plan, pump, first, lease),
        )

    async def _aggregate(
        self, plan: CompletionPlan, pump: ChunkStream, lease: Lease
    ) -> dict[str, Any]:
        ctx = self.ctx
        got = await collect(ctx, plan.engine_req, pump, lease, plan.stops, plan.want_logprobs)
        count_finished(ctx, got.completion_tokens, got.finish_reason)
        logprobs = (
            completion_logprobs(ctx.tokenizer, got.token_ids, got.log_probs, 0)
            if plan.want_logprobs
            else None
        )
        return {
            "id": plan.request_id,
            "object": "text_completion",
            "created": plan.created,
            "model": plan.model,
            "choices": [
                {
                    "index": 0,
                    "text": got.text,
                    "logprobs": logprobs,
                    "finish_reason": got.finish_reason,
                }
            ],
            "usage": usage(plan.prompt_tokens, got.completion_tokens),
        }

    async def _stream(
        self,
        plan: CompletionPlan,
        pump: ChunkStream,
        first: list[EngineChunk] | None,
        lease: Lease,
    ) -> AsyncIterator[bytes]:
        ctx = self.ctx
        metrics = ctx.metrics
        head: dict[str, Any] = {
            "id": plan.request_id,
            "object": "text_completion",
            "created": plan.created,
            "model": plan.model,
        }
        tpl = ChunkTemplate(head, "text")
        pipeline = TextPipeline(ctx.tokenizer, stops=plan.stops)
        out: list[bytes] = []
        n_out = 0
        last = -1
        last_at = 0.0
        offset = 0
        batch = first
        try:
            try:
                while batch is not None:
                    ids = (
                        batch[0].token_ids
                        if len(batch) == 1
                        else [t for c in batch for t in c.token_ids]
                    )
                    if ids:
                        now = time.perf_counter()
                        if n_out == 0:
                            metrics.ttft.observe(now - lease.start)
                        else:
                            metrics.inter_token.observe((now - last_at) / len(ids))
                        last_at = now
                        n_out += len(ids)
                        last = ids[-1]
                        text = pipeline.push(ids)[1]
                        if plan.want_logprobs:
                            lps = [lp for ch in batch for lp in ch.log_probs or ()]
                            lp = completion_logprobs(ctx.tokenizer, ids, lps, offset)
                            out.append(tpl.chunk(dumps(text), dumps(lp)))
                        elif text:
                            out.append(tpl.chunk(dumps(text)))
                        offset += len(text)
                    if batch[-1].final or pipeline.stopped:
                        break
                    if out:
                        if plan.continuous_usage:
                            stamp_usage(out, plan.prompt_tokens, n_out)
                        yield b"".join(out)
                        out.clear()
                    batch = await pump.next_batch()
            finally:
                pump.close()
        except Exception as exc:
            yield stream_failed(ctx, exc, out, lease)
            return
        text = pipeline.finish()[1]
        if text:
            out.append(tpl.chunk(dumps(text)))
        finish = "stop" if pipeline.stopped else ctx.finish_reason(plan.engine_req, n_out, last)
        out.append(tpl.final(b'""', finish))
        if plan.continuous_usage:
            stamp_usage(out, plan.prompt_tokens, n_out)
        yield stream_finished(
            ctx,
            out,
            head,
            prompt_tokens=plan.prompt_tokens,
            completion_tokens=n_out,
            include_usage=plan.include_usage,
            finish=finish,
            lease=lease,
        )
