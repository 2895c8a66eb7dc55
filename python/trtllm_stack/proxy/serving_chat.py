"""``POST /v1/chat/completions``: validate -> chat template -> engine -> stream or aggregate."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trtllm_stack.proxy.errors import InvalidRequest
from trtllm_stack.proxy.guided import (
    ForcedTools,
    Guide,
    asks_for_guide,
    forced_tool_calls,
    tool_choice_guide,
)
from trtllm_stack.proxy.protocol import ChatCompletionRequest, ChatMessage, NamedToolChoice
from trtllm_stack.proxy.request_limits import template_kwargs, template_limit_error
from trtllm_stack.proxy.serving_base import (
    Collected,
    Plan,
    RequestRunner,
    ServingContext,
    chat_logprobs,
    new_request_id,
    usage,
)
from trtllm_stack.proxy.sse import ChunkTemplate, dumps
from trtllm_stack.text.chat_template import TemplateLimit
from trtllm_stack.text.pipeline import TextPipeline
from trtllm_stack.text.special_tokens import Escaper
from trtllm_stack.text.tool_calls import (
    ToolCallDelta,
    ToolCallStreaming,
    calls_from_deltas,
    new_call_id,
)
from trtllm_stack.triton.tensors import EngineChunk

_REQUIRED_TOOL_HINT = "You must call at least one of the provided functions in your reply."
_NAMED_TOOL_HINT = "You must call the function `{name}` in your reply."


@dataclass(slots=True)
class ChatPlan(Plan):
    """Everything decided before the engine is asked: prompt, parsing, output shape."""

    tool_names: list[str] | None  # None: no tool-call parsing
    thinking_enabled: bool
    think_in_prompt: bool
    reasoning: bool
    tool_call_streaming: ToolCallStreaming = "incremental"
    # tool_choice required/named: the output is guided JSON, read back as calls (guided.py).
    forced_tools: ForcedTools | None = None
    parallel_tool_calls: bool = True
    # A long conversation with the token cache on: tokenize the reply for the next turn.
    warm_reply: bool = False


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
                        "id": esc.text(call.id) if call.id is not None else None,
                        "type": "function",
                        "function": {
                            "name": esc.text(call.function.name),
                            "arguments": esc.json_value(args),
                        },
                    }
                )
            item["tool_calls"] = calls
        reasoning_text = msg.reasoning_content or msg.reasoning
        if msg.role == "assistant" and reasoning_text:
            item["reasoning_content"] = reasoning_text
        if msg.role == "tool" and msg.tool_call_id is not None:
            item["tool_call_id"] = esc.text(msg.tool_call_id)
        if msg.name is not None:
            item["name"] = esc.text(msg.name)
        out.append(item)
    return out


def _prompt_chars(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> int:
    """About how many characters the rendered prompt has (decides inline or thread)."""
    size = sum(len(m["content"]) + len(m.get("reasoning_content") or "") for m in messages)
    if tools:
        size += len(json.dumps(tools, ensure_ascii=False))
    return size


def _add_system_hint(messages: list[dict[str, Any]], hint: str) -> None:
    if messages and messages[0]["role"] == "system":
        messages[0]["content"] = f"{messages[0]['content']}\n\n{hint}".lstrip()
    else:
        messages.insert(0, {"role": "system", "content": hint})


def _check_unsupported(body: ChatCompletionRequest) -> None:
    if body.top_logprobs:
        raise InvalidRequest(
            "top_logprobs is not supported: the engine returns only the chosen token's"
            " log probability (use logprobs=true with top_logprobs=0)",
            param="top_logprobs",
        )


class ChatService(RequestRunner[ChatPlan]):
    endpoint = "chat"
    chunk_object = "chat.completion.chunk"

    def _render(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        kwargs: dict,
        esc: Escaper,
    ) -> tuple[str, Sequence[int]]:
        try:
            text = self.ctx.chat_template.render(
                messages, tools=tools, add_generation_prompt=True, **kwargs
            )
        except TemplateLimit as exc:
            raise template_limit_error(exc) from None
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
                # The name is client text like any other (it once forged a system turn).
                _add_system_hint(messages, _NAMED_TOOL_HINT.format(name=esc.text(name)))
                tool_guide, forced = tool_choice_guide(tool_defs, name, body.parallel_tool_calls)
            elif choice == "required":
                _add_system_hint(messages, _REQUIRED_TOOL_HINT)
                tool_guide, forced = tool_choice_guide(tool_defs, None, body.parallel_tool_calls)
        elif choice not in (None, "none", "auto"):
            raise InvalidRequest("tool_choice needs tools", param="tool_choice")

        kwargs = template_kwargs(body.chat_template_kwargs, ctx.chat_template, esc)
        # Under a guide the grammar holds from the first token (the backend has no reasoning
        # phase before it), so Qwen3 answers without thinking unless the client asks.
        thinking = kwargs.get("enable_thinking", forced is None and not asks_for_guide(body))
        thinking_enabled = thinking is not False
        kwargs["enable_thinking"] = thinking_enabled
        tools_arg = esc.json_value(tool_defs) if tool_names is not None else None
        prompt_chars = _prompt_chars(messages, tools_arg)
        text, prompt_ids = await ctx.prompt.run(
            prompt_chars, self._render, messages, tools_arg, kwargs, esc
        )

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
            continuous_usage=body.continuous_usage(),
            want_logprobs=want_logprobs,
            tool_call_streaming=ctx.settings.tool_call_streaming,
            forced_tools=forced,
            parallel_tool_calls=body.parallel_tool_calls is not False,
            warm_reply=ctx.prompt.worth_warming(prompt_chars),
        )

    # -- non-streaming ---------------------------------------------------------------

    def pipeline(self, plan: ChatPlan, *, stream: bool) -> TextPipeline:
        # Not streamed, nothing has been sent, so tool calls are validated whole (buffered):
        # a call that breaks is content, as in vLLM. For every valid call both modes give
        # the same name and arguments text; a stream in incremental mode cannot take back a
        # call whose name it sent, so only there a broken call stays a call.
        return TextPipeline(
            self.ctx.tokenizer,
            stops=plan.stops,
            reasoning=plan.reasoning,
            thinking_enabled=plan.thinking_enabled,
            think_in_prompt=plan.think_in_prompt,
            tool_names=plan.tool_names,
            tool_call_streaming=plan.tool_call_streaming if stream else "buffered",
        )

    def reply(self, plan: ChatPlan, got: Collected) -> tuple[dict[str, Any], str]:
        ctx = self.ctx
        text = got.text
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if got.reasoning:
            for key in _REASONING_KEYS[ctx.settings.reasoning_field]:
                message[key] = got.reasoning
        finish = got.finish_reason
        if plan.forced_tools is not None:
            forced = forced_tool_calls(text, plan.forced_tools)
            if forced:
                message["content"] = None
                message["tool_calls"] = [_call_json(n, a) for n, a in forced]
                finish = "tool_calls" if finish == "stop" else finish
        elif not got.tool_deltas:
            if plan.warm_reply:
                warm_reply(ctx, text)
        else:
            calls = calls_from_deltas(got.tool_deltas)
            if not plan.parallel_tool_calls:
                calls = calls[:1]  # parallel_tool_calls false: the first call, as vLLM does
            message["content"] = text or None
            message["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in calls
            ]
            finish = _tool_finish(got.pipeline, finish)
        logprobs = (
            chat_logprobs(ctx.tokenizer, got.token_ids, got.log_probs)
            if plan.want_logprobs
            else None
        )
        result = {
            "id": plan.request_id,
            "object": "chat.completion",
            "created": plan.created,
            "model": plan.model,
            "choices": [
                {"index": 0, "message": message, "logprobs": logprobs, "finish_reason": finish}
            ],
            "usage": usage(plan.prompt_tokens, got.completion_tokens),
        }
        return result, finish

    # -- streaming -------------------------------------------------------------------

    def stream_output(
        self, plan: ChatPlan, head: dict[str, Any], out: list[bytes], index: int
    ) -> DeltaOutput:
        tpl = ChunkTemplate(head, "delta", index)
        out.append(tpl.chunk(b'{"role":"assistant","content":""}'))
        return DeltaOutput(self.ctx, plan, tpl, self.pipeline(plan, stream=True))


class DeltaOutput:
    """One choice's chat stream chunks: ``delta`` with reasoning, content and tool calls."""

    __slots__ = ("_ctx", "_kept", "_pipeline", "_plan", "_rkeys", "_shaper", "_tpl")

    def __init__(
        self, ctx: ServingContext, plan: ChatPlan, tpl: ChunkTemplate, pipeline: TextPipeline
    ) -> None:
        self._ctx = ctx
        self._plan = plan
        self._tpl = tpl
        self._rkeys = _REASONING_KEYS[ctx.settings.reasoning_field]
        self._pipeline = pipeline
        self._kept: list[str] | None = [] if plan.warm_reply else None  # content, to warm
        # tool_choice required/named, parallel_tool_calls false (see _CallShaper).
        self._shaper = (
            _CallShaper(plan) if plan.forced_tools or not plan.parallel_tool_calls else None
        )

    @property
    def stopped(self) -> bool:
        return self._pipeline.stopped

    def push(self, ids: list[int], batch: list[EngineChunk], out: list[bytes]) -> None:
        r, c, deltas = self._pipeline.push(ids)
        if self._shaper is not None:
            c, deltas = self._shaper.push(c, deltas)
        if c and self._kept is not None:
            self._kept.append(c)
        if self._plan.want_logprobs:
            lps = [lp for ch in batch for lp in ch.log_probs or ()]
            lp_json = dumps(chat_logprobs(self._ctx.tokenizer, ids, lps))
            out.append(self._tpl.chunk(_delta_body(r, c, deltas, self._rkeys), lp_json))
        elif r or c or deltas:
            out.append(self._tpl.chunk(_delta_body(r, c, deltas, self._rkeys)))

    def finish(self, out: list[bytes], finish: str) -> str:
        pipeline = self._pipeline
        shaper = self._shaper
        r, c, deltas = pipeline.finish()
        if shaper is not None:
            c, deltas = shaper.push(c, deltas)
            c, deltas = shaper.finish(c, deltas)
        if r or c or deltas:
            out.append(self._tpl.chunk(_delta_body(r, c, deltas, self._rkeys)))
        if shaper is not None and shaper.called:
            finish = "tool_calls" if finish == "stop" else finish
        elif pipeline.called_tools:
            finish = _tool_finish(pipeline, finish)
        elif self._kept is not None:
            self._kept.append(c)
            warm_reply(self._ctx, "".join(self._kept))
        out.append(self._tpl.final(b"{}", finish))
        return finish


def warm_reply(ctx: ServingContext, content: str) -> None:
    """Tokenize ``content`` as the next turn's prompt will hold it, in the prompt thread
    while the user reads it: the client sends it back as an earlier assistant message, and
    then its block is a token-cache hit instead of a miss (about 1 ms per 300 tokens).
    The template is rendered as for that turn (the reply before a later user message), so
    the cached block is exactly the one the next prompt has."""
    if not content:
        return
    messages = [
        {"role": "user", "content": ""},
        {"role": "assistant", "content": content},
        {"role": "user", "content": ""},
    ]

    def job() -> None:
        ctx.prompt.encode(ctx.chat_template.render(messages, add_generation_prompt=True))

    ctx.prompt.warm(job)


def _tool_finish(pipeline: TextPipeline, finish: str) -> str:
    # A call cut off by max_tokens cannot be taken back once streamed; "length" tells the
    # client its arguments are incomplete (as OpenAI does). Same rule without a stream.
    truncated = pipeline.tool_call_truncated and not pipeline.stopped
    return "length" if truncated and finish == "length" else "tool_calls"


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


_REASONING_KEYS: dict[str, tuple[str, ...]] = {
    "both": ("reasoning_content", "reasoning"),
    "reasoning": ("reasoning",),
    "reasoning_content": ("reasoning_content",),
}


def _delta_body(
    reasoning: str, content: str, deltas: list[ToolCallDelta], rkeys: tuple[str, ...]
) -> bytes:
    if not deltas:
        if reasoning:
            value = dumps(reasoning)
            body = b",".join(b'"' + k.encode() + b'":' + value for k in rkeys)
            if content:
                return b"{" + body + b',"content":' + dumps(content) + b"}"
            return b"{" + body + b"}"
        return b'{"content":' + dumps(content) + b"}"
    delta: dict[str, Any] = {}
    if reasoning:
        for k in rkeys:
            delta[k] = reasoning
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
