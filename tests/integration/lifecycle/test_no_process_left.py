"""No process left behind: the demo and ``trtllm-stack triton`` with the real tritonserver,
ended by SIGINT, SIGTERM, SIGHUP, their own death (SIGKILL), or a failed start; Python
backend stubs of a SIGKILLed tritonserver. The demo runs as systemd or cron would start it:
the venv's console script by absolute path, not activated, PATH=/usr/bin:/bin."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from trtllm_stack.tokenizer import bundled_qwen3_tokenizer_dir
from trtllm_stack.triton.launcher import descendants
from trtllm_stack.triton.model_repo import write_model_repository
from trtllm_stack.triton.server import TritonServer, free_port

pytestmark = pytest.mark.integration

START_TIMEOUT = 300.0  # generous: CI machines may be busy
GONE_WITHIN = 30.0  # generous for a busy CI box; python/scripts/demo_starts.py measures


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def _alive(pid: int, cmd: str) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z" and _cmdline(pid) == cmd


def wait_all_gone(tree: dict[int, str], timeout: float = GONE_WITHIN) -> list[str]:
    """Commands of ``tree`` still running after ``timeout`` (empty when all ended)."""
    deadline = time.monotonic() + timeout
    while True:
        left = [cmd for pid, cmd in tree.items() if _alive(pid, cmd)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def snapshot(root: int) -> dict[int, str]:
    return {pid: _cmdline(pid) for pid in descendants(root)}


def stub_count(tree: dict[int, str]) -> int:
    return sum("triton_python_backend_stub" in cmd for cmd in tree.values())


def trtllm_stack_argv() -> list[str]:
    """The console script next to this interpreter (a venv's bin/), by absolute path."""
    script = Path(sys.executable).parent / "trtllm-stack"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "trtllm_stack"]


def minimal_env(tmp_path: Path) -> dict[str, str]:
    # TMPDIR of its own: the demo's temporary directory can be checked for removal.
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "LANG": "C.UTF-8", "TMPDIR": str(tmp)}
    if "HOME" in os.environ:
        env["HOME"] = os.environ["HOME"]
    return env


@dataclass
class Demo:
    proc: subprocess.Popen[str]
    port: int
    tmp: Path
    stdout: list[str] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)
    stderr_path: Path | None = None

    def stderr(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path else ""


def start_demo(tmp_path: Path, *extra: str) -> Demo:
    port = free_port()
    env = minimal_env(tmp_path)
    stderr_path = tmp_path / "demo.stderr"
    with open(stderr_path, "w") as err:
        proc = subprocess.Popen(
            [*trtllm_stack_argv(), "demo", "--port", str(port), "--token-delay-ms", "0", *extra],
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
        )
    demo = Demo(proc, port, Path(env["TMPDIR"]), stderr_path=stderr_path)

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            demo.stdout.append(line)
            if "Ctrl-C (or SIGTERM)" in line:
                demo.ready.set()

    threading.Thread(target=read, daemon=True).start()
    return demo


def wait_serving(demo: Demo) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if demo.proc.poll() is not None:
            pytest.fail(f"demo exited {demo.proc.returncode}: {demo.stderr()}")
        if demo.ready.is_set():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{demo.port}/health", timeout=2):
                    return
            except OSError:
                pass
        time.sleep(0.3)
    pytest.fail("demo not serving in time")


def chat(port: int, text: str) -> str:
    body = json.dumps(
        {
            "model": "qwen3",
            "messages": [{"role": "user", "content": f"[reply]{text}[/reply]"}],
            "max_tokens": 16,
        }
    ).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        body,
        {"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return str(json.loads(resp.read())["choices"][0]["message"]["content"])


@pytest.fixture
def demos() -> Iterator[list[Demo]]:
    started: list[Demo] = []
    yield started
    for demo in started:  # a failing test still leaves nothing
        tree = snapshot(demo.proc.pid)
        if demo.proc.poll() is None:
            demo.proc.kill()
            demo.proc.wait()
        for pid, cmd in tree.items():
            if _alive(pid, cmd):
                os.kill(pid, signal.SIGKILL)


def test_demo_answers_then_any_signal_ends_every_process(tmp_path, demos) -> None:
    """SIGINT, SIGTERM, SIGHUP and SIGKILL, one demo each, started side by side (time)."""
    signals = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGKILL]
    for sig in signals:
        demo_dir = tmp_path / signal.Signals(sig).name
        demo_dir.mkdir()
        demos.append(start_demo(demo_dir))
    for demo in demos:
        wait_serving(demo)
    trees = []
    for demo in demos:
        assert chat(demo.port, "Hi there") == "Hi there"
        banner = "".join(demo.stdout)
        for address in ("OpenAI proxy", "Triton HTTP", "Triton gRPC", "Triton metrics"):
            assert address in banner
        tree = snapshot(demo.proc.pid)
        assert any(Path(cmd.split(" ")[0]).name == "tritonserver" for cmd in tree.values())
        assert stub_count(tree) >= 3, tree  # preprocessing, postprocessing, tensorrt_llm
        trees.append(tree)
    for demo, sig in zip(demos, signals, strict=True):
        demo.proc.send_signal(sig)
    for demo, sig, tree in zip(demos, signals, trees, strict=True):
        code = demo.proc.wait(GONE_WITHIN)
        if sig == signal.SIGKILL:
            assert code == -signal.SIGKILL  # no handler ran: PR_SET_PDEATHSIG did the rest
        else:
            # A stop that was asked for: 0 (130 for Ctrl-C outside uvicorn's handling).
            assert code in (0, 130), (sig, demo.stderr())
            assert list(demo.tmp.glob("trtllm-stack-demo-*")) == []  # temp dir removed
        assert wait_all_gone(tree) == [], sig


def test_failed_start_keeps_the_log_names_it_and_shows_its_end(tmp_path) -> None:
    from trtllm_stack.errors import UserError

    repo = write_model_repository(
        tmp_path / "repo", engine="scripted", tokenizer_dir=bundled_qwen3_tokenizer_dir()
    )
    with (repo / "preprocessing" / "1" / "model.py").open("a") as f:
        f.write("\nraise RuntimeError('broken model for the failed-start test')\n")
    log = tmp_path / "tritonserver.log"
    server = TritonServer(repo, log_path=log)
    with pytest.raises(UserError) as failed:
        server.start(timeout=START_TIMEOUT)
    assert "tritonserver exited with code" in str(failed.value)
    assert f"(log: {log})" in str(failed.value)
    assert log.is_file()
    assert "broken model for the failed-start test" in log.read_text()
    assert server.log_tail(15) == [ln for ln in log.read_text().splitlines() if ln.strip()][-15:]
    assert server.pid is None  # stopped: nothing left running


@pytest.mark.parametrize("bad", ["taken", "99999"])
def test_demo_port_is_checked_before_anything_starts(tmp_path, demos, bad) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1]) if bad == "taken" else bad
        env = minimal_env(tmp_path)
        res = subprocess.run(
            [*trtllm_stack_argv(), "demo", "--port", port],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
    assert res.returncode == 2, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "port" in res.stderr
    assert "starting" not in res.stdout  # nothing was started
    assert list(Path(env["TMPDIR"]).glob("trtllm-stack-demo-*")) == []


def test_stubs_do_not_outlive_a_sigkilled_tritonserver(tmp_path) -> None:
    repo = write_model_repository(
        tmp_path / "repo", engine="scripted", tokenizer_dir=bundled_qwen3_tokenizer_dir()
    )
    server = TritonServer(repo, log_path=tmp_path / "tritonserver.log")
    server.start()
    try:
        assert server.pid is not None
        tree = snapshot(server.pid)
        assert stub_count(tree) >= 3, tree
        os.kill(server.pid, signal.SIGKILL)  # tritonserver alone, not its process group
        assert wait_all_gone(tree) == []
    finally:
        server.stop()


# --------------------------------------------------------------- trtllm-stack triton


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="needs mpirun (openmpi-bin)")
def test_triton_launcher_hup_or_death_ends_every_rank_and_stub(tmp_path) -> None:
    # SIGINT and SIGTERM: tests/integration/launcher/test_launcher_mpi.py.
    signals = [signal.SIGHUP, signal.SIGKILL]
    procs: list[subprocess.Popen[str]] = []
    trees: list[dict[int, str]] = []
    try:
        for sig in signals:
            run_dir = tmp_path / signal.Signals(sig).name
            run_dir.mkdir()
            ports = [free_port(), free_port(), free_port()]
            argv = [
                *trtllm_stack_argv(), "triton", "--engine", "scripted", "--world-size", "1",
                "--runtime-dir", str(run_dir / "runtime"), "--http-port", str(ports[0]),
                "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]), "--quiet",
            ]  # fmt: skip
            with open(run_dir / "launcher.stderr", "w") as err:
                env = minimal_env(run_dir)
                procs.append(
                    subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
                )
        for proc in procs:
            assert proc.stdout is not None
            for line in proc.stdout:  # ends at "Triton ready" or when the launcher exits
                if line.startswith("Triton ready"):
                    break
            assert proc.poll() is None
            trees.append(snapshot(proc.pid))
            assert stub_count(trees[-1]) >= 3, trees[-1]
        for proc, sig in zip(procs, signals, strict=True):
            proc.send_signal(sig)
        for proc, sig, tree in zip(procs, signals, trees, strict=True):
            assert proc.wait(GONE_WITHIN) == (0 if sig == signal.SIGHUP else -signal.SIGKILL)
            assert wait_all_gone(tree) == [], sig
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for tree in trees:
            for pid, cmd in tree.items():
                if _alive(pid, cmd):
                    os.kill(pid, signal.SIGKILL)
