"""Shared fixtures: the real Qwen3 tokenizer (offline) and a real tritonserver running the
scripted CPU engine."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from trtllm_stack.tokenizer import bundled_qwen3_tokenizer_dir
from trtllm_stack.triton.model_repo import (
    ScriptedEngineOptions,
    write_model_repository,
)
from trtllm_stack.triton.server import TritonEndpoints, TritonServer


@dataclass
class RunningTriton:
    endpoints: TritonEndpoints
    event_log: Path
    repo: Path
    server: TritonServer


@pytest.fixture(scope="session")
def qwen3_tokenizer_dir() -> Path:
    return bundled_qwen3_tokenizer_dir()


def _start(base: Path, options: ScriptedEngineOptions) -> RunningTriton:
    base.mkdir(parents=True, exist_ok=True)
    options.event_log = options.event_log or base / "events.jsonl"
    repo = write_model_repository(
        base / "repo",
        engine="scripted",
        tokenizer_dir=bundled_qwen3_tokenizer_dir(),
        scripted=options,
    )
    server = TritonServer(repo, log_path=base / "tritonserver.log")
    endpoints = server.start()
    return RunningTriton(endpoints, options.event_log, repo, server)


@pytest.fixture(scope="session")
def scripted_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("scripted-repo")
    return write_model_repository(
        base / "repo",
        engine="scripted",
        tokenizer_dir=bundled_qwen3_tokenizer_dir(),
        scripted=ScriptedEngineOptions(event_log=base / "events.jsonl"),
    )


@pytest.fixture(scope="session")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningTriton]:
    """One tritonserver for the session: scripted engine, zero delay."""
    running = _start(tmp_path_factory.mktemp("triton"), ScriptedEngineOptions())
    yield running
    running.server.stop()


@pytest.fixture
def triton_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., RunningTriton]]:
    """Start dedicated servers (e.g. with a per-token delay); stopped at test end."""
    started: list[RunningTriton] = []
    names = {f.name for f in fields(ScriptedEngineOptions)}

    def start(**kwargs: object) -> RunningTriton:
        unknown = set(kwargs) - names
        if unknown:
            raise TypeError(f"unknown scripted engine options: {sorted(unknown)}")
        running = _start(tmp_path_factory.mktemp("triton-f"), ScriptedEngineOptions(**kwargs))  # type: ignore[arg-type]
        started.append(running)
        return running

    yield start
    for running in started:
        running.server.stop()
