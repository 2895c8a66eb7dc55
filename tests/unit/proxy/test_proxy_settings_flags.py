"""CLI flags generated from the settings model: every field type the proxy uses (and the
ones helpers are adding) gets a working flag; env and defaults apply when it is absent."""

from __future__ import annotations

import argparse
import enum
from pathlib import Path
from typing import Literal

import pytest
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from trtllm_stack.proxy.settings import ProxySettings
from trtllm_stack.proxy.settings_flags import add_settings_flags, settings_values


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Demo(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEMO_", extra="ignore")

    flag: bool = Field(default=False, description="a switch")
    on: bool = Field(default=True, description="a switch that is on")
    count: int = Field(default=3, ge=0, description="how many")
    ratio: float = Field(default=0.5, description="how much")
    name: str = Field(default="x", description="a name with 100% of it")
    path: Path | None = Field(default=None, description="a file")
    limit: int | None = Field(default=8, description="an optional limit")
    ids: list[int] = Field(default_factory=lambda: [1, 2], description="some ids")
    words: list[str] = Field(default_factory=list, description="some words")
    mode: Literal["fast", "slow"] = Field(default="fast", description="a mode")
    color: Color = Field(default=Color.RED, description="an enum")
    level: Level | None = Field(default=None, description="an optional int enum")
    renamed: int = Field(default=0, description="x", json_schema_extra={"cli_flag": "--other"})


def parse(*argv: str) -> Demo:
    p = argparse.ArgumentParser()
    add_settings_flags(p, Demo)
    return Demo(**settings_values(p.parse_args(list(argv)), Demo))


def test_absent_flags_leave_defaults_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse() == Demo()
    monkeypatch.setenv("DEMO_COUNT", "9")
    monkeypatch.setenv("DEMO_FLAG", "true")
    got = parse()
    assert (got.count, got.flag) == (9, True)
    assert parse("--count", "4").count == 4  # the flag wins over the env


def test_every_kind_of_field() -> None:
    got = parse(
        "--flag",
        "--no-on",
        "--count=7",
        "--ratio=1.5",
        "--name=y",
        "--path=/tmp/f",
        "--limit=none",
        "--ids=3, 4,5",
        "--words=",
        "--mode=slow",
        "--color=blue",
        "--level=2",
        "--other=5",
    )
    assert got.flag is True and got.on is False
    assert (got.count, got.ratio, got.name, got.path) == (7, 1.5, "y", Path("/tmp/f"))
    assert got.limit is None and got.ids == [3, 4, 5] and got.words == []
    assert (got.mode, got.color, got.level, got.renamed) == ("slow", Color.BLUE, Level.HIGH, 5)
    assert parse("--limit", "12").limit == 12
    assert parse("--level", "none").level is None


@pytest.mark.parametrize(
    "argv", [["--count=many"], ["--mode=eager"], ["--color=green"], ["--ids=1,x"], ["--ratio"]]
)
def test_bad_values_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(*argv)
    assert exc.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_help_shows_description_default_and_env() -> None:
    p = argparse.ArgumentParser()
    add_settings_flags(p, Demo)
    text = " ".join(p.format_help().split())
    assert "how many (default 3; env DEMO_COUNT)" in text
    assert "a name with 100% of it" in text
    assert "some ids (default 1,2; env DEMO_IDS)" in text
    assert "--no-on" in text and "{fast,slow}" in text and "{1,2,none}" in text


def test_every_proxy_setting_is_described_and_has_a_flag() -> None:
    from trtllm_stack.cli import build_parser
    from trtllm_stack.proxy.cli import _NOT_FLAGS

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    proxy = sub.choices["proxy"]
    dests = {a.dest for a in proxy._actions}
    for name, field in ProxySettings.model_fields.items():
        assert field.description, f"ProxySettings.{name} has no description (it is the --help)"
        assert name in dests or name in _NOT_FLAGS, name
    args = parser.parse_args(["proxy", "--model-name", "m", "--no-reasoning-parser"])
    values = settings_values(args, ProxySettings)
    assert values == {"served_model_name": "m", "reasoning_parser": False}
