"""Prometheus metrics for the server: request counters, and the engines' histograms at scrape time.

The engines keep their own lock-free native histograms (see ``stoker._stats``); nothing here runs on
the request path except one counter increment. Each scrape reads every engine's snapshots and
converts them into Prometheus families, so the cost of a scrape does not grow with traffic.

Generation requests have series of their own (``_gen_metrics``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    generate_latest,
)
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from stoker import _native
from stoker._stats import STAGES, HistogramSnapshot
from stoker.server._gen_metrics import GenerationMetrics, GenerationSeries, GeneratorStatsSource

__all__ = ["DeviceSource", "GenerationMetrics", "ServerMetrics"]

StatsSource = Callable[[], Mapping[str, HistogramSnapshot]]
CountsSource = Callable[[], Iterable[tuple[str, str, int, int]]]
DepthSource = Callable[[], int]
DeviceSource = tuple[str, StatsSource, DepthSource]
"""One engine of a model: its device's label, its ``stats`` and its queue depth."""

_US_PER_S = 1_000_000.0
_UPPER_BOUNDS: npt.NDArray[np.uint64] = np.asarray(_native.Histogram.upper_bounds())


def _edges(exponents: range) -> tuple[npt.NDArray[np.intp], list[int]]:
    """Native bucket indices ending at ``2**k - 1`` for each k, and those values.

    Checked against the native table rather than assumed, since only bucket boundaries give exact
    cumulative counts: with 8 log-linear buckets per power of two, every 8th bucket ends there.
    """
    uppers = [(1 << k) - 1 for k in exponents]
    index = np.searchsorted(_UPPER_BOUNDS, np.asarray(uppers, dtype=np.uint64))
    if (index >= len(_UPPER_BOUNDS)).any() or (_UPPER_BOUNDS[index] != uppers).any():
        raise RuntimeError("native histogram buckets no longer end just below powers of two")
    return index.astype(np.intp), uppers


# Latencies: 16 µs to 2**26 µs (about 67 s). Recorded values are truncated microseconds, so a
# value at most 2**k - 1 stands for a time below 2**k µs: ``le = 2**k µs`` is its true edge.
_STAGE_INDEX, _STAGE_UPPERS = _edges(range(4, 27))
_STAGE_LE = [str((u + 1) / _US_PER_S) for u in _STAGE_UPPERS]
# Batch sizes are exact integers, and above 8 no native bucket ends at a power of two (32 shares
# one with 33..35), so the exact edges are "fewer than 2**k items": 1, 3, 7, ... 8191.
_BATCH_INDEX, _BATCH_UPPERS = _edges(range(1, 14))
_BATCH_LE = [str(float(u)) for u in _BATCH_UPPERS]
# Powers of two, as above: about 1 ms to 64 s until the first token, 0.25 ms to 4 s between tokens.


def _buckets(
    snap: HistogramSnapshot, index: npt.NDArray[np.intp], les: list[str]
) -> list[tuple[str, float]]:
    """Cumulative counts at the chosen native boundaries, then ``+Inf`` holding every value."""
    cumulative = np.cumsum(snap.counts, dtype=np.uint64)[index]
    out = [(le, float(c)) for le, c in zip(les, cumulative.tolist(), strict=True)]
    out.append(("+Inf", float(snap.count)))
    return out


def _orchestration_share(stats: Mapping[str, HistogramSnapshot]) -> float:
    """Share of summed request latency outside model compute; 0 before any request finished."""
    total = stats["total"].sum
    if total <= 0:
        return 0.0
    # Truncation to whole microseconds can put compute a hair above total for tiny requests.
    return min(1.0, max(0.0, 1.0 - stats["compute"].sum / total))


@dataclass(frozen=True)
class _Source:
    stats: StatsSource
    queue_depth: DepthSource
    devices: tuple[DeviceSource, ...]


class _EngineCollector:
    """One family per metric across every model: the registry refuses a family name twice."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sources: dict[str, _Source] = {}

    def add(self, model: str, source: _Source) -> None:
        with self._lock:
            if model in self._sources:
                raise ValueError(f"model {model!r} already has an engine registered")
            self._sources[model] = source

    def remove(self, model: str) -> None:
        with self._lock:
            if self._sources.pop(model, None) is None:
                raise KeyError(model)

    def describe(self) -> Iterable[Metric]:
        # Without describe() the registry would run a full collect() just to learn the names.
        return _Families().all()

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            sources = list(self._sources.items())
        f = _Families()
        for model, source in sources:
            stats = source.stats()
            for name in STAGES:
                snap = stats[name]
                buckets = _buckets(snap, _STAGE_INDEX, _STAGE_LE)
                f.stage.add_metric([model, name], buckets, snap.sum / _US_PER_S)
            sizes = stats["batch_size"]
            f.batch.add_metric([model], _buckets(sizes, _BATCH_INDEX, _BATCH_LE), float(sizes.sum))
            f.busy.add_metric([model], stats["batch_compute"].sum / _US_PER_S)
            f.depth.add_metric([model], float(source.queue_depth()))
            f.share.add_metric([model], _orchestration_share(stats))
            for device, device_stats, depth in source.devices:
                f.add_device([model, device], device_stats(), depth())
        return f.all()


class _Families:
    """A scrape's families, empty until filled."""

    def __init__(self) -> None:
        self.stage = HistogramMetricFamily(
            "stoker_stage_seconds",
            "Time requests spent in each engine stage; total runs from submission to answer.",
            labels=["model", "stage"],
        )
        self.batch = HistogramMetricFamily(
            "stoker_batch_size", "Requests per batch run on the model.", labels=["model"]
        )
        self.busy = CounterMetricFamily(
            "stoker_device_busy_seconds",
            "Summed model compute time of every batch.",
            labels=["model"],
        )
        self.depth = GaugeMetricFamily(
            "stoker_queue_depth", "Requests queued and not yet batched.", labels=["model"]
        )
        self.share = GaugeMetricFamily(
            "stoker_orchestration_share",
            "Share of summed request latency not spent in model compute.",
            labels=["model"],
        )
        # Per engine of a model, one per device: how the router spread the model's load.
        on = ["model", "device"]
        self.d_requests = CounterMetricFamily(
            "stoker_replica_requests", "Requests a device's engine answered.", labels=on
        )
        self.d_latency = HistogramMetricFamily(
            "stoker_replica_latency_seconds",
            "Time from submission to answer of requests a device's engine answered.",
            labels=on,
        )
        self.d_batch = HistogramMetricFamily(
            "stoker_replica_batch_size", "Requests per batch on a device.", labels=on
        )
        self.d_busy = CounterMetricFamily(
            "stoker_replica_busy_seconds", "Summed model compute time on a device.", labels=on
        )
        self.d_depth = GaugeMetricFamily(
            "stoker_replica_queue_depth",
            "Requests queued for a device, not yet batched.",
            labels=on,
        )

    def add_device(
        self, labels: list[str], stats: Mapping[str, HistogramSnapshot], depth: int
    ) -> None:
        total, sizes = stats["total"], stats["batch_size"]
        self.d_requests.add_metric(labels, float(total.count))
        buckets = _buckets(total, _STAGE_INDEX, _STAGE_LE)
        self.d_latency.add_metric(labels, buckets, total.sum / _US_PER_S)
        self.d_batch.add_metric(labels, _buckets(sizes, _BATCH_INDEX, _BATCH_LE), float(sizes.sum))
        self.d_busy.add_metric(labels, stats["batch_compute"].sum / _US_PER_S)
        self.d_depth.add_metric(labels, float(depth))

    def all(self) -> list[Metric]:
        return [
            *(self.stage, self.batch, self.busy, self.depth, self.share),
            *(self.d_requests, self.d_latency, self.d_batch, self.d_busy, self.d_depth),
        ]


class ServerMetrics:
    """The server's metrics in a registry of its own, so several servers never share series."""

    def __init__(self) -> None:
        self._registry = CollectorRegistry()
        self._requests = Counter(
            "stoker_requests",
            "Requests answered, by model, endpoint and HTTP status code.",
            ["model", "endpoint", "code"],
            registry=self._registry,
        )
        # Counter.labels() takes a lock and formats strings; the hot path should only increment.
        self._children: dict[tuple[str, str, int], Counter] = {}
        self._engines = _EngineCollector()
        self._registry.register(self._engines)
        self._generation = GenerationSeries(self._registry)
        self._native: list[CountsSource] = []
        self._synced: dict[tuple[str, str, int], int] = {}
        self._sync_lock = threading.Lock()

    @property
    def registry(self) -> CollectorRegistry:
        return self._registry

    def observe(self, model: str, endpoint: str, code: int) -> None:
        """Count one answered request."""
        key = (model, endpoint, code)
        child = self._children.get(key)
        if child is None:
            # Racing threads may both get here; labels() hands both the same child.
            child = self._requests.labels(model, endpoint, str(code))
            self._children[key] = child
        child.inc()

    def add_engine(
        self,
        model: str,
        stats: StatsSource,
        queue_depth: DepthSource,
        devices: Iterable[DeviceSource] = (),
    ) -> None:
        """Export a model's engine; ``stats`` and ``queue_depth`` are only called at scrape time.

        ``stats`` must map each stage of ``STAGES`` plus ``batch_size`` and ``batch_compute`` to a
        snapshot, as ``Engine.stats`` does: for a model on several devices, their sum. Each of
        ``devices`` (one engine's, in the same form) is exported with a ``device`` label too.
        Raises ValueError if ``model`` is already exported.
        """
        self._engines.add(model, _Source(stats, queue_depth, tuple(devices)))

    def add_generator(self, model: str, stats: GeneratorStatsSource) -> GenerationMetrics:
        """Export a generator: ``stats`` is called at scrape time; the request path records
        through the returned object. Raises ValueError if ``model`` is already exported."""
        return self._generation.add(model, stats)

    def remove_engine(self, model: str) -> None:
        """Stop exporting a model's engine (its request counters stay). KeyError if unknown."""
        self._engines.remove(model)

    def add_native_counts(self, source: CountsSource) -> None:
        """Requests answered without Python: ``source`` gives running totals as (model,
        endpoint, code, count); they join the request counter at each scrape."""
        self._native.append(source)

    def exposition(self) -> tuple[bytes, str]:
        """The scrape body in Prometheus text format, and its Content-Type."""
        with self._sync_lock:
            for source in self._native:
                for model, endpoint, code, total in source():
                    key = (model, endpoint, code)
                    delta = total - self._synced.get(key, 0)
                    if delta > 0:
                        self._requests.labels(model, endpoint, str(code)).inc(delta)
                        self._synced[key] = total
        return generate_latest(self._registry), CONTENT_TYPE_LATEST
