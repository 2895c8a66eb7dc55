"""Token ids of prompt blocks, cached: a long conversation is not re-tokenized every turn.

Why it is exact: ``tokenizers`` first cuts the text at every added token (special or not;
Qwen3's ``<think>`` and ``<tool_call>`` are added tokens too), then normalizes and
pre-tokenizes each piece on its own (``AddedVocabulary::extract_and_normalize``). So the ids
of the text between two added tokens do not depend on what is around it, provided that no
added token strips neighbouring whitespace (``lstrip``/``rstrip``), needs word boundaries
(``single_word``), is matched after normalization (``normalized``: NFC turns ``>`` plus
U+0338 into one character, which would hide the marker), and that the tokenizer neither
truncates, pads, nor treats special tokens as text. :func:`split_points` keeps only the
added tokens for which this holds; a tokenizer with none of them (or failing the self-check
on construction) gets a plain full encode. tests/unit/text/test_token_cache.py checks the
claim with random texts against the Qwen3 tokenizer.

The cache is an LRU bounded by (approximate) bytes: key text plus int32 ids. Block texts
are never logged.
"""

from __future__ import annotations

import re
import sys
import threading
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

# Self-check texts: whitespace, digits, contractions, combining marks and a marker followed
# by U+0338 around the split points (the places a neighbour could change tokenization).
_PROBES = (
    "a<|im_start|>b",
    "x \n\n<|im_end|>\n\n  y's 12345<think>\u0338z</think>\n\n",
    "<|im_start|>user\nhello 'll   <|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
    '\u00e9\u0301 <tool_call>\n{"a": 1}\n</tool_call> \t<|endoftext|>',
)


def split_points(backend: Any) -> dict[str, int]:
    """Added tokens (content -> id) at which tokenization may be cut without changing ids."""
    if backend.truncation is not None or backend.padding is not None:
        return {}
    if getattr(backend, "encode_special_tokens", False):
        return {}
    has_normalizer = backend.normalizer is not None
    points = {}
    for token_id, tok in backend.get_added_tokens_decoder().items():
        if tok.lstrip or tok.rstrip or tok.single_word or (tok.normalized and has_normalizer):
            continue
        if tok.content:
            points[tok.content] = int(token_id)
    return points


class BlockTokenCache:
    """``encode(text)`` equal to ``backend.encode(text, add_special_tokens=False).ids``.

    Misses are encoded with ``encode_batch_fast([block])``, which releases the GIL (measured:
    python/scripts/perf/gil_probe.py), so a worker thread running this does not stall the
    event loop. Thread-safe: the LRU is touched under a lock, encoding happens outside it.
    """

    def __init__(self, backend: Any, max_bytes: int) -> None:
        self._backend = backend
        self._encode_batch = getattr(backend, "encode_batch_fast", None) or backend.encode_batch
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, array[int]] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = self.misses = 0  # blocks
        self.hit_tokens = self.miss_tokens = 0
        points = split_points(backend)
        self._ids = points
        # Longest first: at one position the longest marker wins, as in tokenizers'
        # leftmost-longest Aho-Corasick match.
        alternatives = sorted(points, key=len, reverse=True)
        self._split = (
            re.compile("(" + "|".join(map(re.escape, alternatives)) + ")") if points else None
        )
        self.enabled = self._split is not None and max_bytes > 0 and self._self_check()

    def _full(self, text: str) -> array[int]:
        # encode_batch_fast: ids without char offsets (about 30% less time than
        # encode_batch); like encode_batch it releases the GIL (gil_probe.py, bench.md).
        return array("i", self._encode_batch([text], add_special_tokens=False)[0].ids)

    def _self_check(self) -> bool:
        return all(self._blocks(probe) == self._full(probe) for probe in _PROBES)

    def encode(self, text: str) -> array[int]:
        if not self.enabled:
            return self._full(text)
        return self._blocks(text)

    def _blocks(self, text: str) -> array[int]:
        assert self._split is not None
        parts = self._split.split(text)
        # parts: block, marker, block, marker, ..., block (blocks may be empty)
        found: list[array[int] | None] = []
        missing: dict[str, list[int]] = {}
        entries = self._entries
        with self._lock:
            for i, part in enumerate(parts):
                if i % 2:
                    found.append(array("i", (self._ids[part],)))
                elif not part:
                    found.append(None)
                elif (hit := entries.get(part)) is not None:
                    entries.move_to_end(part)
                    found.append(hit)
                    self.hits += 1
                    self.hit_tokens += len(hit)
                else:
                    found.append(None)
                    missing.setdefault(part, []).append(i)
        if missing:
            texts = list(missing)
            # One block per call: encode_batch of many texts fans out over every core
            # (rayon), which starved the event loop of CPU in the benchmark (bench.md).
            fresh = [self._full(block) for block in texts]
            for block, ids in zip(texts, fresh, strict=True):
                for i in missing[block]:
                    found[i] = ids
            self._store(texts, fresh)
        out = array("i")
        for block_ids in found:
            if block_ids is not None:
                out.extend(block_ids)
        return out

    def _store(self, texts: Sequence[str], fresh: Sequence[array[int]]) -> None:
        with self._lock:
            for block, ids in zip(texts, fresh, strict=True):
                self.misses += 1
                self.miss_tokens += len(ids)
                size = _entry_bytes(block, ids)
                if size > self.max_bytes or block in self._entries:
                    continue
                self._entries[block] = ids
                self.bytes += size
            while self.bytes > self.max_bytes and self._entries:
                old, old_ids = self._entries.popitem(last=False)
                self.bytes -= _entry_bytes(old, old_ids)

    def __len__(self) -> int:
        return len(self._entries)


def _entry_bytes(block: str, ids: array[int]) -> int:
    return sys.getsizeof(block) + ids.itemsize * len(ids) + 64
