"""The HTTP front: KServe v2 / Open Inference Protocol endpoints, a plain image endpoint, metrics.

Handlers read the raw body (no per-request pydantic models on the inference paths) and hand the
images to the model's engine; errors map to the statuses a load balancer acts on.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from stoker._errors import (
    DeadlineExceededError,
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

__all__ = ["create_app"]

log = logging.getLogger("stoker.server")

IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/webp", "application/octet-stream"})


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = dict(headers or {})


def _status_of(error: Exception) -> HTTPError:
    if isinstance(error, HTTPError):
        return error
    if isinstance(error, QueueFullError):
        return HTTPError(503, str(error), {"Retry-After": "1"})
    if isinstance(error, EngineClosedError):
        return HTTPError(503, str(error), {"Retry-After": "1"})
    if isinstance(error, DeadlineExceededError):
        return HTTPError(504, str(error))
    if isinstance(error, (ImageError, ProtocolError)):
        return HTTPError(400, str(error))
    log.exception("request failed", exc_info=error)
    return HTTPError(500, f"internal error: {type(error).__name__}")


def _server_timing(results: list[tuple[Any, Timings]]) -> str:
    # A request with several images waited as long as its slowest image in each stage.
    worst = [max(getattr(t, s) for _, t in results) for s in STAGES]
    return ", ".join(f"{s};dur={v / 1000:.3f}" for s, v in zip(STAGES, worst, strict=True))


def create_app(config: ServerConfig, models: Mapping[str, ModelLike] | None = None) -> FastAPI:
    """The application for ``config``; ``models`` replaces configured models by name (tests,
    embedding a module built in Python)."""
    models = models or {}
    tasks = {m.name: ImageClassification(m, models.get(m.name)) for m in config.models}
    metrics = ServerMetrics()
    for task in tasks.values():
        metrics.add_engine(task.name, task.engine.stats, task.queue_depth)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        for task in tasks.values():
            task.close()

    app = FastAPI(title="stoker", version="0.1.0", lifespan=lifespan)

    def authorize(request: Request) -> None:
        if config.token is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        expected = config.token.encode()
        # Constant time, so the comparison leaks nothing about the token.
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), expected):
            raise HTTPError(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})

    def task_for(name: str) -> ImageClassification:
        task = tasks.get(name)
        if task is None:
            raise HTTPError(404, f"unknown model {name!r}")
        return task

    async def body_of(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > config.max_body_bytes:
            raise HTTPError(413, f"body larger than {config.max_body_bytes} bytes")
        chunks = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > config.max_body_bytes:
                raise HTTPError(413, f"body larger than {config.max_body_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def check_count(n: int) -> None:
        if n == 0:
            raise HTTPError(400, "the request holds no image")
        if n > config.max_images_per_request:
            raise HTTPError(413, f"more than {config.max_images_per_request} images in one request")

    def fail(error: Exception, model: str, endpoint: str) -> JSONResponse:
        http = _status_of(error)
        # Only configured names become labels: a URL must not create metric series.
        metrics.observe(model if model in tasks else "", endpoint, http.status)
        return JSONResponse({"error": str(http)}, http.status, headers=http.headers)

    @app.get("/v2/health/live")
    async def live() -> Response:
        return Response(status_code=200)

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        return Response(status_code=200)

    @app.get("/v2")
    async def server_metadata(request: Request) -> Response:
        try:
            authorize(request)
        except HTTPError as e:
            return fail(e, "", "metadata")
        return JSONResponse(
            {"name": "stoker", "version": "0.1.0", "extensions": ["binary_tensor_data"]}
        )

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, request: Request, version: str = "1") -> Response:
        try:
            authorize(request)
            return JSONResponse(task_for(name).metadata())
        except HTTPError as e:
            return fail(e, name, "metadata")

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, request: Request, version: str = "1") -> Response:
        try:
            authorize(request)
            task_for(name)
        except HTTPError as e:
            return fail(e, name, "ready")
        return Response(status_code=200)

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str = "1") -> Response:
        try:
            authorize(request)
            task = task_for(name)
            body = await body_of(request)
            header = request.headers.get("inference-header-content-length")
            if header is not None and not header.isdigit():
                raise HTTPError(400, "Inference-Header-Content-Length must be a byte count")
            parsed = parse_infer_request(body, int(header) if header is not None else None)
            if len(parsed.inputs) != 1 or parsed.inputs[0].datatype != "BYTES":
                raise HTTPError(400, "expected one BYTES input holding encoded images")
            images = parsed.inputs[0].elements_bytes()
            check_count(len(images))
            results = await task.run(images, config.timeout_ms)
            outputs = task.outputs(results)
            wanted = {o.name for o in parsed.outputs}
            if wanted:
                unknown = wanted - {o.name for o in outputs}
                if unknown:
                    raise HTTPError(400, f"unknown output(s): {', '.join(sorted(unknown))}")
                outputs = [o for o in outputs if o.name in wanted]
            payload, headers = encode_infer_response(
                name, version, parsed.id, outputs, parsed.wants_binary
            )
        except Exception as e:
            return fail(e, name, "infer")
        metrics.observe(name, "infer", 200)
        media = headers.pop("content-type", "application/json")
        headers["Server-Timing"] = _server_timing(results)
        return Response(payload, 200, headers=headers, media_type=media)

    @app.post("/v1/models/{name}/classify")
    async def classify(name: str, request: Request) -> Response:
        """One image as the body (image/jpeg, image/png, image/webp), or several as multipart
        form-data file parts; answers JSON."""
        try:
            authorize(request)
            task = task_for(name)
            media = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if media == "multipart/form-data":
                declared = request.headers.get("content-length")
                if declared is None or not declared.isdigit():
                    raise HTTPError(411, "multipart bodies need a Content-Length")
                if int(declared) > config.max_body_bytes:
                    raise HTTPError(413, f"body larger than {config.max_body_bytes} bytes")
                async with request.form(
                    max_files=config.max_images_per_request + 1,
                    max_part_size=config.max_body_bytes,
                ) as form:
                    images = [
                        await part.read() for _, part in form.multi_items() if hasattr(part, "read")
                    ]
            elif media in IMAGE_TYPES:
                images = [await body_of(request)]
            else:
                raise HTTPError(415, f"unsupported media type {media or '(none)'}")
            check_count(len(images))
            results = await task.run(images, config.timeout_ms)
        except Exception as e:
            return fail(e, name, "classify")
        metrics.observe(name, "classify", 200)
        return JSONResponse(
            {"model": name, "predictions": task.predictions(results)},
            headers={"Server-Timing": _server_timing(results)},
        )

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        try:
            authorize(request)
        except HTTPError as e:
            return fail(e, "", "metrics")
        body, media = metrics.exposition()
        return Response(body, 200, media_type=media)

    return app
