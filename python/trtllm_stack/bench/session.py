"""One ``bench`` invocation: validate arguments, prepare the workload, run every level
against every target, write the result after each level, print the table, draw the plot."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from trtllm_stack.bench.metrics import SLO, parse_slo
from trtllm_stack.bench.report import (
    TargetRuns,
    environment,
    failed_levels,
    result_json,
    summary_table,
    write_json,
    write_plot,
)
from trtllm_stack.bench.runner import Bounds, Level, LevelRun, Progress, Target, run_level
from trtllm_stack.bench.targets import OpenAITarget, RequestOptions, TritonGrpcTarget, parse_target
from trtllm_stack.bench.workload import (
    PromptFactory,
    WorkItem,
    jsonl_workload,
    parse_length,
    synthetic_workload,
)
from trtllm_stack.errors import UserError


def parse_int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{what}: expected integers like 1,16,64, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise UserError(f"{what}: values must be integers >= 1")
    return values


def parse_rates(text: str) -> list[float]:
    rates = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        try:
            rate = math.inf if part == "inf" else float(part)
        except ValueError:
            raise UserError(f"--rate: not a number: {part!r}") from None
        if not rate > 0 or math.isnan(rate):
            raise UserError("--rate: rates must be > 0")
        rates.append(rate)
    if not rates:
        raise UserError("--rate: no rate given")
    return rates


def parse_levels(args: argparse.Namespace) -> list[Level]:
    if args.rate is not None and args.concurrency is not None:
        raise UserError("--rate (open loop) and --concurrency (closed loop) exclude each other")
    if args.max_in_flight is not None:
        if args.rate is None:
            raise UserError("--max-in-flight applies to the open loop (--rate)")
        if args.max_in_flight < 1:
            raise UserError("--max-in-flight must be >= 1")
    if args.rate is not None:
        return [
            Level("open", rate=r, max_in_flight=args.max_in_flight) for r in parse_rates(args.rate)
        ]
    return [
        Level("closed", concurrency=c)
        for c in parse_int_list(args.concurrency or "1", "--concurrency")
    ]


def parse_targets(values: Sequence[str]) -> list[tuple[str, str, str]]:
    """(label, kind, url) per --target; ``LABEL=URL`` names a target."""
    out = []
    for value in values:
        label, sep, url = value.partition("=")
        if not sep or "://" in label:
            label, url = "", value
        kind, url = parse_target(url.strip())
        out.append((label.strip() or url, kind, url))
    labels = [t[0] for t in out]
    if len(set(labels)) != len(labels):
        raise UserError("--target: two targets have the same label; name them LABEL=URL")
    return out


def parse_cpu_pids(values: Sequence[str]) -> dict[str, int]:
    pids = {}
    for value in values:
        name, sep, raw = value.partition("=")
        if not sep or not name.strip():
            raise UserError(f"--cpu-pid: expected NAME=PID, got {value!r}")
        try:
            pid = int(raw)
        except ValueError:
            raise UserError(f"--cpu-pid: not a process id: {raw!r}") from None
        if not Path(f"/proc/{pid}/stat").exists():
            raise UserError(f"--cpu-pid: no process {pid} (/proc/{pid}/stat)")
        pids[name.strip()] = pid
    return pids


def parse_extra_body(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"--extra-body: not JSON ({exc.msg})") from None
    if not isinstance(body, dict):
        raise UserError("--extra-body: must be a JSON object")
    return body


def _check_positive(args: argparse.Namespace) -> None:
    for name in ("num_requests", "warmup", "prompt_pool"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "warmup" else 1):
            raise UserError(f"--{name.replace('_', '-')} must be >= {0 if name == 'warmup' else 1}")
    for name in ("duration", "grace", "request_timeout"):
        value = getattr(args, name)
        if value is not None and (not math.isfinite(value) or value <= 0):
            raise UserError(f"--{name.replace('_', '-')} must be a positive number of seconds")


def _settings(args: argparse.Namespace, bounds: Bounds, levels: list[Level]) -> dict[str, Any]:
    skip = {"handler", "api_key", "bench_command"}
    settings: dict[str, Any] = {}
    for key, value in vars(args).items():
        if key in skip or callable(value):
            continue
        settings[key] = str(value) if isinstance(value, Path) else value
    settings["api_key"] = "set" if args.api_key else None
    settings["bounds"] = {
        "num_requests": bounds.num_requests,
        "duration_s": bounds.duration,
        "grace_s": bounds.grace,
        "warmup": bounds.warmup,
    }
    settings["levels"] = [lv.to_json() for lv in levels]
    settings["argv"] = sys.argv[1:]
    return settings


def run_from_args(args: argparse.Namespace) -> int:
    _check_positive(args)
    targets_spec = parse_targets(args.target)
    levels = parse_levels(args)
    input_len = parse_length(args.input_len, "--input-len")
    output_len = parse_length(args.output_len, "--output-len")
    slo = parse_slo(args.slo)
    extra_body = parse_extra_body(args.extra_body)
    cpu_pids = parse_cpu_pids(args.cpu_pid)
    duration = args.duration
    if duration is None and args.num_requests is None:
        duration = 60.0
    bounds = Bounds(
        num_requests=args.num_requests, duration=duration, grace=args.grace, warmup=args.warmup
    )
    output = args.output or Path(f"bench-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json")
    if output.exists() and output.is_dir():
        raise UserError(f"--output {output} is a directory")
    stem = output.with_suffix("") if output.suffix == ".gz" else output
    plot = None if args.no_plot else (args.plot or stem.with_suffix(".png"))

    from trtllm_stack.tokenizer import bundled_qwen3_tokenizer_dir, load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer_dir or bundled_qwen3_tokenizer_dir())
    chat = args.endpoint == "chat"
    pool = args.prompt_pool or args.num_requests or 512
    print(f"preparing {pool} prompts...", file=sys.stderr)
    items: list[WorkItem]
    if args.prompts is not None:
        items = jsonl_workload(
            args.prompts, tokenizer, output_len, args.seed, chat=chat, limit=pool
        )
    else:
        items = synthetic_workload(
            PromptFactory(tokenizer, args.seed), pool, input_len, output_len, args.seed, chat=chat
        )
    options = RequestOptions(
        ignore_eos=args.ignore_eos,
        temperature=args.temperature,
        request_timeout=args.request_timeout,
        api_key=args.api_key,
        model=args.model,
        endpoint=args.endpoint,
        extra_body=extra_body,
    )
    targets: list[tuple[str, Target]] = []
    for label, kind, url in targets_spec:
        target: Target = (
            TritonGrpcTarget(url, options, tokenizer)
            if kind == "triton-grpc"
            else OpenAITarget(url, options, tokenizer)
        )
        targets.append((label, target))

    session = Session(
        targets,
        levels,
        items,
        bounds,
        slo,
        cpu_pids,
        output,
        settings=_settings(args, bounds, levels),
        progress=not args.no_progress,
        seed=args.seed,
    )
    result = _run_loop(session.run(), use_uvloop=not args.no_uvloop)
    print(summary_table(result))
    if plot is not None and any(t["levels"] for t in result["targets"]):
        write_plot(result, plot)
        print(f"plot: {plot}")
    print(f"result: {output}")
    if result["interrupted"]:
        print("interrupted: the result holds what was measured until Ctrl-C", file=sys.stderr)
        return 130
    failed = failed_levels(result)
    if failed:
        print(
            f"trtllm-stack bench: {len(failed)} level(s) without a successful request"
            f" ({', '.join(failed)}); is the target up?",
            file=sys.stderr,
        )
        return 1
    return 0


def _run_loop(coro: Any, use_uvloop: bool) -> Any:
    loop_factory = None
    if use_uvloop:
        try:
            import uvloop

            loop_factory = uvloop.new_event_loop
        except ImportError:
            pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(coro)


class Session:
    def __init__(
        self,
        targets: list[tuple[str, Target]],
        levels: list[Level],
        items: list[WorkItem],
        bounds: Bounds,
        slo: SLO,
        cpu_pids: dict[str, int],
        output: Path,
        settings: dict[str, Any],
        progress: bool = True,
        seed: int = 0,
    ) -> None:
        self.targets = targets
        self.levels = levels
        self.items = items
        self.bounds = bounds
        self.slo = slo
        self.cpu_pids = cpu_pids
        self.output = output
        self.settings = settings
        self.progress = Progress(progress)
        self.seed = seed
        self.interrupted = False
        self.started_at = datetime.now(UTC).isoformat(timespec="seconds")
        self.env = environment()
        self.runs = [TargetRuns(label, {}, []) for label, _ in targets]

    def result(self) -> dict[str, Any]:
        self.settings["event_loop"] = type(asyncio.get_running_loop()).__module__.split(".")[0]
        return result_json(
            self.runs, self.settings, self.env, self.slo, self.interrupted, self.started_at
        )

    def save(self) -> dict[str, Any]:
        result = self.result()
        write_json(self.output, result)
        return result

    async def run(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        main = asyncio.current_task()
        assert main is not None

        def on_sigint() -> None:
            # first Ctrl-C: stop, keep what was measured; a second one aborts
            self.interrupted = True
            loop.remove_signal_handler(signal.SIGINT)
            main.cancel()

        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGINT, on_sigint)
        max_pool = max((lv.pool_size or 0 for lv in self.levels), default=0) or None
        opened: list[Target] = []
        try:
            for (_, target), runs in zip(self.targets, self.runs, strict=True):
                await target.open(max_pool)
                opened.append(target)
                runs.description = target.describe()
            for level in self.levels:
                for i, ((label, target), runs) in enumerate(
                    zip(self.targets, self.runs, strict=True)
                ):
                    run = LevelRun(level)
                    runs.runs.append(run)
                    try:
                        await run_level(
                            target,
                            level,
                            self.items,
                            self.bounds,
                            run,
                            self.progress,
                            seed=self.seed + i,
                            cpu_pids=self.cpu_pids,
                            label=label,
                        )
                    except asyncio.CancelledError:
                        run.interrupted = True
                        raise
                    self.save()
        except asyncio.CancelledError:
            if not self.interrupted:
                raise
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signal.SIGINT)
            for target in opened:
                with contextlib.suppress(Exception):
                    await target.close()
        return self.save()
