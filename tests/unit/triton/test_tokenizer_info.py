"""XGrammar tokenizer info for the C++ backend: what upstream's
examples/generate_xgrammar_tokenizer_info.py writes, from the tokenizer files alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from google.protobuf import text_format
from tokenizers import Tokenizer
from tritonclient.grpc import model_config_pb2

from trtllm_stack.errors import UserError
from trtllm_stack.triton import tensors as T
from trtllm_stack.triton.model_repo import RepoOptions, write_model_repository
from trtllm_stack.triton.tokenizer_info import FILE_NAME, xgrammar_tokenizer_info


def test_info_matches_what_a_fast_tokenizer_reports(qwen3_tokenizer_dir):
    info = json.loads(xgrammar_tokenizer_info(qwen3_tokenizer_dir))
    # The three keys the backend reads (model_instance_state.cc,
    # getGuidedDecodingConfigFromParams), nothing else.
    assert set(info) == {"encoded_vocab", "tokenizer_str", "stop_token_ids"}
    tok = Tokenizer.from_file(str(qwen3_tokenizer_dir / "tokenizer.json"))
    # Upstream: sorted(tokenizer.get_vocab().items(), key=id); a fast tokenizer's get_vocab()
    # is its backend's vocabulary with the added tokens.
    vocab = tok.get_vocab(with_added_tokens=True)
    assert info["encoded_vocab"] == [t for t, _ in sorted(vocab.items(), key=lambda x: x[1])]
    assert info["stop_token_ids"] == [tok.token_to_id("<|im_end|>")]  # Qwen3's eos_token
    assert json.loads(info["tokenizer_str"])["model"]["type"] == "BPE"


def test_bad_tokenizer_files_are_named(tmp_path, qwen3_tokenizer_dir):
    d = tmp_path / "tok"
    d.mkdir()
    shutil.copy(qwen3_tokenizer_dir / "tokenizer.json", d)
    with pytest.raises(UserError, match="cannot read the tokenizer"):
        xgrammar_tokenizer_info(d)
    (d / "tokenizer_config.json").write_text('{"eos_token": "<nope>"}')
    with pytest.raises(UserError, match="names no eos_token"):
        xgrammar_tokenizer_info(d)


def _params(repo: Path) -> dict[str, str]:
    text = (repo / "tensorrt_llm" / "config.pbtxt").read_text()
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    return {k: v.string_value for k, v in config.parameters.items()}


def test_repository_turns_guided_decoding_on_with_an_absolute_info_path(
    tmp_path, qwen3_tokenizer_dir
):
    out = write_model_repository(
        tmp_path / "repo", engine="scripted", tokenizer_dir=qwen3_tokenizer_dir
    )
    params = _params(out)
    assert params[T.PARAM_GUIDED_DECODING_BACKEND] == "xgrammar"
    path = Path(params[T.PARAM_XGRAMMAR_TOKENIZER_INFO_PATH])
    assert path.is_absolute() and path == out.resolve() / "tensorrt_llm" / FILE_NAME
    assert json.loads(path.read_text())["stop_token_ids"]

    off = write_model_repository(
        tmp_path / "off",
        engine="scripted",
        tokenizer_dir=qwen3_tokenizer_dir,
        options=RepoOptions(overrides={"guided_decoding_backend": ""}),
    )
    params = _params(off)
    assert params[T.PARAM_GUIDED_DECODING_BACKEND] == ""
    assert params[T.PARAM_XGRAMMAR_TOKENIZER_INFO_PATH] == ""
    assert not (off / "tensorrt_llm" / FILE_NAME).exists()
