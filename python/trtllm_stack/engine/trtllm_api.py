"""The only module that touches TensorRT-LLM. Imported lazily; nothing here runs without a GPU.

None of these calls could be run where this was written (no GPU, no tensorrt_llm wheel).
Each call and flag was checked against TensorRT-LLM's Python source (NVIDIA/TensorRT-LLM,
versions 1.x around the pinned 1.1.0; the file and function are cited at each call). The
pinned version itself is checked at run time by :func:`require_version`.

Tests replace :func:`convert_rank`, :func:`quantize_with_modelopt` and :func:`run_trtllm_build`
with fakes.
"""

from __future__ import annotations

import gc
import subprocess
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from trtllm_stack.engine.quant import QuantSpec
from trtllm_stack.errors import UserError


def installed_version() -> str | None:
    """TensorRT-LLM's version from package metadata, without importing it (importing is slow)."""
    try:
        return metadata.version("tensorrt_llm")
    except metadata.PackageNotFoundError:
        return None


def same_release(found: str, expected: str) -> bool:
    """``1.1.0`` matches ``1.1.0`` and a local build tag such as ``1.1.0+cu13`` (PEP 440)."""
    return found.split("+", 1)[0] == expected


def require_version(expected: str) -> str:
    found = installed_version()
    if found is None:
        raise UserError(
            f"TensorRT-LLM is not installed; the engine build needs tensorrt-llm=={expected}"
            " (pip install 'trtllm-stack[build]' on a machine with an NVIDIA GPU)"
        )
    if not same_release(found, expected):
        raise UserError(
            f"TensorRT-LLM {found} is installed but the server runs {expected}"
            " (variants.toml [runtime].tensorrt_llm_version): an engine only loads in the"
            f" version that built it; install tensorrt-llm=={expected}"
        )
    return found


def convert_rank(
    model_dir: Path,
    checkpoint_out: Path,
    *,
    architecture: str,
    tp: int,
    rank: int,
    quant: QuantSpec,
) -> None:
    """Convert one tensor-parallel rank of a HF checkpoint into a TensorRT-LLM checkpoint.

    Writes ``rank{rank}.safetensors`` (and ``config.json`` for rank 0) into ``checkpoint_out``.
    """
    # tensorrt_llm/mapping.py: Mapping(world_size=1, rank=0, gpus_per_node=8, *, tp_size, ...)
    from tensorrt_llm.mapping import Mapping

    # tensorrt_llm/models/__init__.py: MODEL_MAP maps 'Qwen3ForCausalLM' -> QWenForCausalLM.
    from tensorrt_llm.models import MODEL_MAP

    # tensorrt_llm/models/modeling_utils.py: QuantConfig(quant_algo, kv_cache_quant_algo,
    # group_size, ..., exclude_modules); passing it is what keeps the engine quantized.
    from tensorrt_llm.models.modeling_utils import QuantConfig

    # tensorrt_llm/quantization/mode.py: QuantAlgo is a string enum; QuantAlgo("NVFP4") etc.
    from tensorrt_llm.quantization import QuantAlgo

    model_cls = MODEL_MAP.get(architecture)
    if model_cls is None:
        raise UserError(f"TensorRT-LLM has no model class for architecture {architecture!r}")
    quant_kwargs: dict[str, object] = {
        "quant_algo": QuantAlgo(quant.quant_algo),
        "kv_cache_quant_algo": (
            QuantAlgo(quant.kv_cache_quant_algo) if quant.kv_cache_quant_algo else None
        ),
        "exclude_modules": list(quant.exclude_modules) or None,
    }
    if quant.group_size is not None:
        quant_kwargs["group_size"] = quant.group_size
    quant_config = QuantConfig(**quant_kwargs)
    mapping = Mapping(world_size=tp, rank=rank, tp_size=tp, pp_size=1)
    # tensorrt_llm/models/qwen/model.py: QWenForCausalLM.from_hugging_face(hf_model_or_dir,
    # dtype='auto', mapping=None, quant_config=None, **kwargs); dtype 'auto' takes the
    # checkpoint's torch_dtype (bfloat16 for the unquantized parts).
    model = model_cls.from_hugging_face(
        str(model_dir), dtype="auto", mapping=mapping, quant_config=quant_config
    )
    # tensorrt_llm/models/modeling_utils.py: PretrainedModel.save_checkpoint(output_dir,
    # save_config=True) writes rank{rank}.safetensors and config.json; ranks share one config.
    model.save_checkpoint(str(checkpoint_out), save_config=(rank == 0))
    del model
    gc.collect()


# Calibration settings of the FP8 build: the defaults of TensorRT-LLM's own
# examples/quantization/quantize.py argparse (--calib_dataset cnn_dailymail, --calib_size 512,
# --batch_size 1, --calib_max_seq_length 512, --tokenizer_max_seq_length 2048, --seed 1234,
# --awq_block_size 128, --device cuda, --device_map auto), which that script passes on to
# quantize_and_export. cnn_dailymail is fetched from the Hugging Face hub by
# quantize_by_modelopt.get_calib_dataloader.
MODELOPT_CALIBRATION: dict[str, object] = {
    "device": "cuda",
    "device_map": "auto",
    "dtype": "auto",
    "calib_dataset": "cnn_dailymail",
    "calib_size": 512,
    "batch_size": 1,
    "calib_max_seq_length": 512,
    "tokenizer_max_seq_length": 2048,
    "awq_block_size": 128,
    "seed": 1234,
}


def quantize_with_modelopt(
    model_dir: Path,
    checkpoint_out: Path,
    *,
    tp: int,
    qformat: str,
    kv_cache_dtype: str | None,
) -> None:
    """Calibrate and quantize a BF16 HF checkpoint with ModelOpt and write a TensorRT-LLM
    checkpoint for all ``tp`` ranks (config.json + rank{k}.safetensors).

    tensorrt_llm/quantization/quantize_by_modelopt.py: ``quantize_and_export(*, model_dir,
    device, calib_dataset, dtype, qformat, kv_cache_dtype, calib_size, batch_size,
    calib_max_seq_length, awq_block_size, output_dir, tp_size, pp_size, cp_size, seed,
    tokenizer_max_seq_length, ..., device_map="auto", quantize_lm_head=False)``, the function
    examples/quantization/quantize.py calls.
    """
    from tensorrt_llm.quantization.quantize_by_modelopt import quantize_and_export

    quantize_and_export(
        model_dir=str(model_dir),
        qformat=qformat,
        kv_cache_dtype=kv_cache_dtype,
        output_dir=str(checkpoint_out),
        tp_size=tp,
        pp_size=1,
        cp_size=1,
        **MODELOPT_CALIBRATION,
    )
    gc.collect()


def trtllm_build_command(args: list[str]) -> list[str]:
    """``trtllm-build`` with the interpreter that has the checked TensorRT-LLM installed.

    tensorrt_llm/commands/build.py: ``main()`` is the ``trtllm-build`` console script and the
    module runs it under ``__main__``; using ``python -m`` avoids a different one on PATH.
    """
    return [sys.executable, "-m", "tensorrt_llm.commands.build", *args]


def run_trtllm_build(args: list[str], log: Callable[[str], None]) -> None:
    """Run trtllm-build to completion, streaming its output; a non-zero exit is an error."""
    cmd = trtllm_build_command(args)
    tail: list[str] = []
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            log(line)
            tail = [*tail[-19:], line]
        code = proc.wait()
    if code != 0:
        last = next((t for t in reversed(tail) if t.strip()), "")
        raise UserError(f"trtllm-build exited with status {code}; last output: {last[:300]}")
