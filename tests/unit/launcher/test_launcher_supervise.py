"""TritonLaunch's supervision with a stand-in for mpirun (a shell script): per-rank logs,
failure reports, readiness timeout, and the final sweep of the launch's session."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from trtllm_stack.triton.launcher import LaunchFailure, TritonLaunch, alive, session_members


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v2/health/ready"


def fake_mpirun(script: str, tmp_path: Path, world_size: int = 2) -> TritonLaunch:
    return TritonLaunch(
        ["sh", "-c", script],
        dict(os.environ),
        world_size=world_size,
        ready_url=closed_port_url(),
        log_dir=tmp_path / "logs",
    )


FAILING = r"""
echo '[1,0]<stdout>:rank zero starting'
echo '[1,1]<stderr>:rank one: [1,1]<stderr>:fatal error'
echo 'Primary job  terminated normally, but 1 process returned'
echo '  Process name: [[4242,1],1]'
echo '  Exit code:    3'
exit 3
"""


def test_failed_rank_is_reported_with_its_code_and_log_tail(tmp_path: Path) -> None:
    launch = fake_mpirun(FAILING, tmp_path)
    launch.start()
    with pytest.raises(LaunchFailure) as exc:
        launch.wait_ready(30, threading.Event())
    launch.stop()
    failure = exc.value
    assert (failure.rank, failure.exit_code) == (1, 3)
    assert failure.tail == ["rank one: fatal error"]
    assert failure.log_path == tmp_path / "logs" / "rank1.log"
    report = failure.report()
    assert report.startswith("rank 1 exited with code 3; last lines of rank 1")
    assert (tmp_path / "logs" / "rank0.log").read_text() == "rank zero starting\n"
    assert "Process name" in (tmp_path / "logs" / "mpirun.log").read_text()


def test_mpirun_killed_by_a_signal_reports_128_plus_n(tmp_path: Path) -> None:
    launch = fake_mpirun("kill -KILL $$", tmp_path)
    launch.start()
    with pytest.raises(LaunchFailure) as exc:
        launch.wait_ready(30, threading.Event())
    launch.stop()
    assert exc.value.exit_code == 128 + signal.SIGKILL
    assert exc.value.reason == "mpirun exited with code 137"


def test_not_ready_in_time(tmp_path: Path) -> None:
    launch = fake_mpirun("echo '[1,0]<stdout>:still loading'; exec sleep 60", tmp_path, 1)
    launch.start()
    with pytest.raises(LaunchFailure) as exc:
        launch.wait_ready(0.5, threading.Event())
    launch.stop()
    assert exc.value.reason == "Triton not ready after 0.5s"
    assert exc.value.rank == 0 and exc.value.exit_code == 1
    assert exc.value.tail == ["still loading"]


def test_stop_request_ends_the_wait_and_sweeps_the_session(tmp_path: Path) -> None:
    # A child that ignores SIGTERM and outlives its parent: what a stuck stub looks like.
    script = "(trap '' TERM; exec sleep 60) & echo $! > " + str(tmp_path / "child.pid") + "; wait"
    launch = fake_mpirun(script, tmp_path)
    launch.start()
    stop = threading.Event()
    deadline = time.monotonic() + 10
    while not (tmp_path / "child.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int((tmp_path / "child.pid").read_text())
    assert launch.proc is not None
    assert child in session_members(launch.proc.pid)
    stop.set()
    assert launch.wait_ready(30, stop) is False
    swept = launch.stop(grace=1, sweep_grace=0.2)
    assert child in swept
    assert not alive(child)
    assert session_members(launch.proc.pid) == []


def test_ranks_ending_by_themselves_is_a_failure(tmp_path: Path) -> None:
    launch = fake_mpirun("echo '[1,0]<stdout>:bye'; exit 0", tmp_path, 1)
    launch.start()
    stop = threading.Event()
    with pytest.raises(LaunchFailure) as exc:
        launch.supervise(stop, poll=0.05)
    launch.stop()
    assert exc.value.exit_code == 1
    assert exc.value.reason == "all ranks exited (code 0) without being asked to stop"
