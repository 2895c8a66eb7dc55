"""``POST /v1/completions``: raw prompt (text or token ids), no chat template."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trtllm_stack.proxy.errors import InvalidRequest
from trtllm_stack.proxy.protocol import CompletionRequest
from trtllm_stack.proxy.serving_base import (
    Collected,
    Plan,
    RequestRunner,
    completion_logprobs,
    new_request_id,
    usage,
)
from trtllm_stack.proxy.sse import ChunkTemplate, dumps
from trtllm_stack.text.pipeline import TextPipeline
from trtllm_stack.triton.tensors import EngineChunk


def _text_chars(prompt: Any) -> int:
    """Characters to tokenize (token-id prompts: none)."""
    if isinstance(prompt, str):
        return len(prompt)
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        return len(prompt[0])
    return 0


class CompletionService(RequestRunner[Plan]):
    endpoint = "completions"
    chunk_object = "text_completion"

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

    async def plan(self, body: CompletionRequest) -> Plan:
        ctx = self.ctx
        ctx.check_model(body.model)
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
        return Plan(
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

    def reply(self, plan: Plan, got: Collected) -> tuple[dict[str, Any], str]:
        logprobs = (
            completion_logprobs(self.ctx.tokenizer, got.token_ids, got.log_probs, 0)
            if plan.want_logprobs
            else None
        )
        result = {
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
        return result, got.finish_reason

    def stream_output(
        self, plan: Plan, head: dict[str, Any], out: list[bytes], index: int
    ) -> TextOutput:
        return TextOutput(
            self.ctx.tokenizer,
            plan,
            ChunkTemplate(head, "text", index),
            self.pipeline(plan, stream=True),
        )


class TextOutput:
    """One choice's completion stream chunks: ``text`` (and token logprobs when asked)."""

    __slots__ = ("_offset", "_pipeline", "_tokenizer", "_tpl", "_want_logprobs")

    def __init__(
        self, tokenizer: Any, plan: Plan, tpl: ChunkTemplate, pipeline: TextPipeline
    ) -> None:
        self._tokenizer = tokenizer
        self._pipeline = pipeline
        self._tpl = tpl
        self._want_logprobs = plan.want_logprobs
        self._offset = 0

    @property
    def stopped(self) -> bool:
        return self._pipeline.stopped

    def push(self, ids: list[int], batch: list[EngineChunk], out: list[bytes]) -> None:
        text = self._pipeline.push(ids)[1]
        if self._want_logprobs:
            lps = [lp for ch in batch for lp in ch.log_probs or ()]
            lp = completion_logprobs(self._tokenizer, ids, lps, self._offset)
            out.append(self._tpl.chunk(dumps(text), dumps(lp)))
        elif text:
            out.append(self._tpl.chunk(dumps(text)))
        self._offset += len(text)

    def finish(self, out: list[bytes], finish: str) -> str:
        text = self._pipeline.finish()[1]
        if text:
            out.append(self._tpl.chunk(dumps(text)))
        out.append(self._tpl.final(b'""', finish))
        return finish
