"""The Nix side, evaluated and run here: pure nix/lib files against Python, and the flake's
wiring against the nixpkgs stand-in in tests/nix/nixpkgs (real nixpkgs cannot be fetched).

Needs `nix` (CI installs it with .ci/setup-nix.sh). The flake is read as a git flake, so it
sees tracked files only: `git add` new files before running these tests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from trtllm_stack import __version__
from trtllm_stack.triton.launch_plan import NCCL_PCIE_DEFAULTS
from trtllm_stack.variants import load_table

ROOT = Path(__file__).resolve().parents[3]
SYSTEM = "x86_64-linux"
# Settings for this process only, whatever /etc/nix/nix.conf says: no binary cache to wait
# on, builds as the calling user (root in CI) so the host Python is reachable.
NIX_CONFIG = "\n".join(
    [
        "experimental-features = nix-command flakes",
        "substituters =",
        "build-users-group =",
        "sandbox = false",
        "warn-dirty = false",
    ]
)


@pytest.fixture(scope="session")
def nix_env() -> dict[str, str]:
    if shutil.which("nix") is None or shutil.which("nix-instantiate") is None:
        pytest.fail("nix is not installed: run `bash .ci/setup-nix.sh` (Debian's nix-bin)")
    return {**os.environ, "NIX_CONFIG": NIX_CONFIG}


def run(cmd: list[str], env: dict[str, str], **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, **kw)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def nix_eval_json(expr: str, env: dict[str, str]) -> Any:
    out = run(["nix-instantiate", "--eval", "--strict", "--json", "-E", expr], env).stdout
    return json.loads(out)


@pytest.fixture(scope="session")
def flake(nix_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """`nix` argument prefix that points the flake's nixpkgs input at a copy of the stand-in
    with this host's Python, ruff and bash written into host.json."""
    stand_in = tmp_path_factory.mktemp("nix") / "nixpkgs"
    shutil.copytree(
        ROOT / "tests/nix/nixpkgs", stand_in, ignore=shutil.ignore_patterns("host.json")
    )
    ruff = shutil.which("ruff")
    assert ruff, "ruff is needed on PATH (python[dev])"
    host = {"python": sys.executable, "ruff": ruff, "bash": "/bin/bash"}
    (stand_in / "host.json").write_text(json.dumps(host))
    return ["--override-input", "nixpkgs", f"path:{stand_in}", "--no-write-lock-file"]


def nix(args: list[str], flake: list[str], env: dict[str, str]) -> str:
    """`nix SUBCOMMAND [flake options] REST`: options go before any `--` app arguments."""
    words = 2 if args[0] == "flake" else 1
    return run(["nix", *args[:words], *flake, *args[words:]], env).stdout


# ------------------------------------------------------------------- pure files


def test_every_nix_file_parses(nix_env: dict[str, str]) -> None:
    files = [ROOT / "flake.nix", *ROOT.glob("nix/**/*.nix"), *ROOT.glob("tests/nix/**/*.nix")]
    assert len(files) >= 10
    for f in files:
        run(["nix-instantiate", "--parse", str(f)], nix_env)


def test_variant_names_match_python(nix_env: dict[str, str]) -> None:
    nix = nix_eval_json("import ./nix/lib/variants.nix { }", nix_env)
    table = load_table(ROOT / "python/trtllm_stack/variants.toml")
    expected = [
        {
            "name": v.name,
            "packageName": v.package_name,
            "appName": v.app_name,
            "worldSize": v.world_size,
            "quantization": v.quantization,
            "maxBatchSize": v.max_batch_size,
            "maxSeqLen": v.max_seq_len,
            "repo": v.checkpoint.repo,
            "revision": v.checkpoint.revision,
        }
        for v in table.variants
    ]
    got = [
        {
            "name": v["name"],
            "packageName": v["packageName"],
            "appName": v["appName"],
            "worldSize": v["worldSize"],
            "quantization": v["quantization"],
            "maxBatchSize": v["maxBatchSize"],
            "maxSeqLen": v["maxSeqLen"],
            "repo": v["checkpoint"]["repo"],
            "revision": v["checkpoint"]["revision"],
        }
        for v in nix["variants"]
    ]
    assert got == expected
    assert nix["runtime"]["tritonImage"] == table.runtime.triton_image
    assert sorted(nix["byPackageName"]) == sorted(v.package_name for v in table.variants)


def test_nccl_defaults_match_launcher(nix_env: dict[str, str]) -> None:
    nix = nix_eval_json("import ./nix/lib/nccl.nix", nix_env)
    assert nix["env"] == NCCL_PCIE_DEFAULTS


def test_nccl_shell_defaults_let_user_values_win(nix_env: dict[str, str]) -> None:
    lines = nix_eval_json("(import ./nix/lib/nccl.nix).shellDefaults", nix_env)
    script = lines + 'env | grep "^NCCL_" | sort\n'
    user = {k: v for k, v in os.environ.items() if not k.startswith("NCCL_")}
    user["NCCL_P2P_LEVEL"] = "SYS"
    out = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], env=user, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    got = dict(line.split("=", 1) for line in out.stdout.split())
    assert got == {**NCCL_PCIE_DEFAULTS, "NCCL_P2P_LEVEL": "SYS"}


def test_triton_app_argv_binds_engine_and_variant(nix_env: dict[str, str]) -> None:
    expr = (
        "let a = import ./nix/lib/apps.nix; vs = import ./nix/lib/variants.nix { }; in "
        'builtins.mapAttrs (n: v: a.tritonArgv v "/engine/${v.packageName}") vs.byAppName'
    )
    argv = nix_eval_json(expr, nix_env)
    table = load_table(ROOT / "python/trtllm_stack/variants.toml")
    assert argv == {
        d.app_name: [
            "trtllm-stack",
            "triton",
            "--engine",
            f"/engine/{d.variant.package_name}",
            "--variant",
            d.variant.name,
            *(["--replicas", str(d.replicas)] if d.replicas > 1 else []),
        ]
        for d in table.deployments
    }
    assert argv["tritonserver-qwen3-tp2-dp2"][-2:] == ["--replicas", "2"]


def test_deployments_match_python(nix_env: dict[str, str]) -> None:
    nix = nix_eval_json("(import ./nix/lib/variants.nix { }).deployments", nix_env)
    table = load_table(ROOT / "python/trtllm_stack/variants.toml")
    got = [(d["name"], d["appName"], d["packageName"], d["replicas"], d["gpus"]) for d in nix]
    assert got == [
        (d.name, d.app_name, d.variant.package_name, d.replicas, d.gpus) for d in table.deployments
    ]


# ------------------------------------------------------------- flake wiring


def test_flake_show_lists_every_output(flake: list[str], nix_env: dict[str, str]) -> None:
    shown = json.loads(nix(["flake", "show", "--json", "."], flake, nix_env))
    table = load_table(ROOT / "python/trtllm_stack/variants.toml")
    packages = set(shown["packages"][SYSTEM])
    assert {v.package_name for v in table.variants} | {"trtllm-stack", "default"} <= packages
    apps = set(shown["apps"][SYSTEM])
    assert apps == {d.app_name for d in table.deployments} | {"openai-qwen3", "demo", "default"}
    assert {"tritonserver-qwen3-dp4", "tritonserver-qwen3-tp2-dp2"} <= apps
    assert set(shown["checks"][SYSTEM]) == {"pytest-unit", "ruff", "nix-eval"}
    assert "default" in shown["devShells"][SYSTEM]
    assert shown["formatter"][SYSTEM]["type"] == "derivation"
    assert "default" in shown["overlays"]
    assert "default" in shown["nixosModules"]


def test_engine_derivations_evaluate(flake: list[str], nix_env: dict[str, str]) -> None:
    # The stand-in swaps engines for small directories so apps can run; the real derivation
    # from nix/engine.nix is kept as realEngine and evaluated here.
    apply = (
        "ps: builtins.mapAttrs (n: p: let e = p.realEngine; in { drv = e.drvPath; "
        "features = e.requiredSystemFeatures; variant = e.variantName; "
        "builder = e.buildCommand or e.args; }) "
        '(builtins.removeAttrs ps [ "default" "trtllm-stack" "ngc-runtime" ])'
    )
    out = nix(["eval", "--json", f".#packages.{SYSTEM}", "--apply", apply], flake, nix_env)
    engines = json.loads(out)
    table = load_table(ROOT / "python/trtllm_stack/variants.toml")
    assert set(engines) == {v.package_name for v in table.variants}
    for v in table.variants:
        e = engines[v.package_name]
        assert e["drv"].startswith("/nix/store/") and e["drv"].endswith(f"-{v.package_name}.drv")
        assert e["features"] == ["cuda"]
        assert e["variant"] == v.name
        assert "build-engine" in str(e["builder"]) and "verify-engine" in str(e["builder"])


def test_trtllm_stack_package_builds_and_runs(flake: list[str], nix_env: dict[str, str]) -> None:
    out = nix(["run", ".#trtllm-stack", "--", "--version"], flake, nix_env)
    assert out.strip() == __version__
    helped = nix(["run", f".#packages.{SYSTEM}.default", "--", "--help"], flake, nix_env)
    assert "usage: trtllm-stack" in helped


def test_tritonserver_app_runs_launcher_with_nccl(
    flake: list[str], nix_env: dict[str, str]
) -> None:
    program = nix(
        ["eval", "--raw", f".#apps.{SYSTEM}.tritonserver-qwen3-tp4.program"], flake, nix_env
    )
    # Build and run the app (and its stand-in engine): it must reach the store's trtllm-stack.
    # Exit status aside: `triton --help` works once the launcher's subcommand has landed.
    proc = subprocess.run(
        ["nix", "run", *flake, ".#tritonserver-qwen3-tp4", "--", "--help"],
        cwd=ROOT,
        env=nix_env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert "usage: trtllm-stack" in proc.stdout + proc.stderr, proc.stderr
    run(["bash", "-n", program], nix_env)
    text = Path(program).read_text()
    engine = text.split("'--engine' '")[1].split("'")[0]
    config = json.loads((Path(engine) / "config.json").read_text())
    assert config["pretrained_config"]["mapping"]["world_size"] == 4
    assert sorted(p.name for p in Path(engine).glob("rank*.engine")) == [
        f"rank{i}.engine" for i in range(4)
    ]
    assert "'--variant' 'qwen3-32b-nvfp4-tp4'" in text
    for key, value in NCCL_PCIE_DEFAULTS.items():
        assert f': "${{{key}:={value}}}"' in text


def test_nix_eval_check_builds(flake: list[str], nix_env: dict[str, str]) -> None:
    out = run(
        ["nix", "build", *flake, "--no-link", "--json", f".#checks.{SYSTEM}.nix-eval"], nix_env
    )
    # Read the built output, not the build log: a store that already holds it builds nothing.
    verdict = Path(json.loads(out.stdout)[0]["outputs"]["out"]).read_text()
    assert "deployments and 3 NCCL defaults agree" in verdict


def test_tritonserver_tp4_dry_run_prints_four_ranks_with_nccl(
    flake: list[str], nix_env: dict[str, str]
) -> None:
    out = nix(["run", ".#tritonserver-qwen3-tp4", "--", "--dry-run"], flake, nix_env)
    command = next(line for line in out.splitlines() if "/bin/mpirun " in line)
    blocks = command.split(" : ")
    assert len(blocks) == 4
    assert all(" -n 1 " in f" {b} " and "tritonserver" in b for b in blocks)
    assert "--http-port=8000" in blocks[0] and "--grpc-port=8001" in blocks[0]
    assert all("--load-model=tensorrt_llm" in b for b in blocks[1:])
    for i, block in enumerate(blocks):
        assert f"shm-region-prefix-name=prefix{i}_" in block
        for key in NCCL_PCIE_DEFAULTS:
            assert f"-x {key}" in block
    for key, value in NCCL_PCIE_DEFAULTS.items():
        assert f"{key}={value}" in command.split("/bin/mpirun ")[0]


def test_tritonserver_dp4_dry_run_pins_four_replicas(
    flake: list[str], nix_env: dict[str, str]
) -> None:
    env = {**nix_env, "CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    out = nix(["run", ".#tritonserver-qwen3-dp4", "--", "--dry-run"], flake, env)
    commands = [line for line in out.splitlines() if "/bin/mpirun " in line]
    assert len(commands) == 4
    for r, command in enumerate(commands):
        assert f"CUDA_VISIBLE_DEVICES={r} " in command
        assert f"--grpc-port={8001 + 10 * r}" in command
        assert " : " not in command  # tp1: one rank per replica
    grpc = ",".join(f"127.0.0.1:{8001 + 10 * r}" for r in range(4))
    assert f"# proxy: --triton-url {grpc}" in out


def test_demo_app_answers_a_chat_request(flake: list[str], nix_env: dict[str, str]) -> None:
    import signal
    import time

    import httpx

    from trtllm_stack.triton.server import free_port

    port = free_port()
    proc = subprocess.Popen(
        ["nix", "run", *flake, ".#demo", "--", "--port", str(port), "--token-delay-ms", "0"],
        cwd=ROOT,
        env=nix_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        reply = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={
                "model": "qwen3",
                "messages": [{"role": "user", "content": "[reply]Nix served this.[/reply]"}],
                "max_tokens": 20,
            },
            timeout=30,
        ).json()
        assert reply["choices"][0]["message"]["content"] == "Nix served this."
        assert reply["choices"][0]["finish_reason"] == "stop"
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
