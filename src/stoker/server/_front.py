"""The server's request logic, independent of the web framework: auth, limits, the inference
endpoints (KServe v2, the plain image endpoint, OpenAI-style embeddings) and their error statuses.
FastAPI routes and the raw-ASGI hot path both call it."""

from __future__ import annotations

import base64
import hmac
import json
import logging
from collections.abc import Mapping, Sequence
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
from stoker.server._replicas import device_sources
from stoker.server._tasks import TEXT_ERRORS, ImageClassification, Task, TextEmbedding

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
    if isinstance(error, (ImageError, ProtocolError, *TEXT_ERRORS)):
        return HTTPError(400, str(error))
    log.exception("request failed", exc_info=error)
    return HTTPError(500, f"internal error: {type(error).__name__}")


def server_timing(results: Sequence[tuple[Any, Any]]) -> str:
    """The header of a request's results (``Timings`` of images, ``TextTimings`` of texts)."""
    first: Any = results[0][1]
    if len(results) == 1:
        return str(first.server_timing())
    # A request with several inputs waited as long as its slowest input in each stage.
    stages = (
        STAGES if isinstance(first, Timings) else first._fields[: first._fields.index("total") + 1]
    )
    worst = {s: max(getattr(t, s) for _, t in results) for s in stages}
    return str(first._replace(**worst).server_timing())


class Front:
    """The models and the rules every endpoint applies."""

    def __init__(self, config: ServerConfig, models: Mapping[str, ModelLike] | None = None):
        models = models or {}
        self.config = config
        # Only image models go to the native gateway, which queues their requests natively;
        # text models are answered here, whatever front took the request.
        self.tasks: dict[str, ImageClassification] = {}
        self.text_tasks: dict[str, TextEmbedding] = {}
        try:
            for m in config.models:
                if m.task == "text-generation":
                    continue  # served by the OpenAI completion routes (create_app)
                if m.task == "text-embedding":
                    self.text_tasks[m.name] = TextEmbedding(m)
                else:
                    self.tasks[m.name] = ImageClassification(m, models.get(m.name))
        except BaseException:
            self.close()
            raise
        self.metrics = ServerMetrics()
        # Per model: every device's engine summed; per device too, labelled with it.
        for task in self.tasks.values():
            devices = device_sources(task.engine)
            self.metrics.add_engine(task.name, task.engine.stats, task.queue_depth, devices)
        for text in self.text_tasks.values():
            device = (str(text.engine.device), text.engine.stats, text.queue_depth)
            self.metrics.add_engine(text.name, text.engine.stats, text.queue_depth, [device])
        self._expected = config.token.encode() if config.token is not None else None

    def all_tasks(self) -> list[Task]:
        return [*self.tasks.values(), *self.text_tasks.values()]

    def close(self) -> None:
        for task in self.all_tasks():
            task.close()

    def authorize(self, authorization: str | None) -> None:
        if self._expected is None:
            return
        scheme, _, token = (authorization or "").partition(" ")
        # Constant time, so the comparison leaks nothing about the token.
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), self._expected):
            raise HTTPError(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})

    def task(self, name: str) -> Task:
        task = self.tasks.get(name) or self.text_tasks.get(name)
        if task is None:
            raise HTTPError(404, f"unknown model {name!r}")
        return task

    def image_task(self, name: str) -> ImageClassification:
        task = self.task(name)
        if not isinstance(task, ImageClassification):
            raise HTTPError(400, f"model {name!r} does not classify images")
        return task

    def text_task(self, name: str) -> TextEmbedding:
        task = self.task(name)
        if not isinstance(task, TextEmbedding):
            raise HTTPError(400, f"model {name!r} does not embed text")
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

    def check_texts(self, n: int) -> None:
        if n == 0:
            raise HTTPError(400, "the request holds no input")
        if n > self.config.max_texts_per_request:
            limit = self.config.max_texts_per_request
            raise HTTPError(413, f"more than {limit} inputs in one request")

    def fail(self, error: Exception, model: str, endpoint: str) -> Reply:
        http = status_of(error)
        # Only configured names become labels: a URL (or a body) must not create metric series.
        known = model in self.tasks or model in self.text_tasks
        self.metrics.observe(model if known else "", endpoint, http.status)
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
                what = "texts" if isinstance(task, TextEmbedding) else "encoded images"
                raise HTTPError(400, f"expected one BYTES input holding {what}")
            elements = parsed.inputs[0].elements_bytes()
            results: Sequence[tuple[Any, Any]]
            if isinstance(task, TextEmbedding):
                self.check_texts(len(elements))
                texts = task.decode(elements)
                results = await task.run(texts, self.config.timeout_ms)
                outputs = task.outputs(results)
            else:
                self.check_count(len(elements))
                results = await task.run(elements, self.config.timeout_ms)
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
            task = self.image_task(name)
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

    async def embeddings(self, headers: Mapping[str, str], body: bytes) -> Reply:
        """OpenAI-style ``POST /v1/embeddings``: ``input`` a string or a list of strings,
        ``model`` a served text model, ``encoding_format`` float or base64."""
        name = ""
        try:
            self.authorize(headers.get("authorization"))
            request = _json_object(body)
            model = request.get("model")
            if not isinstance(model, str):
                raise HTTPError(400, "'model' must name a served text model")
            name = model
            task = self.text_task(model)
            texts = request.get("input")
            if isinstance(texts, str):
                texts = [texts]
            if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                raise HTTPError(400, "'input' must be a string or a list of strings")
            form = request.get("encoding_format", "float")
            if form not in ("float", "base64"):
                raise HTTPError(400, "'encoding_format' must be 'float' or 'base64'")
            if request.get("dimensions", task.dimension) != task.dimension:
                raise HTTPError(400, f"'dimensions': this model gives {task.dimension}")
            self.check_texts(len(texts))
            results = await task.run(texts, self.config.timeout_ms)
        except Exception as e:
            return self.fail(e, name, "embeddings")
        self.metrics.observe(name, "embeddings", 200)
        vectors = task.embeddings(results)
        rows: Sequence[Any] = (
            vectors.tolist()
            if form == "float"
            else [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vectors]
        )
        tokens = sum(t.tokens for _, t in results)
        answer = {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)
            ],
            "model": name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        headers_out = {"content-type": "application/json", "Server-Timing": server_timing(results)}
        return 200, headers_out, json.dumps(answer, separators=(",", ":")).encode()


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise HTTPError(400, "the body is not JSON") from None
    if not isinstance(value, dict):
        raise HTTPError(400, "the body must be a JSON object")
    return value
