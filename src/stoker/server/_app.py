"""The HTTP front: KServe v2 / Open Inference Protocol endpoints, a plain image endpoint,
OpenAI-style text embeddings and text generation, metrics.

FastAPI serves every route and the OpenAPI docs. The inference endpoints also have a raw
ASGI path in front of FastAPI's routing and dependency resolution, which cost more than the
rest of a request's Python work: it takes the body straight to the model's engine.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from stoker._heap import frozen_heap
from stoker._models import ModelLike
from stoker._runner import TORCH_DTYPES
from stoker.server._config import ServerConfig, switch_interval
from stoker.server._front import IMAGE_TYPES, Front, HTTPError, Reply
from stoker.server._openai import OpenAIRoutes, ServedGenerator
from stoker.server._openai_protocol import Kind

__all__ = ["create_app"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _response(reply: Reply) -> Response:
    status, headers, body = reply
    media = headers.pop("content-type", None)
    return Response(body, status, headers=headers, media_type=media)


_OPENAI_PATHS: dict[str, Kind] = {
    "/v1/completions": "completions",
    "/v1/chat/completions": "chat_completions",
}


class HotPath:
    """Raw ASGI handling of ``POST /v2/models/{name}/infer``, of a single image posted to
    ``/v1/models/{name}/classify``, of ``POST /v1/embeddings`` and of the completion endpoints
    (whose streams send an event per token: FastAPI's wrappers around every send cost a
    quarter of it); everything else goes on to FastAPI."""

    def __init__(self, app: ASGIApp, front: Front, openai: OpenAIRoutes) -> None:
        self.app = app
        self.front = front
        self.openai = openai

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            kind = _OPENAI_PATHS.get(path)
            if kind is not None:
                await self.openai.serve(kind, scope, receive, send)
                return
            if path == "/v1/embeddings":
                await self._serve(scope, receive, send, "", "embeddings")
                return
            if path.startswith("/v2/models/") and path.endswith("/infer"):
                name = path[len("/v2/models/") : -len("/infer")]
                if name and "/" not in name:
                    await self._serve(scope, receive, send, name, "infer")
                    return
            elif path.startswith("/v1/models/") and path.endswith("/classify"):
                name = path[len("/v1/models/") : -len("/classify")]
                headers = _headers(scope)
                media = headers.get("content-type", "").split(";")[0].strip().lower()
                if name and "/" not in name and media in IMAGE_TYPES:
                    await self._serve(scope, receive, send, name, "classify", headers)
                    return
        await self.app(scope, receive, send)

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        name: str,
        endpoint: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        front = self.front
        headers = headers if headers is not None else _headers(scope)
        try:
            front.authorize(headers.get("authorization"))
            front.check_declared_size(headers.get("content-length"))
            body = await _read_body(receive, front.config.max_body_bytes)
        except HTTPError as e:
            await _send(send, front.fail(e, name, endpoint))
            return
        if endpoint == "infer":
            reply = await front.infer(name, "1", headers, body)
        elif endpoint == "embeddings":
            reply = await front.embeddings(headers, body)
        else:
            reply = await front.classify(name, headers, [body])
        await _send(send, reply)


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise HTTPError(499, "the client went away")
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, f"body larger than {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _send(send: Send, reply: Reply) -> None:
    status, headers, body = reply
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _generators(config: ServerConfig) -> dict[str, ServedGenerator]:
    """Engines for the configured text-generation models."""
    wanted = [m for m in config.models if m.task == "text-generation"]
    if not wanted:
        return {}
    from stoker.generate import GenerateEngine, NgramProposer, RemoteEngine

    engines: dict[str, ServedGenerator] = {}
    try:
        for m in wanted:
            if not (Path(m.model) / "tokenizer.json").is_file():
                raise ValueError(f"{m.model} has no tokenizer.json: text-generation needs one")
            kind = RemoteEngine if m.engine_process else GenerateEngine
            engines[m.name] = kind(
                m.model,
                device=m.device,
                dtype=TORCH_DTYPES[m.dtype] if m.dtype else None,
                max_num_seqs=m.max_num_seqs,
                max_num_batched_tokens=m.max_num_batched_tokens,
                max_model_len=m.max_model_len,
                name=m.name,
                speculative=(NgramProposer(m.speculative_tokens) if m.speculative_tokens else None),
                schedule_ahead=m.schedule_ahead,
                prompt_graph_tokens=m.prompt_graph_tokens,
            )
    except BaseException:
        for engine in engines.values():
            engine.close()
        raise
    return engines


def create_app(
    config: ServerConfig,
    models: Mapping[str, ModelLike] | None = None,
    generators: Mapping[str, ServedGenerator] | None = None,
) -> FastAPI:
    """The application for ``config``; ``models`` replaces configured models by name (tests,
    embedding a module built in Python). ``generators`` are text-generation engines served by
    name on the OpenAI completion endpoints; the application closes them when it shuts down."""
    front = Front(config, models)
    served: dict[str, ServedGenerator] = {}
    try:
        served = {**_generators(config), **(generators or {})}
        openai = OpenAIRoutes(front, served, _read_body)
    except BaseException:
        for g in served.values():
            g.close()
        front.close()
        raise

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        with switch_interval(config.switch_interval_ms), frozen_heap():
            yield
        openai.close()
        front.close()

    app = FastAPI(title="stoker", version="0.1.0", lifespan=lifespan)
    app.state.front = front
    app.add_middleware(HotPath, front=front, openai=openai)

    async def body_of(request: Request) -> bytes:
        front.check_declared_size(request.headers.get("content-length"))
        return await _read_body(request.receive, config.max_body_bytes)

    def guarded(request: Request, model: str, endpoint: str) -> Response | None:
        try:
            front.authorize(request.headers.get("authorization"))
            if model:
                front.task(model)
        except HTTPError as e:
            return _response(front.fail(e, model, endpoint))
        return None

    @app.get("/v2/health/live")
    async def live() -> Response:
        return Response(status_code=200)

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        return Response(status_code=200)

    @app.get("/v2")
    async def server_metadata(request: Request) -> Response:
        refused = guarded(request, "", "metadata")
        if refused is not None:
            return refused
        body = b'{"name":"stoker","version":"0.1.0","extensions":["binary_tensor_data"]}'
        return Response(body, media_type="application/json")

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, request: Request, version: str = "1") -> Response:
        refused = guarded(request, name, "metadata")
        if refused is not None:
            return refused
        return Response(json.dumps(front.task(name).metadata()), media_type="application/json")

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, request: Request, version: str = "1") -> Response:
        return guarded(request, name, "ready") or Response(status_code=200)

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str = "1") -> Response:
        """KServe v2 inference: one BYTES input of encoded images (JSON or binary extension)."""
        refused = guarded(request, name, "infer")
        if refused is not None:
            return refused
        try:
            body = await body_of(request)
        except HTTPError as e:
            return _response(front.fail(e, name, "infer"))
        headers = {k.lower(): v for k, v in request.headers.items()}
        return _response(await front.infer(name, version, headers, body))

    @app.post("/v1/models/{name}/classify")
    async def classify(name: str, request: Request) -> Response:
        """One image as the body (image/jpeg, image/png, image/webp), or several as multipart
        form-data file parts; answers JSON."""
        refused = guarded(request, name, "classify")
        if refused is not None:
            return refused
        headers = {k.lower(): v for k, v in request.headers.items()}
        media = headers.get("content-type", "").split(";")[0].strip().lower()
        try:
            if media == "multipart/form-data":
                declared = headers.get("content-length")
                if declared is None or not declared.isdigit():
                    raise HTTPError(411, "multipart bodies need a Content-Length")
                front.check_declared_size(declared)
                async with request.form(
                    max_files=config.max_images_per_request + 1,
                    max_part_size=config.max_body_bytes,
                ) as form:
                    parts = [p for _, p in form.multi_items() if not isinstance(p, str)]
                    images = [await p.read() for p in parts]
            elif media in IMAGE_TYPES:
                images = [await body_of(request)]
            else:
                raise HTTPError(415, f"unsupported media type {media or '(none)'}")
        except HTTPError as e:
            return _response(front.fail(e, name, "classify"))
        return _response(await front.classify(name, headers, images))

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        """OpenAI-compatible embeddings: a JSON object with ``input`` (a string or a list of
        strings), ``model`` (a served text model) and ``encoding_format`` (float or base64)."""
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            body = await body_of(request)
        except HTTPError as e:
            return _response(front.fail(e, "", "embeddings"))
        return _response(await front.embeddings(headers, body))

    @app.post("/v1/completions")
    async def completions() -> Response:
        """OpenAI-compatible text completions: ``model`` (a served generator), ``prompt`` (a
        string or token ids), ``max_tokens``, ``temperature``, ``top_p``, ``top_k``, ``seed``,
        ``stop``, ``stream`` (server-sent events), ``stream_options``, ``ignore_eos``."""
        return openai.response("completions")

    @app.post("/v1/chat/completions")
    async def chat_completions() -> Response:
        """OpenAI-compatible chat completions: ``messages`` rendered by the model's chat
        template, and the options of ``/v1/completions`` (``max_completion_tokens`` too)."""
        return openai.response("chat_completions")

    started = int(time.time())

    @app.get("/v1/models")
    async def openai_models(request: Request) -> Response:
        """OpenAI-style list of the models the ``/v1`` endpoints serve: the generators and the
        text-embedding models."""
        refused = guarded(request, "", "models")
        if refused is not None:
            return refused
        names = [*openai.names(), *front.text_tasks]
        data = [
            {"id": n, "object": "model", "created": started, "owned_by": "stoker"} for n in names
        ]
        body = json.dumps({"object": "list", "data": data})
        return Response(body, 200, media_type="application/json")

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        refused = guarded(request, "", "metrics")
        if refused is not None:
            return refused
        body, media = front.metrics.exposition()
        return Response(body, 200, media_type=media)

    return app
