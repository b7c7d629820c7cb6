"""NVIDIA's tritonclient (HTTP), unchanged, against a real stoker server on loopback."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from _imagegen import jpeg_rgb
from _models import TinyNet
from _support import free_port, uvicorn_thread

import stoker
from stoker.server import ModelConfig, NativeServer, ServerConfig, create_app

tc = pytest.importorskip("tritonclient.http")

TOKEN = "triton-compatible"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
MODEL = ModelConfig(name="tiny", model="unused", size=40, crop=32, top_k=3, max_batch_size=8)
IMAGES = [jpeg_rgb(50 + i, 44 + 3 * i, 300 + i) for i in range(5)]


def uvicorn_server(config: ServerConfig) -> Iterator[str]:
    with uvicorn_thread(create_app(config, {"tiny": TinyNet()}), config.port):
        yield f"127.0.0.1:{config.port}"


def native_server(config: ServerConfig) -> Iterator[str]:
    server = NativeServer(config, {"tiny": TinyNet()})
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    def run() -> None:
        try:
            loop.run_until_complete(server.serve(stop))
        finally:
            loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.port}"
    loop.call_soon_threadsafe(stop.set)
    thread.join(timeout=20)


@pytest.fixture(scope="module", params=["uvicorn", "native"])
def url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The same tests against both fronts: uvicorn with FastAPI, and stoker's native server."""
    config = ServerConfig(models=(MODEL,), port=free_port(), token=TOKEN)
    run = uvicorn_server if request.param == "uvicorn" else native_server
    yield from run(config)


def test_health_and_metadata(url: str) -> None:
    client = tc.InferenceServerClient(url=url)
    try:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready("tiny", headers=HEADERS)
        meta = client.get_model_metadata("tiny", headers=HEADERS)
        assert meta["name"] == "tiny"
        assert meta["inputs"][0]["datatype"] == "BYTES"
        assert "binary_tensor_data" in client.get_server_metadata(headers=HEADERS)["extensions"]
    finally:
        client.close()


def test_infer_with_binary_tensors(url: str) -> None:
    spec = MODEL.spec()
    with torch.inference_mode():
        logits = TinyNet()(stoker.preprocess_batch(IMAGES, spec))
    expected = logits.softmax(-1).topk(3)
    client = tc.InferenceServerClient(url=url)
    try:
        # Encoded images are not text: tritonclient sends them with the binary extension.
        image = tc.InferInput("image", [len(IMAGES)], "BYTES")
        image.set_data_from_numpy(np.array(IMAGES, dtype=np.object_), binary_data=True)
        outputs = [
            tc.InferRequestedOutput("class_ids", binary_data=True),
            tc.InferRequestedOutput("scores", binary_data=False),
        ]
        result = client.infer("tiny", [image], outputs=outputs, headers=HEADERS)
        ids = result.as_numpy("class_ids")
        scores = result.as_numpy("scores")
    finally:
        client.close()
    assert ids.shape == (len(IMAGES), 3) and ids.dtype == np.int64
    assert ids.tolist() == expected.indices.tolist()
    np.testing.assert_allclose(scores, expected.values.numpy(), rtol=1e-5, atol=1e-6)


def test_wrong_token_is_refused(url: str) -> None:
    from tritonclient.utils import InferenceServerException

    client = tc.InferenceServerClient(url=url)
    try:
        with pytest.raises(InferenceServerException):
            client.get_model_metadata("tiny", headers={"Authorization": "Bearer nope"})
    finally:
        client.close()
