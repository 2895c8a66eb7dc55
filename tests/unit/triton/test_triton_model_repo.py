"""Model repository generator: strict templates, configs that Triton's protobuf accepts,
atomic writes, and the scripted engine sharing the real engine's interface."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from trtllm_stack.errors import UserError
from trtllm_stack.triton import tensors as T
from trtllm_stack.triton.model_repo import (
    ScriptedEngineOptions,
    fill_template,
    render_repository,
    write_model_repository,
)
from trtllm_stack.variants import load_table


def parse(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


@pytest.fixture
def engine_dir(tmp_path: Path) -> Path:
    d = tmp_path / "engine"
    d.mkdir()
    config = {
        "version": "1.1.0",
        "build_config": {
            "max_input_len": 8000,
            "max_seq_len": 16384,
            "max_batch_size": 8,
        },
        "pretrained_config": {"mapping": {"world_size": 1, "tp_size": 1, "pp_size": 1}},
    }
    (d / "config.json").write_text(json.dumps(config))
    return d


def test_fill_template_names_every_missing_key():
    with pytest.raises(UserError, match=r"tensorrt_llm: no value for template key\(s\): a, b"):
        fill_template("x ${a} ${b} ${c}", {"c": "1"}, "tensorrt_llm")
    assert fill_template("${a}-${a}", {"a": "v"}, "m") == "v-v"


@pytest.mark.parametrize("engine", ["scripted", "real"])
def test_every_config_parses_as_triton_model_config(engine, engine_dir, qwen3_tokenizer_dir):
    files = render_repository(
        engine="scripted" if engine == "scripted" else engine_dir,
        tokenizer_dir=qwen3_tokenizer_dir,
        variant=load_table().get("qwen3-32b-nvfp4-tp2"),
    )
    configs = {p.split("/")[0]: parse(t) for p, t in files.items() if p.endswith("config.pbtxt")}
    assert set(configs) == {
        "tensorrt_llm",
        "preprocessing",
        "postprocessing",
        "ensemble",
    }
    trt = configs["tensorrt_llm"]
    assert trt.backend == ("python" if engine == "scripted" else "tensorrtllm")
    assert trt.model_transaction_policy.decoupled
    params = {k: v.string_value for k, v in trt.parameters.items()}
    assert params["gpt_model_type"] == "inflight_fused_batching"
    assert params["batch_scheduler_policy"] == "max_utilization"
    assert params["kv_cache_free_gpu_mem_fraction"] == "0.9"
    assert params["exclude_input_in_output"] == "true"
    if engine == "real":
        # Limits come from the engine's own config.json, over the variant's; with chunked
        # context the runtime's max input is max_seq_len - 1, whatever max_input_len says.
        assert params[T.PARAM_MAX_INPUT_LEN] == "16383"
        assert trt.max_batch_size == 8
        assert params["gpt_model_path"] == str(engine_dir)
    else:
        assert params[T.PARAM_MAX_SEQ_LEN] == "24576"  # the tp2 variant's
        assert trt.max_batch_size == 16
    ensemble = configs["ensemble"]
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == [
        "preprocessing",
        "tensorrt_llm",
        "postprocessing",
    ]


def test_scripted_engine_has_exactly_the_real_engines_interface(engine_dir, qwen3_tokenizer_dir):
    real = parse(
        render_repository(engine=engine_dir, tokenizer_dir=qwen3_tokenizer_dir)[
            "tensorrt_llm/config.pbtxt"
        ]
    )
    fake = parse(
        render_repository(engine="scripted", tokenizer_dir=qwen3_tokenizer_dir)[
            "tensorrt_llm/config.pbtxt"
        ]
    )
    assert list(real.input) == list(fake.input)
    assert list(real.output) == list(fake.output)
    names = {i.name: i for i in real.input}
    # The tensors our clients send exist, with the dtype we send them in.
    for name, wire in T.WIRE_DTYPES.items():
        if name in names:
            config_type = "STRING" if wire == "BYTES" else wire  # Triton's two names for it
            assert model_config_pb2.DataType.Name(names[name].data_type) == f"TYPE_{config_type}"
    assert {
        T.INPUT_IDS,
        T.INPUT_LENGTHS,
        T.REQUEST_OUTPUT_LEN,
        T.END_ID,
        T.STREAMING,
    } <= set(names)
    assert not names[T.INPUT_LENGTHS].optional and names[T.STREAMING].optional


def test_scripted_options_reach_the_engine(tmp_path, qwen3_tokenizer_dir):
    files = render_repository(
        engine="scripted",
        tokenizer_dir=qwen3_tokenizer_dir,
        scripted=ScriptedEngineOptions(
            token_delay_ms=12.5, default_reply_tokens=7, event_log=tmp_path / "e"
        ),
    )
    params = {
        k: v.string_value for k, v in parse(files["tensorrt_llm/config.pbtxt"]).parameters.items()
    }
    assert params["scripted_token_delay_ms"] == "12.5"
    assert params["scripted_default_reply_tokens"] == "7"
    assert params["scripted_event_log"] == str(tmp_path / "e")


def test_write_is_atomic_and_refuses_to_overwrite(tmp_path, qwen3_tokenizer_dir):
    out = tmp_path / "repo"
    write_model_repository(out, engine="scripted", tokenizer_dir=qwen3_tokenizer_dir)
    assert (out / "tensorrt_llm" / "1" / "model.py").is_file()
    marker = out / "marker"
    marker.write_text("keep")
    with pytest.raises(UserError, match="not empty; pass --force"):
        write_model_repository(out, engine="scripted", tokenizer_dir=qwen3_tokenizer_dir)
    assert marker.read_text() == "keep"
    write_model_repository(out, engine="scripted", tokenizer_dir=qwen3_tokenizer_dir, force=True)
    assert not marker.exists()
    # No temp or backup directories left beside the target.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


def test_failed_render_writes_nothing(tmp_path, qwen3_tokenizer_dir):
    hf_config = tmp_path / "engine"
    hf_config.mkdir()
    (hf_config / "config.json").write_text(
        json.dumps({"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"]})
    )
    with pytest.raises(UserError, match="no build_config"):
        write_model_repository(
            tmp_path / "repo", engine=hf_config, tokenizer_dir=qwen3_tokenizer_dir
        )
    assert not (tmp_path / "repo").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engine"]


def test_cli_errors_are_one_line(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "trtllm_stack",
            "model-repo",
            "--engine",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    missing = tmp_path / "none"
    assert proc.stderr.strip().splitlines() == [
        f"trtllm-stack model-repo: engine '{missing}' is neither 'scripted' nor a directory"
    ]
