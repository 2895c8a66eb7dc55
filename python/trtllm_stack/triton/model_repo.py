"""Triton model repository from our templates (``trtllm-stack model-repo``).

Models: ``tensorrt_llm`` (the TensorRT-LLM backend on a GPU, or the scripted CPU engine),
``preprocessing`` and ``postprocessing`` (our Python models: tokenize; incremental, UTF-8 safe
detokenization) and ``ensemble`` (text in, text out on Triton's HTTP generate endpoints).
Fill-template semantics as TensorRT-LLM's tools/fill_template.py, but strict: every
``${key}`` must be filled or nothing is written. The repository is written to a temp dir
next to the target and renamed into place.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from trtllm_stack.errors import UserError
from trtllm_stack.triton import tensors as T
from trtllm_stack.triton import tokenizer_info
from trtllm_stack.variants import Variant

_PLACEHOLDER = re.compile(r"\$\{(\w+)\}")

# Defaults as TensorRT-LLM's deployment guides use them for inflight batching + streaming.
ENGINE_DEFAULTS: dict[str, str] = {
    "batching_strategy": "inflight_fused_batching",
    "batch_scheduler_policy": "max_utilization",
    "decoupled_mode": "true",
    "kv_cache_free_gpu_mem_fraction": "0.9",
    "exclude_input_in_output": "true",
    # Prefix reuse on (vLLM, SGLang and trtllm-serve reuse cached prefixes by default; the
    # backend itself defaults to true when the parameter is absent: tensorrtllm_backend c2e65b8
    # inflight_batcher_llm/src/model_instance_state.cc:167-176). Needs paged KV + paged
    # context FMHA in the engine (checked in render_repository); memory: docs/engine.md.
    "enable_kv_cache_reuse": "true",
    # "requires building the model with use_paged_context_fmha" (same file, 521-533).
    "enable_chunked_context": "true",
    "logits_datatype": "TYPE_FP32",
    "encoder_input_features_data_type": "TYPE_FP16",
    "prompt_embedding_table_data_type": "TYPE_FP16",
    "max_beam_width": "1",
    "max_queue_delay_microseconds": "0",
    "max_queue_size": "0",
    "normalize_log_probs": "true",
    "cancellation_check_period_ms": "100",
    "stats_check_period_ms": "100",
    # XGrammar is the one guided-decoding backend of the C++ backend (model_instance_state.cc,
    # getGuidedDecodingConfigFromParams); "" turns guided decoding off.
    "guided_decoding_backend": "xgrammar",
}


@dataclass
class ScriptedEngineOptions:
    """Knobs of the scripted CPU engine (tests and the no-GPU demo)."""

    token_delay_ms: float = 0.0
    default_reply_tokens: int = 200
    event_log: Path | None = None
    # Requests generating at once (the rest queue); default: the repository's batch size,
    # which for a variant is its max_batch_size, as the real executor's capacity.
    batch_slots: int | None = None


@dataclass
class RepoOptions:
    triton_max_batch_size: int = 64
    max_input_len: int | None = None
    max_seq_len: int | None = None
    # None: the variant's kv_cache_reuse (default on); False: `model-repo --no-kv-cache-reuse`.
    kv_cache_reuse: bool | None = None
    # The scripted engine's vocabulary size (a real engine's comes from its config.json);
    # None: the variant's, else the tokenizer's.
    vocab_size: int | None = None
    overrides: dict[str, str] = field(default_factory=dict)


def fill_template(template: str, values: dict[str, str], where: str) -> str:
    """Replace every ``${key}``; a key without a value is an error naming it."""
    missing = sorted({k for k in _PLACEHOLDER.findall(template) if k not in values})
    if missing:
        raise UserError(f"{where}: no value for template key(s): {', '.join(missing)}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def _pbtxt_string(value: str) -> str:
    return json.dumps(value)[1:-1]  # escapes quotes and backslashes as protobuf text does


def _parameter(key: str, value: str) -> str:
    value = _pbtxt_string(value)
    return f'parameters: {{\n  key: "{key}"\n  value: {{\n    string_value: "{value}"\n  }}\n}}'


def read_engine_config(engine_dir: Path) -> dict[str, Any]:
    path = engine_dir / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{engine_dir} is not a TensorRT-LLM engine: no config.json") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or "build_config" not in data:
        raise UserError(
            f"{path} is not a TensorRT-LLM engine config (no build_config); was a Hugging Face"
            " config.json copied over it?"
        )
    return data


@dataclass(frozen=True)
class EngineLimits:
    max_input_len: int | None
    max_seq_len: int | None
    max_batch_size: int | None
    # None where config.json does not say (hand-written configs in old tests).
    paged_context_fmha: bool | None
    # Length an embedding_bias must have; None if config.json does not say or the engine's
    # logits cannot take an FP32 bias.
    bias_vocab_size: int | None = None


# The executor takes an FP32 embedding_bias for FP32 logits as is and converts it for FP16
# logits; any other logits dtype fails the request ("Embedding bias data type must be same as
# model logits type.", cpp/tensorrt_llm/batch_manager/createNewDecoderRequests.cpp
# getEmbeddingBias). TensorRT-LLM's default logits_dtype is float32
# (tensorrt_llm/models/modeling_utils.py PretrainedConfig).
_FP32_BIAS_LOGITS = ("float32", "float16")


def _bias_vocab_size(config: dict[str, Any]) -> int | None:
    """The executor checks the bias length against ModelConfig::getVocabSize(), which
    cpp/tensorrt_llm/runtime/gptJsonConfig.cpp reads from pretrained_config's vocab_size
    (createNewDecoderRequests.cpp initializeEmbeddingBias: "Expected last dimension to be
    same as vocab size")."""
    pretrained = config.get("pretrained_config")
    if not isinstance(pretrained, dict):
        return None
    vocab = pretrained.get("vocab_size")
    if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab <= 0:
        return None
    if pretrained.get("logits_dtype", "float32") not in _FP32_BIAS_LOGITS:
        return None
    return vocab


def _engine_limits(engine_dir: Path, chunked_context: bool) -> EngineLimits:
    """The limits the C++ runtime will apply to this engine.

    max input length as cpp/tensorrt_llm/batch_manager/trtGptModelInflightBatching.cpp sets
    it: with chunked context ``maxSequenceLen - 1``; else with context FMHA and packed input
    (remove_input_padding) ``min(maxSequenceLen - 1, maxNumTokens)``; else build_config's
    max_input_len. That is what the executor checks (LlmRequest::validate), so it is what the
    preprocessing model and the proxy check too.
    """
    config = read_engine_config(engine_dir)
    build = config.get("build_config", {})
    plugin = build.get("plugin_config")
    plugin = plugin if isinstance(plugin, dict) else {}

    def get(key: str) -> int | None:
        value = build.get(key)
        return int(value) if isinstance(value, int) and not isinstance(value, bool) else None

    def flag(key: str) -> bool | None:
        value = plugin.get(key)
        return value if isinstance(value, bool) else None

    max_seq, max_tokens, built_input = (
        get("max_seq_len"),
        get("max_num_tokens"),
        get("max_input_len"),
    )
    runtime_input = built_input
    if max_seq is not None:
        packed_fmha = (
            flag("context_fmha") is not False and flag("remove_input_padding") is not False
        )
        if chunked_context:
            runtime_input = max_seq - 1
        elif packed_fmha and max_tokens is not None:
            runtime_input = min(max_seq - 1, max_tokens)
    paged = flag("use_paged_context_fmha")
    if paged is not None and flag("paged_kv_cache") is False:
        paged = False
    return EngineLimits(
        runtime_input, max_seq, get("max_batch_size"), paged, _bias_vocab_size(config)
    )


def _templates() -> Any:
    return resources.files("trtllm_stack.triton").joinpath("templates")


def _models() -> Any:
    return resources.files("trtllm_stack.triton").joinpath("models")


def render_repository(
    *,
    engine: str | Path,
    tokenizer_dir: Path,
    variant: Variant | None = None,
    scripted: ScriptedEngineOptions | None = None,
    options: RepoOptions | None = None,
    repo_dir: Path | None = None,
    stub_env: Path | None = None,
) -> dict[str, str]:
    """All files of the repository as {relative path: text}; no I/O besides reading inputs.

    ``repo_dir`` is where the repository will live: the backend wants the XGrammar tokenizer
    info by absolute path, so without it guided decoding is left off.
    ``stub_env``: the Python execution environment (triton/python_env.py) every Python
    model's stub runs in, as its ``EXECUTION_ENV_PATH`` parameter.
    """
    options = options or RepoOptions()
    is_scripted = str(engine) == "scripted"
    max_input = options.max_input_len
    max_seq = options.max_seq_len
    batch = options.triton_max_batch_size
    if variant is not None:
        max_seq = max_seq or variant.max_seq_len
        max_input = max_input or variant.max_input_len
        batch = variant.max_batch_size
    reuse = options.kv_cache_reuse
    if reuse is None:
        reuse = variant.kv_cache_reuse if variant is not None else True
    chunked = (
        options.overrides.get("enable_chunked_context", ENGINE_DEFAULTS["enable_chunked_context"])
        == "true"
    )
    vocab_size = options.vocab_size or (variant.model.vocab_size if variant is not None else None)
    if not is_scripted:
        engine_dir = Path(engine)
        limits = _engine_limits(engine_dir, chunked)
        vocab_size = limits.bias_vocab_size
        max_input = options.max_input_len or limits.max_input_len or max_input
        max_seq = options.max_seq_len or limits.max_seq_len or max_seq
        batch = limits.max_batch_size or batch
        if reuse and limits.paged_context_fmha is False:
            raise UserError(
                f"{engine_dir}: KV-cache reuse needs an engine built with paged KV cache and"
                " --use_paged_context_fmha enable (this one has it off): rebuild with"
                " build-engine, or pass --no-kv-cache-reuse"
            )
    max_seq = max_seq or 16384
    max_input = max_input or max_seq - 1
    if is_scripted and vocab_size is None:
        vocab_size = tokenizer_info.vocab_size(Path(tokenizer_dir))

    values = dict(ENGINE_DEFAULTS)
    values.update(
        triton_max_batch_size=str(batch),
        tokenizer_dir=_pbtxt_string(str(tokenizer_dir)),
        max_input_len=str(max_input),
        max_seq_len=str(max_seq),
        vocab_size=str(vocab_size or ""),
        enable_kv_cache_reuse="true" if reuse else "false",
    )
    values.update(options.overrides)
    files: dict[str, str] = {}
    info_rel = f"{T.ENGINE_MODEL}/{tokenizer_info.FILE_NAME}"
    if repo_dir is not None and values["guided_decoding_backend"]:
        files[info_rel] = tokenizer_info.xgrammar_tokenizer_info(Path(tokenizer_dir))
        values["xgrammar_tokenizer_info_path"] = _pbtxt_string(str(Path(repo_dir) / info_rel))
    else:
        values["guided_decoding_backend"] = ""
        values["xgrammar_tokenizer_info_path"] = ""
    if is_scripted:
        s = scripted or ScriptedEngineOptions()
        values.update(triton_backend="python", engine_dir="scripted")
        values["extra_parameters"] = "\n".join(
            [
                _parameter("scripted_token_delay_ms", str(s.token_delay_ms)),
                _parameter("scripted_default_reply_tokens", str(s.default_reply_tokens)),
                _parameter("scripted_event_log", str(s.event_log or "")),
                _parameter("scripted_batch_slots", str(s.batch_slots or batch)),
            ]
        )
        files["tensorrt_llm/1/model.py"] = (
            _models().joinpath("scripted_engine", "model.py").read_text(encoding="utf-8")
        )
    else:
        values.update(triton_backend="tensorrtllm", engine_dir=_pbtxt_string(str(engine)))
        values.setdefault("extra_parameters", "")
        files["tensorrt_llm/1/.keep"] = ""
    tpl = _templates()
    files["tensorrt_llm/config.pbtxt"] = fill_template(
        tpl.joinpath("tensorrt_llm.pbtxt").read_text(encoding="utf-8"), values, "tensorrt_llm"
    )
    for name in (T.PREPROCESSING_MODEL, T.POSTPROCESSING_MODEL, T.ENSEMBLE_MODEL):
        files[f"{name}/config.pbtxt"] = fill_template(
            tpl.joinpath(f"{name}.pbtxt").read_text(encoding="utf-8"), values, name
        )
    for name in (T.PREPROCESSING_MODEL, T.POSTPROCESSING_MODEL):
        files[f"{name}/1/model.py"] = (
            _models().joinpath(name, "model.py").read_text(encoding="utf-8")
        )
    files[f"{T.ENSEMBLE_MODEL}/1/.keep"] = ""
    if stub_env is not None:
        python_models = [T.PREPROCESSING_MODEL, T.POSTPROCESSING_MODEL]
        if is_scripted:
            python_models.append(T.ENGINE_MODEL)
        for name in python_models:
            # python_backend src/python_be.cc reads EXECUTION_ENV_PATH from the model's
            # parameters; a top-level repeated field may come last in protobuf text.
            files[f"{name}/config.pbtxt"] += "\n" + _parameter("EXECUTION_ENV_PATH", str(stub_env))
    return files


def write_model_repository(
    out: Path,
    *,
    engine: str | Path,
    tokenizer_dir: Path,
    variant: Variant | None = None,
    scripted: ScriptedEngineOptions | None = None,
    options: RepoOptions | None = None,
    force: bool = False,
    stub_env: Path | None = None,
) -> Path:
    """Write the repository atomically (temp dir + rename); refuse a non-empty target.

    The scripted engine's repository runs every Python model in this interpreter's
    execution environment unless ``stub_env`` names another (triton/python_env.py). A real
    engine's repository gets one only when ``stub_env`` is given: in the NGC image the
    stubs run the image's Python, which the host cannot describe.
    """
    out = Path(out)
    if str(engine) != "scripted" and not Path(engine).is_dir():
        raise UserError(f"engine {str(engine)!r} is neither 'scripted' nor a directory")
    if not (Path(tokenizer_dir) / "tokenizer.json").is_file():
        raise UserError(f"tokenizer directory {tokenizer_dir} has no tokenizer.json")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"{out} is not empty; pass --force to replace it")
    if stub_env is None and str(engine) == "scripted":
        from trtllm_stack.triton.python_env import write_execution_env

        stub_env = write_execution_env()
    files = render_repository(
        engine=engine,
        tokenizer_dir=Path(tokenizer_dir).resolve(),
        variant=variant,
        scripted=scripted,
        options=options,
        repo_dir=out.resolve(),
        stub_env=stub_env,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for rel, text in files.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        os.chmod(tmp, 0o755)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
