"""Soak: the native front driven at and above its capacity for a bounded time.

The load generator offers about twice what the server can serve, open loop. Checked: every
request is answered exactly once (200, 503 or 504, no timeouts or broken connections), the
server holds nothing afterwards, rejections come at once, accepted requests finish within the
deadline, and memory stays flat. STOKER_SOAK_SECONDS sets the duration (120 s in CI; longer on
demand).
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import threading
import time
from pathlib import Path

import pytest
import torch
from _imagegen import jpeg_rgb

from stoker import _native
from stoker._stats import HistogramSnapshot
from stoker.server import ModelConfig, NativeServer, ServerConfig

SECONDS = float(os.environ.get("STOKER_SOAK_SECONDS", "120"))
DEADLINE_MS = 500.0


class SlowNet(torch.nn.Module):
    """A model with a fixed cost per batch, so capacity is known and the GPU-less CI can
    saturate it without saturating its own cores."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.02)
        out: torch.Tensor = self.fc(x.mean((2, 3)))
        return out


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def request(image: bytes) -> bytes:
    data = struct.pack("<I", len(image)) + image
    header = (
        b'{"inputs":[{"name":"image","datatype":"BYTES","shape":[1],'
        b'"parameters":{"binary_data_size":' + str(len(data)).encode() + b"}}]}"
    )
    head = (
        f"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\n"
        f"Inference-Header-Content-Length: {len(header)}\r\n"
        f"Content-Length: {len(header) + len(data)}\r\n\r\n"
    )
    return head.encode() + header + data


def one_request_ms(port: int, body: bytes) -> tuple[int, float]:
    """Status and milliseconds of one request on a fresh connection."""
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(body)
        reply = s.recv(64)
    return int(reply.split()[1]), (time.perf_counter() - start) * 1000


@pytest.mark.skipif(SECONDS <= 0, reason="STOKER_SOAK_SECONDS is 0")
def test_overload_soak_answers_everything_once_and_stays_flat() -> None:
    # 8 per batch every 20 ms: about 400 requests/s; the generator offers twice that.
    model = ModelConfig(
        name="m", model="slow", size=40, crop=32, max_batch_size=8, max_delay_ms=1.0, capacity=64
    )
    config = ServerConfig(models=(model,), timeout_ms=DEADLINE_MS)
    server = NativeServer(config, {"m": SlowNet()}, port=0, drain_s=5.0)
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    def serve() -> None:
        try:
            loop.run_until_complete(server.serve(stop))
        finally:
            loop.close()

    runner = threading.Thread(target=serve, daemon=True)
    runner.start()
    bodies = [request(jpeg_rgb(48 + i, 40 + i, 500 + i)) for i in range(16)]
    gen = _native.LoadGenerator(
        requests=bodies,
        port=server.port,
        connections=256,
        rate=800.0,
        warmup_s=0.0,
        duration_s=SECONDS,
        timeout_s=10.0,
    )
    try:
        gen.start()
        samples: list[float] = []
        rejections: list[float] = []
        while not gen.done:
            time.sleep(min(2.0, SECONDS / 10))
            samples.append(rss_mb())
            status, ms = one_request_ms(server.port, bodies[0])
            if status == 503:
                rejections.append(ms)
        report = gen.wait()
    finally:
        loop.call_soon_threadsafe(stop.set)
        runner.join(timeout=30)
    assert not runner.is_alive()

    statuses = report["statuses"]
    assert report["transport_errors"] == 0 and report["timeouts"] == 0
    assert set(statuses) <= {200, 503, 504}, statuses
    assert statuses.get(200, 0) > 0 and statuses.get(503, 0) > 0  # it was really overloaded
    assert report["completed"] == report["sent"] == sum(statuses.values())
    # Server side: everything counted once, nothing held.
    counted = dict(server.gateway.counts(0))
    assert sum(counted.values()) == report["completed"] + len(samples)
    assert server.gateway.pending == 0
    # A rejection is immediate even at the height of the overload.
    assert rejections and max(rejections) < 250
    # Accepted requests ran within their deadline (plus the batch they ran in).
    total = HistogramSnapshot(*report["server_timing"]["total"])
    assert total.max <= (DEADLINE_MS + 200) * 1000
    # Memory: after the first fifth of the run, RSS moves by less than 48 MB.
    settled = samples[len(samples) // 5 :]
    assert max(settled) - min(settled) < 48, samples
