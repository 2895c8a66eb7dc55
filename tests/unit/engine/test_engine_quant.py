import copy
import json

import pytest
from engine_testlib import FP8_QUANT_CONFIG, NVFP4_QUANT_CONFIG, make_hf_checkpoint

from trtllm_stack.engine.quant import check_matches_variant, read_quant_config
from trtllm_stack.errors import UserError


def test_nvfp4_modelopt_config(tmp_path):
    ckpt = make_hf_checkpoint(tmp_path / "ckpt", NVFP4_QUANT_CONFIG)
    spec = read_quant_config(ckpt)
    assert spec.quant_algo == "NVFP4"
    assert spec.kv_cache_quant_algo == "FP8"
    assert spec.group_size == 16
    assert spec.exclude_modules == ("lm_head",)
    assert spec.source == str(ckpt / "hf_quant_config.json")
    check_matches_variant(spec, "NVFP4")


def test_fp8_modelopt_config(tmp_path):
    spec = read_quant_config(make_hf_checkpoint(tmp_path / "ckpt", FP8_QUANT_CONFIG))
    assert (spec.quant_algo, spec.kv_cache_quant_algo, spec.group_size) == (
        "FP8",
        "FP8",
        None,
    )
    assert spec.to_dict()["exclude_modules"] == ["lm_head"]


def test_nvfp4_without_group_size_uses_the_nvfp4_block(tmp_path):
    cfg = copy.deepcopy(NVFP4_QUANT_CONFIG)
    del cfg["quantization"]["group_size"]
    assert read_quant_config(make_hf_checkpoint(tmp_path / "c", cfg)).group_size == 16


def test_missing_file_on_unquantized_checkpoint_names_path_and_reason(tmp_path):
    ckpt = make_hf_checkpoint(tmp_path / "ckpt", None)
    with pytest.raises(UserError) as exc:
        read_quant_config(ckpt)
    msg = str(exc.value)
    assert str(ckpt / "hf_quant_config.json") in msg
    assert "unquantized" in msg and "bf16" in msg


def test_missing_file_on_block_fp8_checkpoint_says_what_it_found(tmp_path):
    ckpt = make_hf_checkpoint(tmp_path / "ckpt", None)
    hf = json.loads((ckpt / "config.json").read_text())
    hf["quantization_config"] = {
        "quant_method": "fp8",
        "activation_scheme": "dynamic",
        "weight_block_size": [128, 128],
    }
    (ckpt / "config.json").write_text(json.dumps(hf))
    with pytest.raises(UserError, match=r"quant_method='fp8', weight_block_size=\[128, 128\]"):
        read_quant_config(ckpt)


def test_missing_directory(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_quant_config(tmp_path / "nope")


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("quant_algo", "W4A16_AWQ", "quant_algo is 'W4A16_AWQ'"),
        ("quant_algo", None, "quant_algo is None"),
        ("kv_cache_quant_algo", "INT8", "kv_cache_quant_algo is 'INT8'"),
        ("group_size", 128, "group_size is 128 for NVFP4"),
        ("group_size", "16", "group_size is '16'"),
        ("exclude_modules", "lm_head", "exclude_modules is 'lm_head'"),
    ],
)
def test_unknown_or_bad_values_name_file_and_value(tmp_path, field, value, fragment):
    cfg = copy.deepcopy(NVFP4_QUANT_CONFIG)
    cfg["quantization"][field] = value
    ckpt = make_hf_checkpoint(tmp_path / "ckpt", cfg)
    with pytest.raises(UserError) as exc:
        read_quant_config(ckpt)
    assert fragment in str(exc.value)
    assert str(ckpt / "hf_quant_config.json") in str(exc.value)


def test_not_json_and_wrong_shape(tmp_path):
    ckpt = make_hf_checkpoint(tmp_path / "ckpt", None)
    (ckpt / "hf_quant_config.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        read_quant_config(ckpt)
    (ckpt / "hf_quant_config.json").write_text(json.dumps({"quant_algo": "NVFP4"}))
    with pytest.raises(UserError, match=r"'quantization' object, found \['quant_algo'\]"):
        read_quant_config(ckpt)


def test_checkpoint_of_the_other_quantization_is_refused(tmp_path):
    spec = read_quant_config(make_hf_checkpoint(tmp_path / "ckpt", FP8_QUANT_CONFIG))
    with pytest.raises(UserError, match="quant_algo is 'FP8' but the variant is NVFP4"):
        check_matches_variant(spec, "NVFP4")
