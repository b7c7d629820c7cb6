"""stoker's OpenAI endpoints in front of a clock instead of a model, for ``bench_generate_serve.py
--paced-ms``: every step, a thread hands one token to each running stream, the way the generation
engine does after a decode step (one hand-over per event loop and step), then sleeps, releasing
the GIL as the engine does while the GPU computes. What is left to measure is the server's own
cost per token (detokenizing, SSE framing, the HTTP server's writes) and how the event loop's
thread and the engine's share the interpreter.

Run as ``python benchmarks/_paced_server.py FOLDER --step-ms 6 [--front native | --http
h11|httptools --loop asyncio|uvloop] [--switch-interval-ms MS] --port P``; FOLDER holds a
tokenizer.json (``_llm_folder.py --shape tiny`` writes one).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import threading
from collections import defaultdict
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import uvicorn
from tokenizers import Tokenizer

from stoker.generate import FinishReason, GenerationChunk, GeneratorStats, SamplingOptions
from stoker.server import ModelConfig, NativeServer, ServerConfig, create_app

_Stream = tuple[asyncio.AbstractEventLoop, "asyncio.Queue[GenerationChunk]", list[int]]


class PacedGenerator:
    """A generator that produces one random token per running stream every ``step_s``."""

    eos_token_ids: tuple[int, ...] = ()

    def __init__(self, folder: Path, step_s: float, max_model_len: int = 4096) -> None:
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.model_folder = folder
        self.model_name = folder.name
        self.max_model_len = max_model_len
        self._vocab = self.tokenizer.get_vocab_size()
        self._step_s = step_s
        self._streams: dict[int, _Stream] = {}
        self._lock = threading.Lock()
        self._next = 0
        self._steps = self._tokens = 0
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="paced-engine", daemon=True)
        self._thread.start()

    def stats(self) -> GeneratorStats:
        return GeneratorStats(
            running=len(self._streams), steps=self._steps, generated_tokens=self._tokens
        )

    async def stream(
        self, prompt_ids: Sequence[int], options: SamplingOptions
    ) -> AsyncGenerator[GenerationChunk, None]:
        chunks: asyncio.Queue[GenerationChunk] = asyncio.Queue()
        with self._lock:
            key, self._next = self._next, self._next + 1
            # [tokens still to produce, prompt tokens to report with the first chunk]
            self._streams[key] = (
                asyncio.get_running_loop(),
                chunks,
                [options.max_tokens, len(prompt_ids)],
            )
        try:
            while True:
                chunk = await chunks.get()
                yield chunk
                if chunk.finish_reason is not None:
                    return
        finally:
            with self._lock:
                self._streams.pop(key, None)

    def close(self) -> None:
        self._closed.set()
        self._thread.join()

    def _run(self) -> None:
        rng = np.random.default_rng(0)
        while not self._closed.wait(self._step_s):
            by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = defaultdict(list)
            with self._lock:
                streams = list(self._streams.items())
                ids = rng.integers(0, self._vocab, size=len(streams)).tolist()
                for (key, (loop, chunks, state)), token in zip(streams, ids, strict=True):
                    state[0] -= 1
                    finish: FinishReason | None = "length" if state[0] <= 0 else None
                    chunk = GenerationChunk([token], finish, prompt_tokens=state[1])
                    state[1] = 0
                    if finish is not None:
                        del self._streams[key]
                    by_loop[loop].append((chunks, chunk))
            self._steps += 1
            self._tokens += len(streams)
            for loop, items in by_loop.items():
                loop.call_soon_threadsafe(_hand_out, items)


def _hand_out(items: list[Any]) -> None:
    for chunks, chunk in items:
        chunks.put_nowait(chunk)


async def _serve_native(config: ServerConfig, models: Any, generators: Any) -> None:
    server = NativeServer(config, models, generators=generators)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await server.serve(stop)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--step-ms", type=float, default=6.0)
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--http", default="auto", choices=["auto", "h11", "httptools"])
    p.add_argument("--loop", default="auto", choices=["auto", "asyncio", "uvloop"])
    p.add_argument("--switch-interval-ms", type=float, default=None)
    p.add_argument("--front", default="uvicorn", choices=["uvicorn", "native"])
    args = p.parse_args()
    # The server needs a configured model; a tiny image model stands in, never asked.
    images = ModelConfig(name="unused-images", model="unused", size=40, crop=32)
    config = ServerConfig(
        models=(images,), port=args.port, switch_interval_ms=args.switch_interval_ms
    )
    generator = PacedGenerator(args.folder, args.step_ms / 1000)
    models = {"unused-images": torch.nn.Flatten()}
    if args.front == "native":
        asyncio.run(_serve_native(config, models, {args.folder.name: generator}))
        return
    app = create_app(config, models, generators={args.folder.name: generator})
    uvicorn.run(app, host="127.0.0.1", port=args.port, http=args.http, loop=args.loop,
                log_level="warning")  # fmt: skip


if __name__ == "__main__":
    main()
