"""Answering requests: per-batch timings, and settling futures with one wake-up per loop."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from concurrent.futures import Future, InvalidStateError
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch

from stoker._errors import DeviceMemoryError
from stoker._runner import Flight

__all__ = [
    "AnswerSink",
    "Pending",
    "Waiter",
    "batch_timings",
    "deliver",
    "device_error",
    "settle",
    "split_rows",
]

Waiter = asyncio.Future[Any] | Future[Any]
Outcome = tuple["Pending", BaseException | None, Any]


class AnswerSink(Protocol):
    """Answers the requests a native front queued itself; their ids carry ``id_bit``.

    The engine hands every batch, failure and expiry to the sink, which picks out its own ids.
    """

    id_bit: int

    def payload(self, rid: int) -> bytes: ...

    def answer(
        self,
        ids: npt.NDArray[np.uint64],
        results: Sequence[Any],
        queue_us: npt.NDArray[np.int64],
        total_us: npt.NDArray[np.int64],
        shared: Sequence[float],
        errors: dict[int, BaseException],
    ) -> None: ...

    def fail(self, ids: npt.NDArray[np.uint64], error: BaseException) -> None: ...


class Pending:
    __slots__ = ("loop", "payload", "timed", "waiter")

    def __init__(
        self,
        waiter: Waiter,
        payload: bytes | memoryview,
        loop: asyncio.AbstractEventLoop | None,
        timed: bool,
    ) -> None:
        self.waiter = waiter
        self.payload = payload
        self.loop = loop
        self.timed = timed


def split_rows(output: Any) -> Sequence[Any]:
    if not isinstance(output, torch.Tensor):
        raise TypeError(
            f"the model returned {type(output).__name__}; give the engine a postprocess that "
            "splits it into one result per request"
        )
    return list(output.cpu().unbind(0))


def settle(waiter: Waiter, error: BaseException | None, value: Any) -> None:
    if waiter.done():  # cancelled by its caller
        return
    try:
        if error is not None:
            waiter.set_exception(error)
        else:
            waiter.set_result(value)
    except (InvalidStateError, asyncio.InvalidStateError):
        pass


def _settle_all(outcomes: list[tuple[Waiter, BaseException | None, Any]]) -> None:
    for waiter, error, value in outcomes:
        settle(waiter, error, value)


def deliver(outcomes: list[Outcome]) -> None:
    """Settles thread callers' futures directly and each asyncio loop's with one callback."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Waiter, BaseException | None, Any]]] = {}
    for p, error, value in outcomes:
        if p.loop is None:
            settle(p.waiter, error, value)
        else:
            by_loop.setdefault(p.loop, []).append((p.waiter, error, value))
    for loop, items in by_loop.items():
        # A closed loop raises RuntimeError: nobody waits for its answers any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle_all, items)


def batch_timings(
    batch: Any, flight: Flight, picked: int, post_us: float
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], tuple[float, float, float, float, float]]:
    """Per-request queue and total µs, and the stages the batch's requests share: batch,
    preprocess (CPU and GPU decode), h2d, compute, postprocess."""
    enqueued = batch.enqueued_ns
    queue_us = (batch.formed_ns - enqueued) // 1000
    total_us = (time.monotonic_ns() - enqueued) // 1000
    waited = (batch.prep_start_ns - batch.formed_ns + picked - batch.prep_end_ns) / 1000
    prep = (batch.prep_end_ns - batch.prep_start_ns) / 1000 + flight.decode_us
    return queue_us, total_us, (waited, prep, flight.h2d_us, flight.compute_us, post_us)


def device_error(error: Exception) -> Exception:
    """Out of device memory is the batch's failure, not the engine's: the allocator's cache is
    released so that later (or smaller) batches fit, and callers get a retryable error."""
    if not isinstance(error, torch.cuda.OutOfMemoryError):
        return error
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return DeviceMemoryError(f"out of device memory on a batch: {error}".splitlines()[0])
