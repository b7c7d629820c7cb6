"""`stoker bench`: drive KServe v2 servers with stoker's native load generator, or stoker's engine
in this process with asyncio callers, and report.

Each target (a stoker server started here, stoker's engine, a server started from a command, or
one at a URL) is swept in turn, alone on the machine: closed-loop concurrency levels, then
open-loop rates. Every run is saved as JSON and drawn into ``report.html`` with PNG plots; two
runs make a side-by-side report with throughput and p99 ratios.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from stoker.bench._engine_target import EngineTarget, engine_target
from stoker.bench._report import (
    compare,
    comparison_lines,
    distinct_labels,
    headline,
    load_runs,
    write,
)
from stoker.bench._run import Driven, Plan, run
from stoker.bench._targets import (
    Endpoint,
    StokerSettings,
    command_target,
    embeddings_request,
    load_images,
    stoker_target,
    url_target,
)
from stoker.bench._text import TextSettings, load_sentences, text_target

__all__ = [
    "Driven",
    "Endpoint",
    "EngineTarget",
    "Plan",
    "StokerSettings",
    "Target",
    "TextSettings",
    "bench",
    "command_target",
    "compare",
    "embeddings_request",
    "engine_target",
    "load_images",
    "load_runs",
    "load_sentences",
    "report",
    "stoker_target",
    "text_target",
    "url_target",
]

Target = Callable[[], contextlib.AbstractContextManager[Driven]]
"""Starts a server (or an engine) when called and stops it when its context ends."""


def bench(
    targets: Sequence[Target],
    plan: Plan,
    images: Sequence[bytes],
    out: Path,
    *,
    images_source: str,
    per_request: int = 1,
    progress: bool = True,
    echo: TextIO | None = None,
) -> tuple[list[dict[str, Any]], Path]:
    """Sweeps every target in turn, one at a time, and writes each run's JSON (named after its
    label) and the report of all of them into ``out``; returns the runs and the report's path."""
    if not images or per_request < 1:
        raise ValueError("give at least one image and at least one image per request")
    out.mkdir(parents=True, exist_ok=True)
    n = len(images)
    info = {
        "count": n,
        "per_request": per_request,
        "source": images_source,
        "mean_bytes": round(sum(map(len, images)) / n),
    }
    runs = []
    for target in targets:
        with target() as endpoint:
            groups = [
                [images[(i + j) % n] for j in range(per_request)]
                for i in range(0, n * per_request, per_request)
            ]
            requests = endpoint.requests(groups)
            doc = run(
                endpoint,
                requests,
                plan,
                images=info,
                progress=sys.stderr if progress and sys.stderr.isatty() else None,
                echo=echo,
            )
        runs.append(doc)
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in endpoint.label)
        (out / f"{name}.json").write_text(json.dumps(doc, indent=1))
    return runs, report(runs, out, echo=echo)


def report(runs: Sequence[dict[str, Any]], out: Path, *, echo: TextIO | None = None) -> Path:
    """Writes the report of ``runs`` into ``out`` and prints its headline figures."""
    echo = echo or sys.stdout  # looked up per call: callers may redirect sys.stdout
    runs = distinct_labels(runs)
    page = write(runs, out)
    echo.write("\n")
    for r in runs:
        echo.write(headline(r) + "\n")
    for other in runs[1:]:
        echo.write("\n".join(comparison_lines(compare(runs[0], other))) + "\n")
    echo.write(f"report: {page}\n")
    return page
