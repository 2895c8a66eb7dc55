"""logit_bias end to end: openai SDK -> proxy -> real tritonserver -> scripted engine, which
applies the embedding_bias as documented in trtllm_stack.triton.scripted.BiasRule."""

from __future__ import annotations

import numpy as np
import openai
import pytest

from trtllm_stack.tokenizer import load_tokenizer
from trtllm_stack.triton import tensors as T
from trtllm_stack.triton.client import EngineClient, EngineError
from trtllm_stack.triton.scripted import DEFAULT_TEXT
from trtllm_stack.triton.tensors import EngineRequest

pytestmark = pytest.mark.integration

EOS, PAD = 151645, 151643


@pytest.fixture(scope="module")
def client(proxy) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.v1, api_key="sk-dummy", max_retries=0)


@pytest.fixture(scope="module")
def tok(qwen3_tokenizer_dir):
    return load_tokenizer(qwen3_tokenizer_dir)


def reply(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"[reply]{text}[/reply]"}]


def token(tok, text: str) -> int:
    (tid,) = tok.encode(text, add_special_tokens=False)
    return tid


def test_minus_100_keeps_a_scripted_token_out(client, tok):
    world = token(tok, " world")
    plain = client.chat.completions.create(model="qwen3", messages=reply("Hello world, hi"))
    assert plain.choices[0].message.content == "Hello world, hi"
    banned = client.chat.completions.create(
        model="qwen3", messages=reply("Hello world, hi"), logit_bias={str(world): -100}
    )
    text = banned.choices[0].message.content
    # The banned token is replaced by the first token of the scripted fallback (the default
    # text's first token); the rest of the reply is unchanged.
    first_fallback = tok.decode(tok.encode(DEFAULT_TEXT, add_special_tokens=False)[:1])
    assert text == f"Hello{first_fallback}, hi" and "world" not in text
    assert banned.choices[0].finish_reason == "stop"


def test_plus_100_forces_a_token_streamed_and_in_completions(client, tok):
    bang = token(tok, "!")
    stream = client.chat.completions.create(
        model="qwen3",
        messages=reply("Hello world"),
        logit_bias={str(bang): 100},
        max_tokens=5,
        stream=True,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "!" * 5
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    # Text completions take the same field (the default reply, forced to one token).
    done = client.completions.create(
        model="qwen3", prompt="hi", logit_bias={str(bang): 100}, max_tokens=3
    )
    assert done.choices[0].text == "!!!"


def test_bad_keys_are_openai_400s(client):
    for key, words in (("one", "'one' is not a token id"), ("151669", "outside the vocabulary")):
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model="qwen3", messages=reply("x"), logit_bias={key: 1})
        body = err.value.body
        assert isinstance(body, dict) and body["param"] == "logit_bias"
        assert words in body["message"]


async def test_engine_refuses_a_bias_of_the_wrong_length(triton, tok):
    # What the executor does with a bias that is not vocab-sized (the proxy never sends one):
    # the request fails with the backend's text. This repository's vocab is the tokenizer's.
    engine = EngineClient(triton.endpoints.grpc_url)
    try:
        vocab = (await engine.limits()).vocab_size
        assert vocab == 151669
        req = EngineRequest(
            tok.encode("hi", add_special_tokens=False),
            4,
            EOS,
            PAD,
            embedding_bias=np.zeros(vocab + 1, dtype=np.float32),
        )
        with pytest.raises(EngineError) as err:
            _ = [c async for c in engine.generate(req, request_id="bad-bias")]
        text = str(err.value)
        assert "Encountered an error in forwardAsync function:" in text
        assert (
            "The embedding bias shape is not as expected. Expected last dimension to be same as"
            f" vocab size: {vocab}." in text
        )
        # An empty bias is no bias (the backend skips it).
        empty = EngineRequest(
            tok.encode("hi", add_special_tokens=False),
            3,
            EOS,
            PAD,
            embedding_bias=np.zeros(0, dtype=np.float32),
        )
        chunks = [c async for c in engine.generate(empty, request_id="empty-bias")]
        assert sum(len(c.token_ids) for c in chunks) == 3
        assert T.EMBEDDING_BIAS in dict(T.engine_inputs(empty))
    finally:
        await engine.close()
