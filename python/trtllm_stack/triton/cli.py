"""``trtllm-stack model-repo``: write a Triton model repository (imports stay light)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "model-repo",
        help="write a Triton model repository (tensorrt_llm, pre/postprocessing, ensemble)",
        description="Write a Triton model repository for a TensorRT-LLM engine directory, or "
        "for the scripted CPU engine (--engine scripted) on machines without a GPU.",
    )
    p.add_argument("--engine", required=True, help="engine directory, or 'scripted'")
    p.add_argument("--out", required=True, type=Path, help="repository directory to write")
    p.add_argument("--variant", help="variant name from variants.toml (limits, batch size)")
    p.add_argument(
        "--tokenizer-dir",
        type=Path,
        help="tokenizer files (default: the engine directory; the bundled Qwen3 tokenizer"
        " for --engine scripted)",
    )
    p.add_argument("--max-batch-size", type=int, default=64, help="Triton max batch size")
    p.add_argument("--kv-cache-free-gpu-mem-fraction", type=float, default=0.9, help="default 0.9")
    reuse = p.add_mutually_exclusive_group()
    reuse.add_argument(
        "--no-kv-cache-reuse",
        dest="kv_cache_reuse",
        action="store_false",
        default=None,
        help="turn prefix (KV-cache block) reuse off; it is on by default (memory: docs/engine.md)",
    )
    reuse.add_argument(
        "--enable-kv-cache-reuse",
        dest="kv_cache_reuse",
        action="store_true",
        help="on even if the variant turns it off",
    )
    p.add_argument(
        "--batch-slots",
        type=int,
        help="scripted engine only: requests generating at once, the rest queue"
        " (default: the repository's max batch size)",
    )
    p.add_argument("--token-delay-ms", type=float, default=0.0, help="scripted engine only")
    p.add_argument("--default-reply-tokens", type=int, default=200, help="scripted engine only")
    p.add_argument("--event-log", type=Path, help="scripted engine only: JSONL of requests")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    p.set_defaults(handler=_model_repo)


def _model_repo(args: argparse.Namespace) -> int:
    from trtllm_stack.errors import UserError
    from trtllm_stack.tokenizer import bundled_qwen3_tokenizer_dir
    from trtllm_stack.triton.model_repo import (
        RepoOptions,
        ScriptedEngineOptions,
        write_model_repository,
    )
    from trtllm_stack.variants import load_table

    variant = load_table().get(args.variant) if args.variant else None
    if not 0 < args.kv_cache_free_gpu_mem_fraction <= 1:
        raise UserError("--kv-cache-free-gpu-mem-fraction must be in (0, 1]")
    if args.max_batch_size <= 0 or args.default_reply_tokens < 0 or args.token_delay_ms < 0:
        raise UserError("--max-batch-size must be > 0; delays and reply lengths >= 0")
    if args.batch_slots is not None and args.batch_slots <= 0:
        raise UserError(f"--batch-slots must be > 0, got {args.batch_slots}")
    if args.tokenizer_dir:
        tokenizer_dir = args.tokenizer_dir
    elif args.engine == "scripted":
        tokenizer_dir = bundled_qwen3_tokenizer_dir()
    else:
        tokenizer_dir = Path(args.engine)
    options = RepoOptions(
        triton_max_batch_size=args.max_batch_size,
        kv_cache_reuse=args.kv_cache_reuse,
        overrides={
            "kv_cache_free_gpu_mem_fraction": str(args.kv_cache_free_gpu_mem_fraction),
        },
    )
    scripted = ScriptedEngineOptions(
        token_delay_ms=args.token_delay_ms,
        default_reply_tokens=args.default_reply_tokens,
        event_log=args.event_log.resolve() if args.event_log else None,
        batch_slots=args.batch_slots,
    )
    out = write_model_repository(
        args.out,
        engine=args.engine if args.engine == "scripted" else Path(args.engine).resolve(),
        tokenizer_dir=tokenizer_dir,
        variant=variant,
        scripted=scripted,
        options=options,
        force=args.force,
    )
    print(f"wrote Triton model repository {out}")
    return 0
