"""logit_bias -> the engine's dense embedding_bias: mapping, and 400s as OpenAI error JSON."""

from __future__ import annotations

import numpy as np
import pytest

from trtllm_stack.proxy.errors import InvalidRequest
from trtllm_stack.proxy.logit_bias import embedding_bias
from trtllm_stack.triton import tensors as T

VOCAB = 151936


def chat(**extra):
    return {"model": "qwen3", "messages": [{"role": "user", "content": "hi"}], **extra}


def completion(**extra):
    return {"model": "qwen3", "prompt": "hi", **extra}


def test_mapping_is_dense_float32_of_the_engine_vocab():
    bias = embedding_bias({"5": -100, "151935": 100, "42": 0.5}, VOCAB)
    assert bias is not None and bias.dtype == np.float32 and bias.shape == (VOCAB,)
    assert bias[5] == -100 and bias[151935] == 100 and bias[42] == np.float32(0.5)
    assert np.count_nonzero(bias) == 3
    assert embedding_bias(None, VOCAB) is None and embedding_bias({}, VOCAB) is None
    assert embedding_bias({}, None) is None  # nothing asked: no need to know the vocabulary


@pytest.mark.parametrize("key", ["abc", "-1", "1.5", " 7", "+7", "", "٣", "12345678901"])
def test_keys_that_are_not_token_ids_are_named(key):
    with pytest.raises(InvalidRequest) as exc:
        embedding_bias({key: 1.0}, VOCAB)
    assert exc.value.param == "logit_bias" and repr(key) in exc.value.message


def test_out_of_vocabulary_and_unknown_vocabulary():
    with pytest.raises(InvalidRequest, match=r"'151936' is outside the vocabulary.*0 to 151935"):
        embedding_bias({"1": 1, "151936": 1}, VOCAB)
    with pytest.raises(InvalidRequest, match="vocabulary size"):
        embedding_bias({"1": 1}, None)


def test_engine_inputs_carry_the_bias_only_when_set():
    req = T.EngineRequest(prompt_ids=[1, 2], max_tokens=4, end_id=3, pad_id=3)
    assert T.EMBEDDING_BIAS not in dict(T.engine_inputs(req))
    bias = np.zeros(VOCAB, dtype=np.float32)
    bias[9] = -100
    biased = T.EngineRequest(
        prompt_ids=[1, 2], max_tokens=4, end_id=3, pad_id=3, embedding_bias=bias
    )
    sent = dict(T.engine_inputs(biased))[T.EMBEDDING_BIAS]
    assert sent.shape == (1, VOCAB) and sent.dtype == np.float32 and sent[0, 9] == -100
    assert T.WIRE_DTYPES[T.EMBEDDING_BIAS] == "FP32"
    assert len(T.wire_bytes(sent)) == 4 * VOCAB


@pytest.mark.parametrize(
    "path,body", [("/v1/chat/completions", chat), ("/v1/completions", completion)]
)
async def test_both_endpoints_send_the_bias(client, engine, tokenizer, path, body):
    # 151700 is past the tokenizer (151669 ids) but a row of the engine's padded logits.
    r = await client.post(path, json=body(logit_bias={"11": -100, "151700": 5}))
    assert r.status_code == 200, r.text
    bias = engine.requests[-1].embedding_bias
    assert bias is not None and bias.shape == (VOCAB,)
    assert bias[11] == -100 and bias[151700] == 5
    r = await client.post(path, json=body())
    assert r.status_code == 200 and engine.requests[-1].embedding_bias is None


@pytest.mark.parametrize(
    "path,body", [("/v1/chat/completions", chat), ("/v1/completions", completion)]
)
@pytest.mark.parametrize(
    "bias,words",
    [
        ({"hello": 1}, "'hello' is not a token id"),
        ({"151936": -100}, "'151936' is outside the vocabulary"),
    ],
)
async def test_bad_keys_are_400_openai_errors(client, engine, path, body, bias, words):
    r = await client.post(path, json=body(logit_bias=bias))
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == "logit_bias"
    assert words in err["message"]
    assert engine.requests == []


async def test_values_outside_plus_minus_100_are_400(client, engine):
    r = await client.post("/v1/chat/completions", json=chat(logit_bias={"1": 101}))
    assert r.status_code == 400 and "logit_bias" in r.text
    assert engine.requests == []


async def test_without_a_vocabulary_size_logit_bias_is_refused(client, engine):
    engine.vocab_size = None  # a repository from before the vocab-size parameter
    r = await client.post("/v1/chat/completions", json=chat(logit_bias={"1": 1}))
    assert r.status_code == 400 and r.json()["error"]["param"] == "logit_bias"
    r = await client.post("/v1/chat/completions", json=chat())
    assert r.status_code == 200
