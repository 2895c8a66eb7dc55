import json

import pytest
import trtllm_engine_fixture
from engine_testlib import HF_QWEN3_CONFIG, engine_config, make_engine_dir, sparse_file

from trtllm_stack.engine.verify import (
    check_or_raise,
    expected_rank_bytes,
    verify_engine_dir,
)
from trtllm_stack.errors import UserError
from trtllm_stack.variants import load_table

TABLE = load_table()
VERSION = TABLE.runtime.tensorrt_llm_version
NVFP4_TP4 = TABLE.get("qwen3-32b-nvfp4-tp4")
NVFP4_TP1 = TABLE.get("qwen3-32b-nvfp4-tp1")
GB = 10**9


def problems(path, variant):
    return verify_engine_dir(path, variant, VERSION).problems


@pytest.mark.parametrize("variant", TABLE.variants, ids=lambda v: v.name)
def test_good_engine_passes_for_every_variant(tmp_path, variant):
    report = verify_engine_dir(make_engine_dir(tmp_path / "e", variant), variant, VERSION)
    assert report.problems == []
    check_or_raise(report)
    assert any("rank engine" in f for f in report.facts)


def test_seed_sizes_pass_and_bf16_fails():
    # Seeds: NVFP4 TP1 engine ~20 GB, TP4 ~6 GB per rank; the broken bf16 TP4 was 16 GB/rank.
    tp1, tp4 = expected_rank_bytes(NVFP4_TP1), expected_rank_bytes(NVFP4_TP4)
    assert tp1.lower <= 20 * GB <= tp1.upper
    assert tp4.lower <= 6 * GB <= tp4.upper
    assert tp4.upper < 16 * GB


def test_quantizations_do_not_overlap_at_same_tp():
    for tp in (1, 2, 4):
        nvfp4 = expected_rank_bytes(TABLE.get(f"qwen3-32b-nvfp4-tp{tp}"))
        fp8 = expected_rank_bytes(TABLE.get(f"qwen3-32b-fp8-tp{tp}"))
        assert nvfp4.upper < fp8.lower


def test_unquantized_engine_fails_naming_expected_and_found(tmp_path):
    d = make_engine_dir(
        tmp_path / "e",
        NVFP4_TP4,
        config=engine_config(NVFP4_TP4, quant_algo=None),
        rank_bytes=16 * GB,
    )
    found = problems(d, NVFP4_TP4)
    assert any("quant_algo: expected 'NVFP4', found None (unquantized" in p for p in found)
    assert sum("size: expected" in p and "found 16.00 GB" in p for p in found) == 4
    with pytest.raises(UserError) as exc:
        check_or_raise(verify_engine_dir(d, NVFP4_TP4, VERSION))
    assert exc.value.exit_code == 1
    assert "\n" not in str(exc.value)


def test_missing_rank(tmp_path):
    d = make_engine_dir(tmp_path / "e", NVFP4_TP4, ranks=3)
    assert problems(d, NVFP4_TP4) == [
        "rank engines: expected rank0.engine..rank3.engine, missing rank3.engine"
    ]


def test_extra_rank(tmp_path):
    d = make_engine_dir(tmp_path / "e", NVFP4_TP4)
    sparse_file(d / "rank4.engine", 10)
    assert problems(d, NVFP4_TP4) == ["rank engines: expected exactly 4, found extra rank4.engine"]


def test_world_size_mismatch(tmp_path):
    tp2 = TABLE.get("qwen3-32b-nvfp4-tp2")
    d = make_engine_dir(tmp_path / "e", NVFP4_TP4, config=engine_config(tp2))
    found = problems(d, NVFP4_TP4)
    assert "config.json pretrained_config.mapping.world_size: expected 4, found 2" in found
    assert "config.json mapping.tp_size: expected 4, found 2" in found


@pytest.mark.parametrize("size", [1 * GB, 12 * GB])
def test_wrong_size(tmp_path, size):
    d = make_engine_dir(tmp_path / "e", NVFP4_TP4, rank_bytes=size)
    found = problems(d, NVFP4_TP4)
    assert len(found) == 4
    assert found[0].startswith("rank0.engine size: expected 4.65 GB..7.50 GB")
    assert found[0].endswith(f"found {size / GB:.2f} GB")


def test_checkpoint_config_copied_over_engine_config(tmp_path):
    d = make_engine_dir(tmp_path / "e", NVFP4_TP1, config=HF_QWEN3_CONFIG)
    found = problems(d, NVFP4_TP1)
    assert len(found) == 1
    assert "found a Hugging Face model config (model_type='qwen3')" in found[0]


def test_wrong_version(tmp_path):
    d = make_engine_dir(tmp_path / "e", NVFP4_TP1, config=engine_config(NVFP4_TP1, version="1.0.0"))
    assert problems(d, NVFP4_TP1) == [
        "config.json version: expected '1.1.0' (the TensorRT-LLM the server runs), found '1.0.0'"
    ]


def test_legacy_builder_config_without_version(tmp_path):
    config = engine_config(NVFP4_TP1, version=None)
    config["builder_config"] = config.pop("build_config")
    d = make_engine_dir(tmp_path / "e", NVFP4_TP1, config=config)
    found = problems(d, NVFP4_TP1)
    assert (
        "config.json version: expected '1.1.0', found none (has legacy 'builder_config'"
        in (found[0])
    )
    assert "config.json: expected a 'build_config' object, found NoneType" in found


def test_missing_tokenizer_and_config(tmp_path):
    d = make_engine_dir(tmp_path / "e", NVFP4_TP1, tokenizer=False)
    (d / "config.json").unlink()
    found = problems(d, NVFP4_TP1)
    assert found[0] == f"{d / 'config.json'}: missing; expected the TensorRT-LLM engine config"
    assert "tokenizer file tokenizer.json: expected in the engine dir, found missing" in found


def test_config_not_json(tmp_path):
    d = make_engine_dir(tmp_path / "e", NVFP4_TP1)
    (d / "config.json").write_text("[1, 2")
    assert "cannot read as JSON" in problems(d, NVFP4_TP1)[0]
    (d / "config.json").write_text(json.dumps([1, 2]))
    assert "expected a JSON object, found list" in problems(d, NVFP4_TP1)[0]


def test_not_a_directory(tmp_path):
    assert problems(tmp_path / "missing", NVFP4_TP1) == [f"{tmp_path / 'missing'}: not a directory"]


def test_local_build_tag_of_the_same_release_passes(tmp_path):
    config = engine_config(NVFP4_TP1, version="1.1.0+cu13")
    assert problems(make_engine_dir(tmp_path / "e", NVFP4_TP1, config=config), NVFP4_TP1) == []


@pytest.mark.parametrize("variant", TABLE.variants, ids=lambda v: v.name)
def test_engine_built_without_max_input_len_is_refused_with_both_numbers(tmp_path, variant):
    # The argv engine/build.py passed before issue 13: trtllm-build keeps max_input_len 1024.
    argv = trtllm_engine_fixture.today_argv(
        variant.max_batch_size, variant.max_seq_len, variant.max_num_tokens, variant.tp
    )
    config = engine_config(variant, argv=argv)
    assert config["build_config"]["max_input_len"] == 1024
    found = problems(make_engine_dir(tmp_path / "e", variant, config=config), variant)
    assert len(found) == 1
    assert "build_config.max_input_len is 1024" in found[0]
    assert f"prompts of up to {variant.max_seq_len - 1} tokens" in found[0]
    assert f"rebuild it with `trtllm-stack build-engine --variant {variant.name}`" in found[0]


def test_smaller_seq_len_or_batch_is_refused_larger_is_a_warning(tmp_path):
    v = NVFP4_TP1
    small = engine_config(v)
    small["build_config"].update(max_seq_len=8192, max_batch_size=4)
    found = problems(make_engine_dir(tmp_path / "s", v, config=small), v)
    assert any("max_seq_len is 8192" in p and "16384-token context" in p for p in found)
    assert any("max_batch_size is 4" in p and "runs 8 requests" in p for p in found)
    big = engine_config(v)
    big["build_config"].update(max_seq_len=20000, max_batch_size=16, max_num_tokens=4096)
    report = verify_engine_dir(make_engine_dir(tmp_path / "b", v, config=big), v, VERSION)
    assert report.problems == []
    assert len(report.warnings) == 3
    assert any("max_batch_size is 16" in w for w in report.warnings)
