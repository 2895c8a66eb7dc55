import json
import subprocess
import sys

from engine_testlib import HF_QWEN3_CONFIG, make_engine_dir

from trtllm_stack.cli import main
from trtllm_stack.engine import trtllm_api
from trtllm_stack.variants import load_table

TABLE = load_table()


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "trtllm_stack", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_verify_engine_failure_is_one_line_and_exit_1(tmp_path):
    variant = TABLE.get("qwen3-32b-nvfp4-tp1")
    d = make_engine_dir(tmp_path / "e", variant, config=HF_QWEN3_CONFIG)
    proc = run_cli("verify-engine", str(d), "--variant", "qwen3-32b-engine")
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"trtllm-stack verify-engine: engine {d} failed verification")
    assert "Traceback" not in proc.stderr


def test_build_engine_unknown_variant_is_one_line_and_exit_2(tmp_path):
    proc = run_cli("build-engine", "--variant", "llama-70b", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "trtllm-stack build-engine: unknown variant 'llama-70b'; known variants: "
        + ", ".join(v.name for v in TABLE.variants)
    ]


def test_verify_engine_ok_and_inferred_variant(tmp_path, capsys):
    variant = TABLE.get("qwen3-32b-fp8-tp2")
    d = make_engine_dir(tmp_path / "e", variant)
    assert main(["verify-engine", str(d)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"engine {d}: OK for qwen3-32b-fp8-tp2\n")


def test_verify_engine_cannot_infer_unquantized(tmp_path, capsys):
    variant = TABLE.get("qwen3-32b-nvfp4-tp4")
    d = make_engine_dir(tmp_path / "e", variant)
    config = json.loads((d / "config.json").read_text())
    config["pretrained_config"]["quantization"]["quant_algo"] = None
    (d / "config.json").write_text(json.dumps(config))
    assert main(["verify-engine", str(d)]) == 1
    assert "cannot tell the variant (quant_algo None, world_size 4); pass --variant" in (
        capsys.readouterr().err
    )


def test_verify_engine_needs_something_to_check(capsys):
    assert main(["verify-engine"]) == 2
    assert "give an engine directory, --smoke URL, or both" in capsys.readouterr().err


def test_build_engine_without_tensorrt_llm_says_so(tmp_path, capsys):
    # The real trtllm_api: this machine has no TensorRT-LLM, so the build stops at once.
    if trtllm_api.installed_version() is not None:
        return
    code = main(
        [
            "build-engine",
            "--variant",
            "qwen3-32b-engine-tp2",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2
    assert "TensorRT-LLM is not installed; the engine build needs tensorrt-llm==1.1.0" in (
        capsys.readouterr().err
    )
    assert list(tmp_path.iterdir()) == []


def test_version_check_accepts_local_tag_only_of_the_same_release():
    assert trtllm_api.same_release("1.1.0", "1.1.0")
    assert trtllm_api.same_release("1.1.0+cu13", "1.1.0")
    assert not trtllm_api.same_release("1.1.0rc5", "1.1.0")
    assert not trtllm_api.same_release("1.2.0", "1.1.0")


def test_build_engine_dry_run_prints_the_plan_without_tensorrt_llm(tmp_path):
    out = tmp_path / "engines" / "tp4"
    proc = run_cli(
        "build-engine", "--variant", "qwen3-32b-nvfp4-tp4", "--out", str(out), "--dry-run"
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("check: tensorrt_llm==1.1.0 installed (found: not installed)")
    assert lines[1].startswith("download: huggingface_hub.snapshot_download(")
    assert sum(line.startswith("convert rank ") for line in lines) == 4
    build = next(line for line in lines if line.startswith("build: "))
    assert "--max_input_len 32767 --max_seq_len 32768" in build
    assert "--gemm_plugin disable" in build
    assert not out.exists() and not out.parent.exists()
