"""Guided decoding for the scripted CPU engine, with the real XGrammar.

Set up as TensorRT-LLM's C++ guided decoder sets it up (cpp/tensorrt_llm/batch_manager/
guidedDecoder.cpp, GuidedDecoder::GuidedDecoder and ::build): a ``TokenizerInfo`` from the
tokenizer info file's ``encoded_vocab`` and ``stop_token_ids``, with the vocabulary type and
prefix-space flag XGrammar detects from ``tokenizer_str``; one ``GrammarCompiler``; per request
a ``GrammarMatcher`` of ``compile_builtin_json_grammar()`` (json), ``compile_json_schema(guide)``
(json_schema), ``compile_regex(guide)`` (regex) or ``compile_grammar(guide)`` (ebnf_grammar).

Where the real engine samples among the tokens the matcher allows, the scripted engine has a
script. Deterministic rule (:meth:`GuidedRun.next_token`):

1. While the script's next token is accepted by the matcher, it is emitted: a ``[reply]`` that
   is already a valid document comes out unchanged.
2. From the first token the matcher rejects (or when the script ends before the document does)
   the engine completes the document itself, one allowed token per step, the first allowed in
   this order: the stop token (the document is complete: end as at EOS); inside a JSON string:
   ``"`` (close it); otherwise ``}`` ``]`` ``"`` ``:`` ``,`` ``0`` ``{`` ``[``; then the other
   printable ASCII characters (digits, lower case, upper case, punctuation), then space and
   newline; else the lowest allowed token id. Closing before opening, and the shortest
   values (``""``, ``0``, ``[]``, ``{}``), reach a complete document in a few tokens per
   required property: a plain-prose reply under ``{"name": str, "age": int}`` becomes
   ``{"name": "", "age": 0}``.

Every token emitted, by either step, has been accepted by the matcher. XGrammar is imported and
the tokenizer info compiled on the first guided request (it imports torch: seconds), so that
Triton's start-up is not slowed for the many runs that never ask for a guide.
"""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trtllm_stack.triton.scripted import BiasRule

# ":" and "," before digits: a number must not grow forever.
_OUTSIDE_ORDER = '}]":,0{['
_ASCII_ORDER = (
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-.+eE_!#$%&'()*/;<=>?@\\^`|~"
)
# Byte-level BPE (Qwen, GPT-2) spells space and newline as these characters.
_BYTE_LEVEL_SPACE = {" ": "Ġ", "\n": "Ċ"}


class GuideError(ValueError):
    """The guide cannot be compiled (the backend fails such a request)."""


class GuidedDecoding:
    """Process-wide: XGrammar's compiler over the engine's vocabulary."""

    def __init__(self, tokenizer_info_path: str) -> None:
        self._path = tokenizer_info_path
        self._lock = threading.Lock()
        self._loaded = False
        self._error: BaseException | None = None

    def _load(self) -> None:
        try:
            import xgrammar as xgr

            with open(self._path, encoding="utf-8") as f:
                info = json.load(f)
            vocab: list[str] = info["encoded_vocab"]
            meta = xgr.TokenizerInfo._detect_metadata_from_hf(info["tokenizer_str"])
            tokenizer_info = xgr.TokenizerInfo(
                vocab,
                xgr.VocabType(meta["vocab_type"]),
                vocab_size=len(vocab),
                stop_token_ids=list(info["stop_token_ids"]),
                add_prefix_space=bool(meta["add_prefix_space"]),
            )
            self._xgr = xgr
            self.vocab_size = len(vocab)
            self.stop_ids = list(info["stop_token_ids"])
            self._compiler = xgr.GrammarCompiler(tokenizer_info, max_threads=1)
            index = {tok: i for i, tok in enumerate(vocab)}
            self._id_of = {
                c: index[_BYTE_LEVEL_SPACE.get(c, c)]
                for c in _ALL_CHARS
                if _BYTE_LEVEL_SPACE.get(c, c) in index
            }
            self._vocab = vocab
        except Exception as exc:  # reported to each guided request
            self._error = exc

    def load(self) -> None:
        """Import XGrammar and build the compiler, once (blocking: call it off the loop)."""
        with self._lock:
            if not self._loaded:
                self._load()
                self._loaded = True
        if self._error is not None:
            raise RuntimeError(f"guided decoding is unavailable: {self._error}")

    def start(self, guide_type: str, guide: str | None) -> GuidedRun:
        """A matcher for one request (call :meth:`load` first)."""
        compiler = self._compiler
        try:
            if guide_type == "json":
                compiled = compiler.compile_builtin_json_grammar()
            elif guide_type == "json_schema":
                compiled = compiler.compile_json_schema(guide or "")
            elif guide_type == "regex":
                compiled = compiler.compile_regex(guide or "")
            elif guide_type == "ebnf_grammar":
                compiled = compiler.compile_grammar(guide or "")
            else:
                raise GuideError(f"unsupported guide type {guide_type!r}")
        except GuideError:
            raise
        except Exception as exc:  # XGrammar's parse/compile errors
            raise GuideError(f"invalid {guide_type} guide: {exc}") from None
        return GuidedRun(self, self._xgr.GrammarMatcher(compiled), guide_type.startswith("json"))


_ALL_CHARS = _OUTSIDE_ORDER + _ASCII_ORDER + ' "\n'


class GuidedRun:
    """One request's matcher and the deterministic completion rule (module docstring)."""

    def __init__(self, owner: GuidedDecoding, matcher: Any, json_lexing: bool) -> None:
        self._owner = owner
        self._matcher = matcher
        self._json = json_lexing
        self._in_string = False
        self._escaped = False
        self.diverged = False
        self._bitmask = owner._xgr.allocate_token_bitmask(1, owner.vocab_size)

    def _track(self, token: int) -> None:
        if not self._json or token >= len(self._owner._vocab):
            return
        for ch in self._owner._vocab[token]:
            if self._escaped:
                self._escaped = False
            elif ch == "\\" and self._in_string:
                self._escaped = True
            elif ch == '"':
                self._in_string = not self._in_string

    def follow(self, token: int) -> bool:
        """Accept the script's token if the grammar allows it (rule 1)."""
        if self.diverged or not self._matcher.accept_token(token):
            self.diverged = True
            return False
        self._track(token)
        return True

    def next_token(self, bias: BiasRule | None = None, eos_allowed: bool = True) -> int | None:
        """The completion rule's next token (rule 2); None: the document is complete.

        With a bias (``logit_bias``) the grammar still wins: a forced token is taken only if
        the grammar allows it, a banned one is avoided only if something else is allowed, and
        a banned (or not yet allowed) stop token does not end a document that can go on.
        """
        self.diverged = True
        if self._matcher.is_terminated():
            return None
        self._matcher.fill_next_token_bitmask(self._bitmask)
        words = self._bitmask[0].numpy()
        size = self._owner.vocab_size

        def allowed(i: int) -> bool:
            return 0 <= i < size and bool((int(words[i >> 5]) >> (i & 31)) & 1)

        stops = self._owner.stop_ids
        banned = bias.banned if bias is not None else frozenset()
        stop_ok = eos_allowed and not any(s in banned for s in stops)
        if bias is not None:
            for token in bias.forced:
                if token in stops:
                    if stop_ok and allowed(token):
                        return None
                elif allowed(token):
                    return self._take(token)
        if stop_ok and any(allowed(s) for s in stops):
            return None
        order = '"' if self._in_string else _OUTSIDE_ORDER
        choice: int | None = None
        for ch in order + _ASCII_ORDER + ' \n"':
            tid = self._owner._id_of.get(ch)
            if tid is not None and allowed(tid) and tid not in banned:
                choice = tid
                break
        if choice is None:
            choice = self._lowest_allowed(words, banned)
        if choice is None and banned:
            if any(allowed(s) for s in stops):
                return None  # only banned tokens or the stop token left: end (grammar wins)
            choice = self._lowest_allowed(words, frozenset())
        if choice is None or not self._matcher.accept_token(choice):
            return None  # nothing allowed: a grammar with no way on; end as at EOS
        self._track(choice)
        return choice

    def _take(self, token: int) -> int | None:
        if not self._matcher.accept_token(token):
            return None
        self._track(token)
        return token

    def _lowest_allowed(self, words: Any, banned: frozenset[int]) -> int | None:
        stops = self._owner.stop_ids
        for w, word in enumerate(words.tolist()):
            word &= 0xFFFFFFFF
            while word:
                low = word & -word
                tid = w * 32 + low.bit_length() - 1
                if tid not in banned and tid not in stops:
                    return tid
                word ^= low
        return None

    def accept_stop(self) -> None:
        """The document ended at the stop token (the real engine's EOS step)."""
        for s in self._owner.stop_ids:
            if self._matcher.accept_token(s):
                return
