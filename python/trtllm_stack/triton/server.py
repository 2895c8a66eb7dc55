"""Run the ``tritonserver`` binary on a model repository and wait until it is ready.

On a machine without a GPU the binary and the Python backend come from the
``nvidia-pytriton`` wheel (Triton 2.51, CPU). Three needs of that setup:
- the Python backend stub must load *this* interpreter's libpython, so LD_LIBRARY_PATH
  starts with ``sysconfig.get_config_var("LIBDIR")`` (else it finds the system libpython);
- ``--backend-directory`` must hold ``python/`` with libtriton_python.so, the utils module
  and the stub built for this Python version; we assemble it from symlinks, in a directory
  of its own per stub (python_env.state_dir());
- the stub's embedded Python must see this interpreter's packages: the model repository
  names an execution environment for that (python_env.py, EXECUTION_ENV_PATH).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from trtllm_stack.errors import UserError
from trtllm_stack.triton.python_env import state_dir, symlink


@dataclass(frozen=True)
class CpuTriton:
    binary: Path
    backend_dir: Path
    env: dict[str, str]


@dataclass(frozen=True)
class TritonEndpoints:
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def cpu_tritonserver(backend_root: Path | None = None) -> CpuTriton:
    """The wheel's tritonserver, a backend directory for this Python, and the env it needs."""
    try:
        import pytriton
    except ImportError:
        raise UserError(
            "no tritonserver: install the CPU stand-in with pip install 'trtllm-stack[cpu-triton]'"
        ) from None
    root = Path(pytriton.__file__).parent / "tritonserver"
    binary = root / "bin" / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    backend_src = root / "backends" / "python"
    for path in (binary, stub, backend_src / "libtriton_python.so"):
        if not path.exists():
            raise UserError(f"nvidia-pytriton install is incomplete: {path} missing")
    if backend_root is None:
        # One directory per stub: runs from other environments never rewrite these links.
        key = hashlib.sha256(str(stub.resolve()).encode()).hexdigest()[:12]
        backend_root = state_dir() / f"backends-py{version}-{key}"
    python_dir = backend_root / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for src in (
        backend_src / "libtriton_python.so",
        backend_src / "triton_python_backend_utils.py",
        stub,
    ):
        symlink(python_dir / src.name, src)
    # The stub links libpython dynamically: this interpreter's, not the first on the
    # loader path. (Its packages come from EXECUTION_ENV_PATH, see python_env.py.)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env = {
        "LD_LIBRARY_PATH": os.pathsep.join(
            p for p in (libdir, os.environ.get("LD_LIBRARY_PATH", "")) if p
        ),
    }
    return CpuTriton(binary=binary, backend_dir=backend_root, env=env)


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:  # preexec_fn: runs in the child between fork and exec
    """SIGTERM this process when its parent dies (even by SIGKILL)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _end_group_when_dead(proc: subprocess.Popen[bytes]) -> None:
    """Reap tritonserver as soon as it dies, then end what is left of its process group.

    A Python backend stub only checks ``kill(parent_pid, 0) == 0`` (python_backend r24.10
    src/pb_stub.cc:2046-2049), which stays true while a dead tritonserver is an unreaped
    zombie: without this a SIGKILLed tritonserver's stubs run until this process exits.
    """
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # wait, but leave it to Popen
    proc.poll()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


class TritonServer:
    """A tritonserver process on loopback; a context manager that never leaks it."""

    def __init__(
        self,
        model_repository: Path,
        *,
        host: str = "127.0.0.1",
        http_port: int = 0,
        grpc_port: int = 0,
        metrics_port: int = 0,
        log_path: Path | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        """``env``: the environment to start from (default: this process's)."""
        self.model_repository = Path(model_repository)
        self.base_env = dict(os.environ if env is None else env)
        self.host = host
        self.endpoints = TritonEndpoints(
            host,
            http_port or free_port(host),
            grpc_port or free_port(host),
            metrics_port or free_port(host),
        )
        self.log_path = log_path
        self.extra_args = list(extra_args)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: BinaryIO | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def command(self, cpu: CpuTriton) -> list[str]:
        ep = self.endpoints
        return [
            str(cpu.binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={cpu.backend_dir}",
            f"--http-address={ep.host}",
            f"--grpc-address={ep.host}",
            f"--metrics-address={ep.host}",
            f"--http-port={ep.http_port}",
            f"--grpc-port={ep.grpc_port}",
            f"--metrics-port={ep.metrics_port}",
            "--disable-auto-complete-config",
            "--exit-timeout-secs=5",
            "--log-verbose=0",
            *self.extra_args,
        ]

    def start(self, timeout: float = 120.0) -> TritonEndpoints:
        self.launch()
        return self.wait_ready(timeout)

    def launch(self) -> None:
        """Start the process (from the main thread: see die_with_parent); do not wait."""
        cpu = cpu_tritonserver()
        env = {**self.base_env, **cpu.env}
        if self.log_path is not None:
            self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        out = self._log_file or subprocess.DEVNULL
        self._proc = subprocess.Popen(
            self.command(cpu),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() reaches the stubs too
            # PR_SET_PDEATHSIG fires when the forking *thread* ends: only from the main one.
            preexec_fn=die_with_parent
            if threading.current_thread() is threading.main_thread()
            else None,
        )
        threading.Thread(
            target=_end_group_when_dead, args=(self._proc,), name="triton-reaper", daemon=True
        ).start()

    def wait_ready(self, timeout: float = 120.0) -> TritonEndpoints:
        """Block until Triton reports ready; stop it and raise UserError if it cannot."""
        assert self._proc is not None, "launch() first"
        deadline = time.monotonic() + timeout
        url = f"{self.endpoints.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self.stop()
                raise UserError(
                    f"tritonserver exited with code {code} during start-up{self._log_hint()}"
                )
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(url, timeout=1) as resp,
            ):
                if resp.status == 200:
                    return self.endpoints
            time.sleep(0.2)
        self.stop()
        raise UserError(f"tritonserver not ready after {timeout:.0f}s{self._log_hint()}")

    def log_tail(self, lines: int = 15) -> list[str]:
        """Last lines of the log (for a failed start), empty without a log."""
        if self.log_path is None:
            return []
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 64 * 1024))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if line.strip()][-lines:]

    def _log_hint(self) -> str:
        return f" (log: {self.log_path})" if self.log_path else ""

    def _signal_group(self, sig: int) -> None:
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, sig)

    def stop(self, timeout: float = 15.0) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._signal_group(signal.SIGTERM)
                try:
                    self._proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._signal_group(signal.SIGKILL)
                    self._proc.wait()
            # Python backend stubs may outlive the server by a moment; never leave them.
            self._signal_group(signal.SIGKILL)
            self._proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def kill(self) -> None:
        """SIGKILL the whole process group (fault-injection tests)."""
        self._signal_group(signal.SIGKILL)
        if self._proc is not None:
            self._proc.wait()

    def __enter__(self) -> TritonEndpoints:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
