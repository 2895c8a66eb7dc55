"""Length distributions, prompts of exact token length, JSONL prompts."""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path
from typing import Any

import pytest

from trtllm_stack.bench.workload import (
    PromptFactory,
    chat_prompt_ids,
    jsonl_workload,
    parse_length,
    synthetic_workload,
)
from trtllm_stack.errors import UserError
from trtllm_stack.tokenizer import bundled_qwen3_tokenizer_dir, load_tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return load_tokenizer(bundled_qwen3_tokenizer_dir())


def test_parse_length_forms() -> None:
    rng = random.Random(1)
    assert parse_length("128", "x").sample(rng) == 128
    assert parse_length("fixed:7", "x").sample(rng) == 7
    uni = parse_length("uniform:10,20", "x")
    samples = [uni.sample(rng) for _ in range(2000)]
    assert min(samples) == 10 and max(samples) == 20  # inclusive bounds, both reached
    normal = parse_length("normal:200,20", "x")
    ns = [normal.sample(rng) for _ in range(4000)]
    # sample mean within 4 standard errors of 200 (20/sqrt(4000) ~ 0.32)
    assert abs(statistics.fmean(ns) - 200) < 4 * 20 / 4000**0.5
    assert all(isinstance(n, int) for n in ns)
    assert min(parse_length("normal:2,50", "x").sample(rng) for _ in range(200)) == 1  # clipped
    assert parse_length("normal:5,1", "x").describe() == "normal:5,1"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "0",
        "-3",
        "1.5",
        "uniform:5",
        "uniform:9,3",
        "normal:10",
        "gamma:1,2",
        "abc",
        "nan",
    ],
)
def test_parse_length_rejects(bad: str) -> None:
    with pytest.raises(UserError):
        parse_length(bad, "--input-len")


def test_prompts_have_exact_token_length(tokenizer: Any) -> None:
    factory = PromptFactory(tokenizer, seed=3)
    for n in (1, 2, 7, 64, 300, 1500):
        for _ in range(5):
            text = factory.text_of_length(n)
            assert len(tokenizer.encode(text, add_special_tokens=False)) == n


def test_synthetic_workload(tokenizer: Any) -> None:
    factory = PromptFactory(tokenizer, seed=0)
    items = synthetic_workload(
        factory, 20, parse_length("uniform:20,40", "i"), parse_length("16", "o"), seed=0
    )
    assert len(items) == 20
    assert len({i.prompt for i in items}) == 20  # distinct prompts
    for item in items:
        n = len(tokenizer.encode(item.prompt, add_special_tokens=False))
        assert 20 <= n <= 40
        assert item.max_tokens == 16 and item.exact_output
        # chat template around the user text: ids are what a chat server sends to the engine
        assert item.prompt_ids == chat_prompt_ids(
            tokenizer, [{"role": "user", "content": item.prompt}]
        )
        assert len(item.prompt_ids) > n
    varied = synthetic_workload(
        factory, 5, parse_length("8", "i"), parse_length("uniform:1,99", "o"), seed=0
    )
    assert not any(i.exact_output for i in varied)
    plain = synthetic_workload(
        factory, 3, parse_length("8", "i"), parse_length("4", "o"), seed=0, chat=False
    )
    assert all(len(i.prompt_ids) == 8 for i in plain)


def test_jsonl_workload(tmp_path: Path, tokenizer: Any) -> None:
    path = tmp_path / "p.jsonl"
    lines = [
        {"prompt": "Hello there"},
        {"text": "Second", "max_tokens": 5},
        {
            "messages": [
                {"role": "system", "content": "s"},
                {"role": "user", "content": "Third"},
            ]
        },
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    items = jsonl_workload(path, tokenizer, parse_length("32", "o"), seed=0)
    assert [i.prompt for i in items] == ["Hello there", "Second", "Third"]
    assert [i.max_tokens for i in items] == [32, 5, 32]
    assert len(jsonl_workload(path, tokenizer, parse_length("32", "o"), seed=0, limit=2)) == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json\n", "not JSON"),
        ('{"prompt": 3}\n', "expected an object"),
        ('{"prompt": "x", "max_tokens": 0}\n', "max_tokens"),
        ("\n\n", "no prompts"),
    ],
)
def test_jsonl_errors(tmp_path: Path, tokenizer: Any, content: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        jsonl_workload(path, tokenizer, parse_length("8", "o"), seed=0)


def test_jsonl_missing_file(tmp_path: Path, tokenizer: Any) -> None:
    with pytest.raises(UserError, match="No such file"):
        jsonl_workload(tmp_path / "nope.jsonl", tokenizer, parse_length("8", "o"), seed=0)
