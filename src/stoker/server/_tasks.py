"""Tasks: what a served model does with a request's inputs, independent of the protocol.

A task owns its engine and turns the engine's per-image results into protocol outputs. Image
classification is the first; a task for another modality provides the same methods.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from stoker._engine import Engine
from stoker._models import ModelLike, TopK, top_k
from stoker._runner import TORCH_DTYPES
from stoker._stats import Timings
from stoker.server._config import ModelConfig
from stoker.server._kserve import OutputTensor

__all__ = ["ImageClassification"]


class ImageClassification:
    """Encoded images in; the k best classes with their probabilities out."""

    kind = "image-classification"

    def __init__(self, config: ModelConfig, model: ModelLike | None = None) -> None:
        self.config = config
        self.name = config.name
        self.engine = Engine(
            config.model if model is None else model,
            config.spec(),
            device=config.device,
            dtype=TORCH_DTYPES[config.dtype] if config.dtype else None,
            weights=config.weights if model is None else None,
            max_batch_size=config.max_batch_size,
            max_delay_ms=config.max_delay_ms,
            capacity=config.capacity,
            postprocess=top_k(config.top_k),
            gpu_decode=config.gpu_decode,
            staging_slots=config.staging_slots,
        )

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
