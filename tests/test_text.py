"""Text embeddings: the encoder against sentence-transformers, length-bucketed batching, limits
and errors of the TextEngine, and the server's /v1/embeddings and KServe BYTES endpoints."""

from __future__ import annotations

import base64
import json
import os
import struct
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from fastapi.testclient import TestClient

os.environ["HF_HUB_OFFLINE"] = "1"  # the reference model loads from its folder, never the hub

tokenizers = pytest.importorskip("tokenizers", reason="needs the text extra")

from stoker import DeadlineExceededError, EngineClosedError, QueueFullError  # noqa: E402
from stoker.server import ModelConfig, ServerConfig, create_app  # noqa: E402
from stoker.text import (  # noqa: E402
    EmptyTextError,
    TextEngine,
    TextError,
    TextTooLongError,
    default_model_dir,
    sample_sentences,
)

TOKEN = "text-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LONG = " ".join(["unbelievably"] * 300)  # about 900 tokens, well over the model's 256
SENTENCES = [
    *sample_sentences(14, seed=3),
    "Hi",
    "Ünïcödé, émojis 🙂 and 中文 characters survive tokenization.",
    "   Leading and trailing spaces   ",
    "Numbers: 3.14159, 2,718 and 1e-9; symbols #@%&*!",
    "A sentence\nwith a newline and\ta tab.",
    LONG,
]
Vector = npt.NDArray[np.float32]


def cosine(a: Vector, b: Vector) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def engine() -> Iterator[TextEngine]:
    with TextEngine(max_batch_size=16, max_delay_ms=1.0) as e:
        yield e


@pytest.mark.filterwarnings("ignore::DeprecationWarning:transformers.*")
@pytest.mark.filterwarnings("ignore::FutureWarning:transformers.*")
def test_matches_sentence_transformers(engine: TextEngine) -> None:
    st = pytest.importorskip("sentence_transformers", reason="reference encoder not installed")
    reference = st.SentenceTransformer(str(default_model_dir()), device="cpu").encode(SENTENCES)
    futures = [engine.submit(s) for s in SENTENCES]
    for text, future, ref in zip(SENTENCES, futures, reference, strict=True):
        got = future.result()
        assert got.dtype == np.float32 and got.shape == (384,)
        assert abs(float(np.linalg.norm(got)) - 1.0) < 1e-5
        assert cosine(got, ref) >= 0.9999, text[:40]


def test_batches_group_by_length() -> None:
    short = [f"word {i}" for i in range(5)]
    long = [" ".join(["token"] * 40 + [str(i)]) for i in range(3)]
    with TextEngine(max_batch_size=64, max_delay_ms=300.0) as e:
        alone = [e.infer_sync(t) for t in short[:1] + long[:1]]
        futures = [e.submit(t, timed=True) for t in [*short, *long]]
        results = [f.result() for f in futures]
    sizes = [t.batch_size for _, t in results]
    assert sizes == [5] * 5 + [3] * 3  # two buckets, each its own batch, nothing mixed
    # Padding a short text into a batch (its bucket's length) leaves its embedding as it was.
    np.testing.assert_allclose(results[0][0], alone[0], atol=1e-5)
    np.testing.assert_allclose(results[5][0], alone[1], atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graphs_give_the_eager_embeddings() -> None:
    texts = [*SENTENCES, *sample_sentences(40, seed=11)]
    with TextEngine(device="cuda", max_batch_size=8, cuda_graphs=False) as eager:
        want = [f.result() for f in [eager.submit(t) for t in texts]]
    with TextEngine(device="cuda", max_batch_size=8, max_delay_ms=5.0) as e:
        assert e.graphs is not None
        # Batch buckets 1, 2, 4, 8 for each length bucket.
        assert len(e.graphs) == 4 * len(e.lengths)
        got = [f.result() for f in [e.submit(t, timed=True) for t in texts]]
        single = e.infer_sync(texts[0])
        # Every batch, a full one as well as a single text, ran as a replay.
        batches = e.stats()["batch_size"].count
        assert e.graphs.replays == batches
    assert {t.batch_size for _, t in got} - {1} != set()
    for text, (vector, _), ref in zip(texts, got, want, strict=True):
        assert cosine(vector, ref) >= 0.99999, text[:40]
    assert cosine(single, want[0]) >= 0.99999


def test_full_bucket_is_cut_before_the_delay() -> None:
    with TextEngine(max_batch_size=4, max_delay_ms=10_000.0) as e:
        start = time.monotonic()
        results = [f.result(timeout=5) for f in [e.submit(f"s {i}", timed=True) for i in range(4)]]
    assert time.monotonic() - start < 5
    assert [t.batch_size for _, t in results] == [4] * 4


def test_timings_and_token_counts(engine: TextEngine) -> None:
    vector, t = engine.submit("Hello world", timed=True).result()
    assert vector.shape == (384,)
    assert t.tokens == 4  # [CLS] hello world [SEP]
    assert t.total >= t.queue and t.total >= t.compute > 0
    assert "tokenize;dur=" in t.server_timing()
    stats = engine.stats()
    assert stats["total"].count >= 1 and stats["tokenize"].count == stats["total"].count


def test_truncation_matches_the_tokenizers_own(engine: TextEngine) -> None:
    reference = tokenizers.Tokenizer.from_file(str(default_model_dir() / "tokenizer.json"))
    reference.enable_truncation(256)
    ids, n = engine.tokenizer.encode(LONG)
    assert n > 256 and len(ids) == 256
    assert ids == reference.encode(LONG).ids[:256]
    # Only the first 255 tokens and the closing one count: text past them changes nothing.
    a = engine.infer_sync(LONG)
    b = engine.infer_sync(LONG + " and a different ending altogether")
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_input_errors(engine: TextEngine) -> None:
    with pytest.raises(EmptyTextError):
        engine.infer_sync("")
    with pytest.raises(TextError, match="string"):
        engine.infer_sync(b"bytes")  # type: ignore[arg-type]
    with TextEngine(max_tokens=8) as limited:
        assert limited.infer_sync("four tokens here").shape == (384,)
        with pytest.raises(TextTooLongError, match="limit 8"):
            limited.infer_sync("this sentence has rather more than eight tokens in it")


def test_queue_limit_cancellation_deadline_and_close() -> None:
    e = TextEngine(max_batch_size=64, max_delay_ms=60_000.0, capacity=3)
    try:
        kept = e.submit("kept")
        dropped = e.submit("dropped")
        expiring = e.submit("expiring", timeout_ms=1)
        with pytest.raises(QueueFullError):
            e.submit("one too many")
        assert dropped.cancel()
        time.sleep(0.01)
    finally:
        e.close()
    with pytest.raises(EngineClosedError):
        kept.result(timeout=5)
    with pytest.raises(EngineClosedError):
        expiring.result(timeout=5)
    with TextEngine(max_batch_size=64, max_delay_ms=100.0) as e:
        late = e.submit("late", timeout_ms=1)
        gone = e.submit("gone")
        gone.cancel()
        on_time = e.submit("on time", timed=True)
        with pytest.raises(DeadlineExceededError):
            late.result(timeout=5)
        assert on_time.result(timeout=5)[1].batch_size == 1  # the cancelled one never ran


# --- the server ------------------------------------------------------------------------


def text_app(**server: Any) -> TestClient:
    model = ModelConfig(name="minilm", model="all-minilm-l6-v2", task="text-embedding")
    return TestClient(create_app(ServerConfig(models=(model,), token=TOKEN, **server)))


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with text_app(max_texts_per_request=4) as c:
        yield c


def test_openai_float_and_base64(client: TestClient, engine: TextEngine) -> None:
    texts = ["The cat sat on the mat.", "Stocks fell sharply on Monday."]
    r = client.post("/v1/embeddings", json={"model": "minilm", "input": texts}, headers=AUTH)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["object"] == "list" and doc["model"] == "minilm"
    tokens = sum(engine.tokenizer.encode(t)[1] for t in texts)
    assert doc["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    assert [d["index"] for d in doc["data"]] == [0, 1]
    assert all(d["object"] == "embedding" for d in doc["data"])
    for d, text in zip(doc["data"], texts, strict=True):
        np.testing.assert_allclose(d["embedding"], engine.infer_sync(text), atol=1e-5)
    assert "tokenize;dur=" in r.headers["server-timing"]

    body = {"model": "minilm", "input": texts[0], "encoding_format": "base64"}
    r = client.post("/v1/embeddings", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    packed = base64.b64decode(r.json()["data"][0]["embedding"])
    vector = np.frombuffer(packed, dtype="<f4")
    np.testing.assert_allclose(vector, doc["data"][0]["embedding"], atol=1e-5)


def test_kserve_bytes_json_and_binary(client: TestClient, engine: TextEngine) -> None:
    texts = ["first text", "second, longer text about something else"]
    request = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": texts}]}
    r = client.post("/v2/models/minilm/infer", json=request, headers=AUTH)
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    assert out["name"] == "embedding" and out["datatype"] == "FP32" and out["shape"] == [2, 384]
    got = np.asarray(out["data"], dtype=np.float32).reshape(2, 384)
    np.testing.assert_allclose(got[1], engine.infer_sync(texts[1]), atol=1e-5)

    data = b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in texts)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "datatype": "BYTES",
                    "shape": [2],
                    "parameters": {"binary_data_size": len(data)},
                }
            ],
            "outputs": [{"name": "embedding", "parameters": {"binary_data": True}}],
        }
    ).encode()
    r = client.post(
        "/v2/models/minilm/infer",
        content=header + data,
        headers={**AUTH, "Inference-Header-Content-Length": str(len(header))},
    )
    assert r.status_code == 200, r.text
    length = int(r.headers["inference-header-content-length"])
    binary = np.frombuffer(r.content[length:], dtype="<f4").reshape(2, 384)
    np.testing.assert_allclose(binary, got, atol=1e-6)
    meta = client.get("/v2/models/minilm", headers=AUTH).json()
    assert meta["inputs"][0]["datatype"] == "BYTES" and meta["outputs"][0]["shape"] == [-1, 384]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"model": "minilm", "input": ""}, 400, "empty"),
        ({"model": "minilm", "input": ["ok", ""]}, 400, "input 1"),
        ({"model": "minilm", "input": LONG}, 400, "more than the limit 256"),
        ({"model": "minilm", "input": [1, 2, 3]}, 400, "list of strings"),
        ({"model": "minilm", "input": []}, 400, "no input"),
        ({"model": "minilm", "input": ["a"] * 5}, 413, "more than 4 inputs"),
        ({"model": "minilm", "input": "a", "encoding_format": "int8"}, 400, "encoding_format"),
        ({"model": "minilm", "input": "a", "dimensions": 128}, 400, "dimensions"),
        ({"model": "nope", "input": "a"}, 404, "unknown model"),
        ({"input": "a"}, 400, "model"),
    ],
)
def test_openai_errors(client: TestClient, body: dict[str, Any], status: int, message: str) -> None:
    r = client.post("/v1/embeddings", json=body, headers=AUTH)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_auth_kserve_errors_and_metrics(client: TestClient) -> None:
    r = client.post("/v1/embeddings", json={"model": "minilm", "input": "a"})
    assert r.status_code == 401
    bad = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [""]}]}
    assert client.post("/v2/models/minilm/infer", json=bad, headers=AUTH).status_code == 400
    raw = b'{"inputs":[{"name":"text","datatype":"BYTES","shape":[1],"parameters":'
    raw += b'{"binary_data_size":6}}]}'
    r = client.post(
        "/v2/models/minilm/infer",
        content=raw + struct.pack("<I", 2) + b"\xff\xfe",
        headers={**AUTH, "Inference-Header-Content-Length": str(len(raw))},
    )
    assert r.status_code == 400 and "UTF-8" in r.json()["error"]
    many = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [5], "data": ["a"] * 5}]}
    assert client.post("/v2/models/minilm/infer", json=many, headers=AUTH).status_code == 413
    metrics = client.get("/metrics", headers=AUTH).text
    assert 'stoker_requests_total{code="200",endpoint="embeddings",model="minilm"}' in metrics
    assert 'stoker_stage_seconds_count{model="minilm",stage="preprocess"}' in metrics


def test_deadline_is_504() -> None:
    with text_app(timeout_ms=0.001) as c:
        r = c.post("/v1/embeddings", json={"model": "minilm", "input": "late"}, headers=AUTH)
        assert r.status_code == 504, r.text


def test_bench_sends_embeddings_requests(client: TestClient) -> None:
    from stoker.bench import Endpoint, load_sentences

    texts = load_sentences(2)
    endpoint = Endpoint("127.0.0.1", 1, "minilm", "x", "x", TOKEN, protocol="embeddings")
    raw = endpoint.requests([texts])[0]
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v1/embeddings HTTP/1.1\r\n")
    assert f"Content-Length: {len(body)}".encode() in head
    r = client.post("/v1/embeddings", content=body, headers=AUTH)
    assert r.status_code == 200, r.text
    assert len(r.json()["data"]) == 2
