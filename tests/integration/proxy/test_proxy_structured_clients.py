"""Agent libraries' structured-output paths against the proxy + real tritonserver +
scripted engine guided by XGrammar: what each library sends by default must come back as a
parsed object (the issue: these all failed with a 400 before guided decoding)."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel

pytestmark = pytest.mark.integration


class City(BaseModel):
    name: str
    population: int


PROSE = "[reply]Paris is a large city with many people.[/reply] Which city?"


def test_langchain_with_structured_output_default_and_json_mode(proxy):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        model="qwen3", base_url=proxy.v1, api_key="sk-dummy", max_retries=0, timeout=120,
        max_tokens=200,
    )  # fmt: skip
    # Default method (json_schema in langchain-openai >= 0.3: response_format json_schema).
    city = llm.with_structured_output(City).invoke(PROSE)
    assert isinstance(city, City)
    # json_mode: response_format json_object; the output is parsed as JSON (a dict).
    doc = llm.with_structured_output(None, method="json_mode").invoke(
        '[reply]{"name": "Paris", "population": 2100000}[/reply] Answer in JSON.'
    )
    assert doc == {"name": "Paris", "population": 2100000}


def test_openai_agents_output_type(proxy):
    from agents import Agent, OpenAIChatCompletionsModel, Runner, set_tracing_disabled
    from openai import AsyncOpenAI

    set_tracing_disabled(True)  # no traces to api.openai.com
    client = AsyncOpenAI(base_url=proxy.v1, api_key="sk-dummy", max_retries=0, timeout=120)
    agent = Agent(
        name="extractor",
        instructions="Extract the city.",
        model=OpenAIChatCompletionsModel(model="qwen3", openai_client=client),
        output_type=City,
    )

    async def run() -> object:
        try:
            return (await Runner.run(agent, PROSE, max_turns=2)).final_output
        finally:
            await client.close()

    assert isinstance(asyncio.run(run()), City)
