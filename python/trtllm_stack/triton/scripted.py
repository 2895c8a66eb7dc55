"""Generation logic of the scripted CPU engine (stands in for TensorRT-LLM without a GPU).

Deterministic: the reply is chosen from the prompt text, not sampled.
- ``[reply]TEXT[/reply]`` in a user turn (the last user turn that has one): the engine emits
  exactly TEXT's tokens, then EOS. TEXT is tokenized with the real tokenizer, so ``<think>``
  or ``<tool_call>`` become Qwen3's real special tokens.
- ``[delay_ms=N]`` in the last user turn: per-token delay for this request.
- otherwise a fixed readable text of ``default_reply_tokens`` tokens, then EOS.
- with a guide (guided decoding), see :mod:`trtllm_stack.triton.scripted_guide`.
- ``min_tokens``: EOS (the script's end, or end_id in it) is held back until that many tokens
  were emitted, as the real sampler masks end_id; ``end_id`` -1 (how TensorRT-LLM expresses
  ignore_eos, tensorrt_llm/executor/worker.py) never ends. Past the script's end the engine
  continues with the default text.

Pure Python (plus ``tokenizers``), no Triton imports: the Triton model in
models/scripted_engine/model.py drives it, and unit tests drive it directly.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trtllm_stack.triton.scripted_guide import GuidedRun

REPLY_RE = re.compile(r"\[reply\](.*?)\[/reply\]", re.DOTALL)
DELAY_RE = re.compile(r"\[delay_ms=(\d+(?:\.\d+)?)\]")
_USER_TURN_RE = re.compile(r"<\|im_start\|>user\n(.*?)(?:<\|im_end\|>|$)", re.DOTALL)

DEFAULT_TEXT = (
    "Triton is serving this reply from the scripted CPU engine, which stands in for "
    "TensorRT-LLM on machines without a GPU. It streams one token at a time, honours the "
    "maximum number of tokens, stop words and cancellation, and then ends with the end "
    "token, just as the real backend does. "
)


@dataclass(frozen=True, slots=True)
class Plan:
    """What the engine will emit for one request (before max tokens / stop words apply)."""

    tokens: list[int]
    delay_ms: float | None


class ScriptedModel:
    def __init__(self, tokenizer, default_reply_tokens: int = 200) -> None:
        # ``tokenizer`` is a ``tokenizers.Tokenizer`` (fast, no transformers import in the stub).
        self._tok = tokenizer
        base = tokenizer.encode(DEFAULT_TEXT, add_special_tokens=False).ids
        n = max(0, default_reply_tokens)
        self.default_tokens = (base * (n // len(base) + 1))[:n]
        self.filler_tokens = base

    def plan(self, prompt_ids: Sequence[int]) -> Plan:
        text = self._tok.decode(list(prompt_ids), skip_special_tokens=False)
        user_turns = _USER_TURN_RE.findall(text)
        delay = None
        if user_turns:
            m = DELAY_RE.search(user_turns[-1])
            delay = float(m.group(1)) if m else None
        for turn in reversed(user_turns):
            replies = REPLY_RE.findall(turn)
            if replies:
                ids = self._tok.encode(replies[-1], add_special_tokens=False).ids
                return Plan(ids, delay)
        return Plan(list(self.default_tokens), delay)


def ends_with_any(generated: list[int], stop_sequences: list[list[int]]) -> bool:
    for seq in stop_sequences:
        n = len(seq)
        if n and len(generated) >= n and generated[-n:] == seq:
            return True
    return False


def token_stream(
    script: Sequence[int],
    *,
    end_id: int,
    min_tokens: int,
    filler: Sequence[int],
    guided: GuidedRun | None = None,
) -> Iterator[int]:
    """The tokens the engine emits, in order, until its EOS point (max tokens, stop words and
    cancellation are the caller's). Every token of a guided request is one the grammar
    matcher accepted."""
    emitted = 0
    for token in script:
        if token == end_id and end_id >= 0:
            if emitted >= min_tokens:
                return
            continue  # the real sampler masks end_id below min_tokens
        if guided is not None and not guided.follow(token):
            break
        emitted += 1
        yield token
    if guided is not None:
        # The document must still be completed; the grammar decides when it ends.
        while (step := guided.next_token()) is not None:
            emitted += 1
            yield step
        return
    while (end_id < 0 or emitted < min_tokens) and filler:
        for token in filler:
            if end_id >= 0 and emitted >= min_tokens:
                return
            emitted += 1
            yield token
