"""From an engine directory as trtllm-build writes it (for the flags build-engine passes) to an
OpenAI reply: the launcher's engine checks, `model-repo`'s limits, a real tritonserver and the
proxy. A 3,000-token prompt is served on every TP variant's repository; a prompt over the
limit gets the proxy's 400 naming both numbers.

No GPU: the repository's ``tensorrt_llm`` model is the scripted engine carrying exactly the
limits `model-repo` derives from the engine dir (same parameters, checked). One tritonserver
per variant, rank 0 only: world size is emulated as in tests/integration/launcher (ranks > 0
only block in leader mode, which that test covers with mpirun).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trtllm_engine_fixture as fx
from google.protobuf import text_format
from proxy_helpers import start_proxy
from tritonclient.grpc import model_config_pb2

from trtllm_stack.engine.build import trtllm_build_args
from trtllm_stack.engine.verify import check_or_raise, expected_rank_bytes, verify_engine_dir
from trtllm_stack.tokenizer import bundled_qwen3_tokenizer_dir, load_tokenizer
from trtllm_stack.triton import launch_plan
from trtllm_stack.triton import tensors as T
from trtllm_stack.triton.model_repo import (
    RepoOptions,
    ScriptedEngineOptions,
    render_repository,
    write_model_repository,
)
from trtllm_stack.triton.server import TritonServer
from trtllm_stack.variants import load_table

pytestmark = pytest.mark.integration

TABLE = load_table()
TP_VARIANTS = [
    v for v in TABLE.variants if v.quantization == TABLE.models[v.model.key].default_quantization
]


def params(text: str) -> dict[str, str]:
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    return {k: v.string_value for k, v in config.parameters.items()}


def engine_dir_for(base: Path, variant) -> Path:
    argv = trtllm_build_args(variant, Path("/ckpt"), base / "engine")
    config = fx.engine_config(argv, world_size=variant.tp, quant_algo=variant.quantization)
    # Sparse rank files of the size the variant table predicts (verify-engine checks them).
    d = fx.write_engine_dir(
        base / "engine", config, rank_bytes=expected_rank_bytes(variant).nominal
    )
    for f in bundled_qwen3_tokenizer_dir().iterdir():
        if f.is_file():
            (d / f.name).write_bytes(f.read_bytes())
    return d


@pytest.fixture(scope="module", params=TP_VARIANTS, ids=lambda v: v.name)
def served(request, tmp_path_factory) -> Iterator[tuple]:
    variant = request.param
    base = tmp_path_factory.mktemp(variant.name)
    engine = engine_dir_for(base, variant)
    # What `trtllm-stack triton` checks before it starts anything.
    info = launch_plan.read_engine_config(engine)
    launch_plan.check_engine_files(info)
    launch_plan.check_variant(info, variant.name, variant.tp, variant.quantization)
    # What `model-repo --engine DIR --variant NAME` writes for the GPU.
    real = render_repository(engine=engine, tokenizer_dir=engine, variant=variant)
    real_trt = params(real["tensorrt_llm/config.pbtxt"])
    limits = RepoOptions(
        max_input_len=int(real_trt[T.PARAM_MAX_INPUT_LEN]),
        max_seq_len=int(real_trt[T.PARAM_MAX_SEQ_LEN]),
        kv_cache_reuse=real_trt["enable_kv_cache_reuse"] == "true",
    )
    repo = write_model_repository(
        base / "repo",
        engine="scripted",
        tokenizer_dir=engine,
        variant=variant,
        scripted=ScriptedEngineOptions(event_log=base / "events.jsonl"),
        options=limits,
    )
    stand_in = params((repo / "tensorrt_llm" / "config.pbtxt").read_text())
    for key in (T.PARAM_MAX_INPUT_LEN, T.PARAM_MAX_SEQ_LEN, "enable_kv_cache_reuse"):
        assert stand_in[key] == real_trt[key], key
    preprocessing = params((repo / T.PREPROCESSING_MODEL / "config.pbtxt").read_text())
    assert (
        preprocessing["max_input_len"]
        == params(real[f"{T.PREPROCESSING_MODEL}/config.pbtxt"])["max_input_len"]
    )
    server = TritonServer(repo, log_path=base / "tritonserver.log")
    endpoints = server.start()
    proxy = start_proxy(engine, triton_url=endpoints.grpc_url)
    try:
        yield variant, proxy, int(real_trt[T.PARAM_MAX_INPUT_LEN])
    finally:
        proxy.stop()
        server.stop()


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(bundled_qwen3_tokenizer_dir())


def filler(tok, n_tokens: int) -> str:
    """Text of ``n_tokens`` tokens (give or take one at the cut)."""
    ids = tok.encode(
        " alpha bravo charlie delta echo" * (n_tokens // 5 + 1), add_special_tokens=False
    )
    return tok.decode(ids[:n_tokens])


def test_repository_takes_the_variants_whole_context(served):
    variant, _, max_input = served
    assert max_input == variant.max_seq_len - 1


def test_3000_token_prompt_is_served(served, tok):
    _, proxy, _ = served
    body = {
        "model": "qwen3",
        "messages": [
            {"role": "user", "content": filler(tok, 3000) + " [reply]read it all[/reply]"}
        ],
        "max_tokens": 16,
    }
    r = httpx.post(proxy.v1 + "/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    reply = r.json()
    assert reply["choices"][0]["message"]["content"] == "read it all"
    assert reply["usage"]["prompt_tokens"] >= 3000


def test_prompt_over_the_limit_gets_400_with_both_numbers(served, tok):
    _, proxy, max_input = served
    body = {
        "model": "qwen3",
        "messages": [{"role": "user", "content": filler(tok, max_input + 50)}],
        "max_tokens": 4,
    }
    r = httpx.post(proxy.v1 + "/chat/completions", json=body, timeout=60)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "context_length_exceeded"
    n_prompt = int(error["message"].split("the prompt has ", 1)[1].split(" ", 1)[0])
    assert n_prompt > max_input
    assert f"at most {max_input} input tokens" in error["message"]


@pytest.mark.parametrize("variant", TABLE.variants, ids=lambda v: v.name)
def test_every_variant_engine_dir_passes_verify_and_launcher_checks(tmp_path, variant):
    engine = engine_dir_for(tmp_path, variant)
    check_or_raise(verify_engine_dir(engine, variant, TABLE.runtime.tensorrt_llm_version))
    info = launch_plan.read_engine_config(engine)
    launch_plan.check_engine_files(info)
    launch_plan.check_variant(info, variant.name, variant.tp, variant.quantization)
    assert info.max_input_len == variant.max_seq_len - 1
