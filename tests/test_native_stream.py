"""Streamed answers through the native front: the forwarder's batching, and generation served
end to end (the OpenAI client, chunked transfer, a client that leaves)."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="needs the server extra")

from _support import ServedOnThread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

from stoker.server._forward import Forwarder


class RecordingGateway:
    """Stands in for the native gateway: records what the forwarder hands it."""

    def __init__(self) -> None:
        self.whole: list[tuple[int, int, bytes]] = []
        self.started: list[tuple[int, int, bytes]] = []
        self.calls: list[list[tuple[int, bytes, bool]]] = []

    def respond(self, token: int, status: int, headers: Any, body: bytes) -> None:
        self.whole.append((token, status, body))

    def respond_start(self, token: int, status: int, headers: Any, body: bytes) -> None:
        self.started.append((token, status, body))

    def respond_pieces(self, pieces: list[tuple[int, bytes, bool]]) -> None:
        self.calls.append(list(pieces))


def _app(tick: asyncio.Condition) -> Starlette:
    async def stream(request: Request) -> StreamingResponse:
        name = request.query_params["name"]

        async def pieces() -> AsyncIterator[bytes]:
            for i in range(3):
                async with tick:
                    await tick.wait()
                yield f"{name}{i};".encode()
            if name == "broken":
                raise RuntimeError("the generator failed mid-stream")

        return StreamingResponse(pieces(), media_type="text/event-stream")

    async def whole(request: Request) -> PlainTextResponse:
        return PlainTextResponse("all at once")

    return Starlette(routes=[Route("/stream", stream), Route("/whole", whole)])


def _request(token: int, path: str, query: bytes = b"") -> tuple[Any, ...]:
    return (token, b"GET", path.encode(), query, [(b"host", b"t")], b"")


def test_pieces_of_every_stream_leave_in_one_call_per_loop_turn() -> None:
    gateway = RecordingGateway()

    async def run() -> None:
        tick = asyncio.Condition()
        forwarder = Forwarder(_app(tick), gateway, ("127.0.0.1", 0))
        forwarder.dispatch(
            [
                _request(1, "/stream", b"name=a"),
                _request(2, "/stream", b"name=b"),
                _request(3, "/whole"),
                _request(4, "/stream", b"name=broken"),
            ],
            [],
        )
        for _ in range(4):  # three pieces each, then the ends
            await asyncio.sleep(0.05)
            async with tick:
                tick.notify_all()
        for _ in range(100):
            if not forwarder._tasks:
                break
            await asyncio.sleep(0.01)
        assert not forwarder._tasks

    asyncio.run(run())
    assert gateway.whole == [(3, 200, b"all at once")]
    # Each stream's head leaves with its first piece; later pieces of the three streams, made in
    # the same turn of the loop, share one call.
    assert sorted(gateway.started) == [(1, 200, b"a0;"), (2, 200, b"b0;"), (4, 200, b"broken0;")]
    pieces = [p for call in gateway.calls for p in call]
    for token, name in ((1, "a"), (2, "b"), (4, "broken")):
        mine = [(data, last) for t, data, last in pieces if t == token]
        assert b"".join(d for d, _ in mine) == f"{name}1;{name}2;".encode()
        assert [last for _, last in mine] == [False] * (len(mine) - 1) + [True]
    assert any({t for t, _, _ in call} == {1, 2, 4} for call in gateway.calls)
    assert len(gateway.calls) < len(pieces)


def test_a_reported_disconnect_reaches_the_application() -> None:
    gateway = RecordingGateway()
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        seen.append((await receive())["type"])

    async def run() -> None:
        forwarder = Forwarder(app, gateway, ("127.0.0.1", 0))
        forwarder.dispatch([_request(7, "/")], [])
        await asyncio.sleep(0.05)
        forwarder.dispatch([], [7, 99])  # 99: not in flight, ignored
        await asyncio.sleep(0.05)
        assert not forwarder._tasks
        # A client gone before its request's task first ran.
        forwarder.dispatch([_request(8, "/")], [8])
        await asyncio.sleep(0.05)
        assert not forwarder._tasks

    asyncio.run(run())
    assert seen == ["http.disconnect", "http.disconnect"]
    assert gateway.started == [(7, 200, b"first"), (8, 200, b"first")]
    # The application returned without ending its streams: the forwarder ends them.
    assert [p for call in gateway.calls for p in call] == [(7, b"", True), (8, b"", True)]


# -- generation served by the native front ---------------------------------------------------


class NativeThread(ServedOnThread):
    """A NativeServer for ``config`` on an event loop of its own thread."""

    def __init__(self, config: Any) -> None:
        from stoker.server import NativeServer

        super().__init__(NativeServer(config, port=0, drain_s=5.0))

    def metric(self, line_start: str) -> float:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("GET", "/metrics", headers={"Authorization": "Bearer t0ken"})
        text = conn.getresponse().read().decode()
        conn.close()
        for line in text.splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


@pytest.fixture
def native_llm(llama: Path) -> Iterator[NativeThread]:
    from stoker.server import ModelConfig, ServerConfig

    model = ModelConfig(name="llm", model=str(llama), task="text-generation", max_num_seqs=4)
    running = NativeThread(ServerConfig(models=(model,), token="t0ken"))
    yield running
    running.close()


def test_the_openai_client_streams_through_the_native_front(
    native_llm: NativeThread, llama: Path, engine_of: Any
) -> None:
    openai = pytest.importorskip("openai")
    from tokenizers import Tokenizer

    from stoker.generate import SamplingOptions

    prompt = [5, 17, 42, 8, 3, 99, 23]
    expected = engine_of(llama, max_num_seqs=2).generate([prompt], SamplingOptions(10, 0.0))[0]
    text = Tokenizer.from_file(str(llama / "tokenizer.json")).decode(expected)
    client = openai.OpenAI(
        base_url=f"http://127.0.0.1:{native_llm.port}/v1", api_key="t0ken", max_retries=0
    )
    streamed = client.completions.create(
        model="llm", prompt=prompt, max_tokens=10, temperature=0, stream=True
    )
    pieces = [c.choices[0].text for c in streamed if c.choices]
    assert "".join(pieces) == text
    assert len(pieces) > 1
    done = client.completions.create(model="llm", prompt=prompt, max_tokens=10, temperature=0)
    assert done.choices[0].text == text

    conn = http.client.HTTPConnection("127.0.0.1", native_llm.port, timeout=30)
    body = {"model": "llm", "prompt": prompt, "max_tokens": 4, "temperature": 0, "stream": True}
    conn.request("POST", "/v1/completions", json.dumps(body), {"Authorization": "Bearer t0ken"})
    r = conn.getresponse()
    assert r.status == 200
    assert r.getheader("transfer-encoding") == "chunked"
    assert r.getheader("content-type", "").startswith("text/event-stream")
    assert r.read().decode().endswith("data: [DONE]\n\n")
    conn.close()


def test_a_client_leaving_mid_stream_ends_its_generation(native_llm: NativeThread) -> None:
    body = json.dumps(
        {"model": "llm", "prompt": [5, 6, 7], "max_tokens": 400, "ignore_eos": True,
         "temperature": 1, "stream": True}
    ).encode()  # fmt: skip
    with socket.create_connection(("127.0.0.1", native_llm.port), timeout=30) as s:
        s.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer t0ken\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        got = b""
        while b"data: {" not in got:
            chunk = s.recv(65536)
            assert chunk, "the stream ended before its first event"
            got += chunk
    aborted = 'stoker_generation_requests_total{finish_reason="abort",model="llm"}'
    running = 'stoker_generation_running{model="llm"}'
    deadline = time.monotonic() + 20
    # The front counts the abort at once; the engine drops the sequence at its next step.
    while (native_llm.metric(aborted) < 1 or native_llm.metric(running) > 0) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.05)
    assert native_llm.metric(aborted) == 1
    assert native_llm.metric(aborted.replace("abort", "length")) == 0  # it did not run out
    assert native_llm.metric(running) == 0
