"""Result files (JSON, written atomically), the terminal table, the PNG plot, and
``bench compare``."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from trtllm_stack.bench.metrics import SLO, summarize
from trtllm_stack.bench.runner import LevelRun
from trtllm_stack.errors import UserError

FORMAT = "trtllm-stack-bench/1"


@dataclass
class TargetRuns:
    label: str
    description: dict[str, Any]
    runs: list[LevelRun]


# ---------------------------------------------------------------------------- JSON


def environment() -> dict[str, Any]:
    from importlib import metadata

    versions = {}
    for dist in (
        "trtllm-stack",
        "httpx",
        "aiohttp",  # the bench HTTP client
        "tritonclient",
        "grpcio",
        "transformers",
        "uvloop",
        "orjson",
    ):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "cpu_model": _cpu_model(),
        # other work on the machine skews every number: record how busy it was at the start
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "packages": versions,
        **_git_info(),
    }


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _git_info() -> dict[str, Any]:
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None}
    return {"git_commit": commit, "git_dirty": bool(dirty)}


def level_json(run: LevelRun, slo: SLO | None) -> dict[str, Any]:
    summary = summarize(run.records, run.wall_time, slo)
    cpu = {}
    for name, seconds in run.cpu_s.items():
        tokens = summary["tokens_out"]
        cpu[name] = {
            "cpu_s": seconds,
            "us_per_output_token": round(seconds * 1e6 / tokens, 3) if tokens else None,
        }
    return {
        "level": run.level.to_json(),
        "interrupted": run.interrupted,
        "summary": summary,
        "cpu": cpu,
        "records": [r.to_json() for r in run.records],
    }


def result_json(
    targets: Sequence[TargetRuns],
    settings: dict[str, Any],
    env: dict[str, Any],
    slo: SLO | None,
    interrupted: bool,
    started_at: str,
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "started_at": started_at,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "interrupted": interrupted,
        "settings": settings,
        "environment": env,
        "targets": [
            {**t.description, "label": t.label, "levels": [level_json(r, slo) for r in t.runs]}
            for t in targets
        ],
    }


def write_atomic(path: Path, data: bytes) -> None:
    """Write via a temp file in the same directory and rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; results are meant to be shared
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: Path, result: dict[str, Any]) -> None:
    """Indented, except one line per request record (files stay small and diffable)."""
    records: list[list[dict[str, Any]]] = []
    skeleton = {**result, "targets": []}
    for t in result["targets"]:
        levels = []
        for lv in t["levels"]:
            levels.append({**lv, "records": f"@@records{len(records)}@@"})
            records.append(lv["records"])
        skeleton["targets"].append({**t, "levels": levels})
    text = json.dumps(skeleton, indent=1, allow_nan=False)
    for i, recs in enumerate(records):
        lines = ",\n".join(json.dumps(r, separators=(",", ":"), allow_nan=False) for r in recs)
        text = text.replace(f'"@@records{i}@@"', f"[\n{lines}\n]" if recs else "[]", 1)
    data = (text + "\n").encode()
    if path.suffix == ".gz":
        import gzip

        data = gzip.compress(data, compresslevel=9, mtime=0)
    write_atomic(path, data)


def load_result(path: Path) -> dict[str, Any]:
    import gzip

    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        result = json.loads(raw.decode("utf-8"))
    except OSError as exc:  # also gzip.BadGzipFile
        raise UserError(f"{path}: {getattr(exc, 'strerror', None) or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, EOFError):
        raise UserError(f"{path}: not a JSON file") from None
    if not isinstance(result, dict) or result.get("format") != FORMAT:
        raise UserError(f"{path}: not a trtllm-stack bench result (format {FORMAT})")
    return result


# ---------------------------------------------------------------------------- table


def _f(v: Any, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _render(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    out = [
        "  ".join(
            h.rjust(w) if i else h.ljust(w)
            for i, (h, w) in enumerate(zip(headers, widths, strict=True))
        )
    ]
    out.append("  ".join("-" * w for w in widths))
    for r in rows:
        out.append(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    return "\n".join(out)


def level_label(level: dict[str, Any]) -> str:
    if level["mode"] == "closed":
        return f"c={level['concurrency']}"
    cap = f" max={level['max_in_flight']}" if level.get("max_in_flight") else ""
    return f"rate={level['rate']}{cap}"


def summary_table(result: dict[str, Any]) -> str:
    has_goodput = any("goodput" in lv["summary"] for t in result["targets"] for lv in t["levels"])
    cpu_names = sorted({n for t in result["targets"] for lv in t["levels"] for n in lv["cpu"]})
    headers = [
        "target",
        "level",
        "ok",
        "err",
        "TTFT p50",
        "TTFT p99",
        "ITL p50",
        "ITL p99",
        "TPOT p50",
        "E2E p50",
        "E2E p99",
        "out tok/s",
        "req/s",
    ]
    if has_goodput:
        headers.append("goodput/s")
    headers += [f"{n} us/tok" for n in cpu_names]
    rows = []
    for t in result["targets"]:
        for lv in t["levels"]:
            s = lv["summary"]
            row = [
                t["label"],
                level_label(lv["level"])
                + (" (partial)" if lv.get("interrupted") else "")
                + (" FAILED" if s["completed"] == 0 else ""),
                str(s["completed"]),
                str(s["errors"]),
                _f(s["ttft_ms"]["p50"], 2),
                _f(s["ttft_ms"]["p99"], 2),
                _f(s["itl_ms"]["p50"], 2),
                _f(s["itl_ms"]["p99"], 2),
                _f(s["tpot_ms"]["p50"], 2),
                _f(s["e2e_ms"]["p50"], 1),
                _f(s["e2e_ms"]["p99"], 1),
                _f(s["output_tokens_per_s"], 0),
                _f(s["requests_per_s"], 2),
            ]
            if has_goodput:
                row.append(_f(s.get("goodput", {}).get("requests_per_s"), 2))
            row += [_f(lv["cpu"].get(n, {}).get("us_per_output_token"), 1) for n in cpu_names]
            rows.append(row)
    notes = ["times in ms; ITL = gap between streamed chunks; TPOT = (E2E - TTFT) / (tokens - 1)"]
    for t in result["targets"]:
        for lv in t["levels"]:
            for reason, n in lv["summary"]["error_reasons"].items():
                notes.append(f"{t['label']} {level_label(lv['level'])}: {n} x {reason}")
    for label in failed_levels(result):
        notes.append(f"FAILED {label}: no request succeeded")
    return _render(headers, rows) + "\n" + "\n".join(notes)


def failed_levels(result: dict[str, Any]) -> list[str]:
    """'target level' of every level without a single successful request."""
    return [
        f"{t['label']} {level_label(lv['level'])}"
        for t in result["targets"]
        for lv in t["levels"]
        if lv["summary"]["completed"] == 0
    ]


# ---------------------------------------------------------------------------- plot


def _x_of(level: dict[str, Any]) -> float | None:
    if level["mode"] == "closed":
        return float(level["concurrency"])
    rate = level["rate"]
    return None if rate in (None, "inf") else float(rate)


def _level_axis(ax: Any, levels: list[float], *, integer: bool) -> None:
    """Ticks at the measured levels; from zero unless they span a factor of 8 or more
    (then log2, still labelled with the levels themselves)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    if not levels:
        return
    label = FuncFormatter(lambda v, _pos: f"{v:g}")
    if len(levels) > 1 and levels[0] > 0 and levels[-1] / levels[0] >= 8:
        ax.set_xscale("log", base=2)
        ax.set_xlim(levels[0] / 1.3, levels[-1] * 1.3)
    else:
        # One level sits in the middle; several leave room for the last marker.
        ax.set_xlim(0, levels[-1] * (2 if len(levels) == 1 else 1.15) or 1)
    shown = levels if len(levels) <= 12 else levels[:: math.ceil(len(levels) / 12)]
    ax.xaxis.set_major_locator(FixedLocator([*([] if ax.get_xscale() == "log" else [0]), *shown]))
    ax.xaxis.set_major_formatter(label if integer else FuncFormatter(lambda v, _p: f"{v:.3g}"))
    ax.xaxis.set_minor_locator(NullLocator())


def write_plot(result: dict[str, Any], path: Path) -> None:
    """Latency percentiles and throughput against the load, one colour per target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    closed = all(lv["level"]["mode"] == "closed" for t in result["targets"] for lv in t["levels"])
    xlabel = "concurrent requests" if closed else "request rate (req/s)"
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), constrained_layout=True)
    panels = [
        (axes[0][0], "ttft_ms", "time to first token (ms)"),
        (axes[0][1], "itl_ms", "inter-token latency (ms)"),
        (axes[1][0], "e2e_ms", "end-to-end latency (ms)"),
    ]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    # p50 and p99 differ in line style *and* marker (a single level has no line to tell
    # them apart): filled circles for p50, hollow squares for p99.
    styles: dict[str, dict[str, Any]] = {
        "p50": {"linestyle": "-", "marker": "o"},
        "p99": {"linestyle": "--", "marker": "s", "markerfacecolor": "white", "mew": 1.5},
    }
    xs_all: set[float] = set()
    for i, t in enumerate(result["targets"]):
        color = colors[i % len(colors)]
        points = sorted(
            (x, lv["summary"]) for lv in t["levels"] if (x := _x_of(lv["level"])) is not None
        )
        if not points:
            continue
        xs = [p[0] for p in points]
        xs_all.update(xs)
        for ax, key, _ in panels:
            for pct, style in styles.items():
                ys = [p[1][key][pct] for p in points]
                ax.plot(
                    xs,
                    [math.nan if y is None else y for y in ys],
                    color=color,
                    label=f"{t['label']} {pct}",
                    clip_on=False,
                    **style,
                )
        tput = [p[1]["output_tokens_per_s"] for p in points]
        axes[1][1].plot(
            xs,
            [math.nan if y is None else y for y in tput],
            "-",
            marker="o",
            color=color,
            label=t["label"],
            clip_on=False,
        )
    for ax, _key, title in panels:
        ax.set_title(title)
        ax.set_ylabel("ms")
    axes[1][1].set_title("output throughput")
    axes[1][1].set_ylabel("tokens/s")
    levels = sorted(xs_all)
    for row in axes:
        for ax in row:
            ax.set_xlabel(xlabel)
            _level_axis(ax, levels, integer=closed)
            # Every axis starts at zero, with headroom above the highest point.
            top = max((y for line in ax.get_lines() for y in line.get_ydata() if y == y), default=1)
            ax.set_ylim(0, top * 1.12 if top > 0 else 1)
            ax.grid(True, alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7, loc="best")
    when = result.get("started_at", "")
    commit = (result.get("environment", {}).get("git_commit") or "")[:10]
    fig.suptitle(f"trtllm-stack bench {when} {commit}".strip(), fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)


# ---------------------------------------------------------------------------- compare


def _level_key(level: dict[str, Any]) -> tuple[Any, ...]:
    return (level["mode"], level.get("concurrency"), level.get("rate"), level.get("max_in_flight"))


def _pairs(
    a: dict[str, Any], b: dict[str, Any] | None
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    if b is None:
        targets = a["targets"]
        if len(targets) < 2:
            raise UserError("compare with one file needs a result with two or more targets")
        return [(targets[0], t) for t in targets[1:]]
    ta, tb = a["targets"], b["targets"]
    urls_a, urls_b = [t["url"] for t in ta], [t["url"] for t in tb]
    if sorted(urls_a) == sorted(urls_b) and len(set(urls_a)) == len(urls_a):
        by_url = {t["url"]: t for t in tb}
        return [(t, by_url[t["url"]]) for t in ta]
    if len(ta) != len(tb):
        raise UserError(
            f"the results have different targets ({len(ta)} vs {len(tb)}) and cannot be paired"
        )
    return list(zip(ta, tb, strict=True))


def _ratio(a: Any, b: Any) -> float | None:
    if a is None or b is None or a == 0:
        return None
    return b / a


def compare_rows(base: dict[str, Any], other: dict[str, Any]) -> list[dict[str, Any]]:
    """Per common level: B/A ratios and B-A differences of the headline metrics."""
    levels_b = {_level_key(lv["level"]): lv for lv in other["levels"]}
    rows = []
    for lv in base["levels"]:
        key = _level_key(lv["level"])
        if key not in levels_b:
            continue
        sa, sb = lv["summary"], levels_b[key]["summary"]
        row: dict[str, Any] = {"level": level_label(lv["level"])}
        for metric in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms"):
            for pct in ("p50", "p99"):
                va, vb = sa[metric][pct], sb[metric][pct]
                row[f"{metric}_{pct}"] = {
                    "a": va,
                    "b": vb,
                    "ratio": _ratio(va, vb),
                    "delta": None if va is None or vb is None else vb - va,
                }
        for metric in ("output_tokens_per_s", "requests_per_s"):
            row[metric] = {
                "a": sa[metric],
                "b": sb[metric],
                "ratio": _ratio(sa[metric], sb[metric]),
            }
        row["errors"] = {"a": sa["errors"], "b": sb["errors"]}
        rows.append(row)
    return rows


def compare_text(a: dict[str, Any], b: dict[str, Any] | None, names: tuple[str, str]) -> str:
    out = []
    for ta, tb in _pairs(a, b):
        rows = compare_rows(ta, tb)
        la = f"{names[0]}:{ta['label']}" if b is not None else ta["label"]
        lb = f"{names[1]}:{tb['label']}" if b is not None else tb["label"]
        out.append(f"B = {lb}  vs  A = {la}   (ratio = B/A; +ms = B - A)")
        if not rows:
            out.append("  no load level in common")
            continue
        headers = [
            "level",
            "TTFT p50",
            "TTFT p99",
            "ITL p50",
            "TPOT p50",
            "E2E p50",
            "out tok/s",
            "errors A/B",
        ]
        table = []
        for r in rows:

            def lat(key: str, r: dict[str, Any] = r) -> str:
                m = r[key]
                if m["ratio"] is None:
                    return "-"
                return f"{m['ratio']:.2f}x ({m['delta']:+.2f}ms)"

            tp = r["output_tokens_per_s"]["ratio"]
            table.append(
                [
                    r["level"],
                    lat("ttft_ms_p50"),
                    lat("ttft_ms_p99"),
                    lat("itl_ms_p50"),
                    lat("tpot_ms_p50"),
                    lat("e2e_ms_p50"),
                    "-" if tp is None else f"{tp:.3f}x",
                    f"{r['errors']['a']}/{r['errors']['b']}",
                ]
            )
        out.append(_render(headers, table))
        out.append("")
    return "\n".join(out).rstrip() + "\n"
