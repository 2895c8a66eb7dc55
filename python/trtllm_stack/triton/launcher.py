"""Run a planned Triton launch: mpirun with one tritonserver per rank, supervised.

- mpirun runs in its own session (Ctrl-C reaches only us; we stop the ranks in order) and
  gets SIGTERM if this process dies (PR_SET_PDEATHSIG), so a killed launcher leaves no ranks.
- mpirun starts a new session that its ranks and their Python stubs keep; after mpirun
  ends, the final sweep ends whatever is still in that session. The CLI also makes this
  process a child subreaper (PR_SET_CHILD_SUBREAPER) so that such orphans are re-parented
  to it and reaped.
- mpirun's ``--tag-output`` lines are split per rank into ``logs/rankN.log``; the last lines
  of a rank that dies are shown with its exit code.

Linux only (prctl, /proc), like TensorRT-LLM itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from trtllm_stack.triton.launch_plan import split_tagged_line

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
TAIL_LINES = 30

# mpirun's reports about the first failed process (Open MPI 4.x wording).
_MPI_PROCESS_NAME = re.compile(r"Process name:\s*\[\[\d+,\d+\],(\d+)\]")
_MPI_EXIT_CODE = re.compile(r"Exit code:\s*(-?\d+)")
_MPI_SIGNALLED = re.compile(r"process rank (\d+) with PID \d+ .* exited on signal (\d+)")


def _prctl(option: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(option, value, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def become_subreaper() -> bool:
    """Adopt orphaned descendants so that none outlives the launch unnoticed."""
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def _child_setup() -> None:  # runs in the forked child before exec
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


# The session guard: a tiny process that outlives a SIGKILLed launcher by the moment it needs
# to end the launch's session. mpirun alone does not: killed launcher -> mpirun gets SIGTERM
# (PR_SET_PDEATHSIG) and exits, but its tritonserver rank stays, orphaned (seen here with
# Open MPI 4.1.4). Standard library only, started with -I -S (no site, no environment).
_GUARD = r"""
import os, signal, sys, time
sid = int(sys.argv[1])
def members():
    found = []
    for e in os.listdir("/proc"):
        if e.isdigit():
            try:
                st = open(f"/proc/{e}/stat").read()
            except OSError:
                continue
            f = st[st.rfind(")") + 2:].split()
            if int(f[3]) == sid and f[0] != "Z":
                found.append(int(e))
    return found
def end(*_):
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 0.0)):
        for pid in members():
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + grace
        while members() and time.monotonic() < deadline:
            time.sleep(0.2)
    os._exit(0)
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
signal.signal(signal.SIGTERM, end)
while True:
    signal.pause()
"""


def start_session_guard(sid: int) -> subprocess.Popen[bytes] | None:
    """A process that ends session ``sid`` when this one dies (SIGTERM by PDEATHSIG)."""
    try:
        return subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _GUARD, str(sid)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            preexec_fn=_child_setup,
        )
    except OSError:
        return None


# --------------------------------------------------------------------------- /proc helpers


def _proc_stat(pid: int) -> tuple[int, int, bool] | None:
    """(ppid, session id, is_zombie) of a process, None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    # comm may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[1]), int(fields[3]), fields[0] == "Z"


def _all_pids() -> list[tuple[int, int, int, bool]]:
    """(pid, ppid, session, is_zombie) of every process."""
    rows = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _proc_stat(int(entry))
            if st is not None:
                rows.append((int(entry), *st))
    return rows


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def descendants(root: int) -> list[int]:
    """Live (non-zombie) descendants of ``root``, from one scan of /proc."""
    children: dict[int, list[int]] = {}
    for pid, ppid, _, zombie in _all_pids():
        if not zombie:
            children.setdefault(ppid, []).append(pid)
    found: list[int] = []
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def session_members(sid: int) -> list[int]:
    """Live processes of a session: mpirun starts one, and its ranks and their Python stubs
    stay in it (Open MPI gives each rank its own process group, not its own session)."""
    return [pid for pid, _, session, zombie in _all_pids() if session == sid and not zombie]


def alive(pid: int) -> bool:
    st = _proc_stat(pid)
    return st is not None and not st[2]


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _reap_adopted(sid: int) -> None:
    """Collect exit statuses of the session's orphans re-parented to us (else they stay
    zombies). Only those: other children of this process keep their statuses."""
    me = os.getpid()
    for pid, ppid, session, zombie in _all_pids():
        if zombie and ppid == me and session == sid:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


# --------------------------------------------------------------------------- rank logs


class RankLogs:
    """Reads mpirun's merged, rank-tagged output; one log file and one tail per rank."""

    def __init__(self, log_dir: Path, world_size: int, echo: IO[str] | None) -> None:
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.world_size = world_size
        self.echo = echo
        self._files: dict[int | None, IO[str]] = {}
        self.tails: dict[int | None, deque[str]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.mpirun_lines: list[str] = []

    def path(self, rank: int | None) -> Path:
        return self.log_dir / ("mpirun.log" if rank is None else f"rank{rank}.log")

    def _file(self, rank: int | None) -> IO[str]:
        f = self._files.get(rank)
        if f is None:
            f = self._files[rank] = open(self.path(rank), "w", encoding="utf-8")  # noqa: SIM115
        return f

    def add(self, raw: str) -> None:
        for rank, text in split_tagged_line(raw.rstrip("\n")):
            self._add(rank, text)

    def _add(self, rank: int | None, text: str) -> None:
        with self._lock:
            f = self._file(rank)
            f.write(text + "\n")
            f.flush()
            self.tails.setdefault(rank, deque(maxlen=TAIL_LINES)).append(text)
            if rank is None:
                # mpirun's own messages are few; keep them whole for failure analysis.
                self.mpirun_lines.append(text)
        if self.echo is not None:
            label = "mpirun" if rank is None else f"rank {rank}"
            try:
                self.echo.write(f"[{label}] {text}\n")
                self.echo.flush()
            except (OSError, ValueError):
                self.echo = None

    def follow(self, stream: IO[bytes]) -> None:
        def run() -> None:
            for line in iter(stream.readline, b""):
                self.add(line.decode("utf-8", "replace"))
            stream.close()

        self._thread = threading.Thread(target=run, name="rank-logs", daemon=True)
        self._thread.start()

    def join(self, timeout: float = 5.0) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def tail(self, rank: int | None) -> list[str]:
        with self._lock:
            return list(self.tails.get(rank, ()))

    def close(self) -> None:
        with self._lock:
            for f in self._files.values():
                f.close()
            self._files.clear()


# --------------------------------------------------------------------------- the launch


@dataclass
class LaunchFailure(Exception):
    """The launch ended without being asked to: which rank, its exit code, its last lines."""

    reason: str
    exit_code: int
    rank: int | None
    tail: list[str]
    log_path: Path

    def report(self) -> str:
        who = "mpirun" if self.rank is None else f"rank {self.rank}"
        lines = [f"{self.reason}; last lines of {who} ({self.log_path}):"]
        lines += [f"  {line}" for line in self.tail] or ["  (no output)"]
        return "\n".join(lines)


class TritonLaunch:
    """mpirun + one tritonserver per rank; start, wait for readiness, supervise, stop."""

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        world_size: int,
        ready_url: str,
        log_dir: Path,
        echo: IO[str] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.env = dict(env)
        self.world_size = world_size
        self.ready_url = ready_url
        self.logs = RankLogs(log_dir, world_size, echo)
        self.proc: subprocess.Popen[bytes] | None = None
        self.guard: subprocess.Popen[bytes] | None = None
        self.rank_pids: dict[int, int] = {}
        self._stopping = False

    # -- start / readiness ------------------------------------------------------------

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_child_setup,  # runs before the log thread starts
        )
        assert self.proc.stdout is not None
        self.logs.follow(self.proc.stdout)
        self.guard = start_session_guard(self.proc.pid)

    def _find_rank_pids(self) -> None:
        """Map rank -> tritonserver pid (by its distinct shm prefix) among mpirun's children."""
        if self.proc is None or len(self.rank_pids) == self.world_size:
            return
        for pid in descendants(self.proc.pid):
            for arg in _cmdline(pid):
                m = re.fullmatch(
                    r"--backend-config=python,shm-region-prefix-name=prefix(\d+)_", arg
                )
                if m:
                    self.rank_pids.setdefault(int(m.group(1)), pid)
                    break

    def _is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.ready_url, timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def _check_running(self) -> None:
        """Raise LaunchFailure when mpirun ended or a known rank vanished."""
        assert self.proc is not None
        self._find_rank_pids()
        if self.proc.poll() is not None:
            raise self._failure()
        gone = sorted(r for r, pid in self.rank_pids.items() if not alive(pid))
        if gone:
            # mpirun reports the rank when it ends; give it a moment before deciding.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
            raise self._failure(first_gone=gone[0])

    def check_running(self) -> None:
        """Raise LaunchFailure if this launch ended or lost a rank (for supervising several)."""
        self._check_running()

    def wait_ready(self, timeout: float, stop: threading.Event) -> bool:
        """True once rank 0 reports ready; False if ``stop`` was set first."""
        deadline = time.monotonic() + timeout
        while not stop.is_set():
            self._check_running()
            if self._is_ready():
                return True
            if time.monotonic() > deadline:
                log = self.logs.path(0)
                raise LaunchFailure(
                    f"Triton not ready after {timeout:g}s", 1, 0, self.logs.tail(0), log
                )
            stop.wait(0.5)
        return False

    def supervise(self, stop: threading.Event, poll: float = 1.0) -> None:
        """Block until ``stop`` is set; raise LaunchFailure if the launch ends by itself."""
        while not stop.is_set():
            self._check_running()
            stop.wait(poll)

    # -- failure analysis -------------------------------------------------------------

    def _failure(self, first_gone: int | None = None) -> LaunchFailure:
        assert self.proc is not None
        self.logs.join(timeout=2)
        code = self.proc.poll()
        text = "\n".join(self.logs.mpirun_lines)
        rank: int | None = first_gone
        exit_code: int | None = None
        m = _MPI_PROCESS_NAME.search(text)
        if m:
            rank = int(m.group(1))
            c = _MPI_EXIT_CODE.search(text, m.end())
            exit_code = int(c.group(1)) if c else None
        else:
            s = _MPI_SIGNALLED.search(text)
            if s:
                rank, exit_code = int(s.group(1)), 128 + int(s.group(2))
        if exit_code is None:
            # Popen reports death by signal N as -N; shells say 128 + N.
            exit_code = 1 if code in (None, 0) else (128 - code if code < 0 else code)
        if rank is None and self.world_size == 1 and code not in (None, 0):
            rank = 0
        if rank is None:
            if code == 0:
                reason = "all ranks exited (code 0) without being asked to stop"
            elif code is not None:
                reason = f"mpirun exited with code {exit_code}"
            else:
                reason = "launch ended"
        else:
            reason = f"rank {rank} exited with code {exit_code}"
            if exit_code > 128:
                with contextlib.suppress(ValueError):
                    reason += f" ({signal.Signals(exit_code - 128).name})"
        return LaunchFailure(reason, exit_code, rank, self.logs.tail(rank), self.logs.path(rank))

    # -- stop -------------------------------------------------------------------------

    def stop(self, grace: float = 20.0, sweep_grace: float = 5.0) -> list[int]:
        """Stop every rank; return pids that had to be killed in the final sweep.

        SIGTERM to mpirun forwards SIGTERM to every rank and, after Open MPI's
        odls_base_sigkill_timeout, SIGKILLs each rank's process group (which holds its
        Python stubs). Whatever is still around after ``grace`` is killed here.
        """
        self._stopping = True
        proc = self.proc
        if proc is not None and proc.poll() is None:
            _signal(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                for pid in session_members(proc.pid):
                    _signal(pid, signal.SIGKILL)
                proc.wait()
        swept = self._sweep(sweep_grace)
        if self.guard is not None:  # our own sweep is done: the guard has nothing to do
            self.guard.kill()
            self.guard.wait()
        self.logs.join()
        self.logs.close()
        return swept

    def _sweep(self, grace: float = 5.0) -> list[int]:
        """End what outlived mpirun: every process still in the launch's session.

        Orphans are re-parented to us when we are a subreaper, so we also reap them.
        """
        if self.proc is None:
            return []
        sid = self.proc.pid
        leftovers = session_members(sid)
        if not leftovers:
            _reap_adopted(sid)
            return []
        for pid in leftovers:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(alive(p) for p in leftovers):
            _reap_adopted(sid)
            time.sleep(0.1)
        for pid in leftovers:
            if alive(pid):
                _signal(pid, signal.SIGKILL)
        time.sleep(0.1)
        _reap_adopted(sid)
        return leftovers


def install_stop_handlers(stop: threading.Event) -> dict[int, object]:
    """SIGINT/SIGTERM/SIGHUP set ``stop``; returns the previous handlers."""
    previous: dict[int, object] = {}

    def handler(signum: int, _frame: object) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        previous[sig] = signal.signal(sig, handler)
    return previous


def print_failure(failure: LaunchFailure, out: IO[str] = sys.stderr) -> None:
    print(f"trtllm-stack triton: {failure.report()}", file=out, flush=True)
