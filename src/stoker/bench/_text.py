"""A stoker text-embedding server for `stoker bench` and the demo, in this process.

The native gateway queues image requests natively and needs at least one image model, so a
server of text models alone runs on the Python front (uvicorn), on a thread of this process.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from stoker.bench._targets import Endpoint, free_port, wait_ready

__all__ = ["TextSettings", "load_sentences", "text_target"]


@dataclass(frozen=True)
class TextSettings:
    """The text model that `stoker bench` serves (``stoker serve --task text-embedding``)."""

    model: str = "all-minilm-l6-v2"
    name: str = "all-minilm-l6-v2"
    device: str = "cpu"
    dtype: str | None = None
    max_batch_size: int = 32
    max_delay_ms: float = 2.0
    capacity: int = 1024


def load_sentences(count: int, seed: int = 5) -> list[bytes]:
    """``count`` generated English-like sentences of 5 to 60 words, UTF-8 encoded."""
    from stoker.text import sample_sentences

    return [s.encode() for s in sample_sentences(count, seed=seed)]


@contextlib.contextmanager
def text_target(settings: TextSettings, label: str) -> Iterator[Endpoint]:
    """stoker's Python front serving the text model on a free loopback port."""
    import uvicorn

    from stoker.server import ModelConfig, ServerConfig, create_app

    model = ModelConfig(
        name=settings.name,
        model=settings.model,
        task="text-embedding",
        device=settings.device,
        dtype=settings.dtype,  # type: ignore[arg-type]
        max_batch_size=settings.max_batch_size,
        max_delay_ms=settings.max_delay_ms,
        capacity=settings.capacity,
    )
    port = free_port()
    app = create_app(ServerConfig(models=(model,), port=port))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="stoker-bench-text", daemon=True)
    thread.start()
    description = (
        f"stoker Python front (uvicorn), text model {settings.model} on {settings.device}, "
        f"max batch {settings.max_batch_size}, OpenAI-style /v1/embeddings"
    )
    try:
        wait_ready("127.0.0.1", port, 60.0, alive=thread.is_alive)
        yield Endpoint(
            "127.0.0.1",
            port,
            settings.name,
            label,
            description,
            None,
            {k: v for k, v in vars(settings).items() if v is not None},
            "embeddings",
        )
    finally:
        server.should_exit = True
        thread.join(timeout=60)
