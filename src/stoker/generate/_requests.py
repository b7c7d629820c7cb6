"""The engine's requests and how their tokens reach the callers: once per step, one hand-over per
outlet (a caller's event loop, or the pipe to another process)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Protocol

from stoker.generate._types import GenerationChunk, SamplingOptions

__all__ = [
    "Done",
    "LoopOutlet",
    "Outlet",
    "Request",
    "Updates",
    "collect",
    "deliver",
    "next_chunk",
]

_REASONS = {"eos": "stop", "stop": "stop", "length": "length"}


class Outlet(Protocol):
    """Where a step's chunks for some of its requests go, called on the engine's thread."""

    def hand_out(
        self, items: list[tuple[Request, GenerationChunk]], error: BaseException | None
    ) -> None: ...


@dataclass(frozen=True)
class LoopOutlet:
    """The requests of one asyncio loop: their chunks go into their queues on that loop."""

    loop: asyncio.AbstractEventLoop

    def hand_out(
        self, items: list[tuple[Request, GenerationChunk]], error: BaseException | None
    ) -> None:
        # A closed loop raises RuntimeError: that caller is gone and nobody waits any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(_hand_out, items, error)


@dataclass(eq=False)
class Request:
    prompt: list[int]
    options: SamplingOptions
    outlet: Outlet | None  # None: an offline request, waited on by `done`
    chunks: asyncio.Queue[GenerationChunk | BaseException] = field(default_factory=asyncio.Queue)
    generated: list[int] = field(default_factory=list)
    cached: int = -1  # prompt tokens the prefix cache held; known at the first schedule
    done: threading.Event = field(default_factory=threading.Event)
    finish: str | None = None
    error: BaseException | None = None


Updates = dict[Request, tuple[list[int], str | None]]
"""New tokens and finish reason (None: running on) per request of one step."""


@dataclass
class Done:
    """A step whose tokens are in, not yet handed to its requests."""

    seqs: list[int]
    requests: list[Request]
    tokens: list[list[int]]  # per sequence: one, or with speculation the accepted drafts and one
    finished: dict[int, str]


def collect(done: Done) -> Updates:
    """A finished step's tokens appended to its requests, as updates for the callers."""
    out: Updates = {}
    finished = done.finished
    for seq, request, tokens in zip(done.seqs, done.requests, done.tokens, strict=True):
        request.generated.extend(tokens)
        reason = finished.get(seq)
        out[request] = (tokens, _REASONS[reason] if reason else None)
    return out


def deliver(updates: Updates, error: BaseException | None = None) -> None:
    """Settles each request's state and hands its chunk (or ``error``) to its outlet."""
    by_outlet: dict[Outlet, list[tuple[Request, GenerationChunk]]] = defaultdict(list)
    for request, (tokens, reason) in updates.items():
        if error is not None:
            request.error, request.finish = error, "abort"
        elif reason is not None:
            request.finish = reason
        if request.finish is not None:
            request.done.set()
        if request.outlet is None:
            continue
        chunk = GenerationChunk(tokens, reason, len(request.prompt), max(request.cached, 0))  # type: ignore[arg-type]
        by_outlet[request.outlet].append((request, chunk))
    for outlet, items in by_outlet.items():
        outlet.hand_out(items, error)


def _hand_out(items: list[tuple[Request, GenerationChunk]], error: BaseException | None) -> None:
    for request, chunk in items:
        request.chunks.put_nowait(error if error is not None else chunk)


async def next_chunk(chunks: asyncio.Queue[GenerationChunk | BaseException]) -> GenerationChunk:
    """A request's next chunk for its caller; raises the request's error instead.

    A caller that fell behind gets what piled up as one chunk: under load that saves a wake-up
    and a response event per token."""
    item = await chunks.get()
    while isinstance(item, GenerationChunk) and item.finish_reason is None:
        try:
            more = chunks.get_nowait()
        except asyncio.QueueEmpty:
            break
        if isinstance(more, BaseException):
            item = more
            break
        more.token_ids[:0] = item.token_ids
        item = more
    if isinstance(item, BaseException):
        raise item
    return item
