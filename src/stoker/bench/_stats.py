"""Figures from the load generator's histograms: quantiles, stage means, the orchestration share.

Histograms travel through JSON sparsely (bucket index to count), so a saved run keeps its whole
latency distribution and a report drawn later needs nothing but the file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from stoker import _native
from stoker._stats import HistogramSnapshot

QUANTILES: dict[str, float] = {"p50": 0.5, "p90": 0.9, "p99": 0.99, "p99.9": 0.999}
"""The latency quantiles every level reports, by their names in results and report."""

STAGES: tuple[str, ...] = ("queue", "batch", "preprocess", "h2d", "compute", "postprocess")
"""The stages of stoker's `Server-Timing` header that make up its ``total``, in request order."""

_EDGES = np.asarray(_native.Histogram.upper_bounds())

RawSnapshot = Sequence[Any]
"""A histogram as the native side hands it over: (counts, count, sum, max), values in µs."""


def snapshot(raw: RawSnapshot) -> HistogramSnapshot:
    counts, count, total, peak = raw
    return HistogramSnapshot(np.asarray(counts, dtype=np.uint64), int(count), int(total), int(peak))


def to_json(h: HistogramSnapshot) -> dict[str, Any]:
    nonzero = np.flatnonzero(h.counts)
    return {
        "buckets": {str(int(i)): int(h.counts[i]) for i in nonzero},
        "count": h.count,
        "sum_us": h.sum,
        "max_us": h.max,
    }


def from_json(doc: Mapping[str, Any]) -> HistogramSnapshot:
    counts = np.zeros(len(_EDGES), dtype=np.uint64)
    for index, n in doc["buckets"].items():
        counts[int(index)] = n
    return HistogramSnapshot(counts, int(doc["count"]), int(doc["sum_us"]), int(doc["max_us"]))


def quantiles_ms(h: HistogramSnapshot) -> dict[str, float]:
    """The named quantiles, the mean and the maximum, in milliseconds."""
    out = {name: h.quantile(q) / 1000 for name, q in QUANTILES.items()}
    out["mean"] = h.mean / 1000
    out["max"] = h.max / 1000
    return out


def percentile_spectrum(h: HistogramSnapshot) -> tuple[list[float], list[float]]:
    """(quantile, latency in ms) at each bucket edge the run reached: the data of an HDR-style
    plot, where latency is drawn against 1 / (1 - quantile) so the tail gets room."""
    cumulative = np.cumsum(h.counts)
    qs: list[float] = []
    ms: list[float] = []
    for i in np.flatnonzero(h.counts):
        qs.append(float(cumulative[i]) / h.count)
        ms.append(min(int(_EDGES[i]), h.max) / 1000)
    return qs, ms


def stage_means_ms(server_timing: Mapping[str, HistogramSnapshot]) -> dict[str, float]:
    """Mean of every `Server-Timing` metric the server sent, in milliseconds."""
    return {name: h.mean / 1000 for name, h in server_timing.items() if h.count}


def orchestration_share(server_timing: Mapping[str, HistogramSnapshot]) -> float | None:
    """1 - compute / total over the level's requests: the share of the server's latency that is
    not the model running. None when the server does not report both stages."""
    compute, total = server_timing.get("compute"), server_timing.get("total")
    if compute is None or total is None or not total.sum:
        return None
    return max(0.0, 1.0 - compute.sum / total.sum)
