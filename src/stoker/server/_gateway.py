"""The native front: stoker's C++ HTTP server carries the hot path, the FastAPI app the rest.

``POST /v2/models/{name}/infer`` in its common form (encoded images as one binary BYTES input) is
parsed, queued on the model's feeder, answered and encoded natively, with no Python per request:
the engine hands each finished batch to a ``GatewaySink``, which answers all of the gateway's
rows in one native call. Every other request (other routes, JSON tensors, unusual parameters, and
malformed requests, whose precise errors the Python codec writes) is forwarded to the same
FastAPI application that ``stoker serve --front uvicorn`` runs, called in-process through ASGI
(``_forward.py``), streamed completions included.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from stoker import _native
from stoker._engine import Engine
from stoker._heap import frozen_heap
from stoker._models import ModelLike
from stoker.server._app import create_app
from stoker.server._config import ServerConfig, switch_interval
from stoker.server._forward import Forwarder
from stoker.server._front import Front, status_of
from stoker.server._openai import ServedGenerator
from stoker.server._replicas import Replicas
from stoker.server._tasks import ImageClassification

__all__ = ["GatewaySink", "NativeServer", "serve_native"]

log = logging.getLogger("stoker.server")


class GatewaySink:
    """Answers, in one native call per batch, the rows of a batch that the gateway queued."""

    def __init__(self, gateway: Any, task: ImageClassification) -> None:
        self._gateway = gateway
        self._task = task
        self.id_bit = int(_native.Gateway.id_bit)

    def payload(self, rid: int) -> bytes:
        data: bytes = self._gateway.payload(rid)
        return data

    def answer(
        self,
        ids: npt.NDArray[np.uint64],
        results: Sequence[Any],
        queue_us: npt.NDArray[np.int64],
        total_us: npt.NDArray[np.int64],
        shared: Sequence[float],
        errors: dict[int, BaseException],
    ) -> None:
        mine = ids >= np.uint64(self.id_bit)
        rows: npt.NDArray[np.intp] | None = None
        if mine.all():  # a batch of native requests only: no row selection, no copies
            queue, total = queue_us, total_us
        else:
            rows = np.flatnonzero(mine)
            if rows.size == 0:
                return
            ids, queue, total = ids[rows], queue_us[rows], total_us[rows]
        # Failed rows still have a (meaningless) result; the gateway answers them with their error.
        outputs = self._task.batch_outputs(results, rows)
        failed = []
        if errors:
            for i, r in enumerate(range(len(ids)) if rows is None else rows.tolist()):
                if r in errors:
                    http = status_of(errors[r])  # type: ignore[arg-type]
                    failed.append((i, http.status, str(http)))
        self._gateway.answer(
            ids,
            [(o.name, o.datatype, np.ascontiguousarray(o.data)) for o in outputs],
            np.ascontiguousarray(queue, dtype=np.int64),
            np.ascontiguousarray(total, dtype=np.int64),
            tuple(shared),
            failed,
        )

    def fail(self, ids: npt.NDArray[np.uint64], error: BaseException) -> None:
        mine = ids[ids >= np.uint64(self.id_bit)]
        if mine.size:
            http = status_of(error)  # type: ignore[arg-type]
            self._gateway.fail(np.ascontiguousarray(mine), http.status, str(http))


class NativeServer:
    """The models of ``config`` behind the native gateway, with the FastAPI app behind it."""

    def __init__(
        self,
        config: ServerConfig,
        models: Mapping[str, ModelLike] | None = None,
        *,
        generators: Mapping[str, ServedGenerator] | None = None,
        port: int | None = None,
        io_threads: int = 1,
        drain_s: float = 10.0,
    ) -> None:
        self.config = config
        self.app = create_app(config, models, generators=generators)
        self.front: Front = self.app.state.front
        self.drain_s = drain_s
        # The gateway answers image models' requests itself, feeding each of a model's engines
        # (one per device) directly; other tasks' requests are forwarded.
        native: list[tuple[ImageClassification, tuple[Engine, ...]]] = []
        for t in self.front.tasks.values():
            if isinstance(t.engine, Engine):
                native.append((t, (t.engine,)))
            elif isinstance(t.engine, Replicas):
                native.append((t, t.engine.engines))
        try:
            self.gateway = _native.Gateway(
                config.host,
                config.port if port is None else port,
                io_threads,
                config.token or "",
                config.max_body_bytes,
                config.max_images_per_request,
                round((config.timeout_ms or 0) * 1000),
                [(t.name, [e.feeder for e in engines], t.output_names()) for t, engines in native],
            )
        except BaseException:
            self.front.close()
            raise
        for task, engines in native:
            for engine in engines:
                engine.attach(GatewaySink(self.gateway, task))
        names = [t.name for t, _ in native]
        gateway = self.gateway
        self.front.metrics.add_native_counts(
            lambda: [
                (name, "infer", code, n)
                for i, name in enumerate(names)
                for code, n in gateway.counts(i)
            ]
        )
        self._forwarder = Forwarder(self.app, self.gateway, (config.host, self.port))

    @property
    def port(self) -> int:
        return int(self.gateway.port)

    async def serve(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then drain: requests in flight are answered."""
        loop = asyncio.get_running_loop()
        self.gateway.start()
        bridge = threading.Thread(
            target=self._bridge, args=(loop,), name="stoker-bridge", daemon=True
        )
        bridge.start()
        try:
            await stop.wait()
        finally:
            # Forwarded requests in flight need this loop to finish, so the drain runs elsewhere.
            await loop.run_in_executor(None, self.gateway.shutdown, self.drain_s)
            await loop.run_in_executor(None, bridge.join)
            self._forwarder.cancel()
            self.front.close()

    def _bridge(self, loop: asyncio.AbstractEventLoop) -> None:
        while (got := self.gateway.next_forwarded()) is not None:
            requests, abandoned = got
            try:
                loop.call_soon_threadsafe(self._forwarder.dispatch, requests, abandoned)
            except RuntimeError:  # the loop closed: answer what is left here, then stop
                for item in requests:
                    self.gateway.respond(item[0], 503, [("retry-after", "1")], b"")


def serve_native(config: ServerConfig, *, io_threads: int = 1, drain_s: float = 10.0) -> None:
    """Run a ``NativeServer`` until SIGINT or SIGTERM, then drain and return."""

    async def main() -> None:
        server = NativeServer(config, io_threads=io_threads, drain_s=drain_s)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(f"stoker serving on http://{config.host}:{server.port}", flush=True)
        with switch_interval(config.switch_interval_ms), frozen_heap():
            await server.serve(stop)

    asyncio.run(main())
