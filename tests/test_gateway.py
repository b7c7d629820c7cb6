"""The native front: stoker's C++ HTTP server on loopback, with the FastAPI app behind it."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch
from _imagegen import jpeg_rgb
from _models import FailOnDark, GatedNet, OutOfMemoryAbove, TinyNet
from _support import ServedOnThread

import stoker
from stoker.server import ModelConfig, NativeServer, ServerConfig

TOKEN = "native-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
IMAGES = [jpeg_rgb(48 + i, 52 + 2 * i, 200 + i) for i in range(4)]
STAGES = ["queue", "batch", "preprocess", "h2d", "compute", "postprocess", "total"]


def model_config(**kwargs: Any) -> ModelConfig:
    settings: dict[str, Any] = {"name": "tiny", "model": "unused", "size": 40, "crop": 32}
    settings.update(top_k=3, max_batch_size=8, max_delay_ms=2.0)
    settings.update(kwargs)
    return ModelConfig(**settings)


class Running(ServedOnThread):
    """A NativeServer on a free port, served by an event loop of its own thread."""

    def __init__(self, model: torch.nn.Module, server: Mapping[str, Any], **kwargs: Any) -> None:
        config = ServerConfig(models=(model_config(**kwargs),), token=TOKEN, **server)
        super().__init__(NativeServer(config, {"tiny": model}, port=0, drain_s=5.0))

    def request(
        self, method: str, path: str, body: bytes = b"", headers: Mapping[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}))
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()


def serve(model: torch.nn.Module | None = None, server: Any = None, **kwargs: Any) -> Running:
    return Running(model if model is not None else TinyNet(), server or {}, **kwargs)


@pytest.fixture
def running() -> Iterator[Running]:
    r = serve()
    yield r
    r.close()


def binary_request(
    images: list[bytes], *, outputs: list[dict[str, Any]] | None = None, binary: bool = False
) -> tuple[bytes, dict[str, str]]:
    data = b"".join(struct.pack("<I", len(i)) + i for i in images)
    header: dict[str, Any] = {
        "id": "req-7",
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [len(images)],
                "parameters": {"binary_data_size": len(data)},
            }
        ],
        "parameters": {"binary_data_output": binary},
    }
    if outputs is not None:
        header["outputs"] = outputs
    head = json.dumps(header).encode()
    return head + data, {**AUTH, "Inference-Header-Content-Length": str(len(head))}


def expected_top(images: list[bytes], k: int = 3) -> tuple[list[list[int]], list[list[float]]]:
    with torch.inference_mode():
        logits = TinyNet()(stoker.preprocess_batch(images, model_config().spec()))
    top = logits.softmax(-1).topk(k)
    return top.indices.tolist(), top.values.tolist()


def test_binary_infer_runs_natively_and_matches_the_model(running: Running) -> None:
    body, headers = binary_request(IMAGES)
    status, reply_headers, payload = running.request("POST", "/v2/models/tiny/infer", body, headers)
    assert status == 200, payload
    doc = json.loads(payload)
    ids, scores = expected_top(IMAGES)
    outputs = {o["name"]: o for o in doc["outputs"]}
    assert doc["model_name"] == "tiny" and doc["id"] == "req-7"
    assert outputs["class_ids"]["shape"] == [4, 3]
    assert outputs["class_ids"]["data"] == [c for row in ids for c in row]
    assert outputs["scores"]["data"] == pytest.approx([s for row in scores for s in row], abs=1e-5)
    timing = reply_headers["server-timing"]
    assert [part.split(";")[0] for part in timing.split(", ")] == STAGES
    assert running.server.gateway.forwarded == 0  # nothing reached Python per request


def test_binary_outputs_and_requested_outputs(running: Running) -> None:
    body, headers = binary_request(
        IMAGES[:2], outputs=[{"name": "class_ids", "parameters": {"binary_data": True}}]
    )
    status, reply_headers, payload = running.request("POST", "/v2/models/tiny/infer", body, headers)
    assert status == 200
    size = int(reply_headers["inference-header-content-length"])
    doc = json.loads(payload[:size])
    assert [o["name"] for o in doc["outputs"]] == ["class_ids"]
    ids, _ = expected_top(IMAGES[:2])
    raw = payload[size:]
    assert doc["outputs"][0]["parameters"]["binary_data_size"] == len(raw) == 2 * 3 * 8
    assert list(struct.unpack("<6q", raw)) == [c for row in ids for c in row]


def test_other_requests_reach_the_python_application(running: Running) -> None:
    assert running.request("GET", "/v2/health/live")[0] == 200
    status, _, payload = running.request("GET", "/v2/models/tiny", headers=AUTH)
    assert status == 200 and json.loads(payload)["name"] == "tiny"
    # JSON tensors are not the native form: the Python codec answers them.
    doc = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [1],
                "parameters": {"content_type": "base64"},
                "data": [base64.b64encode(IMAGES[0]).decode()],
            }
        ]
    }
    status, _, payload = running.request(
        "POST", "/v2/models/tiny/infer", json.dumps(doc).encode(), AUTH
    )
    assert status == 200, payload
    status, _, _ = running.request("GET", "/nowhere")
    assert status == 404
    assert running.server.gateway.forwarded >= 4


def test_any_request_target_is_answered_and_the_bridge_survives(running: Running) -> None:
    for target in (b"/\xff", b"/v2/\xe2\x82\xac", b"/?q=\xc3", b"/%ff%fe"):
        with socket.create_connection(("127.0.0.1", running.port), timeout=10) as s:
            s.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := s.recv(4096):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 404"), (target, reply[:80])
    assert running.request("GET", "/v2/health/live")[0] == 200


def test_errors(running: Running) -> None:
    body, headers = binary_request(IMAGES[:1])
    status, reply_headers, _ = running.request(
        "POST", "/v2/models/tiny/infer", body, {**headers, "Authorization": "Bearer nope"}
    )
    assert status == 401 and reply_headers["www-authenticate"] == "Bearer"
    # One corrupt image fails its request with 400 naming the problem; others are unaffected.
    body, headers = binary_request([IMAGES[0], b"\xff\xd8 not a jpeg"])
    status, _, payload = running.request("POST", "/v2/models/tiny/infer", body, headers)
    assert status == 400 and "error" in json.loads(payload)
    body, headers = binary_request(IMAGES[:1])
    assert running.request("POST", "/v2/models/tiny/infer", body, headers)[0] == 200
    # A malformed binary request is left to the Python codec, which says what is wrong.
    status, _, payload = running.request("POST", "/v2/models/tiny/infer", body[:-10], headers)
    assert status == 400 and json.loads(payload)["error"]
    # An unknown model is the Python application's 404.
    assert running.request("POST", "/v2/models/other/infer", body, headers)[0] == 404


def test_body_limit_is_enforced_natively() -> None:
    r = serve(server={"max_body_bytes": 1000})
    try:
        body, headers = binary_request(IMAGES[:1])
        assert len(body) > 1000
        assert r.request("POST", "/v2/models/tiny/infer", body, headers)[0] == 413
    finally:
        r.close()


def test_a_failing_model_fails_its_batch_only() -> None:
    r = serve(FailOnDark(), max_batch_size=1)
    try:
        body, headers = binary_request([_black_jpeg()])
        status, _, payload = r.request("POST", "/v2/models/tiny/infer", body, headers)
        assert status == 500 and "internal error" in json.loads(payload)["error"]
        body, headers = binary_request(IMAGES[:1])
        assert r.request("POST", "/v2/models/tiny/infer", body, headers)[0] == 200
    finally:
        r.close()


def test_out_of_device_memory_is_a_retryable_503() -> None:
    r = serve(OutOfMemoryAbove(limit=0))
    try:
        body, headers = binary_request(IMAGES[:1])
        status, reply_headers, payload = r.request("POST", "/v2/models/tiny/infer", body, headers)
        assert status == 503 and reply_headers["retry-after"] == "1"
        assert "out of device memory" in json.loads(payload)["error"]
        assert r.request("GET", "/v2/health/live")[0] == 200  # the server stays up
    finally:
        r.close()


def _black_jpeg() -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (40, 40)).save(out, "JPEG")
    return out.getvalue()


def until(condition: Any) -> None:
    deadline = time.monotonic() + 20
    while not condition():
        assert time.monotonic() < deadline, "the server never got there"
        time.sleep(0.01)


def test_overload_answers_503_at_once_and_deadlines_504() -> None:
    model = GatedNet()
    r = serve(model, server={"timeout_ms": 300.0}, capacity=2, max_batch_size=1)
    engine = r.server.front.tasks["tiny"].engine
    try:
        body, headers = binary_request(IMAGES[:1])

        def post() -> tuple[int, dict[str, str], bytes]:
            return r.request("POST", "/v2/models/tiny/infer", body, headers)

        with ThreadPoolExecutor(8) as pool:
            # One request in the blocked model, two prepared in the other staging slots, two
            # queued (the capacity) past their deadline; the rest are refused at once.
            running = [pool.submit(post)]
            until(model.entered.is_set)
            running += [pool.submit(post) for _ in range(2)]
            until(lambda: engine.waiting == 0)
            time.sleep(0.2)
            queued = [pool.submit(post) for _ in range(2)]
            until(lambda: engine.waiting == 2)
            refused = [pool.submit(post).result(timeout=10) for _ in range(3)]
            assert all(s == 503 and h.get("retry-after") == "1" for s, h, _ in refused)
            time.sleep(0.5)
            model.gate.set()
            assert [f.result()[0] for f in queued] == [504, 504]
            assert [f.result()[0] for f in running] == [200] * 3
        status, _, text = r.request("GET", "/metrics", headers=AUTH)
        assert status == 200
        assert 'endpoint="infer"' in text.decode() and 'code="503"' in text.decode()
        assert dict(r.server.gateway.counts(0)) == {200: 3, 503: 3, 504: 2}
    finally:
        r.close()


def test_a_client_that_leaves_while_queued_is_dropped() -> None:
    model = GatedNet()
    r = serve(model, max_batch_size=1)
    try:
        body, headers = binary_request(IMAGES[:1])
        # One request in the model, two more prepared in the staging ring: the next one waits
        # in the native queue.
        ahead = [
            threading.Thread(
                target=r.request, args=("POST", "/v2/models/tiny/infer", body, headers)
            )
            for _ in range(3)
        ]
        for t in ahead:
            t.start()
        assert model.entered.wait(10)
        time.sleep(0.5)
        head = f"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        with socket.create_connection(("127.0.0.1", r.port)) as s:
            s.sendall((head + extra + "\r\n").encode() + body)
            time.sleep(0.3)
        deadline = time.monotonic() + 10
        counts: dict[int, int] = {}
        while time.monotonic() < deadline and not counts.get(499):
            time.sleep(0.05)
            counts = dict(r.server.gateway.counts(0))
        assert counts.get(499) == 1
        model.gate.set()
        for t in ahead:
            t.join(10)
        assert model.rows == 3  # the abandoned request never ran
        assert dict(r.server.gateway.counts(0)).get(200) == 3
    finally:
        r.close()


def test_shutdown_answers_requests_in_flight() -> None:
    model = GatedNet()
    r = serve(model, max_batch_size=1)
    body, headers = binary_request(IMAGES[:1])
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(r.request, "POST", "/v2/models/tiny/infer", body, headers)
        assert model.entered.wait(10)
        r.loop.call_soon_threadsafe(r.stop.set)
        time.sleep(0.2)
        model.gate.set()
        assert future.result(timeout=20)[0] == 200
    r.thread.join(timeout=30)
    assert not r.thread.is_alive()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", r.port), timeout=2).close()
