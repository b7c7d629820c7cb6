"""Per-stage latency accounting: native histograms per stage and per-request timings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from stoker import _native

__all__ = ["STAGES", "HistogramSnapshot", "StageStats", "Timings"]

STAGES: tuple[str, ...] = ("queue", "batch", "preprocess", "h2d", "compute", "postprocess", "total")
"""Stages of a request, in order; ``total`` runs from submission to the answer."""

_SHARED_STAGES = ("batch", "preprocess", "h2d", "compute", "postprocess")
_UPPER_BOUNDS: npt.NDArray[np.uint64] = np.asarray(_native.Histogram.upper_bounds())


class Timings(NamedTuple):
    """Microseconds one request spent in each stage, and the size of the batch it ran in.

    ``queue``: waiting in the batcher; ``batch``: from the batch's hand-out to preprocessing, plus
    waiting for the device loop; ``preprocess``: the batch's decode/resize (CPU, and GPU decode of
    deferred images); ``h2d`` and ``compute``: CUDA event times on GPU (host clock on CPU);
    ``postprocess``: the postprocess callable; ``total``: submission to answer. On a GPU the
    stages do not add up to ``total``: the rest is time a launched batch waited on the device
    behind earlier ones.
    """

    queue: float
    batch: float
    preprocess: float
    h2d: float
    compute: float
    postprocess: float
    total: float
    batch_size: int

    def server_timing(self) -> str:
        """The stages as an HTTP ``Server-Timing`` header value (durations in milliseconds)."""
        return ", ".join(f"{name};dur={getattr(self, name) / 1000:.3f}" for name in STAGES)


@dataclass(frozen=True)
class HistogramSnapshot:
    """Counts per bucket; ``upper_bounds[i]`` is the largest value (µs) bucket ``i`` holds."""

    counts: npt.NDArray[np.uint64]
    count: int
    sum: int
    max: int

    @property
    def upper_bounds(self) -> npt.NDArray[np.uint64]:
        return _UPPER_BOUNDS

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else 0.0

    def quantile(self, q: float) -> float:
        """Upper edge of the bucket holding the q-quantile (within 12.5% of the true value)."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be in [0, 1], got {q}")
        if self.count == 0:
            return 0.0
        rank = max(1, int(np.ceil(q * self.count)))
        bucket = int(np.searchsorted(np.cumsum(self.counts), rank))
        return float(min(int(_UPPER_BOUNDS[bucket]), self.max))


class StageStats:
    """One native histogram per stage plus one of batch sizes; recording never takes a lock."""

    def __init__(self) -> None:
        self._stages = {name: _native.Histogram() for name in STAGES}
        self._batch_sizes = _native.Histogram()
        self._batch_compute = _native.Histogram()

    def record_answers(
        self,
        queue_us: npt.NDArray[np.int64],
        total_us: npt.NDArray[np.int64],
        shared: Sequence[float],
        compute_us: float,
    ) -> None:
        """One batch's requests: their own queue and total times, and the stages they share."""
        n = len(queue_us)
        self._stages["queue"].record_many(queue_us)
        self._stages["total"].record_many(total_us)
        for name, value in zip(_SHARED_STAGES, shared, strict=True):
            self._stages[name].record_many(np.full(n, int(value), dtype=np.int64))
        self._batch_sizes.record(n)
        self._batch_compute.record(int(compute_us))

    def snapshot(self) -> dict[str, HistogramSnapshot]:
        """Every stage's histogram (one entry per request), plus ``batch_size`` (in items) and
        ``batch_compute`` (µs, one entry per batch: its sum is the device's busy time)."""
        out = {name: _snapshot(h) for name, h in self._stages.items()}
        out["batch_size"] = _snapshot(self._batch_sizes)
        out["batch_compute"] = _snapshot(self._batch_compute)
        return out

    def reset(self) -> None:
        for h in self._stages.values():
            h.reset()
        self._batch_sizes.reset()
        self._batch_compute.reset()


def _snapshot(h: _native.Histogram) -> HistogramSnapshot:
    counts, count, total, peak = h.snapshot()
    return HistogramSnapshot(np.asarray(counts), int(count), int(total), int(peak))
