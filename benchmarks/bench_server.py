"""Python cost per request on the server's hot endpoint, measured in the event-loop thread.

The app is called in-process through ASGI (no sockets), so the figure is the front's own work:
routing, reading the body, parsing the KServe binary request, handing the image to the engine,
and encoding the answer. It is the event-loop thread's CPU time per request (time.thread_time),
minus the same harness driving a bare ASGI app that reads the body and answers 200. The native
preprocessing and the model run on other threads and are not counted; the completion thread's
per-request Python work (settling futures) is measured separately from its CPU time.

    python benchmarks/bench_server.py
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import struct
import sys
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any

import torch
from fastapi import FastAPI, Request, Response

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from _images import small_images

from stoker.server import ModelConfig, ServerConfig, create_app

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


class Tiny(torch.nn.Module):
    """As cheap as a model gets, so that the front's cost is what is left to see."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3)).repeat(1, 4)


def kserve_body(image: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    data = struct.pack("<I", len(image)) + image
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": len(data)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    headers = [
        (b"content-type", b"application/octet-stream"),
        (b"inference-header-content-length", str(len(head)).encode()),
        (b"content-length", str(len(head) + len(data)).encode()),
    ]
    return head + data, headers


async def call(app: ASGIApp, path: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8000),
    }
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def bare(scope: Scope, receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


echo = FastAPI()
"""The smallest FastAPI route that reads a body: what a plain FastAPI server pays first."""


@echo.post("/v2/models/{name}/infer")
async def echo_infer(name: str, request: Request) -> Response:
    await request.body()
    return Response(b"{}", media_type="application/json")


async def drive(
    app: ASGIApp, path: str, body: bytes, headers: list[tuple[bytes, bytes]], n: int, conc: int
) -> tuple[float, float]:
    """(loop-thread CPU µs per request, requests per second of wall time)."""
    left = n
    codes: dict[int, int] = {}

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            code = await call(app, path, body, headers)
            codes[code] = codes.get(code, 0) + 1

    cpu, wall = time.thread_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    if set(codes) != {200}:
        raise RuntimeError(f"unexpected statuses {codes}")
    return cpu / n * 1e6, n / wall


def main() -> None:
    n, conc = 4000, 64
    image = small_images(1)[0]
    body, headers = kserve_body(image)
    model = ModelConfig(name="tiny", model="unused", max_batch_size=64, max_delay_ms=1.0)
    app = create_app(ServerConfig(models=(model,)), {"tiny": Tiny()})
    completion = next(t for t in threading.enumerate() if t.name == "stoker-completion")
    print(f"# stoker server hot path, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"KServe binary infer, one {len(image) // 1000} KB JPEG per request, {conc} in flight\n")

    async def run() -> None:
        await drive(app, "/v2/models/tiny/infer", body, headers, 500, conc)  # warm-up
        await drive(bare, "/", body, headers, 500, conc)
        for r in range(3):
            base, _ = await drive(bare, "/", body, headers, n, conc)
            plain, _ = await drive(echo, "/v2/models/tiny/infer", body, headers, n, conc)
            before = _thread_cpu(completion)
            cost, rate = await drive(app, "/v2/models/tiny/infer", body, headers, n, conc)
            completion_us = (_thread_cpu(completion) - before) / n * 1e6
            print(
                f"round {r}: front {cost - base:6.1f} µs/request (bare FastAPI route that only "
                f"reads the body: {plain - base:5.1f}); completion thread {completion_us:5.1f} "
                f"µs/request; {rate:6.0f} req/s"
            )

    asyncio.run(run())


def _thread_cpu(thread: threading.Thread) -> float:
    # CPU seconds of another thread of this process, from /proc (Linux).
    with open(f"/proc/self/task/{thread.native_id}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


if __name__ == "__main__":
    main()
