"""Long agent/RAG-style chat conversations for the prompt-time benchmark and probes.

A conversation is a system prompt with retrieved documents, optional tool definitions, and
turns of (user question, assistant answer, optionally a tool call and its result). Texts are
seeded pseudo-random prose with numbers, punctuation, code-ish lines and some non-ASCII, so
that the tokenizer sees a realistic mix (about 4 characters per token).
"""

from __future__ import annotations

import random
from typing import Any

_WORD_TEXT = """
the of and to in is that for it as was with be by on not he this are or his from at
which but have an they you were her she there been one all we their has would when if so
no will more can said who may about up out some into them only its time could new than
other then these two first any like now my such make over our even most after also did
many before must through back years where much your way well down should because each
just those people how too little state good very make world still own see men work long
get here between both life being under never day same another know while last might us
great old year off come since against go came right used take three kubernetes latency
throughput gradient tensor cluster deployment invoice warranty Zürich naïve café résumé
Straße 東京 数据 模型 переменная функция
"""
_WORDS = tuple(_WORD_TEXT.split())
_PUNCT = (". ", ", ", "; ", ": ", "? ", "! ", " - ", " (", ") ", '"', "'s ", "\n", "\n\n")


def prose(rng: random.Random, n_words: int) -> str:
    out: list[str] = []
    for i in range(n_words):
        r = rng.random()
        if r < 0.05:
            out.append(str(rng.randint(0, 10 ** rng.randint(1, 6))))
        elif r < 0.07:
            out.append(f"`{rng.choice(_WORDS)}_{rng.choice(_WORDS)}()`")
        else:
            out.append(rng.choice(_WORDS))
        out.append(rng.choice(_PUNCT) if rng.random() < 0.12 else " ")
        if i % 97 == 96:
            out.append("\n    - ")
    return "".join(out).strip()


def tool_definitions(rng: random.Random, count: int) -> list[dict[str, Any]]:
    tools = []
    for i in range(count):
        props = {
            f"{rng.choice(_WORDS[:60])}_{j}": {
                "type": rng.choice(["string", "integer", "boolean"]),
                "description": prose(rng, 12),
            }
            for j in range(4)
        }
        tools.append(
            {
                "type": "function",
                "function": {
                    "name": f"tool_{i}_{rng.choice(_WORDS[:60])}",
                    "description": prose(rng, 30),
                    "parameters": {"type": "object", "properties": props, "required": []},
                },
            }
        )
    return tools


def conversation(
    turns: int,
    *,
    seed: int = 0,
    doc_words: int = 11_000,
    user_words: int = 60,
    answer_words: int = 180,
    tools: int = 0,
    reasoning: bool = True,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """``turns`` user messages (the last one unanswered) and the tool list (None: no tools).

    Earlier assistant answers carry ``reasoning_content`` when ``reasoning``: Qwen3's template
    drops it from turns before the last user query, so it matters for what is re-rendered.
    The same seed gives the same prefix for any ``turns``: turn k+1 extends turn k.
    """
    rng = random.Random(seed)
    tool_defs = tool_definitions(rng, tools) if tools else None
    docs = "\n\n".join(f"[document {i}]\n{prose(rng, doc_words // 8)}" for i in range(8))
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": f"You answer from these documents.\n\n{docs}"}
    ]
    for t in range(turns):
        messages.append({"role": "user", "content": f"Question {t + 1}: {prose(rng, user_words)}"})
        answer: dict[str, Any] = {"role": "assistant", "content": prose(rng, answer_words)}
        if reasoning:
            answer["reasoning_content"] = prose(rng, answer_words // 2)
        if t < turns - 1:
            messages.append(answer)
    return messages, tool_defs
