"""model-repo limits and KV-cache reuse, from engine configs as trtllm-build writes them."""

from __future__ import annotations

from pathlib import Path

import pytest
import trtllm_engine_fixture as fx
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from trtllm_stack.engine.build import trtllm_build_args
from trtllm_stack.errors import UserError
from trtllm_stack.triton import tensors as T
from trtllm_stack.triton.model_repo import RepoOptions, ScriptedEngineOptions, render_repository
from trtllm_stack.variants import load_table

TABLE = load_table()


def params(files: dict[str, str], model: str = "tensorrt_llm") -> dict[str, str]:
    config = text_format.Parse(files[f"{model}/config.pbtxt"], model_config_pb2.ModelConfig())
    return {k: v.string_value for k, v in config.parameters.items()}


def engine(tmp_path: Path, variant_name: str, argv: list[str] | None = None) -> Path:
    v = TABLE.get(variant_name)
    argv = argv or trtllm_build_args(v, Path("/c"), Path("/o"))
    config = fx.engine_config(argv, world_size=v.tp, quant_algo=v.quantization)
    return fx.write_engine_dir(tmp_path / variant_name, config)


@pytest.mark.parametrize("variant", TABLE.variants, ids=lambda v: v.name)
def test_built_engine_gets_the_variants_full_context(tmp_path, variant, qwen3_tokenizer_dir):
    files = render_repository(
        engine=engine(tmp_path, variant.name), tokenizer_dir=qwen3_tokenizer_dir, variant=variant
    )
    p = params(files)
    assert p[T.PARAM_MAX_INPUT_LEN] == str(variant.max_seq_len - 1)
    assert p[T.PARAM_MAX_SEQ_LEN] == str(variant.max_seq_len)
    assert p["enable_kv_cache_reuse"] == "true"
    assert p["enable_chunked_context"] == "true"
    assert params(files, T.PREPROCESSING_MODEL)["max_input_len"] == str(variant.max_seq_len - 1)


def test_max_input_len_follows_the_runtime_rule(tmp_path, qwen3_tokenizer_dir):
    # An engine built without --max_input_len stores 1024, but with chunked context the C++
    # runtime takes max_seq_len - 1; without it min(max_seq_len - 1, max_num_tokens).
    v = TABLE.get("qwen3-32b-nvfp4-tp4")
    argv = fx.today_argv(v.max_batch_size, v.max_seq_len, v.max_num_tokens, v.tp)
    d = engine(tmp_path, v.name, argv)
    chunked = params(render_repository(engine=d, tokenizer_dir=qwen3_tokenizer_dir))
    assert chunked[T.PARAM_MAX_INPUT_LEN] == "32767"
    unchunked = params(
        render_repository(
            engine=d,
            tokenizer_dir=qwen3_tokenizer_dir,
            options=RepoOptions(overrides={"enable_chunked_context": "false"}),
        )
    )
    assert unchunked[T.PARAM_MAX_INPUT_LEN] == "8192"


def test_kv_cache_reuse_switches(tmp_path, qwen3_tokenizer_dir):
    v = TABLE.get("qwen3-32b-nvfp4-tp1")
    d = engine(tmp_path, v.name)
    off = render_repository(
        engine=d, tokenizer_dir=qwen3_tokenizer_dir, options=RepoOptions(kv_cache_reuse=False)
    )
    assert params(off)["enable_kv_cache_reuse"] == "false"
    no_reuse_variant = TABLE.get(v.name).__class__(**{**vars(v), "kv_cache_reuse": False})
    files = render_repository(engine=d, tokenizer_dir=qwen3_tokenizer_dir, variant=no_reuse_variant)
    assert params(files)["enable_kv_cache_reuse"] == "false"


def test_kv_cache_reuse_on_an_engine_without_paged_context_fmha_is_refused(
    tmp_path, qwen3_tokenizer_dir
):
    v = TABLE.get("qwen3-32b-nvfp4-tp1")
    argv = [*trtllm_build_args(v, Path("/c"), Path("/o"))]
    argv[argv.index("--use_paged_context_fmha") + 1] = "disable"
    d = engine(tmp_path, v.name, argv)
    with pytest.raises(UserError, match=r"--use_paged_context_fmha enable.*--no-kv-cache-reuse"):
        render_repository(engine=d, tokenizer_dir=qwen3_tokenizer_dir)
    files = render_repository(
        engine=d, tokenizer_dir=qwen3_tokenizer_dir, options=RepoOptions(kv_cache_reuse=False)
    )
    assert params(files)["enable_kv_cache_reuse"] == "false"


def test_scripted_batch_slots_default_to_the_variants_batch(qwen3_tokenizer_dir):
    v = TABLE.get("qwen3-32b-nvfp4-tp2")
    files = render_repository(engine="scripted", tokenizer_dir=qwen3_tokenizer_dir, variant=v)
    assert params(files)["scripted_batch_slots"] == str(v.max_batch_size)
    files = render_repository(
        engine="scripted",
        tokenizer_dir=qwen3_tokenizer_dir,
        variant=v,
        scripted=ScriptedEngineOptions(batch_slots=3),
    )
    assert params(files)["scripted_batch_slots"] == "3"
