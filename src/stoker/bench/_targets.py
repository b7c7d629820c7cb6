"""What `stoker bench` drives over HTTP: a stoker server in this process, a server started from a
command line, or one already running at a URL; and the requests it sends them (KServe v2 with
encoded images, or OpenAI-style embeddings of UTF-8 texts)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shlex
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from stoker import _native

if TYPE_CHECKING:
    from stoker._models import ModelLike
    from stoker.bench._run import Plan
    from stoker.server import ModelConfig

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


@dataclass(frozen=True)
class Endpoint:
    """A server ready for load: where it listens, which model to ask, what it is."""

    host: str
    port: int
    model: str
    label: str
    description: str
    token: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    protocol: Literal["kserve", "embeddings"] = "kserve"

    def requests(self, groups: Sequence[Sequence[bytes]]) -> list[bytes]:
        """One complete HTTP request per group of encoded images (of UTF-8 texts when the
        protocol is ``embeddings``)."""
        build = embeddings_request if self.protocol == "embeddings" else kserve_request
        return [build(items, self) for items in groups]

    def load(
        self, requests: Sequence[bytes], plan: Plan, connections: int, rate: float
    ) -> _native.LoadGenerator:
        """The native generator for one level: closed loop, or Poisson arrivals when ``rate``."""
        return _native.LoadGenerator(
            requests=requests,
            host=self.host,
            port=self.port,
            connections=connections,
            threads=plan.gen_threads,
            rate=rate,
            warmup_s=plan.warmup_s,
            duration_s=plan.seconds,
            max_requests=plan.max_requests,
            timeout_s=plan.timeout_s,
            seed=plan.seed,
        )


def kserve_request(images: Sequence[bytes], endpoint: Endpoint) -> bytes:
    """One complete HTTP/1.1 KServe v2 inference request carrying ``images`` as a BYTES input
    in the binary tensor extension, as tritonclient sends encoded images."""
    data = b"".join(struct.pack("<I", len(i)) + i for i in images)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [len(images)],
                    "parameters": {"binary_data_size": len(data)},
                }
            ]
        },
        separators=(",", ":"),
    ).encode()
    auth = f"Authorization: Bearer {endpoint.token}\r\n" if endpoint.token else ""
    head = (
        f"POST /v2/models/{endpoint.model}/infer HTTP/1.1\r\nHost: {endpoint.host}\r\n{auth}"
        f"Content-Type: application/octet-stream\r\n"
        f"Inference-Header-Content-Length: {len(header)}\r\n"
        f"Content-Length: {len(header) + len(data)}\r\n\r\n"
    )
    return head.encode() + header + data


def embeddings_request(texts: Sequence[bytes], endpoint: Endpoint) -> bytes:
    """One complete HTTP/1.1 ``POST /v1/embeddings`` request embedding ``texts`` (UTF-8)."""
    body = json.dumps(
        {"model": endpoint.model, "input": [t.decode() for t in texts]}, separators=(",", ":")
    ).encode()
    auth = f"Authorization: Bearer {endpoint.token}\r\n" if endpoint.token else ""
    head = (
        f"POST /v1/embeddings HTTP/1.1\r\nHost: {endpoint.host}\r\n{auth}"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def load_images(folder: Path | None, generated: int, limit: int = 512) -> list[bytes]:
    """The encoded images of ``folder`` (sorted, at most ``limit``), or ``generated`` photo-like
    JPEGs of ImageNet-validation sizes drawn with a fixed seed."""
    if folder is not None:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"no .jpg, .jpeg, .png or .webp files in {folder}")
        return [p.read_bytes() for p in files[:limit]]
    import io

    from PIL import Image

    from stoker._demo import sample_photo

    sizes = ((500, 375), (375, 500), (500, 333), (333, 500))
    out = []
    for seed in range(generated):
        w, h = sizes[seed % len(sizes)]
        buf = io.BytesIO()
        Image.fromarray(sample_photo(w, h, seed), mode="RGB").save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_ready(host: str, port: int, seconds: float, alive: Any = None) -> None:
    """Poll ``/v2/health/ready`` until it answers 200; ``alive()`` false means the server died."""
    deadline = time.monotonic() + seconds
    probe = f"GET /v2/health/ready HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise RuntimeError(f"the server on port {port} exited before it was ready")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=2) as s:
            s.sendall(probe)
            if s.recv(64).startswith(b"HTTP/1.1 200"):
                return
        time.sleep(0.1)
    raise RuntimeError(f"the server on {host}:{port} was not ready within {seconds:g} s")


@contextlib.contextmanager
def url_target(url: str, model: str, label: str, token: str | None) -> Iterator[Endpoint]:
    """A server that is already running; it is left running."""
    parts = urlsplit(url if "//" in url else f"http://{url}")
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"give a plain http URL such as http://127.0.0.1:8000, not {url!r}")
    host, port = parts.hostname, parts.port or 80
    wait_ready(host, port, 10.0)
    yield Endpoint(host, port, model, label, f"KServe v2 server at {url}", token)


@contextlib.contextmanager
def command_target(
    template: str, model: str, label: str, token: str | None, ready_s: float = 300.0
) -> Iterator[Endpoint]:
    """A server started from ``template`` with ``{port}`` replaced by a free port, stopped with
    SIGTERM (then SIGKILL) when the run ends."""
    if "{port}" not in template:
        raise ValueError("the server command must contain {port}, where the port goes")
    port = free_port()
    command = template.replace("{port}", str(port))
    proc = subprocess.Popen(shlex.split(command))
    try:
        wait_ready("127.0.0.1", port, ready_s, alive=lambda: proc.poll() is None)
        yield Endpoint("127.0.0.1", port, model, label, command, token, {"command": command})
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass(frozen=True)
class StokerSettings:
    """The stoker that `stoker bench` runs in its own process, served over HTTP or as its bare
    engine (``stoker serve``'s options; the engine ignores ``io_threads``)."""

    model: str = "tiny"
    name: str = "tiny"
    weights: str | None = None
    device: str = "cpu"
    dtype: str | None = None
    max_batch_size: int = 32
    max_delay_ms: float = 2.0
    capacity: int = 1024
    io_threads: int = 1


def served_model(settings: StokerSettings) -> tuple[ModelConfig, ModelLike | None]:
    """The model as `stoker serve` would configure it, and the module of an embedded CNN (``tiny``
    and ``small`` are those of `stoker._nets`, with random weights) to use instead of a file."""
    from stoker._nets import SmallCNN, TinyCNN
    from stoker.server import ModelConfig

    config = ModelConfig(
        name=settings.name,
        model=settings.model,
        weights=settings.weights,
        device=settings.device,
        dtype=settings.dtype,  # type: ignore[arg-type]
        max_batch_size=settings.max_batch_size,
        max_delay_ms=settings.max_delay_ms,
        capacity=settings.capacity,
    )
    embedded = {"tiny": TinyCNN, "small": SmallCNN}.get(settings.model)
    return config, embedded() if embedded is not None else None


def random_weights(settings: StokerSettings) -> bool:
    return settings.weights is None and not Path(settings.model).is_file()


@contextlib.contextmanager
def stoker_target(settings: StokerSettings, label: str) -> Iterator[Endpoint]:
    """stoker's native front on a free loopback port, its event loop on a thread of this process."""
    from stoker.server import NativeServer, ServerConfig

    config, embedded = served_model(settings)
    models = {settings.name: embedded} if embedded is not None else None
    server = NativeServer(
        ServerConfig(models=(config,)), models, port=0, io_threads=settings.io_threads
    )
    description = (
        f"stoker native front, model {settings.model} on {settings.device}, "
        f"max batch {settings.max_batch_size}, {settings.io_threads} I/O thread(s)"
        + (", random weights" if random_weights(settings) else "")
    )
    with running(server, "stoker-bench-server"):
        yield Endpoint(
            "127.0.0.1",
            server.port,
            settings.name,
            label,
            description,
            None,
            {k: v for k, v in vars(settings).items() if v is not None},
        )


@contextlib.contextmanager
def running(server: Any, thread_name: str) -> Iterator[None]:
    """A NativeServer served by an event loop on a thread of this process, ready inside the
    block and drained after it."""
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.serve(stop))
        finally:
            loop.close()

    thread = threading.Thread(target=serve, name=thread_name, daemon=True)
    thread.start()
    try:
        wait_ready("127.0.0.1", server.port, 60.0, alive=thread.is_alive)
        yield
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=60)
