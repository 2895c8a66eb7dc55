"""``trtllm-stack build-engine`` and ``trtllm-stack verify-engine``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trtllm_stack.variants import Variant, VariantTable


def register(subparsers: argparse._SubParsersAction) -> None:
    b = subparsers.add_parser(
        "build-engine",
        help="build a verified TensorRT-LLM engine for a variant (needs a GPU)",
        description="Download the pinned checkpoint, convert each TP rank, run trtllm-build,"
        " verify, and only then move the engine to --out.",
    )
    b.add_argument("--variant", required=True, help="variant, Nix package or app name")
    b.add_argument("--out", required=True, type=Path, help="engine directory to create")
    src = b.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", type=Path, help="use this local HF checkpoint directory")
    src.add_argument("--revision", help="checkpoint revision instead of the pinned one")
    b.add_argument("--workdir", type=Path, help="where the temporary TensorRT-LLM checkpoint goes")
    b.add_argument(
        "--dry-run",
        action="store_true",
        help="print every step (download, conversion, the trtllm-build argv, verification)"
        " one a line and exit; needs no GPU and no TensorRT-LLM",
    )
    b.add_argument(
        "--gemm-plugin",
        default="disable",
        choices=["disable", "nvfp4", "auto"],
        help="trtllm-build --gemm_plugin (default disable: the path TensorRT-LLM's own"
        " pre-quantized NVFP4/FP8 tests build; nvfp4 is the plugin path their test skips)",
    )
    b.add_argument(
        "--kv-cache-quant",
        default="checkpoint",
        choices=["checkpoint", "none"],
        help="KV-cache quantization: the checkpoint's (FP8) or none (BF16, twice the KV memory;"
        " for FP8-KV builds that fail, see docs/engine.md)",
    )
    b.set_defaults(handler=_build)

    v = subparsers.add_parser(
        "verify-engine",
        help="check an engine directory (and optionally a running server) for a variant",
    )
    v.add_argument("engine_dir", nargs="?", type=Path, help="engine directory")
    v.add_argument("--variant", help="variant name (default: inferred from the engine config)")
    v.add_argument(
        "--smoke", metavar="URL", help="also send fixed prompts to this OpenAI-compatible server"
    )
    v.add_argument("--model", help="model id for --smoke (default: the first of /v1/models)")
    v.set_defaults(handler=_verify)


def _build(args: argparse.Namespace) -> int:
    from trtllm_stack.engine.build import BuildOptions, build_engine, plan_lines
    from trtllm_stack.variants import load_table

    table = load_table()
    variant = table.get(args.variant)
    options = BuildOptions(gemm_plugin=args.gemm_plugin, kv_cache_quant=args.kv_cache_quant)
    if args.dry_run:
        for line in plan_lines(
            table,
            variant,
            args.out,
            checkpoint_dir=args.checkpoint,
            revision=args.revision,
            workdir=args.workdir,
            options=options,
        ):
            print(line)
        return 0
    build_engine(
        table,
        variant,
        args.out,
        checkpoint_dir=args.checkpoint,
        revision=args.revision,
        workdir=args.workdir,
        options=options,
    )
    return 0


def _verify(args: argparse.Namespace) -> int:
    from trtllm_stack.engine import smoke, verify
    from trtllm_stack.errors import UserError
    from trtllm_stack.variants import load_table

    if args.engine_dir is None and args.smoke is None:
        raise UserError("give an engine directory, --smoke URL, or both")
    if args.engine_dir is not None:
        table = load_table()
        engine_dir: Path = args.engine_dir
        variant = table.get(args.variant) if args.variant else _infer_variant(table, engine_dir)
        report = verify.verify_engine_dir(engine_dir, variant, table.runtime.tensorrt_llm_version)
        verify.check_or_raise(report)
        print(f"engine {engine_dir}: OK for {variant.name}")
        for fact in report.facts:
            print(f"  {fact}")
        for warning in report.warnings:
            print(f"  warning: {warning}")
    if args.smoke is not None:
        results = smoke.run_smoke(args.smoke, args.model)
        smoke.check_smoke_or_raise(results)
        print(f"smoke {args.smoke}: OK ({len(results)} prompts)")
        for r in results:
            print(f"  {r.prompt!r} -> {r.text[:60]!r}")
    return 0


def _infer_variant(table: VariantTable, engine_dir: Path) -> Variant:
    from trtllm_stack.engine import verify
    from trtllm_stack.errors import UserError

    config = verify.load_engine_config(engine_dir)
    algo, world = verify.config_identity(config)
    matches = [v for v in table.variants if v.quantization == algo and v.tp == world]
    if len(matches) != 1:
        raise UserError(
            f"{engine_dir / 'config.json'}: cannot tell the variant (quant_algo {algo!r},"
            f" world_size {world!r}); pass --variant",
            exit_code=1,
        )
    return matches[0]
