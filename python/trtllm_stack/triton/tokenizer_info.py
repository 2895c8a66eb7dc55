"""XGrammar tokenizer information for the TensorRT-LLM backend's guided decoding.

The C++ backend does not read tokenizer files; it reads one JSON file named by the
``xgrammar_tokenizer_info_path`` parameter with three keys, ``encoded_vocab`` (token strings in
id order), ``tokenizer_str`` (the Hugging Face tokenizer.json, from which XGrammar detects the
vocabulary type) and ``stop_token_ids`` (TensorRT-LLM triton_backend/inflight_batcher_llm/src/
model_instance_state.cc, getGuidedDecodingConfigFromParams). Upstream writes it with
examples/generate_xgrammar_tokenizer_info.py, which calls
tensorrt_llm/llmapi/tokenizer.py:_xgrammar_tokenizer_info on a transformers fast tokenizer:
``encoded_vocab = sorted(tokenizer.get_vocab().items(), key=id)``, ``tokenizer_str =
tokenizer.backend_tokenizer.to_str()``, ``stop_token_ids = [tokenizer.eos_token_id]``.

We compute the same from the files, without transformers: ``get_vocab()`` of a fast tokenizer
is the backend's vocabulary with added tokens, i.e. tokenizer.json's ``model.vocab`` plus
``added_tokens``; ``tokenizer_str`` is tokenizer.json as shipped (recent transformers rewrite
Qwen2's pre-tokenizer/decoder on load, older ones, as in the TensorRT-LLM 1.1.0 container,
keep the file; XGrammar detects the same metadata from either); ``eos_token_id`` is the id of
tokenizer_config.json's ``eos_token``. A unit test checks this against ``tokenizers``.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from trtllm_stack.errors import UserError

FILE_NAME = "xgrammar_tokenizer_info.json"  # upstream's name (generate_xgrammar_tokenizer_info.py)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} is missing (needed for guided decoding)") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None


def xgrammar_tokenizer_info(tokenizer_dir: Path) -> str:
    """The JSON text of the tokenizer info file, as upstream's script writes it."""
    files = [tokenizer_dir / "tokenizer.json", tokenizer_dir / "tokenizer_config.json"]
    try:
        key = tuple((str(f.resolve()), f.stat().st_mtime_ns, f.stat().st_size) for f in files)
    except OSError as exc:
        raise UserError(f"cannot read the tokenizer in {tokenizer_dir}: {exc}") from None
    return _cached_info(key, tokenizer_dir)


@functools.lru_cache(maxsize=4)  # ~20 MB of JSON each; tests write many repositories
def _cached_info(key: tuple[tuple[str, int, int], ...], tokenizer_dir: Path) -> str:
    del key  # the cache key: the files' identity and version
    tokenizer_str = (tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8")
    try:
        spec = json.loads(tokenizer_str)
        vocab: dict[str, int] = dict(spec["model"]["vocab"])
    except (ValueError, KeyError, TypeError):
        raise UserError(
            f"{tokenizer_dir / 'tokenizer.json'} is not a Hugging Face fast tokenizer with a"
            " model.vocab (guided decoding needs one)"
        ) from None
    for added in spec.get("added_tokens") or ():
        vocab[added["content"]] = int(added["id"])
    config = _read_json(tokenizer_dir / "tokenizer_config.json")
    eos = config.get("eos_token") if isinstance(config, dict) else None
    if isinstance(eos, dict):
        eos = eos.get("content")
    if not isinstance(eos, str) or eos not in vocab:
        raise UserError(
            f"{tokenizer_dir / 'tokenizer_config.json'} names no eos_token of the vocabulary"
        )
    encoded_vocab = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    return json.dumps(
        {
            "encoded_vocab": encoded_vocab,
            "tokenizer_str": tokenizer_str,
            "stop_token_ids": [vocab[eos]],
        }
    )


def vocab_size(tokenizer_dir: Path) -> int:
    """Ids of the tokenizer (model.vocab plus added tokens): the scripted engine's vocabulary
    size when no variant gives the model's (a real engine's may be padded larger)."""
    path = tokenizer_dir / "tokenizer.json"
    try:
        key = (str(path.resolve()), path.stat().st_mtime_ns, path.stat().st_size)
    except OSError as exc:
        raise UserError(f"cannot read the tokenizer in {tokenizer_dir}: {exc}") from None
    return _cached_vocab_size(key, path)


@functools.lru_cache(maxsize=4)
def _cached_vocab_size(key: tuple[str, int, int], path: Path) -> int:
    del key
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
        ids = list(spec["model"]["vocab"].values())
        ids.extend(int(added["id"]) for added in spec.get("added_tokens") or ())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise UserError(f"{path} is not a Hugging Face fast tokenizer with a model.vocab") from None
    return max(ids) + 1
