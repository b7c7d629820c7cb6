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
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from stoker.generate._chat import ChatTemplate, TextStream
from stoker.generate._types import (
    FinishReason,
    GenerationChunk,
    GenerationError,
    Generator,
    SamplingOptions,
)
from stoker.server._front import Front, _json_object, status_of
from stoker.server._metrics import GenerationMetrics

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = ["BadRequest", "GenerateRequest", "OpenAIRoutes", "ServedGenerator", "parse_request"]

Kind = Literal["completions", "chat_completions"]
"""Which endpoint; also the ``endpoint`` label of the request counter."""
BodyReader = Callable[[Receive, int], Awaitable[bytes]]

_MAX_STOPS = 4
_COMPLETION_DEFAULT_TOKENS = 16  # OpenAI's default for /v1/completions


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


class BadRequest(Exception):
    """A request the OpenAI API would refuse, with the ``param`` and ``code`` it would name."""

    def __init__(
        self, message: str, param: str | None = None, code: str | None = None, status: int = 400
    ) -> None:
        super().__init__(message)
        self.param = param
        self.code = code
        self.status = status


class _Aborted(Exception):
    """The engine ended the sequence itself (it is closing)."""


@dataclass(frozen=True)
class GenerateRequest:
    kind: Kind
    model: str
    prompt: str | list[int] | None = None
    messages: list[Any] | None = None
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    stream: bool = False
    include_usage: bool = False


def _typed(data: Mapping[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    """``data[name]`` if it is absent, null or of ``kind`` (never a bool for a number)."""
    value = data.get(name)
    if value is not None and (
        not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool)
    ):
        raise BadRequest(f"'{name}' must be {what}", name)
    return value


def _number(data: Mapping[str, Any], name: str, default: float) -> float:
    value = _typed(data, name, (int, float), "a number")
    return default if value is None else float(value)


def _prompt(value: Any) -> str | list[int]:
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str | list):
        value = value[0]  # a batch of one prompt
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(type(t) is int for t in value):
        return value
    raise BadRequest("'prompt' must be a string or a list of token ids (one prompt)", "prompt")


def parse_request(kind: Kind, body: bytes) -> GenerateRequest:
    """The request in ``body``; raises BadRequest. Fields this server does not know are ignored,
    as OpenAI clients send many."""
    data = _json_object(body)
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' must name a served model", "model")
    if _typed(data, "n", int, "an integer") not in (None, 1):
        raise BadRequest("only n=1 is served", "n")
    stop = data.get("stop")
    stops = () if stop is None else (stop,) if isinstance(stop, str) else stop
    if not isinstance(stops, list | tuple) or not all(isinstance(s, str) and s for s in stops):
        raise BadRequest("'stop' must be a non-empty string or a list of them", "stop")
    if len(stops) > _MAX_STOPS:
        raise BadRequest(f"at most {_MAX_STOPS} stop strings", "stop")
    stream_options = _typed(data, "stream_options", dict, "an object") or {}
    top_k = _typed(data, "top_k", int, "an integer")
    seed = _typed(data, "seed", int, "an integer")
    if seed is not None and not -(1 << 63) <= seed < 1 << 64:
        raise BadRequest("'seed' must fit in 64 bits", "seed")
    fields: dict[str, Any] = {}
    if kind == "completions":
        fields["prompt"] = _prompt(data.get("prompt"))
        fields["max_tokens"] = _typed(data, "max_tokens", int, "an integer")
    else:
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("'messages' must be a non-empty list of messages", "messages")
        fields["messages"] = messages
        fields["max_tokens"] = _typed(data, "max_completion_tokens", int, "an integer")
        if fields["max_tokens"] is None:
            fields["max_tokens"] = _typed(data, "max_tokens", int, "an integer")
    return GenerateRequest(
        kind,
        model,
        temperature=_number(data, "temperature", 1.0),
        top_p=_number(data, "top_p", 1.0),
        # vLLM's clients say -1 for "no top-k".
        top_k=0 if top_k in (None, -1) else top_k,
        seed=seed,
        stop=tuple(stops),
        ignore_eos=bool(_typed(data, "ignore_eos", bool, "true or false")),
        stream=bool(_typed(data, "stream", bool, "true or false")),
        include_usage=bool(_typed(stream_options, "include_usage", bool, "true or false")),
        **fields,
    )


def sampling_options(
    request: GenerateRequest, prompt_tokens: int, max_model_len: int
) -> SamplingOptions:
    """The engine's options; without ``max_tokens`` a chat may fill the model's context."""
    room = max_model_len - prompt_tokens
    default = _COMPLETION_DEFAULT_TOKENS if request.kind == "completions" else max(room, 1)
    options = SamplingOptions(
        max_tokens=default if request.max_tokens is None else request.max_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        top_k=request.top_k,
        seed=request.seed,
        ignore_eos=request.ignore_eos,
    )
    options.check()
    if options.max_tokens > room:
        raise BadRequest(
            f"this model's context is {max_model_len} tokens, but {prompt_tokens} of prompt and "
            f"{options.max_tokens} to generate were asked for",
            "messages" if request.kind == "chat_completions" else "prompt",
            "context_length_exceeded",
        )
    return options


@dataclass(frozen=True)
class Answer:
    """The response objects of one request, whole or as stream chunks."""

    kind: Kind
    model: str
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        if not self.id:
            prefix = "cmpl" if self.kind == "completions" else "chatcmpl"
            object.__setattr__(self, "id", f"{prefix}-{uuid.uuid4().hex}")

    def _head(self, suffix: str) -> dict[str, Any]:
        obj = "text_completion" if self.kind == "completions" else "chat.completion" + suffix
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def whole(self, text: str, finish: FinishReason | None, used: dict[str, Any]) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish}
        if self.kind == "completions":
            choice["text"] = text
        else:
            choice["message"] = {"role": "assistant", "content": text}
        return {**self._head(""), "choices": [choice], "usage": used}

    def chunk(self, text: str, finish: FinishReason | None, role: bool = False) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish}
        if self.kind == "completions":
            choice["text"] = text
        else:
            delta = {"role": "assistant", "content": text} if role else {}
            if text:
                delta["content"] = text
            choice["delta"] = delta
        return {**self._head(".chunk"), "choices": [choice]}

    def usage_chunk(self, used: dict[str, Any]) -> dict[str, Any]:
        return {**self._head(".chunk"), "choices": [], "usage": used}


def error_reply(error: Exception) -> tuple[int, dict[str, str], dict[str, Any]]:
    """Status, headers and OpenAI-style body of a failed request."""
    param = code = None
    headers: dict[str, str] = {}
    if isinstance(error, BadRequest):
        status, param, code = error.status, error.param, error.code
    elif isinstance(error, GenerationError):
        status = 400
    elif isinstance(error, _Aborted):
        status, headers = 503, {"Retry-After": "1"}
    else:
        http = status_of(error)
        status, headers, error = http.status, http.headers, http
        code = "invalid_api_key" if status == 401 else None
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": str(error), "type": kind, "param": param, "code": code}}
    return status, headers, body


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
                        raise _Aborted("the engine ended the generation")
                    yield text, finish
                    if finish is not None:
                        return
            raise _Aborted("the engine ended the generation without a finish reason")
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

            async def emit(data: dict[str, Any] | str) -> None:
                text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
                event = f"data: {text}\n\n".encode()
                await send({"type": "http.response.body", "body": event, "more_body": True})

            if answer.kind == "chat_completions":
                await emit(answer.chunk("", None, role=True))
            try:
                while True:
                    if text or finish:
                        await emit(answer.chunk(text, finish))
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
