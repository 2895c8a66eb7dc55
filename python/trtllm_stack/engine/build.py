"""Build an engine for a variant: one code path for every TP size.

Phases: download -> convert rank k/N -> trtllm-build -> tokenizer + manifest -> verify.
Everything is written into a staging dir next to ``--out`` and renamed onto ``--out`` only
after verification passes, so a broken or half-written engine never lands there.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from trtllm_stack.engine import checkpoint as checkpoint_mod
from trtllm_stack.engine import quant as quant_mod
from trtllm_stack.engine import verify as verify_mod
from trtllm_stack.errors import UserError
from trtllm_stack.tokenizer import TOKENIZER_FILES
from trtllm_stack.variants import Variant, VariantTable

Log = Callable[[str], None]


# gemm_plugin values build-engine accepts (tensorrt_llm/plugin/plugin.py PLUGIN_DTYPE_OPTIONS_MAP
# ["gemm_plugin"], "disable" being None there).
GEMM_PLUGIN_CHOICES = ("disable", "nvfp4", "auto")
KV_CACHE_QUANT_CHOICES = ("checkpoint", "none")


@dataclass(frozen=True)
class BuildOptions:
    """The build recipe's switches; the defaults are the paths TensorRT-LLM's own tests run.

    gemm_plugin "disable": tests/integration/defs/accuracy/test_cli_flow.py
    TestLlama3_3_70BInstruct.test_nvfp4_prequantized_tp4 builds a ModelOpt NVFP4 export with
    ``extra_build_args=["--gemm_plugin=disable"]`` (and test_fp8_prequantized_tp4 passes no
    gemm flag, i.e. the same None default); the ``--gemm_plugin=nvfp4`` variant of that test
    (test_nvfp4_gemm_plugin) is marked skip "Broken by modelopt". Without the flag,
    builder.py ``build()`` turns the nvfp4 plugin on by itself for NVFP4 models ("NVFP4
    quantization detected, by default enabling NVFP4 GEMM plugin"), so we always pass it.
    kv_cache_quant "checkpoint": keep the checkpoint's FP8 KV cache (what the NVFP4 test
    builds); "none" is the switch for FP8 KV builds that fail (open report NVIDIA/TensorRT-LLM
    issue 9298: Qwen3 FP8 + FP8 KV fails in trtllm-build on 1.0.0).
    """

    gemm_plugin: str = "disable"
    kv_cache_quant: str = "checkpoint"

    def __post_init__(self) -> None:
        if self.gemm_plugin not in GEMM_PLUGIN_CHOICES:
            raise UserError(
                f"--gemm-plugin must be one of {', '.join(GEMM_PLUGIN_CHOICES)},"
                f" got {self.gemm_plugin!r}"
            )
        if self.kv_cache_quant not in KV_CACHE_QUANT_CHOICES:
            raise UserError(
                f"--kv-cache-quant must be one of {', '.join(KV_CACHE_QUANT_CHOICES)},"
                f" got {self.kv_cache_quant!r}"
            )


def trtllm_build_args(
    variant: Variant,
    checkpoint_dir: Path,
    output_dir: Path,
    options: BuildOptions | None = None,
) -> list[str]:
    """trtllm-build flags (tensorrt_llm/commands/build.py ``parse_arguments``;
    tensorrt_llm/plugin/plugin.py ``add_plugin_argument`` for the plugin flags).

    Every limit is passed explicitly from the variant table: trtllm-build's defaults are
    ``BuildConfig.max_input_len = 1024``, ``max_seq_len = None`` (deduced from
    max_position_embeddings, 40960 for Qwen3-32B), ``max_batch_size = 2048``,
    ``max_num_tokens = 8192`` (tensorrt_llm/builder.py ``class BuildConfig``), and the 1024
    lands in config.json, which model-repo and every tool that reads the engine take as the
    prompt limit.
    """
    options = options or BuildOptions()
    return [
        "--checkpoint_dir", str(checkpoint_dir),
        "--output_dir", str(output_dir),
        # build.py caps this at torch.cuda.device_count(); one worker per rank.
        "--workers", str(variant.tp),
        "--max_batch_size", str(variant.max_batch_size),
        # max_seq_len - 1: the runtime's own value with chunked context (variants.py
        # Variant.max_input_len). builder.py _init_max_seq_len clips max_input_len to
        # max_seq_len and, with remove_input_padding + context FMHA (both default on), only
        # warns that it "is not required": the packed context is bounded by max_num_tokens
        # and longer prompts run in chunks (enable_chunked_context in the model repository).
        "--max_input_len", str(variant.max_input_len),
        "--max_seq_len", str(variant.max_seq_len),
        # Below max_input_len on purpose: _common.py check_max_num_tokens only raises it to
        # max_input_len when context FMHA is off; with context FMHA + chunked context a
        # 32k prompt runs as 8192-token chunks.
        "--max_num_tokens", str(variant.max_num_tokens),
        # "--paged_kv_cache enable" still parses but is deprecated in favour of this flag.
        "--kv_cache_type", "paged",
        # PluginConfig default is already True in 1.x ("Allow advanced features like KV cache
        # reuse and chunked context"); explicit because both features depend on it.
        "--use_paged_context_fmha", "enable",
        "--gemm_plugin", options.gemm_plugin,
    ]  # fmt: skip


@dataclass
class Progress:
    """Phase lines with elapsed time on stderr; timings go into the manifest."""

    log: Log
    started: float = field(default_factory=time.monotonic)
    timings: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = time.monotonic()
        self.log(f"[build-engine] {name} ... (elapsed {t0 - self.started:.1f}s)")
        yield
        took = time.monotonic() - t0
        self.timings[name] = round(took, 3)
        self.log(f"[build-engine] {name} done in {took:.1f}s")


def copy_tokenizer_files(src: Path, dst: Path) -> list[str]:
    """Copy only tokenizer files; never the checkpoint's config.json (it would replace the
    engine config and the server fails with "key 'builder_config' not found")."""
    copied = []
    for name in TOKENIZER_FILES:
        if name == "config.json":  # defensive: the list must never grow to include it
            continue
        f = src / name
        if f.is_file():
            shutil.copyfile(f, dst / name)
            copied.append(name)
    missing = [n for n in verify_mod.REQUIRED_TOKENIZER_FILES if n not in copied]
    if missing:
        raise UserError(f"checkpoint {src} has no {', '.join(missing)}: cannot ship a tokenizer")
    return copied


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _prepare_out(out: Path) -> Path:
    out = out.expanduser().absolute()
    if out.exists() or out.is_symlink():
        raise UserError(f"--out {out} already exists; remove it or choose another path")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: parent directory {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK):
        raise UserError(f"--out {out}: parent directory {out.parent} is not writable")
    return out


def build_engine(
    table: VariantTable,
    variant: Variant,
    out: Path,
    *,
    checkpoint_dir: Path | None = None,
    revision: str | None = None,
    workdir: Path | None = None,
    api: ModuleType | None = None,
    log: Log = _stderr,
    options: BuildOptions | None = None,
) -> Path:
    """Build, verify, then atomically place the engine at ``out``. Returns ``out``."""
    options = options or BuildOptions()
    if api is None:
        from trtllm_stack.engine import trtllm_api as default_api

        api = default_api
    assert api is not None
    out = _prepare_out(out)
    expected_version = table.runtime.tensorrt_llm_version
    # Fail before a 20 GB download if the wrong TensorRT-LLM is installed.
    trtllm_version = api.require_version(expected_version)

    progress = Progress(log)
    repo = variant.checkpoint.repo
    rev = revision or variant.checkpoint.revision
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    scratch_parent = workdir.expanduser().absolute() if workdir else out.parent
    if not scratch_parent.is_dir():
        shutil.rmtree(staging, ignore_errors=True)
        raise UserError(f"--workdir {scratch_parent}: not a directory")
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.trtllm-ckpt-", dir=scratch_parent))
    try:
        with progress.phase("download"):
            ckpt = checkpoint_mod.resolve_checkpoint(repo, rev, checkpoint_dir)
            log(f"[build-engine] checkpoint {ckpt.path} ({ckpt.source})")
        quantize = _needs_modelopt_quantize(variant, ckpt.path)
        if quantize:
            quant = quant_mod.with_kv_cache(quant_mod.MODELOPT_FP8_SPEC, options.kv_cache_quant)
            with progress.phase(f"quantize {variant.quantization} with ModelOpt"):
                api.quantize_with_modelopt(
                    ckpt.path,
                    scratch,
                    tp=variant.tp,
                    qformat=quant.quant_algo.lower(),
                    kv_cache_dtype=(quant.kv_cache_quant_algo or "").lower() or None,
                )
        else:
            quant = quant_mod.read_quant_config(ckpt.path)
            quant_mod.check_matches_variant(quant, variant.quantization)
            quant = quant_mod.with_kv_cache(quant, options.kv_cache_quant)
            for rank in range(variant.tp):
                with progress.phase(f"convert rank {rank + 1}/{variant.tp}"):
                    api.convert_rank(
                        ckpt.path,
                        scratch,
                        architecture=variant.model.architecture,
                        tp=variant.tp,
                        rank=rank,
                        quant=quant,
                    )

        flags = trtllm_build_args(variant, scratch, staging, options)
        with progress.phase("build"):
            try:
                api.run_trtllm_build(flags, log)
            except UserError as exc:
                if quant.kv_cache_quant_algo == "FP8" and options.kv_cache_quant == "checkpoint":
                    raise UserError(
                        f"{exc}; with an FP8 KV cache this is a known upstream failure for"
                        " Qwen3 (NVIDIA/TensorRT-LLM issue 9298): retry with"
                        " --kv-cache-quant none (BF16 KV cache, twice its memory)"
                    ) from None
                raise

        with progress.phase("tokenizer"):
            copied = copy_tokenizer_files(ckpt.path, staging)

        manifest: dict[str, Any] = {
            "schema": 1,
            "variant": variant.name,
            "package": variant.package_name,
            "tensorrt_llm_version": trtllm_version,
            "checkpoint": {"repo": ckpt.repo, "revision": ckpt.revision, "source": ckpt.source},
            "quantization": quant.to_dict(),
            "recipe": {
                "gemm_plugin": options.gemm_plugin,
                "kv_cache_quant": options.kv_cache_quant,
            },
            "trtllm_build_flags": _portable_flags(flags),
            "tokenizer_files": copied,
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        with progress.phase("verify"):
            report = verify_mod.verify_engine_dir(staging, variant, expected_version)
            verify_mod.check_or_raise(report)
            for fact in report.facts:
                log(f"[build-engine] verified: {fact}")
        manifest["phase_seconds"] = progress.timings
        manifest["total_seconds"] = round(time.monotonic() - progress.started, 3)
        (staging / verify_mod.MANIFEST_FILE).write_text(
            json.dumps(manifest, indent=2) + "\n", encoding="utf-8"
        )
        # Same filesystem (staging is a sibling), so this is one atomic rename.
        try:
            staging.rename(out)
        except OSError as exc:
            raise UserError(f"cannot move the verified engine to {out}: {exc.strerror}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log(f"[build-engine] {variant.name}: engine at {out} ({manifest['total_seconds']:.1f}s)")
    return out


def _needs_modelopt_quantize(variant: Variant, checkpoint_dir: Path) -> bool:
    """Quantize here only for a table entry that says so, and only if the checkpoint is not
    already a ModelOpt export (a user's own FP8 export given with --checkpoint wins)."""
    has_quant_config = (checkpoint_dir / quant_mod.QUANT_CONFIG_FILE).is_file()
    return variant.checkpoint.modelopt_quantize and not has_quant_config


def plan_lines(
    table: VariantTable,
    variant: Variant,
    out: Path,
    *,
    checkpoint_dir: Path | None = None,
    revision: str | None = None,
    workdir: Path | None = None,
    options: BuildOptions | None = None,
) -> list[str]:
    """What ``build_engine`` would run, one step a line; imports nothing from TensorRT-LLM.

    Same functions as the real build (trtllm_build_args, the quantization spec, the verify
    limits), so the plan cannot drift from what runs.
    """
    from trtllm_stack.engine import trtllm_api

    options = options or BuildOptions()
    out = out.expanduser().absolute()
    version = table.runtime.tensorrt_llm_version
    found = trtllm_api.installed_version()
    staging = out.parent / f".{out.name}.building-XXXX"
    scratch = (workdir.expanduser().absolute() if workdir else out.parent) / (
        f".{out.name}.trtllm-ckpt-XXXX"
    )
    ckpt_repo = variant.checkpoint.repo
    rev = revision or variant.checkpoint.revision
    lines = [
        f"check: tensorrt_llm=={version} installed (found: {found or 'not installed'});"
        f" {out} must not exist",
    ]
    if checkpoint_dir is not None:
        ckpt_path = checkpoint_dir.expanduser().absolute()
        lines.append(f"checkpoint: local directory {ckpt_path} (no download)")
    else:
        ckpt_path = Path(f"<HF cache>/{ckpt_repo}@{rev}")
        lines.append(
            f"download: huggingface_hub.snapshot_download(repo_id={ckpt_repo!r},"
            f" revision={rev!r}, allow_patterns={checkpoint_mod.DOWNLOAD_PATTERNS!r})"
        )
    local_quant = (
        checkpoint_dir is not None and (checkpoint_dir / quant_mod.QUANT_CONFIG_FILE).is_file()
    )
    if variant.checkpoint.modelopt_quantize and not local_quant:
        quant = quant_mod.with_kv_cache(quant_mod.MODELOPT_FP8_SPEC, options.kv_cache_quant)
        kv = (quant.kv_cache_quant_algo or "").lower() or None
        lines.append(
            "quantize: tensorrt_llm.quantization.quantize_by_modelopt.quantize_and_export("
            f"model_dir={str(ckpt_path)!r}, qformat={quant.quant_algo.lower()!r},"
            f" kv_cache_dtype={kv!r}, tp_size={variant.tp}, pp_size=1, cp_size=1,"
            f" {_calibration_repr()}, output_dir={str(scratch)!r})"
        )
    else:
        if local_quant:
            assert checkpoint_dir is not None
            quant = quant_mod.read_quant_config(checkpoint_dir)
            quant_mod.check_matches_variant(quant, variant.quantization)
            where = f"read from {quant.source}"
        else:
            quant = quant_mod.QuantSpec(
                quant_algo=variant.quantization,
                kv_cache_quant_algo="FP8",
                group_size=quant_mod.NVFP4_GROUP_SIZE if variant.quantization == "NVFP4" else None,
                exclude_modules=("lm_head",),
                source="expected",
            )
            where = (
                f"from the checkpoint's {quant_mod.QUANT_CONFIG_FILE} after download; the build"
                f" stops unless quant_algo is {variant.quantization}"
            )
        quant = quant_mod.with_kv_cache(quant, options.kv_cache_quant)
        lines.append(f"quantization: {_quant_config_repr(quant)} ({where})")
        for rank in range(variant.tp):
            lines.append(
                f"convert rank {rank + 1}/{variant.tp}: MODEL_MAP[{variant.model.architecture!r}]"
                f".from_hugging_face({str(ckpt_path)!r}, dtype='auto', mapping=Mapping("
                f"world_size={variant.tp}, rank={rank}, tp_size={variant.tp}, pp_size=1),"
                f" quant_config={_quant_config_repr(quant)})"
                f".save_checkpoint({str(scratch)!r}, save_config={rank == 0})"
            )
    flags = trtllm_build_args(variant, scratch, staging, options)
    lines.append("build: " + shlex.join(trtllm_api.trtllm_build_command(flags)))
    lines.append(
        f"tokenizer: copy {', '.join(TOKENIZER_FILES)} (those present; never config.json)"
        f" into {staging}"
    )
    lines.append(
        f"verify: config.json version {version}, quant_algo {variant.quantization}, world_size"
        f" {variant.tp}, max_input_len >= {variant.max_input_len}, max_seq_len"
        f" {variant.max_seq_len}, max_batch_size {variant.max_batch_size};"
        f" rank0..rank{variant.tp - 1}.engine sizes; tokenizer files"
    )
    lines.append(f"place: write {verify_mod.MANIFEST_FILE}, rename {staging} -> {out}")
    return lines


def _quant_config_repr(quant: quant_mod.QuantSpec) -> str:
    parts = [f"quant_algo=QuantAlgo.{quant.quant_algo}"]
    kv = quant.kv_cache_quant_algo
    parts.append(f"kv_cache_quant_algo={'QuantAlgo.' + kv if kv else None}")
    if quant.group_size is not None:
        parts.append(f"group_size={quant.group_size}")
    parts.append(f"exclude_modules={list(quant.exclude_modules) or None!r}")
    return "QuantConfig(" + ", ".join(parts) + ")"


def _calibration_repr() -> str:
    from trtllm_stack.engine import trtllm_api

    return ", ".join(f"{k}={v!r}" for k, v in trtllm_api.MODELOPT_CALIBRATION.items())


def _portable_flags(flags: list[str]) -> list[str]:
    """Flags without the temporary paths, which mean nothing after the build."""
    result: list[str] = []
    skip = False
    for f in flags:
        if skip:
            skip = False
            continue
        if f in ("--checkpoint_dir", "--output_dir"):
            skip = True
            continue
        result.append(f)
    return result
