"""What callers see of a stoker engine, whatever it runs: awaitable, timed, future and blocking
forms of one request, with cancellation. An engine supplies ``_submit`` and ``close``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Generic, Literal, Self, TypeVar, cast

from stoker._answers import Waiter

__all__ = ["CallerAPI", "Priority"]

Priority = Literal["normal", "high"]

Item = TypeVar("Item", contravariant=True)
Timing = TypeVar("Timing")

Cancel = Callable[[], None]
"""Withdraws a queued request; None where an engine drops cancelled requests by itself."""


class CallerAPI(Generic[Item, Timing]):
    def _submit(
        self,
        item: Item,
        priority: Priority,
        timeout_ms: float | None,
        loop: asyncio.AbstractEventLoop | None,
        timed: bool,
    ) -> tuple[Waiter, Cancel | None]:
        """Queues one request: its waiter (an asyncio future on ``loop``, else a concurrent
        one) settles with the result, or ``(result, timings)`` when ``timed``."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    async def infer(
        self, item: Item, *, priority: Priority = "normal", timeout_ms: float | None = None
    ) -> Any:
        """This input's result; cancelling the awaiting task withdraws a queued request."""
        loop = asyncio.get_running_loop()
        return await _wait(*self._submit(item, priority, timeout_ms, loop, False))

    async def infer_timed(
        self, item: Item, *, priority: Priority = "normal", timeout_ms: float | None = None
    ) -> tuple[Any, Timing]:
        """``infer`` plus where this request's time went."""
        loop = asyncio.get_running_loop()
        result: tuple[Any, Timing] = await _wait(
            *self._submit(item, priority, timeout_ms, loop, True)
        )
        return result

    def submit(
        self,
        item: Item,
        *,
        priority: Priority = "normal",
        timeout_ms: float | None = None,
        timed: bool = False,
    ) -> Future[Any]:
        """A concurrent.futures.Future of the result (of ``(result, timings)`` when ``timed``);
        cancelling it withdraws the request if it is still queued."""
        waiter, cancel = self._submit(item, priority, timeout_ms, None, timed)
        future = cast(Future[Any], waiter)
        if cancel is not None:
            future.add_done_callback(lambda f: cancel() if f.cancelled() else None)
        return future

    def infer_sync(
        self, item: Item, *, priority: Priority = "normal", timeout_ms: float | None = None
    ) -> Any:
        """The blocking form of ``infer``, for threads."""
        return self.submit(item, priority=priority, timeout_ms=timeout_ms).result()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _wait(waiter: Waiter, cancel: Cancel | None) -> Any:
    try:
        return await cast(asyncio.Future[Any], waiter)
    except asyncio.CancelledError:
        if cancel is not None:
            cancel()
        raise
