"""Result JSON, table, plot and compare."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trtllm_stack.bench.metrics import OK, SLO, RequestRecord
from trtllm_stack.bench.report import (
    TargetRuns,
    compare_rows,
    compare_text,
    load_result,
    result_json,
    summary_table,
    write_json,
    write_plot,
)
from trtllm_stack.bench.runner import Level, LevelRun
from trtllm_stack.cli import main
from trtllm_stack.errors import UserError


def _run(concurrency: int, ttft: float, gap: float, n: int = 4, tokens: int = 5) -> LevelRun:
    recs = [
        RequestRecord(
            index=i,
            start=0.0,
            tokens_in=10,
            tokens_out=tokens,
            ttft=ttft,
            e2e=ttft + gap * (tokens - 1),
            itl=[gap] * (tokens - 1),
            chunks=tokens,
            status=OK,
        )
        for i in range(n)
    ]
    return LevelRun(
        Level("closed", concurrency=concurrency),
        recs,
        wall_time=1.0,
        cpu_s={"proxy": 0.002},
    )


def _result(label: str, url: str, ttft: float, gap: float) -> dict:
    runs = [_run(1, ttft, gap), _run(16, ttft * 2, gap)]
    return result_json(
        [TargetRuns(label, {"url": url, "kind": "openai"}, runs)],
        {"x": 1},
        {"cpu_count": 2},
        SLO(ttft=0.5),
        interrupted=False,
        started_at="2026-01-01T00:00:00+00:00",
    )


def test_json_round_trip_and_atomic_write(tmp_path: Path) -> None:
    result = _result("proxy", "http://a", 0.010, 0.001)
    path = tmp_path / "sub" / "r.json"
    write_json(path, result)
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temp file left
    loaded = load_result(path)
    level = loaded["targets"][0]["levels"][0]
    assert level["summary"]["completed"] == 4
    assert len(level["records"]) == 4 and level["records"][0]["itl_ms"] == [1.0] * 4
    # CPU per output token: 0.002 s over 4 requests x 5 tokens
    assert level["cpu"]["proxy"]["us_per_output_token"] == pytest.approx(2000 / 20)
    assert level["summary"]["goodput"]["good_requests"] == 4


def test_table_lists_every_level(tmp_path: Path) -> None:
    table = summary_table(_result("proxy", "http://a", 0.010, 0.001))
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["target", "level"]
    assert sum(1 for line in lines if line.startswith("proxy")) == 2
    assert "proxy us/tok" in lines[0] and "goodput/s" in lines[0]


def test_plot_is_a_png(tmp_path: Path) -> None:
    a = _result("proxy", "http://a", 0.010, 0.001)
    b = _result("direct", "triton-grpc://b:1", 0.008, 0.001)
    a["targets"] += b["targets"]
    path = tmp_path / "plot.png"
    write_plot(a, path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_compare_rows_ratios() -> None:
    a = _result("direct", "u1", 0.010, 0.001)["targets"][0]
    b = _result("proxy", "u2", 0.012, 0.002)["targets"][0]
    rows = compare_rows(a, b)
    assert [r["level"] for r in rows] == ["c=1", "c=16"]
    r = rows[0]
    assert r["ttft_ms_p50"]["ratio"] == pytest.approx(12 / 10)
    assert r["ttft_ms_p50"]["delta"] == pytest.approx(2.0)
    assert r["itl_ms_p50"]["ratio"] == pytest.approx(2.0)
    # same token counts, same wall time: throughput ratio 1
    assert r["output_tokens_per_s"]["ratio"] == pytest.approx(1.0)


def test_compare_cli_two_files_and_one_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    write_json(a, _result("t", "http://x", 0.010, 0.001))
    write_json(b, _result("t", "http://x", 0.020, 0.001))
    assert main(["bench", "compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "2.00x (+10.00ms)" in out and "c=16" in out
    both = _result("direct", "triton-grpc://h:1", 0.010, 0.001)
    both["targets"] += _result("proxy", "http://h:2", 0.011, 0.001)["targets"]
    write_json(a, both)
    assert main(["bench", "compare", str(a)]) == 0
    assert "B = proxy  vs  A = direct" in capsys.readouterr().out


def test_compare_rejects_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"hello": 1}))
    assert main(["bench", "compare", str(bad)]) == 2
    assert "not a trtllm-stack bench result" in capsys.readouterr().err
    one = tmp_path / "one.json"
    write_json(one, _result("t", "http://x", 0.010, 0.001))
    with pytest.raises(UserError, match="two or more targets"):
        compare_text(load_result(one), None, ("A", "B"))
    assert main(["bench", "compare", str(tmp_path / "missing.json")]) == 2


def test_gzip_result_and_shareable_mode(tmp_path: Path) -> None:
    import gzip
    import os

    result = _result("proxy", "http://a", 0.010, 0.001)
    path = tmp_path / "r.json.gz"
    write_json(path, result)
    assert json.loads(gzip.decompress(path.read_bytes()))["format"] == result["format"]
    assert load_result(path)["targets"][0]["label"] == "proxy"
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_a_level_without_success_is_marked_failed_in_the_table() -> None:
    from trtllm_stack.bench.metrics import ERROR
    from trtllm_stack.bench.report import failed_levels

    dead = LevelRun(
        Level("closed", concurrency=2),
        [
            RequestRecord(index=i, start=0.0, tokens_in=10, status=ERROR, error="cannot connect")
            for i in range(3)
        ],
        wall_time=1.0,
    )
    result = result_json(
        [TargetRuns("proxy", {"url": "http://a", "kind": "openai"}, [_run(1, 0.01, 0.001), dead])],
        {},
        {"cpu_count": 2},
        None,
        interrupted=False,
        started_at="2026-01-01T00:00:00+00:00",
    )
    assert failed_levels(result) == ["proxy c=2"]
    table = summary_table(result)
    row = next(line for line in table.splitlines() if "c=2" in line and line.startswith("proxy"))
    assert "FAILED" in row
    assert "FAILED proxy c=2: no request succeeded" in table
    assert "FAILED" not in next(line for line in table.splitlines() if " c=1 " in line)


def test_bench_against_a_dead_target_exits_1(tmp_path: Path, capsys) -> None:
    from trtllm_stack.triton.server import free_port

    out = tmp_path / "r.json"
    argv = ["bench", "--target", f"http://127.0.0.1:{free_port()}", "--model", "qwen3"]
    argv += ["--num-requests", "2", "--concurrency", "1", "--no-progress", "--no-plot"]
    assert main([*argv, "-o", str(out)]) == 1
    captured = capsys.readouterr()
    assert "without a successful request" in captured.err
    assert "FAILED" in captured.out
    assert load_result(out)["targets"][0]["levels"][0]["summary"]["completed"] == 0


@pytest.mark.parametrize("levels", [[2], [1, 2, 3], [1, 4, 16, 64]])
def test_plot_axes_start_at_zero_with_integer_level_ticks(levels, monkeypatch, tmp_path) -> None:
    import matplotlib.figure

    from trtllm_stack.bench import report

    saved: list[matplotlib.figure.Figure] = []
    real = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(
        matplotlib.figure.Figure, "savefig", lambda f, *a, **k: (saved.append(f), real(f, *a, **k))
    )
    runs = [_run(c, 0.010 * c, 0.001) for c in levels]
    result = result_json(
        [TargetRuns("proxy", {"url": "u", "kind": "openai"}, runs)],
        {},
        {"cpu_count": 2},
        None,
        interrupted=False,
        started_at="2026-01-01T00:00:00+00:00",
    )
    report.write_plot(result, tmp_path / "p.png")
    for ax in saved[0].axes:
        assert ax.get_ylim()[0] == 0
        top = max(y for line in ax.get_lines() for y in line.get_ydata())
        assert ax.get_ylim()[1] > top  # nothing clipped at the top
        ticks = [t for t in ax.get_xticks() if t > 0]
        assert ticks == levels  # the measured concurrencies, integers, nothing fractional
        lo, hi = ax.get_xlim()
        assert lo < min(levels) and hi > max(levels)
        if ax.get_xscale() == "linear":
            assert lo == 0
