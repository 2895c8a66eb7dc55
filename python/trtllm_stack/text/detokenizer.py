"""Incremental, UTF-8 safe detokenization: O(new tokens) per call.

For byte-level BPE tokenizers (Qwen, Llama 3, GPT-2 style: ``tokenizer.json`` with a
``ByteLevel`` decoder) every token id maps to a fixed byte string. The table is built
once per tokenizer and shared; a push is then one list lookup per id plus one C-level
incremental UTF-8 decode, which holds back an incomplete multi-byte character until its
remaining bytes arrive. Concatenated pushes + flush equal
``tokenizer.decode(all_ids, skip_special_tokens=...)``.

Other tokenizers (SentencePiece etc.) fall back to the prefix/read-offset scheme of
vLLM/TGI: decode a short window of recent ids and emit the new suffix once it no longer
ends in U+FFFD. The window is bounded because the offsets advance with every emission.
"""

from __future__ import annotations

import codecs
import threading
from collections.abc import Sequence
from functools import cache
from typing import Any

_REPLACEMENT = "\ufffd"


@cache
def _unicode_to_byte() -> dict[str, int]:
    """Inverse of the GPT-2 ByteLevel alphabet (printable stand-ins for the 256 bytes)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codepoints = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codepoints.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, codepoints, strict=True)}


def _token_bytes(token: str, alphabet: dict[str, int]) -> bytes:
    # Like the tokenizers ByteLevel decoder: a token made only of alphabet characters is
    # byte-level encoded; anything else (an added token with other characters) is its
    # own UTF-8 text.
    try:
        return bytes([alphabet[ch] for ch in token])
    except KeyError:
        return token.encode("utf-8")


def _special_ids(tokenizer: Any) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", ()) or ())
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    ids.update(i for i, tok in added.items() if getattr(tok, "special", False))
    return ids


def build_byte_table(tokenizer: Any, *, skip_special_tokens: bool) -> list[bytes] | None:
    """id -> bytes for a byte-level BPE tokenizer, or None if it is not one."""
    base = _cached_table(tokenizer, False)
    if base is None or not skip_special_tokens:
        return base
    table = base[:]
    for idx in _special_ids(tokenizer):
        if 0 <= idx < len(table):
            table[idx] = b""
    return table


def _build_base_table(tokenizer: Any) -> list[bytes] | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or type(getattr(backend, "decoder", None)).__name__ != "ByteLevel":
        return None
    vocab: dict[str, int] = backend.get_vocab(with_added_tokens=True)
    alphabet = _unicode_to_byte()
    table = [b""] * (max(vocab.values()) + 1)
    for token, idx in vocab.items():
        table[idx] = _token_bytes(token, alphabet)
    return table


_TABLES: dict[tuple[int, bool], tuple[Any, list[bytes] | None]] = {}
_TABLES_LOCK = threading.RLock()


def _cached_table(tokenizer: Any, skip_special_tokens: bool) -> list[bytes] | None:
    key = (id(tokenizer), skip_special_tokens)
    entry = _TABLES.get(key)
    if entry is None or entry[0] is not tokenizer:
        with _TABLES_LOCK:
            entry = _TABLES.get(key)
            if entry is None or entry[0] is not tokenizer:
                table = (
                    build_byte_table(tokenizer, skip_special_tokens=True)
                    if skip_special_tokens
                    else _build_base_table(tokenizer)
                )
                # The entry keeps the tokenizer alive so its id is never reused.
                entry = (tokenizer, table)
                _TABLES[key] = entry
    return entry[1]


def prepare(tokenizer: Any) -> None:
    """Build the shared id->bytes tables now (about 0.2 s for Qwen3), not on the first request."""
    _cached_table(tokenizer, True)
    _cached_table(tokenizer, False)


class IncrementalDetokenizer:
    """Token ids in, text out, never splitting a UTF-8 character.

    ``push`` returns only completed text; ``flush`` returns the rest at end of stream
    (U+FFFD only where the model really produced invalid bytes). Pass plain ``int``
    sequences (``array.tolist()``) for speed.
    """

    __slots__ = ("_decoder", "_ids", "_prefix", "_read", "_skip", "_table", "_tokenizer")

    def __init__(
        self, tokenizer: Any, *, skip_special_tokens: bool = True, use_byte_table: bool = True
    ) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._table = _cached_table(tokenizer, skip_special_tokens) if use_byte_table else None
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        # Generic fallback state (unused with a byte table).
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def push(self, token_ids: Sequence[int]) -> str:
        table = self._table
        if table is None:
            return self._push_generic(token_ids)
        try:
            data = b"".join([table[i] for i in token_ids])
        except IndexError:
            # Ids past the vocabulary (the model's padded embedding rows) decode to nothing,
            # as in tokenizer.decode.
            n = len(table)
            data = b"".join([table[i] if 0 <= i < n else b"" for i in token_ids])
        return self._decoder.decode(data)

    def flush(self) -> str:
        if self._table is None:
            return self._flush_generic()
        return self._decoder.decode(b"", True)

    # -- fallback for non byte-level tokenizers ---------------------------------------

    def _decode(self, ids: list[int]) -> str:
        text: str = self._tokenizer.decode(ids, skip_special_tokens=self._skip)
        return text

    def _push_generic(self, token_ids: Sequence[int]) -> str:
        self._ids.extend(token_ids)
        ids = self._ids
        prefix_text = self._decode(ids[self._prefix : self._read])
        new_text = self._decode(ids[self._prefix :])
        if len(new_text) <= len(prefix_text) or new_text.endswith(_REPLACEMENT):
            return ""  # an incomplete character: wait for more ids
        self._prefix = self._read
        self._read = len(ids)
        # Drop consumed ids so the list stays as short as the window.
        del ids[: self._prefix]
        self._read -= self._prefix
        self._prefix = 0
        return new_text[len(prefix_text) :]

    def _flush_generic(self) -> str:
        ids = self._ids
        prefix_text = self._decode(ids[self._prefix : self._read])
        new_text = self._decode(ids[self._prefix :])
        self._ids = []
        self._prefix = self._read = 0
        return new_text[len(prefix_text) :]
