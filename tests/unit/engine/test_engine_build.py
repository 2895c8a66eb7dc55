"""Build orchestration with the TensorRT-LLM calls replaced by fakes that write synthetic output."""

import json
import re
import types
from pathlib import Path

import pytest
from engine_testlib import (
    FP8_QUANT_CONFIG,
    NVFP4_QUANT_CONFIG,
    engine_config,
    make_hf_checkpoint,
    sparse_file,
    tree,
)

from trtllm_stack.engine import build as build_mod
from trtllm_stack.engine.build import (
    BuildOptions,
    build_engine,
    copy_tokenizer_files,
    plan_lines,
    trtllm_build_args,
)
from trtllm_stack.engine.verify import MANIFEST_FILE, expected_rank_bytes
from trtllm_stack.errors import UserError
from trtllm_stack.variants import load_table

TABLE = load_table()


class FakeTrtllm:
    """Stands in for trtllm_api: records calls, writes what a (good or broken) build writes."""

    def __init__(self, *, quant_algo="same", rank_bytes=None, fail_build=False, version="1.1.0"):
        self.quant_algo = quant_algo
        self.rank_bytes = rank_bytes
        self.fail_build = fail_build
        self.version = version
        self.calls: list[tuple] = []

    def module(self):
        return types.SimpleNamespace(
            require_version=self.require_version,
            convert_rank=self.convert_rank,
            quantize_with_modelopt=self.quantize_with_modelopt,
            run_trtllm_build=self.run_trtllm_build,
        )

    def require_version(self, expected):
        self.calls.append(("require_version", expected))
        if self.version != expected:
            raise UserError(
                f"TensorRT-LLM {self.version} is installed but the server runs {expected}"
            )
        return self.version

    def convert_rank(self, model_dir, checkpoint_out, *, architecture, tp, rank, quant):
        self.calls.append(("convert", rank, tp, architecture, quant.quant_algo))
        sparse_file(Path(checkpoint_out) / f"rank{rank}.safetensors", 100)
        if rank == 0:
            (Path(checkpoint_out) / "config.json").write_text("{}")

    def quantize_with_modelopt(self, model_dir, checkpoint_out, *, tp, qformat, kv_cache_dtype):
        self.calls.append(("quantize", tp, qformat, kv_cache_dtype))
        for rank in range(tp):
            sparse_file(Path(checkpoint_out) / f"rank{rank}.safetensors", 100)
        (Path(checkpoint_out) / "config.json").write_text("{}")

    def run_trtllm_build(self, args, log):
        self.calls.append(("build", args))
        out = Path(args[args.index("--output_dir") + 1])
        ckpt = Path(args[args.index("--checkpoint_dir") + 1])
        assert (ckpt / "rank0.safetensors").is_file()
        if self.fail_build:
            raise UserError("trtllm-build exited with status 1; last output: CUDA out of memory")
        variant = self.variant
        out.mkdir(exist_ok=True)
        # What trtllm-build writes for exactly the flags it was given.
        config = engine_config(variant, quant_algo=self.quant_algo, argv=args)
        (out / "config.json").write_text(json.dumps(config))
        size = self.rank_bytes or expected_rank_bytes(variant).nominal
        for r in range(variant.tp):
            sparse_file(out / f"rank{r}.engine", size)
        log("[fake trtllm-build] done")


@pytest.fixture
def nvfp4_ckpt(tmp_path):
    return make_hf_checkpoint(tmp_path / "hf", NVFP4_QUANT_CONFIG)


def run(tmp_path, ckpt, variant_name, fake, out_name="engine"):
    variant = TABLE.get(variant_name)
    fake.variant = variant
    lines: list[str] = []
    out = tmp_path / "out" / out_name
    out.parent.mkdir(exist_ok=True)
    build_engine(TABLE, variant, out, checkpoint_dir=ckpt, api=fake.module(), log=lines.append)
    return out, lines


@pytest.mark.parametrize("name", ["qwen3-32b-nvfp4-tp1", "qwen3-32b-nvfp4-tp4"])
def test_good_build_lands_with_manifest_and_only_tokenizer_files(tmp_path, nvfp4_ckpt, name):
    fake = FakeTrtllm()
    out, lines = run(tmp_path, nvfp4_ckpt, name, fake)
    variant = TABLE.get(name)
    files = tree(out)
    assert [f for f in files if f.endswith(".engine")] == [
        f"rank{r}.engine" for r in range(variant.tp)
    ]
    assert {
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
        "merges.txt",
    } <= set(files)
    assert "generation_config.json" in files
    assert "hf_quant_config.json" not in files and not any(
        f.endswith(".safetensors") for f in files
    )
    # config.json is the engine's, never the checkpoint's.
    assert "pretrained_config" in json.loads((out / "config.json").read_text())
    # One code path: every rank converted in order, then one trtllm-build.
    kinds = [c[0] for c in fake.calls]
    assert kinds == ["require_version", *["convert"] * variant.tp, "build"]
    assert [c[1] for c in fake.calls if c[0] == "convert"] == list(range(variant.tp))
    assert all(c[4] == "NVFP4" and c[3] == "Qwen3ForCausalLM" for c in fake.calls[1:-1])

    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["variant"] == name
    assert manifest["tensorrt_llm_version"] == "1.1.0"
    assert manifest["checkpoint"] == {
        "repo": "nvidia/Qwen3-32B-NVFP4",
        "revision": "local",
        "source": "local-dir",
    }
    assert manifest["quantization"]["quant_algo"] == "NVFP4"
    assert manifest["quantization"]["group_size"] == 16
    assert "--checkpoint_dir" not in manifest["trtllm_build_flags"]
    assert manifest["trtllm_build_flags"][:2] == ["--workers", str(variant.tp)]
    phases = list(manifest["phase_seconds"])
    assert phases == [
        "download",
        *[f"convert rank {r + 1}/{variant.tp}" for r in range(variant.tp)],
        "build",
        "tokenizer",
        "verify",
    ]
    assert any(f"convert rank {variant.tp}/{variant.tp} done in" in line for line in lines)
    # Nothing left next to --out: no staging dir, no scratch checkpoint.
    assert tree(out.parent) == ["engine"]


@pytest.mark.parametrize(
    ("fake", "fragment"),
    [
        (
            FakeTrtllm(quant_algo=None, rank_bytes=16 * 10**9),
            "quant_algo: expected 'NVFP4', found None",
        ),
        (FakeTrtllm(rank_bytes=12 * 10**9), "rank0.engine size"),
        (FakeTrtllm(fail_build=True), "trtllm-build exited with status 1"),
    ],
    ids=["unquantized", "wrong-size", "build-fails"],
)
def test_broken_output_never_reaches_out(tmp_path, nvfp4_ckpt, fake, fragment):
    with pytest.raises(UserError, match=fragment):
        run(tmp_path, nvfp4_ckpt, "qwen3-32b-nvfp4-tp4", fake)
    assert tree(tmp_path / "out") == []  # no --out, no staging leftovers, no scratch


def test_wrong_tensorrt_llm_fails_before_touching_the_checkpoint(tmp_path):
    fake = FakeTrtllm(version="1.2.0")
    # The checkpoint dir does not even exist: the version check must come first.
    with pytest.raises(
        UserError, match=re.escape("TensorRT-LLM 1.2.0 is installed but the server runs 1.1.0")
    ):
        run(tmp_path, tmp_path / "no-such-ckpt", "qwen3-32b-nvfp4-tp1", fake)
    assert [c[0] for c in fake.calls] == ["require_version"]
    assert tree(tmp_path / "out") == []


def test_checkpoint_of_other_quantization_is_refused_before_conversion(tmp_path):
    ckpt = make_hf_checkpoint(tmp_path / "hf", FP8_QUANT_CONFIG)
    fake = FakeTrtllm()
    with pytest.raises(UserError, match="quant_algo is 'FP8' but the variant is NVFP4"):
        run(tmp_path, ckpt, "qwen3-32b-nvfp4-tp2", fake)
    assert "convert" not in [c[0] for c in fake.calls]
    assert tree(tmp_path / "out") == []


def test_unquantized_checkpoint_is_refused(tmp_path):
    ckpt = make_hf_checkpoint(tmp_path / "hf", None)
    with pytest.raises(
        UserError,
        match=re.escape("hf_quant_config.json: missing; the checkpoint looks unquantized"),
    ):
        run(tmp_path, ckpt, "qwen3-32b-nvfp4-tp1", FakeTrtllm())


def test_existing_out_is_not_overwritten(tmp_path, nvfp4_ckpt):
    (tmp_path / "out" / "engine").mkdir(parents=True)
    (tmp_path / "out" / "engine" / "keep").write_text("x")
    with pytest.raises(UserError, match="already exists"):
        run(tmp_path, nvfp4_ckpt, "qwen3-32b-nvfp4-tp1", FakeTrtllm())
    assert tree(tmp_path / "out" / "engine") == ["keep"]


def test_workdir_holds_the_scratch_checkpoint_and_is_cleaned(tmp_path, nvfp4_ckpt):
    fake = FakeTrtllm()
    variant = TABLE.get("qwen3-32b-nvfp4-tp2")
    fake.variant = variant
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "out").mkdir()
    build_engine(
        TABLE, variant, tmp_path / "out" / "e", checkpoint_dir=nvfp4_ckpt, workdir=work,
        api=fake.module(), log=lambda _: None,
    )  # fmt: skip
    build_args = next(c[1] for c in fake.calls if c[0] == "build")
    assert Path(build_args[build_args.index("--checkpoint_dir") + 1]).parent == work
    assert tree(work) == []


@pytest.mark.parametrize("variant", TABLE.variants, ids=lambda v: v.name)
def test_trtllm_build_flags_follow_the_variant_table(variant):
    args = trtllm_build_args(variant, Path("/c"), Path("/o"))
    pairs = dict(zip(args[::2], args[1::2], strict=True))
    assert pairs == {
        "--checkpoint_dir": "/c",
        "--output_dir": "/o",
        "--workers": str(variant.tp),
        "--kv_cache_type": "paged",
        "--use_paged_context_fmha": "enable",
        "--gemm_plugin": "disable",
        "--max_batch_size": str(variant.max_batch_size),
        "--max_input_len": str(variant.max_seq_len - 1),
        "--max_num_tokens": str(variant.max_num_tokens),
        "--max_seq_len": str(variant.max_seq_len),
    }


def test_gemm_plugin_switch_and_bad_values():
    variant = TABLE.get("qwen3-32b-nvfp4-tp2")
    args = trtllm_build_args(variant, Path("/c"), Path("/o"), BuildOptions(gemm_plugin="nvfp4"))
    assert args[args.index("--gemm_plugin") + 1] == "nvfp4"
    with pytest.raises(UserError, match="--gemm-plugin must be one of disable, nvfp4, auto"):
        BuildOptions(gemm_plugin="fp8")
    with pytest.raises(UserError, match="--kv-cache-quant must be one of checkpoint, none"):
        BuildOptions(kv_cache_quant="int8")


def test_fp8_variant_quantizes_the_bf16_checkpoint_with_modelopt(tmp_path):
    ckpt = make_hf_checkpoint(tmp_path / "bf16", None)
    fake = FakeTrtllm()
    out, _ = run(tmp_path, ckpt, "qwen3-32b-fp8-tp2", fake)
    kinds = [c[0] for c in fake.calls]
    assert kinds == ["require_version", "quantize", "build"]
    assert fake.calls[1] == ("quantize", 2, "fp8", "fp8")
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["quantization"]["quant_algo"] == "FP8"
    assert "ModelOpt" in manifest["quantization"]["source"]


def test_fp8_variant_with_a_modelopt_export_converts_it_instead(tmp_path):
    ckpt = make_hf_checkpoint(tmp_path / "fp8", FP8_QUANT_CONFIG)
    fake = FakeTrtllm()
    run(tmp_path, ckpt, "qwen3-32b-fp8-tp1", fake)
    assert [c[0] for c in fake.calls] == ["require_version", "convert", "build"]


def test_kv_cache_quant_none_converts_with_bf16_kv(tmp_path, nvfp4_ckpt):
    fake = FakeTrtllm()
    variant = TABLE.get("qwen3-32b-nvfp4-tp1")
    fake.variant = variant
    seen = []
    orig = fake.convert_rank

    def convert(*a, quant, **kw):
        seen.append(quant.kv_cache_quant_algo)
        orig(*a, quant=quant, **kw)

    api = fake.module()
    api.convert_rank = convert
    out = tmp_path / "o"
    build_engine(
        TABLE, variant, out, checkpoint_dir=nvfp4_ckpt, api=api, log=lambda _: None,
        options=BuildOptions(kv_cache_quant="none"),
    )  # fmt: skip
    assert seen == [None]
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["recipe"] == {"gemm_plugin": "disable", "kv_cache_quant": "none"}


def test_failed_fp8_kv_build_names_the_switch(tmp_path, nvfp4_ckpt):
    fake = FakeTrtllm(fail_build=True)
    with pytest.raises(UserError, match="retry with --kv-cache-quant none"):
        run(tmp_path, nvfp4_ckpt, "qwen3-32b-nvfp4-tp1", fake)


@pytest.mark.parametrize("variant", TABLE.variants, ids=lambda v: v.name)
def test_dry_run_plan_is_the_build(tmp_path, variant):
    lines = plan_lines(TABLE, variant, tmp_path / "engine")
    text = "\n".join(lines)
    assert lines[0].startswith("check: tensorrt_llm==1.1.0 installed")
    assert f"--max_input_len {variant.max_seq_len - 1}" in text
    assert f"--max_seq_len {variant.max_seq_len}" in text
    assert "-m tensorrt_llm.commands.build" in text
    assert lines[-2].startswith("verify: ") and lines[-1].startswith("place: ")
    if variant.quantization == "FP8":
        assert "quantize_and_export(" in text and "calib_size=512" in text
        assert not any(line.startswith("convert rank") for line in lines)
    else:
        converts = [line for line in lines if line.startswith("convert rank")]
        assert len(converts) == variant.tp
        assert "QuantConfig(quant_algo=QuantAlgo.NVFP4, kv_cache_quant_algo=QuantAlgo.FP8" in text


def test_dry_run_reads_a_local_checkpoint_quant_config(tmp_path, nvfp4_ckpt):
    lines = plan_lines(
        TABLE, TABLE.get("qwen3-32b-nvfp4-tp2"), tmp_path / "e", checkpoint_dir=nvfp4_ckpt
    )
    assert lines[1] == f"checkpoint: local directory {nvfp4_ckpt} (no download)"
    assert "read from" in lines[2] and "hf_quant_config.json" in lines[2]
    with pytest.raises(UserError, match="wrong checkpoint for this variant"):
        plan_lines(TABLE, TABLE.get("qwen3-32b-fp8-tp2"), tmp_path / "e", checkpoint_dir=nvfp4_ckpt)


def test_tokenizer_copy_never_takes_config_json(tmp_path, nvfp4_ckpt, monkeypatch):
    dst = tmp_path / "dst"
    dst.mkdir()
    # Even if someone adds config.json to the tokenizer file list, it is not copied.
    monkeypatch.setattr(build_mod, "TOKENIZER_FILES", (*build_mod.TOKENIZER_FILES, "config.json"))
    copied = copy_tokenizer_files(nvfp4_ckpt, dst)
    assert "config.json" not in copied and not (dst / "config.json").exists()
    assert set(copied) == set(tree(dst))
    assert (dst / "tokenizer.json").read_bytes() == (nvfp4_ckpt / "tokenizer.json").read_bytes()


def test_tokenizer_copy_requires_tokenizer(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "dst").mkdir()
    with pytest.raises(UserError, match=re.escape("has no tokenizer.json, tokenizer_config.json")):
        copy_tokenizer_files(tmp_path / "src", tmp_path / "dst")
