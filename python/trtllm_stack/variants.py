"""The variant table (variants.toml) as typed objects.

Names derived here (variant, Nix package, Nix app) follow the same rule as
nix/lib/variants.nix; tests compare the two.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from trtllm_stack.errors import UserError

KNOWN_QUANTIZATIONS = ("NVFP4", "FP8")
KNOWN_GPU_ARCHS = ("hopper", "blackwell")


@dataclass(frozen=True)
class Runtime:
    tensorrt_llm_version: str
    triton_image: str


@dataclass(frozen=True)
class Checkpoint:
    repo: str
    revision: str
    gpu_arch: str
    weight_bits: int
    # True: ``repo`` is the unquantized BF16 model and the build quantizes it with ModelOpt
    # through TensorRT-LLM's own ``quantize_and_export`` (engine/trtllm_api.py); False: a
    # pre-quantized ModelOpt export that ships hf_quant_config.json.
    modelopt_quantize: bool = False


@dataclass(frozen=True)
class Model:
    key: str
    served_name: str
    hf_base: str
    architecture: str
    parameters_millions: int
    vocab_size: int
    hidden_size: int
    num_layers: int
    default_quantization: str
    checkpoints: dict[str, Checkpoint]


@dataclass(frozen=True)
class Variant:
    model: Model
    quantization: str
    tp: int
    max_batch_size: int
    max_seq_len: int
    max_num_tokens: int
    vram_gb_per_gpu: int
    # Data parallelism: the replica counts served as apps (each replica a full copy of this
    # engine on its own tp GPUs). The engine is the same for every count.
    dp: tuple[int, ...] = (1,)
    # Prefix (KV-cache block) reuse in the model repository; `model-repo --no-kv-cache-reuse`
    # also turns it off. Optional in variants.toml, default on.
    kv_cache_reuse: bool = True

    @property
    def max_input_len(self) -> int:
        """The longest prompt the variant promises: its whole context less one output token.

        TensorRT-LLM's runtime takes the same value when chunked context is on
        (cpp/tensorrt_llm/batch_manager/trtGptModelInflightBatching.cpp: "TRTGptModel
        maxInputLen: %d  = maxSequenceLen - 1 since chunked context is enabled"); the build
        passes it as ``--max_input_len`` so the engine's config.json says the same.
        """
        return self.max_seq_len - 1

    @property
    def checkpoint(self) -> Checkpoint:
        return self.model.checkpoints[self.quantization]

    @property
    def world_size(self) -> int:
        return self.tp

    @property
    def name(self) -> str:
        """e.g. ``qwen3-32b-nvfp4-tp2``: what ``--variant`` takes."""
        return f"{self.model.key}-{self.quantization.lower()}-tp{self.tp}"

    @property
    def _quant_suffix(self) -> str:
        q = self.quantization
        return "" if q == self.model.default_quantization else f"-{q.lower()}"

    @property
    def _tp_suffix(self) -> str:
        return "" if self.tp == 1 else f"-tp{self.tp}"

    @property
    def package_name(self) -> str:
        """Nix package: ``qwen3-32b-engine``, ``-engine-tp2``, ``qwen3-32b-fp8-engine``."""
        return f"{self.model.key}{self._quant_suffix}-engine{self._tp_suffix}"

    @property
    def app_name(self) -> str:
        """Nix app: ``tritonserver-qwen3``, ``tritonserver-qwen3-tp4``, ``...-qwen3-fp8``."""
        return f"tritonserver-{self.model.served_name}{self._quant_suffix}{self._tp_suffix}"


@dataclass(frozen=True)
class Deployment:
    """A variant served as ``replicas`` data-parallel copies (``tp x replicas`` GPUs)."""

    variant: Variant
    replicas: int

    @property
    def _dp_suffix(self) -> str:
        return "" if self.replicas == 1 else f"-dp{self.replicas}"

    @property
    def name(self) -> str:
        """e.g. ``qwen3-32b-nvfp4-tp1-dp4``; with one replica the variant's name."""
        return self.variant.name + self._dp_suffix

    @property
    def app_name(self) -> str:
        """Nix app: ``tritonserver-qwen3-dp4``, ``tritonserver-qwen3-tp2-dp2``."""
        return self.variant.app_name + self._dp_suffix

    @property
    def gpus(self) -> int:
        return self.variant.tp * self.replicas


@dataclass(frozen=True)
class VariantTable:
    runtime: Runtime
    models: dict[str, Model]
    variants: tuple[Variant, ...]

    def get(self, name: str) -> Variant:
        for v in self.variants:
            if name in (v.name, v.package_name, v.app_name):
                return v
        known = ", ".join(v.name for v in self.variants)
        raise UserError(f"unknown variant {name!r}; known variants: {known}")

    @property
    def deployments(self) -> tuple[Deployment, ...]:
        return tuple(Deployment(v, n) for v in self.variants for n in v.dp)

    def deployment(self, name: str) -> Deployment:
        """A variant or a ``-dpN`` deployment of one, by any of its names."""
        for d in self.deployments:
            if name in (d.name, d.app_name):
                return d
        return Deployment(self.get(name), 1)


def _require(table: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in table:
        raise UserError(f"variants.toml: {where}: missing field {key!r}")
    value = table[key]
    # bool is an int in Python; TOML integers must not be booleans here.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise UserError(
            f"variants.toml: {where}: field {key!r} must be {getattr(kind, '__name__', kind)},"
            f" got {value!r}"
        )
    return value


def _positive(value: int, key: str, where: str) -> int:
    if value <= 0:
        raise UserError(f"variants.toml: {where}: field {key!r} must be > 0, got {value}")
    return value


def parse_table(data: dict[str, Any]) -> VariantTable:
    """Validate the raw TOML and build typed objects; every error names the entry."""
    if data.get("schema") != 1:
        raise UserError(f"variants.toml: unsupported schema {data.get('schema')!r} (expected 1)")
    rt = _require(data, "runtime", dict, "top level")
    runtime = Runtime(
        tensorrt_llm_version=_require(rt, "tensorrt_llm_version", str, "[runtime]"),
        triton_image=_require(rt, "triton_image", str, "[runtime]"),
    )
    models: dict[str, Model] = {}
    for key, m in _require(data, "models", dict, "top level").items():
        where = f"[models.{key}]"
        checkpoints: dict[str, Checkpoint] = {}
        for quant, c in _require(m, "checkpoints", dict, where).items():
            cwhere = f"[models.{key}.checkpoints.{quant}]"
            if quant not in KNOWN_QUANTIZATIONS:
                raise UserError(
                    f"variants.toml: {cwhere}: unknown quantization {quant!r};"
                    f" known: {', '.join(KNOWN_QUANTIZATIONS)}"
                )
            arch = _require(c, "gpu_arch", str, cwhere)
            if arch not in KNOWN_GPU_ARCHS:
                raise UserError(
                    f"variants.toml: {cwhere}: gpu_arch must be one of"
                    f" {', '.join(KNOWN_GPU_ARCHS)}, got {arch!r}"
                )
            checkpoints[quant] = Checkpoint(
                repo=_require(c, "repo", str, cwhere),
                revision=_require(c, "revision", str, cwhere),
                gpu_arch=arch,
                weight_bits=_positive(
                    _require(c, "weight_bits", int, cwhere), "weight_bits", cwhere
                ),
                modelopt_quantize=(
                    _require(c, "modelopt_quantize", bool, cwhere)
                    if "modelopt_quantize" in c
                    else False
                ),
            )
        default_q = _require(m, "default_quantization", str, where)
        if default_q not in checkpoints:
            raise UserError(
                f"variants.toml: {where}: default_quantization {default_q!r} has no checkpoint"
            )
        models[key] = Model(
            key=key,
            served_name=_require(m, "served_name", str, where),
            hf_base=_require(m, "hf_base", str, where),
            architecture=_require(m, "architecture", str, where),
            parameters_millions=_positive(
                _require(m, "parameters_millions", int, where), "parameters_millions", where
            ),
            vocab_size=_positive(_require(m, "vocab_size", int, where), "vocab_size", where),
            hidden_size=_positive(_require(m, "hidden_size", int, where), "hidden_size", where),
            num_layers=_positive(_require(m, "num_layers", int, where), "num_layers", where),
            default_quantization=default_q,
            checkpoints=checkpoints,
        )
    variants: list[Variant] = []
    for i, v in enumerate(_require(data, "variants", list, "top level")):
        where = f"[[variants]] #{i + 1}"
        if not isinstance(v, dict):
            raise UserError(f"variants.toml: {where}: must be a table")
        mkey = _require(v, "model", str, where)
        if mkey not in models:
            raise UserError(f"variants.toml: {where}: unknown model {mkey!r}")
        model = models[mkey]
        quant = _require(v, "quantization", str, where)
        if quant not in model.checkpoints:
            raise UserError(f"variants.toml: {where}: model {mkey!r} has no {quant} checkpoint")
        where = f"[[variants]] #{i + 1} ({mkey} {quant})"
        ints = {
            k: _positive(_require(v, k, int, where), k, where)
            for k in ("tp", "max_batch_size", "max_seq_len", "max_num_tokens", "vram_gb_per_gpu")
        }
        if ints["tp"] & (ints["tp"] - 1):
            raise UserError(f"variants.toml: {where}: tp must be a power of two, got {ints['tp']}")
        dp = v.get("dp", [1])
        if (
            not isinstance(dp, list)
            or not dp
            or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in dp)
            or len(set(dp)) != len(dp)
        ):
            raise UserError(
                f"variants.toml: {where}: dp must be a list of distinct replica counts >= 1,"
                f" got {dp!r}"
            )
        reuse = _require(v, "kv_cache_reuse", bool, where) if "kv_cache_reuse" in v else True
        variants.append(
            Variant(model=model, quantization=quant, dp=tuple(dp), kv_cache_reuse=reuse, **ints)
        )
    seen: dict[str, int] = {}
    for i, var in enumerate(variants):
        names = [var.name, var.package_name, var.app_name]
        names += [Deployment(var, n).name for n in var.dp if n > 1]
        names += [Deployment(var, n).app_name for n in var.dp if n > 1]
        for n in names:
            if n in seen:
                raise UserError(
                    f"variants.toml: [[variants]] #{i + 1}: name {n!r} repeats entry #{seen[n] + 1}"
                )
            seen[n] = i
    return VariantTable(runtime=runtime, models=models, variants=tuple(variants))


def load_table(path: Path | None = None) -> VariantTable:
    """Load the packaged table, or another file (tests, user overrides)."""
    if path is None:
        return _packaged_table()
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read variant table {path}: {exc.strerror}") from None
    return _parse_bytes(raw, str(path))


def _parse_bytes(raw: bytes, where: str) -> VariantTable:
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{where}: not valid TOML: {exc}") from None
    return parse_table(data)


@cache
def _packaged_table() -> VariantTable:
    raw = resources.files("trtllm_stack").joinpath("variants.toml").read_bytes()
    return _parse_bytes(raw, "variants.toml")


def packaged_table_path() -> Path:
    return Path(str(resources.files("trtllm_stack").joinpath("variants.toml")))
