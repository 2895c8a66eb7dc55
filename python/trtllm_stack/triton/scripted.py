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
- ``embedding_bias`` (the proxy's ``logit_bias``), see :class:`BiasRule`: what adding the
  bias to the logits does at the extremes. A token with bias >= +50 is forced, one with bias
  <= -50 is banned, smaller biases change nothing here (they only shift probabilities).

Pure Python (plus ``tokenizers``), no Triton imports: the Triton model in
models/scripted_engine/model.py drives it, and unit tests drive it directly.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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


# |bias| from which a token counts as forced / banned: logits of a trained model span a few
# tens, so +-50 decides the argmax (OpenAI documents -100 as a ban, +100 as exclusive).
BIAS_FORCE = 50.0
BIAS_BAN = -50.0


@dataclass(frozen=True, slots=True)
class BiasRule:
    """Deterministic stand-in for sampling from logits + embedding_bias.

    At each step: the highest-biased forced token (bias >= +50; ties: lowest id) that the
    step allows is emitted (end_id is allowed only once ``min_tokens`` are out; forcing
    end_id ends the reply there); otherwise the script's token, unless it is banned
    (bias <= -50): then the first token of ``fallback`` (the default text's tokens, in
    order) that is not banned, else the lowest id that is not. A banned end_id never ends the
    reply: it runs to max tokens, continuing with the default text. With a guide the grammar
    wins (as in TensorRT-LLM, where the guided decoder's bitmask sets disallowed logits to
    -inf before the decoder adds the bias): see :mod:`trtllm_stack.triton.scripted_guide`.
    """

    forced: tuple[int, ...]
    banned: frozenset[int]
    fallback: tuple[int, ...]

    @classmethod
    def from_bias(cls, bias: Any, fallback: Sequence[int]) -> BiasRule | None:
        """From the dense bias (numpy float32 [vocab]); None when nothing is extreme."""
        import numpy as np

        values = np.asarray(bias, dtype=np.float32).reshape(-1)
        forced_ids = np.flatnonzero(values >= BIAS_FORCE)
        banned_ids = np.flatnonzero(values <= BIAS_BAN)
        if forced_ids.size == 0 and banned_ids.size == 0:
            return None
        # Stable sort of ascending ids by descending bias: ties keep the lowest id first.
        order = forced_ids[np.argsort(-values[forced_ids], kind="stable")]
        banned = frozenset(int(i) for i in banned_ids)
        return cls(tuple(int(i) for i in order), banned, tuple(dict.fromkeys(fallback)))

    def force(self, *, eos_allowed: bool, end_id: int) -> int | None:
        for token in self.forced:
            if token != end_id or eos_allowed:
                return token
        return None

    def substitute(self, token: int) -> int:
        if token not in self.banned:
            return token
        for candidate in self.fallback:
            if candidate not in self.banned:
                return candidate
        candidate = 0
        while candidate in self.banned:
            candidate += 1
        return candidate


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
    bias: BiasRule | None = None,
) -> Iterator[int]:
    """The tokens the engine emits, in order, until its EOS point (max tokens, stop words and
    cancellation are the caller's). Every token of a guided request is one the grammar
    matcher accepted."""
    if bias is not None:
        yield from _biased_stream(
            script, end_id=end_id, min_tokens=min_tokens, filler=filler, guided=guided, bias=bias
        )
        return
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


def _biased_stream(
    script: Sequence[int],
    *,
    end_id: int,
    min_tokens: int,
    filler: Sequence[int],
    guided: GuidedRun | None,
    bias: BiasRule,
) -> Iterator[int]:
    """:func:`token_stream` under a :class:`BiasRule` (step by step, as the sampler goes)."""
    emitted = 0
    script_iter = iter(script)
    in_script = True
    filler_pos = 0
    while True:
        eos_allowed = end_id >= 0 and emitted >= min_tokens and end_id not in bias.banned
        if guided is not None and guided.diverged:
            # The grammar completes the document; the bias only chooses among what it allows.
            step = guided.next_token(bias, eos_allowed)
            if step is None:
                return
            emitted += 1
            yield step
            continue
        forced = bias.force(eos_allowed=eos_allowed, end_id=end_id)
        if forced == end_id:
            return
        if forced is not None:
            token = forced
        else:
            natural: int | None = None
            while in_script and natural is None:
                nxt = next(script_iter, None)
                if nxt is None:
                    in_script = False
                elif nxt == end_id and end_id >= 0:
                    if eos_allowed:
                        return
                else:
                    natural = nxt
            if natural is None:
                if guided is not None:
                    guided.diverged = True  # the script ended: the grammar decides the rest
                    continue
                if eos_allowed or not filler:
                    return
                natural = filler[filler_pos % len(filler)]
                filler_pos += 1
            token = bias.substitute(natural)
        if guided is not None and not guided.follow(token):
            continue  # diverged: the completion rule takes over at this same step
        emitted += 1
        yield token
