"""``trtllm-stack triton --engine scripted`` for real: Debian's mpirun, the CPU tritonserver,
one rank per MPI process. Rank 0 serves; ranks > 0 load only tensorrt_llm and block in it
(the scripted engine mimics TensorRT-LLM's leader mode); SIGTERM leaves nothing behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from trtllm_stack.tokenizer import load_tokenizer
from trtllm_stack.triton.client import EngineClient
from trtllm_stack.triton.launch_plan import NCCL_PCIE_DEFAULTS
from trtllm_stack.triton.launcher import descendants
from trtllm_stack.triton.server import free_port
from trtllm_stack.triton.tensors import EngineRequest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("mpirun") is None, reason="needs mpirun (openmpi-bin)"),
]

EOS, PAD = 151645, 151643
START_TIMEOUT = 120.0


@dataclass
class Launched:
    proc: subprocess.Popen[str]
    runtime_dir: Path
    ports: tuple[int, int, int]
    stdout_lines: list[str] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)
    tree: dict[int, str] = field(default_factory=dict)

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports[1]}"

    def snapshot_tree(self) -> dict[int, str]:
        """pid -> cmdline of every process under the launcher, remembered for later."""
        for pid in descendants(self.proc.pid):
            self.tree.setdefault(pid, _cmdline(pid))
        return self.tree

    def rank_pids(self) -> dict[int, int]:
        ranks = {}
        for pid, cmd in self.snapshot_tree().items():
            if Path(cmd.split(" ")[0]).name == "tritonserver":
                for r in range(8):
                    if f"shm-region-prefix-name=prefix{r}_" in cmd:
                        ranks[r] = pid
        return ranks

    def events(self) -> list[dict]:
        log = self.runtime_dir / "scripted-events.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]

    def stderr_text(self) -> str:
        return (self.runtime_dir.parent / "launcher.stderr").read_text()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def still_running(tree: dict[int, str]) -> list[tuple[int, str]]:
    """Processes from a snapshot that still exist with the same command (no pid reuse)."""
    left = []
    for pid, cmd in tree.items():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat[stat.rfind(")") + 2] != "Z" and _cmdline(pid) == cmd:
            left.append((pid, cmd))
    return left


def listening_ports(pid: int) -> set[int]:
    """TCP ports ``pid`` listens on, from /proc/net/tcp{,6} and its socket fds."""
    listen_inodes: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for row in f:
                cols = row.split()
                if cols[3] == "0A":  # LISTEN
                    listen_inodes[cols[9]] = int(cols[1].rsplit(":", 1)[1], 16)
    ports = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inode = target[len("socket:[") : -1]
            if inode in listen_inodes:
                ports.add(listen_inodes[inode])
    return ports


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def http_status(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return int(resp.status)


def launch(tmp_path: Path, world_size: int, *extra: str, env: dict[str, str] | None = None):
    ports = (free_port(), free_port(), free_port())
    runtime_dir = tmp_path / "runtime"
    argv = [
        sys.executable, "-m", "trtllm_stack", "triton", "--engine", "scripted",
        "--world-size", str(world_size), "--runtime-dir", str(runtime_dir),
        "--http-port", str(ports[0]), "--grpc-port", str(ports[1]),
        "--metrics-port", str(ports[2]), "--quiet", "--ready-timeout", str(START_TIMEOUT),
        *extra,
    ]  # fmt: skip
    stderr = open(tmp_path / "launcher.stderr", "w")  # noqa: SIM115 - closed by the fixture
    # Only the NCCL values a test chooses: the expected rank environments are exact.
    base = {k: v for k, v in os.environ.items() if not k.startswith("NCCL_")}
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=stderr, text=True, env={**base, **(env or {})}
    )
    launched = Launched(proc, runtime_dir, ports)

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            launched.stdout_lines.append(line)
            if line.startswith("Triton ready"):
                launched.ready.set()

    threading.Thread(target=read, daemon=True).start()
    return launched, stderr


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator:
    started: list = []

    def start(world_size: int, *extra: str, env: dict[str, str] | None = None) -> Launched:
        launched, stderr = launch(tmp_path, world_size, *extra, env=env)
        started.append((launched, stderr))
        # Wait for "Triton ready" or for the launcher to give up (its own timeout).
        while not launched.ready.wait(0.5):
            if launched.proc.poll() is not None:
                pytest.fail(f"launcher exited {launched.proc.returncode}: {launched.stderr_text()}")
        return launched

    yield start
    for launched, stderr in started:
        if launched.proc.poll() is None:
            launched.proc.send_signal(signal.SIGTERM)
            try:
                launched.proc.wait(60)
            except subprocess.TimeoutExpired:
                launched.proc.kill()
                launched.proc.wait()
        for pid, _ in still_running(launched.tree):
            os.kill(pid, signal.SIGKILL)
        stderr.close()


@pytest.fixture(scope="module")
def tok(qwen3_tokenizer_dir):
    return load_tokenizer(qwen3_tokenizer_dir)


async def stream_reply(grpc_url: str, tok, reply: str) -> list:
    text = tok.apply_chat_template(
        [{"role": "user", "content": f"[reply]{reply}[/reply]"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    client = EngineClient(grpc_url)
    try:
        assert await client.is_ready()
        req = EngineRequest(tok.encode(text, add_special_tokens=False), 32, EOS, PAD)
        return [chunk async for chunk in client.generate(req)]
    finally:
        await client.close()


def stop_and_check_clean(launched: Launched, sig: int = signal.SIGTERM) -> None:
    tree = launched.snapshot_tree()
    assert tree, "no processes under the launcher"
    launched.proc.send_signal(sig)
    assert launched.proc.wait(60) == 0, launched.stderr_text()
    assert still_running(tree) == []
    assert all(port_free(p) for p in launched.ports)


@pytest.mark.parametrize("world_size", [1, 2])
async def test_scripted_launch_serves_on_rank0_and_stops_clean(launcher, tok, world_size) -> None:
    launched = launcher(world_size)
    http, grpc, metrics = launched.ports
    ready_line = next(line for line in launched.stdout_lines if line.startswith("Triton ready"))
    assert f"http://127.0.0.1:{http}" in ready_line and f"127.0.0.1:{grpc}" in ready_line

    assert http_status(f"http://127.0.0.1:{http}/v2/health/ready") == 200
    assert http_status(f"http://127.0.0.1:{metrics}/metrics") == 200
    chunks = await stream_reply(launched.grpc_url, tok, "launched by mpirun")
    assert [t for c in chunks for t in c.token_ids] == tok.encode(
        "launched by mpirun", add_special_tokens=False
    )
    assert chunks[-1].final and len(chunks) > 2

    ranks = launched.rank_pids()
    assert sorted(ranks) == list(range(world_size))
    assert listening_ports(ranks[0]) == set(launched.ports)
    for rank in range(1, world_size):
        assert listening_ports(ranks[rank]) == set()
        log = (launched.runtime_dir / "logs" / f"rank{rank}.log").read_text()
        assert "loading: tensorrt_llm:1" in log
        assert "loading: preprocessing" not in log and "loading: postprocessing" not in log

    inits = [e for e in launched.events() if e["event"] == "init"]
    assert sorted(e["rank"] for e in inits) == list(range(world_size))
    for event in inits:
        assert event["env"] == NCCL_PCIE_DEFAULTS

    stop_and_check_clean(launched)


async def test_user_nccl_values_and_p2p_switch_reach_every_rank(launcher) -> None:
    launched = launcher(2, "--nccl-p2p-disable", env={"NCCL_P2P_LEVEL": "SYS"})
    inits = [e for e in launched.events() if e["event"] == "init"]
    assert sorted(e["rank"] for e in inits) == [0, 1]
    for event in inits:
        assert event["env"] == {
            "NCCL_IB_DISABLE": "1",
            "NCCL_P2P_LEVEL": "SYS",
            "NCCL_SHM_DISABLE": "0",
            "NCCL_P2P_DISABLE": "1",
        }
    # Ctrl-C in a terminal: SIGINT to the launcher only (the ranks run in their own session)
    stop_and_check_clean(launched, signal.SIGINT)


def test_a_dying_rank_takes_the_launch_down_with_its_code(launcher) -> None:
    launched = launcher(2)
    tree = launched.snapshot_tree()
    os.kill(launched.rank_pids()[1], signal.SIGKILL)
    code = launched.proc.wait(60)
    assert code == 128 + signal.SIGKILL
    stderr = launched.stderr_text()
    assert "rank 1 exited with code 137 (SIGKILL)" in stderr
    assert "last lines of rank 1" in stderr and "rank1.log" in stderr
    assert still_running(tree) == []
    assert all(port_free(p) for p in launched.ports)
