"""Command-line flags generated from a pydantic-settings model (as llama-cpp-python's
server does with its settings and ``add_args_from_model``): a setting is written once, as a
field with a type, a default and a description, and gets its flag, env variable and help.

Rules: ``--field-name`` (or ``json_schema_extra={"cli_flag": "--other"}``); bool ->
``--x/--no-x``; int, float, str, Path -> that type; Literal and Enum -> choices; ``list[X]``
-> comma-separated; ``X | None`` -> X, and ``none`` sets None explicitly. A flag not
given leaves the field to its env variable and default (flags are SUPPRESSed, so only
what was typed reaches the model).
"""

from __future__ import annotations

import argparse
import enum
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

_NONE_WORDS = frozenset({"none", "null"})


def flag_name(name: str, field: FieldInfo) -> str:
    extra = field.json_schema_extra
    if isinstance(extra, dict) and isinstance(extra.get("cli_flag"), str):
        return str(extra["cli_flag"])
    return "--" + name.replace("_", "-")


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(annotation)) == 2:
            return args[0], True
    return annotation, False


def _strip_annotated(annotation: Any) -> Any:
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _scalar(tp: Any) -> tuple[Callable[[str], Any], list[Any] | None]:
    """Converter and choices (converted values) for one value of type ``tp``."""
    by_text: dict[str, Any] | None = None
    if typing.get_origin(tp) is typing.Literal:
        by_text = {str(v): v for v in typing.get_args(tp)}
    elif isinstance(tp, type) and issubclass(tp, enum.Enum):
        by_text = {str(m.value): m for m in tp}
    if by_text is not None:
        table = by_text

        def choice(text: str) -> Any:
            return table.get(text, text)

        choice.__name__ = "choice"
        return choice, list(table.values())
    if tp in (int, float, str):
        return tp, None
    if tp is Path or (isinstance(tp, type) and issubclass(tp, Path)):
        return Path, None
    if tp is SecretStr:
        return str, None
    raise TypeError(f"no command-line form for settings type {tp!r}")


def _default_text(field: FieldInfo) -> str:
    factory = field.default_factory
    value = factory() if factory is not None else field.default  # type: ignore[call-arg]
    if value is PydanticUndefined:
        return "required"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value) or "''"
    return str(value)


def _converter(convert: Callable[[str], Any], optional: bool) -> Callable[[str], Any]:
    if not optional:
        return convert

    def parse(text: str) -> Any:
        return None if text.strip().lower() in _NONE_WORDS else convert(text)

    parse.__name__ = getattr(convert, "__name__", "value")  # argparse names it in errors
    return parse


def add_settings_flags(
    parser: argparse.ArgumentParser,
    model: type[BaseSettings],
    *,
    skip: Iterable[str] = (),
) -> None:
    """One flag per field of ``model`` (except ``skip``), ``dest`` = the field name."""
    skipped = set(skip)
    prefix = str(model.model_config.get("env_prefix") or "")
    for name, field in model.model_fields.items():
        if name in skipped:
            continue
        tp, optional = _unwrap_optional(_strip_annotated(field.annotation))
        tp = _strip_annotated(tp)
        help_text = (field.description or name.replace("_", " ")).replace("%", "%%")
        help_text += f" (default {_default_text(field)}; env {prefix}{name.upper()})"
        flag = flag_name(name, field)
        common: dict[str, Any] = {
            "dest": name,
            "default": argparse.SUPPRESS,
            "help": help_text,
            "metavar": flag.lstrip("-").replace("-", "_").upper(),
        }
        if tp is bool:
            del common["metavar"]
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
            continue
        if typing.get_origin(tp) in (list, tuple, set, frozenset):
            (item,) = typing.get_args(tp)[:1] or (str,)
            convert, _ = _scalar(_strip_annotated(item))

            def parse_list(text: str, convert: Callable[[str], Any] = convert) -> list[Any]:
                return [convert(p.strip()) for p in text.split(",") if p.strip()]

            parse_list.__name__ = "list"
            common["metavar"] = "A,B"
            parser.add_argument(flag, type=parse_list, **common)
            continue
        convert, choices = _scalar(tp)
        if choices is not None:
            common["choices"] = [*choices, None] if optional else choices
            texts = [str(c.value if isinstance(c, enum.Enum) else c) for c in choices]
            common["metavar"] = "{" + ",".join(texts + ["none"] * optional) + "}"
        parser.add_argument(flag, type=_converter(convert, optional), **common)


def settings_values(args: argparse.Namespace, model: type[BaseSettings]) -> dict[str, Any]:
    """The fields given on the command line (pass them to ``model(**values)``)."""
    given = vars(args)
    return {name: given[name] for name in model.model_fields if name in given}
