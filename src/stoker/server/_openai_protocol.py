"""The OpenAI completion API's requests and answers as plain data: parsing, validation and the
response objects, free of any transport (``_openai`` serves them over ASGI)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from stoker.generate._types import FinishReason, GenerationError, SamplingOptions
from stoker.server._front import _json_object, status_of

__all__ = [
    "Aborted",
    "Answer",
    "BadRequest",
    "GenerateRequest",
    "Kind",
    "error_reply",
    "parse_request",
    "sampling_options",
]

Kind = Literal["completions", "chat_completions"]
"""Which endpoint; also the ``endpoint`` label of the request counter."""


_MAX_STOPS = 4
_COMPLETION_DEFAULT_TOKENS = 16  # OpenAI's default for /v1/completions


class BadRequest(Exception):
    """A request the OpenAI API would refuse, with the ``param`` and ``code`` it would name."""

    def __init__(
        self, message: str, param: str | None = None, code: str | None = None, status: int = 400
    ) -> None:
        super().__init__(message)
        self.param = param
        self.code = code
        self.status = status


class Aborted(Exception):
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
    # A stream chunk's serialized text up to its finish reason, the same for every chunk of the
    # request: each token then costs two string escapes, not a dict and an encoder pass.
    _event_head: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.id:
            prefix = "cmpl" if self.kind == "completions" else "chatcmpl"
            object.__setattr__(self, "id", f"{prefix}-{uuid.uuid4().hex}")
        head = json.dumps(self._head(".chunk"), separators=(",", ":"))[:-1]
        head = f'data: {head},"choices":[{{"index":0,"logprobs":null,"finish_reason":'
        object.__setattr__(self, "_event_head", head.encode())

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

    def chunk_event(self, text: str, finish: FinishReason | None) -> bytes:
        """``chunk(text, finish)`` as a server-sent event, serialized from the request's
        template."""
        reason = "null" if finish is None else json.dumps(finish)
        if self.kind == "completions":
            body = f',"text":{json.dumps(text)}}}]}}\n\n'
        elif text:
            body = f',"delta":{{"content":{json.dumps(text)}}}}}]}}\n\n'
        else:
            body = ',"delta":{}}]}\n\n'
        return self._event_head + (reason + body).encode()

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
    elif isinstance(error, Aborted):
        status, headers = 503, {"Retry-After": "1"}
    else:
        http = status_of(error)
        status, headers, error = http.status, http.headers, http
        code = "invalid_api_key" if status == 401 else None
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": str(error), "type": kind, "param": param, "code": code}}
    return status, headers, body
