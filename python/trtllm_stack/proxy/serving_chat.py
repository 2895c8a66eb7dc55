"""``POST /v1/chat/completions``: validate -> chat template -> engine -> stream or aggregate."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from trtllm_stack.proxy.engine import ChunkStream
from trtllm_stack.proxy.errors import InvalidRequest
from trtllm_stack.proxy.guided import (
    ForcedTools,
    Guide,
    asks_for_guide,
    forced_tool_calls,
    tool_choice_guide,
)
from trtllm_stack.proxy.protocol import ChatCompletionRequest, ChatMessage, NamedToolChoice
from trtllm_stack.proxy.serving_base import (
    Lease,
    ServingContext,
    chat_logprobs,
    collect,
    count_finished,
    new_request_id,
    serve_plan,
    stream_failed,
    stream_finished,
    usage,
)
from trtllm_stack.proxy.sse import ChunkTemplate, dumps
from trtllm_stack.text.pipeline import TextPipeline
from trtllm_stack.text.reasoning import split_reasoning
from trtllm_stack.text.special_tokens import Escaper
from trtllm_stack.text.tool_calls import (
    ToolCallDelta,
    ToolCallStreaming,
    new_call_id,
    parse_tool_calls,
)
from trtllm_stack.triton.tensors import EngineChunk, EngineRequest

# Prompts longer than this are templated and tokenized in a worker thread so that one big
# request does not stall every stream's next token.
_INLINE_PROMPT_CHARS = 16_384
_RESERVED_TEMPLATE_KEYS = frozenset(
    {"messages", "tools", "add_generation_prompt", "tokenize", "conversation", "documents"}
)
_REQUIRED_TOOL_HINT = "You must call at least one of the provided functions in your reply."
_NAMED_TOOL_HINT = "You must call the function `{name}` in your reply."


@dataclass(slots=True)
class ChatPlan:
    """Everything decided before the engine is asked: prompt, parsing, output shape."""

    request_id: str
    created: int
    model: str
    engine_req: EngineRequest
    prompt_tokens: int
    stops: list[str]
    tool_names: list[str] | None  # None: no tool-call parsing
    thinking_enabled: bool
    think_in_prompt: bool
    reasoning: bool
    include_usage: bool
    want_logprobs: bool
    tool_call_streaming: ToolCallStreaming = "incremental"
    # tool_choice required/named: the output is guided JSON, read back as calls (guided.py).
    forced_tools: ForcedTools | None = None
    parallel_tool_calls: bool = True


def _message_text(msg: ChatMessage, index: int) -> str | None:
    content = msg.content
    if content is None or isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        if part.type != "text" or part.text is None:
            raise InvalidRequest(
                f"content part type '{part.type}' is not supported: this model reads text only",
                param=f"messages[{index}].content[{j}]",
            )
        texts.append(part.text)
    return "".join(texts)


def _template_messages(messages: list[ChatMessage], esc: Escaper) -> list[dict[str, Any]]:
    """Messages as the template wants them, with client data escaped (special_tokens)."""
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        role = "system" if msg.role == "developer" else msg.role
        text = _message_text(msg, i) or ""
        # Assistant text is the model's own output: rendered as the template renders it.
        item: dict[str, Any] = {
            "role": role,
            "content": text if role == "assistant" else esc.text(text),
        }
        if msg.role == "assistant" and msg.tool_calls:
            calls = []
            for j, call in enumerate(msg.tool_calls):
                args = call.function.arguments
                if isinstance(args, str):
                    try:
                        args = json.loads(args) if args.strip() else {}
                    except ValueError:
                        raise InvalidRequest(
                            "tool call arguments must be a JSON object string",
                            param=f"messages[{i}].tool_calls[{j}].function.arguments",
                        ) from None
                # The Qwen3 template serialises a dict itself; a string would be quoted.
                calls.append(
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {
                            "name": esc.text(call.function.name),
                            "arguments": esc.json_value(args),
                        },
                    }
                )
            item["tool_calls"] = calls
        if msg.role == "assistant" and msg.reasoning_content:
            item["reasoning_content"] = msg.reasoning_content
        if msg.role == "tool" and msg.tool_call_id is not None:
            item["tool_call_id"] = msg.tool_call_id
        if msg.name is not None:
            item["name"] = msg.name
        out.append(item)
    return out


def _add_system_hint(messages: list[dict[str, Any]], hint: str) -> None:
    if messages and messages[0]["role"] == "system":
        messages[0]["content"] = f"{messages[0]['content']}\n\n{hint}".lstrip()
    else:
        messages.insert(0, {"role": "system", "content": hint})


def _check_unsupported(body: ChatCompletionRequest) -> None:
    if body.n not in (None, 1):
        raise InvalidRequest("only n=1 is supported", param="n")
    if body.top_logprobs:
        raise InvalidRequest(
            "top_logprobs is not supported: the engine returns only the chosen token's"
            " log probability (use logprobs=true with top_logprobs=0)",
            param="top_logprobs",
        )


class ChatService:
    def __init__(self, ctx: ServingContext) -> None:
        self.ctx = ctx

    def _render(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        kwargs: dict,
        esc: Escaper,
    ) -> tuple[str, list[int]]:
        tok = self.ctx.tokenizer
        try:
            text = tok.apply_chat_template(
                messages, tools=tools, add_generation_prompt=True, tokenize=False, **kwargs
            )
        except Exception as exc:  # jinja TemplateError, TypeError from odd content
            raise InvalidRequest(f"the chat template rejected the messages: {exc}") from None
        try:
            return text, esc.encode(text, self.ctx.encode)
        except (TypeError, ValueError, UnicodeError):
            raise InvalidRequest(
                "the text is not valid Unicode (it contains a lone surrogate)"
            ) from None

    async def plan(self, body: ChatCompletionRequest) -> ChatPlan:
        ctx = self.ctx
        ctx.check_model(body.model)
        _check_unsupported(body)
        if len(body.messages) > ctx.settings.max_messages:
            raise InvalidRequest(
                f"{len(body.messages)} messages; at most {ctx.settings.max_messages} are accepted",
                param="messages",
            )
        esc = Escaper(ctx.literal)
        messages = _template_messages(body.messages, esc)
        tool_defs = [t.model_dump(exclude_none=True) for t in body.tools or []]
        names = [t["function"]["name"] for t in tool_defs]
        choice = body.tool_choice
        tool_names: list[str] | None = None
        tool_guide: Guide | None = None
        forced: ForcedTools | None = None
        if tool_defs and choice != "none":
            tool_names = names
            if isinstance(choice, NamedToolChoice):
                name = choice.function.name
                if name not in names:
                    raise InvalidRequest(
                        f"tool_choice names '{name}', which is not in tools", param="tool_choice"
                    )
                tool_defs = [t for t in tool_defs if t["function"]["name"] == name]
                tool_names = [name]
                _add_system_hint(messages, _NAMED_TOOL_HINT.format(name=name))
                tool_guide, forced = tool_choice_guide(tool_defs, name, body.parallel_tool_calls)
            elif choice == "required":
                _add_system_hint(messages, _REQUIRED_TOOL_HINT)
                tool_guide, forced = tool_choice_guide(tool_defs, None, body.parallel_tool_calls)
        elif choice not in (None, "none", "auto"):
            raise InvalidRequest("tool_choice needs tools", param="tool_choice")

        kwargs = {
            k: v
            for k, v in (body.chat_template_kwargs or {}).items()
            if k not in _RESERVED_TEMPLATE_KEYS
        }
        # Under a guide the grammar holds from the first token (the backend has no reasoning
        # phase before it), so Qwen3 answers without thinking unless the client asks.
        thinking = kwargs.get("enable_thinking", forced is None and not asks_for_guide(body))
        thinking_enabled = thinking is not False
        kwargs["enable_thinking"] = thinking_enabled
        tools_arg = esc.json_value(tool_defs) if tool_names is not None else None
        size = sum(len(m["content"]) for m in messages)
        if size > _INLINE_PROMPT_CHARS:
            text, prompt_ids = await asyncio.to_thread(
                self._render, messages, tools_arg, kwargs, esc
            )
        else:
            text, prompt_ids = self._render(messages, tools_arg, kwargs, esc)

        want_logprobs = bool(body.logprobs)
        max_tokens = body.max_completion_tokens or body.max_tokens
        engine_req = await ctx.engine_request(
            body,
            prompt_ids,
            max_tokens=max_tokens,
            want_log_probs=want_logprobs,
            chat=True,
            tool_guide=tool_guide,
        )
        request_id, created = new_request_id("chatcmpl")
        return ChatPlan(
            request_id=request_id,
            created=created,
            model=body.model,
            engine_req=engine_req,
            prompt_tokens=len(prompt_ids),
            stops=body.stop_list(),
            tool_names=tool_names if forced is None else None,
            thinking_enabled=thinking_enabled,
            think_in_prompt=text.rstrip().endswith("<think>"),
            reasoning=ctx.settings.reasoning_parser,
            include_usage=bool(
                body.stream and body.stream_options and body.stream_options.include_usage
            ),
            want_logprobs=want_logprobs,
            tool_call_streaming=ctx.settings.tool_call_streaming,
            forced_tools=forced,
            parallel_tool_calls=body.parallel_tool_calls is not False,
        )

    async def handle(self, request: Request, body: ChatCompletionRequest) -> Response:
        ctx = self.ctx
        ctx.metrics.requests.labels("chat").inc()
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

    # -- non-streaming ---------------------------------------------------------------

    async def _aggregate(self, plan: ChatPlan, pump: ChunkStream, lease: Lease) -> dict[str, Any]:
        ctx = self.ctx
        got = await collect(ctx, plan.engine_req, pump, lease, plan.stops, plan.want_logprobs)
        text = got.text
        reasoning: str | None = None
        if plan.reasoning:
            reasoning, text = split_reasoning(
                text, thinking_enabled=plan.thinking_enabled, think_in_prompt=plan.think_in_prompt
            )
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if reasoning:
            message["reasoning_content"] = reasoning
        finish = got.finish_reason
        if plan.forced_tools is not None:
            forced = forced_tool_calls(text, plan.forced_tools)
            if forced:
                message["content"] = None
                message["tool_calls"] = [_call_json(n, a) for n, a in forced]
                finish = "tool_calls" if finish == "stop" else finish
        elif plan.tool_names is not None:
            content, calls = parse_tool_calls(text, plan.tool_names)
            if calls and not plan.parallel_tool_calls:
                calls = calls[:1]  # parallel_tool_calls false: the first call, as vLLM does
            if calls:
                message["content"] = content or None
                message["tool_calls"] = [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": c.arguments},
                    }
                    for c in calls
                ]
                finish = "tool_calls"
        count_finished(ctx, got.completion_tokens, finish)
        logprobs = (
            chat_logprobs(ctx.tokenizer, got.token_ids, got.log_probs)
            if plan.want_logprobs
            else None
        )
        return {
            "id": plan.request_id,
            "object": "chat.completion",
            "created": plan.created,
            "model": plan.model,
            "choices": [
                {"index": 0, "message": message, "logprobs": logprobs, "finish_reason": finish}
            ],
            "usage": usage(plan.prompt_tokens, got.completion_tokens),
        }

    # -- streaming -------------------------------------------------------------------

    async def _stream(
        self,
        plan: ChatPlan,
        pump: ChunkStream,
        first: list[EngineChunk] | None,
        lease: Lease,
    ) -> AsyncIterator[bytes]:
        ctx = self.ctx
        metrics = ctx.metrics
        head: dict[str, Any] = {
            "id": plan.request_id,
            "object": "chat.completion.chunk",
            "created": plan.created,
            "model": plan.model,
        }
        tpl = ChunkTemplate(head, "delta")
        pipeline = TextPipeline(
            ctx.tokenizer,
            stops=plan.stops,
            reasoning=plan.reasoning,
            thinking_enabled=plan.thinking_enabled,
            think_in_prompt=plan.think_in_prompt,
            tool_names=plan.tool_names,
            tool_call_streaming=plan.tool_call_streaming,
        )
        want_lp = plan.want_logprobs
        shaper = _CallShaper(plan) if plan.forced_tools or not plan.parallel_tool_calls else None
        out: list[bytes] = [tpl.chunk(b'{"role":"assistant","content":""}')]
        n_out = 0
        last = -1
        last_at = 0.0
        batch = first
        try:
            try:
                while batch is not None:
                    if len(batch) == 1:
                        ids = batch[0].token_ids
                    else:
                        ids = [t for c in batch for t in c.token_ids]
                    final = batch[-1].final
                    if ids:
                        now = time.perf_counter()
                        if n_out == 0:
                            metrics.ttft.observe(now - lease.start)
                        else:
                            metrics.inter_token.observe((now - last_at) / len(ids))
                        last_at = now
                        n_out += len(ids)
                        last = ids[-1]
                        r, c, deltas = pipeline.push(ids)
                        if shaper is not None:
                            c, deltas = shaper.push(c, deltas)
                        if want_lp:
                            lps = [lp for ch in batch for lp in ch.log_probs or ()]
                            lp_json = dumps(chat_logprobs(ctx.tokenizer, ids, lps))
                            out.append(tpl.chunk(_delta_body(r, c, deltas), lp_json))
                        elif r or c or deltas:
                            out.append(tpl.chunk(_delta_body(r, c, deltas)))
                    if final or pipeline.stopped:
                        break
                    if out:
                        yield b"".join(out)
                        out.clear()
                    batch = await pump.next_batch()
            finally:
                pump.close()
        except Exception as exc:
            yield stream_failed(ctx, exc, out, lease)
            return
        r, c, deltas = pipeline.finish()
        if shaper is not None:
            c, deltas = shaper.push(c, deltas)
            c, deltas = shaper.finish(c, deltas)
        if r or c or deltas:
            out.append(tpl.chunk(_delta_body(r, c, deltas)))
        if shaper is not None and shaper.called:
            finish = ctx.finish_reason(plan.engine_req, n_out, last)
            finish = "tool_calls" if finish == "stop" else finish
        elif pipeline.called_tools:
            finish = "tool_calls"
            # A call already streamed and then cut off by max_tokens cannot be taken back;
            # "length" tells the client its arguments are incomplete (as OpenAI does).
            if (
                pipeline.tool_call_truncated
                and not pipeline.stopped
                and ctx.finish_reason(plan.engine_req, n_out, last) == "length"
            ):
                finish = "length"
        elif pipeline.stopped:
            finish = "stop"
        else:
            finish = ctx.finish_reason(plan.engine_req, n_out, last)
        out.append(tpl.final(b"{}", finish))
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


def _call_json(name: str, arguments: str) -> dict[str, Any]:
    return {
        "id": new_call_id(),
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


class _CallShaper:
    """Stream side of tool_choice required/named (guided JSON held back, sent as calls at
    the end: it is not a <tool_call> block the incremental parser could follow) and of
    parallel_tool_calls false (deltas of calls after the first dropped)."""

    __slots__ = ("_buf", "_forced", "_parallel", "called")

    def __init__(self, plan: ChatPlan) -> None:
        self._forced = plan.forced_tools
        self._parallel = plan.parallel_tool_calls
        self._buf: list[str] = []
        self.called = False

    def push(self, content: str, deltas: list[ToolCallDelta]) -> tuple[str, list[ToolCallDelta]]:
        if self._forced is not None:
            self._buf.append(content)
            content = ""
        if not self._parallel and deltas:
            deltas = [d for d in deltas if d.index == 0]
        return content, deltas

    def finish(self, content: str, deltas: list[ToolCallDelta]) -> tuple[str, list[ToolCallDelta]]:
        if self._forced is None:
            return content, deltas
        text = "".join(self._buf)
        calls = forced_tool_calls(text, self._forced)
        if not calls:
            return text, deltas  # cut off before the document closed: the text as it is
        self.called = True
        return "", [ToolCallDelta(i, new_call_id(), n, a) for i, (n, a) in enumerate(calls)]


def _delta_body(reasoning: str, content: str, deltas: list[ToolCallDelta]) -> bytes:
    if not deltas:
        if reasoning and content:
            return (
                b'{"reasoning_content":' + dumps(reasoning) + b',"content":' + dumps(content) + b"}"
            )
        if reasoning:
            return b'{"reasoning_content":' + dumps(reasoning) + b"}"
        return b'{"content":' + dumps(content) + b"}"
    delta: dict[str, Any] = {}
    if reasoning:
        delta["reasoning_content"] = reasoning
    if content:
        delta["content"] = content
    # One entry per call index: a name delta and its arguments that arrived together
    # become one entry, which is what clients reading tool_calls[0] expect.
    calls: list[dict[str, Any]] = []
    for d in deltas:
        if calls and calls[-1]["index"] == d.index:
            fn = calls[-1]["function"]
            if d.arguments:
                fn["arguments"] = fn.get("arguments", "") + d.arguments
            continue
        entry: dict[str, Any] = {"index": d.index}
        fn = {}
        if d.id is not None:
            entry["id"] = d.id
            entry["type"] = "function"
        if d.name is not None:
            fn["name"] = d.name
            fn["arguments"] = d.arguments or ""
        elif d.arguments is not None:
            fn["arguments"] = d.arguments
        entry["function"] = fn
        calls.append(entry)
    delta["tool_calls"] = calls
    return dumps(delta)
