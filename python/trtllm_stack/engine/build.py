"""Build an engine for a variant: one code path for every TP size.

Phases: download -> convert rank k/N -> trtllm-build -> tokenizer + manifest -> verify.
Everything is written into a staging dir next to ``--out`` and renamed onto ``--out`` only
after verification passes, so a broken or half-written engine never lands there.
"""

from __future__ import annotations

import json
import os
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


def trtllm_build_args(variant: Variant, checkpoint_dir: Path, output_dir: Path) -> list[str]:
    """trtllm-build flags (tensorrt_llm/commands/build.py ``parse_arguments`` and
    tensorrt_llm/plugin/plugin.py ``add_plugin_argument`` for the plugin flags)."""
    return [
        "--checkpoint_dir", str(checkpoint_dir),
        "--output_dir", str(output_dir),
        # build.py caps this at torch.cuda.device_count(); one worker per rank.
        "--workers", str(variant.tp),
        # "--paged_kv_cache enable" still parses but is deprecated in favour of this flag.
        "--kv_cache_type", "paged",
        "--use_paged_context_fmha", "enable",
        # 'auto' = the model dtype; builder.py ``build`` switches NVFP4 models to the nvfp4
        # GEMM plugin unless the plugin is explicitly disabled.
        "--gemm_plugin", "auto",
        "--max_batch_size", str(variant.max_batch_size),
        "--max_num_tokens", str(variant.max_num_tokens),
        "--max_seq_len", str(variant.max_seq_len),
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
) -> Path:
    """Build, verify, then atomically place the engine at ``out``. Returns ``out``."""
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
        quant = quant_mod.read_quant_config(ckpt.path)
        quant_mod.check_matches_variant(quant, variant.quantization)

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

        flags = trtllm_build_args(variant, scratch, staging)
        with progress.phase("build"):
            api.run_trtllm_build(flags, log)

        with progress.phase("tokenizer"):
            copied = copy_tokenizer_files(ckpt.path, staging)

        manifest: dict[str, Any] = {
            "schema": 1,
            "variant": variant.name,
            "package": variant.package_name,
            "tensorrt_llm_version": trtllm_version,
            "checkpoint": {"repo": ckpt.repo, "revision": ckpt.revision, "source": ckpt.source},
            "quantization": quant.to_dict(),
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
