"""A stoker text-embedding server for `stoker bench` and the demo, in this process.

It runs behind stoker's native HTTP front, which forwards text requests to the Python
application (the gateway answers image requests natively only), on a thread of this process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from stoker.bench._targets import Endpoint, running

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
    """stoker's native front serving the text model on a free loopback port."""
    from stoker.server import ModelConfig, NativeServer, ServerConfig

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
    server = NativeServer(ServerConfig(models=(model,)), port=0)
    description = (
        f"stoker native front, text model {settings.model} on {settings.device}, "
        f"max batch {settings.max_batch_size}, OpenAI-style /v1/embeddings"
    )
    with running(server, "stoker-bench-text"):
        yield Endpoint(
            "127.0.0.1",
            server.port,
            settings.name,
            label,
            description,
            None,
            {k: v for k, v in vars(settings).items() if v is not None},
            "embeddings",
        )
