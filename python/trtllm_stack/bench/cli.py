"""``trtllm-stack bench`` and ``trtllm-stack bench compare``.

Top-level imports: standard library only (the CLI imports every area's cli module).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from trtllm_stack.errors import UserError

DEFAULT_DURATION = 60.0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "bench",
        help="load-test OpenAI-compatible servers or Triton directly (TTFT, ITL, throughput)",
        description=(
            "Send independent streamed requests at fixed concurrencies (closed loop) or at a"
            " Poisson rate (open loop); measure TTFT, inter-token gaps, TPOT, E2E, throughput"
            " and goodput; write a JSON result with every request and a PNG plot."
            " `bench compare A.json [B.json]` prints the ratios between runs or targets."
        ),
    )
    p.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="[LABEL=]URL",
        help="http(s)://HOST:PORT of an OpenAI-compatible server, or triton-grpc://HOST:PORT[/MODEL]"
        " for Triton's tensorrt_llm model; repeat to compare targets side by side",
    )
    load = p.add_argument_group("load")
    load.add_argument(
        "--concurrency",
        default=None,
        metavar="N[,N...]",
        help="closed loop: concurrent clients per level (default 1)",
    )
    load.add_argument(
        "--rate",
        default=None,
        metavar="R[,R...]",
        help="open loop instead: Poisson arrivals, requests/s per level ('inf': all at once)",
    )
    load.add_argument(
        "--max-in-flight",
        type=int,
        default=None,
        metavar="N",
        help="open loop: at most N requests in flight (later arrivals wait)",
    )
    load.add_argument(
        "--num-requests",
        type=int,
        default=None,
        metavar="N",
        help="requests per level (stop starting new ones after N)",
    )
    load.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="S",
        help=f"seconds per level (default {DEFAULT_DURATION:g} if --num-requests is not given)",
    )
    load.add_argument(
        "--grace",
        type=float,
        default=60.0,
        metavar="S",
        help="after --duration, wait this long for running requests, then cancel them (default 60)",
    )
    load.add_argument(
        "--warmup",
        type=int,
        default=0,
        metavar="N",
        help="unrecorded requests before each level (opens connections)",
    )
    work = p.add_argument_group("workload")
    work.add_argument(
        "--input-len",
        default="256",
        metavar="SPEC",
        help="prompt tokens: N, normal:MEAN,STD or uniform:LO,HI (default 256)",
    )
    work.add_argument(
        "--output-len",
        default="128",
        metavar="SPEC",
        help="output tokens (max_tokens), same forms (default 128)",
    )
    work.add_argument(
        "--prompts",
        type=Path,
        default=None,
        metavar="FILE.jsonl",
        help='prompts from JSONL lines {"prompt": ...} (or "messages"), optional "max_tokens"',
    )
    work.add_argument(
        "--no-ignore-eos",
        dest="ignore_eos",
        action="store_false",
        help="do not ask for exact output lengths (min_tokens/ignore_eos)",
    )
    work.add_argument(
        "--endpoint",
        choices=("chat", "completions"),
        default="chat",
        help="OpenAI endpoint (default chat)",
    )
    work.add_argument(
        "--model", default=None, help="model name for HTTP targets (default: first of /v1/models)"
    )
    work.add_argument(
        "--api-key",
        default=os.environ.get("OPENAI_API_KEY"),
        help="Bearer key for HTTP targets (default $OPENAI_API_KEY)",
    )
    work.add_argument("--temperature", type=float, default=None)
    work.add_argument(
        "--extra-body",
        default=None,
        metavar="JSON",
        help="JSON object merged into every HTTP request body",
    )
    work.add_argument(
        "--tokenizer-dir",
        type=Path,
        default=None,
        help="tokenizer for prompts and counting (default: bundled Qwen3)",
    )
    work.add_argument(
        "--prompt-pool",
        type=int,
        default=None,
        metavar="N",
        help="distinct prompts to prepare, reused in turn (default --num-requests or 512)",
    )
    work.add_argument("--seed", type=int, default=0)
    work.add_argument("--request-timeout", type=float, default=600.0, metavar="S")
    out = p.add_argument_group("output")
    out.add_argument(
        "--slo",
        default=None,
        metavar="ttft=MS,tpot=MS[,e2e=MS]",
        help="count goodput: requests/s meeting every objective",
    )
    out.add_argument(
        "--cpu-pid",
        action="append",
        default=[],
        metavar="NAME=PID",
        help="record the CPU time of this process and its children per level (/proc) and"
        " CPU microseconds per output token",
    )
    out.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help="result JSON, gzipped if it ends in .gz (default bench-YYYYmmdd-HHMMSS.json)",
    )
    out.add_argument("--plot", type=Path, default=None, help="PNG plot (default: next to the JSON)")
    out.add_argument("--no-plot", action="store_true")
    out.add_argument("--no-progress", action="store_true", help="no live progress line")
    out.add_argument("--no-uvloop", action="store_true", help="use the default asyncio loop")
    p.set_defaults(handler=_bench)

    sub = p.add_subparsers(dest="bench_command", metavar="{compare}")
    c = sub.add_parser(
        "compare", help="ratios between two result files, or between the targets of one"
    )
    c.add_argument("a", type=Path, metavar="A.json", help="baseline")
    c.add_argument(
        "b",
        type=Path,
        nargs="?",
        metavar="B.json",
        help="compared to A; without it, the targets of A after the first are compared"
        " to the first",
    )
    c.set_defaults(handler=_compare)


def _compare(args: argparse.Namespace) -> int:
    from trtllm_stack.bench.report import compare_text, load_result

    a = load_result(args.a)
    b = load_result(args.b) if args.b is not None else None
    print(compare_text(a, b, ("A", "B")), end="")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from trtllm_stack.bench.session import run_from_args

    if not args.target:
        raise UserError("give at least one --target URL (or use `bench compare`)")
    return run_from_args(args)
