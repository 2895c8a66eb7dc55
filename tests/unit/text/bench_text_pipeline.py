"""Microbenchmark: CPU microseconds per token of the proxy's text pipeline.

detokenizer -> stop matcher -> reasoning parser -> tool-call parser, one token per push
(the worst case: Triton streams one response per token), over 128-token real Qwen3
outputs. Not collected by pytest. Run:

    python tests/unit/text/bench_text_pipeline.py [--repeat 300]
"""

from __future__ import annotations

import argparse
import time

from trtllm_stack.text.detokenizer import IncrementalDetokenizer
from trtllm_stack.text.reasoning import Qwen3ReasoningParser
from trtllm_stack.text.stop import StopMatcher
from trtllm_stack.text.tool_calls import Qwen3ToolCallParser
from trtllm_stack.tokenizer import bundled_qwen3_tokenizer_dir, load_tokenizer

TOKENS = 128

OUTPUTS = {
    "reasoning+answer (mixed scripts, emoji)": (
        "<think>\nThe user asks about the weather in Paris and Tokyo (東京). I should answer "
        "briefly, mention the temperature in Celsius, and add a friendly emoji 🌦️. Let me "
        "structure: first Paris, then Tokyo.\n</think>\n\nHere is the forecast:\n\n"
        "- **Paris**: 18 °C, light rain 🌧️ in the afternoon.\n- **東京**: 24 °C, sunny ☀️, "
        "humidity 60 %.\n\nEnjoy your day! 😊 Let me know if you need anything else, such as "
        "an hourly breakdown or a weekly outlook for either city."
    ),
    "reasoning+two tool calls": (
        "<think>\nI need the weather for two cities, so I will call the tool twice.\n</think>"
        '\n\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": '
        '"celsius", "days": 3}}\n</tool_call>\n<tool_call>\n{"name": "get_weather", '
        '"arguments": {"city": "Tokyo", "unit": "celsius", "days": 3, "note": "東京 </tool_call>'
        ' inside a string"}}\n</tool_call>'
    ),
}


def token_ids(tokenizer: object, text: str) -> list[int]:
    ids: list[int] = tokenizer.encode(text)  # type: ignore[attr-defined]
    while len(ids) < TOKENS:  # pad with more answer text
        ids += tokenizer.encode(" And more words follow here.")  # type: ignore[attr-defined]
    return ids[:TOKENS]


def run_once(tokenizer: object, ids: list[int]) -> None:
    detok = IncrementalDetokenizer(tokenizer)
    stop = StopMatcher(["<|user|>", "\n\nObservation:"])
    reasoning = Qwen3ReasoningParser(thinking_enabled=True)
    tools = Qwen3ToolCallParser({"get_weather"})
    for i in range(len(ids)):
        text, _ = stop.push(detok.push(ids[i : i + 1]))
        _, content = reasoning.push(text)
        tools.push(content)
    text = stop.push(detok.flush())[0] + stop.flush()
    reasoning.push(text)
    tools.push(reasoning.flush()[1])
    tools.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=300)
    args = parser.parse_args()
    tokenizer = load_tokenizer(bundled_qwen3_tokenizer_dir())
    for name, text in OUTPUTS.items():
        ids = token_ids(tokenizer, text)
        run_once(tokenizer, ids)  # warm-up: builds the shared id->bytes table
        best = float("inf")
        for _ in range(5):
            start = time.process_time_ns()
            for _ in range(args.repeat):
                run_once(tokenizer, ids)
            best = min(best, (time.process_time_ns() - start) / (args.repeat * len(ids)))
        print(f"{name}: {best / 1000:.2f} us CPU per token (best of 5 x {args.repeat} runs)")


if __name__ == "__main__":
    main()
