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
captured in a CUDA graph. How a step is divided between programs (tiles, the map of prompt
chunks' tiles, split keys) is in ``_attention_tiles.py``; the kernels are in
``_attention_kernels.py``.
"""

from __future__ import annotations

from typing import Literal

import torch

from stoker._triton import HAS_TRITON, on_device, triton
from stoker.generate._attention_kernels import KERNELS, interpreted_kernels
from stoker.generate._attention_tiles import chunk_tiles, decode_splits, max_chunk_tiles, tile_shape

__all__ = [
    "HAS_TRITON",
    "chunk_tiles",
    "decode_splits",
    "max_chunk_tiles",
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
    kernels = interpreted_kernels() if interpreted else KERNELS
    # A step that mixes decode rows with prompt chunks runs in two launches: the decode rows on
    # the small tiles a decode step uses, the chunks on wide ones. One launch on wide tiles would
    # spend a wide tile's registers (fewer programs per SM) on every one-token row, and a step
    # beside 256 decoding sequences has 256 of them.
    small = tile_shape(group, 1, q.dtype, head_dim)[1]
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
            rows, tokens, keys = tile_shape(group, 1 << 20 if chunks else q_max, q.dtype, head_dim)
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
