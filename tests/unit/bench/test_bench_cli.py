"""Bad input gives one line and exit code 2, before any tokenizer or network work."""

from __future__ import annotations

import pytest

from trtllm_stack.cli import main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "at least one --target"),
        (["--target", "ftp://x"], "expected http(s)://"),
        (["--target", "http://x:1", "--concurrency", "0"], "--concurrency"),
        (["--target", "http://x:1", "--concurrency", "a,b"], "--concurrency"),
        (
            ["--target", "http://x:1", "--concurrency", "1", "--rate", "2"],
            "exclude each other",
        ),
        (["--target", "http://x:1", "--max-in-flight", "2"], "open loop"),
        (["--target", "http://x:1", "--rate", "-1"], "--rate"),
        (["--target", "http://x:1", "--input-len", "normal:5"], "--input-len"),
        (["--target", "http://x:1", "--slo", "speed=3"], "--slo"),
        (["--target", "http://x:1", "--extra-body", "[1]"], "--extra-body"),
        (["--target", "http://x:1", "--cpu-pid", "proxy"], "--cpu-pid"),
        (["--target", "http://x:1", "--cpu-pid", "proxy=999999999"], "no process"),
        (["--target", "http://x:1", "--duration", "0"], "--duration"),
        (["--target", "a=http://x:1", "--target", "a=http://y:1"], "same label"),
    ],
)
def test_bad_input_is_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1
