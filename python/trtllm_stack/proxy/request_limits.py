"""Cost bounds of one request, checked right after parsing and before any prompt work.

Each bound is a setting (proxy/settings.py) and each refusal is its own 400 that names the
limit, the value seen and the setting that raises it. What is measured is cheap and linear
in the body (already bounded by ``max_body_bytes``): string lengths, counts. Work a
request may still legitimately need (templating, tokenizing a long prompt) is the
long-prompt path's business; these limits only refuse what can never be served or costs
far more than it could be worth (an attack).
"""

from __future__ import annotations

from typing import Any

import orjson

from trtllm_stack.proxy.errors import InvalidRequest
from trtllm_stack.proxy.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    NamedToolChoice,
    _SamplingRequest,
)
from trtllm_stack.proxy.settings import ProxySettings
from trtllm_stack.text.chat_template import RANGE_STEPS, ChatTemplate, TemplateLimit
from trtllm_stack.text.special_tokens import Escaper


def _setting(name: str) -> str:
    return f"setting {name}: --{name.replace('_', '-')} or TRTLLM_STACK_{name.upper()}"


def _refuse(what: str, limit: int, name: str, param: str) -> InvalidRequest:
    return InvalidRequest(
        f"{what}; at most {limit} allowed ({_setting(name)})",
        param=param,
        code="limit_exceeded",
    )


def text_size(value: Any, *, keys: bool = True) -> int:
    """Characters of every string (dict keys too, with ``keys``) in a JSON-like value;
    numbers, booleans and null count 1 each. Iterative: nesting costs no recursion."""
    total = 0
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            total += len(v)
        elif isinstance(v, dict):
            for k, item in v.items():
                if keys:
                    total += len(k) if isinstance(k, str) else 1
                stack.append(item)
        elif isinstance(v, list | tuple):
            stack.extend(v)
        else:
            total += 1
    return total


def _check_common(body: _SamplingRequest, settings: ProxySettings) -> None:
    limit = settings.max_stop_chars
    for i, stop in enumerate(body.stop_list()):
        if len(stop) > limit:
            raise _refuse(
                f"stop[{i}] has {len(stop)} characters", limit, "max_stop_chars", f"stop[{i}]"
            )
    n = body.n or 1
    if n > settings.max_n:
        raise _refuse(f"n is {n}", settings.max_n, "max_n", "n")
    bias = body.logit_bias
    if bias is not None and len(bias) > settings.max_logit_bias:
        raise _refuse(
            f"logit_bias has {len(bias)} entries",
            settings.max_logit_bias,
            "max_logit_bias",
            "logit_bias",
        )


def _check_prompt_size(size: int, settings: ProxySettings, param: str) -> None:
    if size > settings.max_prompt_chars:
        raise _refuse(
            f"the prompt fields hold {size} characters in all",
            settings.max_prompt_chars,
            "max_prompt_chars",
            param,
        )


def check_chat(body: ChatCompletionRequest, settings: ProxySettings) -> None:
    """Refuse a chat request whose cost exceeds a configured bound (400)."""
    _check_common(body, settings)
    if len(body.messages) > settings.max_messages:
        raise _refuse(
            f"{len(body.messages)} messages", settings.max_messages, "max_messages", "messages"
        )
    tools = body.tools or []
    if len(tools) > settings.max_tools:
        raise _refuse(f"{len(tools)} tools", settings.max_tools, "max_tools", "tools")
    size = 0
    for i, tool in enumerate(tools):
        # As the template will see it: the JSON of the definition.
        chars = len(orjson.dumps(tool.model_dump(exclude_none=True)).decode())
        if chars > settings.max_tool_chars:
            raise _refuse(
                f"tools[{i}] is {chars} characters as JSON",
                settings.max_tool_chars,
                "max_tool_chars",
                f"tools[{i}]",
            )
        size += chars
    for msg in body.messages:
        # Field names are the schema's, not prompt text (arguments given as an object
        # are the client's: their keys count).
        size += text_size(msg.model_dump(exclude_none=True, exclude={"tool_calls"}), keys=False)
        for call in msg.tool_calls or ():
            size += len(call.id or "") + len(call.function.name)
            size += text_size(call.function.arguments)
    if isinstance(body.tool_choice, NamedToolChoice):
        size += len(body.tool_choice.function.name)
    if body.chat_template_kwargs:
        size += text_size(body.chat_template_kwargs)
    _check_prompt_size(size, settings, "messages")


def check_completion(body: CompletionRequest, settings: ProxySettings) -> None:
    """Refuse a completion request whose cost exceeds a configured bound (400)."""
    _check_common(body, settings)
    prompt = body.prompt
    # A token id costs about what a character does (one list entry); count it as one.
    size = text_size(prompt) + (len(body.suffix) if body.suffix else 0)
    _check_prompt_size(size, settings, "prompt")


def template_kwargs(
    given: dict[str, Any] | None, template: ChatTemplate, esc: Escaper
) -> dict[str, Any]:
    """The client's ``chat_template_kwargs`` as template variables: names that would
    change the template, its sandbox or its special-token variables are refused (400,
    all named); string values are client text, escaped like message content."""
    if not given:
        return {}
    refused = template.refused_kwargs(given)
    if refused:
        raise InvalidRequest(
            "chat_template_kwargs may not set "
            + ", ".join(repr(k) for k in refused)
            + ": the chat template, its sandbox and its special tokens are the server's",
            param="chat_template_kwargs",
        )
    return {k: esc.text(v) if isinstance(v, str) else esc.json_value(v) for k, v in given.items()}


def template_limit_error(exc: TemplateLimit) -> InvalidRequest:
    """The 400 for a render that went past a limit, naming the setting."""
    if exc.limit == "time":
        return InvalidRequest(f"{exc} ({_setting('template_timeout')})", code="limit_exceeded")
    if exc.limit == "output":
        return InvalidRequest(f"{exc} ({_setting('max_template_chars')})", code="limit_exceeded")
    return InvalidRequest(f"{exc} (fixed limit {RANGE_STEPS})", code="limit_exceeded")
