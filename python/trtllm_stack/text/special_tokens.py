"""Special-token strings typed by clients are text, never control tokens.

Policy: the chat template's own markers (``<|im_start|>``, ``<|im_end|>``, ``<think>``,
``<tool_call>``, ``<tool_response>``, ...) are tokenized as the special tokens they are; the
same strings inside what a client sends as data are tokenized as ordinary text, so a user
(or a document or tool result pasted into a message) cannot open a ``system`` turn, close a
turn, or fake a tool response. Escaped: system, developer, user and tool message content,
tool definitions, and the names and arguments of assistant tool calls. Assistant
``content`` and ``reasoning_content`` are the model's own earlier output and render as the
template renders them (a ``<tool_call>`` the model wrote stays a tool call in the history).

How: each string that contains an added-token string is replaced by a per-request sentinel
before the template runs; the rendered skeleton is tokenized normally (its markers become
special tokens) and each original string is tokenized as plain text where its sentinel
was. Strings without such markers (nearly all) are left alone: they cost one regex scan
and tokenize exactly as before. Usage counts the ids actually sent.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

from tokenizers import AddedToken, Tokenizer


class LiteralText:
    """Detects added-token strings and tokenizes text with all of them taken literally."""

    def __init__(self, tokenizer: Any) -> None:
        contents = sorted(
            {t.content for t in tokenizer.added_tokens_decoder.values()}, key=len, reverse=True
        )
        self._pattern = re.compile("|".join(map(re.escape, contents))) if contents else None
        self._plain = _plain_tokenizer(tokenizer.backend_tokenizer.to_str(), tuple(contents))

    def has_markers(self, text: str) -> bool:
        return self._pattern is not None and self._pattern.search(text) is not None

    def encode_plain(self, text: str) -> list[int]:
        ids: list[int] = self._plain.encode(text, add_special_tokens=False).ids
        return ids


@lru_cache(maxsize=4)
def _plain_tokenizer(serialized: str, contents: tuple[str, ...]) -> Tokenizer:
    # A copy in which every added token (special or not: Qwen3's <think> and <tool_call>
    # are "non-special" added tokens) is special, with special-token matching off: the
    # model's own BPE then tokenizes them like any other text.
    plain = Tokenizer.from_str(serialized)
    plain.add_special_tokens([AddedToken(c, special=True, normalized=False) for c in contents])
    plain.encode_special_tokens = True
    return plain


class Escaper:
    """One request's sentinels; :meth:`encode` splices the originals back as plain text."""

    __slots__ = ("_literal", "_originals", "_prefix", "_split")

    def __init__(self, literal: LiteralText) -> None:
        self._literal = literal
        self._originals: list[str] = []
        nonce = secrets.token_hex(6)
        self._prefix = f"\ue000{nonce}:"
        self._split: re.Pattern[str] | None = None

    @property
    def used(self) -> bool:
        return bool(self._originals)

    def text(self, value: str, *, json_escaped: bool = False) -> str:
        """``value`` or a sentinel for it. ``json_escaped``: the template writes it inside a
        JSON string (``tojson``), so the splice must be JSON-escaped the same way."""
        if not self._literal.has_markers(value):
            return value
        splice = json.dumps(value, ensure_ascii=False)[1:-1] if json_escaped else value
        self._originals.append(splice)
        return f"{self._prefix}{len(self._originals) - 1}\ue001"

    def json_value(self, obj: Any) -> Any:
        """Escape every string (keys too) of a JSON value the template serialises."""
        if isinstance(obj, str):
            return self.text(obj, json_escaped=True)
        if isinstance(obj, dict):
            return {self.json_value(k): self.json_value(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.json_value(v) for v in obj]
        return obj

    def encode(self, rendered: str, encode: Callable[[str], Sequence[int]]) -> Sequence[int]:
        """Token ids of the rendered prompt: skeleton via ``encode`` (markers special), the
        escaped strings as plain text."""
        if not self._originals:
            return encode(rendered)
        pattern = re.compile(re.escape(self._prefix) + r"(\d+)\ue001")
        ids: list[int] = []
        pos = 0
        for m in pattern.finditer(rendered):
            if m.start() > pos:
                ids.extend(encode(rendered[pos : m.start()]))
            ids.extend(self._literal.encode_plain(self._originals[int(m.group(1))]))
            pos = m.end()
        if pos < len(rendered):
            ids.extend(encode(rendered[pos:]))
        return ids

    def restore(self, rendered: str) -> str:
        """The rendered text with the originals back in (for checks on the prompt text)."""
        if not self._originals:
            return rendered
        pattern = re.compile(re.escape(self._prefix) + r"(\d+)\ue001")
        return pattern.sub(lambda m: self._originals[int(m.group(1))], rendered)
