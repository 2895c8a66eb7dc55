"""Fixtures shared by the scripted engine's tests: the raw Qwen3 tokenizer and the
scripted engine's guided decoding loaded with the real XGrammar (built once)."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from trtllm_stack.triton.scripted_guide import GuidedDecoding
from trtllm_stack.triton.tokenizer_info import xgrammar_tokenizer_info


@pytest.fixture(scope="session")
def tok(qwen3_tokenizer_dir):
    return Tokenizer.from_file(str(qwen3_tokenizer_dir / "tokenizer.json"))


@pytest.fixture(scope="session")
def guided(tmp_path_factory, qwen3_tokenizer_dir):
    """(loaded GuidedDecoding, path of the tokenizer info file it was loaded from)."""
    path = tmp_path_factory.mktemp("info") / "info.json"
    path.write_text(xgrammar_tokenizer_info(qwen3_tokenizer_dir))
    g = GuidedDecoding(str(path))
    g.load()
    return g, path
