"""The report of one or more runs: ``report.html`` with the PNG plots beside it, and
``results.json`` with every figure, from which the same report can be drawn again."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

Run = dict[str, Any]


def load_runs(paths: Sequence[Path]) -> list[Run]:
    """Runs from files that `stoker bench` wrote: a run's own JSON, or a ``results.json``."""
    runs: list[Run] = []
    for path in paths:
        doc = json.loads(path.read_text())
        found = doc.get("runs", [doc])
        if not all(isinstance(r, dict) and "levels" in r for r in found):
            raise ValueError(f"{path} holds no stoker bench run")
        runs.extend(found)
    return runs


def distinct_labels(runs: Sequence[Run]) -> list[Run]:
    """The runs with labels made unique (two runs of one server side by side need telling apart)."""
    seen: dict[str, int] = {}
    out = []
    for run in runs:
        n = seen[run["label"]] = seen.get(run["label"], 0) + 1
        out.append(run if n == 1 else {**run, "label": f"{run['label']} ({n})"})
    return out


def compare(subject: Run, baseline: Run) -> dict[str, Any]:
    """Throughput ratios subject / baseline and p99 ratios baseline / subject: above 1, the
    subject is better. Levels pair up by key: the same connection count, the same rate, or the
    same share of each run's own peak."""
    base = {lv["key"]: lv for lv in baseline["levels"]}
    levels = []
    for lv in subject["levels"]:
        other = base.get(lv["key"])
        if other is None:
            continue
        p99, other_p99 = lv["latency_ms"]["p99"], other["latency_ms"]["p99"]
        levels.append(
            {
                "key": lv["key"],
                "subject": lv["name"],
                "baseline": other["name"],
                "throughput_ratio": _ratio(lv["throughput"], other["throughput"]),
                "p99_ratio": _ratio(other_p99, p99) if lv["ok"] and other["ok"] else None,
            }
        )
    return {
        "subject": subject["label"],
        "baseline": baseline["label"],
        "throughput_ratio": _ratio(subject["peak_throughput"], baseline["peak_throughput"]),
        "levels": levels,
    }


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def comparison_lines(c: dict[str, Any]) -> list[str]:
    s, b = c["subject"], c["baseline"]
    out = [f"peak throughput {s} / {b}: {_x(c['throughput_ratio'])}"]
    for lv in c["levels"]:
        out.append(
            f"  {lv['subject']:>9}: throughput {s} / {b} {_x(lv['throughput_ratio'])}, "
            f"p99 {b} / {s} {_x(lv['p99_ratio'])}"
        )
    return out


def headline(run: Run) -> str:
    """The peak and what latency and orchestration share came with it."""
    best = max(run["levels"], key=lambda lv: lv["throughput"])
    share = best["orchestration_share"]
    return (
        f"{run['label']}: peak {best['throughput']:.0f} req/s at {best['name']}, "
        f"p50 {best['latency_ms']['p50']:.1f} ms, p99 {best['latency_ms']['p99']:.1f} ms"
        + ("" if share is None else f", orchestration share {share:.0%}")
    )


def write(runs: Sequence[Run], out: Path) -> Path:
    """Writes ``results.json``, the plots and ``report.html`` into ``out``; returns the HTML."""
    from stoker.bench._figures import draw_all

    out.mkdir(parents=True, exist_ok=True)
    runs = distinct_labels(runs)
    comparisons = [compare(runs[0], other) for other in runs[1:]]
    (out / "results.json").write_text(
        json.dumps({"runs": runs, "comparisons": comparisons}, indent=1)
    )
    figures = draw_all(runs, out)
    page = out / "report.html"
    page.write_text(_html(runs, comparisons, figures))
    return page


def _html(runs: Sequence[Run], comparisons: list[dict[str, Any]], figures: dict[str, str]) -> str:
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>stoker bench</title><style>",
        "body{font-family:system-ui,sans-serif;max-width:1250px;margin:2em auto;color:#222}",
        "table{border-collapse:collapse;margin:1em 0;font-size:14px}",
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}",
        "th{background:#f2f2f2}.warn{color:#b35900}img{max-width:100%}",
        ".head{font-size:1.15em;background:#f6f8fa;padding:.6em 1em;border-radius:6px}",
        "</style></head><body><h1>stoker bench</h1>",
    ]
    parts += [f"<p class='head'>{e(headline(run))}</p>" for run in runs]
    for c in comparisons:
        s, b = e(c["subject"]), e(c["baseline"])
        parts.append(f"<h2>{s} against {b}</h2>")
        parts.append(
            f"<p class='head'>peak throughput {s} / {b}: <b>{_x(c['throughput_ratio'])}</b></p>"
        )
        parts.append(
            f"<table><tr><th>level</th><th>throughput {s} / {b}</th><th>p99 {b} / {s}</th></tr>"
        )
        for lv in c["levels"]:
            parts.append(
                f"<tr><td>{e(lv['subject'])}</td><td>{_x(lv['throughput_ratio'])}</td>"
                f"<td>{_x(lv['p99_ratio'])}</td></tr>"
            )
        parts.append("</table><p>Above 1, the first is better.</p>")
    for title, name in figures.items():
        parts.append(f"<h2>{e(title)}</h2><img src='{e(name)}' alt='{e(title)}'>")
    for run in runs:
        parts += _run_section(run)
    parts.append(
        "<h2>Reading this report</h2><p>Closed-loop levels (c=N) keep N requests in flight; "
        "open-loop levels send Poisson arrivals at a fixed rate and time each request from when "
        "it was due, so a stalled server shows as latency. Percentiles come from a log-linear "
        "histogram (8 buckets per power of two): each is the upper edge of its bucket, at most "
        "12.5% above the true value. The orchestration share is 1 - compute / total of the "
        "server's Server-Timing: the share of its latency that is not the model running. The "
        "warm-up of every level is not counted.</p></body></html>"
    )
    return "\n".join(parts)


_COLUMNS = (
    "level",
    "loop",
    "req/s",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "p99.9 ms",
    "max ms",
    "errors",
    "orchestration share",
    "generator CPU",
    "machine CPU",
    "GPU util",
    "GPU memory",
)


def _run_section(run: Run) -> list[str]:
    e = html.escape
    machine = ", ".join(f"{k} {v}" for k, v in run["machine"].items())
    plan = run["plan"]
    images = run["images"]
    # From the levels, not the plan: one thread drives the engine whatever --gen-threads says.
    threads = run["levels"][0]["generator"]["threads"]
    parts = [
        f"<h2>{e(run['label'])}</h2><p>{e(run['description'])}<br>started {e(run['started'])}; "
        f"machine: {e(machine)}<br>{images['count']} image(s) ({e(images['source'])}), "
        f"{images['per_request']} per request; {plan['seconds']:g} s per level after "
        f"{plan['warmup_s']:g} s of warm-up; {threads} generator thread(s)</p>",
        "<table><tr>" + "".join(f"<th>{c}</th>" for c in _COLUMNS) + "</tr>",
    ]
    for lv in run["levels"]:
        q = lv["latency_ms"]
        m = lv["machine"]
        share = lv["orchestration_share"]
        errors = ", ".join(f"{k}: {v}" for k, v in lv["errors"].items()) or "0"
        mem = m.get("gpu_mem_mib")
        cells = [
            e(lv["name"]),
            lv["mode"],
            f"{lv['throughput']:.1f}",
            *(f"{q[k]:.2f}" for k in ("p50", "p90", "p99", "p99.9", "max")),
            e(errors),
            "-" if share is None else f"{share:.1%}",
            f"{lv['generator']['cpu_cores']:.2f} cores",
            f"{m['host_cores']:.2f} cores" if "host_cores" in m else "-",
            f"{m['gpu_util_pct']:.0f}%" if "gpu_util_pct" in m else "-",
            f"{mem:.0f} MiB" if mem is not None else "-",
        ]
        parts.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    parts.append("</table>")
    warnings = [f"{lv['name']}: {w}" for lv in run["levels"] for w in lv["warnings"]]
    parts += [f"<p class='warn'>warning: {e(w)}</p>" for w in warnings]
    return parts
