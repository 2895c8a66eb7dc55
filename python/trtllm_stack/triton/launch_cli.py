"""``trtllm-stack triton``: prepare the model repository for an engine and run Triton on it.

One MPI rank per GPU (mpirun, like TensorRT-LLM's launch_triton_server.py), NCCL settings
for PCIe boxes, loopback ports by default. ``--engine scripted`` runs the CPU stand-in.
Top-level imports: standard library only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import threading
from pathlib import Path
from typing import IO, Any

from trtllm_stack.errors import UserError

DEFAULT_READY_TIMEOUT = 1800.0  # a 32B engine on 4 GPUs can take minutes to load


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "triton",
        help="serve an engine with Triton (one MPI rank per GPU)",
        description="Prepare the model repository for an engine in a runtime directory, check"
        " the engine against the GPUs and the server's TensorRT-LLM, and start Triton with one"
        " MPI rank per GPU. Ctrl-C / SIGTERM stops every rank.",
    )
    p.add_argument(
        "--engine",
        required=True,
        metavar="DIR|scripted",
        help="TensorRT-LLM engine directory (config.json + rankN.engine), or 'scripted' for"
        " the CPU stand-in engine",
    )
    p.add_argument("--variant", metavar="NAME", help="variant from variants.toml (limits, checks)")
    p.add_argument(
        "--world-size",
        type=int,
        metavar="N",
        help="MPI ranks to start (default: the engine's tp x pp; scripted: the variant's tp or 1)",
    )
    p.add_argument(
        "--replicas",
        type=int,
        metavar="N",
        help="data parallelism: N tritonservers, each a full copy of the engine on its own"
        " world-size GPUs (CUDA_VISIBLE_DEVICES) and ports (the given ones + 10 x replica);"
        " default: the variant's -dpN, else 1",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--http-port", type=int, default=8000, metavar="PORT")
    p.add_argument("--grpc-port", type=int, default=8001, metavar="PORT")
    p.add_argument("--metrics-port", type=int, default=8002, metavar="PORT")
    p.add_argument(
        "--nccl-p2p-disable",
        action="store_true",
        help="set NCCL_P2P_DISABLE=1 for boards whose PCIe peer-to-peer is broken",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print the command and environment, then exit"
    )
    p.add_argument(
        "--runtime-dir",
        type=Path,
        metavar="DIR",
        help="where the model repository and rank logs go"
        " (default $XDG_STATE_HOME/trtllm-stack/triton/<engine>)",
    )
    p.add_argument(
        "--tokenizer-dir",
        type=Path,
        metavar="DIR",
        help="tokenizer files (default: the engine directory if it has them, else the bundled"
        " Qwen3 tokenizer)",
    )
    p.add_argument(
        "--server-trtllm-version",
        metavar="V",
        help="TensorRT-LLM version of the server (default: the installed tensorrt_llm package,"
        " else variants.toml [runtime].tensorrt_llm_version)",
    )
    p.add_argument(
        "--tritonserver",
        metavar="PATH",
        help="tritonserver binary (default: on PATH, else /opt/tritonserver/bin/tritonserver;"
        " scripted: the CPU build from nvidia-pytriton)",
    )
    p.add_argument("--mpirun", metavar="PATH", help="mpirun binary (default: on PATH)")
    p.add_argument(
        "--ready-timeout",
        type=float,
        default=DEFAULT_READY_TIMEOUT,
        metavar="SECONDS",
        help=f"give up if Triton is not ready by then (default {DEFAULT_READY_TIMEOUT:.0f})",
    )
    p.add_argument(
        "--quiet", action="store_true", help="do not echo rank output (logs are still written)"
    )
    p.add_argument(
        "--scripted-token-delay-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="scripted engine only: simulated decode time per token",
    )
    p.set_defaults(handler=run_triton)


def _label(engine: str, variant_name: str | None) -> str:
    if engine == "scripted":
        return f"scripted-{variant_name}" if variant_name else "scripted"
    return variant_name or Path(engine).resolve().name


def _find_tritonserver(given: str | None) -> str:
    if given:
        if not (os.path.isfile(given) and os.access(given, os.X_OK)):
            raise UserError(f"--tritonserver {given} is not an executable file")
        return given
    found = shutil.which("tritonserver")
    if found:
        return found
    default = "/opt/tritonserver/bin/tritonserver"
    if os.access(default, os.X_OK):
        return default
    raise UserError(
        "no tritonserver on PATH or in /opt/tritonserver/bin; run inside the Triton TensorRT-LLM"
        " image (nix run .#tritonserver-qwen3 does) or pass --tritonserver"
    )


def _find_mpirun(given: str | None) -> str:
    found = given or shutil.which("mpirun")
    if not found or not os.access(found, os.X_OK):
        raise UserError(
            "mpirun not found; install Open MPI (Debian/Ubuntu: apt-get install openmpi-bin)"
            " or pass --mpirun"
        )
    return found


def _lock_runtime_dir(runtime_dir: Path) -> IO[str]:
    """One launcher per runtime directory: the second would overwrite the first's repository."""
    import fcntl

    runtime_dir.mkdir(parents=True, exist_ok=True)
    lock = open(runtime_dir / "launcher.lock", "a+", encoding="utf-8")  # noqa: SIM115
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        holder = lock.read().strip() or "?"
        lock.close()
        raise UserError(
            f"runtime directory {runtime_dir} is in use by another launcher (pid {holder});"
            " stop it or pass another --runtime-dir"
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def run_triton(args: argparse.Namespace) -> int:
    from trtllm_stack.triton import launch_plan as plan
    from trtllm_stack.variants import load_table

    table = load_table()
    deployment = table.deployment(args.variant) if args.variant else None
    variant = deployment.variant if deployment else None
    replicas = (
        args.replicas if args.replicas is not None else (deployment.replicas if deployment else 1)
    )
    scripted = args.engine == "scripted"
    warnings: list[str] = []

    ports = plan.Ports(args.http_port, args.grpc_port, args.metrics_port)
    plan.check_port_values(ports)
    all_ports = plan.replica_ports(ports, replicas)

    # ---- engine and world size
    if scripted:
        engine_world = variant.world_size if variant else None
        engine_label = "the scripted engine"
        engine_summary = "scripted CPU engine"
        visible = None  # the scripted engine runs on CPU
        smi = None
    else:
        engine_dir = Path(args.engine).expanduser().resolve()
        info = plan.read_engine_config(engine_dir)
        plan.check_engine_files(info)
        if variant is not None:
            plan.check_variant(info, variant.name, variant.world_size, variant.quantization)
        server_version = plan.resolve_server_version(
            args.server_trtllm_version,
            plan.installed_tensorrt_llm_version(),
            table.runtime.tensorrt_llm_version,
        )
        warning = plan.check_versions(info, server_version)
        if warning:
            warnings.append(warning)
        engine_world = info.world_size
        engine_label = f"engine {engine_dir}"
        engine_summary = f"{engine_dir} ({info.description})"
        smi = plan.nvidia_smi_list()
        visible = plan.visible_gpu_count(os.environ, smi)
    world = plan.resolve_world_size(
        engine_world, args.world_size, visible, engine_label=engine_label
    )
    # Each replica gets its own world-size GPUs; the scripted engine runs on CPU but is
    # pinned the same way, so the stand-in shows what a GPU box would get.
    devices = plan.visible_devices(os.environ, smi)
    source = visible[1] if visible else ""
    pinning = plan.replica_devices(devices, replicas, world, source)

    # ---- ports
    if args.dry_run:
        try:
            plan.check_replica_ports_free(args.host, all_ports)
        except UserError as exc:
            warnings.append(str(exc))
    else:
        plan.check_replica_ports_free(args.host, all_ports)

    # ---- binaries and environment
    mpirun = _find_mpirun(args.mpirun)
    launch_env: dict[str, str] = plan.nccl_env(os.environ, p2p_disable=args.nccl_p2p_disable)
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        launch_env["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
    backend_dir: str | None = None
    mpirun_extra: tuple[str, ...] = ()
    if scripted:
        from trtllm_stack.triton.server import cpu_tritonserver

        cpu = cpu_tritonserver()
        tritonserver = str(cpu.binary)
        backend_dir = str(cpu.backend_dir)
        launch_env.update(cpu.env)
        # CPU only: the scripted ranks > 0 sit idle, so more ranks than cores is fine.
        # --noprefix: mpirun called by absolute path (/usr/bin/mpirun) otherwise puts
        # /usr/bin first on the ranks' PATH, and the Python stub then picks up the system
        # Python's stdlib instead of this interpreter's ("No module named '_socket'").
        mpirun_extra = ("--oversubscribe", "--noprefix")
    else:
        tritonserver = _find_tritonserver(args.tritonserver)

    runtime_dir = (
        args.runtime_dir or plan.default_runtime_dir() / _label(args.engine, args.variant)
    ).resolve()
    repo_dir = runtime_dir / "model-repository"
    launches: list[tuple[Any, list[str], dict[str, str]]] = []
    for r, replica_ports in enumerate(all_ports):
        env = dict(launch_env)
        if pinning is not None:
            env["CUDA_VISIBLE_DEVICES"] = pinning[r]
        spec = plan.LaunchSpec(
            tritonserver=tritonserver,
            model_repository=repo_dir,
            world_size=world,
            host=args.host,
            ports=replica_ports,
            exported_env=tuple(sorted(env)),
            backend_directory=backend_dir,
            mpirun=mpirun,
            mpirun_extra=mpirun_extra,
        )
        launches.append((spec, plan.build_launch_argv(spec), env))

    for w in warnings:
        print(f"trtllm-stack triton: warning: {w}", file=sys.stderr)
    if args.dry_run:
        print(f"# engine: {engine_summary}; world size {world}")
        print(f"# model repository (written at launch): {repo_dir}")
        for r, (spec, argv, env) in enumerate(launches):
            if replicas > 1:
                print(f"# replica {r} of {replicas}: gRPC {spec.host}:{spec.ports.grpc}")
            print("# environment passed to every rank (-x):")
            for k in sorted(env):
                print(f"#   {k}={env[k]}")
            print(plan.format_command(argv, env))
        if replicas > 1:
            print(f"# proxy: --triton-url {_grpc_urls(plan, launches)}")
        return 0

    if replicas > 1:
        return _launch_replicas(args, plan, launches, runtime_dir, variant, engine_summary)
    spec, argv, env = launches[0]
    return _launch(args, plan, spec, argv, env, runtime_dir, variant, engine_summary)


def _grpc_urls(plan: Any, launches: list[tuple[Any, list[str], dict[str, str]]]) -> str:
    return ",".join(f"{plan.url_host(s.host)}:{s.ports.grpc}" for s, _, _ in launches)


def _tokenizer_dir(args: argparse.Namespace) -> Path:
    if args.tokenizer_dir is not None:
        return Path(args.tokenizer_dir).expanduser().resolve()
    if args.engine != "scripted":
        engine_dir = Path(args.engine).expanduser().resolve()
        if (engine_dir / "tokenizer.json").is_file():
            return engine_dir
    from trtllm_stack.tokenizer import bundled_qwen3_tokenizer_dir

    return bundled_qwen3_tokenizer_dir()


def _write_repository(
    args: argparse.Namespace, repo_dir: Path, runtime_dir: Path, variant: Any
) -> None:
    from trtllm_stack.triton.model_repo import ScriptedEngineOptions, write_model_repository

    scripted_options = None
    if args.engine == "scripted":
        scripted_options = ScriptedEngineOptions(
            token_delay_ms=args.scripted_token_delay_ms,
            event_log=runtime_dir / "scripted-events.jsonl",
        )
    engine: str | Path = (
        "scripted" if args.engine == "scripted" else Path(args.engine).expanduser().resolve()
    )
    write_model_repository(
        repo_dir,
        engine=engine,
        tokenizer_dir=_tokenizer_dir(args),
        variant=variant,
        scripted=scripted_options,
        force=True,
    )


def _launch_replicas(
    args: argparse.Namespace,
    plan: Any,
    launches: list[tuple[Any, list[str], dict[str, str]]],
    runtime_dir: Path,
    variant: Any,
    engine_summary: str,
) -> int:
    """N replicas: one mpirun each (own GPUs, ports, logs), one model repository.

    Started together, ready when every replica is; the first replica to fail (at start-up
    or later) stops them all with its exit code, so a service manager restarts the set.
    Replicas that must live and die on their own are separate launchers (own --runtime-dir,
    ports and CUDA_VISIBLE_DEVICES), which the proxy routes between just the same.
    """
    from trtllm_stack.triton.launcher import (
        LaunchFailure,
        TritonLaunch,
        become_subreaper,
        install_stop_handlers,
        print_failure,
    )

    lock = _lock_runtime_dir(runtime_dir)
    running: list[TritonLaunch] = []
    try:
        _write_repository(args, launches[0][0].model_repository, runtime_dir, variant)
        stop = threading.Event()
        install_stop_handlers(stop)
        become_subreaper()
        for r, (spec, argv, env) in enumerate(launches):
            host = plan.url_host(spec.host)
            launch = TritonLaunch(
                argv,
                {**os.environ, **env},
                world_size=spec.world_size,
                ready_url=f"http://{host}:{spec.ports.http}/v2/health/ready",
                log_dir=runtime_dir / "logs" / f"replica-{r}",
                echo=None if args.quiet else sys.stderr,
            )
            try:
                launch.start()
            except OSError as exc:
                raise UserError(f"cannot start {spec.mpirun}: {exc.strerror}") from None
            running.append(launch)
        print(
            f"trtllm-stack triton: starting {len(launches)} replicas x"
            f" {launches[0][0].world_size} rank(s) for {engine_summary}",
            file=sys.stderr,
            flush=True,
        )
        exit_code = 0
        try:
            for launch in running:
                if not launch.wait_ready(args.ready_timeout, stop):
                    break
            else:
                for r, (spec, _, env) in enumerate(launches):
                    host = plan.url_host(spec.host)
                    gpus = env.get("CUDA_VISIBLE_DEVICES", "-")
                    print(
                        f"Triton replica {r} ready (GPUs {gpus}): HTTP http://{host}:"
                        f"{spec.ports.http}  gRPC {host}:{spec.ports.grpc}  metrics"
                        f" http://{host}:{spec.ports.metrics}/metrics",
                        flush=True,
                    )
                print(
                    f"all {len(running)} replicas ready; proxy: trtllm-stack proxy"
                    f" --triton-url {_grpc_urls(plan, launches)}"
                    f"  (logs: {runtime_dir / 'logs'}; Ctrl-C stops)",
                    flush=True,
                )
                while not stop.is_set():
                    for launch in running:
                        launch.check_running()
                    stop.wait(1.0)
        except LaunchFailure as failure:
            print_failure(failure)
            exit_code = failure.exit_code
        if exit_code == 0:
            print("trtllm-stack triton: stopping every replica", file=sys.stderr, flush=True)
        return exit_code
    finally:
        # Stopped together: each stop() waits for its own ranks' grace period.
        from concurrent.futures import ThreadPoolExecutor

        swept: list[int] = []
        if running:
            with ThreadPoolExecutor(len(running)) as pool:
                for pids in pool.map(lambda launch: launch.stop(), running):
                    swept += pids
        if swept:
            print(
                f"trtllm-stack triton: ended {len(swept)} leftover process(es): {swept}",
                file=sys.stderr,
            )
        lock.close()


def _launch(
    args: argparse.Namespace,
    plan: Any,
    spec: Any,
    argv: list[str],
    launch_env: dict[str, str],
    runtime_dir: Path,
    variant: Any,
    engine_summary: str,
) -> int:
    from trtllm_stack.triton.launcher import (
        LaunchFailure,
        TritonLaunch,
        become_subreaper,
        install_stop_handlers,
        print_failure,
    )

    lock = _lock_runtime_dir(runtime_dir)
    try:
        _write_repository(args, spec.model_repository, runtime_dir, variant)

        stop = threading.Event()
        install_stop_handlers(stop)
        become_subreaper()
        host = plan.url_host(spec.host)
        launch = TritonLaunch(
            argv,
            {**os.environ, **launch_env},
            world_size=spec.world_size,
            ready_url=f"http://{host}:{spec.ports.http}/v2/health/ready",
            log_dir=runtime_dir / "logs",
            echo=None if args.quiet else sys.stderr,
        )
        print(
            f"trtllm-stack triton: starting {spec.world_size} rank(s) for {engine_summary}",
            file=sys.stderr,
            flush=True,
        )
        try:
            launch.start()
        except OSError as exc:
            raise UserError(f"cannot start {spec.mpirun}: {exc.strerror}") from None
        exit_code = 0
        try:
            if launch.wait_ready(args.ready_timeout, stop):
                print(
                    f"Triton ready, world size {spec.world_size}:"
                    f" HTTP http://{host}:{spec.ports.http}"
                    f"  gRPC {host}:{spec.ports.grpc}"
                    f"  metrics http://{host}:{spec.ports.metrics}/metrics"
                    f"  (logs: {runtime_dir / 'logs'}; Ctrl-C stops)",
                    flush=True,
                )
                launch.supervise(stop)
        except LaunchFailure as failure:
            print_failure(failure)
            exit_code = failure.exit_code
        finally:
            swept = launch.stop()
        if swept:
            print(
                f"trtllm-stack triton: ended {len(swept)} leftover process(es): {swept}",
                file=sys.stderr,
            )
        if exit_code == 0:
            print("trtllm-stack triton: stopped", file=sys.stderr, flush=True)
        return exit_code
    finally:
        lock.close()
