"""Smoke check for a running OpenAI-compatible endpoint: fixed prompts, known answers, garbage.

Garbage means what broken engines produced in the seeds: ``addCriterion addCriterion ...``,
``unounouno...``, a handful of tokens repeated, or undecodable bytes (U+FFFD).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trtllm_stack.errors import UserError

REPLACEMENT_CHAR = "\ufffd"
_WORD = re.compile(r"\w+", re.UNICODE)
_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL)
# A unit of 3..12 characters repeated back to back at least 3 times ("unounouno").
_CHAR_REPEAT_LONG = re.compile(r"(\S{3,12}?)\1{2,}")
# Two-character units need more repeats ("hahaha" is text, "nanananana..." is not).
_CHAR_REPEAT_SHORT = re.compile(r"(\S{2})\1{5,}")
MIN_WORDS_FOR_DIVERSITY = 16
MIN_DISTINCT_RATIO = 0.3


def garbage_reasons(text: str) -> list[str]:
    """Why ``text`` looks like a broken engine's output; empty list when it looks like text."""
    reasons: list[str] = []
    if not text.strip():
        return ["empty output"]
    if REPLACEMENT_CHAR in text:
        reasons.append(f"{text.count(REPLACEMENT_CHAR)} replacement character(s) U+FFFD")
    words = _WORD.findall(text)
    lowered = [w.lower() for w in words]
    run_word = _longest_word_run(lowered)
    if run_word is not None:
        word, count = run_word
        reasons.append(f"word {word!r} repeated {count} times in a row")
    else:
        phrase = _repeated_ngram(lowered)
        if phrase is not None:
            reasons.append(f"phrase {phrase!r} repeated back to back")
    for pattern in (_CHAR_REPEAT_LONG, _CHAR_REPEAT_SHORT):
        for m in pattern.finditer(text):
            unit = m.group(1)
            if any(c.isalpha() for c in unit):
                reasons.append(f"{unit!r} repeated inside {m.group(0)[:40]!r}")
                break
        else:
            continue
        break
    if len(lowered) >= MIN_WORDS_FOR_DIVERSITY:
        distinct = len(set(lowered)) / len(lowered)
        if distinct < MIN_DISTINCT_RATIO:
            reasons.append(
                f"only {len(set(lowered))} distinct words in {len(lowered)}"
                f" (ratio {distinct:.2f} < {MIN_DISTINCT_RATIO})"
            )
    return reasons


def _longest_word_run(words: Sequence[str]) -> tuple[str, int] | None:
    """A word of 3+ letters repeated 3+ times consecutively (``addCriterion addCriterion ...``)."""
    i = 0
    while i < len(words):
        j = i
        while j + 1 < len(words) and words[j + 1] == words[i]:
            j += 1
        count = j - i + 1
        if count >= 3 and len(words[i]) >= 3 and not words[i].isdigit():
            return words[i], count
        i = j + 1
    return None


def _repeated_ngram(words: Sequence[str], max_n: int = 4, min_repeats: int = 3) -> str | None:
    """An n-gram (2..max_n words) occurring ``min_repeats`` times back to back."""
    for n in range(2, max_n + 1):
        for start in range(len(words) - n * min_repeats + 1):
            gram = words[start : start + n]
            if all(
                words[start + k * n : start + (k + 1) * n] == gram for k in range(1, min_repeats)
            ):
                return " ".join(gram)
    return None


@dataclass(frozen=True)
class Probe:
    prompt: str
    answer: re.Pattern[str] | None  # None: only the garbage check applies
    expected: str


PROBES = (
    Probe("What is 2+2? Answer with just the number.", re.compile(r"\b4\b|\bfour\b", re.I), "4"),
    Probe(
        "What is the capital of France? Answer in one word.", re.compile(r"paris", re.I), "Paris"
    ),
    Probe("Write two sentences about the ocean.", None, "plain text"),
)


@dataclass
class ProbeResult:
    prompt: str
    text: str
    problems: list[str]


def _base_url(url: str) -> str:
    url = url.rstrip("/")
    if not re.match(r"^https?://", url):
        raise UserError(f"--smoke {url!r}: expected the http(s):// URL of an OpenAI server")
    return url if url.endswith("/v1") else url + "/v1"


def _visible_text(message: dict[str, Any]) -> tuple[str, str]:
    """(answer, everything) of a chat message; reasoning is garbage-checked, not answer-checked."""
    content = message.get("content") or ""
    reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
    answer = _THINK.sub("", content).strip()
    return answer, f"{reasoning}\n{content}".strip()


def run_smoke(
    url: str, model: str | None = None, *, timeout: float = 120.0, max_tokens: int = 256
) -> list[ProbeResult]:
    try:
        import httpx
    except ImportError:
        raise UserError("--smoke needs httpx: pip install 'trtllm-stack[serve]'") from None

    base = _base_url(url)
    results: list[ProbeResult] = []
    try:
        with httpx.Client(timeout=timeout) as client:
            if model is None:
                model = _first_model(client, base)
            for probe in PROBES:
                body = {
                    "model": model,
                    # Qwen3's soft switch: no thinking block, so the answer fits the budget.
                    "messages": [{"role": "user", "content": f"{probe.prompt} /no_think"}],
                    "max_tokens": max_tokens,
                    "temperature": 0,
                    "stream": False,
                }
                resp = client.post(f"{base}/chat/completions", json=body)
                if resp.status_code != 200:
                    raise UserError(
                        f"smoke: POST {base}/chat/completions returned HTTP {resp.status_code}:"
                        f" {resp.text[:200]}"
                    )
                message = _message(resp.json(), base)
                answer, everything = _visible_text(message)
                problems = garbage_reasons(everything)
                if probe.answer is not None and not probe.answer.search(answer or everything):
                    problems.append(f"expected answer {probe.expected!r}, found {answer[:80]!r}")
                results.append(ProbeResult(probe.prompt, answer or everything, problems))
    except httpx.TimeoutException:
        raise UserError(f"smoke: {base} did not answer within {timeout:.0f}s") from None
    except httpx.HTTPError as exc:
        raise UserError(f"smoke: cannot reach {base}: {exc}") from None
    return results


def _first_model(client: Any, base: str) -> str:
    resp = client.get(f"{base}/models")
    if resp.status_code != 200:
        raise UserError(f"smoke: GET {base}/models returned HTTP {resp.status_code}; pass --model")
    try:
        data = resp.json()["data"]
        return str(data[0]["id"])
    except (ValueError, KeyError, IndexError, TypeError):
        raise UserError(f"smoke: GET {base}/models returned no model list; pass --model") from None


def _message(payload: Any, base: str) -> dict[str, Any]:
    try:
        message = payload["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        raise UserError(f"smoke: {base}/chat/completions: no choices[0].message") from None
    if not isinstance(message, dict):
        raise UserError(f"smoke: {base}/chat/completions choices[0].message is not an object")
    return message


def check_smoke_or_raise(results: list[ProbeResult]) -> None:
    failed = [r for r in results if r.problems]
    if failed:
        detail = "; ".join(f"{r.prompt!r}: {', '.join(r.problems)}" for r in failed)
        raise UserError(f"smoke check failed ({len(failed)}/{len(results)} prompts): {detail}", 1)
