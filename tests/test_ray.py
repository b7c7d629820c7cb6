"""stoker on Ray Serve: a local Ray instance on loopback, two CPU replicas of the embedded `tiny`
model behind Ray's HTTP proxy; answers, overload, load spreading and a killed replica."""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import struct
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from _imagegen import jpeg_rgb
from _support import free_port
from fastapi.testclient import TestClient

from stoker.server import ModelConfig, ServerConfig, create_app

if importlib.util.find_spec("ray") is None:
    pytest.skip("needs Ray Serve: pip install stoker[ray]", allow_module_level=True)

# stoker.ray imports Ray only inside its functions; Ray itself is imported by the fixture, after
# it has set Ray's authentication environment, which Ray reads once, when it is imported.
from stoker.ray import (
    REPLICA_HEADER,
    default_max_ongoing_requests,
    deployment,
    gpus_needed,
    replica_config,
)

# Ray Serve's config models declare fields in a form pydantic 2 deprecates; the warning comes
# from Ray's own modules as the fixture imports them, so it is Ray's to fix, not a failure of
# stoker's. Only that message is let through, and only in this module.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Using extra keyword arguments on `Field` is deprecated"
    ":pydantic.warnings.PydanticDeprecatedSince20"
)

TOKEN = "ray-serve-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
APP = "stoker"
IMAGES = [jpeg_rgb(48 + i, 52 + 2 * i, 700 + i) for i in range(4)]
# `tiny` is seeded at construction, so every replica and the local server hold the same weights.
TINY = ModelConfig(name="tiny", model="tiny", size=40, crop=32, top_k=3, max_batch_size=8)
# A queue of one image: a request of several images overflows it, which must come back as the
# replica's own 503 with Retry-After, not as a wait in Ray's queues.
NARROW = ModelConfig(
    name="narrow", model="tiny", size=40, crop=32, capacity=1, max_batch_size=8, max_delay_ms=50
)
CONFIG = ServerConfig(models=(TINY, NARROW), token=TOKEN)
REPLICA_PREFIX = f"SERVE_REPLICA::{APP}#{APP}#"
WORKERS = 3  # client threads during the replica kill


def descendants() -> set[int]:
    """Live processes below this one (from /proc), to find any that Ray leaves behind."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if fields[0] != "Z":  # a zombie has exited already
            parents[int(stat.parent.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {os.getpid()}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def replica_tags() -> set[str]:
    """Tags of the live replica actors of the application (the replica id Serve gives each)."""
    import ray

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
    return {n[len(REPLICA_PREFIX) :] for n in names if n.startswith(REPLICA_PREFIX)}


def running_replicas() -> int:
    from ray import serve

    states: dict[Any, int] = serve.status().applications[APP].deployments[APP].replica_states
    return states.get("RUNNING", 0)  # keys are ReplicaState, a str enum


@pytest.fixture(scope="module")
def proxy() -> Iterator[str]:
    """Ray Serve's proxy on a loopback port, in front of two CPU replicas; its base URL."""
    if not Path("/proc/self/stat").exists():
        pytest.skip("process accounting reads /proc")
    before, left = descendants(), set()
    with pytest.MonkeyPatch.context() as env:
        # Token auth with a token of this run only: nothing is written to ~/.ray.
        env.setenv("RAY_AUTH_MODE", "token")
        env.setenv("RAY_AUTH_TOKEN", secrets.token_hex(16))
        # Loopback only: no usage report to Ray's servers, and the node's address is 127.0.0.1
        # (Ray otherwise takes the host's outward address, and `_node_ip_address="127.0.0.1"`
        # is turned back into it); this variable makes Ray use its single-machine address.
        env.setenv("RAY_USAGE_STATS_ENABLED", "0")
        env.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        import ray
        from ray import serve

        temp = tempfile.mkdtemp(prefix="stoker-ray-")  # short: Ray's socket paths live under it
        try:
            ray.init(num_cpus=4, include_dashboard=False, _temp_dir=temp, log_to_driver=False)
            assert ray.util.get_node_ip_address() == "127.0.0.1"  # type: ignore[no-untyped-call]
            port = free_port()
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            serve.run(deployment(CONFIG, num_replicas=2, num_cpus=1), name=APP, route_prefix="/")
            yield f"http://127.0.0.1:{port}"
        finally:
            try:
                if ray.is_initialized():
                    serve.shutdown()  # type: ignore[no-untyped-call]
            finally:
                ray.shutdown()
                deadline = time.monotonic() + 30
                while (left := descendants() - before) and time.monotonic() < deadline:
                    time.sleep(0.2)
                shutil.rmtree(temp, ignore_errors=True)
    assert not left, f"Ray left processes behind: {sorted(left)}"


def binary_infer(images: list[bytes]) -> tuple[bytes, dict[str, str]]:
    """A KServe v2 request with the binary tensor data extension, answered as JSON."""
    data = b"".join(struct.pack("<I", len(i)) + i for i in images)
    tensor = {"name": "image", "datatype": "BYTES", "shape": [len(images)]}
    header = {"inputs": [{**tensor, "parameters": {"binary_data_size": len(data)}}]}
    head = json.dumps(header).encode()
    headers = {
        **AUTH,
        "Inference-Header-Content-Length": str(len(head)),
        "Content-Type": "application/octet-stream",
    }
    return head + data, headers


def outputs(body: dict[str, Any]) -> dict[str, list[Any]]:
    return {o["name"]: o["data"] for o in body["outputs"]}


def test_answers_match_a_local_server_through_rays_proxy(proxy: str) -> None:
    body, headers = binary_infer(IMAGES)
    with TestClient(create_app(CONFIG)) as local:
        want = local.post("/v2/models/tiny/infer", content=body, headers=headers)
    assert want.status_code == 200, want.text
    with httpx.Client(base_url=proxy, timeout=30) as c:
        r = c.post("/v2/models/tiny/infer", content=body, headers=headers)
        assert r.status_code == 200, r.text
        assert r.headers[REPLICA_HEADER]
        assert "compute;dur=" in r.headers["server-timing"]
        got, expected = outputs(r.json()), outputs(want.json())
        assert got["class_ids"] == expected["class_ids"]
        assert got["scores"] == pytest.approx(expected["scores"], rel=1e-4, abs=1e-6)

        plain = c.post(
            "/v1/models/tiny/classify",
            content=IMAGES[0],
            headers={**AUTH, "Content-Type": "image/jpeg"},
        )
        assert plain.status_code == 200, plain.text
        top = [p["class_id"] for p in plain.json()["predictions"][0]]
        assert top == expected["class_ids"][:3]

        assert c.get("/v2/health/live").status_code == 200
        assert c.get("/v2/health/ready").status_code == 200
        refused = c.get("/v2/models/tiny")
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == "Bearer"
        assert c.get("/v2/models/nope", headers=AUTH).status_code == 404
        assert c.get("/v2/models/tiny", headers=AUTH).json()["name"] == "tiny"
        metrics = c.get("/metrics", headers=AUTH)
        assert metrics.status_code == 200 and "stoker_requests_total" in metrics.text


def test_a_full_queue_is_the_replicas_own_503(proxy: str) -> None:
    body, headers = binary_infer(IMAGES)
    with httpx.Client(base_url=proxy, timeout=30) as c:
        r = c.post("/v2/models/narrow/infer", content=body, headers=headers)
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "1"
    assert r.headers[REPLICA_HEADER]  # answered by stoker in a replica, not by Ray's proxy
    assert "queue full" in r.json()["error"]


def test_concurrent_requests_reach_both_replicas(proxy: str) -> None:
    body, headers = binary_infer(IMAGES[:1])

    def send(client: httpx.Client) -> str:
        r = client.post("/v2/models/tiny/infer", content=body, headers=headers)
        assert r.status_code == 200, r.text
        return r.headers[REPLICA_HEADER]

    with httpx.Client(base_url=proxy, timeout=30) as c, ThreadPoolExecutor(8) as pool:
        served = Counter(pool.map(lambda _: send(c), range(96)))
    assert set(served) == replica_tags() and len(served) == 2, served
    assert min(served.values()) >= 10, served  # Ray's router spreads by queue length


@dataclass(frozen=True)
class Attempt:
    start: float
    status: int | str
    replica: str | None


def test_a_killed_replica_is_replaced_without_losing_other_requests(proxy: str) -> None:
    import ray

    before = replica_tags()
    assert len(before) == 2 and running_replicas() == 2
    victim = sorted(before)[0]
    body, headers = binary_infer(IMAGES[:1])
    attempts: list[Attempt] = []
    lost: list[float] = []
    stop = threading.Event()

    def client() -> None:
        # A short timeout: a request in flight on the killed replica may get no answer at all.
        with httpx.Client(base_url=proxy, timeout=10) as c:
            while not stop.is_set():
                first = time.monotonic()
                for _ in range(3):  # only a request caught on the dead replica needs a retry
                    start = time.monotonic()
                    status: int | str
                    try:
                        r = c.post("/v2/models/tiny/infer", content=body, headers=headers)
                        status, replica = r.status_code, r.headers.get(REPLICA_HEADER)
                    except httpx.HTTPError as e:
                        status, replica = type(e).__name__, None
                    attempts.append(Attempt(start, status, replica))
                    if status == 200:
                        break
                else:
                    lost.append(first)
                time.sleep(0.02)  # a steady trickle, leaving the cores to the new replica

    threads = [threading.Thread(target=client) for _ in range(WORKERS)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        killed_at = time.monotonic()
        ray.kill(ray.get_actor(REPLICA_PREFIX + victim, namespace="serve"), no_restart=True)
        deadline = killed_at + 60
        new: set[str] = set()
        while time.monotonic() < deadline:
            tags = replica_tags()
            new = tags - before
            if new and len(tags) == 2 and running_replicas() == 2:
                break
            time.sleep(0.25)
        assert new and victim not in replica_tags(), "the killed replica was not replaced"
        while time.monotonic() < deadline and not any(a.replica in new for a in attempts):
            time.sleep(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    survivor = (before - {victim}).pop()
    failed = [a for a in attempts if a.status != 200]
    assert not lost, f"requests failed three times: {failed}"
    # Each client had at most one request in flight when the replica died.
    assert len(failed) <= WORKERS, failed
    assert all(a.replica is None for a in failed), failed  # none was a replica's own error
    after = [a for a in attempts if a.start > killed_at and a.status == 200]
    assert {a.replica for a in after} >= {survivor, *new}, Counter(a.replica for a in after)
    assert running_replicas() == 2


def test_replica_devices_count_the_gpus_ray_assigned() -> None:
    gpu = ServerConfig(models=(ModelConfig(name="m", model="tiny", device="CUDA"),))
    assert gpus_needed(gpu) == 1
    assert replica_config(gpu, 1).models[0].device == "cuda:0"
    with pytest.raises(ValueError, match="no GPU"):
        replica_config(gpu, 0)
    second = ServerConfig(models=(ModelConfig(name="m", model="tiny", device="cuda:1"),))
    assert gpus_needed(second) == 2
    assert replica_config(second, 2).models[0].device == "cuda:1"
    with pytest.raises(ValueError, match="1 GPU"):
        replica_config(second, 1)
    spread = ServerConfig(models=(ModelConfig(name="m", model="tiny", devices=("0", "2")),))
    assert gpus_needed(spread) == 3
    assert replica_config(spread, 3) == spread
    with pytest.raises(ValueError, match="'cuda:2'"):
        replica_config(spread, 2)
    assert gpus_needed(CONFIG) == 0 and replica_config(CONFIG, 0) == CONFIG


def test_a_replica_holds_every_queue_before_ray_queues() -> None:
    one = TINY.capacity + TINY.max_batch_size * TINY.staging_slots
    two = NARROW.capacity + NARROW.max_batch_size * NARROW.staging_slots
    assert default_max_ongoing_requests(CONFIG) == one + two
    cpus = ServerConfig(models=(ModelConfig(name="m", model="tiny", devices=("cpu", "cpu")),))
    model = cpus.models[0]
    assert default_max_ongoing_requests(cpus) == 2 * (model.capacity + 3 * model.max_batch_size)
