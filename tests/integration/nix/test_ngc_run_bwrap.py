"""`ngc-run`, `mpirun` and `tritonserver` from nix/ngc-runtime.nix under the real bubblewrap,
against a small stand-in for the NGC image root, including the nesting the Triton app uses:
`mpirun` (the wrapper: ngc-run + bwrap) starting one `tritonserver` wrapper per rank inside
the image, each of which calls ngc-run and so bwrap again.

The scripts are the real ones, built by nix-build from nix/ngc-runtime.nix with the nixpkgs
stand-in's writeShellApplication and the host's /usr/bin/bwrap. The stand-in image root is a
directory whose /usr and /etc are the host's (bind mounts in a private mount namespace, made
with unshare -m) plus the image's own paths: /opt/hpcx/ompi/bin/mpirun (Debian's Open MPI)
and /opt/tritonserver/bin/tritonserver (a script that reports where it runs). Not exercised:
the real 20 GB image, GPUs and driver libraries, a non-root user (user namespaces).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        any(shutil.which(t) is None for t in ("bwrap", "unshare", "mpirun", "nix-build")),
        reason="needs bwrap, unshare, mpirun and nix-build",
    ),
]

ROOT = Path(__file__).resolve().parents[3]
NIX_CONFIG = "\n".join(
    [
        "experimental-features = nix-command flakes",
        "substituters =",
        "build-users-group =",
        "sandbox = false",
    ]
)
MARKER = "stand-in NGC root"

# Reports the image marker, the rank, how many bwrap processes it runs under, and its argv.
TRITONSERVER_STUB = """#!/bin/sh
depth=0
pid=$$
while [ "$pid" -gt 1 ]; do
  [ "$(cat /proc/$pid/comm)" = bwrap ] && depth=$((depth + 1))
  pid=$(awk '/^PPid:/ {print $2}' /proc/$pid/status)
done
nix=no
[ -d /nix/store ] && nix=yes
image=$(cat /opt/ngc-stand-in)
echo "tritonserver rank=${OMPI_COMM_WORLD_RANK:-none} image=$image bwrap_depth=$depth \
nix=$nix cwd=$(pwd) args=$*"
"""


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ngc-image") / "root"
    for d in ("usr", "etc", "root", "opt/hpcx/ompi/bin", "opt/tritonserver/bin"):
        (root / d).mkdir(parents=True)
    for name in ("bin", "lib", "lib64", "sbin"):
        if Path(f"/{name}").is_symlink():
            (root / name).symlink_to(os.readlink(f"/{name}"))
    (root / "opt/hpcx/ompi/bin/mpirun").symlink_to("/usr/bin/mpirun")
    stub = root / "opt/tritonserver/bin/tritonserver"
    stub.write_text(TRITONSERVER_STUB)
    stub.chmod(0o755)
    (root / "opt/ngc-stand-in").write_text(MARKER)
    return root


@pytest.fixture(scope="module")
def runtime(tmp_path_factory, image) -> Path:
    """$out of nix/ngc-runtime.nix: bin/ngc-run, bin/mpirun, bin/tritonserver."""
    stand_in = tmp_path_factory.mktemp("nix") / "nixpkgs"
    shutil.copytree(
        ROOT / "tests/nix/nixpkgs", stand_in, ignore=shutil.ignore_patterns("host.json")
    )
    host = {"python": sys.executable, "ruff": shutil.which("ruff") or "ruff", "bash": "/bin/bash"}
    (stand_in / "host.json").write_text(json.dumps(host))
    expr = f"""
      let
        pkgs = import {stand_in} {{ }};
        hostBwrap = pkgs.runCommand "host-bwrap" {{ }} ''
          mkdir -p "$out/bin"; ln -s /usr/bin/bwrap "$out/bin/bwrap"
        '';
      in import {ROOT}/nix/ngc-runtime.nix {{
        inherit (pkgs) lib writeShellApplication runCommand;
        bubblewrap = hostBwrap;
        ngc-tritonserver-image = {{ outPath = "{image}"; image = "{MARKER}"; }};
        trtllm-stack = {{ outPath = "/nonexistent/trtllm-stack"; }};
        python3 = {{ sitePackages = "lib/python3.11/site-packages"; }};
      }}
    """
    proc = subprocess.run(
        ["nix-build", "--no-out-link", "-E", expr],
        env={**os.environ, "NIX_CONFIG": NIX_CONFIG},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return Path(proc.stdout.strip().splitlines()[-1])


def in_namespace(image: Path, argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` with the stand-in image's /usr and /etc bound from the host."""
    setup = f'mount --bind /usr "{image}/usr" && mount --bind /etc "{image}/etc" && exec "$@"'
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", setup, "sh", *argv],
        cwd=cwd,
        env={k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_"))},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_ngc_run_runs_the_command_inside_the_image(runtime, image):
    # The worktree is not in the image: its mount point must be made on bwrap's own root.
    proc = in_namespace(image, [str(runtime / "bin/ngc-run"), "tritonserver", "--x"], ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        f"tritonserver rank=none image={MARKER} bwrap_depth=1 nix=yes cwd={ROOT} args=--x"
    )
    assert "no NVIDIA driver libraries found" in proc.stderr


def test_tritonserver_ranks_under_mpirun_nest_bwrap(runtime, image):
    # What `trtllm-stack triton` runs on the host: the mpirun wrapper, whose ranks start the
    # tritonserver wrapper (an absolute /nix/store path) inside the image.
    argv = [
        str(runtime / "bin/mpirun"), "--allow-run-as-root", "--oversubscribe", "-np", "2",
        str(runtime / "bin/tritonserver"), "--model-repository=/repo",
    ]  # fmt: skip
    proc = in_namespace(image, argv, ROOT)
    assert proc.returncode == 0, proc.stderr
    lines = sorted(proc.stdout.strip().splitlines())
    assert lines == [
        f"tritonserver rank={r} image={MARKER} bwrap_depth=2 nix=yes cwd={ROOT}"
        " args=--model-repository=/repo"
        for r in (0, 1)
    ]


def test_image_as_read_only_root_cannot_take_mount_points_it_lacks(image):
    # Why ngc-run lays out its root entry by entry: the previous design (--ro-bind IMAGE /
    # then --bind CWD CWD) fails for any mount point the image does not have.
    argv = [
        "bwrap", "--ro-bind", str(image), "/", "--dev-bind", "/dev", "/dev", "--proc", "/proc",
        "--bind", str(ROOT), str(ROOT), "--", "/bin/true",
    ]  # fmt: skip
    proc = in_namespace(image, argv, ROOT)
    assert proc.returncode != 0
    assert "Read-only file system" in proc.stderr
