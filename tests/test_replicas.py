"""One model on several devices: engines behind a least-loaded router, on CPU "devices"."""

from __future__ import annotations

import asyncio
import http.client
import json
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from _imagegen import jpeg_rgb
from _models import GatedNet, TinyNet
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

import stoker
from stoker._engine import Engine
from stoker._errors import QueueFullError
from stoker._stats import Timings
from stoker.server import ModelConfig, NativeServer, ServerConfig, create_app, load_config
from stoker.server._config import parse_devices
from stoker.server._replicas import Replicas, build_engine

IMAGES = [jpeg_rgb(48 + i, 52 + 2 * i, 300 + i) for i in range(6)]
SPEC = stoker.ImageSpec(size=40, crop=32, mean=stoker.IMAGENET_MEAN, std=stoker.IMAGENET_STD)


def model_config(**kwargs: Any) -> ModelConfig:
    settings: dict[str, Any] = {"name": "tiny", "model": "unused", "size": 40, "crop": 32}
    settings.update(top_k=3, max_batch_size=8, max_delay_ms=2.0)
    settings.update(kwargs)
    return ModelConfig(**settings)


def engine(model: torch.nn.Module, **kwargs: Any) -> Engine:
    return Engine(model, SPEC, max_batch_size=4, max_delay_ms=1.0, **kwargs)


def answered(e: Engine) -> int:
    return e.stats()["total"].count


def until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 20
    while not condition():
        assert time.monotonic() < deadline, "never got there"
        time.sleep(0.01)


def binary_request(images: list[bytes]) -> tuple[bytes, dict[str, str]]:
    data = b"".join(struct.pack("<I", len(i)) + i for i in images)
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [len(images)],
                    "parameters": {"binary_data_size": len(data)},
                }
            ]
        }
    ).encode()
    return head + data, {"Inference-Header-Content-Length": str(len(head))}


def class_ids(reply: bytes) -> list[list[int]]:
    """The class_ids output of a JSON KServe answer."""
    outputs = json.loads(reply)["outputs"]
    ids: list[int] = next(o for o in outputs if o["name"] == "class_ids")["data"]
    return [ids[i : i + 3] for i in range(0, len(ids), 3)]  # top_k = 3


# --- configuration ---------------------------------------------------------------------------


def test_device_lists_in_every_form() -> None:
    assert parse_devices("0,1") == ("cuda:0", "cuda:1")
    assert parse_devices(" cuda:0, cuda:3 ,") == ("cuda:0", "cuda:3")
    assert parse_devices(["cpu", "cpu"]) == ("cpu", "cpu")
    assert parse_devices([0, "cuda:1"]) == ("cuda:0", "cuda:1")
    config = model_config(devices=["cpu", "cpu"])
    assert config.devices == ("cpu", "cpu") and config.replicas == ("cpu", "cpu")
    gpus = model_config(devices="0,1")
    assert gpus.devices == ("cuda:0", "cuda:1") and gpus.device == "cuda:0"
    # The first device stands in for `device`, so a copy with changes validates again.
    assert ModelConfig(**vars(gpus)).devices == gpus.devices
    assert model_config().replicas == ("cpu",)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"devices": "gpu0"}, "not cpu, cuda:N"),
        ({"devices": [True]}, "not cpu, cuda:N"),
        ({"devices": "cuda"}, "not cpu, cuda:N"),
        ({"devices": ","}, "at least one device"),
        ({"devices": "cpu,0"}, "all cpu or all GPUs"),
        ({"devices": "0,cuda:0"}, "each GPU once"),
        ({"devices": "0,1", "device": "cuda:1"}, "device or devices"),
        ({"devices": "cpu,cpu", "task": "text-embedding"}, "text-embedding runs on one"),
        ({"devices": "0,1", "task": "text-generation"}, "text-generation runs on one"),
        ({"threads": 0}, "threads must be at least 1"),
        ({"threads": 2, "task": "text-embedding"}, "image-classification only"),
    ],
)
def test_device_settings_that_are_refused(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        model_config(**settings)


def test_devices_from_a_config_file(tmp_path: Path) -> None:
    path = tmp_path / "stoker.toml"
    path.write_text(
        '[[models]]\nname = "a"\nmodel = "tiny"\ndevices = [0, 1]\nthreads = 4\n'
        '[[models]]\nname = "b"\nmodel = "tiny"\ndevices = ["cpu", "cpu"]\n'
    )
    a, b = load_config(path).models
    assert a.devices == ("cuda:0", "cuda:1") and a.threads == 4
    assert b.devices == ("cpu", "cpu") and b.threads is None


def test_cli_takes_devices_and_refuses_conflicts(monkeypatch: pytest.MonkeyPatch) -> None:
    from stoker._cli import app

    served: list[ServerConfig] = []
    monkeypatch.setattr("stoker.server.serve_native", lambda s, **_: served.append(s))
    ok = CliRunner().invoke(app, ["serve", "--model", "tiny", "--devices", "cpu,cpu"])
    assert ok.exit_code == 0, ok.output
    assert served[0].models[0].devices == ("cpu", "cpu")
    assert "runs on 2 devices" in ok.output
    refused = [
        ["--devices", "0,1", "--device", "cuda:1"],
        ["--devices", "nope"],
        ["--task", "text-embedding", "--devices", "cpu,cpu"],
        ["--config", "stoker.toml", "--devices", "0,1"],
    ]
    for extra in refused:
        args = ["serve", *(["--model", "tiny"] if "--config" not in extra else []), *extra]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, (extra, result.output)
    assert len(served) == 1


# --- the router ------------------------------------------------------------------------------


def test_answers_match_a_single_device_server() -> None:
    body, headers = binary_request(IMAGES)

    def ids(config: ModelConfig) -> tuple[list[list[int]], TestClient]:
        client = TestClient(create_app(ServerConfig(models=(config,)), {"tiny": TinyNet()}))
        with client:
            replies = [client.post("/v2/models/tiny/infer", content=body, headers=headers)]
            for image in IMAGES:  # one image per request: each can go to another engine
                one, h = binary_request([image])
                replies.append(client.post("/v2/models/tiny/infer", content=one, headers=h))
            assert all(r.status_code == 200 for r in replies), replies[0].text
            return [row for r in replies for row in class_ids(r.content)], client

    single, _ = ids(model_config())
    spread, client = ids(model_config(devices=("cpu", "cpu")))
    assert spread == single
    router = cast(Replicas, client.app.state.front.tasks["tiny"].engine)  # type: ignore[attr-defined]
    assert isinstance(router, Replicas) and router.devices == ("cpu:0", "cpu:1")
    assert all(answered(e) > 0 for e in router.engines)


def test_concurrent_load_is_spread_over_every_engine() -> None:
    async def main(router: Replicas) -> list[tuple[Any, Timings]]:
        jobs = [router.infer_timed(IMAGES[i % len(IMAGES)]) for i in range(48)]
        return list(await asyncio.gather(*jobs))

    with Replicas([engine(TinyNet()), engine(TinyNet())]) as router:
        results = asyncio.run(main(router))
        assert len(results) == 48 and all(t.total > 0 for _, t in results)
        counts = [answered(e) for e in router.engines]
        # All 48 were routed before any answer came back: the loads stayed level.
        assert sum(counts) == 48 and abs(counts[0] - counts[1]) <= 2, counts
        assert router.outstanding == (0, 0)
        merged = router.stats()
        assert merged["total"].count == 48
        assert merged["batch_size"].sum == 48


def test_a_stalled_engine_gets_no_new_work() -> None:
    gated = GatedNet()
    with Replicas([engine(gated), engine(TinyNet())]) as router:
        first = router.submit(IMAGES[0])  # the tie goes to the first engine, which blocks
        until(gated.entered.is_set)
        assert router.outstanding == (1, 0)
        expected = TinyNet()(stoker.preprocess_batch(IMAGES, SPEC)).argmax(1).tolist()
        for i in range(12):  # one at a time: each sees the stalled engine busier
            result = router.infer_sync(IMAGES[i % len(IMAGES)])
            assert result.argmax().item() == expected[i % len(IMAGES)]
        assert [answered(e) for e in router.engines] == [0, 12]
        assert router.outstanding == (1, 0) and not first.done()
        gated.gate.set()
        first.result(timeout=30)
        until(lambda: router.outstanding == (0, 0))
        assert answered(router.engines[0]) == 1


class FullEngine:
    """An engine whose queue is always full."""

    waiting = 0

    def _submit(self, *_: Any) -> Any:  # what the router queues through
        raise QueueFullError("queue full")

    def close(self) -> None:
        pass


def test_a_full_queue_sends_the_request_to_another_engine() -> None:
    full = cast(Engine, FullEngine())
    with engine(TinyNet()) as real:
        router = Replicas([full, real], names=["full", "real"])
        for _ in range(4):  # ties alternate, so the full engine is tried first half the time
            router.submit(IMAGES[0]).result(timeout=30)
            asyncio.run(router.infer_timed(IMAGES[1]))
        assert answered(real) == 8 and router.outstanding == (0, 0)
        both_full = Replicas([full, cast(Engine, FullEngine())], names=["a", "b"])
        with pytest.raises(QueueFullError):
            both_full.submit(IMAGES[0])
        with pytest.raises(QueueFullError):
            asyncio.run(both_full.infer_timed(IMAGES[0]))
        assert both_full.outstanding == (0, 0)


def test_replicas_refuse_no_engines_and_repeated_names() -> None:
    with pytest.raises(ValueError, match="at least one engine"):
        Replicas([])
    full = cast(Engine, FullEngine())
    with pytest.raises(ValueError, match="distinct name"):
        Replicas([full, full], names=["x", "x"])


def pool_threads() -> set[str]:
    """Ids of the native pools' worker threads."""
    return {t.name for t in Path("/proc/self/task").iterdir() if name_of(t) == "stoker-pool\n"}


def name_of(task: Path) -> str:
    try:
        return (task / "comm").read_text()
    except FileNotFoundError:  # the thread ended while the folder was listed
        return ""


def test_each_engine_gets_its_share_of_the_pool(restore_num_threads: int) -> None:
    stoker.set_num_threads(4)
    before = pool_threads()
    router = build_engine(model_config(devices=("cpu", "cpu")), TinyNet())
    try:
        assert isinstance(router, Replicas)
        assert stoker.get_num_threads() == 4
        # Two engines' pools of 4 // 2 threads, each built while the current pool was swapped
        # for it; then a current pool of the old size again after each: 2 + 4 + 2 + 4 threads
        # started, of which the first current pool of 4 was freed when the second replaced it.
        until(lambda: len(pool_threads() - before) == 8)
        assert asyncio.run(router.infer(IMAGES[0])) is not None
    finally:
        router.close()


# --- metrics and fronts ----------------------------------------------------------------------


def test_metrics_per_device_and_per_model() -> None:
    config = ServerConfig(models=(model_config(devices=("cpu", "cpu")),))
    with TestClient(create_app(config, {"tiny": TinyNet()})) as client:
        for image in IMAGES * 2:
            body, headers = binary_request([image])
            assert client.post("/v2/models/tiny/infer", content=body, headers=headers).is_success
        text = client.get("/metrics").text
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples[(name, frozenset({"model": "tiny", **labels}.items()))]

    devices = [{"device": "cpu:0"}, {"device": "cpu:1"}]
    served = [value("stoker_replica_requests_total", **d) for d in devices]
    assert all(n > 0 for n in served) and sum(served) == len(IMAGES) * 2
    assert value("stoker_stage_seconds_count", stage="total") == len(IMAGES) * 2
    for d, n in zip(devices, served, strict=True):
        assert value("stoker_replica_latency_seconds_count", **d) == n
        assert value("stoker_replica_busy_seconds_total", **d) > 0
        assert value("stoker_replica_queue_depth", **d) == 0
    batches = sum(value("stoker_replica_batch_size_count", **d) for d in devices)
    assert value("stoker_batch_size_count") == batches


@pytest.fixture
def native() -> Iterator[NativeServer]:
    config = ServerConfig(models=(model_config(devices=("cpu", "cpu")),))
    server = NativeServer(config, {"tiny": TinyNet()}, port=0, drain_s=5.0)
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    thread = threading.Thread(target=loop.run_until_complete, args=(server.serve(stop),))
    thread.start()
    try:
        yield server
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=30)
        loop.close()
        assert not thread.is_alive()


def test_the_native_front_feeds_every_engine_of_a_multi_device_model(
    native: NativeServer,
) -> None:
    single = TinyNet()(stoker.preprocess_batch(IMAGES, SPEC)).softmax(-1).topk(3).indices.tolist()
    got = []
    for image in IMAGES:
        body, headers = binary_request([image])
        conn = http.client.HTTPConnection("127.0.0.1", native.port, timeout=30)
        try:
            conn.request("POST", "/v2/models/tiny/infer", body=body, headers=headers)
            reply = conn.getresponse()
            assert reply.status == 200
            got += class_ids(reply.read())
        finally:
            conn.close()
    assert got == single
    assert native.gateway.forwarded == 0  # no Python per request
    routed = [native.gateway.routed(0, k) for k in range(2)]
    assert sum(routed) == len(IMAGES) and min(routed) > 0
    router = native.front.tasks["tiny"].engine
    assert isinstance(router, Replicas)
    assert all(answered(e) > 0 for e in router.engines)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_one_engine_per_gpu_with_a_module_of_its_own() -> None:
    module = TinyNet()
    router = build_engine(model_config(devices="0,1"), module)
    try:
        assert isinstance(router, Replicas) and router.devices == ("cuda:0", "cuda:1")
        for i, e in enumerate(router.engines):
            assert e.device == torch.device(f"cuda:{i}")
        expected = TinyNet()(stoker.preprocess_batch(IMAGES, SPEC)).softmax(-1).topk(3).indices

        async def main() -> list[Any]:
            return list(await asyncio.gather(*(router.infer(i) for i in IMAGES * 8)))

        results = asyncio.run(main())
        assert [[c for c, _ in r] for r in results] == expected.tolist() * 8
        assert all(answered(e) > 0 for e in router.engines)
    finally:
        router.close()
