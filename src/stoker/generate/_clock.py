"""The engine's step times by kind, kept as histograms on the engine's thread."""

from __future__ import annotations

import bisect
import time
from collections import deque

from stoker.generate._types import STEP_BUCKETS, StepTimes

__all__ = ["StepClock"]


class StepClock:
    """Steps finish in the order they were launched; each ``finished`` belongs to the oldest
    ``launched`` not yet finished. Steps with prompt tokens are kept apart from decode steps:
    a prompt chunk beside the decode rows lengthens its step, which every stream in it feels
    as a longer gap between tokens."""

    def __init__(self) -> None:
        self._launched: deque[float] = deque()
        self._last = 0.0
        self._counts = [[0] * (len(STEP_BUCKETS) + 1) for _ in "dp"]
        self._seconds = [0.0, 0.0]

    def launched(self) -> None:
        self._launched.append(time.perf_counter())

    def finished(self, prompt: bool) -> None:
        now = time.perf_counter()
        took = now - max(self._launched.popleft(), self._last)
        self._last = now
        kind = int(prompt)
        self._counts[kind][bisect.bisect_left(STEP_BUCKETS, took)] += 1
        self._seconds[kind] += took

    def forget_launched(self) -> None:
        """Launched steps that will not finish (a failed step)."""
        self._launched.clear()

    def times(self) -> tuple[StepTimes, StepTimes]:
        """(decode steps, steps with prompt tokens)."""
        return (
            StepTimes(tuple(self._counts[0]), self._seconds[0]),
            StepTimes(tuple(self._counts[1]), self._seconds[1]),
        )
