"""stoker's HTTP application as a Ray Serve deployment.

Each replica is a Ray actor that builds the same FastAPI application `stoker serve --front
uvicorn` runs (`create_app`), with its own engines: their native thread pool and batcher form the
batches, so Ray routes single requests and never batches them itself. Ray's HTTP proxy hands each
request to a replica through ASGI, so routes, status codes and headers (`Server-Timing`,
`Retry-After`, `WWW-Authenticate`) are stoker's own.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from stoker.server._config import ModelConfig, ServerConfig

if TYPE_CHECKING:
    from fastapi import FastAPI
    from ray.serve import Application

    from stoker.server._app import Receive, Scope, Send

__all__ = [
    "REPLICA_HEADER",
    "default_max_ongoing_requests",
    "deployment",
    "gpus_needed",
    "replica_config",
]

REPLICA_HEADER = "x-stoker-replica"
"""Response header naming the replica that answered (its Ray Serve replica id)."""


def default_max_ongoing_requests(config: ServerConfig) -> int:
    """Requests one replica may hold: every engine's queue (``capacity``) plus the batches its
    staging slots keep in flight. Ray sends a replica no more than this, so below it a replica's
    engines see every request at once and answer overload themselves (503 and Retry-After once
    a queue is full, 504 once a deadline passes), instead of requests waiting, unbounded and
    without a deadline, in Ray's queue in front of the replica."""
    per_engine = (m.capacity + m.max_batch_size * m.staging_slots for m in config.models)
    return sum(n * len(m.replicas) for n, m in zip(per_engine, config.models, strict=True))


def _gpu_index(device: str) -> int | None:
    """N of ``cuda:N`` (0 for ``cuda``); None for the CPU."""
    device = device.strip().lower()
    if not device.startswith("cuda"):
        return None
    return int(device.partition(":")[2] or 0)


def gpus_needed(config: ServerConfig) -> int:
    """GPUs a replica needs: one more than the highest index any model's engines use."""
    indices = (_gpu_index(d) for m in config.models for d in m.replicas)
    return max((i + 1 for i in indices if i is not None), default=0)


def replica_config(config: ServerConfig, gpus: int) -> ServerConfig:
    """``config`` as one replica runs it, given the number of GPUs Ray assigned the replica.

    Ray sets CUDA_VISIBLE_DEVICES to the replica's GPUs, so inside it ``cuda`` (``cuda:0``) is
    the first GPU Ray assigned and ``cuda:N`` the (N+1)-th; a model on a GPU the replica was not
    given is an error at start, not a silent second tenant on another replica's GPU."""
    models: list[ModelConfig] = []
    for m in config.models:
        for device in m.replicas:
            index = _gpu_index(device)
            if index is not None and index >= gpus:
                given = "no GPU" if gpus == 0 else f"{gpus} GPU(s)"
                raise ValueError(
                    f"model {m.name!r} runs on {device!r}, but Ray gave this replica {given}: "
                    "raise num_gpus, or number devices within the replica's GPUs"
                )
        index = _gpu_index(m.device)
        if m.devices is None and index is not None:  # "cuda", "CUDA:0" and so on: "cuda:0"
            models.append(dataclasses.replace(m, device=f"cuda:{index}"))
        else:
            models.append(m)
    return dataclasses.replace(config, models=tuple(models))


class _ReplicaHeader:
    """Adds ``x-stoker-replica`` to every HTTP answer: which replica served it, for load
    spreading checks and for finding a misbehaving replica from a client's logs."""

    def __init__(self, app: Any, replica: str) -> None:
        self.app = app
        self.header = (REPLICA_HEADER.encode(), replica.encode("latin-1"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def tagged(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), self.header]}
            await send(message)

        await self.app(scope, receive, tagged)


def _replica_app(config: ServerConfig, num_threads: int | None) -> FastAPI:
    """Runs in the replica, once, when Ray starts it: the engines are built here, on the
    replica's own CPUs and GPUs, never in the process that defines the deployment."""
    import ray
    from ray import serve

    import stoker
    from stoker.server import create_app

    if num_threads is None:
        # Ray reserved num_cpus for this replica; a pool of that size keeps replicas sharing
        # a host from oversubscribing its cores (Ray's CPU share is a reservation, not a cap).
        # With no CPU reserved the pool keeps stoker's default, the CPUs the process may use.
        context: Any = ray.get_runtime_context()  # its methods are untyped
        cpus = float(context.get_assigned_resources().get("CPU", 0.0))
        num_threads = max(1, math.floor(cpus)) if cpus > 0 else None
    if num_threads is not None:
        stoker.set_num_threads(num_threads)
    app = create_app(replica_config(config, len(ray.get_gpu_ids())))
    # An outer middleware, so stoker's raw ASGI hot path answers carry the header too.
    app.add_middleware(_ReplicaHeader, replica=str(serve.get_replica_context().replica_tag))
    return app


def deployment(
    config: ServerConfig,
    *,
    num_replicas: int = 2,
    num_gpus: float | None = None,
    num_cpus: float = 1,
    num_threads: int | None = None,
    max_ongoing_requests: int | None = None,
    max_queued_requests: int = 128,
    name: str = "stoker",
    ray_actor_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> Application:
    """A Ray Serve application of ``num_replicas`` copies of stoker's HTTP server.

    ``num_gpus`` and ``num_cpus`` are reserved per replica (``num_gpus`` defaults to
    `gpus_needed`: 1 when the models run on ``cuda``, 0 on the CPU; a fraction shares a GPU
    between replicas). The native pool of each replica gets ``num_threads`` threads, by default
    ``floor(num_cpus)`` (at least 1).
    ``max_ongoing_requests`` (per replica) defaults to `default_max_ongoing_requests`;
    ``max_queued_requests`` bounds the requests Ray's proxy holds while every replica is full
    or none is up, beyond which Ray answers 503. Other keyword arguments (``autoscaling_config``,
    ``health_check_period_s``, ...) go to ``serve.deployment`` unchanged.

    Run it with ``serve.run(deployment(config), route_prefix="/")``; see docs/ray.md.
    """
    from ray import serve

    if num_gpus is None:
        num_gpus = gpus_needed(config)
    actor_options = {"num_cpus": num_cpus, "num_gpus": num_gpus, **(ray_actor_options or {})}
    if max_ongoing_requests is None:
        max_ongoing_requests = default_max_ongoing_requests(config)

    def build() -> FastAPI:
        return _replica_app(config, num_threads)

    # The builder form of serve.ingress: Ray calls `build` in each replica as it starts, so the
    # engines (which hold threads, pinned memory and a device) are created there and are never
    # pickled. Serve's own @serve.batch is not used: it would batch in Python on top of the
    # engine's native batcher, adding a wait and an extra copy per request.
    ingress = serve.ingress(build)()
    wrap = serve.deployment(
        name=name,
        num_replicas=num_replicas,
        ray_actor_options=actor_options,
        max_ongoing_requests=max_ongoing_requests,
        max_queued_requests=max_queued_requests,
        **options,
    )
    return wrap(ingress).bind()
