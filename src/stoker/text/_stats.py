"""Per-request timings and per-stage histograms of the text engine."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from stoker import _native
from stoker._stats import HistogramSnapshot

__all__ = ["TEXT_STAGES", "TextStats", "TextTimings"]

TEXT_STAGES: tuple[str, ...] = ("queue", "tokenize", "batch", "compute", "postprocess", "total")
"""Stages of a text request, in order; ``total`` runs from submission to the answer."""


class TextTimings(NamedTuple):
    """Microseconds one request spent in each stage, its batch's size and its token count.

    ``tokenize``: this request's tokenization, in the caller's thread before it queues;
    ``queue``: waiting in its length bucket; ``batch``: padding the batch into tensors and moving
    them to the device; ``compute``: the encoder (CUDA event time on a GPU, host clock on the
    CPU); ``postprocess``: the batch's embeddings to host rows; ``tokens``: the token count of the
    input before any truncation, special tokens included.
    """

    queue: float
    tokenize: float
    batch: float
    compute: float
    postprocess: float
    total: float
    batch_size: int
    tokens: int

    def server_timing(self) -> str:
        """The stages as an HTTP ``Server-Timing`` header value (durations in milliseconds)."""
        return ", ".join(f"{name};dur={getattr(self, name) / 1000:.3f}" for name in TEXT_STAGES)


class TextStats:
    """A native histogram per stage, of batch sizes and of per-batch compute; lock-free."""

    def __init__(self) -> None:
        self._stages = {name: _native.Histogram() for name in TEXT_STAGES}
        self._batch_sizes = _native.Histogram()
        self._batch_compute = _native.Histogram()
        self._never = _native.Histogram()

    def record(self, per_request: dict[str, npt.NDArray[np.int64]], compute_us: float) -> None:
        for name, values in per_request.items():
            self._stages[name].record_many(values)
        self._batch_sizes.record(len(per_request["total"]))
        self._batch_compute.record(int(compute_us))

    def snapshot(self) -> dict[str, HistogramSnapshot]:
        """Every stage, ``batch_size`` and ``batch_compute``; and, so that consumers of the image
        engine's stages read text engines too, ``preprocess`` (tokenization) and an empty ``h2d``
        (the copy is part of ``batch``)."""
        out = {name: _snapshot(h) for name, h in self._stages.items()}
        out["preprocess"] = out["tokenize"]
        out["h2d"] = _snapshot(self._never)
        out["batch_size"] = _snapshot(self._batch_sizes)
        out["batch_compute"] = _snapshot(self._batch_compute)
        return out

    def reset(self) -> None:
        for h in (*self._stages.values(), self._batch_sizes, self._batch_compute):
            h.reset()


def _snapshot(h: _native.Histogram) -> HistogramSnapshot:
    counts, count, total, peak = h.snapshot()
    return HistogramSnapshot(np.asarray(counts), int(count), int(total), int(peak))
