"""CUDA graphs of the text encoder, one per (batch size, padded length) bucket.

An encoder batch on a GPU is hundreds of small kernels, and the device thread that launches them
shares the GIL with every caller thread: launched eagerly, a batch of a few sentences costs
milliseconds of Python before the GPU sees it. A replayed graph is one launch. Batches are padded
to the next batch bucket (rows are independent in a BERT encoder, so the extra rows only cost
compute) and, on the GPU, always to a length bucket already, so a few dozen graphs cover every
batch the engine can form.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from itertools import product
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from stoker._runner import buckets_for

__all__ = ["EncoderGraphs"]

log = logging.getLogger("stoker.text")


class _Graph:
    __slots__ = ("graph", "ids", "mask", "out")

    def __init__(self, ids: torch.Tensor, mask: torch.Tensor) -> None:
        self.graph = torch.cuda.CUDAGraph()
        self.ids = ids
        self.mask = mask
        self.out: torch.Tensor | None = None


class EncoderGraphs:
    """Captures ``model`` for every batch bucket up to ``max_batch_size`` times every length in
    ``lengths``; ``run`` replays the one that fits, or returns None where none was captured."""

    def __init__(
        self, model: nn.Module, device: torch.device, max_batch_size: int, lengths: Sequence[int]
    ) -> None:
        self.batch_sizes = buckets_for(max_batch_size, None)
        self.lengths = sorted(lengths)
        self._graphs: dict[tuple[int, int], _Graph] = {}
        # Two pinned staging areas, taken in turn: a copy from pageable memory would first wait
        # for the stream to drain, so batch N+1 could not be queued behind batch N.
        cells = self.batch_sizes[-1] * self.lengths[-1]
        self._staging = [
            (
                torch.empty(cells, dtype=torch.int64, pin_memory=True),
                torch.empty(cells, dtype=torch.bool, pin_memory=True),
                torch.cuda.Event(),  # type: ignore[no-untyped-call]
            )
            for _ in range(2)
        ]
        self._turn = 0
        self.replays = 0
        stream = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
        pool = torch.cuda.graph_pool_handle()
        try:
            with torch.cuda.device(device), torch.inference_mode():
                # Largest first: the shared pool is sized by the first capture and reused after.
                for b, n in product(reversed(self.batch_sizes), reversed(self.lengths)):
                    g = self._capture(model, device, b, n, stream, pool)
                    self._graphs[(b, n)] = g
        except (RuntimeError, torch.cuda.CudaError) as e:  # the model cannot be captured
            log.warning("CUDA graph capture of the text encoder failed, running eagerly: %s", e)
            self._graphs.clear()
        torch.cuda.synchronize(device)

    @staticmethod
    def _capture(
        model: nn.Module,
        device: torch.device,
        b: int,
        n: int,
        stream: torch.cuda.Stream,
        pool: Any,
    ) -> _Graph:
        ids = torch.zeros((b, n), dtype=torch.int64, device=device)
        # Each row attends to at least one token, so rows no request fills stay finite.
        mask = torch.zeros((b, n), dtype=torch.bool, device=device)
        mask[:, 0] = True
        g = _Graph(ids, mask)
        # Kernels pick their algorithms (and allocate workspaces) on a first, uncaptured run.
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            model(ids, mask)
        torch.cuda.current_stream(device).wait_stream(stream)
        with torch.cuda.graph(g.graph, pool=pool, stream=stream):
            g.out = model(ids, mask)
        return g

    def __len__(self) -> int:
        return len(self._graphs)

    def run(
        self,
        ids: npt.NDArray[np.int64],
        mask: npt.NDArray[np.bool_],
        start: torch.cuda.Event | None = None,
    ) -> torch.Tensor | None:
        """The embeddings of the (rows, length) batch on the current stream, or None when no
        graph has that length or enough rows. ``start`` is recorded between the inputs' copy and
        the replay."""
        rows, length = ids.shape
        batch = next((b for b in self.batch_sizes if b >= rows), None)
        g = self._graphs.get((batch, length)) if batch is not None else None
        if g is None or g.out is None:
            return None
        host_ids, host_mask, copied = self._staging[self._turn]
        self._turn ^= 1
        copied.synchronize()
        cells = rows * length
        host_ids[:cells].view(rows, length).copy_(torch.from_numpy(ids))
        host_mask[:cells].view(rows, length).copy_(torch.from_numpy(mask))
        g.ids[:rows].copy_(host_ids[:cells].view(rows, length), non_blocking=True)
        g.mask[:rows].copy_(host_mask[:cells].view(rows, length), non_blocking=True)
        copied.record()
        if start is not None:
            start.record()
        g.graph.replay()
        self.replays += 1
        # The output lives in the graphs' pool, which the next replay overwrites.
        return g.out[:rows].clone()
