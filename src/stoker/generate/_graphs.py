"""Whole model steps captured as CUDA graphs, replayed over one set of static inputs.

Three kinds, each by bucket: decode steps (one token per row, padded to the bucket's rows),
verifying steps (rows of k + 1 tokens, see ``_runner``) and steps that carry prompt tokens,
padded to the bucket's token count with every row of ``max_num_seqs``. A step's arrays are
copied into the static inputs' leading parts and its graph replays; the graph reads nothing
else. Padding tokens write their K/V to a scratch block that no sequence owns, and padding rows
have no query tokens, so the attention skips them. Prompt rows are spread over the attention's
query tiles by a ``chunk_tiles`` map, padded to the most tiles a step of the bucket's tokens can
have: the launch's shape then depends on the bucket alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from stoker.generate._attention import max_chunk_tiles
from stoker.generate._model import Decoder, KVCache, StepBatch

__all__ = ["StepGraphs", "graph_buckets", "prompt_buckets"]

# Prompt steps' buckets: padding costs at most this many tokens' worth of the step's matmuls.
PROMPT_BUCKET = 128


def graph_buckets(max_num_seqs: int) -> list[int]:
    """Decode batch sizes that get a graph: 1, 2, 4, 8, then every 16 up to max_num_seqs."""
    sizes = [b for b in (1, 2, 4, 8) if b < max_num_seqs]
    sizes += list(range(16, max_num_seqs, 16))
    return [*sizes, max_num_seqs]


def prompt_buckets(max_tokens: int) -> list[int]:
    """Token counts of steps with prompt tokens that get a graph: every 128 up to max_tokens."""
    if max_tokens <= 0:
        return []
    return [*range(PROMPT_BUCKET, max_tokens, PROMPT_BUCKET), max_tokens]


class _Graph:
    def __init__(self, graph: torch.cuda.CUDAGraph, out: Tensor) -> None:
        self.graph, self.out = graph, out


class StepGraphs:
    """The captured steps of a model over its cache. ``scratch``: the scratch block, ``width``:
    block-table entries per row."""

    def __init__(
        self,
        model: Decoder,
        cache: KVCache,
        scratch: int,
        width: int,
        decode: list[int],
        verify_width: int,
        prompt: list[int],
    ) -> None:
        self.model, self.cache = model, cache
        cfg, d = model.cfg, model.device
        group = cfg.num_heads // cfg.num_kv_heads
        top, w = decode[-1], max(verify_width, 1)
        self.prompt_tiles = {
            t: max_chunk_tiles(t, group, model.dtype, cfg.head_dim) for t in prompt
        }
        tokens = max([top * w, *prompt])
        most_tiles = max(self.prompt_tiles.values(), default=0)
        scratch_slot = scratch * cache[0][0].shape[1]
        # Graphs hold raw pointers, not references: every input they read must outlive them.
        self.static = [
            torch.zeros(tokens, dtype=torch.int64, device=d),  # ids
            torch.zeros(tokens, dtype=torch.int64, device=d),  # positions
            torch.full((tokens,), scratch_slot, device=d),  # slots
            torch.full((top,), w, dtype=torch.int64, device=d),  # context lens
            torch.full((top, width), scratch, device=d),  # tables
            torch.zeros(top + 1, dtype=torch.int64, device=d),  # prompt steps: query starts
            torch.zeros(top, dtype=torch.int64, device=d),  # prompt steps: sampled rows
            torch.zeros((2, most_tiles), dtype=torch.int64, device=d),  # prompt steps: tiles
        ]
        self._cu = torch.arange(top + 1, dtype=torch.int32, device=d)
        self._rows = torch.arange(top * w, dtype=torch.int64, device=d)
        self._cu_verify = self._cu * w
        pool = torch.cuda.graph_pool_handle()
        # Largest first, so that the smaller ones reuse its memory in the shared pool.
        self.prompt = {t: self._capture(self._prompt_step(t), False, pool) for t in prompt[::-1]}
        self.decode = {
            b: self._capture(self._fixed_step(b, 1, self._cu), True, pool) for b in decode[::-1]
        }
        self.verify: dict[int, _Graph] = {}
        if verify_width:
            self.verify = {
                b: self._capture(self._fixed_step(b, w, self._cu_verify), False, pool)
                for b in decode[::-1]
            }
        torch.cuda.synchronize()

    def _fixed_step(self, bucket: int, width: int, cu: Tensor) -> Callable[[], StepBatch]:
        """A step of ``bucket`` rows of ``width`` query tokens each; with one token per row its
        rows' logits, else the hidden states of every token."""
        tokens = bucket * width
        ids, pos, slots = (s[:tokens] for s in self.static[:3])
        ctx, tables = (s[:bucket] for s in self.static[3:5])
        rows = self._rows[:bucket] if width == 1 else self._rows[:tokens]
        cu = cu[: bucket + 1]
        return lambda: StepBatch(ids, pos, slots, cu, ctx.int(), tables.int(), rows, width)

    def _prompt_step(self, tokens: int) -> Callable[[], StepBatch]:
        """A step of ``tokens`` query tokens over every row; the sampled rows' hidden states."""
        ids, pos, slots = (s[:tokens] for s in self.static[:3])
        ctx, tables, cu, rows = self.static[3:7]
        tiles = self.static[7][:, : self.prompt_tiles[tokens]]
        return lambda: StepBatch(
            ids, pos, slots, cu.int(), ctx.int(), tables.int(), rows, tokens, tiles
        )

    def _capture(self, make: Callable[[], StepBatch], head: bool, pool: Any) -> _Graph:
        self.model(make(), self.cache, head)  # compiles kernels and settles the allocator
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            # The casts run inside the graph, so that replays read the static int64 inputs.
            out = self.model(make(), self.cache, head)
        return _Graph(graph, out)

    def replay(self, graphs: dict[int, _Graph], bucket: int, values: Sequence[Tensor]) -> Tensor:
        """Copies ``values`` into the leading parts of the static inputs, in their order, and
        replays the bucket's graph; its output stays valid until the next replay."""
        for static, value in zip(self.static, values, strict=False):
            static[tuple(slice(0, n) for n in value.shape)].copy_(value)
        graph = graphs[bucket]
        graph.graph.replay()
        return graph.out
