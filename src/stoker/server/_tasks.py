"""Tasks: what a served model does with a request's inputs, independent of the protocol.

A task owns its engine and turns the engine's per-input results into protocol outputs: image
classification, and text embedding (sentences in, unit-length vectors out).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from stoker._engine import Engine
from stoker._models import ModelLike, TopK
from stoker._runner import TORCH_DTYPES
from stoker._stats import Timings
from stoker.server._config import ModelConfig
from stoker.server._kserve import OutputTensor
from stoker.server._replicas import Replicas, build_engine

if TYPE_CHECKING:
    from stoker.text import TextTimings

__all__ = ["TEXT_ERRORS", "ImageClassification", "Task", "TextEmbedding"]

try:
    from stoker.text import TextError

    TEXT_ERRORS: tuple[type[Exception], ...] = (TextError,)
except ImportError:  # without the text extra, no served model can raise it
    TEXT_ERRORS = ()


class ImageClassification:
    """Encoded images in; the k best classes with their probabilities out."""

    kind = "image-classification"

    def __init__(self, config: ModelConfig, model: ModelLike | None = None) -> None:
        self.config = config
        self.name = config.name
        # On several devices, a router over one engine per device with an engine's surface.
        self.engine: Engine | Replicas = build_engine(config, model)

    def metadata(self) -> dict[str, Any]:
        k = self.config.top_k
        return {
            "name": self.name,
            "versions": ["1"],
            "platform": "stoker_pytorch",
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [
                {"name": "class_ids", "datatype": "INT64", "shape": [-1, k]},
                {"name": "scores", "datatype": "FP32", "shape": [-1, k]},
            ],
        }

    async def run(
        self, images: Sequence[bytes] | Sequence[memoryview], timeout_ms: float | None
    ) -> list[tuple[Any, Timings]]:
        """Every image's result; the first failure (in request order) is raised."""
        if len(images) == 1:  # the common case, without gather's task machinery
            return [await self.engine.infer_timed(images[0], timeout_ms=timeout_ms)]
        jobs = [self.engine.infer_timed(image, timeout_ms=timeout_ms) for image in images]
        return list(await asyncio.gather(*jobs))

    def decode(self, elements: Sequence[bytes] | Sequence[memoryview]) -> Sequence[Any]:
        """A KServe BYTES input's elements as the engine's inputs: encoded images as they are."""
        return elements

    def outputs(self, results: Sequence[tuple[Any, Timings]]) -> list[OutputTensor]:
        return self.row_outputs([r for r, _ in results])

    def row_outputs(self, results: Sequence[Any]) -> list[OutputTensor]:
        """The protocol outputs of engine results, one row per image."""
        k = self.config.top_k
        ids = np.array([[c for c, _ in r] for r in results], dtype=np.int64).reshape(-1, k)
        scores = np.array([[s for _, s in r] for r in results], dtype=np.float32).reshape(-1, k)
        return [
            OutputTensor("class_ids", "INT64", list(ids.shape), ids),
            OutputTensor("scores", "FP32", list(scores.shape), scores),
        ]

    def batch_outputs(
        self, results: Sequence[Any], rows: npt.NDArray[np.intp] | None
    ) -> list[OutputTensor]:
        """``row_outputs`` of some rows of a batch's results (None: all), without per-row Python
        when the results are the ``top_k`` postprocess's arrays."""
        if not isinstance(results, TopK):
            picked = range(len(results)) if rows is None else rows.tolist()
            return self.row_outputs([results[r] for r in picked])
        ids, scores = results.ids, results.scores
        if rows is not None:
            ids, scores = ids[rows], scores[rows]
        return [
            OutputTensor("class_ids", "INT64", list(ids.shape), ids),
            OutputTensor("scores", "FP32", list(scores.shape), scores),
        ]

    def output_names(self) -> list[str]:
        return [o["name"] for o in self.metadata()["outputs"]]

    def predictions(self, results: Sequence[tuple[Any, Timings]]) -> list[Any]:
        return [[{"class_id": c, "score": s} for c, s in r] for r, _ in results]

    def queue_depth(self) -> int:
        return self.engine.waiting

    def close(self) -> None:
        self.engine.close()


class TextEmbedding:
    """UTF-8 texts in; one unit-length float32 embedding per text out."""

    kind = "text-embedding"

    def __init__(self, config: ModelConfig) -> None:
        from stoker.text import TextEngine

        self.config = config
        self.name = config.name
        self.engine = TextEngine(
            config.model,
            device=config.device,
            dtype=TORCH_DTYPES[config.dtype] if config.dtype else None,
            max_batch_size=config.max_batch_size,
            max_delay_ms=config.max_delay_ms,
            capacity=config.capacity,
            max_tokens=config.max_tokens,
        )
        self.dimension = self.engine.dimension
        if config.max_tokens is None:  # a server refuses what it would otherwise truncate
            self.engine.max_tokens = self.engine.files.max_length

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": ["1"],
            "platform": "stoker_pytorch",
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, self.dimension]}],
        }

    def decode(self, elements: Sequence[bytes] | Sequence[memoryview]) -> list[str]:
        """A KServe BYTES input's elements as texts; anything but UTF-8 is a bad request."""
        from stoker.text import TextError

        try:
            return [bytes(e).decode("utf-8") for e in elements]
        except UnicodeDecodeError as e:
            raise TextError(f"a text element is not UTF-8: {e.reason}") from None

    async def run(
        self, texts: Sequence[str], timeout_ms: float | None
    ) -> list[tuple[Any, TextTimings]]:
        """Every text's embedding; the first failure (in request order) is raised."""
        if len(texts) == 1:
            return [await self.engine.infer_timed(texts[0], timeout_ms=timeout_ms)]
        from stoker.text import TextError

        # Every text is checked before any is queued: one bad input costs the model nothing.
        for i, text in enumerate(texts):
            try:
                self.engine.tokenize(text)
            except TextError as e:
                raise type(e)(f"input {i}: {e}") from None
        jobs = [self.engine.infer_timed(text, timeout_ms=timeout_ms) for text in texts]
        return list(await asyncio.gather(*jobs))

    def embeddings(self, results: Sequence[tuple[Any, TextTimings]]) -> npt.NDArray[np.float32]:
        return np.stack([r for r, _ in results]).astype(np.float32, copy=False)

    def outputs(self, results: Sequence[tuple[Any, TextTimings]]) -> list[OutputTensor]:
        data = self.embeddings(results)
        return [OutputTensor("embedding", "FP32", list(data.shape), data)]

    def output_names(self) -> list[str]:
        return ["embedding"]

    def queue_depth(self) -> int:
        return self.engine.waiting

    def close(self) -> None:
        self.engine.close()


Task = ImageClassification | TextEmbedding
