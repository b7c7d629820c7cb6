"""The report's plots, drawn with matplotlib's Agg backend (no display needed) as PNG files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

from stoker.bench import _stats

Run = dict[str, Any]

_STAGE_COLORS = {
    "queue": "#9ecae1",
    "batch": "#6baed6",
    "preprocess": "#fd8d3c",
    "h2d": "#fdd0a2",
    "compute": "#31a354",
    "postprocess": "#bcbddc",
    "other in server": "#d9d9d9",
    "outside server": "#636363",
}
_RUN_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")


def draw_all(runs: Sequence[Run], out: Path) -> dict[str, str]:
    """Every plot that has data, as {title: file name inside ``out``}."""
    files = {
        "Latency against throughput": _save(_latency_throughput(runs), out, "latency.png"),
        "Latency percentiles": _save(_percentiles(runs), out, "percentiles.png"),
        "Where the time goes, per load level": _save(_stages(runs), out, "stages.png"),
        "CPU and GPU use": _save(_resources(runs), out, "resources.png"),
    }
    if any(lv["errors"] for run in runs for lv in run["levels"]):
        files["Errors by status"] = _save(_errors(runs), out, "errors.png")
    return files


def stage_segments(level: dict[str, Any]) -> dict[str, float]:
    """Mean milliseconds per stage of a level, plus what the stages leave out of the server's
    total and what the client saw beyond the server's total (network, parsing, queueing in the
    socket); empty when the server sends no usable `Server-Timing`."""
    stages = level["stages_ms"]
    if "total" not in stages:
        return {}
    parts = {s: stages[s] for s in _stats.STAGES if s in stages}
    parts["other in server"] = max(0.0, stages["total"] - sum(parts.values()))
    parts["outside server"] = max(0.0, level["latency_ms"]["mean"] - stages["total"])
    return parts


def _save(fig: Figure, out: Path, name: str) -> str:
    fig.savefig(out / name, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return name


def _log_ms(ax: Any) -> None:
    ax.set_yscale("log")
    # Plain milliseconds at 1-2-5 steps read faster than powers of ten.
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    fmt = ScalarFormatter()
    fmt.set_scientific(False)
    ax.yaxis.set_major_formatter(fmt)
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.grid(True, which="both", alpha=0.3)


def _latency_throughput(runs: Sequence[Run]) -> Figure:
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for run, color in zip(runs, _RUN_COLORS, strict=False):
        for mode, marker in (("closed", "o"), ("open", "s")):
            levels = [lv for lv in run["levels"] if lv["mode"] == mode and lv["ok"]]
            if not levels:
                continue
            x = [lv["throughput"] for lv in levels]
            for q, style in (("p50", ":"), ("p99", "-")):
                y = [lv["latency_ms"][q] for lv in levels]
                label = f"{run['label']} {q} ({mode} loop)"
                ax.plot(x, y, style, marker=marker, color=color, label=label)
    ax.set_xlabel("throughput (successful requests/s)")
    ax.set_ylabel("latency (ms, log scale)")
    _log_ms(ax)
    ax.legend(fontsize=8)
    ax.set_title("Latency against throughput: lower and further right is better")
    return fig


def _percentiles(runs: Sequence[Run]) -> Figure:
    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4.2), squeeze=False)
    ticks = [0.5, 0.9, 0.99, 0.999, 0.9999]
    for ax, run in zip(axes[0], runs, strict=True):
        for lv in run["levels"]:
            h = _stats.from_json(lv["latency_histogram"])
            if not h.count:
                continue
            qs, ms = _stats.percentile_spectrum(h)
            # Bucket i holds the quantiles from the previous bucket's edge up to its own; the last
            # ends at quantile 1, which lies off a 1 / (1 - q) axis, so its step runs to the edge.
            x = [1.0] + [1 / (1 - q) for q in qs[:-1]]
            ax.step([*x, 1e4], [*ms, ms[-1]], where="post", label=lv["name"])
        ax.set_xscale("log")
        labels = [f"{100 * t:g}%" for t in ticks]
        ax.set_xticks([1 / (1 - t) for t in ticks], labels)
        ax.set_xlim(1, 1e4)
        _log_ms(ax)
        ax.set_xlabel("percentile")
        ax.set_ylabel("latency (ms, log scale)")
        ax.set_title(run["label"])
        ax.legend(fontsize=7)
    fig.suptitle("Latency by percentile (the whole histogram, tail to the right)")
    return fig


def _stages(runs: Sequence[Run]) -> Figure:
    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4.2), squeeze=False)
    for ax, run in zip(axes[0], runs, strict=True):
        names = [lv["name"] for lv in run["levels"]]
        segments = [stage_segments(lv) for lv in run["levels"]]
        if not any(segments):
            ax.text(
                0.5, 0.5, "no Server-Timing in the answers", ha="center", transform=ax.transAxes
            )
            ax.set_axis_off()
        bottom = [0.0] * len(names)
        for stage, color in _STAGE_COLORS.items():
            heights = [seg.get(stage, 0.0) for seg in segments]
            if any(heights):
                ax.bar(names, heights, bottom=bottom, color=color, label=stage)
                bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        for i, lv in enumerate(run["levels"]):
            if lv["orchestration_share"] is not None:
                text = f"{lv['orchestration_share']:.0%}"
                ax.annotate(text, (i, bottom[i]), ha="center", va="bottom", fontsize=8)
        ax.set_ylabel("mean latency (ms)")
        ax.set_title(f"{run['label']} (labels: orchestration share)")
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        if any(segments):
            ax.legend(fontsize=7)
    fig.suptitle("Mean time per stage, from Server-Timing")
    return fig


def _resources(runs: Sequence[Run]) -> Figure:
    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4.0), squeeze=False)
    for ax, run in zip(axes[0], runs, strict=True):
        levels = run["levels"]
        x = range(len(levels))
        host = [lv["machine"].get("host_cores", 0.0) for lv in levels]
        gen = [lv["generator"]["cpu_cores"] for lv in levels]
        ax.bar([i - 0.2 for i in x], host, width=0.4, label="machine CPU (cores)")
        ax.bar([i + 0.2 for i in x], gen, width=0.4, label="load generator CPU (cores)")
        ax.set_xticks(list(x), [lv["name"] for lv in levels], rotation=30, fontsize=8)
        ax.set_ylabel("CPU cores busy")
        ax.set_ylim(0, max(run["machine"].get("cpus") or 1, *host, *gen) * 1.05)
        if any("gpu_util_pct" in lv["machine"] for lv in levels):
            gpu = ax.twinx()
            util = [lv["machine"].get("gpu_util_pct", 0.0) for lv in levels]
            mem = [
                100 * lv["machine"].get("gpu_mem_mib", 0.0) / lv["machine"]["gpu_mem_total_mib"]
                if lv["machine"].get("gpu_mem_total_mib")
                else 0.0
                for lv in levels
            ]
            gpu.plot(list(x), util, "o-", color="#31a354", label="GPU utilization (%)")
            gpu.plot(list(x), mem, "s--", color="#756bb1", label="GPU memory used (%)")
            gpu.set_ylim(0, 105)
            gpu.set_ylabel("GPU (%)")
            gpu.legend(fontsize=7, loc="upper right")
        ax.legend(fontsize=7, loc="upper left")
        ax.set_title(run["label"])
    fig.suptitle("Machine use per load level")
    return fig


def _errors(runs: Sequence[Run]) -> Figure:
    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4.0), squeeze=False)
    for ax, run in zip(axes[0], runs, strict=True):
        names = [lv["name"] for lv in run["levels"]]
        kinds = sorted({k for lv in run["levels"] for k in lv["errors"]})
        bottom = [0] * len(names)
        for kind in kinds:
            counts = [lv["errors"].get(kind, 0) for lv in run["levels"]]
            ax.bar(names, counts, bottom=bottom, label=kind)
            bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
        ax.set_ylabel("failed requests")
        ax.set_title(run["label"])
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        if kinds:
            ax.legend(fontsize=7, title="status")
    fig.suptitle("Errors by status per load level")
    return fig
