"""Causal grouped-query attention over a paged KV cache, for a Llama-family decoder.

The cache is two tensors ``[num_blocks, block_size, Hkv, D]`` (K and V); sequence ``b`` owns
the blocks ``block_tables[b]`` in order, so its key at position ``p`` lives in block
``block_tables[b, p // block_size]`` at offset ``p % block_size``. A step is flat: the query
tokens of all sequences back to back (``cu_query_lens`` marks where each starts), and
``context_lens`` counts each sequence's keys including the step's own tokens, which
``write_kv`` has already stored.

``paged_attention`` runs a Triton kernel on CUDA tensors and ``paged_attention_reference``
(plain torch, also the tests' oracle) elsewhere; CPU tensors may be forced through the kernel,
which then runs in Triton's interpreter. The kernel and ``write_kv`` never synchronize with the
host and their launches depend only on shapes and the host ``max_query_len``, so a step can be
captured in a CUDA graph.

Rows longer than a decode tile (prompt chunks) take wide query tiles. Without a map their launch
covers every (tile up to ``max_query_len``, sequence) pair, and beside 256 decoding rows almost
all of those programs return at once; ``chunk_tiles`` lists, on the host, just the (sequence,
tile) pairs that have work, so the launch has one program per pair. Padded with empty entries to
a fixed length, the same map lets a CUDA graph serve any step of up to that many tiles.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch

from stoker._triton import HAS_TRITON, interpreted, jit, jit_varying, on_device, tl, triton

__all__ = [
    "HAS_TRITON",
    "chunk_tiles",
    "decode_splits",
    "paged_attention",
    "paged_attention_reference",
    "paged_attention_triton",
    "write_kv",
]

_LOG2E = 1.4426950408889634
_FLOATS = (torch.float16, torch.bfloat16, torch.float32)
_INTS = (torch.int32, torch.int64)
# The interpreter pays per operation, not per element; small key steps still cross blocks.
_KEYS_INTERPRETED = 32


@jit
def _maximum(a: tl.tensor, b: tl.tensor) -> tl.tensor:
    return tl.maximum(a, b)


@jit
def _add(a: tl.tensor, b: tl.tensor) -> tl.tensor:
    return a + b


@jit_varying("st_b", "q_max", "map_stride", "part_stride")
def _paged_attention_kernel(
    q_ptr: tl.tensor,
    k_ptr: tl.tensor,
    v_ptr: tl.tensor,
    out_ptr: tl.tensor,
    cu_ptr: tl.tensor,
    ctx_ptr: tl.tensor,
    table_ptr: tl.tensor,
    qk_scale: tl.tensor,
    sq_t: tl.tensor,
    sq_h: tl.tensor,
    so_t: tl.tensor,
    so_h: tl.tensor,
    sk_b: tl.tensor,
    sk_o: tl.tensor,
    sk_h: tl.tensor,
    sv_b: tl.tensor,
    sv_o: tl.tensor,
    sv_h: tl.tensor,
    st_b: tl.tensor,
    q_min: tl.tensor,
    q_max: tl.tensor,
    map_ptr: tl.tensor,
    map_stride: tl.tensor,
    part_ptr: tl.tensor,
    ml_ptr: tl.tensor,
    part_stride: tl.tensor,
    MAPPED: tl.constexpr,
    SPLIT: tl.constexpr,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    PAGE: tl.constexpr,
    ROWS: tl.constexpr,
    TOKENS: tl.constexpr,
    KEYS: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
) -> None:
    """One (query tile, kv head, sequence): rows are TOKENS query tokens x GROUP q heads. Only
    sequences of q_min to q_max query tokens: the others are another launch's. MAPPED: the
    first program index picks a (sequence, tile) pair of the map; padding pairs name a tile past
    any sequence's queries. SPLIT: one tile per sequence, and the first program index is a
    share of its keys, whose unnormalized result goes to the partials for _combine_kernel."""
    kv_head = tl.program_id(1)
    split = 0
    if MAPPED:
        seq = tl.load(map_ptr + tl.program_id(0))
        tile = tl.load(map_ptr + map_stride + tl.program_id(0))
    elif SPLIT:
        tile = 0
        split = tl.program_id(0)
        seq = tl.program_id(2)
    else:
        tile = tl.program_id(0)
        seq = tl.program_id(2)
    q_start = tl.load(cu_ptr + seq)
    q_len = tl.load(cu_ptr + seq + 1) - q_start
    # Past the sequence's queries (padding rows included): the grid covers max_query_len.
    if (tile * TOKENS >= q_len) | (q_len < q_min) | (q_len > q_max):
        return
    ctx = tl.load(ctx_ptr + seq)

    row = tl.arange(0, ROWS)
    token = tile * TOKENS + row // GROUP
    head = kv_head * GROUP + row % GROUP
    row_ok = (row < TOKENS * GROUP) & (token < q_len)
    pos = ctx - q_len + token
    dim = tl.arange(0, HEAD_DIM)
    q_offs = (q_start + token)[:, None] * sq_t + head[:, None] * sq_h + dim[None, :]
    q = tl.load(q_ptr + q_offs, mask=row_ok[:, None], other=0.0)
    if UPCAST:  # Triton's interpreter multiplies bfloat16 operands as raw integers
        q = q.to(tl.float32)

    # Keys past the tile's last query token are masked for every row: stop there.
    kv_end = ctx - q_len + tl.minimum(tile * TOKENS + TOKENS, q_len)
    m_i = tl.full([ROWS], float("-inf"), tl.float32)
    l_i = tl.full([ROWS], 0.0, tl.float32)
    acc = tl.full([ROWS, HEAD_DIM], 0.0, tl.float32)
    key = tl.arange(0, KEYS)
    kv_start = 0
    if SPLIT:  # whole key steps per share; the last shares may be empty
        splits = tl.num_programs(0)
        share = ((kv_end + splits - 1) // splits + KEYS - 1) // KEYS * KEYS
        kv_start = split * share
        kv_end = tl.minimum(kv_start + share, kv_end)
    for start in range(kv_start, kv_end, KEYS):
        n = start + key
        n_ok = n < kv_end
        block = tl.load(table_ptr + seq * st_b + n // PAGE, mask=n_ok, other=0).to(tl.int64)
        offset = n % PAGE
        k_offs = block[None, :] * sk_b + offset[None, :] * sk_o + kv_head * sk_h + dim[:, None]
        k = tl.load(k_ptr + k_offs, mask=n_ok[None, :], other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
        s = tl.dot(q, k, input_precision=PRECISION) * qk_scale
        s = tl.where(n_ok[None, :] & (n[None, :] <= pos[:, None]), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.reduce(s, 1, _maximum))
        # A row with no visible key yet keeps -inf; subtracting 0 keeps its terms at exp(-inf).
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.reduce(p, 1, _add)
        v_offs = block[:, None] * sv_b + offset[:, None] * sv_o + kv_head * sv_h + dim[None, :]
        v = tl.load(v_ptr + v_offs, mask=n_ok[:, None], other=0.0)
        if UPCAST:
            v = v.to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    if SPLIT:
        at = split * part_stride + (seq * TOKENS + token) * (tl.num_programs(1) * GROUP) + head
        tl.store(ml_ptr + at, m_i, mask=row_ok)
        tl.store(ml_ptr + tl.num_programs(0) * part_stride + at, l_i, mask=row_ok)
        tl.store(part_ptr + at[:, None] * HEAD_DIM + dim[None, :], acc, mask=row_ok[:, None])
    else:
        result = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        o_offs = (q_start + token)[:, None] * so_t + head[:, None] * so_h + dim[None, :]
        tl.store(out_ptr + o_offs, result.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])


@jit_varying("part_stride", "q_max")
def _combine_kernel(
    part_ptr: tl.tensor,
    ml_ptr: tl.tensor,
    out_ptr: tl.tensor,
    cu_ptr: tl.tensor,
    so_t: tl.tensor,
    so_h: tl.tensor,
    part_stride: tl.tensor,
    splits: tl.tensor,
    q_max: tl.tensor,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    ROWS: tl.constexpr,
    TOKENS: tl.constexpr,
) -> None:
    """One (kv head, sequence) of a split launch: merges its shares' partial results, each
    relative to its own running maximum, into the output. Partials are laid out (share,
    sequence, token of the tile, q head); part_stride is one share's size."""
    kv_head = tl.program_id(0)
    seq = tl.program_id(1)
    q_start = tl.load(cu_ptr + seq)
    q_len = tl.load(cu_ptr + seq + 1) - q_start
    if (q_len == 0) | (q_len > q_max):
        return
    row = tl.arange(0, ROWS)
    token = row // GROUP
    head = kv_head * GROUP + row % GROUP
    row_ok = (row < TOKENS * GROUP) & (token < q_len)
    at = (seq * TOKENS + token) * (tl.num_programs(0) * GROUP) + head
    dim = tl.arange(0, HEAD_DIM)
    m = tl.full([ROWS], float("-inf"), tl.float32)
    for s in range(0, splits):
        m = tl.maximum(m, tl.load(ml_ptr + s * part_stride + at, mask=row_ok, other=float("-inf")))
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    l_sum = tl.full([ROWS], 0.0, tl.float32)
    acc = tl.full([ROWS, HEAD_DIM], 0.0, tl.float32)
    for s in range(0, splits):
        m_s = tl.load(ml_ptr + s * part_stride + at, mask=row_ok, other=float("-inf"))
        weight = tl.exp2(m_s - m_safe)
        l_s = tl.load(ml_ptr + (splits + s) * part_stride + at, mask=row_ok, other=0.0)
        l_sum += weight * l_s
        part = tl.load(
            part_ptr + (s * part_stride + at)[:, None] * HEAD_DIM + dim[None, :],
            mask=row_ok[:, None],
            other=0.0,
        )
        acc += weight[:, None] * part
    result = acc / tl.where(l_sum == 0.0, 1.0, l_sum)[:, None]
    o_offs = (q_start + token)[:, None] * so_t + head[:, None] * so_h + dim[None, :]
    tl.store(out_ptr + o_offs, result.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])


_COMPILED: dict[str, Any] = {
    "_paged_attention_kernel": _paged_attention_kernel,
    "_combine_kernel": _combine_kernel,
}


@functools.cache
def _interpreted() -> dict[str, Any]:
    """Interpreted copies of the kernels, for CPU tensors (tests without a GPU)."""
    ns = interpreted(globals(), ("_maximum", "_add", "_paged_attention_kernel", "_combine_kernel"))
    # triton's own max and sum combiners, where this triton has them, let the interpreter reduce
    # with numpy instead of element by element.
    standard = getattr(tl, "standard", None)
    for name, fast in (("_maximum", "_elementwise_max"), ("_add", "_sum_combine")):
        ns[name] = getattr(standard, fast, ns[name])
    return ns


def _check(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cu_query_lens: torch.Tensor,
    context_lens: torch.Tensor,
    block_tables: torch.Tensor,
    max_query_len: int,
    out: torch.Tensor | None,
) -> torch.Tensor:
    """Raises ValueError for inconsistent arguments (shapes only: no host sync); returns out."""
    if q.dim() != 3:
        raise ValueError(f"q must be [T, Hq, D], got shape {tuple(q.shape)}")
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(
            "k_cache and v_cache must both be [num_blocks, block_size, Hkv, D], got "
            f"{tuple(k_cache.shape)} and {tuple(v_cache.shape)}"
        )
    n_q, head_dim = q.shape[1], q.shape[2]
    n_kv = k_cache.shape[2]
    if k_cache.shape[3] != head_dim:
        raise ValueError(f"head dim of q ({head_dim}) and cache ({k_cache.shape[3]}) differ")
    if n_kv == 0 or n_q % n_kv != 0:
        raise ValueError(f"q heads ({n_q}) must be a multiple of kv heads ({n_kv})")
    if q.dtype not in _FLOATS or k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        raise ValueError(
            "q, k_cache and v_cache must share one of float16, bfloat16, float32; got "
            f"{q.dtype}, {k_cache.dtype}, {v_cache.dtype}"
        )
    if block_tables.dim() != 2 or context_lens.shape != (block_tables.shape[0],):
        raise ValueError(
            f"block_tables must be [B, W] and context_lens [B], got {tuple(block_tables.shape)} "
            f"and {tuple(context_lens.shape)}"
        )
    if cu_query_lens.shape != (block_tables.shape[0] + 1,):
        raise ValueError(f"cu_query_lens must be [B + 1], got {tuple(cu_query_lens.shape)}")
    ints = {
        "cu_query_lens": cu_query_lens,
        "context_lens": context_lens,
        "block_tables": block_tables,
    }
    for name, t in ints.items():
        if t.dtype not in _INTS:
            raise ValueError(f"{name} must be int32 or int64, got {t.dtype}")
    if isinstance(max_query_len, bool) or not isinstance(max_query_len, int) or max_query_len < 0:
        raise ValueError(f"max_query_len must be a non-negative int, got {max_query_len!r}")
    tensors = (k_cache, v_cache, cu_query_lens, context_lens, block_tables)
    if any(t.device != q.device for t in tensors):
        raise ValueError(f"all tensors must be on q's device {q.device}")
    if out is None:
        return torch.empty_like(q, memory_format=torch.contiguous_format)
    if out.shape != q.shape or out.dtype != q.dtype or out.device != q.device:
        raise ValueError(
            f"out must be {tuple(q.shape)} {q.dtype} on {q.device}, got "
            f"{tuple(out.shape)} {out.dtype} on {out.device}"
        )
    return out


def write_kv(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Store the step's keys and values ``[T, Hkv, D]`` at cache slots ``slot_mapping`` (int64).

    Slot ``block * block_size + offset``; every slot must be valid (pad with a scratch block)
    and distinct. In place, no host sync, capturable in a CUDA graph.
    """
    if k.dim() != 3 or v.shape != k.shape:
        raise ValueError(
            f"k and v must both be [T, Hkv, D], got {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k_cache.dim() != 4 or v_cache.shape != k_cache.shape or k_cache.shape[2:] != k.shape[1:]:
        raise ValueError(
            f"caches must both be [num_blocks, block_size, {k.shape[1]}, {k.shape[2]}], got "
            f"{tuple(k_cache.shape)} and {tuple(v_cache.shape)}"
        )
    if slot_mapping.dtype != torch.int64 or slot_mapping.shape != k.shape[:1]:
        raise ValueError(
            f"slot_mapping must be int64 [{k.shape[0]}], got {slot_mapping.dtype} "
            f"{tuple(slot_mapping.shape)}"
        )
    if k.dtype != k_cache.dtype or v.dtype != v_cache.dtype:
        raise ValueError(f"k/v ({k.dtype}) must have the caches' dtype ({k_cache.dtype})")
    for cache in (k_cache, v_cache):
        # A flat view of (block, offset) must alias the cache, or the write would land in a copy.
        if cache.shape[0] > 1 and cache.stride(0) != cache.shape[1] * cache.stride(1):
            raise ValueError(
                "cache blocks must be laid out back to back (stride(0) = bs * stride(1))"
            )
    slots = k_cache.shape[0] * k_cache.shape[1]
    k_cache.view(slots, *k.shape[1:]).index_copy_(0, slot_mapping, k)
    v_cache.view(slots, *v.shape[1:]).index_copy_(0, slot_mapping, v)


def paged_attention_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cu_query_lens: torch.Tensor,
    context_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
    max_query_len: int,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """`paged_attention` in plain torch, one sequence at a time (any device; syncs the host)."""
    out = _check(q, k_cache, v_cache, cu_query_lens, context_lens, block_tables, max_query_len, out)
    block_size, group = k_cache.shape[1], q.shape[1] // k_cache.shape[2]
    cu, ctx = cu_query_lens.tolist(), context_lens.tolist()
    for b, n in enumerate(ctx):
        q_len = cu[b + 1] - cu[b]
        if q_len == 0:
            continue
        if not 0 < q_len <= min(n, max_query_len):
            raise ValueError(
                f"sequence {b}: query length {q_len} must be at most its context length {n} "
                f"and max_query_len {max_query_len}"
            )
        keys = torch.arange(n, device=q.device)
        blocks = block_tables[b, keys // block_size].long()
        k = k_cache[blocks, keys % block_size].float().repeat_interleave(group, dim=1)
        v = v_cache[blocks, keys % block_size].float().repeat_interleave(group, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q[cu[b] : cu[b + 1]].float(), k) * scale
        positions = torch.arange(n - q_len, n, device=q.device)
        scores = scores.masked_fill(keys[None, :] > positions[:, None], float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out[cu[b] : cu[b + 1]] = torch.einsum("hqk,khd->qhd", probs, v).to(out.dtype)
    return out


def _tiles(
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
    return _tiles(group, 1, dtype, head_dim)[1], _tiles(group, 1 << 20, dtype, head_dim)[1]


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


def paged_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cu_query_lens: torch.Tensor,
    context_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
    max_query_len: int,
    out: torch.Tensor | None = None,
    tiles: torch.Tensor | None = None,
    splits: int | None = None,
) -> torch.Tensor:
    """`paged_attention` as Triton kernel launches; CPU tensors run in Triton's interpreter.

    Every query length must be at most ``max_query_len`` and at most its context length (not
    checked: that would sync the host). Needs D a power of two >= 16 and the last dimension of
    q, out and the caches contiguous. Rows of ``out`` outside ``cu_query_lens`` are not written.
    ``tiles``: the step's ``chunk_tiles`` map on the device, which then decides the programs of
    the rows longer than a decode tile. ``splits``: shares of the keys that the decode tiles'
    programs divide between them (``decode_splits`` when None), merged by a second kernel.
    """
    if not HAS_TRITON:
        raise RuntimeError("paged_attention_triton requires triton (pip install triton)")
    out = _check(q, k_cache, v_cache, cu_query_lens, context_lens, block_tables, max_query_len, out)
    head_dim = q.shape[2]
    if head_dim < 16 or head_dim & (head_dim - 1):
        raise ValueError(
            f"the Triton kernel needs a head dim that is a power of two >= 16, got {head_dim}"
        )
    if any(t.stride(-1) != 1 for t in (q, out, k_cache, v_cache)):
        raise ValueError("q, out, k_cache and v_cache must be contiguous in their last dimension")
    if q.device.type not in ("cuda", "cpu"):
        raise ValueError(f"tensors must be on a CUDA device (or the CPU), got {q.device}")
    batch, n_kv = block_tables.shape[0], k_cache.shape[2]
    if batch == 0 or max_query_len == 0 or q.shape[0] == 0:
        return out
    interpreted = q.device.type == "cpu"
    group = q.shape[1] // n_kv
    kernels = _interpreted() if interpreted else _COMPILED
    # A step that mixes decode rows with prompt chunks runs in two launches: the decode rows on
    # the small tiles a decode step uses, the chunks on wide ones. One launch on wide tiles would
    # spend a wide tile's registers (fewer programs per SM) on every one-token row, and a step
    # beside 256 decoding sequences has 256 of them.
    small = _tiles(group, 1, q.dtype, head_dim)[1]
    launches = [(0, max_query_len)]
    if max_query_len > small:
        launches = [(0, small), (small + 1, max_query_len)]
    mapped = tiles is not None and max_query_len > small
    if tiles is not None:
        if tiles.dim() != 2 or tiles.shape[0] != 2 or tiles.dtype != torch.int64:
            raise ValueError(f"tiles must be [2, M] int64, got {tiles.dtype} {tuple(tiles.shape)}")
        if tiles.device != q.device or tiles.stride(1) != 1:
            raise ValueError(f"tiles must be on {q.device}, contiguous in its last dimension")
    if splits is None:
        splits = decode_splits(batch, n_kv, q.device)
    if isinstance(splits, bool) or not isinstance(splits, int) or splits < 1:
        raise ValueError(f"splits must be a positive int, got {splits!r}")
    args = (
        q,
        k_cache,
        v_cache,
        out,
        cu_query_lens,
        context_lens,
        block_tables,
        scale * _LOG2E,
        q.stride(0),
        q.stride(1),
        out.stride(0),
        out.stride(1),
        *k_cache.stride()[:3],
        *v_cache.stride()[:3],
        block_tables.stride(0),
    )
    with on_device(q.device):
        for q_min, q_max in launches:
            chunks = mapped and q_min > 0
            rows, tokens, keys = _tiles(group, 1 << 20 if chunks else q_max, q.dtype, head_dim)
            grid = (triton.cdiv(q_max, tokens), n_kv, batch)
            split = splits > 1 and q_min == 0  # the decode rows' launch: one tile a sequence
            part = ml = cu_query_lens  # stand-ins where the launch writes no partials
            stride = batch * tokens * q.shape[1]
            if split:
                grid = (splits, n_kv, batch)
                part = torch.empty(splits * stride * head_dim, dtype=torch.float32, device=q.device)
                ml = torch.empty(2 * splits * stride, dtype=torch.float32, device=q.device)
            if chunks and tiles is not None:
                if tiles.shape[1] == 0:
                    continue
                grid = (tiles.shape[1], n_kv, 1)
            kernels["_paged_attention_kernel"][grid](
                *args,
                q_min,
                q_max,
                tiles if chunks else cu_query_lens,
                tiles.stride(0) if chunks and tiles is not None else 0,
                part,
                ml,
                stride,
                MAPPED=chunks,
                SPLIT=split,
                GROUP=group,
                HEAD_DIM=head_dim,
                PAGE=k_cache.shape[1],
                ROWS=rows,
                TOKENS=tokens,
                KEYS=_KEYS_INTERPRETED if interpreted else keys,
                PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
                UPCAST=interpreted and q.dtype == torch.bfloat16,
                num_warps=4,
            )
            if split:
                kernels["_combine_kernel"][(n_kv, batch)](
                    part,
                    ml,
                    out,
                    cu_query_lens,
                    out.stride(0),
                    out.stride(1),
                    stride,
                    splits,
                    q_max,
                    GROUP=group,
                    HEAD_DIM=head_dim,
                    ROWS=rows,
                    TOKENS=tokens,
                    num_warps=4,
                )
    return out


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cu_query_lens: torch.Tensor,
    context_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
    max_query_len: int,
    out: torch.Tensor | None = None,
    *,
    backend: Literal["auto", "triton", "torch"] = "auto",
    tiles: torch.Tensor | None = None,
    splits: int | None = None,
) -> torch.Tensor:
    """Causal GQA of the step's query tokens ``q [T, Hq, D]`` over the paged cache -> [T, Hq, D].

    Query token ``i`` of sequence ``b`` sits at position ``context_lens[b] - q_len_b + i`` and
    sees that sequence's keys at positions up to its own; q head ``h`` reads kv head
    ``h // (Hq // Hkv)``. Softmax in float32, result in q's dtype (into ``out`` when given).
    Sequences with query length 0 (padding rows) are skipped without reading their block table.
    ``backend`` "auto" takes the Triton kernel for CUDA tensors when triton is installed and the
    torch reference otherwise; "triton" on CPU tensors runs the kernel in Triton's interpreter.
    ``tiles``: the step's ``chunk_tiles`` on q's device, and ``splits``, the shares of the keys
    of each decode row's programs, for the kernel (the reference needs neither).
    """
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {backend!r}")
    use_triton = backend == "triton" or (backend == "auto" and HAS_TRITON and q.is_cuda)
    args = (cu_query_lens, context_lens, block_tables, scale, max_query_len, out)
    if use_triton:
        return paged_attention_triton(q, k_cache, v_cache, *args, tiles, splits)
    return paged_attention_reference(q, k_cache, v_cache, *args)
