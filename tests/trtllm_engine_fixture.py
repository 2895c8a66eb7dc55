"""Engine directories as trtllm-build 1.1.x writes them, for given trtllm-build flags.

Not typed by hand: ``engine_config`` starts from TensorRT-LLM's own defaults and applies the
flags the way trtllm-build does, so a test builds its engine config from the same argv
``trtllm_stack.engine.build.trtllm_build_args`` produces (or from today's argv, to show what
an engine built without --max_input_len looks like).

Sources (NVIDIA/TensorRT-LLM, the stored 1.x copies read for this: builder.py and
commands/build.py at 008b2b8d, plugin/plugin.py of the NVFP4 era):
- config.json = ``EngineConfig.to_dict()`` (builder.py): {"version", "pretrained_config",
  "build_config"}; ``build_config`` is ``BuildConfig.to_dict()`` without "dry_run" and
  "visualize_network" ("Not an Engine Characteristic"), ``kv_cache_type`` by enum name.
- ``BUILD_CONFIG_DEFAULTS``: the ``@dataclass class BuildConfig`` field defaults.
- ``PLUGIN_CONFIG_DEFAULTS``: ``PluginConfig`` (plugin.py) field defaults; ``to_dict`` strips
  the leading "_" of each storage name. trtllm-build exposes the ``cli_plugin_args`` subset;
  "enable"/"disable" become True/False, "disable" on a dtype option becomes None
  (``PluginConfig.update_from_dict``).
- builder.py ``build()`` then sets plugin_config.dtype to the model dtype,
  ``update_kv_cache_type`` makes kv_cache_type PAGED with paged_kv_cache True, and
  ``_init_max_seq_len`` clips max_input_len to max_seq_len (deducing max_seq_len from
  max_position_embeddings when not given); with an FP8 KV cache and paged context FMHA it
  turns use_fp8_context_fmha on.
Not reproduced (their contents were not read): lora_config, auto_parallel_config and the
model-specific keys of pretrained_config beyond the ones below.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# builder.py @dataclass class BuildConfig (scalar fields, in declaration order).
BUILD_CONFIG_DEFAULTS: dict[str, Any] = {
    "max_input_len": 1024,
    "max_seq_len": None,
    "opt_batch_size": 8,
    "max_batch_size": 2048,
    "max_beam_width": 1,
    "max_num_tokens": 8192,
    "opt_num_tokens": None,
    "max_prompt_embedding_table_size": 0,
    "kv_cache_type": None,
    "gather_context_logits": False,
    "gather_generation_logits": False,
    "strongly_typed": True,
    "force_num_profiles": None,
    "profiling_verbosity": "layer_names_only",
    "enable_debug_output": False,
    "max_draft_len": 0,
    "speculative_decoding_mode": 1,  # SpeculativeDecodingMode.NONE (an IntFlag)
    "use_refit": False,
    "input_timing_cache": None,
    "output_timing_cache": "model.cache",
    "weight_sparsity": False,
    "weight_streaming": False,
    "use_strip_plan": False,
    "max_encoder_input_len": 1024,
    "monitor_memory": False,
    "use_mrope": False,
}

# plugin/plugin.py class PluginConfig storage fields (leading "_" stripped as to_dict does).
PLUGIN_CONFIG_DEFAULTS: dict[str, Any] = {
    "dtype": "float16",
    "bert_attention_plugin": "auto",
    "gpt_attention_plugin": "auto",
    "gemm_plugin": None,
    "explicitly_disable_gemm_plugin": False,
    "gemm_swiglu_plugin": None,
    "fp8_rowwise_gemm_plugin": None,
    "qserve_gemm_plugin": None,
    "identity_plugin": None,
    "nccl_plugin": "auto",
    "lora_plugin": None,
    "dora_plugin": False,
    "weight_only_groupwise_quant_matmul_plugin": None,
    "weight_only_quant_matmul_plugin": None,
    "smooth_quant_plugins": True,
    "smooth_quant_gemm_plugin": None,
    "layernorm_quantization_plugin": None,
    "rmsnorm_quantization_plugin": None,
    "quantize_per_token_plugin": False,
    "quantize_tensor_plugin": False,
    "moe_plugin": "auto",
    "mamba_conv1d_plugin": "auto",
    "low_latency_gemm_plugin": None,
    "low_latency_gemm_swiglu_plugin": None,
    "gemm_allreduce_plugin": None,
    "context_fmha": True,
    "bert_context_fmha_fp32_acc": False,
    "paged_kv_cache": None,
    "remove_input_padding": True,
    "norm_quant_fusion": False,
    "reduce_fusion": False,
    "user_buffer": False,
    "tokens_per_block": 32,
    "use_paged_context_fmha": True,
    "use_fp8_context_fmha": True,
    "fuse_fp4_quant": False,
    "multiple_profiles": False,
    "paged_state": True,
    "streamingllm": False,
    "manage_weights": False,
    "use_fused_mlp": True,
    "pp_reduce_scatter": False,
}

# Flags of commands/build.py parse_arguments that set BuildConfig fields directly.
_INT_FLAGS = ("max_batch_size", "max_input_len", "max_seq_len", "max_num_tokens", "max_beam_width")
# Flags that do not describe the engine (paths, parallel workers, logging).
_NON_CONFIG_FLAGS = ("checkpoint_dir", "output_dir", "workers", "log_level", "model_config")


def parse_build_argv(argv: list[str]) -> dict[str, str]:
    """``--key value`` / ``--key=value`` pairs of a trtllm-build argv (no positional args)."""
    flags: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        assert arg.startswith("--"), f"unexpected trtllm-build argument {arg!r}"
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
            i += 1
        else:
            key, value = arg[2:], argv[i + 1]
            i += 2
        flags[key] = value
    return flags


def engine_config(
    argv: list[str],
    *,
    world_size: int,
    quant_algo: str | None,
    kv_cache_quant_algo: str | None = "FP8",
    version: str = "1.1.0",
    architecture: str = "Qwen3ForCausalLM",
    dtype: str = "bfloat16",
    vocab_size: int = 151936,
    hidden_size: int = 5120,
    num_hidden_layers: int = 64,
    max_position_embeddings: int = 40960,
    logits_dtype: str = "float32",  # PretrainedConfig's default (models/modeling_utils.py)
) -> dict[str, Any]:
    """config.json of an engine built by ``trtllm-build <argv>`` from a Qwen3 checkpoint."""
    flags = parse_build_argv(argv)
    build = dict(BUILD_CONFIG_DEFAULTS)
    plugin = dict(PLUGIN_CONFIG_DEFAULTS)
    for key, value in flags.items():
        if key in _NON_CONFIG_FLAGS:
            continue
        if key in _INT_FLAGS:
            build[key] = int(value)
        elif key == "kv_cache_type":
            build["kv_cache_type"] = value.upper()
        elif key in plugin:
            default = PLUGIN_CONFIG_DEFAULTS[key]
            if isinstance(default, bool):
                assert value in ("enable", "disable"), (key, value)
                plugin[key] = value == "enable"
            elif key == "tokens_per_block":
                plugin[key] = int(value)
            else:
                plugin[key] = None if value == "disable" else value
                if key == "gemm_plugin" and value == "disable":
                    plugin["explicitly_disable_gemm_plugin"] = True
        else:
            raise AssertionError(f"trtllm-build flag --{key} is not modelled by this fixture")
    # build(): plugin dtype follows the model; update_kv_cache_type defaults to PAGED.
    plugin["dtype"] = dtype
    if build["kv_cache_type"] is None:
        build["kv_cache_type"] = "PAGED"
    plugin["paged_kv_cache"] = build["kv_cache_type"] == "PAGED"
    if plugin["gemm_plugin"] == "auto":
        plugin["gemm_plugin"] = dtype  # the property resolves "auto" to dtype
    if quant_algo == "NVFP4" and not plugin["explicitly_disable_gemm_plugin"]:
        plugin["gemm_plugin"] = "nvfp4"
    # _init_max_seq_len: deduce from max_position_embeddings, clip max_input_len.
    if build["max_seq_len"] is None:
        build["max_seq_len"] = max_position_embeddings
    build["max_input_len"] = min(build["max_input_len"], build["max_seq_len"])
    # Paged context FMHA with an FP8 KV cache needs FP8 context FMHA; off without FP8 KV.
    if plugin["use_paged_context_fmha"]:
        plugin["use_fp8_context_fmha"] = kv_cache_quant_algo == "FP8"
    build["plugin_config"] = plugin
    return {
        "version": version,
        "pretrained_config": {
            "architecture": architecture,
            "dtype": dtype,
            "vocab_size": vocab_size,
            "logits_dtype": logits_dtype,
            "hidden_size": hidden_size,
            "num_hidden_layers": num_hidden_layers,
            "max_position_embeddings": max_position_embeddings,
            "quantization": {
                "quant_algo": quant_algo,
                "kv_cache_quant_algo": kv_cache_quant_algo if quant_algo else None,
                "group_size": 16 if quant_algo == "NVFP4" else 128,
                "exclude_modules": ["lm_head"] if quant_algo else None,
            },
            "mapping": {
                "world_size": world_size,
                "tp_size": world_size,
                "pp_size": 1,
                "cp_size": 1,
                "gpus_per_node": 8,
            },
        },
        "build_config": build,
    }


def today_argv(max_batch_size: int, max_seq_len: int, max_num_tokens: int, tp: int) -> list[str]:
    """The argv engine/build.py produced before --max_input_len was passed (issue 13)."""
    return [
        "--checkpoint_dir", "/ckpt", "--output_dir", "/out", "--workers", str(tp),
        "--kv_cache_type", "paged", "--use_paged_context_fmha", "enable",
        "--gemm_plugin", "auto",
        "--max_batch_size", str(max_batch_size), "--max_num_tokens", str(max_num_tokens),
        "--max_seq_len", str(max_seq_len),
    ]  # fmt: skip


def write_engine_dir(path: Path, config: dict[str, Any], *, rank_bytes: int = 0) -> Path:
    """config.json + sparse rank files (``Engine.save`` writes rank{k}.engine per rank)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config, indent=4), encoding="utf-8")
    for rank in range(config["pretrained_config"]["mapping"]["world_size"]):
        with open(path / f"rank{rank}.engine", "wb") as f:
            f.truncate(rank_bytes)
    return path
