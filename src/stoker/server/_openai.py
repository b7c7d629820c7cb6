"""OpenAI-compatible text generation: ``POST /v1/completions`` and ``POST /v1/chat/completions``
over any engine with the ``Generator`` protocol, answered whole or streamed as server-sent events.

Requests are parsed and answers built by pure functions. The exchange around them runs on the raw
ASGI connection, watching for the client to leave: that cancels the generation, which closes the
engine's stream and so aborts the sequence and frees its KV cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from stoker.generate._chat import ChatTemplate, TextStream
from stoker.generate._types import (
    FinishReason,
    GenerationChunk,
    Generator,
    SamplingOptions,
)
from stoker.server._front import Front
from stoker.server._metrics import GenerationMetrics
from stoker.server._openai_protocol import (
    Aborted,
    Answer,
    BadRequest,
    GenerateRequest,
    Kind,
    error_reply,
    parse_request,
    sampling_options,
)

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = ["OpenAIRoutes", "ServedGenerator"]

BodyReader = Callable[[Receive, int], Awaitable[bytes]]


class ServedGenerator(Generator, Protocol):
    """What the endpoints need of a generation engine beyond ``Generator``."""

    tokenizer: Tokenizer
    model_folder: Path
    """Its ``tokenizer_config.json`` holds the chat template and special tokens."""

    def stream(
        self, prompt_ids: Sequence[int], options: SamplingOptions
    ) -> AsyncGenerator[GenerationChunk, None]:
        """As ``Generator.stream``, an async generator: ``aclose()`` is called once a chunk
        carries a finish reason or a stop string appears, and when the client leaves."""
        ...

    def close(self) -> None: ...


@dataclass
class _Served:
    name: str
    generator: ServedGenerator
    template: ChatTemplate
    metrics: GenerationMetrics

    def prompt_ids(self, request: GenerateRequest) -> list[int]:
        tokenizer = self.generator.tokenizer
        if request.messages is not None:
            text = self.template.render(request.messages)
            # The template writes the special tokens itself.
            ids: list[int] = tokenizer.encode(text, add_special_tokens=False).ids
        elif isinstance(request.prompt, str):
            ids = tokenizer.encode(request.prompt).ids
        else:
            ids = request.prompt or []
            vocab = tokenizer.get_vocab_size()
            if any(not 0 <= t < vocab for t in ids):
                raise BadRequest(f"token ids must be in [0, {vocab})", "prompt")
        if not ids:
            raise BadRequest("the prompt is empty", "prompt")
        return ids


class _Run:
    """One admitted request: its generation as text events, and its token accounting."""

    def __init__(
        self, served: _Served, request: GenerateRequest, prompt: list[int], arrived: float
    ) -> None:
        self.served = served
        self.request = request
        self.prompt = prompt
        self.options = sampling_options(request, len(prompt), served.generator.max_model_len)
        self.answer = Answer(request.kind, served.name)
        self.arrived = arrived
        self.first_at = self.last_at = 0.0
        self.completion_tokens = self.cached_tokens = 0

    def usage(self) -> dict[str, Any]:
        prompt, completion = len(self.prompt), self.completion_tokens
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }

    def _count(self, chunk: GenerationChunk) -> None:
        now, n = time.perf_counter(), len(chunk.token_ids)
        metrics = self.served.metrics
        if not self.first_at:
            self.first_at = now
            self.cached_tokens = chunk.cached_tokens
            metrics.first_token(now - self.arrived, len(self.prompt))
            metrics.tokens(n, None)
        else:
            metrics.tokens(n, now - self.last_at)
        self.last_at = now
        self.completion_tokens += n

    async def events(self) -> AsyncGenerator[tuple[str, FinishReason | None], None]:
        """(new text, finish reason) per engine chunk; the last has a finish reason."""
        text_stream = TextStream(self.served.generator.tokenizer, self.request.stop, self.prompt)
        finish: FinishReason | None = None
        try:
            chunks = self.served.generator.stream(self.prompt, self.options)
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    self._count(chunk)
                    text, finish = text_stream.add(chunk)
                    if finish == "abort":
                        raise Aborted("the engine ended the generation")
                    yield text, finish
                    if finish is not None:
                        return
            raise Aborted("the engine ended the generation without a finish reason")
        finally:
            self.served.metrics.finished(finish or "abort")


class _Exchange(Response):
    """A route's answer that is the whole exchange: FastAPI hands it the connection."""

    def __init__(self, routes: OpenAIRoutes, kind: Kind) -> None:
        super().__init__()
        self._routes, self._kind = routes, kind

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._routes.serve(self._kind, scope, receive, send)


class OpenAIRoutes:
    """The endpoints over the served generators, which they own and close."""

    def __init__(
        self, front: Front, generators: Mapping[str, ServedGenerator], read_body: BodyReader
    ) -> None:
        self.front = front
        self._read_body = read_body
        self._served: dict[str, _Served] = {}
        for name, g in generators.items():
            if name in front.tasks or name in front.text_tasks:
                raise ValueError(f"model name {name!r} is both configured and a generator")
            template = ChatTemplate.from_folder(g.model_folder)
            metrics = front.metrics.add_generator(name, g.stats)
            self._served[name] = _Served(name, g, template, metrics)

    def names(self) -> list[str]:
        """The served generators' names."""
        return list(self._served)

    def response(self, kind: Kind) -> Response:
        return _Exchange(self, kind)

    def close(self) -> None:
        for served in self._served.values():
            served.generator.close()

    async def serve(self, kind: Kind, scope: Scope, receive: Receive, send: Send) -> None:
        arrived = time.perf_counter()
        name = ""
        try:
            headers = {
                k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
            }
            self.front.authorize(headers.get("authorization"))
            self.front.check_declared_size(headers.get("content-length"))
            body = await self._read_body(receive, self.front.config.max_body_bytes)
            request = parse_request(kind, body)
            served = self._served.get(request.model)
            if served is None:
                message = f"the model {request.model!r} does not exist"
                raise BadRequest(message, "model", "model_not_found", 404)
            name = served.name
            run = _Run(served, request, served.prompt_ids(request), arrived)
        except Exception as e:
            status = await _fail(send, e)
        else:
            work = self._stream(run, send) if request.stream else self._whole(run, send)
            status = await _unless_disconnected(receive, work) or 499
        self.front.metrics.observe(name, kind, status)

    async def _whole(self, run: _Run, send: Send) -> int:
        pieces = []
        finish: FinishReason | None = None
        try:
            async with contextlib.aclosing(run.events()) as events:
                async for text, reason in events:
                    pieces.append(text)
                    finish = reason
        except Exception as e:
            return await _fail(send, e)
        now = time.perf_counter()
        timing = (
            f"ttft;dur={(run.first_at - run.arrived) * 1000:.3f}, "
            f"total;dur={(now - run.arrived) * 1000:.3f}"
        )
        body = run.answer.whole("".join(pieces), finish, run.usage())
        await _send_json(send, 200, body, {"Server-Timing": timing})
        return 200

    async def _stream(self, run: _Run, send: Send) -> int:
        answer = run.answer
        async with contextlib.aclosing(run.events()) as events:
            # The first chunk comes before the headers, so that a request the engine refuses
            # gets its own status rather than a stream holding an error.
            try:
                text, finish = await anext(events)
            except Exception as e:
                return await _fail(send, e)
            headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})

            async def emit(data: dict[str, Any] | str | bytes) -> None:
                if not isinstance(data, bytes):
                    text = (
                        data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
                    )
                    data = f"data: {text}\n\n".encode()
                await send({"type": "http.response.body", "body": data, "more_body": True})

            if answer.kind == "chat_completions":
                await emit(answer.chunk("", None, role=True))
            try:
                while True:
                    if text or finish:
                        await emit(answer.chunk_event(text, finish))
                    if finish:
                        break
                    text, finish = await anext(events)
            except Exception as e:
                # Too late for a status: the error goes in the stream, as OpenAI sends it.
                await emit(error_reply(e)[2])
            if run.request.include_usage:
                await emit(answer.usage_chunk(run.usage()))
            await emit("[DONE]")
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        return 200


async def _fail(send: Send, error: Exception) -> int:
    status, headers, body = error_reply(error)
    await _send_json(send, status, body, headers)
    return status


async def _send_json(send: Send, status: int, body: dict[str, Any], extra: dict[str, str]) -> None:
    data = json.dumps(body, separators=(",", ":")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(receive: Receive, work: Coroutine[Any, Any, int]) -> int | None:
    """``work``'s status, or None when the client left first and ``work`` was cancelled."""
    job = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait((job, watch), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        job.cancel()
        # Until the job has unwound, the engine's stream may not be closed yet.
        await asyncio.wait((job, watch))
    return None if job.cancelled() else job.result()
