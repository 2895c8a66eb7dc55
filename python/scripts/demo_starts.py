"""Issue 18's "done when": demo starts alternating between two venvs, none activated.

Each start runs ``<venv>/bin/trtllm-stack demo`` by absolute path with ``env -i``-like
environment (PATH=/usr/bin:/bin), asks one chat question, sends SIGTERM and measures how
long until the demo and every process under it are gone. Midway, the second venv is
deleted and recreated. Prints one line per start and a summary; exits 1 if any start failed
or left a process behind after 10 s.

    python python/scripts/demo_starts.py --python-a /usr/bin/python3 \\
        --python-b ~/.pyenv/versions/3.12.1/bin/python3 --starts 20 --work /tmp/demo-starts
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "python"))

from trtllm_stack.triton.launcher import descendants  # noqa: E402
from trtllm_stack.triton.server import free_port  # noqa: E402

GONE_WITHIN = 10.0


def make_venv(python: str, path: Path) -> float:
    t0 = time.monotonic()
    shutil.rmtree(path, ignore_errors=True)
    subprocess.run([python, "-m", "venv", str(path)], check=True)
    subprocess.run(
        [str(path / "bin" / "pip"), "install", "-q", "-e", f"{REPO / 'python'}[serve,cpu-triton]"],
        check=True,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    return time.monotonic() - t0


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def alive(pid: int, cmd: str) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z" and cmdline(pid) == cmd


def one_start(venv: Path, work: Path) -> dict:
    port = free_port()
    tmp = work / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/"), "TMPDIR": str(tmp)}
    env["HF_HUB_OFFLINE"] = "1"
    t0 = time.monotonic()
    log = open(work / "demo.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [str(venv / "bin" / "trtllm-stack"), "demo", "--port", str(port), "--token-delay-ms", "0"],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    row: dict = {"venv": venv.name, "ok": False}
    try:
        body = json.dumps(
            {"model": "qwen3", "max_tokens": 8,
             "messages": [{"role": "user", "content": "[reply]Hello there[/reply]"}]}
        ).encode()  # fmt: skip
        deadline = time.monotonic() + 300
        answer = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    body,
                    {"Content-Type": "application/json"},
                )
                with urllib.request.urlopen(req, timeout=30) as resp:
                    answer = json.loads(resp.read())["choices"][0]["message"]["content"]
                break
            except OSError:
                time.sleep(0.5)
        row["start_s"] = round(time.monotonic() - t0, 1)
        row["answer"] = answer
        tree = {pid: cmdline(pid) for pid in descendants(proc.pid)}
        row["processes"] = len(tree)
        t1 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            row["exit"] = proc.wait(GONE_WITHIN)
        except subprocess.TimeoutExpired:
            row["exit"] = None
        while any(alive(p, c) for p, c in tree.items()) and time.monotonic() - t1 < 30:
            time.sleep(0.1)
        row["gone_s"] = round(time.monotonic() - t1, 2)
        row["left"] = [c[:80] for p, c in tree.items() if alive(p, c)]
        row["tmp_left"] = [p.name for p in tmp.glob("trtllm-stack-demo-*")]
        row["ok"] = (
            answer == "Hello there"
            and row["exit"] == 0
            and not row["left"]
            and row["gone_s"] <= GONE_WITHIN
            and not row["tmp_left"]
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python-a", default="/usr/bin/python3")
    ap.add_argument("--python-b", default=sys.executable)
    ap.add_argument("--starts", type=int, default=20)
    ap.add_argument("--work", type=Path, default=Path("/tmp/trtllm-stack-demo-starts"))
    args = ap.parse_args()
    if not 2 <= args.starts <= 100:
        ap.error("--starts must be in 2..100")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    venvs = {"a": work / "venv-a", "b": work / "venv-b"}
    pythons = {"a": args.python_a, "b": args.python_b}
    for key, path in venvs.items():
        if not (path / "bin" / "trtllm-stack").exists():
            print(f"venv {key}: {make_venv(pythons[key], path):.0f} s to create", flush=True)
    rows = []
    for i in range(args.starts):
        if i == args.starts // 2:
            print(f"deleting and recreating {venvs['b']} ...", flush=True)
            print(f"venv b: {make_venv(pythons['b'], venvs['b']):.0f} s to recreate", flush=True)
        key = "a" if i % 2 == 0 else "b"
        row = one_start(venvs[key], work)
        row["n"] = i + 1
        rows.append(row)
        print(json.dumps(row), flush=True)
    ok = sum(r["ok"] for r in rows)
    gone = [r["gone_s"] for r in rows if "gone_s" in r]
    starts = [r["start_s"] for r in rows if "start_s" in r]
    print(
        f"{ok}/{len(rows)} starts answered and left nothing; start-to-answer"
        f" {min(starts):.1f}-{max(starts):.1f} s; SIGTERM to all gone"
        f" {min(gone):.2f}-{max(gone):.2f} s (bound {GONE_WITHIN:.0f} s)"
    )
    return 0 if ok == len(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
