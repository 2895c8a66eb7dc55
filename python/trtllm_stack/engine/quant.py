"""Read a pre-quantized checkpoint's ``hf_quant_config.json`` into a plain :class:`QuantSpec`.

The seeds' garbage engines were built *unquantized* because the conversion was not told the
checkpoint's quantization. Here the quantization always comes from the checkpoint's own
ModelOpt file and must match the variant; anything we do not understand stops the build.

File layout (ModelOpt export; TensorRT-LLM reads the same file in
``tensorrt_llm/llmapi/llm_utils.py`` ``ModelLoader._update_from_hf_quant_config``)::

    {"producer": {...},
     "quantization": {"quant_algo": "NVFP4", "kv_cache_quant_algo": "FP8",
                      "group_size": 16, "exclude_modules": ["lm_head"]}}
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from trtllm_stack.errors import UserError

QUANT_CONFIG_FILE = "hf_quant_config.json"
# Weight algorithms this project builds engines for (variants.toml quantizations).
KNOWN_QUANT_ALGOS = ("NVFP4", "FP8")
# KV-cache algorithms TensorRT-LLM accepts for pre-quantized checkpoints
# (same function as above: only FP8 or NVFP4, or none).
KNOWN_KV_CACHE_ALGOS = ("FP8", "NVFP4")
# NVFP4 is defined with 16-element blocks sharing one FP8 scale.
NVFP4_GROUP_SIZE = 16


@dataclass(frozen=True)
class QuantSpec:
    quant_algo: str
    kv_cache_quant_algo: str | None
    group_size: int | None
    exclude_modules: tuple[str, ...]
    source: str

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["exclude_modules"] = list(self.exclude_modules)
        return d


def _fail(path: Path, what: str) -> UserError:
    return UserError(f"{path}: {what}")


def read_quant_config(checkpoint_dir: Path) -> QuantSpec:
    """Parse ``<checkpoint_dir>/hf_quant_config.json``; every error names the file and the value."""
    path = Path(checkpoint_dir) / QUANT_CONFIG_FILE
    if not path.is_file():
        raise _fail(path, _missing_reason(Path(checkpoint_dir)))
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(path, f"cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise _fail(path, f"not valid JSON: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("quantization"), dict):
        found = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise _fail(path, f"expected an object with a 'quantization' object, found {found}")
    q = raw["quantization"]

    algo = q.get("quant_algo")
    if algo not in KNOWN_QUANT_ALGOS:
        raise _fail(
            path,
            f"quantization.quant_algo is {algo!r}; known: {', '.join(KNOWN_QUANT_ALGOS)}",
        )
    kv = q.get("kv_cache_quant_algo")
    if kv is not None and kv not in KNOWN_KV_CACHE_ALGOS:
        raise _fail(
            path,
            f"quantization.kv_cache_quant_algo is {kv!r}; expected one of"
            f" {', '.join(KNOWN_KV_CACHE_ALGOS)} or null",
        )
    group_size = q.get("group_size")
    if group_size is not None and (
        not isinstance(group_size, int) or isinstance(group_size, bool) or group_size <= 0
    ):
        raise _fail(path, f"quantization.group_size is {group_size!r}; expected a positive integer")
    if algo == "NVFP4":
        if group_size is None:
            group_size = NVFP4_GROUP_SIZE
        elif group_size != NVFP4_GROUP_SIZE:
            raise _fail(
                path,
                f"quantization.group_size is {group_size} for NVFP4; NVFP4 uses {NVFP4_GROUP_SIZE}",
            )
    exclude = q.get("exclude_modules") or []
    if not isinstance(exclude, list) or not all(isinstance(m, str) for m in exclude):
        raise _fail(path, f"quantization.exclude_modules is {exclude!r}; expected strings")
    return QuantSpec(
        quant_algo=algo,
        kv_cache_quant_algo=kv,
        group_size=group_size,
        exclude_modules=tuple(exclude),
        source=str(path),
    )


def _missing_reason(checkpoint_dir: Path) -> str:
    """Say what the directory has instead, so a wrong checkpoint is recognisable."""
    config = checkpoint_dir / "config.json"
    if not checkpoint_dir.is_dir():
        return "checkpoint directory does not exist"
    if config.is_file():
        try:
            hf = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            hf = {}
        qc = hf.get("quantization_config") if isinstance(hf, dict) else None
        if isinstance(qc, dict):
            method = qc.get("quant_method")
            detail = f"quant_method={method!r}"
            if qc.get("weight_block_size"):
                detail += f", weight_block_size={qc['weight_block_size']}"
            return (
                f"missing; config.json has a quantization_config ({detail}), a format the"
                " TensorRT engine path does not convert: use the NVIDIA ModelOpt checkpoint"
                " (it ships hf_quant_config.json)"
            )
        return (
            "missing; the checkpoint looks unquantized (config.json has no quantization_config)"
            " and would build a bf16 engine: use the NVIDIA ModelOpt pre-quantized checkpoint"
        )
    return "missing, and there is no config.json either: not a Hugging Face checkpoint"


# What examples/quantization/quantize.py --qformat fp8 --kv_cache_dtype fp8 exports: per-tensor
# FP8 weights and activations, FP8 KV cache, lm_head left unquantized (quantize_lm_head=False).
MODELOPT_FP8_SPEC = QuantSpec(
    quant_algo="FP8",
    kv_cache_quant_algo="FP8",
    group_size=None,
    exclude_modules=("lm_head",),
    source="ModelOpt FP8 calibration of the BF16 checkpoint (quantize_and_export)",
)


def with_kv_cache(spec: QuantSpec, kv_cache_quant: str) -> QuantSpec:
    """``checkpoint`` keeps the checkpoint's KV-cache algorithm; ``none`` builds a BF16 KV cache
    (twice the memory per token; the switch for builds where FP8 KV fails, see docs/engine.md)."""
    if kv_cache_quant == "checkpoint":
        return spec
    if kv_cache_quant == "none":
        return QuantSpec(
            quant_algo=spec.quant_algo,
            kv_cache_quant_algo=None,
            group_size=spec.group_size,
            exclude_modules=spec.exclude_modules,
            source=f"{spec.source} (KV cache overridden to BF16 by --kv-cache-quant none)",
        )
    raise UserError(f"--kv-cache-quant must be 'checkpoint' or 'none', got {kv_cache_quant!r}")


def check_matches_variant(spec: QuantSpec, quantization: str) -> None:
    if spec.quant_algo != quantization:
        raise UserError(
            f"{spec.source}: quant_algo is {spec.quant_algo!r} but the variant is"
            f" {quantization}: wrong checkpoint for this variant"
        )
