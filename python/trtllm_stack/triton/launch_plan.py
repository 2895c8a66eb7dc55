"""What the Triton launcher checks and runs, as pure functions.

Everything here decides; nothing starts a process. ``launcher.py`` runs the plan.

The argv follows TensorRT-LLM's ``triton_backend/scripts/launch_triton_server.py``
(``get_cmd``): ``mpirun --allow-run-as-root`` and one ``-n 1 tritonserver ...`` block per
rank separated by ``:``. Rank 0 serves the whole repository; ranks > 0 load only the
``tensorrt_llm`` model (explicit model control) and, in TensorRT-LLM's leader mode, never
return from its initialisation. ``get_cmd`` uses mpirun for world size 1 as well (only its
``--no-mpi`` switch skips it), so we do too.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trtllm_stack.errors import UserError

ENGINE_MODEL = "tensorrt_llm"

# NCCL over PCIe without NVLink (the boxes this stack targets): no InfiniBand, peer-to-peer
# only up to the host bridge, shared memory on. The Nix app sets the same values; tests
# compare the two.
NCCL_PCIE_DEFAULTS: dict[str, str] = {
    "NCCL_IB_DISABLE": "1",
    "NCCL_P2P_LEVEL": "PHB",
    "NCCL_SHM_DISABLE": "0",
}
# --nccl-p2p-disable: the known fallback for boards whose PCIe peer-to-peer is broken
# (hangs or garbage in all-reduce); NCCL then goes through host shared memory.
NCCL_P2P_DISABLE = ("NCCL_P2P_DISABLE", "1")

DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
DEFAULT_METRICS_PORT = 8002
DEFAULT_HOST = "127.0.0.1"


# --------------------------------------------------------------------------- engine config


@dataclass(frozen=True)
class EngineInfo:
    """The parts of a TensorRT-LLM engine's ``config.json`` the launcher checks.

    Layout written by ``tensorrt_llm.builder.Engine.save`` (``EngineConfig.to_dict``):
    ``{"version", "pretrained_config": {"mapping": {"world_size", "tp_size", "pp_size", ...},
    "quantization": {"quant_algo", "kv_cache_quant_algo", ...}, ...}, "build_config": {...}}``.
    """

    path: Path
    version: str | None
    world_size: int
    tp_size: int
    pp_size: int
    quant_algo: str | None
    kv_cache_quant_algo: str | None
    max_input_len: int | None = None
    max_seq_len: int | None = None

    @property
    def description(self) -> str:
        quant = self.quant_algo or "unquantized"
        return (
            f"TensorRT-LLM {self.version or '(unrecorded)'}, world size {self.world_size}"
            f" (tp {self.tp_size} x pp {self.pp_size}), {quant}"
        )


def _positive_int(value: Any, key: str, where: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UserError(f"{where}: {key} must be a positive integer, got {value!r}")
    return value


def _optional_int(table: dict[str, Any], key: str) -> int | None:
    value = table.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def read_engine_config(engine_dir: Path) -> EngineInfo:
    """Parse ``engine_dir/config.json``; every problem is one readable UserError."""
    if not engine_dir.is_dir():
        raise UserError(f"engine directory {engine_dir} does not exist")
    config_path = engine_dir / "config.json"
    try:
        raw = config_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(
            f"{engine_dir} has no config.json: not a TensorRT-LLM engine directory"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {config_path}: {exc}") from None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UserError(f"{config_path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise UserError(f"{config_path}: expected a JSON object")
    pretrained = config.get("pretrained_config")
    if not isinstance(pretrained, dict):
        hint = (
            " (a Hugging Face config.json? the engine build must not overwrite the engine's)"
            if "architectures" in config
            else ""
        )
        raise UserError(f"{config_path}: no 'pretrained_config' section{hint}")
    mapping = pretrained.get("mapping")
    if not isinstance(mapping, dict):
        raise UserError(f"{config_path}: no 'pretrained_config.mapping' section")
    tp = _positive_int(mapping.get("tp_size", 1), "pretrained_config.mapping.tp_size", config_path)
    pp = _positive_int(mapping.get("pp_size", 1), "pretrained_config.mapping.pp_size", config_path)
    cp = _positive_int(mapping.get("cp_size", 1), "pretrained_config.mapping.cp_size", config_path)
    world = _positive_int(
        mapping.get("world_size", tp * pp * cp), "pretrained_config.mapping.world_size", config_path
    )
    if world != tp * pp * cp:
        raise UserError(
            f"{config_path}: inconsistent mapping: world_size {world} but tp_size {tp} x"
            f" pp_size {pp}" + (f" x cp_size {cp}" if cp != 1 else "") + f" = {tp * pp * cp}"
        )
    version = config.get("version")
    if version is not None and not isinstance(version, str):
        raise UserError(f"{config_path}: 'version' must be a string, got {version!r}")
    quant = pretrained.get("quantization")
    quant = quant if isinstance(quant, dict) else {}
    build = config.get("build_config")
    build = build if isinstance(build, dict) else {}
    return EngineInfo(
        path=engine_dir,
        version=version.strip() if isinstance(version, str) and version.strip() else None,
        world_size=world,
        tp_size=tp,
        pp_size=pp,
        quant_algo=quant.get("quant_algo") if isinstance(quant.get("quant_algo"), str) else None,
        kv_cache_quant_algo=(
            quant.get("kv_cache_quant_algo")
            if isinstance(quant.get("kv_cache_quant_algo"), str)
            else None
        ),
        max_input_len=_optional_int(build, "max_input_len"),
        max_seq_len=_optional_int(build, "max_seq_len"),
    )


def check_engine_files(info: EngineInfo) -> None:
    """Every rank needs its ``rankN.engine``; say which are missing before anything starts."""
    missing = [
        f"rank{r}.engine"
        for r in range(info.world_size)
        if not (info.path / f"rank{r}.engine").is_file()
    ]
    if missing:
        raise UserError(
            f"engine {info.path} (world size {info.world_size}) is missing {', '.join(missing)}"
        )


def check_variant(info: EngineInfo, variant_name: str, variant_tp: int, variant_quant: str) -> None:
    """The variant chosen for the repository limits must describe this engine."""
    if variant_tp != info.world_size:
        raise UserError(
            f"variant {variant_name} is tp {variant_tp} but engine {info.path} has world size"
            f" {info.world_size}; pick the matching variant"
        )
    if info.quant_algo is not None and info.quant_algo.upper() != variant_quant.upper():
        raise UserError(
            f"variant {variant_name} is {variant_quant} but engine {info.path} is quantized"
            f" {info.quant_algo}; pick the matching variant"
        )


# --------------------------------------------------------------------------- ranks and GPUs


def visible_gpu_count(
    environ: Mapping[str, str],
    nvidia_smi_list: str | None = None,
) -> tuple[int, str] | None:
    """How many GPUs this process may use, and where that number comes from.

    ``CUDA_VISIBLE_DEVICES`` wins (empty, ``-1`` or ``NoDevFiles`` mean none); otherwise the
    output of ``nvidia-smi -L`` when given; ``None`` when neither is known (no check).
    """
    cvd = environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None:
        devices = []
        for item in cvd.split(","):
            item = item.strip()
            # CUDA stops enumerating at the first invalid entry.
            if not item or item in ("-1", "NoDevFiles"):
                break
            devices.append(item)
        return len(devices), f"CUDA_VISIBLE_DEVICES={cvd!r}"
    if nvidia_smi_list is not None:
        count = sum(1 for line in nvidia_smi_list.splitlines() if line.startswith("GPU "))
        return count, "nvidia-smi -L"
    return None


def nvidia_smi_list() -> str | None:
    """``nvidia-smi -L`` output, or None where there is no nvidia-smi (CPU boxes, tests)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else ""


def resolve_world_size(
    engine_world_size: int | None,
    requested: int | None,
    visible_gpus: tuple[int, str] | None,
    *,
    engine_label: str = "the engine",
) -> int:
    """The number of ranks to start, or one message saying what does not fit.

    Fewer GPUs than ranks is refused. More GPUs than ranks works (rank r uses device r), so
    that is allowed; ``CUDA_VISIBLE_DEVICES`` picks which ones.
    """
    if requested is not None and requested < 1:
        raise UserError(f"--world-size must be >= 1, got {requested}")
    if engine_world_size is not None and requested is not None and requested != engine_world_size:
        raise UserError(
            f"MPI size mismatch: {engine_label} was built for world size {engine_world_size}"
            f" (tp x pp) but --world-size {requested} ranks were requested; an engine runs"
            f" only with the world size it was built for"
        )
    world = requested if requested is not None else (engine_world_size or 1)
    if visible_gpus is not None:
        count, source = visible_gpus
        if count < world:
            raise UserError(
                f"{engine_label} needs {world} GPU(s), one per rank, but only {count} visible"
                f" ({source})"
            )
    return world


# --------------------------------------------------------------------------- versions


@dataclass(frozen=True)
class ServerVersion:
    version: str
    source: str


def installed_tensorrt_llm_version() -> str | None:
    """The TensorRT-LLM the server side would load, read from package metadata.

    Same value as ``tensorrt_llm.__version__`` without importing it: the import initialises
    CUDA and MPI, which must not happen in the process that starts mpirun.
    """
    from importlib import metadata

    for dist in ("tensorrt_llm", "tensorrt-llm"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def resolve_server_version(
    cli_value: str | None, installed: str | None, pinned: str
) -> ServerVersion:
    """``--server-trtllm-version`` > installed tensorrt_llm > variants.toml [runtime] pin."""
    if cli_value:
        return ServerVersion(cli_value.strip(), "--server-trtllm-version")
    if installed:
        return ServerVersion(installed, "installed tensorrt_llm package")
    return ServerVersion(pinned, "variants.toml [runtime].tensorrt_llm_version")


def _normalise_version(v: str) -> str:
    v = v.strip()
    return v[1:] if v[:1] in ("v", "V") else v


def check_versions(info: EngineInfo, server: ServerVersion) -> str | None:
    """Refuse an engine built by another TensorRT-LLM; returns a warning text when unknown."""
    if info.version is None:
        return (
            f"engine {info.path} records no TensorRT-LLM version; cannot check it against the"
            f" server's {server.version} ({server.source})"
        )
    if _normalise_version(info.version) != _normalise_version(server.version):
        raise UserError(
            f"TensorRT-LLM version mismatch: engine {info.path} was built with {info.version}"
            f" but the server runs {server.version} ({server.source}); rebuild the engine with"
            f" {server.version} or serve it with {info.version}"
        )
    return None


# --------------------------------------------------------------------------- NCCL env


def nccl_env(environ: Mapping[str, str], *, p2p_disable: bool = False) -> dict[str, str]:
    """NCCL settings for every rank: PCIe defaults, then every NCCL_* the user set (theirs win).

    ``--nccl-p2p-disable`` is an explicit request on the command line and overrides an
    inherited ``NCCL_P2P_DISABLE``.
    """
    env = dict(NCCL_PCIE_DEFAULTS)
    env.update({k: v for k, v in environ.items() if k.startswith("NCCL_")})
    if p2p_disable:
        env[NCCL_P2P_DISABLE[0]] = NCCL_P2P_DISABLE[1]
    return env


# --------------------------------------------------------------------------- ports


@dataclass(frozen=True)
class Ports:
    http: int = DEFAULT_HTTP_PORT
    grpc: int = DEFAULT_GRPC_PORT
    metrics: int = DEFAULT_METRICS_PORT

    def named(self) -> list[tuple[str, int]]:
        return [("HTTP", self.http), ("gRPC", self.grpc), ("metrics", self.metrics)]


def check_port_values(ports: Ports) -> None:
    seen: dict[int, str] = {}
    for name, port in ports.named():
        if not 1 <= port <= 65535:
            raise UserError(f"{name} port must be in 1..65535, got {port}")
        if port in seen:
            raise UserError(f"{seen[port]} and {name} ports are both {port}; they must differ")
        seen[port] = name


def port_in_use(host: str, port: int) -> bool:
    """True when something listens on host:port (a bind attempt fails with EADDRINUSE).

    SO_REUSEADDR lets the probe ignore TIME_WAIT leftovers of a stopped server; on Linux it
    still fails against a listening socket. Triton's gRPC listener uses SO_REUSEPORT, so a
    second server could silently share the port: this check is what stops that.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            if exc.errno == errno.EACCES:
                raise UserError(
                    f"no permission to bind {host}:{port} (ports below 1024 need root)"
                ) from None
            raise UserError(f"cannot bind {host}:{port}: {exc.strerror}") from None
    return False


def check_ports_free(host: str, ports: Ports) -> None:
    check_port_values(ports)
    busy = [f"{name} port {port}" for name, port in ports.named() if port_in_use(host, port)]
    if busy:
        raise UserError(
            f"{' and '.join(busy)} on {host} already in use (another Triton running?);"
            f" stop it or choose other ports with --http-port/--grpc-port/--metrics-port"
        )


def probe_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to ``host``."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def url_host(host: str) -> str:
    host = probe_host(host)
    return f"[{host}]" if ":" in host else host


# --------------------------------------------------------------------------- argv


@dataclass(frozen=True)
class LaunchSpec:
    """Everything the argv depends on."""

    tritonserver: str
    model_repository: Path
    world_size: int
    host: str = DEFAULT_HOST
    ports: Ports = field(default_factory=Ports)
    # Variables every rank must get (names only: values travel in mpirun's environment,
    # which Open MPI copies to local ranks and ships with -x to remote ones).
    exported_env: tuple[str, ...] = ()
    backend_directory: str | None = None
    mpirun: str = "mpirun"
    # Options only the CPU path needs (e.g. --oversubscribe on a 1-core container).
    mpirun_extra: tuple[str, ...] = ()
    engine_model: str = ENGINE_MODEL
    log_verbose: int = 0


def rank_tritonserver_args(spec: LaunchSpec, rank: int) -> list[str]:
    """The ``tritonserver ...`` command of one rank."""
    args = [spec.tritonserver, f"--model-repository={spec.model_repository}"]
    if spec.backend_directory:
        args.append(f"--backend-directory={spec.backend_directory}")
    if rank == 0:
        host = spec.host
        args += [
            f"--http-address={host}",
            f"--http-port={spec.ports.http}",
            f"--grpc-address={host}",
            f"--grpc-port={spec.ports.grpc}",
            f"--metrics-address={host}",
            f"--metrics-port={spec.ports.metrics}",
        ]
    else:
        # get_cmd gives every rank the same ports and relies on leader mode never letting a
        # rank > 0 finish loading; switching its endpoints off makes "opens no ports" hold
        # even if one ever does (it would otherwise fight rank 0 for the ports).
        args += [
            "--allow-http=false",
            "--allow-grpc=false",
            "--allow-metrics=false",
            "--model-control-mode=explicit",
            f"--load-model={spec.engine_model}",
        ]
    if spec.log_verbose:
        args.append(f"--log-verbose={spec.log_verbose}")
    args += [
        "--disable-auto-complete-config",
        # Each rank's Python backend needs its own shared-memory region names.
        f"--backend-config=python,shm-region-prefix-name=prefix{rank}_",
    ]
    return args


def build_launch_argv(spec: LaunchSpec) -> list[str]:
    """``mpirun ... -n 1 tritonserver ... : -n 1 tritonserver ...``, one block per rank."""
    if spec.world_size < 1:
        raise ValueError(f"world size must be >= 1, got {spec.world_size}")
    argv = [
        spec.mpirun,
        "--allow-run-as-root",
        # Lines come back as "[job,rank]<stdout>:..." so the launcher can keep each rank's log.
        "--tag-output",
        # Open MPI binds each rank to one core by default when there are <= 2 ranks; a
        # tritonserver rank runs many threads (gRPC, Python stubs, executor) and must not be
        # squeezed onto one core.
        "--bind-to",
        "none",
        *spec.mpirun_extra,
    ]
    exports: list[str] = []
    for name in spec.exported_env:
        exports += ["-x", name]
    for rank in range(spec.world_size):
        if rank:
            argv.append(":")
        # -x is per application context in Open MPI: repeat it in every rank's block.
        argv += ["-n", "1", *exports, *rank_tritonserver_args(spec, rank)]
    return argv


def format_command(argv: Sequence[str], env: Mapping[str, str]) -> str:
    """A copy-pasteable shell line: ``env K=V ... mpirun ...``."""
    assignments = [f"{k}={shlex.quote(v)}" for k, v in sorted(env.items())]
    prefix = ["env", *assignments] if assignments else []
    return " ".join([*prefix, *(shlex.quote(a) for a in argv)])


_OUTPUT_TAG = re.compile(r"\[\d+,(\d+)\]<std(?:out|err|diag)>:")


def rank_of_tagged_line(line: str) -> tuple[int | None, str]:
    """Split an ``--tag-output`` line ``[1,3]<stderr>:text`` into (3, "text").

    mpirun tags every write, so a line written in pieces carries tags inside; they go too.
    """
    m = _OUTPUT_TAG.match(line)
    if m is None:
        return None, line
    return int(m.group(1)), _OUTPUT_TAG.sub("", line[m.end() :])


def split_tagged_line(line: str) -> list[tuple[int | None, str]]:
    """Like :func:`rank_of_tagged_line`, but a line in which two ranks' writes interleave
    (rank 1 wrote half a line, then rank 0 wrote) is split back into one piece per rank."""
    rank, _ = rank_of_tagged_line(line)
    if rank is None:
        return [(None, line)]
    pieces: list[tuple[int | None, str]] = []
    tags = list(_OUTPUT_TAG.finditer(line))
    for i, tag in enumerate(tags):
        end = tags[i + 1].start() if i + 1 < len(tags) else len(line)
        r, text = int(tag.group(1)), line[tag.end() : end]
        if pieces and pieces[-1][0] == r:
            pieces[-1] = (r, pieces[-1][1] + text)
        elif text or not pieces:
            pieces.append((r, text))
    return pieces


def default_runtime_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where the launcher writes the model repository and rank logs by default."""
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_STATE_HOME") or os.path.join(
        environ.get("HOME") or "/tmp", ".local", "state"
    )
    return Path(base) / "trtllm-stack" / "triton"


# --------------------------------------------------------------------------- replicas (dp)

# Replica r listens on the base ports + r * REPLICA_PORT_STRIDE (8000/8001/8002, then
# 8010/8011/8012, ...): readable, and clear of the base ports for strides up to 10.
REPLICA_PORT_STRIDE = 10


def replica_ports(base: Ports, replicas: int, stride: int = REPLICA_PORT_STRIDE) -> list[Ports]:
    """Each replica's ports; one message if two of them would share a port."""
    if replicas < 1:
        raise UserError(f"--replicas must be >= 1, got {replicas}")
    out = [
        Ports(base.http + r * stride, base.grpc + r * stride, base.metrics + r * stride)
        for r in range(replicas)
    ]
    seen: dict[int, str] = {}
    for r, ports in enumerate(out):
        check_port_values(ports)
        for name, port in ports.named():
            where = f"replica {r} {name}"
            if port in seen:
                raise UserError(
                    f"{seen[port]} and {where} ports are both {port}: with --replicas"
                    f" {replicas}, replica r uses the given ports + {stride} x r; choose base"
                    f" ports further apart"
                )
            seen[port] = where
    return out


def check_replica_ports_free(host: str, all_ports: Sequence[Ports]) -> None:
    """Every replica's ports, checked before anything starts; one message for all busy ones."""
    busy = [
        f"{'' if len(all_ports) == 1 else f'replica {r} '}{name} port {port}"
        for r, ports in enumerate(all_ports)
        for name, port in ports.named()
        if port_in_use(host, port)
    ]
    if busy:
        raise UserError(
            f"{', '.join(busy)} on {host} already in use (another Triton running?);"
            f" stop it or choose other ports with --http-port/--grpc-port/--metrics-port"
        )


def visible_devices(environ: Mapping[str, str], nvidia_smi: str | None) -> list[str] | None:
    """The device ids a child may be given in ``CUDA_VISIBLE_DEVICES``, in order.

    The user's ``CUDA_VISIBLE_DEVICES`` entries (indices or UUIDs) as they are, else the
    indices ``nvidia-smi -L`` lists; None when neither is known.
    """
    known = visible_gpu_count(environ, nvidia_smi)
    if known is None:
        return None
    cvd = environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None:
        return [item.strip() for item in cvd.split(",")][: known[0]]
    return [str(i) for i in range(known[0])]


def replica_devices(
    devices: list[str] | None, replicas: int, world_size: int, source: str = ""
) -> list[str] | None:
    """``CUDA_VISIBLE_DEVICES`` of each replica: consecutive groups of ``world_size`` devices
    (tp2 x dp2 on 0,1,2,3 -> "0,1" and "2,3"). Rank k of a replica uses the k-th device of
    its group, as in tensorrtllm_backend docs/llama_multi_instance.md's leader mode.

    With one replica the environment is left as it is (None).
    """
    if replicas == 1:
        return None
    need = replicas * world_size
    if devices is None:
        # No way to count here (no nvidia-smi): pin by index, the launch fails loudly if absent.
        devices = [str(i) for i in range(need)]
    if len(devices) < need:
        raise UserError(
            f"{replicas} replicas x world size {world_size} need {need} GPUs, but only"
            f" {len(devices)} visible{f' ({source})' if source else ''}"
        )
    return [",".join(devices[r * world_size : (r + 1) * world_size]) for r in range(replicas)]
