"""Request fields that constrain the output -> the engine's guide (type, text).

The TensorRT-LLM backend takes one guide per request in two string inputs,
``guided_decoding_guide_type`` and ``guided_decoding_guide``; the C++ backend knows the types
``json``, ``json_schema``, ``regex`` and ``ebnf_grammar`` (triton_backend/inflight_batcher_llm/
src/utils.cc, getGuidedDecodingParamsFromTensors) and compiles them with XGrammar
(cpp/tensorrt_llm/batch_manager/guidedDecoder.cpp). Clients ask in three ways, all mapped here:

- OpenAI ``response_format``: ``json_object`` -> json; ``json_schema`` -> json_schema with
  ``json_schema.schema`` (strict or not: the grammar always enforces the schema).
- vLLM's ``structured_outputs`` object (vllm/sampling_params.py, StructuredOutputsParams):
  ``json`` -> json_schema, ``json_object`` -> json, ``regex`` -> regex, ``grammar`` ->
  ebnf_grammar (XGrammar's EBNF, as vLLM's xgrammar backend reads it), ``choice`` ->
  ebnf_grammar of the quoted alternatives (as vLLM's xgrammar backend builds it).
- vLLM's older top-level ``guided_json`` / ``guided_regex`` / ``guided_grammar`` /
  ``guided_choice`` (removed from vLLM in favour of ``structured_outputs``; old clients send
  them): the same mapping.

At most one constraint per request. What the backend cannot do is a 400 that says so:
``structural_tag`` (no such guide type in the C++ backend at 1.1.0), and the whitespace and
additionalProperties options (the backend compiles schemas with XGrammar's defaults).
A schema is checked against its JSON Schema meta-schema here, so that a bad one is a 400
naming the problem instead of an engine failure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from trtllm_stack.proxy.errors import InvalidRequest
from trtllm_stack.proxy.protocol import _SamplingRequest

# Bounded: a guide is compiled by the engine for every request that carries it.
_MAX_GUIDE_CHARS = 64 * 1024
_MAX_CHOICES = 256


@dataclass(frozen=True, slots=True)
class Guide:
    type: str  # one of trtllm_stack.triton.tensors.GUIDE_TYPES
    text: str | None  # None for "json"


def _schema_text(schema: object, param: str) -> str:
    """A JSON schema given as an object or as JSON text -> checked JSON text."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as exc:
            raise InvalidRequest(f"the JSON schema is not valid JSON: {exc}", param=param) from None
    if isinstance(schema, bool):
        schema = {} if schema else {"not": {}}
    if not isinstance(schema, dict):
        raise InvalidRequest("the JSON schema must be a JSON object", param=param)
    check_schema(schema, param)
    text = json.dumps(schema, ensure_ascii=False, separators=(",", ":"))
    _check_size(text, param)
    return text


def check_schema(schema: dict[str, Any], param: str) -> None:
    """A 400 naming the first problem, by the meta-schema the schema declares (default
    2020-12, as OpenAI's structured outputs)."""
    import jsonschema  # only requests with a schema pay for the import

    try:
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        raise InvalidRequest(
            f"invalid JSON schema at {where}: {exc.message}", param=param
        ) from None


def _check_size(text: str, param: str) -> None:
    if len(text) > _MAX_GUIDE_CHARS:
        raise InvalidRequest(
            f"the guide has {len(text)} characters; at most {_MAX_GUIDE_CHARS} are accepted",
            param=param,
        )


def _text(value: str, param: str) -> str:
    if not value:
        raise InvalidRequest("the guide must not be empty", param=param)
    _check_size(value, param)
    return value


def choice_grammar(choices: list[str], param: str) -> str:
    """EBNF accepting exactly one of ``choices`` (XGrammar string literals are JSON strings)."""
    if not choices:
        raise InvalidRequest("choice needs at least one alternative", param=param)
    if len(choices) > _MAX_CHOICES:
        raise InvalidRequest(f"at most {_MAX_CHOICES} choices are accepted", param=param)
    if any(c == "" for c in choices):
        raise InvalidRequest("choices must not be empty strings", param=param)
    grammar = "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)
    _check_size(grammar, param)
    return grammar


def _response_format(body: _SamplingRequest) -> Guide | None:
    fmt = body.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return Guide("json", None)
    if fmt.type == "json_schema":
        spec = fmt.json_schema
        if spec is None or spec.json_schema is None:
            raise InvalidRequest(
                "response_format json_schema needs json_schema.schema",
                param="response_format.json_schema",
            )
        return Guide("json_schema", _schema_text(spec.json_schema, "response_format.json_schema"))
    raise InvalidRequest(
        f"response_format type '{fmt.type}' is not supported; use text, json_object or"
        " json_schema (structural_tag: the TensorRT-LLM backend has no such guide type)",
        param="response_format",
    )


def _structured_outputs(body: _SamplingRequest) -> list[tuple[str, Guide]]:
    so = body.structured_outputs
    if so is None:
        return []
    p = "structured_outputs"
    unsupported = {
        "structural_tag": so.structural_tag is not None,
        "disable_any_whitespace": so.disable_any_whitespace,
        "disable_additional_properties": so.disable_additional_properties,
        "whitespace_pattern": so.whitespace_pattern is not None,
    }
    for name, given in unsupported.items():
        if given:
            raise InvalidRequest(
                f"structured_outputs.{name} is not supported by the TensorRT-LLM backend"
                " (it compiles guides with XGrammar's defaults)",
                param=f"{p}.{name}",
            )
    found: list[tuple[str, Guide]] = []
    if so.json_ is not None:
        found.append((f"{p}.json", Guide("json_schema", _schema_text(so.json_, f"{p}.json"))))
    if so.json_object:
        found.append((f"{p}.json_object", Guide("json", None)))
    if so.regex is not None:
        found.append((f"{p}.regex", Guide("regex", _text(so.regex, f"{p}.regex"))))
    if so.grammar is not None:
        found.append((f"{p}.grammar", Guide("ebnf_grammar", _text(so.grammar, f"{p}.grammar"))))
    if so.choice is not None:
        found.append(
            (f"{p}.choice", Guide("ebnf_grammar", choice_grammar(so.choice, f"{p}.choice")))
        )
    return found


def _legacy(body: _SamplingRequest) -> list[tuple[str, Guide]]:
    if body.guided_whitespace_pattern is not None:
        raise InvalidRequest(
            "guided_whitespace_pattern is not supported by the TensorRT-LLM backend",
            param="guided_whitespace_pattern",
        )
    found: list[tuple[str, Guide]] = []
    if body.guided_json is not None:
        found.append(
            ("guided_json", Guide("json_schema", _schema_text(body.guided_json, "guided_json")))
        )
    if body.guided_regex is not None:
        found.append(("guided_regex", Guide("regex", _text(body.guided_regex, "guided_regex"))))
    if body.guided_grammar is not None:
        found.append(
            ("guided_grammar", Guide("ebnf_grammar", _text(body.guided_grammar, "guided_grammar")))
        )
    if body.guided_choice is not None:
        found.append(
            (
                "guided_choice",
                Guide("ebnf_grammar", choice_grammar(body.guided_choice, "guided_choice")),
            )
        )
    return found


def request_guide(body: _SamplingRequest) -> Guide | None:
    """The one guide the request asks for, or None; a 400 for two or for what cannot be."""
    found: list[tuple[str, Guide]] = []
    fmt = _response_format(body)
    if fmt is not None:
        found.append(("response_format", fmt))
    found += _structured_outputs(body)
    found += _legacy(body)
    if len(found) > 1:
        names = ", ".join(name for name, _ in found)
        raise InvalidRequest(
            f"only one output constraint per request; this one has {names}", param=found[1][0]
        )
    return found[0][1] if found else None


def asks_for_guide(body: _SamplingRequest) -> bool:
    """Cheap: does the request carry any output constraint (before it is checked)?"""
    fmt = body.response_format
    return bool(
        (fmt is not None and fmt.type != "text")
        or body.structured_outputs is not None
        or body.guided_json is not None
        or body.guided_regex is not None
        or body.guided_grammar is not None
        or body.guided_choice is not None
    )


# -- tool_choice "required" / named: enforced by a guide, as vLLM does -----------------------
#
# vLLM (vllm/entrypoints/openai/chat_completion/protocol.py, _get_json_schema_from_tool, and
# vllm/tool_parsers/utils.py, _get_json_schema_from_tools) guides a named tool_choice by the
# function's parameters schema (the output is the arguments) and "required" by a JSON array
# (minItems 1) of {"name": enum [tool], "parameters": schema} objects, anyOf the tools.
# The backend has no structural-tag guide type at 1.1.0, so Qwen3's <tool_call> block
# itself cannot be the grammar; the proxy turns the guided JSON into tool calls instead.


@dataclass(frozen=True, slots=True)
class ForcedTools:
    """How to read the guided output back: one named function, or a list of calls."""

    name: str | None  # named tool_choice; None: "required" (a JSON array of calls)


def _parameters(tool: dict[str, Any]) -> dict[str, Any]:
    params = tool["function"].get("parameters")
    return params if isinstance(params, dict) and params else {"type": "object"}


def tool_choice_guide(
    tools: list[dict[str, Any]], name: str | None, parallel: bool | None
) -> tuple[Guide, ForcedTools]:
    """The guide for tool_choice ``name`` (a function name) or "required" (``name`` None)."""
    if name is not None:
        tool = next(t for t in tools if t["function"]["name"] == name)
        return Guide("json_schema", _schema_text(_parameters(tool), "tools")), ForcedTools(name)
    calls = [
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "enum": [t["function"]["name"]]},
                "parameters": _parameters(t),
            },
            "required": ["name", "parameters"],
        }
        for t in tools
    ]
    schema: dict[str, Any] = {
        "type": "array",
        "minItems": 1,
        "items": {"type": "object", "anyOf": calls},
    }
    if parallel is False:
        schema["maxItems"] = 1  # parallel_tool_calls false: one call
    return Guide("json_schema", _schema_text(schema, "tools")), ForcedTools(None)


def forced_tool_calls(text: str, forced: ForcedTools) -> list[tuple[str, str]] | None:
    """(name, arguments JSON) of each call in the guided output; None if it is not a
    complete document (cut off by max_tokens or a stop string)."""
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    if forced.name is not None:
        return [(forced.name, json.dumps(doc, ensure_ascii=False))]
    if not isinstance(doc, list):
        return None
    out = []
    for call in doc:
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return None
        out.append((call["name"], json.dumps(call.get("parameters", {}), ensure_ascii=False)))
    return out
