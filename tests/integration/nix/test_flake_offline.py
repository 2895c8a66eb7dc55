"""scripts/flake-offline, the documented way to try the flake without network, as written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("nix") is None, reason="needs nix (bash .ci/setup-nix.sh)"),
]

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "flake-offline"


def run(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TMPDIR": str(tmp)}
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=300, env=env, check=False
    )


def test_flake_show_and_run_work_offline_and_leave_no_temp_dir(tmp_path: Path) -> None:
    shown = run("flake", "show", "--json", tmp=tmp_path)
    assert shown.returncode == 0, shown.stderr
    outputs = json.loads(shown.stdout)
    assert "demo" in outputs["apps"]["x86_64-linux"]
    assert "trtllm-stack" in outputs["packages"]["x86_64-linux"]
    version = run("run", ".#trtllm-stack", "--", "--version", tmp=tmp_path)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == "0.1.0"
    assert list(tmp_path.iterdir()) == []  # the stand-in copy is removed
    usage = run(tmp=tmp_path)
    assert usage.returncode == 2 and "flake-offline" in usage.stderr
