"""What the benchmark sends: token-length distributions, prompts of exact token length
cut from real English text, or prompts from a JSONL file.

Everything is generated before the run starts so that the load generator does no
tokenizer work while it measures.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtllm_stack.errors import UserError


@dataclass(frozen=True)
class LengthSpec:
    """A distribution of token counts: ``128``, ``fixed:128``, ``normal:MEAN,STD``,
    ``uniform:LO,HI`` (inclusive). Samples are at least ``minimum``."""

    kind: str
    a: float
    b: float = 0.0
    minimum: int = 1

    def sample(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            n = int(self.a)
        elif self.kind == "uniform":
            n = rng.randint(int(self.a), int(self.b))
        else:
            n = round(rng.gauss(self.a, self.b))
        return max(self.minimum, n)

    def describe(self) -> str:
        if self.kind == "fixed":
            return str(int(self.a))
        if self.kind == "uniform":
            return f"uniform:{int(self.a)},{int(self.b)}"
        return f"normal:{self.a:g},{self.b:g}"

    @property
    def is_fixed(self) -> bool:
        return self.kind == "fixed"


def parse_length(text: str, what: str, minimum: int = 1) -> LengthSpec:
    kind, sep, rest = text.strip().partition(":")
    if not sep:
        kind, rest = "fixed", text.strip()
    kind = kind.lower()
    try:
        nums = [float(x) for x in rest.split(",")] if rest else []
    except ValueError:
        raise UserError(
            f"{what}: cannot parse {text!r} (examples: 128, normal:128,32, uniform:64,256)"
        ) from None
    if any(not math.isfinite(x) for x in nums):
        raise UserError(f"{what}: numbers must be finite: {text!r}")
    if kind == "fixed" and len(nums) == 1 and nums[0] == int(nums[0]) and nums[0] >= minimum:
        return LengthSpec("fixed", nums[0], minimum=minimum)
    if kind == "uniform" and len(nums) == 2 and all(x == int(x) for x in nums):
        lo, hi = nums
        if minimum <= lo <= hi:
            return LengthSpec("uniform", lo, hi, minimum=minimum)
        raise UserError(f"{what}: uniform needs {minimum} <= LO <= HI, got {text!r}")
    if kind == "normal" and len(nums) == 2 and nums[0] >= minimum and nums[1] >= 0:
        return LengthSpec("normal", nums[0], nums[1], minimum=minimum)
    raise UserError(
        f"{what}: cannot parse {text!r}; use N (integer >= {minimum}), normal:MEAN,STD"
        " or uniform:LO,HI"
    )


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One request to send. ``prompt`` is the user message (chat) or the raw prompt
    (completions); ``prompt_ids`` is what the engine sees (chat template applied) and is
    what the triton-grpc target sends."""

    prompt: str
    prompt_ids: tuple[int, ...]
    max_tokens: int
    # the output length is meant to be exact (fixed-length workload): ask servers to
    # ignore EOS / use min_tokens
    exact_output: bool


def _corpus_text() -> str:
    # Real English prose without a download: the Python documentation topics that ship
    # with the standard library (pydoc_data). Code samples are kept; they are real text too.
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip pydoc_data
        return _FALLBACK_TEXT
    return "\n\n".join(topics[k] for k in sorted(topics))


_FALLBACK_TEXT = (
    "A benchmark should send the kind of text a model sees in practice. Short prompts of"
    " repeated words measure the tokenizer's best case and hide the cost of long inputs,"
    " so the prompts here are cut from ordinary documentation prose. Each request starts"
    " at a different place in the text, so no two prompts share a long prefix unless the"
    " workload asks for it. The output length is controlled by the request: the maximum"
    " number of tokens, and where the server supports it, a minimum as well, so that"
    " every request produces exactly the number of tokens the workload describes. "
)


class PromptFactory:
    """Prompts of an exact token length, cut at random offsets from real text."""

    def __init__(self, tokenizer: Any, seed: int = 0) -> None:
        self.tokenizer = tokenizer
        self._ids: list[int] = tokenizer.encode(_corpus_text(), add_special_tokens=False)
        self._rng = random.Random(seed)

    def text_of_length(self, n: int) -> str:
        """Text that encodes to exactly ``n`` tokens (the text tokenizes on its own,
        so cuts are adjusted until decode -> encode round-trips to ``n``)."""
        corpus = self._ids
        while len(corpus) < n + 16:
            corpus = corpus + corpus
        encode = self.tokenizer.encode
        for _ in range(20):
            offset = self._rng.randrange(0, len(corpus) - n - 8)
            want = n
            for _ in range(6):
                text = self.tokenizer.decode(corpus[offset : offset + want])
                got = len(encode(text, add_special_tokens=False))
                if got == n:
                    return text
                want = max(1, min(want + (n - got), len(corpus) - offset))
        # a cut that never round-trips (runs of digits or whitespace merge differently):
        # trim characters off a slightly longer text until it encodes to n tokens
        text = self.tokenizer.decode(corpus[offset : offset + n + 8])
        while text:
            if len(encode(text, add_special_tokens=False)) == n:
                return text
            text = text[:-1]
        raise UserError(f"cannot build a prompt of exactly {n} tokens from the corpus")

    def chat_ids(self, prompt: str) -> tuple[int, ...]:
        return chat_prompt_ids(self.tokenizer, [{"role": "user", "content": prompt}])


def chat_prompt_ids(tokenizer: Any, messages: Sequence[dict[str, Any]]) -> tuple[int, ...]:
    """The ids the chat endpoint's server would send to the engine (template applied as
    text, then encoded without extra special tokens, as the proxy does)."""
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    return tuple(tokenizer.encode(text, add_special_tokens=False))


def synthetic_workload(
    factory: PromptFactory,
    count: int,
    input_len: LengthSpec,
    output_len: LengthSpec,
    seed: int,
    chat: bool = True,
) -> list[WorkItem]:
    rng = random.Random(seed)
    items = []
    for _ in range(count):
        prompt = factory.text_of_length(input_len.sample(rng))
        ids = (
            factory.chat_ids(prompt)
            if chat
            else tuple(factory.tokenizer.encode(prompt, add_special_tokens=False))
        )
        items.append(WorkItem(prompt, ids, output_len.sample(rng), output_len.is_fixed))
    return items


def jsonl_workload(
    path: Path,
    tokenizer: Any,
    output_len: LengthSpec,
    seed: int,
    chat: bool = True,
    limit: int | None = None,
) -> list[WorkItem]:
    """Lines of ``{"prompt": "..."}`` (also ``text``, or ``messages`` whose last user
    message is taken); optional ``max_tokens``/``output_len`` per line overrides --output-len."""
    rng = random.Random(seed)
    items: list[WorkItem] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UserError(f"--prompts {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UserError(f"--prompts {path}: not UTF-8 text") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"--prompts {path}:{lineno}: not JSON ({exc.msg})") from None
        prompt = _prompt_of(obj)
        if prompt is None:
            raise UserError(
                f"--prompts {path}:{lineno}: expected an object with a string 'prompt',"
                " 'text' or 'messages'"
            )
        max_tokens = obj.get("max_tokens", obj.get("output_len"))
        if max_tokens is None:
            max_tokens, exact = output_len.sample(rng), output_len.is_fixed
        elif isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens >= 1:
            exact = True
        else:
            raise UserError(f"--prompts {path}:{lineno}: max_tokens must be an integer >= 1")
        ids = (
            chat_prompt_ids(tokenizer, [{"role": "user", "content": prompt}])
            if chat
            else tuple(tokenizer.encode(prompt, add_special_tokens=False))
        )
        items.append(WorkItem(prompt, ids, max_tokens, exact))
        if limit is not None and len(items) >= limit:
            break
    if not items:
        raise UserError(f"--prompts {path}: no prompts in the file")
    return items


def _prompt_of(obj: Any) -> str | None:
    if not isinstance(obj, dict):
        return None
    for key in ("prompt", "text"):
        if isinstance(obj.get(key), str):
            return str(obj[key])
    messages = obj.get("messages")
    if isinstance(messages, list):
        for m in reversed(messages):
            if (
                isinstance(m, dict)
                and m.get("role") == "user"
                and isinstance(m.get("content"), str)
            ):
                return str(m["content"])
    return None
