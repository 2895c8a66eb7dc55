"""ruff and mypy stay clean: run as tests so CI and the README's one command check them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_ruff_check_is_clean():
    # One config for the package and the tests (ruff would not find python/pyproject.toml
    # for files under tests/ by itself).
    proc = run("ruff", "check", "--config", "python/pyproject.toml", "python", "tests")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_is_clean():
    proc = run("mypy", cwd=ROOT / "python")
    assert proc.returncode == 0, proc.stdout + proc.stderr
