"""Check an engine directory before anyone serves it. Runs at the end of every build.

Engine ``config.json`` layout (TensorRT-LLM ``tensorrt_llm/builder.py``: ``Engine.save`` writes
``EngineConfig.to_dict()`` on rank 0)::

    {"version": "1.1.0",
     "pretrained_config": {"architecture": ..., "quantization": {"quant_algo": "NVFP4", ...},
                           "mapping": {"world_size": 4, "tp_size": 4, ...}, ...},
     "build_config": {...}}

The C++ runtime (``cpp/tensorrt_llm/runtime/gptJsonConfig.cpp`` ``parseJson``) reads
``build_config`` when ``version`` is present and falls back to the legacy ``builder_config``
otherwise; a Hugging Face ``config.json`` copied over the engine's has neither, which is the
seeds' "key 'builder_config' not found". So we require ``version`` + ``build_config`` +
``pretrained_config``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trtllm_stack.errors import UserError
from trtllm_stack.variants import Variant

# Tokenizer files the server and proxy cannot do without; the rest of TOKENIZER_FILES are optional.
REQUIRED_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
MANIFEST_FILE = "build-manifest.json"
_RANK_FILE = re.compile(r"^rank(\d+)\.engine$")

# Extra bits per quantized weight for scales: NVFP4 has one FP8 scale per 16 weights;
# FP8 (ModelOpt) has per-tensor scales, negligible.
SCALE_BITS_PER_WEIGHT = {"NVFP4": 8 / 16, "FP8": 0.0}
BF16_BYTES = 2
# Engines carry more than weights (kernels, plugin tactics): allow this slack above.
SIZE_SLACK_FACTOR = 1.10
SIZE_SLACK_BYTES = 512 * 1024**2
SIZE_LOWER_FACTOR = 0.9

GB = 1e9


@dataclass(frozen=True)
class SizeBounds:
    lower: int
    upper: int
    nominal: int


def expected_rank_bytes(variant: Variant) -> SizeBounds:
    """Per-rank engine size derived from the variant table.

    Quantized body: (params - embedding - lm_head) x (weight bits + scale bits) / tp.
    The embedding and lm_head stay bf16 (ModelOpt excludes lm_head; TensorRT-LLM never
    quantizes the embedding). lm_head is split across ranks; the embedding is replicated
    unless parallel embedding is on, so the bounds cover both layouts.
    """
    m = variant.model
    table = m.vocab_size * m.hidden_size
    body_params = m.parameters_millions * 1_000_000 - 2 * table
    bits = variant.checkpoint.weight_bits + SCALE_BITS_PER_WEIGHT.get(variant.quantization, 0.0)
    body = body_params * bits / 8 / variant.tp
    table_bytes = table * BF16_BYTES
    smallest = body + 2 * table_bytes / variant.tp
    nominal = body + table_bytes + table_bytes / variant.tp
    return SizeBounds(
        lower=int(smallest * SIZE_LOWER_FACTOR),
        upper=int(nominal * SIZE_SLACK_FACTOR + SIZE_SLACK_BYTES),
        nominal=int(nominal),
    )


@dataclass
class Report:
    engine_dir: Path
    problems: list[str] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _gb(n: float) -> str:
    return f"{n / GB:.2f} GB"


def load_engine_config(engine_dir: Path) -> dict[str, Any]:
    path = engine_dir / "config.json"
    if not path.is_file():
        raise UserError(f"{path}: missing; expected the TensorRT-LLM engine config")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: cannot read as JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def config_identity(config: dict[str, Any]) -> tuple[str | None, int | None]:
    """(quant_algo, world_size) from an engine config, None where absent."""
    pretrained = config.get("pretrained_config")
    if not isinstance(pretrained, dict):
        return None, None
    quant = pretrained.get("quantization")
    algo = quant.get("quant_algo") if isinstance(quant, dict) else None
    mapping = pretrained.get("mapping")
    world = mapping.get("world_size") if isinstance(mapping, dict) else None
    return (algo if isinstance(algo, str) else None), (world if isinstance(world, int) else None)


def verify_engine_dir(engine_dir: Path, variant: Variant, expected_version: str) -> Report:
    """Collect every problem (not just the first): each names what was expected and found."""
    engine_dir = Path(engine_dir)
    report = Report(engine_dir=engine_dir)
    bad = report.problems.append
    if not engine_dir.is_dir():
        bad(f"{engine_dir}: not a directory")
        return report

    try:
        config = load_engine_config(engine_dir)
    except UserError as exc:
        bad(str(exc))
        config = None
    if config is not None:
        _check_config(config, variant, expected_version, report)

    _check_rank_files(engine_dir, variant, report)

    for name in REQUIRED_TOKENIZER_FILES:
        if not (engine_dir / name).is_file():
            bad(f"tokenizer file {name}: expected in the engine dir, found missing")
    return report


def _check_config(
    config: dict[str, Any], variant: Variant, expected_version: str, report: Report
) -> None:
    bad = report.problems.append
    engine_keys = ("pretrained_config", "build_config", "builder_config")
    has_engine_keys = any(k in config for k in engine_keys)
    if not has_engine_keys and ("model_type" in config or "architectures" in config):
        bad(
            "config.json: expected the TensorRT-LLM engine config (version, pretrained_config,"
            f" build_config), found a Hugging Face model config (model_type="
            f"{config.get('model_type')!r}): the checkpoint's config.json was copied over it"
        )
        return
    version = config.get("version")
    if version is None:
        legacy = (
            " (has legacy 'builder_config': built by an old TensorRT-LLM)"
            if ("builder_config" in config)
            else ""
        )
        bad(f"config.json version: expected {expected_version!r}, found none{legacy}")
    elif not isinstance(version, str) or version.split("+", 1)[0] != expected_version:
        bad(
            f"config.json version: expected {expected_version!r} (the TensorRT-LLM the server"
            f" runs), found {version!r}"
        )
    for key in ("pretrained_config", "build_config"):
        if not isinstance(config.get(key), dict):
            bad(f"config.json: expected a {key!r} object, found {type(config.get(key)).__name__}")
    algo, world = config_identity(config)
    if isinstance(config.get("pretrained_config"), dict):
        if algo != variant.quantization:
            hint = " (unquantized engine: the seeds' garbage output)" if algo is None else ""
            bad(
                "config.json pretrained_config.quantization.quant_algo: expected"
                f" {variant.quantization!r}, found {algo!r}{hint}"
            )
        if world != variant.tp:
            bad(
                f"config.json pretrained_config.mapping.world_size: expected {variant.tp},"
                f" found {world!r}"
            )
        mapping = config["pretrained_config"].get("mapping")
        tp_size = mapping.get("tp_size") if isinstance(mapping, dict) else None
        if tp_size is not None and tp_size != variant.tp:
            bad(f"config.json mapping.tp_size: expected {variant.tp}, found {tp_size}")
    if isinstance(config.get("build_config"), dict):
        _check_limits(config["build_config"], variant, report)
    if not report.problems:
        report.facts.append(f"config: version {version}, quant_algo {algo}, world_size {world}")


def _int_field(build: dict[str, Any], key: str) -> int | None:
    value = build.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _check_limits(build: dict[str, Any], variant: Variant, report: Report) -> None:
    """The engine must take the prompts, contexts and batch the variant promises.

    build_config.max_input_len is what model-repo (and so the preprocessing model and the
    proxy) enforce, and trtllm-build stores its default 1024 when --max_input_len is not given
    (tensorrt_llm/builder.py ``class BuildConfig``): such an engine refuses every longer prompt.
    """
    bad = report.problems.append
    rebuild = f"rebuild it with `trtllm-stack build-engine --variant {variant.name}`"
    max_input = _int_field(build, "max_input_len")
    max_seq = _int_field(build, "max_seq_len")
    max_batch = _int_field(build, "max_batch_size")
    max_tokens = _int_field(build, "max_num_tokens")
    if max_input is None or max_input < variant.max_input_len:
        bad(
            f"config.json build_config.max_input_len is {max_input}, but {variant.name} promises"
            f" prompts of up to {variant.max_input_len} tokens (max_seq_len"
            f" {variant.max_seq_len} - 1): this engine refuses longer prompts; {rebuild}"
        )
    if max_seq is None or max_seq < variant.max_seq_len:
        bad(
            f"config.json build_config.max_seq_len is {max_seq}, but {variant.name} promises a"
            f" {variant.max_seq_len}-token context; {rebuild}"
        )
    elif max_seq > variant.max_seq_len:
        report.warnings.append(
            f"build_config.max_seq_len is {max_seq}, more than the variant's"
            f" {variant.max_seq_len}: its KV cache may not fit the memory the variant plans for"
        )
    if max_batch is None or max_batch < variant.max_batch_size:
        bad(
            f"config.json build_config.max_batch_size is {max_batch}, but {variant.name} runs"
            f" {variant.max_batch_size} requests at once; {rebuild}"
        )
    elif max_batch > variant.max_batch_size:
        report.warnings.append(
            f"build_config.max_batch_size is {max_batch}, more than the variant's"
            f" {variant.max_batch_size}; the model repository uses the engine's value"
        )
    if max_tokens is not None and max_tokens != variant.max_num_tokens:
        report.warnings.append(
            f"build_config.max_num_tokens is {max_tokens}, the variant's is"
            f" {variant.max_num_tokens}"
        )
    if not any(variant.name in p for p in report.problems):
        report.facts.append(
            f"limits: max_input_len {max_input}, max_seq_len {max_seq}, max_batch_size"
            f" {max_batch}, max_num_tokens {max_tokens}"
        )


def _check_rank_files(engine_dir: Path, variant: Variant, report: Report) -> None:
    bad = report.problems.append
    ranks: dict[int, Path] = {}
    for p in engine_dir.iterdir():
        m = _RANK_FILE.match(p.name)
        if m:
            ranks[int(m.group(1))] = p
    expected = set(range(variant.tp))
    missing = sorted(expected - ranks.keys())
    extra = sorted(ranks.keys() - expected)
    if missing:
        bad(
            f"rank engines: expected rank0.engine..rank{variant.tp - 1}.engine, missing"
            f" {', '.join(f'rank{r}.engine' for r in missing)}"
        )
    if extra:
        bad(
            f"rank engines: expected exactly {variant.tp}, found extra"
            f" {', '.join(f'rank{r}.engine' for r in extra)}"
        )
    bounds = expected_rank_bytes(variant)
    for r in sorted(expected & ranks.keys()):
        size = ranks[r].stat().st_size
        if not bounds.lower <= size <= bounds.upper:
            bad(
                f"rank{r}.engine size: expected {_gb(bounds.lower)}..{_gb(bounds.upper)}"
                f" (~{_gb(bounds.nominal)} for {variant.quantization} at TP{variant.tp}),"
                f" found {_gb(size)}"
            )
    if ranks and not report.problems:
        sizes = ", ".join(_gb(ranks[r].stat().st_size) for r in sorted(ranks))
        report.facts.append(f"{len(ranks)} rank engine(s): {sizes}")


def check_or_raise(report: Report) -> None:
    if not report.ok:
        n = len(report.problems)
        raise UserError(
            f"engine {report.engine_dir} failed verification ({n} problem{'s' if n > 1 else ''}): "
            + "; ".join(report.problems),
            exit_code=1,
        )
