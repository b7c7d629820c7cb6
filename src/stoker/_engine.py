"""The engine: single requests in, batched native preprocessing, the model, answers out.

Three threads of Python run per engine: callers (any thread, or an asyncio loop) submit bytes to
the native feeder; the device thread takes prepared batches and launches them; the completion
thread waits for each batch, postprocesses it once and answers its requests, waking each asyncio
loop once per batch.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import replace
from typing import Any, Literal

import numpy as np
import torch

from stoker import _native
from stoker._answers import (
    AnswerSink,
    Pending,
    Waiter,
    batch_timings,
    deliver,
    device_error,
    settle,
    split_rows,
)
from stoker._buffers import byte_view
from stoker._callers import CallerAPI, Priority
from stoker._errors import (
    DeadlineExceededError,
    EngineClosedError,
    QueueFullError,
    image_error,
)
from stoker._hybrid import DecodeAhead, Decoded, check_share, gpu_decode_setup
from stoker._models import ModelLike, load_model
from stoker._preprocess import enable_pinning
from stoker._runner import CpuRunner, CudaRunner, Flight, image_buckets
from stoker._spec import ImageSpec
from stoker._stats import HistogramSnapshot, StageStats, Timings

__all__ = ["Engine"]

Postprocess = Callable[[Any], Sequence[Any]]


class Engine(CallerAPI[bytes | bytearray | memoryview, Timings]):
    """Dynamic batching and inference for one model on one device; see docs/engine.md."""

    def __init__(
        self,
        model: ModelLike,
        preprocess: ImageSpec | None = None,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        weights: str | None = None,
        max_batch_size: int = 32,
        max_delay_ms: float = 2.0,
        preferred_batch_sizes: Sequence[int] | None = None,
        capacity: int = 4096,
        postprocess: Postprocess | None = None,
        channels_last: bool | None = None,
        cuda_graphs: bool = True,
        staging_slots: int = 3,
        gpu_decode: float | Literal["auto"] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if not max_delay_ms >= 0:
            raise ValueError(f"max_delay_ms must be >= 0, got {max_delay_ms}")
        check_share(gpu_decode)
        if staging_slots < 2:
            raise ValueError(f"staging_slots must be at least 2, got {staging_slots}")
        self.spec = preprocess if preprocess is not None else ImageSpec()
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        if cuda and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device")
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda, got {self.device.type!r}")
        if channels_last is None:
            channels_last = cuda
        self.max_batch_size = max_batch_size
        self._postprocess = postprocess or split_rows
        self._model = load_model(
            model, weights=weights, device=self.device, dtype=dtype, channels_last=channels_last
        )
        # On a GPU the slots carry uint8 NHWC, the cheapest to make and to copy; normalization
        # and layout happen on the device.
        staging = (
            replace(self.spec, layout="NHWC", dtype="uint8", mean=None, std=None)
            if cuda
            else self.spec
        )
        pinned = enable_pinning() if cuda else False
        self._feeder = _native.Feeder(
            staging._native,
            max_batch_size,
            round(max_delay_ms * 1000),
            sorted(set(preferred_batch_sizes or ())),
            capacity,
            staging_slots,
            pinned,
        )
        slots = [self._feeder.slot(i) for i in range(staging_slots)]
        decoder, self._share_policy = gpu_decode_setup(
            gpu_decode, staging, self.device, self._feeder
        )
        self._gpu_decoder = decoder.name if decoder is not None else None
        self._runner: CpuRunner | CudaRunner
        if cuda:
            self._runner = CudaRunner(
                self._model,
                self.spec,
                slots,
                max_batch_size,
                self.device,
                dtype,
                channels_last,
                image_buckets(max_batch_size, preferred_batch_sizes),
                cuda_graphs,
                decoder,
            )
        else:
            self._runner = CpuRunner(
                self._model, staging, slots, max_batch_size, dtype, channels_last
            )
        self._stats = StageStats()
        self._ids = itertools.count(1)
        self._pending: dict[int, Pending] = {}
        self._sink: AnswerSink | None = None
        self._flights: queue.SimpleQueue[tuple[Any, Flight, int] | None] = queue.SimpleQueue()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._device_loop, name="stoker-device", daemon=True),
            threading.Thread(target=self._completion_loop, name="stoker-completion", daemon=True),
            threading.Thread(target=self._expiry_loop, name="stoker-expiry", daemon=True),
        ]
        self._ahead = (
            DecodeAhead(self._feeder, decoder, self._payload) if decoder is not None else None
        )
        if self._ahead is not None:
            self._threads.extend(self._ahead.threads)
        for t in self._threads:
            t.start()
        self._finalizer = weakref.finalize(self, _shutdown, self._feeder, self._threads)

    # --- callers ---------------------------------------------------------------------------

    def _submit(
        self,
        image: bytes | bytearray | memoryview,
        priority: Priority,
        timeout_ms: float | None,
        loop: asyncio.AbstractEventLoop | None,
        timed: bool,
    ) -> tuple[Waiter, Callable[[], None]]:
        # bytes are immutable; any other buffer is held through a memoryview, whose export keeps
        # a bytearray from being resized while the native queue points into it. No copies.
        data = image if type(image) is bytes else byte_view(image)
        if priority not in ("normal", "high"):
            raise ValueError(f"priority must be 'normal' or 'high', got {priority!r}")
        deadline = 0
        if timeout_ms is not None:
            if not timeout_ms > 0:
                raise ValueError(f"timeout_ms must be positive, got {timeout_ms}")
            deadline = time.monotonic_ns() + int(timeout_ms * 1e6)
        rid = next(self._ids)
        waiter: Waiter = loop.create_future() if loop is not None else Future()
        self._pending[rid] = Pending(waiter, data, loop, timed)
        code = self._feeder.submit(rid, data, priority == "high", deadline)
        if code != 0:
            del self._pending[rid]
            if code == 1:
                raise QueueFullError(f"queue full ({self._feeder.waiting} waiting)")
            raise EngineClosedError("the engine is closed")
        return waiter, lambda: self._cancel(rid)

    def _cancel(self, rid: int) -> None:
        # Still queued: it never runs. Already batched: its answer is dropped on arrival.
        if self._feeder.cancel(rid):
            self._pending.pop(rid, None)

    def attach(self, sink: AnswerSink) -> None:
        """Answer requests that a native front queued on ``feeder`` (ids with the sink's bit)."""
        self._sink = sink

    @property
    def feeder(self) -> Any:
        """The native feeder, for a native front that queues requests itself."""
        return self._feeder

    # --- state -----------------------------------------------------------------------------

    @property
    def gpu_decoder(self) -> str | None:
        """The GPU JPEG decoder in use ("nvjpeg-hardware", "nvjpeg-cuda", "torchvision"), or
        None without GPU decode."""
        return self._gpu_decoder

    @property
    def gpu_share(self) -> float:
        """Fraction of GPU-friendly JPEGs currently decoded on the GPU."""
        return float(self._feeder.gpu_share)

    @property
    def waiting(self) -> int:
        """Requests queued and not yet batched."""
        return int(self._feeder.waiting)

    def stats(self) -> dict[str, HistogramSnapshot]:
        """Latency histograms (µs) per stage since start or the last ``reset_stats``."""
        return self._stats.snapshot()

    def reset_stats(self) -> None:
        self._stats.reset()

    def close(self) -> None:
        """Stop taking requests, answer every queued one, and stop the engine's threads."""
        if self._closed:
            return
        self._closed = True
        self._finalizer()
        leftover, self._pending = self._pending, {}
        for p in leftover.values():
            settle(p.waiter, EngineClosedError("the engine closed"), None)

    # --- engine threads --------------------------------------------------------------------

    def _device_loop(self) -> None:
        while (item := self._next_batch()) is not None:
            batch, decoded = item
            picked = time.monotonic_ns()
            try:
                if isinstance(decoded, Exception):
                    raise decoded
                flight = self._runner.launch(batch.slot, batch.size, list(batch.deferred), decoded)
            except Exception as e:  # the model failed: this batch fails, the engine goes on
                self._feeder.release(batch.slot)
                self._fail(batch.ids, device_error(e))
                continue
            self._feeder.release(batch.slot)
            self._flights.put((batch, flight, picked))
        self._flights.put(None)

    def _next_batch(self) -> tuple[Any, Decoded | Exception | None] | None:
        if self._ahead is not None:
            return self._ahead.next()
        batch = self._feeder.next()
        return None if batch is None else (batch, None)

    def _expiry_loop(self) -> None:
        while (ids := self._feeder.next_expired()) is not None:
            self._expire(ids)

    def _payload(self, rid: int) -> bytes | memoryview:
        if self._sink is not None and rid & self._sink.id_bit:
            return self._sink.payload(rid)
        p = self._pending.get(rid)
        return p.payload if p is not None else b""

    def _completion_loop(self) -> None:
        while (item := self._flights.get()) is not None:
            batch, flight, picked = item
            try:
                self._runner.wait(flight)
                start = time.perf_counter_ns()
                results = self._runner.postprocess(flight, self._postprocess)
                if len(results) != flight.n:
                    raise ValueError(
                        f"postprocess returned {len(results)} results for {flight.n} requests"
                    )
            except Exception as e:
                self._fail(batch.ids, device_error(e))
                continue
            post_us = (time.perf_counter_ns() - start) / 1000
            self._answer(batch, flight, results, picked, post_us)

    def _expire(self, ids: np.ndarray[Any, Any]) -> None:
        if self._sink is not None:
            self._sink.fail(ids, DeadlineExceededError("deadline passed in the queue"))
        for rid in ids.tolist():
            p = self._pending.pop(rid, None)
            if p is not None:
                deliver([(p, DeadlineExceededError("deadline passed in the queue"), None)])

    def _fail(self, ids: np.ndarray[Any, Any], error: Exception) -> None:
        if self._sink is not None:
            self._sink.fail(ids, error)
        outcomes: list[tuple[Pending, BaseException | None, Any]] = []
        for rid in ids.tolist():
            p = self._pending.pop(rid, None)
            if p is not None:
                outcomes.append((p, error, None))
        deliver(outcomes)

    def _answer(
        self, batch: Any, flight: Flight, results: Sequence[Any], picked: int, post_us: float
    ) -> None:
        n = flight.n
        queue_us, total_us, shared = batch_timings(batch, flight, picked, post_us)
        self._stats.record_answers(queue_us, total_us, shared, flight.compute_us)
        if self._share_policy is not None:
            gpu_items = len(batch.deferred)
            workers = self._ahead.workers if self._ahead is not None else 1
            share = self._share_policy.update(
                n - gpu_items,
                shared[1] - flight.decode_us,
                gpu_items,
                # A decode thread's time per batch, spread over the threads that decode batches
                # side by side; the device thread's own share of the GPU path overlaps nothing.
                max(flight.decode_us, flight.decode_host_us / workers),
            )
            self._feeder.set_gpu_share(share)
        errors: dict[int, BaseException] = {r: image_error(k, m) for r, k, m in batch.errors}
        errors.update(flight.failed)
        if self._sink is not None:
            self._sink.answer(batch.ids, results, queue_us, total_us, shared, errors)
        if not self._pending:  # every request of the batch came from a native front
            return
        outcomes = []
        for row, rid in enumerate(batch.ids.tolist()):
            p = self._pending.pop(rid, None)
            if p is None:
                continue
            value = results[row]
            if p.timed:
                value = (value, Timings(float(queue_us[row]), *shared, float(total_us[row]), n))
            outcomes.append((p, errors.get(row), value))
        deliver(outcomes)


def _shutdown(feeder: Any, threads: list[threading.Thread]) -> None:
    feeder.close()
    for t in threads:
        if t is not threading.current_thread():
            t.join()
