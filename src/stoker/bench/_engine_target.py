"""stoker's engine as a `stoker bench` target, driven in this process without HTTP: asyncio
callers on a thread of their own await ``Engine.infer_timed``, closed loop or on Poisson arrivals,
and report what the native HTTP generator reports, so the sweep, the figures and the report need
no second path."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from stoker import _native
from stoker._stats import STAGES, Timings
from stoker.bench._targets import StokerSettings, random_weights, served_model

if TYPE_CHECKING:
    from stoker._engine import Engine
    from stoker.bench._run import Plan
    from stoker.server._replicas import Replicas

LATE_NS = 1_000_000  # the native generator's bound for a late open-loop send

Images = tuple[bytes, ...]


@dataclass(frozen=True)
class EngineTarget:
    """A stoker engine ready for load; a request is a group of images, answered when all are."""

    engine: Engine | Replicas
    model: str
    label: str
    description: str
    settings: dict[str, Any] = field(default_factory=dict)

    def requests(self, groups: Sequence[Sequence[bytes]]) -> list[Images]:
        return [tuple(images) for images in groups]

    def load(
        self, requests: Sequence[Images], plan: Plan, connections: int, rate: float
    ) -> EngineLoad:
        return EngineLoad(self.engine, requests, plan, connections, rate)


@contextlib.contextmanager
def engine_target(settings: StokerSettings, label: str) -> Iterator[EngineTarget]:
    """The engine that `stoker serve` would build for ``settings``, closed when the run ends."""
    from stoker.server._tasks import ImageClassification

    config, embedded = served_model(settings)
    # The served model's own construction (image spec, top-k postprocess, capacity): a run of
    # the engine and one of the server then differ by the HTTP layers alone.
    engine = ImageClassification(config, embedded).engine
    description = (
        f"stoker engine in process, model {settings.model} on {settings.device}, "
        f"max batch {settings.max_batch_size}, driven by asyncio callers on one thread"
        + (", random weights" if random_weights(settings) else "")
    )
    kept = {k: v for k, v in vars(settings).items() if v is not None and k != "io_threads"}
    try:
        yield EngineTarget(engine, settings.name, label, description, kept)
    finally:
        engine.close()


class EngineLoad:
    """One level against the engine, with the native generator's interface and report.

    Closed loop: ``connections`` callers, each awaiting its next request as soon as the last is
    answered. Open loop: Poisson arrivals spread over ``connections`` callers, at most one request
    in flight each; latency counts from the arrival's scheduled time. Arrivals are timed by a clock
    thread, since asyncio's timers wake at millisecond granularity and would make sends late.

    Only requests started (closed) or scheduled (open) after the warm-up count. Those in flight when
    the window closes are awaited, each up to ``plan.timeout_s``; failures count by the HTTP status
    stoker's server would give them, so the two targets' errors compare.
    """

    def __init__(
        self,
        engine: Engine | Replicas,
        requests: Sequence[Images],
        plan: Plan,
        connections: int,
        rate: float,
    ) -> None:
        if not requests or connections < 1 or rate < 0:
            raise ValueError("give requests, at least one caller and a non-negative rate")
        from stoker.server._front import status_of  # the server's modules load FastAPI: not eagerly

        self._engine = engine
        self._status_of = status_of
        self._requests = requests
        self._plan = plan
        self._connections = connections
        self._rate = rate
        self._latency = _native.Histogram()
        self._stages = {name: _native.Histogram() for name in STAGES}
        self._statuses: collections.Counter[int] = collections.Counter()
        self.completed = 0
        self._sent = self._late = self._unsent = self._timeouts = 0
        self._cpu_s = 0.0
        self._start_ns = self._end_ns = self._stopped_ns = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._halt_asked = False
        self._halted: asyncio.Event | None = None
        self._clock_stop = threading.Event()
        self._backlog: asyncio.Queue[int | None] = asyncio.Queue()
        self._draining = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drive, name="stoker-bench-driver", daemon=True)

    @property
    def done(self) -> bool:
        return self._thread.ident is not None and not self._thread.is_alive()

    def start(self) -> None:
        self._start_ns = time.monotonic_ns() + round(self._plan.warmup_s * 1e9)
        self._end_ns = self._start_ns + round(self._plan.seconds * 1e9)
        self._thread.start()

    def stop(self) -> None:
        """Ends the run now; requests in flight are abandoned, as the native generator does."""
        with self._lock:
            self._halt_asked = True
            if not self._stopped_ns:
                self._stopped_ns = time.monotonic_ns()
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._halt)

    def wait(self) -> dict[str, Any]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        end = min(self._stopped_ns or self._end_ns, self._end_ns)
        return {
            "elapsed_s": max(0, end - self._start_ns) / 1e9,
            "sent": self._sent,
            "completed": self.completed,
            "timeouts": self._timeouts,
            "transport_errors": 0,
            "late": self._late,
            "unsent": self._unsent,
            "cpu_s": self._cpu_s,
            "statuses": dict(self._statuses),
            "latency": self._latency.snapshot(),
            "server_timing": {name: h.snapshot() for name, h in self._stages.items()},
            "threads": 1,
            "advice": {
                "saturated": "one asyncio thread could not keep up with the engine, so its "
                "figures are a lower bound",
                "late": "either every caller was waiting on the engine (raise --open-connections) "
                "or the driver's threads waited for a CPU or for the GIL, which the engine's "
                "Python threads take too",
            },
        }

    # --- the driving thread ----------------------------------------------------------------

    def _drive(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # handed to wait(), on the caller's thread
            self._error = e

    def _halt(self) -> None:
        if self._halted is not None:
            self._halted.set()

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        self._halted = asyncio.Event()
        with self._lock:
            self._loop = loop
            if self._halt_asked:
                self._halted.set()
        cpu_at_start: list[float] = []
        loop.call_at(self._start_ns / 1e9, lambda: cpu_at_start.append(time.thread_time()))
        clock = None
        if self._rate:
            clock = threading.Thread(target=self._clock, args=(loop,), name="stoker-bench-clock")
            clock.start()
        caller = self._arrivals if self._rate else self._closed
        callers = [loop.create_task(caller(k)) for k in range(self._connections)]
        halted = loop.create_task(self._halted.wait())
        await asyncio.wait([halted], timeout=max(0.0, self._end_ns - time.monotonic_ns()) / 1e9)
        if clock is not None:
            self._clock_stop.set()
            clock.join()  # at once: the stop event wakes it
            self._draining = True
            while not self._backlog.empty():
                scheduled = self._backlog.get_nowait()
                self._unsent += scheduled is not None and scheduled >= self._start_ns
            for _ in callers:
                self._backlog.put_nowait(None)
        finished = asyncio.gather(*callers, return_exceptions=True)
        either: list[asyncio.Future[Any]] = [halted, finished]
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        for task in (*callers, halted):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await halted
        for outcome in await finished:
            if isinstance(outcome, Exception):
                raise outcome
        if cpu_at_start:
            self._cpu_s += time.thread_time() - cpu_at_start[0]
        with self._lock:
            self._loop = None

    async def _closed(self, k: int) -> None:
        i = k
        while time.monotonic_ns() < self._end_ns:
            await self._request(self._requests[i % len(self._requests)], time.monotonic_ns())
            i += 1

    async def _arrivals(self, k: int) -> None:
        i = k
        while (scheduled := await self._backlog.get()) is not None:
            await self._request(self._requests[i % len(self._requests)], scheduled)
            i += 1

    def _clock(self, loop: asyncio.AbstractEventLoop) -> None:
        """Poisson arrivals until the window closes, each handed to the loop when it is due."""
        rng = random.Random(self._plan.seed)
        gap_ns = 1e9 / self._rate
        due = time.monotonic_ns() + rng.expovariate(1.0) * gap_ns
        cpu_from = None
        while not self._clock_stop.is_set() and due < self._end_ns:
            now = time.monotonic_ns()
            if cpu_from is None and now >= self._start_ns:
                cpu_from = time.thread_time()
            batch = []
            while due <= now and due < self._end_ns:
                batch.append(int(due))
                due += rng.expovariate(1.0) * gap_ns
            if batch:
                loop.call_soon_threadsafe(self._arrive, batch)
            self._clock_stop.wait(max(0.0, min(due, self._end_ns) - time.monotonic_ns()) / 1e9)
        if cpu_from is not None:
            self._cpu_s += time.thread_time() - cpu_from

    def _arrive(self, batch: list[int]) -> None:
        if self._draining:  # handed over as the window closed: scheduled, never sent
            self._unsent += sum(t >= self._start_ns for t in batch)
            return
        for scheduled in batch:
            self._backlog.put_nowait(scheduled)

    async def _request(self, images: Images, start_ns: int) -> None:
        measured = start_ns >= self._start_ns
        if measured:
            self._sent += 1
            if self._rate and time.monotonic_ns() - start_ns > LATE_NS:
                self._late += 1
        timings: list[Timings] = []
        status = 200
        deadline = asyncio.timeout(self._plan.timeout_s)
        try:
            async with deadline:
                if len(images) == 1:  # the common case, without gather's task machinery
                    timings.append((await self._engine.infer_timed(images[0]))[1])
                else:
                    answers = await asyncio.gather(*map(self._engine.infer_timed, images))
                    timings += (t for _, t in answers)
        except Exception as e:
            if deadline.expired():
                self._timeouts += measured
                return
            status = self._status_of(e).status
        if not measured or not self._admit():
            return
        self._latency.record((time.monotonic_ns() - start_ns) // 1000)
        self._statuses[status] += 1
        if timings:
            # A request with several images waited as long as its slowest image in each stage,
            # as stoker's Server-Timing reports it.
            for name, h in self._stages.items():
                h.record(round(max(getattr(t, name) for t in timings)))

    def _admit(self) -> bool:
        limit = self._plan.max_requests
        if limit and self.completed >= limit:
            return False
        self.completed += 1
        if self.completed == limit:
            self.stop()
        return True
