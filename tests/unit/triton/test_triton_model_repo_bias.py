"""The embedding_bias input and the vocabulary size the proxy builds it for, in the
generated tensorrt_llm config."""

from __future__ import annotations

from pathlib import Path

import trtllm_engine_fixture as fx
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from trtllm_stack.engine.build import trtllm_build_args
from trtllm_stack.triton import tensors as T
from trtllm_stack.triton.model_repo import RepoOptions, render_repository
from trtllm_stack.variants import load_table

TABLE = load_table()
VARIANT = TABLE.get("qwen3-32b-nvfp4-tp2")


def config(files: dict[str, str]) -> model_config_pb2.ModelConfig:
    return text_format.Parse(files["tensorrt_llm/config.pbtxt"], model_config_pb2.ModelConfig())


def vocab_param(files: dict[str, str]) -> str:
    return config(files).parameters[T.PARAM_VOCAB_SIZE].string_value


def engine(tmp_path: Path, **pretrained) -> Path:
    argv = trtllm_build_args(VARIANT, Path("/c"), Path("/o"))
    cfg = fx.engine_config(
        argv, world_size=VARIANT.tp, quant_algo=VARIANT.quantization, **pretrained
    )
    return fx.write_engine_dir(tmp_path / "engine", cfg)


def test_embedding_bias_input_is_declared_as_upstream(qwen3_tokenizer_dir):
    # tensorrtllm_backend c2e65b8 all_models/inflight_batcher_llm/tensorrt_llm/config.pbtxt
    # 145-151: name embedding_bias, TYPE_FP32, dims [ -1 ], optional, allow_ragged_batch.
    files = render_repository(engine="scripted", tokenizer_dir=qwen3_tokenizer_dir)
    (inp,) = [i for i in config(files).input if i.name == T.EMBEDDING_BIAS]
    assert inp.data_type == model_config_pb2.TYPE_FP32
    assert list(inp.dims) == [-1] and inp.optional and inp.allow_ragged_batch
    assert not inp.HasField("reshape")


def test_real_engine_vocab_comes_from_its_config_json(tmp_path, qwen3_tokenizer_dir):
    files = render_repository(
        engine=engine(tmp_path, vocab_size=152064), tokenizer_dir=qwen3_tokenizer_dir
    )
    assert vocab_param(files) == "152064"  # the engine's, not the variant's or tokenizer's


def test_logits_without_an_fp32_bias_path_get_no_vocab(tmp_path, qwen3_tokenizer_dir):
    d = engine(tmp_path, logits_dtype="bfloat16")
    assert vocab_param(render_repository(engine=d, tokenizer_dir=qwen3_tokenizer_dir)) == ""


def test_fp16_logits_take_the_fp32_bias(tmp_path, qwen3_tokenizer_dir):
    d = engine(tmp_path, logits_dtype="float16")  # the executor converts it (FP8 models)
    assert vocab_param(render_repository(engine=d, tokenizer_dir=qwen3_tokenizer_dir)) == "151936"


def test_scripted_vocab_variant_then_option_then_tokenizer(qwen3_tokenizer_dir):
    with_variant = render_repository(
        engine="scripted", tokenizer_dir=qwen3_tokenizer_dir, variant=VARIANT
    )
    assert vocab_param(with_variant) == str(VARIANT.model.vocab_size) == "151936"
    chosen = render_repository(
        engine="scripted",
        tokenizer_dir=qwen3_tokenizer_dir,
        options=RepoOptions(vocab_size=1000),
    )
    assert vocab_param(chosen) == "1000"
    plain = render_repository(engine="scripted", tokenizer_dir=qwen3_tokenizer_dir)
    assert vocab_param(plain) == "151669"  # Qwen3's tokenizer: 151643 + 26 added tokens
