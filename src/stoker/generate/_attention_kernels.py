"""The paged-attention Triton kernels: one program per (query tile, kv head, sequence), and the
kernel that merges the partial results of decode rows whose keys were split between programs.
``paged_attention_triton`` (``_attention.py``) chooses their tiles and launches them."""

from __future__ import annotations

import functools
from typing import Any

from stoker._triton import interpreted, jit, jit_varying, tl

__all__ = ["KERNELS", "interpreted_kernels"]


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


KERNELS: dict[str, Any] = {
    "_paged_attention_kernel": _paged_attention_kernel,
    "_combine_kernel": _combine_kernel,
}


@functools.cache
def interpreted_kernels() -> dict[str, Any]:
    """Interpreted copies of the kernels, for CPU tensors (tests without a GPU)."""
    ns = interpreted(globals(), ("_maximum", "_add", "_paged_attention_kernel", "_combine_kernel"))
    # triton's own max and sum combiners, where this triton has them, let the interpreter reduce
    # with numpy instead of element by element.
    standard = getattr(tl, "standard", None)
    for name, fast in (("_maximum", "_elementwise_max"), ("_add", "_sum_combine")):
        ns[name] = getattr(standard, fast, ns[name])
    return ns
