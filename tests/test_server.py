"""The HTTP server on CPU: KServe v2 endpoints, the plain endpoint, errors, auth, metrics."""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import struct
import sys
import time
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import torch
from _imagegen import jpeg_rgb
from _models import GatedNet, TinyNet
from fastapi import FastAPI
from fastapi.testclient import TestClient

import stoker
from stoker.server import ModelConfig, ServerConfig, create_app, load_config

TOKEN = "s3cret-token"
IMAGES = [jpeg_rgb(48 + i, 52 + 2 * i, 200 + i) for i in range(4)]
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def model_config(**kwargs: Any) -> ModelConfig:
    settings: dict[str, Any] = {"name": "tiny", "model": "unused", "size": 40, "crop": 32}
    settings.update(top_k=3, max_batch_size=8, max_delay_ms=2.0)
    settings.update(kwargs)
    return ModelConfig(**settings)


def server(
    model: torch.nn.Module | None = None, *, server_kwargs: Any = None, **kwargs: Any
) -> FastAPI:
    config = ServerConfig(models=(model_config(**kwargs),), token=TOKEN, **(server_kwargs or {}))
    return create_app(config, {"tiny": model if model is not None else TinyNet()})


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(server()) as c:
        yield c


def expected_top(images: list[bytes], k: int = 3) -> list[list[int]]:
    spec = model_config().spec()
    with torch.inference_mode():
        logits = TinyNet()(stoker.preprocess_batch(images, spec))
    ids: list[list[int]] = logits.softmax(-1).topk(k).indices.tolist()
    return ids


def binary_request(images: list[bytes], *, binary_output: bool) -> tuple[bytes, dict[str, str]]:
    """A request laid out as tritonclient's binary tensor data extension does."""
    data = b"".join(struct.pack("<I", len(i)) + i for i in images)
    header = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [len(images)],
                "parameters": {"binary_data_size": len(data)},
            }
        ],
        "parameters": {"binary_data_output": binary_output},
    }
    head = json.dumps(header).encode()
    headers = {
        **AUTH,
        "Inference-Header-Content-Length": str(len(head)),
        "Content-Type": "application/octet-stream",
    }
    return head + data, headers


def test_health_is_open_and_the_rest_needs_the_token(client: TestClient) -> None:
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    for path in ("/v2", "/v2/models/tiny", "/v2/models/tiny/ready", "/metrics"):
        r = client.get(path)
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"] == "Bearer"
        assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get(path, headers=AUTH).status_code == 200, path
    r = client.post("/v2/models/tiny/infer", json={"inputs": []})
    assert r.status_code == 401


def test_metadata(client: TestClient) -> None:
    assert "binary_tensor_data" in client.get("/v2", headers=AUTH).json()["extensions"]
    meta = client.get("/v2/models/tiny", headers=AUTH).json()
    assert meta["name"] == "tiny"
    assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert {o["name"] for o in meta["outputs"]} == {"class_ids", "scores"}
    assert client.get("/v2/models/nope", headers=AUTH).status_code == 404
    assert client.get("/v2/models/nope/ready", headers=AUTH).status_code == 404


def test_json_infer_with_base64_images(client: TestClient) -> None:
    request = {
        "id": "req-1",
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [2],
                "parameters": {"content_type": "base64"},
                "data": [base64.b64encode(i).decode() for i in IMAGES[:2]],
            }
        ],
    }
    r = client.post("/v2/models/tiny/infer", json=request, headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == "tiny" and body["id"] == "req-1"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["class_ids"]["shape"] == [2, 3]
    ids = outputs["class_ids"]["data"]
    assert [ids[0:3], ids[3:6]] == expected_top(IMAGES[:2])
    stages = [part.split(";")[0] for part in r.headers["server-timing"].split(", ")]
    assert stages == list(stoker.STAGES)


def test_binary_infer_both_ways(client: TestClient) -> None:
    body, headers = binary_request(IMAGES, binary_output=True)
    r = client.post("/v2/models/tiny/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    head_len = int(r.headers["inference-header-content-length"])
    head = json.loads(r.content[:head_len])
    rest = r.content[head_len:]
    sizes = [o["parameters"]["binary_data_size"] for o in head["outputs"]]
    assert sum(sizes) == len(rest)
    first = head["outputs"][0]
    raw = rest[: sizes[0]]
    if first["name"] == "class_ids":
        ids = list(struct.unpack(f"<{len(raw) // 8}q", raw))
        assert [ids[i : i + 3] for i in range(0, 12, 3)] == expected_top(IMAGES)
    body, headers = binary_request(IMAGES[:1], binary_output=False)
    r = client.post("/v2/models/tiny/infer", content=body, headers=headers)
    assert r.status_code == 200
    assert "inference-header-content-length" not in r.headers
    assert {o["name"] for o in r.json()["outputs"]} == {"class_ids", "scores"}


def test_requested_outputs_are_the_only_ones_returned(client: TestClient) -> None:
    request = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [1],
                "parameters": {"content_type": "base64"},
                "data": [base64.b64encode(IMAGES[0]).decode()],
            }
        ],
        "outputs": [{"name": "scores"}],
    }
    r = client.post("/v2/models/tiny/infer", json=request, headers=AUTH)
    assert [o["name"] for o in r.json()["outputs"]] == ["scores"]
    request["outputs"] = [{"name": "logits"}]
    assert client.post("/v2/models/tiny/infer", json=request, headers=AUTH).status_code == 400


def test_plain_endpoint_takes_an_image_body_or_multipart(client: TestClient) -> None:
    r = client.post(
        "/v1/models/tiny/classify",
        content=IMAGES[0],
        headers={**AUTH, "Content-Type": "image/jpeg"},
    )
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert [p["class_id"] for p in predictions[0]] == expected_top(IMAGES[:1])[0]
    files = [("image", (f"{i}.jpg", IMAGES[i], "image/jpeg")) for i in range(3)]
    r = client.post("/v1/models/tiny/classify", files=files, headers=AUTH)
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 3
    assert "server-timing" in r.headers


@pytest.mark.parametrize(
    ("content", "content_type", "status"),
    [
        (b"hello", "text/plain", 415),
        (b"\xff\xd8\xff not a jpeg", "image/jpeg", 400),
        (b"", "image/jpeg", 400),
    ],
)
def test_plain_endpoint_errors(
    client: TestClient, content: bytes, content_type: str, status: int
) -> None:
    r = client.post(
        "/v1/models/tiny/classify", content=content, headers={**AUTH, "Content-Type": content_type}
    )
    assert r.status_code == status
    assert "error" in r.json()


def test_protocol_errors_are_400(client: TestClient) -> None:
    for body in (b"{not json", json.dumps({"inputs": [{"name": "x"}]}).encode()):
        r = client.post(
            "/v2/models/tiny/infer",
            content=body,
            headers={**AUTH, "Content-Type": "application/json"},
        )
        assert r.status_code == 400
    numeric = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
    assert client.post("/v2/models/tiny/infer", json=numeric, headers=AUTH).status_code == 400
    r = client.post(
        "/v2/models/tiny/infer",
        content=b"{}",
        headers={**AUTH, "Inference-Header-Content-Length": "abc"},
    )
    assert r.status_code == 400


def test_limits_on_body_and_image_count() -> None:
    app = server(server_kwargs={"max_body_bytes": 4096, "max_images_per_request": 2})
    with TestClient(app) as c:
        big = jpeg_rgb(256, 256, 9)
        assert len(big) > 4096
        r = c.post(
            "/v1/models/tiny/classify", content=big, headers={**AUTH, "Content-Type": "image/jpeg"}
        )
        assert r.status_code == 413
        body, headers = binary_request([IMAGES[0]] * 3, binary_output=False)
        assert c.post("/v2/models/tiny/infer", content=body, headers=headers).status_code == 413


def post_image(c: httpx.AsyncClient) -> Any:
    return c.post(
        "/v1/models/tiny/classify",
        content=IMAGES[0],
        headers={**AUTH, "Content-Type": "image/jpeg"},
    )


def test_overload_answers_503_with_retry_after_and_deadlines_504() -> None:
    async def until(condition: Any) -> None:
        deadline = time.monotonic() + 20
        while not condition():
            assert time.monotonic() < deadline, "the engine never got there"
            await asyncio.sleep(0.01)

    async def main() -> None:
        model = GatedNet()
        app = server(model, capacity=2, max_batch_size=1, server_kwargs={"timeout_ms": 300.0})
        engine = app.state.front.tasks["tiny"].engine
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://stoker") as c:
                # One request in the blocked model, two more prepared in the other staging
                # slots: then two wait in the queue (its capacity) past their deadline, and the
                # rest are refused at once.
                running = [asyncio.ensure_future(post_image(c))]
                await until(model.entered.is_set)
                running += [asyncio.ensure_future(post_image(c)) for _ in range(2)]
                await until(lambda: engine.waiting == 0 and not any(t.done() for t in running))
                await asyncio.sleep(0.2)
                queued = [asyncio.ensure_future(post_image(c)) for _ in range(2)]
                await until(lambda: engine.waiting == 2)
                refused = await asyncio.gather(*[post_image(c) for _ in range(3)])
                assert [r.status_code for r in refused] == [503] * 3
                assert all(r.headers.get("retry-after") == "1" for r in refused)
                await asyncio.sleep(0.5)  # the queued requests' deadlines pass
                model.gate.set()
                assert [r.status_code for r in await asyncio.gather(*queued)] == [504, 504]
                assert [r.status_code for r in await asyncio.gather(*running)] == [200] * 3

    asyncio.run(main())


def test_metrics_expose_stage_histograms_and_request_counts(client: TestClient) -> None:
    client.post(
        "/v1/models/tiny/classify",
        content=IMAGES[0],
        headers={**AUTH, "Content-Type": "image/jpeg"},
    )
    client.post(
        "/v1/models/tiny/classify", content=b"x", headers={**AUTH, "Content-Type": "text/plain"}
    )
    text = client.get("/metrics", headers=AUTH).text
    assert "stoker_stage_seconds_bucket" in text
    assert 'stage="compute"' in text
    assert 'code="200"' in text and 'code="415"' in text


def test_config_file(tmp_path: Path) -> None:
    path = tmp_path / "stoker.toml"
    path.write_text(
        "[server]\nport = 9001\nmax_images_per_request = 8\n\n"
        '[[models]]\nname = "net"\nmodel = "resnet18"\ntop_k = 2\nmax_batch_size = 16\n'
    )
    config = load_config(path, host="0.0.0.0", port=None)
    assert config.port == 9001 and config.host == "0.0.0.0"
    assert config.models[0].name == "net" and config.models[0].top_k == 2
    path.write_text('[server]\nprot = 1\n[[models]]\nname = "a"\nmodel = "b"\n')
    with pytest.raises(ValueError, match="prot"):
        load_config(path)
    with pytest.raises(ValueError, match="at least one model"):
        ServerConfig(models=())
    with pytest.raises(ValueError, match="unique"):
        ServerConfig(models=(model_config(), model_config()))


def test_switch_interval_holds_while_serving_and_is_restored_after() -> None:
    before = sys.getswitchinterval()
    with TestClient(server(server_kwargs={"switch_interval_ms": 0.25})) as c:
        assert sys.getswitchinterval() == pytest.approx(0.00025)
        assert c.get("/v2/health/ready").status_code == 200
    assert sys.getswitchinterval() == before
    with TestClient(server()):
        assert sys.getswitchinterval() == before
    for bad in (0.0, -1.0, 1001.0):
        with pytest.raises(ValueError, match="switch_interval_ms"):
            ServerConfig(models=(model_config(),), switch_interval_ms=bad)


def test_the_heap_loaded_before_serving_is_frozen_while_serving() -> None:
    assert gc.get_freeze_count() == 0
    marker = [object()]  # alive before serving starts, like the application and its models

    def scanned() -> bool:
        return any(o is marker for o in gc.get_objects())

    assert scanned()
    with TestClient(server()) as c:
        assert gc.get_freeze_count() > 1000
        assert not scanned()
        assert c.get("/v2/health/ready").status_code == 200
    assert gc.get_freeze_count() == 0
    assert scanned()


def test_cli_serve_validates_its_arguments() -> None:
    from typer.testing import CliRunner

    from stoker._cli import app

    runner = CliRunner()
    assert runner.invoke(app, ["serve", "--help"]).exit_code == 0
    result = runner.invoke(app, ["serve"])
    assert result.exit_code == 2
    assert "--model or --config" in result.output


def test_a_client_that_leaves_mid_body_costs_nothing() -> None:
    async def main() -> None:
        app = server()
        async with app.router.lifespan_context(app):
            sent: list[dict[str, Any]] = []
            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "POST",
                "scheme": "http",
                "path": "/v1/models/tiny/classify",
                "raw_path": b"/v1/models/tiny/classify",
                "query_string": b"",
                "root_path": "",
                "headers": [
                    (b"content-type", b"image/jpeg"),
                    (b"authorization", f"Bearer {TOKEN}".encode()),
                ],
                "client": ("127.0.0.1", 1),
                "server": ("127.0.0.1", 8000),
            }
            messages: list[dict[str, Any]] = [
                {"type": "http.request", "body": IMAGES[0][:100], "more_body": True},
                {"type": "http.disconnect"},
            ]

            async def receive() -> dict[str, Any]:
                return messages.pop(0)

            async def send(message: MutableMapping[str, Any]) -> None:
                sent.append(dict(message))

            await app(scope, receive, send)
            assert sent[0]["status"] == 499
            r = await post_image(
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://s")
            )
            assert r.status_code == 200

    asyncio.run(main())
