"""The chat template, rendered by the server in Jinja's immutable sandbox with limits.

The template is the server's (the tokenizer's ``chat_template``): clients cannot replace
it, and ``chat_template_kwargs`` may not set any name that changes the template, its
sandbox or its special-token variables (:meth:`ChatTemplate.refused_kwargs`). Rendering
is what transformers' ``apply_chat_template`` does (same environment options, filters and
globals: transformers/utils/chat_template_utils.py, ``_cached_compile_jinja_template`` and
``render_jinja_template``; special tokens as variables with kwargs on top:
tokenization_utils_base.py ``apply_chat_template``), plus limits checked while it runs:

- output: characters produced, and the size of every string, list or repetition an
  operator (``*``, ``**``, ``+``), filter or method call would build, before building it;
- iterations: ``range()`` steps across one render (the sandbox caps one range only);
- time: a deadline checked at every output chunk, operator, call, filter, attribute or
  item access and range step. Raising there really stops the render (measured in
  docs/reliability.md). A loop that does none of these (an empty body) is not
  interrupted: no such loop runs over client data in a server's template.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from functools import update_wrapper
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

# Names apply_chat_template / render_jinja_template take themselves (transformers 5.x):
# as template kwargs they would replace the template, the conversation or the output.
_CALL_ARGUMENTS = frozenset(
    {
        "messages",
        "conversation",
        "tools",
        "documents",
        "chat_template",
        "add_generation_prompt",
        "continue_final_message",
        "tokenize",
        "padding",
        "truncation",
        "max_length",
        "return_tensors",
        "return_dict",
        "return_assistant_tokens_mask",
        "tokenizer_kwargs",
        "processor_kwargs",
    }
)
RANGE_STEPS = 100_000  # range() steps per render (all ranges together)


class TemplateLimit(Exception):
    """A render went past one of its limits; ``limit`` names which."""

    def __init__(self, message: str, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


@dataclass(slots=True)
class _Budget:
    deadline: float
    seconds: float
    chars: int
    max_chars: int
    steps: int

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise TemplateLimit(
                f"rendering the chat template took more than {self.seconds} s", "time"
            )

    def size(self, n: int) -> None:
        if n > self.max_chars:
            raise TemplateLimit(
                f"the chat template would build {n} characters; at most {self.max_chars}",
                "output",
            )


_budget: ContextVar[_Budget | None] = ContextVar("chat_template_budget", default=None)


def _current() -> _Budget:
    b = _budget.get()
    if b is None:  # used outside ChatTemplate.render: no limits were asked for
        return _Budget(math.inf, math.inf, 0, 1 << 62, 1 << 62)
    return b


def _size_of(value: Any) -> int:
    return len(value) if isinstance(value, str | list | tuple | dict) else 0


def _check_args(b: _Budget, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    # An int argument is a width or count (ljust, center, indent, format...): bound it
    # before the call allocates it.
    for v in (*args, *kwargs.values()):
        if isinstance(v, int) and not isinstance(v, bool) and v > b.max_chars:
            b.size(v)


def _guard_filter(fn: Callable[..., Any]) -> Callable[..., Any]:
    def guarded(*args: Any, **kwargs: Any) -> Any:
        b = _current()
        b.tick()
        _check_args(b, args, kwargs)
        out = fn(*args, **kwargs)
        b.size(_size_of(out))
        return out

    return update_wrapper(guarded, fn)  # keeps jinja's pass_context & co. markers


class _BudgetRange:
    """``range()`` whose steps count against the render's budget."""

    __slots__ = ("_range",)

    def __init__(self, *args: int) -> None:
        self._range = range(*args)
        _current().size(len(self._range))

    def __iter__(self) -> Iterator[int]:
        b = _current()
        for i in self._range:
            b.steps -= 1
            if b.steps < 0:
                raise TemplateLimit(
                    f"the chat template took more than {RANGE_STEPS} range() steps", "steps"
                )
            if not b.steps & 1023:
                b.tick()
            yield i

    def __len__(self) -> int:
        return len(self._range)

    def __getitem__(self, i: Any) -> Any:
        return self._range[i]


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` (transformers' assistant-mask marker):
    renders its body; the mask itself is not needed here."""

    tags = {"generation"}  # noqa: RUF012 (jinja reads it from the class)

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body).set_lineno(lineno)


class _TemplateDict:
    # transformers' TemplateDict: dict() without attribute access to the type.
    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    # transformers' TemplateNamespace: no underscore attributes.
    def __init__(*args: Any, **kwargs: Any) -> None:
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError("namespace attributes may not start with _")


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _repeat_size(left: Any, right: Any) -> int:
    for seq, n in ((left, right), (right, left)):
        if isinstance(seq, str | list | tuple) and isinstance(n, int):
            return len(seq) * max(n, 0)
    return 0


def _power_digits(left: Any, right: Any) -> int:
    if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
        return int(right * math.log10(abs(left))) + 1
    return 0


class _LimitedEnvironment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "+"})

    def call_binop(self, context: Any, op: str, left: Any, right: Any) -> Any:
        b = _current()
        b.tick()
        if op == "*":
            b.size(_repeat_size(left, right))
        elif op == "**":
            b.size(_power_digits(left, right))
        else:
            b.size(_size_of(left) + _size_of(right))
        return self.binop_table[op](left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        b = _current()
        b.tick()
        _check_args(b, args, kwargs)
        out = super().call(__context, __obj, *args, **kwargs)
        b.size(_size_of(out))
        return out

    def getattr(self, obj: Any, attribute: str) -> Any:
        _current().tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _current().tick()
        return super().getitem(obj, argument)


def _environment() -> _LimitedEnvironment:
    env = _LimitedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationTag, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.filters = {name: _guard_filter(fn) for name, fn in env.filters.items()}
    env.tests = {name: _guard_filter(fn) for name, fn in env.tests.items()}  # type: ignore[arg-type]
    env.globals.update(
        raise_exception=_raise_exception,
        strftime_now=_strftime_now,
        dict=_TemplateDict(),
        namespace=_TemplateNamespace,
        range=_BudgetRange,
    )
    return env


class ChatTemplate:
    """One tokenizer's chat template, compiled once; :meth:`render` per request."""

    def __init__(self, tokenizer: Any, *, max_seconds: float, max_chars: int) -> None:
        source = tokenizer.chat_template
        if not isinstance(source, str):
            raise ValueError("the tokenizer has no single chat template")
        env = _environment()
        self._template = env.from_string(source)
        self._special = dict(tokenizer.special_tokens_map)
        self.max_seconds = max_seconds
        self.max_chars = max_chars
        # What a template kwarg may not be called: the call's own arguments, the sandbox's
        # globals (range, namespace, raise_exception, ...) and the special-token variables.
        self.reserved = frozenset(
            _CALL_ARGUMENTS
            | set(env.globals)
            | set(self._special)
            | set(getattr(tokenizer, "SPECIAL_TOKENS_ATTRIBUTES", ()))
        )

    def refused_kwargs(self, kwargs: dict[str, Any]) -> list[str]:
        return sorted(k for k in kwargs if k in self.reserved or k.startswith("_"))

    def render(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        **kwargs: Any,
    ) -> str:
        """The prompt text; :class:`TemplateLimit` when a limit is reached, jinja's
        ``TemplateError`` (and what the template raises) otherwise."""
        b = _Budget(
            time.monotonic() + self.max_seconds,
            self.max_seconds,
            self.max_chars,
            self.max_chars,
            RANGE_STEPS,
        )
        token = _budget.set(b)
        try:
            parts: list[str] = []
            for chunk in self._template.generate(
                **self._special,
                **kwargs,
                messages=messages,
                tools=tools,
                documents=None,
                add_generation_prompt=add_generation_prompt,
            ):
                b.chars -= len(chunk)
                if b.chars < 0:
                    b.size(self.max_chars - b.chars)
                b.tick()
                parts.append(chunk)
            return "".join(parts)
        finally:
            _budget.reset(token)
