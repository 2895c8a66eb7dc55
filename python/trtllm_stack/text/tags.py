"""The tags the reasoning and tool-call parsers key on, as token ids where the tokenizer has them.

Qwen3 has one added token for each of ``<think>``, ``</think>``, ``<tool_call>`` and
``</tool_call>``. When the model emits one of those ids it means the tag; the same
characters spelled out by ordinary tokens (reasoning that quotes ``</think>``, an argument
holding ``"</tool_call>"``) are text. So, where all four are single added tokens, the
pipeline hands the parsers each tag id as a :class:`Tag` piece and only the text between
them as text (vLLM's Qwen3 reasoning parser also works on the ids). Tokenizers without them
get ``None`` and the parsers find the tags in the text instead.
"""

from __future__ import annotations

import threading
from typing import Any

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
TOOL_OPEN = "<tool_call>"
TOOL_CLOSE = "</tool_call>"
ALL_TAGS = (THINK_OPEN, THINK_CLOSE, TOOL_OPEN, TOOL_CLOSE)


class Tag(str):
    """A tag the model emitted as its own token (a ``str`` equal to the tag's text)."""

    __slots__ = ()


_CACHE: dict[int, tuple[Any, dict[int, Tag] | None]] = {}
_LOCK = threading.Lock()


def tag_ids(tokenizer: Any) -> dict[int, Tag] | None:
    """``{token id: Tag}`` when every tag of :data:`ALL_TAGS` is one added token, else None."""
    entry = _CACHE.get(id(tokenizer))
    if entry is not None and entry[0] is tokenizer:
        return entry[1]
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    by_text = {getattr(tok, "content", str(tok)): idx for idx, tok in added.items()}
    ids = {by_text[text]: Tag(text) for text in ALL_TAGS if text in by_text}
    found = ids if len(ids) == len(ALL_TAGS) else None
    with _LOCK:
        # The entry keeps the tokenizer alive so its id is never reused.
        _CACHE[id(tokenizer)] = (tokenizer, found)
    return found
