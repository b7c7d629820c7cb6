"""The text engine: single texts in, batches of similar length through the encoder, embeddings out.

Callers tokenize their own text (in their thread, before queueing), which gives each request its
length, its token count and its errors at once. Requests then wait in the queue of the smallest
length bucket that holds them, so a batch pads short texts to a short length instead of to the
longest text of the moment. The device thread cuts a batch from the most urgent bucket when it is
full or its oldest request has waited ``max_delay_ms``, pads it and launches the encoder; the
completion thread waits for the result, moves it to host rows and answers the batch's requests,
waking each asyncio loop once per batch.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stoker._answers import Pending, Waiter, deliver, device_error
from stoker._callers import CallerAPI, Priority
from stoker._errors import DeadlineExceededError, EngineClosedError, QueueFullError
from stoker._stats import HistogramSnapshot
from stoker.text._bert import load_encoder
from stoker.text._graphs import EncoderGraphs
from stoker.text._model import model_files
from stoker.text._stats import TextStats, TextTimings
from stoker.text._tokenize import EmptyTextError, TextError, TextTokenizer, TextTooLongError

__all__ = ["DEFAULT_BUCKETS", "TextEngine"]

DEFAULT_BUCKETS = (16, 32, 64, 128, 256)


class _Request:
    __slots__ = (
        "deadline_ns",
        "enqueued_ns",
        "ids",
        "pending",
        "start_ns",
        "tokenize_us",
        "tokens",
    )

    def __init__(
        self,
        pending: Pending,
        ids: list[int],
        tokens: int,
        start_ns: int,
        tokenize_us: float,
        deadline_ns: int,
    ) -> None:
        self.pending = pending
        self.ids = ids
        self.tokens = tokens
        self.start_ns = start_ns
        self.tokenize_us = tokenize_us
        self.deadline_ns = deadline_ns
        self.enqueued_ns = time.monotonic_ns()


class _Bucket:
    """The queued requests of one padded length, high priority first."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.high: deque[_Request] = deque()
        self.normal: deque[_Request] = deque()

    def __len__(self) -> int:
        return len(self.high) + len(self.normal)

    def urgency(self) -> tuple[int, int]:
        if self.high:
            return 0, self.high[0].enqueued_ns
        return 1, self.normal[0].enqueued_ns

    def take(self, n: int) -> list[_Request]:
        out: list[_Request] = []
        for q in (self.high, self.normal):
            while q and len(out) < n:
                out.append(q.popleft())
        return out


class _Flight:
    __slots__ = ("compute_us", "done", "formed_ns", "launched_ns", "output", "requests", "start")

    def __init__(self, requests: list[_Request], formed_ns: int) -> None:
        self.requests = requests
        self.formed_ns = formed_ns
        self.launched_ns = 0
        self.compute_us = 0.0
        self.output: torch.Tensor | None = None
        self.start: torch.cuda.Event | None = None
        self.done: torch.cuda.Event | None = None


class TextEngine(CallerAPI[str, TextTimings]):
    """Dynamic, length-bucketed batching of one sentence encoder; see docs/text.md.

    ``model`` is a model folder (None: the installed all-MiniLM-L6-v2). Inputs longer than the
    model's length are truncated to it; with ``max_tokens``, inputs of more tokens are refused
    with ``TextTooLongError`` instead. Results are unit-length float32 numpy vectors. On a GPU,
    ``cuda_graphs`` captures the encoder once per batch and length bucket at start and replays
    those graphs.
    """

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        max_batch_size: int = 32,
        max_delay_ms: float = 2.0,
        buckets: Sequence[int] = DEFAULT_BUCKETS,
        capacity: int = 4096,
        max_tokens: int | None = None,
        cuda_graphs: bool = True,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if not max_delay_ms >= 0:
            raise ValueError(f"max_delay_ms must be >= 0, got {max_delay_ms}")
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        self.device = torch.device(device)
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda, got {self.device.type!r}")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device")
        files = model_files(model)
        self.files = files
        self.max_batch_size = max_batch_size
        self.max_tokens = max_tokens
        self._delay_ns = round(max_delay_ms * 1e6)
        self._capacity = capacity
        self.tokenizer = TextTokenizer(files.tokenizer, files.max_length)
        self.model = load_encoder(files.weights, files.config, self.device, dtype)
        self.dimension = self.model.config.hidden_size
        self.lengths = sorted({b for b in buckets if 0 < b < files.max_length} | {files.max_length})
        self._buckets = [_Bucket(n) for n in self.lengths]
        # A GPU gets the bucket's fixed shape (few shapes for its kernels and allocator); the CPU
        # pays per padded token, so it pads only to the batch's longest input.
        self._pad_to_bucket = self.device.type == "cuda"
        self.graphs = (
            EncoderGraphs(self.model, self.device, max_batch_size, self.lengths)
            if cuda_graphs and self.device.type == "cuda"
            else None
        )
        self._cond = threading.Condition()
        self._waiting = 0
        self._closed = False
        self._ids = itertools.count(1)
        self._stats = TextStats()
        self._flights: queue.SimpleQueue[_Flight | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._device_loop, name="stoker-text-device", daemon=True),
            threading.Thread(target=self._completion_loop, name="stoker-text-done", daemon=True),
        ]
        for t in self._threads:
            t.start()

    # --- callers ---------------------------------------------------------------------------

    def tokenize(self, text: str) -> tuple[list[int], int]:
        """The ids this engine would run for ``text`` and its token count; raises TextError."""
        if not isinstance(text, str):
            raise TextError(f"a text input must be a string, not {type(text).__name__}")
        if not text:
            raise EmptyTextError("the text is empty")
        ids, n = self.tokenizer.encode(text)
        if self.max_tokens is not None and n > self.max_tokens:
            raise TextTooLongError(
                f"the text has {n} tokens, more than the limit {self.max_tokens}"
            )
        return ids, n

    def _submit(
        self,
        text: str,
        priority: Priority,
        timeout_ms: float | None,
        loop: asyncio.AbstractEventLoop | None,
        timed: bool,
    ) -> tuple[Waiter, None]:
        # A cancelled request stays queued until its bucket is cut, which drops it.
        start = time.monotonic_ns()
        if priority not in ("normal", "high"):
            raise ValueError(f"priority must be 'normal' or 'high', got {priority!r}")
        deadline = 0
        if timeout_ms is not None:
            if not timeout_ms > 0:
                raise ValueError(f"timeout_ms must be positive, got {timeout_ms}")
            deadline = start + int(timeout_ms * 1e6)
        ids, n = self.tokenize(text)
        tokenize_us = (time.monotonic_ns() - start) / 1000
        waiter: Waiter = loop.create_future() if loop is not None else Future()
        request = _Request(Pending(waiter, b"", loop, timed), ids, n, start, tokenize_us, deadline)
        bucket = self._buckets[bisect.bisect_left(self.lengths, len(ids))]
        with self._cond:
            if self._closed:
                raise EngineClosedError("the engine is closed")
            if self._waiting >= self._capacity:
                raise QueueFullError(f"queue full ({self._waiting} waiting)")
            (bucket.high if priority == "high" else bucket.normal).append(request)
            self._waiting += 1
            self._cond.notify()
        return waiter, None

    # --- state -----------------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        """Requests queued and not yet batched."""
        return self._waiting

    def stats(self) -> dict[str, HistogramSnapshot]:
        """Latency histograms (µs) per stage since start or the last ``reset_stats``."""
        return self._stats.snapshot()

    def reset_stats(self) -> None:
        self._stats.reset()

    def close(self) -> None:
        """Stop taking requests, fail the queued ones, finish the batches in flight."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            left = [r for b in self._buckets for r in b.take(len(b))]
            self._waiting = 0
            self._cond.notify_all()
        deliver([(r.pending, EngineClosedError("the engine closed"), None) for r in left])
        for t in self._threads:
            if t is not threading.current_thread():
                t.join()

    # --- engine threads --------------------------------------------------------------------

    def _device_loop(self) -> None:
        while (requests := self._next_batch()) is not None:
            flight = _Flight(requests, time.monotonic_ns())
            try:
                self._launch(flight)
            except Exception as e:  # this batch fails, the engine goes on
                self._fail(requests, device_error(e))
                continue
            self._flights.put(flight)
        self._flights.put(None)

    def _next_batch(self) -> list[_Request] | None:
        with self._cond:
            while not self._closed:
                ready = [b for b in self._buckets if b]
                if not ready:
                    self._cond.wait()
                    continue
                bucket = min(ready, key=_Bucket.urgency)
                now = time.monotonic_ns()
                due = bucket.urgency()[1] + self._delay_ns
                if len(bucket) < self.max_batch_size and now < due:
                    self._cond.wait((due - now) / 1e9)
                    continue
                taken = bucket.take(self.max_batch_size)
                self._waiting -= len(taken)
                # Cancelled and expired requests are dropped when their bucket is cut, which is
                # due max_delay_ms after its oldest request came, once the device is free.
                live = [r for r in taken if not r.pending.waiter.done()]
                expired = [r for r in live if r.deadline_ns and r.deadline_ns <= now]
                if expired:
                    error = DeadlineExceededError("deadline passed in the queue")
                    deliver([(r.pending, error, None) for r in expired])
                    live = [r for r in live if not (r.deadline_ns and r.deadline_ns <= now)]
                if live:
                    return live
            return None

    def _launch(self, flight: _Flight) -> None:
        requests = flight.requests
        longest = max(len(r.ids) for r in requests)
        width = self.lengths[bisect.bisect_left(self.lengths, longest)]
        width = width if self._pad_to_bucket else longest
        ids = np.zeros((len(requests), width), dtype=np.int64)
        lengths = np.empty(len(requests), dtype=np.int64)
        for row, r in enumerate(requests):
            ids[row, : len(r.ids)] = r.ids
            lengths[row] = len(r.ids)
        mask = np.arange(width) < lengths[:, None]
        cuda = self.device.type == "cuda"
        flight.launched_ns = time.monotonic_ns()
        if cuda:
            flight.start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            flight.done = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        # The start event goes after the inputs' copy: compute is the model's time alone.
        with torch.inference_mode():
            if self.graphs is not None:
                flight.output = self.graphs.run(ids, mask, flight.start)
            if flight.output is None:
                ids_t = torch.from_numpy(ids).to(self.device, non_blocking=cuda)
                mask_t = torch.from_numpy(mask).to(self.device, non_blocking=cuda)
                if flight.start is not None:
                    flight.start.record()
                flight.output = self.model(ids_t, mask_t)
        if flight.done is not None:
            flight.done.record()
        else:
            flight.compute_us = (time.monotonic_ns() - flight.launched_ns) / 1000

    def _completion_loop(self) -> None:
        while (flight := self._flights.get()) is not None:
            try:
                if flight.done is not None and flight.start is not None:
                    flight.done.synchronize()
                    flight.compute_us = flight.start.elapsed_time(flight.done) * 1000
                post = time.monotonic_ns()
                assert flight.output is not None
                rows = flight.output.cpu().numpy()
            except Exception as e:
                self._fail(flight.requests, device_error(e))
                continue
            self._answer(flight, rows, (time.monotonic_ns() - post) / 1000)

    def _fail(self, requests: list[_Request], error: Exception) -> None:
        deliver([(r.pending, error, None) for r in requests])

    def _answer(self, flight: _Flight, rows: np.ndarray[Any, Any], post_us: float) -> None:
        requests = flight.requests
        n = len(requests)
        now = time.monotonic_ns()
        queue_us = np.array([(flight.formed_ns - r.enqueued_ns) // 1000 for r in requests])
        total_us = np.array([(now - r.start_ns) // 1000 for r in requests])
        tokenize_us = np.array([int(r.tokenize_us) for r in requests])
        batch_us = (flight.launched_ns - flight.formed_ns) / 1000
        self._stats.record(
            {
                "queue": queue_us,
                "tokenize": tokenize_us,
                "batch": np.full(n, int(batch_us)),
                "compute": np.full(n, int(flight.compute_us)),
                "postprocess": np.full(n, int(post_us)),
                "total": total_us,
            },
            flight.compute_us,
        )
        outcomes: list[tuple[Pending, BaseException | None, Any]] = []
        for i, r in enumerate(requests):
            value: Any = rows[i]
            if r.pending.timed:
                value = (
                    value,
                    TextTimings(
                        float(queue_us[i]),
                        r.tokenize_us,
                        batch_us,
                        flight.compute_us,
                        post_us,
                        float(total_us[i]),
                        n,
                        r.tokens,
                    ),
                )
            outcomes.append((r.pending, None, value))
        deliver(outcomes)
