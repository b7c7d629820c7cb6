"""What the benchmarks print and save: the machine, the libraries, markdown tables, the bars the
project measures itself against, and the JSON record."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import statistics
from collections.abc import Sequence
from typing import Any

import torch
from _pipelines import STOKER_VARIANTS

# The bars the project measures itself against: (baseline key, image set, stoker ÷ baseline).
SPEED_BARS: tuple[tuple[str, str, float], ...] = (
    ("torchvision", "small", 1.2),
    ("torchvision", "large", 2.0),
    ("pil", "small", 2.5),
    ("pil-draft", "large", 1.5),
)
EFFICIENCY_BAR = 0.8

# --------------------------------------------------------------------------------------------
# Machine description.


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for dist in (
        "stoker",
        "torch",
        "torchvision",
        "numpy",
        "pillow",
        "opencv-python-headless",
        "opencv-python",
        "simplejpeg",
    ):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    with contextlib.suppress(ImportError):
        from PIL import features

        versions["pillow libjpeg_turbo"] = features.version("libjpeg_turbo")
    return versions


def machine_info() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "cuda_available": torch.cuda.is_available(),
    }


# --------------------------------------------------------------------------------------------
# Report.


def fmt_rate(x: float | None) -> str:
    return "-" if x is None else f"{x:,.1f}"


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def say(msg: str) -> None:
    print(msg, flush=True)


def write_json(path: str, results: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    say(f"\nwrote {path}")


def report(results: dict[str, Any], sets: Sequence[str]) -> None:
    cfg = results["config"]
    say("\n# Results")
    say(
        f"\n{results['machine']['cpu_model']}, {results['machine']['usable_cpus']} CPUs; "
        f"per core = one thread each, median of {cfg['rounds']} interleaved rounds; "
        "bars: median of the per-round ratios (their range in brackets)."
    )
    for set_name in sets:
        per_core = results["per_core"][set_name]
        base = per_core["stoker"]["median"]
        rows = []
        for key, r in per_core.items():
            c = results["checks"][set_name].get(key, {})
            diff = "-"
            if c.get("shape_ok"):
                diff = f"{c['mean_abs']:.2f} / {c['max_abs']:.1f}"
                if c["against"] != "stoker":
                    diff += f" (vs {per_core.get(c['against'], {}).get('label', c['against'])})"
            rows.append([r["label"], fmt_rate(r["median"]), fmt_ratio(r["median"] / base), diff])
        say(f"\n### {set_name} images, per core\n")
        say(
            markdown_table(
                ["implementation", "img/s", "÷ stoker", "diff vs stoker, mean / max (0-255)"], rows
            )
        )
        all_core = results["all_core"][set_name]
        if all_core:
            say(f"\n### {set_name} images, all cores (stoker)\n")
            say(
                markdown_table(
                    [
                        "variant",
                        "1 thread img/s",
                        f"{cfg['allcore_threads']} threads img/s",
                        "efficiency",
                        f"cost of batch-{cfg['batch']} calls vs batch-{cfg['native_batch']}",
                    ],
                    [
                        [
                            per_core[k]["label"],
                            fmt_rate(a["single_thread"]),
                            fmt_rate(a["all_threads"]),
                            f"{a['efficiency']:.2f}",
                            f"{100 * a['python_overhead']:.1f}%",
                        ]
                        for k, a in all_core.items()
                    ],
                )
            )

    variants = list(STOKER_VARIANTS)
    labels = {None: "stoker", 1.0: "reduce_gap=1.0", 2.0: "reduce_gap=2.0"}
    rows = []
    bars: list[dict[str, Any]] = []
    for baseline, set_name, need in SPEED_BARS:
        per_core = results["per_core"].get(set_name, {})
        if baseline not in per_core:
            continue
        row = [f"stoker ÷ {baseline}, {set_name}", f">= {need:g}x"]
        for k in variants:
            if k in per_core:
                # Ratios within a round compare runs seconds apart, so machine drift between
                # rounds cancels; the bar takes their median and shows their range.
                per_round = [
                    a / b
                    for a, b in zip(per_core[k]["rates"], per_core[baseline]["rates"], strict=True)
                ]
                ratio = statistics.median(per_round)
                row.append(
                    f"{ratio:.2f}x {'pass' if ratio >= need else 'FAIL'} "
                    f"({min(per_round):.2f}-{max(per_round):.2f})"
                )
                bars.append(
                    {"bar": row[0], "need": need, "variant": k, "ratio": ratio, "ok": ratio >= need}
                )
            else:
                row.append("-")
        rows.append(row)
    for set_name in sets:
        all_core = results["all_core"].get(set_name, {})
        if not all_core:
            continue
        row = [f"all-core efficiency, {set_name}", f">= {EFFICIENCY_BAR:g}"]
        for k in variants:
            if k in all_core:
                eff = all_core[k]["efficiency"]
                row.append(f"{eff:.2f} {'pass' if eff >= EFFICIENCY_BAR else 'FAIL'}")
                bars.append(
                    {
                        "bar": row[0],
                        "need": EFFICIENCY_BAR,
                        "variant": k,
                        "ratio": eff,
                        "ok": eff >= EFFICIENCY_BAR,
                    }
                )
            else:
                row.append("-")
        rows.append(row)
    results["bars"] = bars
    if rows:
        say("\n### Bars (stoker column by stoker variant)\n")
        say(markdown_table(["bar", "need", *(labels[STOKER_VARIANTS[k]] for k in variants)], rows))
    missing = [b for b, s, _ in SPEED_BARS if s in sets and b not in results["per_core"][s]]
    if missing:
        say(f"\nbars not measured (baseline not run): {', '.join(sorted(set(missing)))}")
    for key, why in results["skipped"].items():
        say(f"skipped {key}: {why}")
