"""Pure parts of the Triton launcher: engine config, checks, NCCL env, ports, argv."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from trtllm_stack.errors import UserError
from trtllm_stack.triton.launch_plan import (
    NCCL_PCIE_DEFAULTS,
    EngineInfo,
    LaunchSpec,
    Ports,
    ServerVersion,
    build_launch_argv,
    check_engine_files,
    check_port_values,
    check_ports_free,
    check_variant,
    check_versions,
    format_command,
    nccl_env,
    rank_of_tagged_line,
    read_engine_config,
    resolve_server_version,
    resolve_world_size,
    split_tagged_line,
    visible_gpu_count,
)


def write_engine(
    root: Path,
    *,
    tp: int = 1,
    pp: int = 1,
    world: int | None = None,
    version: str | None = "1.1.0",
    quant: str | None = "NVFP4",
    rank_files: bool = True,
) -> Path:
    """A synthetic engine dir with the config.json layout of tensorrt_llm.builder.Engine.save."""
    root.mkdir(parents=True, exist_ok=True)
    config: dict = {
        "pretrained_config": {
            "architecture": "Qwen3ForCausalLM",
            "mapping": {
                "world_size": tp * pp if world is None else world,
                "tp_size": tp,
                "pp_size": pp,
            },
            "quantization": {"quant_algo": quant, "kv_cache_quant_algo": "FP8"},
        },
        "build_config": {"max_input_len": 1024, "max_seq_len": 2048},
    }
    if version is not None:
        config["version"] = version
    (root / "config.json").write_text(json.dumps(config))
    if rank_files:
        for r in range(tp * pp):
            (root / f"rank{r}.engine").write_bytes(b"")
    return root


# --------------------------------------------------------------------------- engine config


def test_read_engine_config_reads_mapping_version_and_quantization(
    tmp_path: Path,
) -> None:
    info = read_engine_config(write_engine(tmp_path / "e", tp=4, version="1.1.0"))
    assert (info.world_size, info.tp_size, info.pp_size) == (4, 4, 1)
    assert info.version == "1.1.0"
    assert info.quant_algo == "NVFP4"
    assert info.kv_cache_quant_algo == "FP8"
    assert (info.max_input_len, info.max_seq_len) == (1024, 2048)


def test_world_size_defaults_to_tp_times_pp(tmp_path: Path) -> None:
    d = tmp_path / "e"
    write_engine(d, tp=2, pp=2)
    cfg = json.loads((d / "config.json").read_text())
    del cfg["pretrained_config"]["mapping"]["world_size"]
    (d / "config.json").write_text(json.dumps(cfg))
    assert read_engine_config(d).world_size == 4


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no config.json"),
        ("{not json", "not valid JSON"),
        ('{"architectures": ["Qwen3ForCausalLM"]}', "Hugging Face config.json"),
        ('{"pretrained_config": {}}', "no 'pretrained_config.mapping'"),
        (
            '{"pretrained_config": {"mapping": {"world_size": 4, "tp_size": 2, "pp_size": 1}}}',
            "inconsistent mapping: world_size 4 but tp_size 2 x pp_size 1 = 2",
        ),
        (
            '{"pretrained_config": {"mapping": {"tp_size": 0}}}',
            "tp_size must be a positive integer",
        ),
    ],
)
def test_bad_engine_configs_are_one_line_errors(
    tmp_path: Path, content: str | None, message: str
) -> None:
    d = tmp_path / "e"
    d.mkdir()
    if content is not None:
        (d / "config.json").write_text(content)
    with pytest.raises(UserError, match=message):
        read_engine_config(d)


def test_missing_engine_dir(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        read_engine_config(tmp_path / "nope")


def test_missing_rank_engines_are_named(tmp_path: Path) -> None:
    info = read_engine_config(write_engine(tmp_path / "e", tp=4, rank_files=False))
    (tmp_path / "e" / "rank0.engine").write_bytes(b"")
    with pytest.raises(UserError, match=r"missing rank1\.engine, rank2\.engine, rank3\.engine"):
        check_engine_files(info)


def test_variant_must_match_engine(tmp_path: Path) -> None:
    info = read_engine_config(write_engine(tmp_path / "e", tp=2, quant="FP8"))
    check_variant(info, "qwen3-32b-fp8-tp2", 2, "FP8")
    with pytest.raises(UserError, match="variant qwen3-32b-fp8-tp4 is tp 4 but engine"):
        check_variant(info, "qwen3-32b-fp8-tp4", 4, "FP8")
    with pytest.raises(UserError, match=r"is NVFP4 but engine .* is quantized FP8"):
        check_variant(info, "qwen3-32b-nvfp4-tp2", 2, "NVFP4")


# --------------------------------------------------------------------------- world size / GPUs


@pytest.mark.parametrize(
    ("cvd", "count"),
    [
        ("0,1,2,3", 4),
        ("1", 1),
        ("", 0),
        ("-1", 0),
        ("0,-1,2", 1),
        ("GPU-abc,GPU-def", 2),
    ],
)
def test_cuda_visible_devices_counts(cvd: str, count: int) -> None:
    assert visible_gpu_count({"CUDA_VISIBLE_DEVICES": cvd}, "GPU 0: x\nGPU 1: y\n") == (
        count,
        f"CUDA_VISIBLE_DEVICES={cvd!r}",
    )


def test_nvidia_smi_list_counts_gpu_lines() -> None:
    listing = (
        "GPU 0: NVIDIA GeForce RTX 5090 (UUID: GPU-1)\n"
        "GPU 1: NVIDIA GeForce RTX 5090 (UUID: GPU-2)\n"
        "  MIG 1g.10gb Device 0: (UUID: MIG-1)\n"
    )
    assert visible_gpu_count({}, listing) == (2, "nvidia-smi -L")
    assert visible_gpu_count({}, None) is None


def test_world_size_follows_engine_when_not_requested() -> None:
    assert resolve_world_size(4, None, None) == 4
    assert resolve_world_size(2, 2, (2, "nvidia-smi -L")) == 2
    assert resolve_world_size(None, None, None) == 1


def test_more_gpus_than_ranks_is_allowed() -> None:
    assert resolve_world_size(2, None, (4, "nvidia-smi -L")) == 2


def test_ranks_requested_must_match_engine() -> None:
    with pytest.raises(UserError) as exc:
        resolve_world_size(4, 2, (4, "nvidia-smi -L"), engine_label="engine /e")
    message = str(exc.value)
    assert "MPI size mismatch" in message
    assert "engine /e was built for world size 4" in message
    assert "--world-size 2" in message


def test_too_few_gpus_is_refused_naming_the_source() -> None:
    with pytest.raises(
        UserError,
        match=r"needs 4 GPU\(s\), one per rank, but only 2 visible "
        r"\(CUDA_VISIBLE_DEVICES='0,1'\)",
    ):
        resolve_world_size(4, None, (2, "CUDA_VISIBLE_DEVICES='0,1'"), engine_label="engine /e")


def test_world_size_must_be_positive() -> None:
    with pytest.raises(UserError, match="--world-size must be >= 1"):
        resolve_world_size(None, 0, None)


# --------------------------------------------------------------------------- versions


def test_server_version_precedence() -> None:
    assert resolve_server_version("1.2.0", "1.1.0", "1.0.0") == ServerVersion(
        "1.2.0", "--server-trtllm-version"
    )
    assert resolve_server_version(None, "1.1.0", "1.0.0").source == (
        "installed tensorrt_llm package"
    )
    pinned = resolve_server_version(None, None, "1.0.0")
    assert pinned == ServerVersion("1.0.0", "variants.toml [runtime].tensorrt_llm_version")


def test_version_mismatch_names_both(tmp_path: Path) -> None:
    info = read_engine_config(write_engine(tmp_path / "e", version="1.0.0"))
    with pytest.raises(UserError) as exc:
        check_versions(info, ServerVersion("1.1.0", "--server-trtllm-version"))
    message = str(exc.value)
    assert "built with 1.0.0" in message
    assert "server runs 1.1.0 (--server-trtllm-version)" in message


def test_version_match_passes_and_unrecorded_warns(tmp_path: Path) -> None:
    info = read_engine_config(write_engine(tmp_path / "e", version="1.1.0"))
    assert check_versions(info, ServerVersion("v1.1.0", "x")) is None
    old = read_engine_config(write_engine(tmp_path / "old", version=None))
    warning = check_versions(old, ServerVersion("1.1.0", "x"))
    assert warning is not None and "records no TensorRT-LLM version" in warning


# --------------------------------------------------------------------------- NCCL


def test_nccl_defaults_for_pcie() -> None:
    assert NCCL_PCIE_DEFAULTS == {
        "NCCL_IB_DISABLE": "1",
        "NCCL_P2P_LEVEL": "PHB",
        "NCCL_SHM_DISABLE": "0",
    }
    assert nccl_env({"PATH": "/bin"}) == NCCL_PCIE_DEFAULTS


def test_user_nccl_values_win_and_are_forwarded() -> None:
    env = nccl_env({"NCCL_P2P_LEVEL": "SYS", "NCCL_DEBUG": "INFO", "HOME": "/root"})
    assert env["NCCL_P2P_LEVEL"] == "SYS"
    assert env["NCCL_DEBUG"] == "INFO"
    assert env["NCCL_IB_DISABLE"] == "1"
    assert "HOME" not in env


def test_p2p_disable_switch() -> None:
    assert "NCCL_P2P_DISABLE" not in nccl_env({})
    assert nccl_env({}, p2p_disable=True)["NCCL_P2P_DISABLE"] == "1"
    assert nccl_env({"NCCL_P2P_DISABLE": "0"}, p2p_disable=True)["NCCL_P2P_DISABLE"] == "1"


# --------------------------------------------------------------------------- ports


def test_port_values_must_differ_and_be_valid() -> None:
    check_port_values(Ports())
    with pytest.raises(UserError, match="HTTP and metrics ports are both 8000"):
        check_port_values(Ports(http=8000, grpc=8001, metrics=8000))
    with pytest.raises(UserError, match=r"gRPC port must be in 1\.\.65535"):
        check_port_values(Ports(grpc=70000))


def _listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def test_busy_port_is_named() -> None:
    with _listening_socket() as busy:
        port = busy.getsockname()[1]
        http, metrics = _free_ports(2)
        with pytest.raises(UserError) as exc:
            check_ports_free("127.0.0.1", Ports(http=http, grpc=port, metrics=metrics))
    message = str(exc.value)
    assert f"gRPC port {port} on 127.0.0.1 already in use" in message
    assert "HTTP" not in message


def test_free_ports_pass() -> None:
    http, grpc, metrics = _free_ports(3)
    check_ports_free("127.0.0.1", Ports(http=http, grpc=grpc, metrics=metrics))


def test_unbindable_host_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"cannot bind 192\.0\.2\.1"):
        check_ports_free("192.0.2.1", Ports(*_free_ports(3)))


# --------------------------------------------------------------------------- argv


def _spec(world: int, **kw) -> LaunchSpec:
    defaults = dict(
        tritonserver="/opt/tritonserver/bin/tritonserver",
        model_repository=Path("/run/repo"),
        world_size=world,
        exported_env=("NCCL_IB_DISABLE", "NCCL_P2P_LEVEL", "NCCL_SHM_DISABLE"),
    )
    defaults.update(kw)
    return LaunchSpec(**defaults)  # type: ignore[arg-type]


def _rank_blocks(argv: list[str]) -> tuple[list[str], list[list[str]]]:
    """Global mpirun options, then each rank's block (split on ':')."""
    first = argv.index("-n")
    blocks: list[list[str]] = [[]]
    for arg in argv[first:]:
        if arg == ":":
            blocks.append([])
        else:
            blocks[-1].append(arg)
    return argv[:first], blocks


@pytest.mark.parametrize("world", [1, 2, 4])
def test_argv_has_one_block_per_rank(world: int) -> None:
    argv = build_launch_argv(_spec(world))
    head, blocks = _rank_blocks(argv)
    assert head[:2] == ["mpirun", "--allow-run-as-root"]
    assert len(blocks) == world
    assert argv.count(":") == world - 1
    assert argv[-1] != ":"
    prefixes = set()
    for rank, block in enumerate(blocks):
        assert block[:2] == ["-n", "1"]
        exe = block.index("/opt/tritonserver/bin/tritonserver")
        # every rank gets every NCCL variable with -x
        exported = [block[i + 1] for i in range(2, exe) if block[i] == "-x"]
        assert exported == ["NCCL_IB_DISABLE", "NCCL_P2P_LEVEL", "NCCL_SHM_DISABLE"]
        args = block[exe + 1 :]
        assert "--model-repository=/run/repo" in args
        assert "--disable-auto-complete-config" in args
        prefix = [a for a in args if a.startswith("--backend-config=python,shm-region")]
        assert prefix == [f"--backend-config=python,shm-region-prefix-name=prefix{rank}_"]
        prefixes.add(prefix[0])
        if rank == 0:
            assert "--http-port=8000" in args
            assert "--grpc-port=8001" in args
            assert "--metrics-port=8002" in args
            assert "--http-address=127.0.0.1" in args
            assert "--grpc-address=127.0.0.1" in args
            assert "--metrics-address=127.0.0.1" in args
            assert not any(a.startswith("--model-control-mode") for a in args)
            assert not any(a.startswith("--load-model") for a in args)
        else:
            assert "--model-control-mode=explicit" in args
            assert [a for a in args if a.startswith("--load-model")] == [
                "--load-model=tensorrt_llm"
            ]
            assert not any(
                a.startswith(("--http-port", "--grpc-port", "--metrics-port")) for a in args
            )
            assert {
                "--allow-http=false",
                "--allow-grpc=false",
                "--allow-metrics=false",
            } <= set(args)
    assert len(prefixes) == world


def test_argv_world_size_2_exact() -> None:
    argv = build_launch_argv(
        _spec(
            2,
            host="0.0.0.0",
            ports=Ports(9000, 9001, 9002),
            exported_env=("NCCL_IB_DISABLE",),
            backend_directory="/be",
        )
    )
    ts = "/opt/tritonserver/bin/tritonserver"
    assert argv == [
        "mpirun", "--allow-run-as-root", "--tag-output", "--bind-to", "none",
        "-n", "1", "-x", "NCCL_IB_DISABLE", ts, "--model-repository=/run/repo",
        "--backend-directory=/be",
        "--http-address=0.0.0.0", "--http-port=9000",
        "--grpc-address=0.0.0.0", "--grpc-port=9001",
        "--metrics-address=0.0.0.0", "--metrics-port=9002",
        "--disable-auto-complete-config",
        "--backend-config=python,shm-region-prefix-name=prefix0_",
        ":",
        "-n", "1", "-x", "NCCL_IB_DISABLE", ts, "--model-repository=/run/repo",
        "--backend-directory=/be",
        "--allow-http=false", "--allow-grpc=false", "--allow-metrics=false",
        "--model-control-mode=explicit", "--load-model=tensorrt_llm",
        "--disable-auto-complete-config",
        "--backend-config=python,shm-region-prefix-name=prefix1_",
    ]  # fmt: skip


def test_mpirun_extra_options_go_before_the_rank_blocks() -> None:
    argv = build_launch_argv(_spec(2, mpirun_extra=("--oversubscribe",)))
    head, _ = _rank_blocks(argv)
    assert "--oversubscribe" in head


def test_invalid_world_size_is_rejected() -> None:
    with pytest.raises(ValueError):
        build_launch_argv(_spec(0))


def test_format_command_is_shell_quoted() -> None:
    line = format_command(["mpirun", "-n", "1", "a b"], {"NCCL_P2P_LEVEL": "PHB", "X": "p q"})
    assert line == "env NCCL_P2P_LEVEL=PHB X='p q' mpirun -n 1 'a b'"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("[1,0]<stdout>:I1123 server.cc:1] ok", (0, "I1123 server.cc:1] ok")),
        ("[1,12]<stderr>:E boom: x", (12, "E boom: x")),
        (
            "[1,1]<stderr>:error: [1,1]<stderr>:creating server[1,1]<stderr>:: x",
            (1, "error: creating server: x"),
        ),
        (
            "mpirun noticed that process rank 1",
            (None, "mpirun noticed that process rank 1"),
        ),
        ("[not,a]<tag", (None, "[not,a]<tag")),
    ],
)
def test_tagged_lines_are_split_by_rank(line: str, expected: tuple[int | None, str]) -> None:
    assert rank_of_tagged_line(line) == expected


def test_interleaved_ranks_are_split_back_apart() -> None:
    line = "[1,1]<stderr>:I1123 loading: tensorrt_llm[1,0]<stderr>:loading: postprocessing:1"
    assert split_tagged_line(line) == [
        (1, "I1123 loading: tensorrt_llm"),
        (0, "loading: postprocessing:1"),
    ]
    same = "[1,1]<stderr>:error: [1,1]<stderr>:creating server[1,1]<stderr>:: x"
    assert split_tagged_line(same) == [(1, "error: creating server: x")]
    assert split_tagged_line("plain mpirun text") == [(None, "plain mpirun text")]


def test_engine_info_description() -> None:
    info = EngineInfo(Path("/e"), "1.1.0", 2, 2, 1, "NVFP4", None)
    assert info.description == "TensorRT-LLM 1.1.0, world size 2 (tp 2 x pp 1), NVFP4"
