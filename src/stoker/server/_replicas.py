"""One model on several devices: an engine per device behind a least-loaded router.

Each engine keeps everything of its own (feeder, staging slots, pinned when on a GPU, CUDA
streams, device and completion threads, and a native thread pool); the router only picks, per
request, the engine with the fewest requests given to it and not yet answered (queued, in a
batch, or on the device), ties going round-robin. Joining the shortest queue sends more work to
a faster or less busy device without measuring speeds, and none to a stalled one while the others
have fewer requests outstanding.
"""

from __future__ import annotations

import asyncio
import copy
import os
import threading
from collections.abc import Callable, Mapping, Sequence

from stoker._answers import Waiter
from stoker._callers import CallerAPI, Priority
from stoker._engine import Engine
from stoker._errors import QueueFullError
from stoker._models import ModelLike, top_k
from stoker._preprocess import get_num_threads, set_num_threads
from stoker._runner import TORCH_DTYPES
from stoker._stats import HistogramSnapshot, Timings
from stoker.server._config import ModelConfig
from stoker.server._metrics import DeviceSource

__all__ = ["Replicas", "build_engine", "device_sources", "merge_stats"]

Image = bytes | bytearray | memoryview

# The native pool is process-wide: an engine's feeder takes the pool current when it is built,
# so building one with a pool of its own means swapping the current pool for that moment.
_POOL_LOCK = threading.Lock()


class Replicas(CallerAPI[Image, Timings]):
    """Engines of one model, one per device; each request goes to the least-loaded one.

    Offers what a served model needs of an ``Engine``: ``infer``, ``infer_timed``, ``submit``,
    ``infer_sync``, ``waiting``, ``stats`` (every engine's histograms summed) and ``close``.
    """

    def __init__(self, engines: Sequence[Engine], names: Sequence[str] | None = None) -> None:
        if not engines:
            raise ValueError("Replicas needs at least one engine")
        self.engines = tuple(engines)
        self.devices = tuple(names) if names is not None else _labels(self.engines)
        if len(self.devices) != len(self.engines) or len(set(self.devices)) != len(self.devices):
            raise ValueError(f"one distinct name per engine, got {list(self.devices)}")
        self._load = [0] * len(self.engines)
        self._turn = 0
        self._lock = threading.Lock()

    # --- routing ---------------------------------------------------------------------------

    def _acquire(self, skip: Sequence[int]) -> int:
        with self._lock:
            n = len(self._load)
            start = self._turn
            self._turn = start + 1 if start + 1 < n else 0
            best = -1
            for k in range(n):
                i = start + k if start + k < n else start + k - n
                if i not in skip and (best < 0 or self._load[i] < self._load[best]):
                    best = i
            self._load[best] += 1
            return best

    def _release(self, i: int) -> None:
        with self._lock:
            self._load[i] -= 1

    @property
    def outstanding(self) -> tuple[int, ...]:
        """Per engine, requests routed to it and not yet answered."""
        with self._lock:
            return tuple(self._load)

    def _submit(
        self,
        item: Image,
        priority: Priority,
        timeout_ms: float | None,
        loop: asyncio.AbstractEventLoop | None,
        timed: bool,
    ) -> tuple[Waiter, Callable[[], None] | None]:
        tried: list[int] = []
        while True:
            i = self._acquire(tried)
            try:
                waiter, cancel = self.engines[i]._submit(item, priority, timeout_ms, loop, timed)
            except QueueFullError:
                # Refused at submission, so never queued: another engine may still have room.
                self._release(i)
                tried.append(i)
                if len(tried) == len(self.engines):
                    raise
                continue
            except BaseException:
                self._release(i)
                raise
            waiter.add_done_callback(lambda _, i=i: self._release(i))  # type: ignore[misc]
            return waiter, cancel

    # --- state -----------------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        """Requests queued and not yet batched, over every engine."""
        return sum(e.waiting for e in self.engines)

    def stats(self) -> dict[str, HistogramSnapshot]:
        """Every engine's histograms summed: the model's, whatever device answered."""
        return merge_stats([e.stats() for e in self.engines])

    def reset_stats(self) -> None:
        for e in self.engines:
            e.reset_stats()

    def close(self) -> None:
        """Close every engine: each answers what it holds, then stops."""
        for e in self.engines:
            e.close()


def merge_stats(
    snapshots: Sequence[Mapping[str, HistogramSnapshot]],
) -> dict[str, HistogramSnapshot]:
    """Histograms of several engines as one; exact, as every engine has the same buckets."""
    out: dict[str, HistogramSnapshot] = {}
    for key in snapshots[0]:
        parts = [s[key] for s in snapshots]
        counts = parts[0].counts.copy()
        for p in parts[1:]:
            counts += p.counts
        out[key] = HistogramSnapshot(
            counts,
            sum(p.count for p in parts),
            sum(p.sum for p in parts),
            max(p.max for p in parts),
        )
    return out


def _labels(engines: Sequence[Engine]) -> tuple[str, ...]:
    """Device names as metric labels; CPU engines, which may repeat, are numbered cpu:0, cpu:1."""
    names = [str(e.device) for e in engines]
    if names.count("cpu") > 1:
        cpus = iter(range(len(names)))
        names = [f"cpu:{next(cpus)}" if n == "cpu" else n for n in names]
    return tuple(names)


def device_sources(engine: Engine | Replicas) -> list[DeviceSource]:
    """Each device's metrics sources: one for an engine, one per engine for replicas."""
    if isinstance(engine, Engine):
        return [(str(engine.device), engine.stats, lambda: engine.waiting)]
    return [
        (name, e.stats, lambda e=e: e.waiting)  # type: ignore[misc]
        for name, e in zip(engine.devices, engine.engines, strict=True)
    ]


def build_engine(config: ModelConfig, model: ModelLike | None = None) -> Engine | Replicas:
    """The engine of an image model: one ``Engine`` on one device, ``Replicas`` on several.

    ``model`` replaces ``config.model`` (a module built in Python). With several devices each
    engine gets ``config.threads`` native threads, by default an even share of the current pool.
    """
    devices = config.replicas
    threads = config.threads
    if threads is None and len(devices) > 1:
        threads = max(1, get_num_threads() // len(devices))
    source: ModelLike = config.model if model is None else model
    models = [source] * len(devices)
    if not isinstance(source, (str, os.PathLike)) and any(d != "cpu" for d in devices):
        # Moving a module to a device moves it in place: each GPU needs a copy of its own,
        # taken before the first engine moves the original. CPU engines share one module.
        models[1:] = [copy.deepcopy(source) for _ in devices[1:]]
    engines: list[Engine] = []
    try:
        for device, m in zip(devices, models, strict=True):
            engines.append(_engine(config, m, device, threads, model is None))
    except BaseException:
        for e in engines:
            e.close()
        raise
    return engines[0] if len(engines) == 1 else Replicas(engines)


def _engine(
    config: ModelConfig, model: ModelLike, device: str, threads: int | None, named: bool
) -> Engine:
    def build() -> Engine:
        return Engine(
            model,
            config.spec(),
            device=device,
            dtype=TORCH_DTYPES[config.dtype] if config.dtype else None,
            weights=config.weights if named else None,
            max_batch_size=config.max_batch_size,
            max_delay_ms=config.max_delay_ms,
            capacity=config.capacity,
            postprocess=top_k(config.top_k),
            gpu_decode=config.gpu_decode,
            staging_slots=config.staging_slots,
        )

    if threads is None:
        return build()
    with _POOL_LOCK:
        before = get_num_threads()
        set_num_threads(threads)
        try:
            return build()
        finally:
            # A fresh pool of the old size becomes current; engines built before keep theirs.
            set_num_threads(before)
