"""The server's request logic, independent of the web framework: auth, limits, the inference
endpoints and their error statuses. FastAPI routes and the raw-ASGI hot path both call it."""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Mapping
from typing import Any

from stoker._errors import (
    DeadlineExceededError,
    DeviceMemoryError,
    EngineClosedError,
    ImageError,
    QueueFullError,
)
from stoker._models import ModelLike
from stoker._stats import STAGES, Timings
from stoker.server._config import ServerConfig
from stoker.server._kserve import ProtocolError, encode_infer_response, parse_infer_request
from stoker.server._metrics import ServerMetrics
from stoker.server._tasks import ImageClassification

__all__ = ["IMAGE_TYPES", "Front", "HTTPError", "Reply"]

log = logging.getLogger("stoker.server")

IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/webp", "application/octet-stream"})

Reply = tuple[int, dict[str, str], bytes]
"""Status, headers (content-type among them) and body."""


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = dict(headers or {})


def status_of(error: Exception) -> HTTPError:
    if isinstance(error, HTTPError):
        return error
    if isinstance(error, (QueueFullError, EngineClosedError, DeviceMemoryError)):
        return HTTPError(503, str(error), {"Retry-After": "1"})
    if isinstance(error, DeadlineExceededError):
        return HTTPError(504, str(error))
    if isinstance(error, (ImageError, ProtocolError)):
        return HTTPError(400, str(error))
    log.exception("request failed", exc_info=error)
    return HTTPError(500, f"internal error: {type(error).__name__}")


def server_timing(results: list[tuple[Any, Timings]]) -> str:
    if len(results) == 1:
        return results[0][1].server_timing()
    # A request with several images waited as long as its slowest image in each stage.
    worst = [max(getattr(t, s) for _, t in results) for s in STAGES]
    return Timings._make([*worst, max(t.batch_size for _, t in results)]).server_timing()


class Front:
    """The models and the rules every endpoint applies."""

    def __init__(self, config: ServerConfig, models: Mapping[str, ModelLike] | None = None):
        models = models or {}
        self.config = config
        self.tasks = {m.name: ImageClassification(m, models.get(m.name)) for m in config.models}
        self.metrics = ServerMetrics()
        for task in self.tasks.values():
            self.metrics.add_engine(task.name, task.engine.stats, task.queue_depth)
        self._expected = config.token.encode() if config.token is not None else None

    def close(self) -> None:
        for task in self.tasks.values():
            task.close()

    def authorize(self, authorization: str | None) -> None:
        if self._expected is None:
            return
        scheme, _, token = (authorization or "").partition(" ")
        # Constant time, so the comparison leaks nothing about the token.
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), self._expected):
            raise HTTPError(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})

    def task(self, name: str) -> ImageClassification:
        task = self.tasks.get(name)
        if task is None:
            raise HTTPError(404, f"unknown model {name!r}")
        return task

    def check_declared_size(self, content_length: str | None) -> None:
        limit = self.config.max_body_bytes
        if content_length is not None and content_length.isdigit() and int(content_length) > limit:
            raise HTTPError(413, f"body larger than {limit} bytes")

    def check_count(self, n: int) -> None:
        if n == 0:
            raise HTTPError(400, "the request holds no image")
        if n > self.config.max_images_per_request:
            limit = self.config.max_images_per_request
            raise HTTPError(413, f"more than {limit} images in one request")

    def fail(self, error: Exception, model: str, endpoint: str) -> Reply:
        http = status_of(error)
        # Only configured names become labels: a URL must not create metric series.
        self.metrics.observe(model if model in self.tasks else "", endpoint, http.status)
        body = json.dumps({"error": str(http)}).encode()
        return http.status, {**http.headers, "content-type": "application/json"}, body

    async def infer(
        self, name: str, version: str, headers: Mapping[str, str], body: bytes
    ) -> Reply:
        """KServe v2 inference; ``headers`` keys are lower case."""
        try:
            self.authorize(headers.get("authorization"))
            task = self.task(name)
            header = headers.get("inference-header-content-length")
            if header is not None and not header.isdigit():
                raise HTTPError(400, "Inference-Header-Content-Length must be a byte count")
            parsed = parse_infer_request(body, int(header) if header is not None else None)
            if len(parsed.inputs) != 1 or parsed.inputs[0].datatype != "BYTES":
                raise HTTPError(400, "expected one BYTES input holding encoded images")
            images = parsed.inputs[0].elements_bytes()
            self.check_count(len(images))
            results = await task.run(images, self.config.timeout_ms)
            outputs = task.outputs(results)
            wanted = {o.name for o in parsed.outputs}
            if wanted:
                unknown = wanted - {o.name for o in outputs}
                if unknown:
                    raise HTTPError(400, f"unknown output(s): {', '.join(sorted(unknown))}")
                outputs = [o for o in outputs if o.name in wanted]
            payload, extra = encode_infer_response(
                name, version, parsed.id, outputs, parsed.wants_binary
            )
        except Exception as e:
            return self.fail(e, name, "infer")
        self.metrics.observe(name, "infer", 200)
        extra["Server-Timing"] = server_timing(results)
        return 200, extra, payload

    async def classify(self, name: str, headers: Mapping[str, str], images: list[bytes]) -> Reply:
        """The plain endpoint, once its images are read from the body."""
        try:
            self.authorize(headers.get("authorization"))
            task = self.task(name)
            self.check_count(len(images))
            results = await task.run(images, self.config.timeout_ms)
        except Exception as e:
            return self.fail(e, name, "classify")
        self.metrics.observe(name, "classify", 200)
        body = json.dumps({"model": name, "predictions": task.predictions(results)}).encode()
        return (
            200,
            {"content-type": "application/json", "Server-Timing": server_timing(results)},
            body,
        )
