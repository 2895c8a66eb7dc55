"""Data-parallel launches: each replica's GPUs, ports and checks, the dp variant dimension,
and ``trtllm-stack triton --replicas`` refusals and --dry-run (no process started)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from trtllm_stack.cli import main
from trtllm_stack.errors import UserError
from trtllm_stack.triton import launch_plan as plan
from trtllm_stack.variants import load_table


def engine_dir(root: Path, tp: int) -> Path:
    root.mkdir(parents=True)
    mapping = {"world_size": tp, "tp_size": tp, "pp_size": 1}
    config = {
        "version": "1.1.0",
        "pretrained_config": {"mapping": mapping, "quantization": {"quant_algo": "NVFP4"}},
        "build_config": {},
    }
    (root / "config.json").write_text(json.dumps(config))
    for r in range(tp):
        (root / f"rank{r}.engine").write_bytes(b"")
    return root


@pytest.fixture(autouse=True)
def no_installed_trtllm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plan, "installed_tensorrt_llm_version", lambda: None)
    monkeypatch.setattr(plan, "nvidia_smi_list", lambda: None)


def test_replica_ports_step_by_ten_and_refuse_overlaps():
    ports = plan.replica_ports(plan.Ports(8000, 8001, 8002), 3)
    assert [(p.http, p.grpc, p.metrics) for p in ports] == [
        (8000, 8001, 8002),
        (8010, 8011, 8012),
        (8020, 8021, 8022),
    ]
    with pytest.raises(UserError, match="replica 0 gRPC and replica 1 HTTP ports are both 8010"):
        plan.replica_ports(plan.Ports(8000, 8010, 8002), 2)
    with pytest.raises(UserError, match=r"must be in 1\.\.65535"):
        plan.replica_ports(plan.Ports(65530, 65531, 65532), 2)


def test_replica_devices_are_consecutive_groups():
    assert plan.replica_devices(["0", "1", "2", "3"], 2, 2) == ["0,1", "2,3"]
    assert plan.replica_devices(["0", "1", "2", "3"], 4, 1) == ["0", "1", "2", "3"]
    uuids = ["GPU-a", "GPU-b"]
    assert plan.replica_devices(uuids, 2, 1) == ["GPU-a", "GPU-b"]
    assert plan.replica_devices(None, 2, 2) == ["0,1", "2,3"]
    assert plan.replica_devices(["0"], 1, 1) is None  # one replica: environment untouched
    with pytest.raises(UserError, match="2 replicas x world size 2 need 4 GPUs, but only 3"):
        plan.replica_devices(["0", "1", "2"], 2, 2, "CUDA_VISIBLE_DEVICES='0,1,2'")


def test_visible_devices_from_environment_or_nvidia_smi():
    assert plan.visible_devices({"CUDA_VISIBLE_DEVICES": "2,3"}, None) == ["2", "3"]
    assert plan.visible_devices({"CUDA_VISIBLE_DEVICES": "1,-1,2"}, None) == ["1"]
    smi = "GPU 0: A (UUID: x)\nGPU 1: B (UUID: y)\n"
    assert plan.visible_devices({}, smi) == ["0", "1"]
    assert plan.visible_devices({}, None) is None


def test_busy_port_of_any_replica_is_named():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        ports = plan.replica_ports(plan.Ports(port - 11, port - 10, port - 9), 2)
        with pytest.raises(UserError, match=f"replica 1 gRPC port {port} on 127.0.0.1"):
            plan.check_replica_ports_free("127.0.0.1", ports)


def test_dp_deployments_and_their_names():
    table = load_table()
    nvfp4 = [d for d in table.deployments if d.variant.quantization == "NVFP4"]
    assert [(d.app_name, d.gpus) for d in nvfp4] == [
        ("tritonserver-qwen3", 1),
        ("tritonserver-qwen3-dp2", 2),
        ("tritonserver-qwen3-dp4", 4),
        ("tritonserver-qwen3-tp2", 2),
        ("tritonserver-qwen3-tp2-dp2", 4),
        ("tritonserver-qwen3-tp4", 4),
    ]
    d = table.deployment("qwen3-32b-nvfp4-tp1-dp4")
    assert (d.variant.name, d.replicas) == ("qwen3-32b-nvfp4-tp1", 4)
    assert table.deployment("tritonserver-qwen3-tp2-dp2").variant.package_name == (
        "qwen3-32b-engine-tp2"
    )
    assert table.deployment("qwen3-32b-engine-tp4").replicas == 1


@pytest.mark.parametrize("bad", [[], [0], [1, 1], "4", [True]])
def test_dp_field_is_checked(bad):
    import tomllib

    from trtllm_stack.variants import packaged_table_path, parse_table

    data = tomllib.loads(packaged_table_path().read_text())
    data["variants"][0]["dp"] = bad
    with pytest.raises(UserError, match=r"#1 .*dp must be a list of distinct replica counts"):
        parse_table(data)


def run(args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    code = main(["triton", "--runtime-dir", str(tmp_path / "rt"), *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_dry_run_pins_each_replica_to_its_gpus_and_ports(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    engine = engine_dir(tmp_path / "e", tp=2)
    code, out, err = run(
        ["--engine", str(engine), "--variant", "tritonserver-qwen3-tp2-dp2", "--dry-run",
         "--tritonserver", "/bin/true", "--mpirun", "/bin/true", "--http-port", "18000",
         "--grpc-port", "18001", "--metrics-port", "18002"],
        tmp_path, capsys,
    )  # fmt: skip
    assert code == 0, err
    commands = [line for line in out.splitlines() if line.startswith("env ")]
    assert len(commands) == 2
    assert "CUDA_VISIBLE_DEVICES=4,5 " in commands[0] and "--grpc-port=18001" in commands[0]
    assert "CUDA_VISIBLE_DEVICES=6,7 " in commands[1] and "--grpc-port=18011" in commands[1]
    assert all(c.count(" : ") == 1 for c in commands)  # two ranks each
    assert "# proxy: --triton-url 127.0.0.1:18001,127.0.0.1:18011" in out


def test_too_few_gpus_for_all_replicas_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    engine = engine_dir(tmp_path / "e", tp=2)
    code, _, err = run(
        ["--engine", str(engine), "--replicas", "2", "--tritonserver", "/bin/true",
         "--mpirun", "/bin/true"],
        tmp_path, capsys,
    )  # fmt: skip
    assert code == 2
    assert "2 replicas x world size 2 need 4 GPUs, but only 3 visible" in err
    assert not (tmp_path / "rt").exists()
