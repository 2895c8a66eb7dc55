"""Synthetic engine dirs and checkpoints for the engine tests (no GPU, no downloads).

Engine config layout follows TensorRT-LLM's Engine.save / EngineConfig.to_dict
(tensorrt_llm/builder.py); rank files are sparse (truncate), so sizes are real but no disk
is used.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import trtllm_engine_fixture

from trtllm_stack.engine.build import trtllm_build_args
from trtllm_stack.engine.verify import expected_rank_bytes
from trtllm_stack.tokenizer import bundled_qwen3_tokenizer_dir
from trtllm_stack.variants import Variant

# What a ModelOpt NVFP4 export writes (producer block abbreviated).
NVFP4_QUANT_CONFIG = {
    "producer": {"name": "modelopt", "version": "0.29.0"},
    "quantization": {
        "quant_algo": "NVFP4",
        "kv_cache_quant_algo": "FP8",
        "group_size": 16,
        "exclude_modules": ["lm_head"],
    },
}
FP8_QUANT_CONFIG = {
    "producer": {"name": "modelopt", "version": "0.29.0"},
    "quantization": {
        "quant_algo": "FP8",
        "kv_cache_quant_algo": "FP8",
        "exclude_modules": ["lm_head"],
    },
}
HF_QWEN3_CONFIG = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "hidden_size": 5120,
    "num_hidden_layers": 64,
    "vocab_size": 151936,
    "torch_dtype": "bfloat16",
}


def engine_config(
    variant: Variant,
    *,
    version: str | None = "1.1.0",
    quant_algo: str | None = "same",
    argv: list[str] | None = None,
) -> dict[str, Any]:
    """config.json as trtllm-build writes it for the flags build-engine passes (or ``argv``)."""
    algo = variant.quantization if quant_algo == "same" else quant_algo
    flags = argv or trtllm_build_args(variant, Path("/ckpt"), Path("/out"))
    config = trtllm_engine_fixture.engine_config(
        flags, world_size=variant.tp, quant_algo=algo, version=version or "1.1.0"
    )
    if version is None:
        del config["version"]
    return config


def sparse_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)


def make_engine_dir(
    path: Path,
    variant: Variant,
    *,
    config: dict[str, Any] | None = None,
    ranks: int | None = None,
    rank_bytes: int | None = None,
    tokenizer: bool = True,
) -> Path:
    """A well-formed engine dir for ``variant`` unless an argument breaks one part of it."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config or engine_config(variant), indent=2))
    size = rank_bytes if rank_bytes is not None else expected_rank_bytes(variant).nominal
    for r in range(variant.tp if ranks is None else ranks):
        sparse_file(path / f"rank{r}.engine", size)
    if tokenizer:
        copy_tokenizer(path)
    return path


def copy_tokenizer(dst: Path) -> None:
    src = bundled_qwen3_tokenizer_dir()
    for f in src.iterdir():
        if f.is_file():
            shutil.copyfile(f, dst / f.name)


def make_hf_checkpoint(path: Path, quant_config: dict[str, Any] | None) -> Path:
    """A HF checkpoint dir: config.json, real Qwen3 tokenizer files, optional hf_quant_config."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(HF_QWEN3_CONFIG))
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": [151645, 151643]}))
    if quant_config is not None:
        (path / "hf_quant_config.json").write_text(json.dumps(quant_config))
    sparse_file(path / "model-00001-of-00001.safetensors", 1024)
    copy_tokenizer(path)
    return path


def tree(path: Path) -> list[str]:
    return sorted(os.listdir(path))
