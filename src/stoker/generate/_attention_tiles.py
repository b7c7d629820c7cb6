"""How paged attention divides a step between programs: the query and key tiles of a program,
the map of the (sequence, tile) pairs of prompt chunks, and how many shares of their keys the
programs of decode rows take.

Rows longer than a decode tile (prompt chunks) take wide query tiles. Without a map their launch
covers every (tile up to ``max_query_len``, sequence) pair, and beside 256 decoding rows almost
all of those programs return at once; ``chunk_tiles`` lists, on the host, just the (sequence,
tile) pairs that have work, so the launch has one program per pair. Padded with empty entries to
a fixed length, the same map lets a CUDA graph serve any step of up to that many tiles.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from stoker._triton import triton

__all__ = ["chunk_tiles", "decode_splits", "max_chunk_tiles", "tile_shape"]


def tile_shape(
    group: int, max_query_len: int, dtype: torch.dtype, head_dim: int
) -> tuple[int, int, int]:
    """(rows, query tokens, keys) of a program's step: whole groups, >= 16 rows for tl.dot."""
    # Sized so that ptxas (sm_90) keeps the tiles in registers: wider elements or heads spill at
    # 64 x 64. A decode tile is one group padded to 16 rows; its 64 keys keep 4 blocks in flight.
    wide = max(16, (64 if dtype.itemsize == 2 else 32) * 128 // max(128, head_dim))
    rows = max(16, triton.next_power_of_2(group))
    if max_query_len > 1:
        rows = max(rows, min(wide, triton.next_power_of_2(max_query_len * group)))
    return rows, rows // group, wide


# A padding pair's tile: past any sequence's queries, so its program returns at once.
_PAD_TILE = 1 << 40


def _chunk_shape(group: int, dtype: torch.dtype, head_dim: int) -> tuple[int, int]:
    """(query tokens of a decode tile, query tokens of a wide tile)."""
    return tile_shape(group, 1, dtype, head_dim)[1], tile_shape(group, 1 << 20, dtype, head_dim)[1]


def chunk_tiles(
    query_lens: npt.NDArray[np.integer[Any]],
    group: int,
    dtype: torch.dtype,
    head_dim: int,
    size: int | None = None,
) -> npt.NDArray[np.int64]:
    """The (sequence, query tile) pairs of the step's rows longer than a decode tile, as the
    ``[2, M]`` int64 map ``paged_attention`` takes as ``tiles`` (sequences, then tiles), for q
    heads ``group`` times the kv heads of ``head_dim`` in ``dtype``. With ``size``, padded to
    M = ``size`` (at least ``max_chunk_tiles`` of the step's tokens)."""
    small, tokens = _chunk_shape(group, dtype, head_dim)
    q = np.asarray(query_lens, dtype=np.int64)
    counts = np.where(q > small, -(-q // tokens), 0)
    total = int(counts.sum())
    width = total if size is None else size
    if total > width:
        raise ValueError(f"the step has {total} query tiles, more than size={size}")
    out = np.empty((2, width), dtype=np.int64)
    out[0, :total] = np.repeat(np.arange(len(q), dtype=np.int64), counts)
    out[1, :total] = np.arange(total, dtype=np.int64) - np.repeat(
        np.cumsum(counts) - counts, counts
    )
    out[0, total:] = 0
    out[1, total:] = _PAD_TILE
    return out


def max_chunk_tiles(num_tokens: int, group: int, dtype: torch.dtype, head_dim: int) -> int:
    """The most pairs ``chunk_tiles`` lists for a step of ``num_tokens`` query tokens: each of
    its rows longer than a decode tile adds at most one partial tile."""
    small, tokens = _chunk_shape(group, dtype, head_dim)
    return -(-num_tokens // tokens) + num_tokens // (small + 1)


# Decode steps of few sequences leave most of the GPU idle with one program per sequence and kv
# head; below this many programs per multiprocessor their keys are split between programs. On an
# H100 (bench_attention.py, contexts of 100-2,048) four shares were best from 16 to 64 rows and
# two at 128; more shares cost more than they gained.
_PROGRAMS_PER_SM = 16
_MAX_SPLITS = 4


@functools.cache
def _multiprocessors(device: torch.device) -> int:
    return int(torch.cuda.get_device_properties(device).multi_processor_count)


def decode_splits(batch: int, n_kv: int, device: torch.device) -> int:
    """How many shares of their keys the programs of ``batch`` decode rows take on ``device``:
    enough for about ``_PROGRAMS_PER_SM`` programs per multiprocessor, 1 off CUDA."""
    if device.type != "cuda":
        return 1
    wanted = _PROGRAMS_PER_SM * _multiprocessors(device) // max(1, batch * n_kv)
    return max(1, min(_MAX_SPLITS, wanted))
