"""``trtllm-stack triton`` refusals and --dry-run, in process: every check speaks before
anything starts (synthetic engine directories, no tritonserver or mpirun needed)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from trtllm_stack.cli import main
from trtllm_stack.triton import launch_plan
from trtllm_stack.variants import load_table


def engine_dir(root: Path, *, tp: int = 1, version: str = "1.1.0", quant: str = "NVFP4") -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text(
        json.dumps(
            {
                "version": version,
                "pretrained_config": {
                    "mapping": {"world_size": tp, "tp_size": tp, "pp_size": 1},
                    "quantization": {"quant_algo": quant},
                },
                "build_config": {"max_input_len": 4096, "max_seq_len": 8192},
            }
        )
    )
    for r in range(tp):
        (root / f"rank{r}.engine").write_bytes(b"")
    return root


@pytest.fixture(autouse=True)
def no_installed_trtllm(monkeypatch: pytest.MonkeyPatch) -> None:
    # The server version must not depend on what this machine has installed.
    monkeypatch.setattr(launch_plan, "installed_tensorrt_llm_version", lambda: None)


def run(args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    code = main(["triton", "--runtime-dir", str(tmp_path / "rt"), *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_world_size_mismatch_is_refused(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    engine = engine_dir(tmp_path / "e", tp=4)
    code, _, err = run(["--engine", str(engine), "--world-size", "2"], tmp_path, capsys)
    assert code == 2
    assert err.count("\n") == 1
    assert "MPI size mismatch" in err and "world size 4" in err and "--world-size 2" in err


def test_too_few_visible_gpus_is_refused(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    engine = engine_dir(tmp_path / "e", tp=2)
    code, _, err = run(["--engine", str(engine)], tmp_path, capsys)
    assert code == 2
    assert "needs 2 GPU(s), one per rank, but only 1 visible (CUDA_VISIBLE_DEVICES='0')" in err


def test_version_mismatch_names_both_versions(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    engine = engine_dir(tmp_path / "e", version="0.21.0")
    code, _, err = run(["--engine", str(engine)], tmp_path, capsys)
    pinned = load_table().runtime.tensorrt_llm_version
    assert code == 2
    assert "TensorRT-LLM version mismatch" in err
    assert "built with 0.21.0" in err
    assert f"server runs {pinned} (variants.toml [runtime].tensorrt_llm_version)" in err


def test_server_version_flag_wins(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    engine = engine_dir(tmp_path / "e", version="1.1.0")
    code, _, err = run(
        ["--engine", str(engine), "--server-trtllm-version", "1.2.0rc1"], tmp_path, capsys
    )
    assert code == 2
    assert "server runs 1.2.0rc1 (--server-trtllm-version)" in err


def test_variant_must_match_engine(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    engine = engine_dir(tmp_path / "e", tp=2)
    code, _, err = run(
        ["--engine", str(engine), "--variant", "qwen3-32b-nvfp4-tp4"], tmp_path, capsys
    )
    assert code == 2
    assert "variant qwen3-32b-nvfp4-tp4 is tp 4 but engine" in err


def test_busy_port_is_named_before_launch(tmp_path, capsys) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = run(
            ["--engine", "scripted", "--metrics-port", str(port),
             "--http-port", "0", "--grpc-port", "0"],
            tmp_path, capsys,
        )  # fmt: skip
    assert code == 2
    # port 0 is not a valid choice either: the value check comes first
    assert "HTTP port must be in 1..65535" in err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        free = []
        for _ in range(2):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                free.append(s.getsockname()[1])
        code, _, err = run(
            ["--engine", "scripted", "--metrics-port", str(port),
             "--http-port", str(free[0]), "--grpc-port", str(free[1])],
            tmp_path, capsys,
        )  # fmt: skip
    assert code == 2
    assert f"metrics port {port} on 127.0.0.1 already in use" in err
    assert not (tmp_path / "rt").exists()


def test_dry_run_prints_command_and_environment(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv("NCCL_DEBUG", "WARN")
    engine = engine_dir(tmp_path / "e", tp=2)
    code, out, _ = run(
        ["--engine", str(engine), "--dry-run", "--tritonserver", "/bin/true",
         "--mpirun", "/bin/true", "--host", "0.0.0.0", "--nccl-p2p-disable"],
        tmp_path, capsys,
    )  # fmt: skip
    assert code == 0
    lines = out.splitlines()
    command = lines[-1]
    assert command.startswith("env ")
    for k, v in {**launch_plan.NCCL_PCIE_DEFAULTS, "NCCL_DEBUG": "WARN",
                 "NCCL_P2P_DISABLE": "1", "CUDA_VISIBLE_DEVICES": "0,1"}.items():  # fmt: skip
        assert f"#   {k}={v}" in lines
        assert f" {k}={v} " in command or f" {k}='{v}' " in command
    assert "/bin/true --allow-run-as-root" in command
    assert command.count(" : ") == 1
    assert "--http-address=0.0.0.0" in command
    assert f"--model-repository={tmp_path / 'rt' / 'model-repository'}" in command
    # a dry run writes nothing
    assert not (tmp_path / "rt").exists()


def test_dry_run_reports_a_busy_port_as_a_warning(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    engine = engine_dir(tmp_path / "e")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, out, err = run(
            ["--engine", str(engine), "--dry-run", "--tritonserver", "/bin/true",
             "--mpirun", "/bin/true", "--grpc-port", str(port)],
            tmp_path, capsys,
        )  # fmt: skip
    assert code == 0
    assert f"warning: gRPC port {port} on 127.0.0.1 already in use" in err
    assert f"--grpc-port={port}" in out.splitlines()[-1]


def test_missing_tritonserver_binary(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    engine = engine_dir(tmp_path / "e")
    code, _, err = run(
        ["--engine", str(engine), "--dry-run", "--tritonserver", str(tmp_path / "nope"),
         "--mpirun", "/bin/true"],
        tmp_path, capsys,
    )  # fmt: skip
    assert code == 2
    assert "is not an executable file" in err


def test_one_launcher_per_runtime_dir(tmp_path) -> None:
    from trtllm_stack.errors import UserError
    from trtllm_stack.triton.launch_cli import _lock_runtime_dir

    first = _lock_runtime_dir(tmp_path / "rt")
    try:
        with pytest.raises(UserError, match=r"in use by another launcher \(pid \d+\)"):
            _lock_runtime_dir(tmp_path / "rt")
    finally:
        first.close()
    _lock_runtime_dir(tmp_path / "rt").close()
