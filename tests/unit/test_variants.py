"""The variant table: typed loading, derived names, loud errors naming the entry."""

from __future__ import annotations

import tomllib

import pytest

from trtllm_stack.errors import UserError
from trtllm_stack.variants import load_table, packaged_table_path, parse_table


def raw() -> dict:
    return tomllib.loads(packaged_table_path().read_text())


def test_seed_values_for_nvfp4():
    table = load_table()
    rows = {v.tp: v for v in table.variants if v.quantization == "NVFP4"}
    assert sorted(rows) == [1, 2, 4]
    assert [rows[t].max_batch_size for t in (1, 2, 4)] == [8, 16, 32]
    assert [rows[t].max_seq_len for t in (1, 2, 4)] == [16384, 24576, 32768]
    assert {rows[t].max_num_tokens for t in (1, 2, 4)} == {8192}
    assert rows[1].checkpoint.repo == "nvidia/Qwen3-32B-NVFP4"
    assert {v.checkpoint.gpu_arch for v in table.variants if v.quantization == "FP8"} == {"hopper"}


def test_names_users_type():
    table = load_table()
    assert [v.package_name for v in table.variants if v.quantization == "NVFP4"] == [
        "qwen3-32b-engine",
        "qwen3-32b-engine-tp2",
        "qwen3-32b-engine-tp4",
    ]
    assert [v.app_name for v in table.variants if v.quantization == "NVFP4"] == [
        "tritonserver-qwen3",
        "tritonserver-qwen3-tp2",
        "tritonserver-qwen3-tp4",
    ]
    assert table.get("qwen3-32b-engine-tp4") is table.get("tritonserver-qwen3-tp4")
    assert table.get("qwen3-32b-fp8-tp2").package_name == "qwen3-32b-fp8-engine-tp2"


def test_unknown_variant_lists_known_ones():
    with pytest.raises(
        UserError, match="unknown variant 'nope'; known variants: qwen3-32b-nvfp4-tp1"
    ):
        load_table().get("nope")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda d: d["variants"][1].pop("max_seq_len"),
            r"\[\[variants\]\] #2 \(qwen3-32b NVFP4\): missing field 'max_seq_len'",
        ),
        (
            lambda d: d["variants"][0].update(tp=3),
            r"#1 .*tp must be a power of two, got 3",
        ),
        (lambda d: d["variants"][0].update(tp="2"), r"#1 .*field 'tp' must be int"),
        (
            lambda d: d["variants"][0].update(max_batch_size=True),
            r"field 'max_batch_size' must be int",
        ),
        (
            lambda d: d["variants"][0].update(quantization="INT4"),
            r"#1: model 'qwen3-32b' has no INT4 checkpoint",
        ),
        (
            lambda d: d["variants"].append(dict(d["variants"][0])),
            r"#7: name 'qwen3-32b-nvfp4-tp1' repeats entry #1",
        ),
        (
            lambda d: d["models"]["qwen3-32b"]["checkpoints"]["NVFP4"].update(gpu_arch="ampere"),
            r"gpu_arch must be one of",
        ),
        (lambda d: d.update(schema=2), r"unsupported schema 2"),
    ],
)
def test_invalid_entries_fail_naming_the_entry(mutate, message):
    data = raw()
    mutate(data)
    with pytest.raises(UserError, match=message):
        parse_table(data)


def test_bad_toml_file_is_a_user_error(tmp_path):
    bad = tmp_path / "v.toml"
    bad.write_text("schema = [")
    with pytest.raises(UserError, match="not valid TOML"):
        load_table(bad)
    with pytest.raises(UserError, match="cannot read variant table"):
        load_table(tmp_path / "missing.toml")
