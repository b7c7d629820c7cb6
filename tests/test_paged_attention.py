"""Paged attention and write_kv against dense causal attention computed without a paged cache.

The oracle is torch's scaled_dot_product_attention in float64 on each sequence's own K/V (kept
beside the cache, repeated per q head for GQA) with a causal mask shifted by the cached prefix.
The torch reference is checked against it; the Triton kernel is checked against the reference.
Without a GPU the kernel runs in Triton's interpreter on CPU tensors (the module builds
interpreted copies itself, so TRITON_INTERPRET is left alone, as in test_gpu_resize); with one
the same comparisons run the compiled kernel on it. Cache slots that no sequence owns hold NaN,
so a kernel reading past a sequence's keys (or a padding row's block table) shows up as NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, cast

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stoker.generate import _attention, _attention_tiles
from stoker.generate._attention import (
    HAS_TRITON,
    chunk_tiles,
    decode_splits,
    max_chunk_tiles,
    paged_attention,
    paged_attention_reference,
    paged_attention_triton,
    write_kv,
)

Backend = Literal["auto", "triton", "torch"]
Args = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
# The compiled kernel where there is a GPU; Triton's interpreter stands in for it elsewhere.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# A mixed step: a prefill chunk after a cached prefix, decodes, a padding row (no query, no
# context), a whole prompt, a decode at context 1 (a padded row on a scratch block), another
# chunk, and a trailing padding row.
MIXED_Q = [7, 1, 0, 12, 1, 3, 1, 0]
MIXED_CTX = [20, 45, 0, 12, 1, 50, 33, 0]


@dataclass
class Step:
    q: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    cu: torch.Tensor
    ctx: torch.Tensor
    tables: torch.Tensor
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    max_query_len: int

    def to(self, device: str) -> Step:
        q, k, v, cu, ctx, tables = (
            t.to(device)
            for t in (self.q, self.k_cache, self.v_cache, self.cu, self.ctx, self.tables)
        )
        return Step(q, k, v, cu, ctx, tables, self.keys, self.values, self.max_query_len)


def make_step(
    q_lens: list[int],
    ctx_lens: list[int],
    *,
    n_q: int = 4,
    n_kv: int = 2,
    head_dim: int = 32,
    block_size: int = 16,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> Step:
    """Random q and per-sequence K/V, scattered into NaN caches through shuffled block tables."""
    gen = torch.Generator().manual_seed(seed)
    counts = [math.ceil(n / block_size) for n in ctx_lens]
    num_blocks = sum(counts) + 3  # spare blocks nobody owns
    order = torch.randperm(num_blocks, generator=gen).tolist()
    shape = (num_blocks, block_size, n_kv, head_dim)
    k_cache = torch.full(shape, float("nan"), dtype=dtype)
    v_cache = torch.full(shape, float("nan"), dtype=dtype)
    tables = torch.full((len(ctx_lens), max(counts, default=0) + 1), -1, dtype=torch.int32)
    keys, values = [], []
    for b, (n, count) in enumerate(zip(ctx_lens, counts, strict=True)):
        blocks, order = order[:count], order[count:]
        tables[b, :count] = torch.tensor(blocks, dtype=torch.int32)
        k = torch.randn(n, n_kv, head_dim, generator=gen).to(dtype)
        v = torch.randn(n, n_kv, head_dim, generator=gen).to(dtype)
        for p in range(n):
            k_cache[blocks[p // block_size], p % block_size] = k[p]
            v_cache[blocks[p // block_size], p % block_size] = v[p]
        keys.append(k)
        values.append(v)
    q = torch.randn(sum(q_lens), n_q, head_dim, generator=gen).to(dtype)
    cu = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    ctx = torch.tensor(ctx_lens, dtype=torch.int32)
    return Step(q, k_cache, v_cache, cu, ctx, tables, keys, values, max(q_lens, default=0))


def dense(step: Step, scale: float) -> torch.Tensor:
    """float64 [T, Hq, D]: SDPA per sequence on its own K/V, causal from its cached prefix."""
    group = step.q.shape[1] // step.k_cache.shape[2]
    out = torch.zeros(step.q.shape, dtype=torch.float64)
    cu = step.cu.tolist()
    for b, (k, v) in enumerate(zip(step.keys, step.values, strict=True)):
        q_len, n = cu[b + 1] - cu[b], k.shape[0]
        if q_len == 0:
            continue
        q = step.q[cu[b] : cu[b + 1]].cpu().double().transpose(0, 1)
        kk = k.double().repeat_interleave(group, dim=1).transpose(0, 1)
        vv = v.double().repeat_interleave(group, dim=1).transpose(0, 1)
        mask = torch.ones(q_len, n, dtype=torch.bool).tril(diagonal=n - q_len)
        o = F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask, scale=scale)
        out[cu[b] : cu[b + 1]] = o.transpose(0, 1)
    return out


def attend(
    step: Step, scale: float, backend: Backend, out: torch.Tensor | None = None
) -> torch.Tensor:
    args = (step.q, step.k_cache, step.v_cache, step.cu, step.ctx, step.tables, scale)
    return paged_attention(*args, step.max_query_len, out, backend=backend)


# Output rounding (reference) plus probabilities rounded to the cache dtype before P @ V (kernel).
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def assert_close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    assert bool(torch.isfinite(got).all()), "non-finite output"
    torch.testing.assert_close(
        got.cpu().double(), want.cpu().double(), rtol=TOL[dtype], atol=TOL[dtype]
    )


@pytest.mark.parametrize("block_size", [4, 16, 32])
@pytest.mark.parametrize(("n_q", "n_kv"), [(4, 4), (4, 2), (8, 2), (6, 2)])
def test_reference_matches_dense(n_q: int, n_kv: int, block_size: int) -> None:
    step = make_step(MIXED_Q, MIXED_CTX, n_q=n_q, n_kv=n_kv, block_size=block_size)
    got = attend(step, 0.3, "torch")
    assert got.dtype == torch.float32
    assert_close(got, dense(step, 0.3), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reference_low_precision(dtype: torch.dtype) -> None:
    step = make_step(MIXED_Q, MIXED_CTX, n_q=8, n_kv=2, dtype=dtype, seed=1)
    got = attend(step, 32**-0.5, "torch")
    assert got.dtype == dtype
    assert_close(got, dense(step, 32**-0.5), dtype)


@pytest.mark.parametrize("seed", range(5))
def test_reference_random_steps(seed: int) -> None:
    gen = torch.Generator().manual_seed(100 + seed)
    ctx = torch.randint(0, 80, (6,), generator=gen).tolist()
    q_lens = [int(torch.randint(0, n + 1, (1,), generator=gen)) if n else 0 for n in ctx]
    step = make_step(q_lens, ctx, n_q=8, n_kv=2, block_size=8, seed=seed)
    assert_close(attend(step, 0.2, "torch"), dense(step, 0.2), torch.float32)


def test_reference_writes_into_out() -> None:
    step = make_step([3, 1], [5, 9])
    out = torch.full_like(step.q, 7.0)
    got = attend(step, 0.5, "torch", out=out)
    assert got is out
    assert_close(out, dense(step, 0.5), torch.float32)


@pytest.mark.parametrize(
    ("q_lens", "ctx", "max_query_len", "match"),
    [
        ([3], [2], 3, "at most its context length"),
        ([3], [5], 2, "max_query_len"),
    ],
)
def test_reference_rejects_inconsistent_lengths(
    q_lens: list[int], ctx: list[int], max_query_len: int, match: str
) -> None:
    step = make_step(q_lens, [max(ctx[0], q_lens[0])])
    step.ctx = torch.tensor(ctx, dtype=torch.int32)
    args = (step.q, step.k_cache, step.v_cache, step.cu, step.ctx, step.tables, 1.0)
    with pytest.raises(ValueError, match=match):
        paged_attention_reference(*args, max_query_len)


# The kernel (interpreted on CPU) against the reference. Sizes stay small for the interpreter.
@needs_triton
@pytest.mark.parametrize(("n_q", "n_kv"), [(2, 2), (4, 2), (8, 2), (6, 2)])
def test_triton_mixed_step_gqa(n_q: int, n_kv: int) -> None:
    step = make_step(MIXED_Q, MIXED_CTX, n_q=n_q, n_kv=n_kv, seed=2)
    want = attend(step, 0.25, "torch")
    assert_close(attend(step.to(DEVICE), 0.25, "triton"), want, torch.float32)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_low_precision(dtype: torch.dtype) -> None:
    # Group 4 x 12 query tokens: 64-row tiles.
    step = make_step(MIXED_Q, MIXED_CTX, n_q=8, n_kv=2, dtype=dtype, seed=3)
    want = attend(step, 32**-0.5, "torch")
    got = attend(step.to(DEVICE), 32**-0.5, "triton")
    assert got.dtype == dtype
    assert_close(got, want, dtype)


@needs_triton
@pytest.mark.parametrize(("block_size", "head_dim"), [(32, 16), (64, 64), (16, 128)])
def test_triton_block_sizes_and_head_dims(block_size: int, head_dim: int) -> None:
    step = make_step([5, 1, 1, 0], [70, 130, 64, 0], head_dim=head_dim, block_size=block_size)
    want = attend(step, head_dim**-0.5, "torch")
    assert_close(attend(step.to(DEVICE), head_dim**-0.5, "triton"), want, torch.float32)


@needs_triton
@pytest.mark.parametrize(("n_q", "n_kv"), [(2, 2), (8, 2), (6, 2)])
def test_triton_long_prefill_spans_query_tiles(n_q: int, n_kv: int) -> None:
    # 70 query tokens need several tiles of any group size; the first 20 keys are cached.
    step = make_step([70, 1, 0, 9], [90, 40, 0, 9], n_q=n_q, n_kv=n_kv, head_dim=16, seed=4)
    want = attend(step, 0.25, "torch")
    assert_close(attend(step.to(DEVICE), 0.25, "triton"), want, torch.float32)


@needs_triton
@pytest.mark.parametrize(
    ("seed", "group", "block_size"), [(0, 1, 16), (1, 2, 32), (2, 4, 16), (3, 3, 64)]
)
def test_triton_random_steps(seed: int, group: int, block_size: int) -> None:
    gen = torch.Generator().manual_seed(200 + seed)
    ctx = torch.randint(0, 100, (6,), generator=gen).tolist()
    q_lens = [int(torch.randint(0, n + 1, (1,), generator=gen)) if n else 0 for n in ctx]
    step = make_step(q_lens, ctx, n_q=2 * group, block_size=block_size, head_dim=16, seed=seed)
    want = attend(step, 0.3, "torch")
    assert_close(want, dense(step, 0.3), torch.float32)
    assert_close(attend(step.to(DEVICE), 0.3, "triton"), want, torch.float32)


@needs_triton
@pytest.mark.parametrize(("n_q", "small"), [(2, 16), (4, 8), (16, 2)])
def test_triton_rows_either_side_of_the_small_tile(n_q: int, small: int) -> None:
    # Rows of up to `small` query tokens run in the launch with decode tiles, longer rows in the
    # launch with wide tiles; a row of each length at the boundary, among decode rows.
    q_lens = [1, small, small + 1, 1, 2 * small + 3, 0]
    ctx = [40, small + 5, small + 1, 9, 2 * small + 20, 0]
    step = make_step(q_lens, ctx, n_q=n_q, n_kv=2, head_dim=16, seed=8)
    want = attend(step, 0.3, "torch")
    assert_close(want, dense(step, 0.3), torch.float32)
    assert_close(attend(step.to(DEVICE), 0.3, "triton"), want, torch.float32)


@needs_triton
def test_triton_decode_step_and_loose_max_query_len() -> None:
    step = make_step([1] * 5 + [0], [1, 17, 32, 33, 100, 0], n_q=8, n_kv=2, seed=5)
    want = attend(step, 0.25, "torch").to(DEVICE)
    dev = step.to(DEVICE)
    assert_close(attend(dev, 0.25, "triton"), want, torch.float32)
    # An upper bound larger than any query length launches idle query tiles that must return.
    dev.max_query_len = 40
    assert_close(attend(dev, 0.25, "triton"), want, torch.float32)


@needs_triton
def test_triton_strided_q_out_and_interleaved_cache() -> None:
    # q as a view of a fused qkv projection; K and V interleaved in one cache tensor.
    step = make_step(MIXED_Q, MIXED_CTX, n_q=4, n_kv=2, seed=6)
    want = attend(step, 0.3, "torch")
    qkv = torch.randn(step.q.shape[0], 8, step.q.shape[2])
    qkv[:, :4] = step.q
    kv = torch.stack([step.k_cache, step.v_cache], dim=2)  # [blocks, block_size, 2, Hkv, D]
    dev = step.to(DEVICE)
    qkv, kv = qkv.to(DEVICE), kv.to(DEVICE)
    dev.q, dev.k_cache, dev.v_cache = qkv[:, :4], kv[:, :, 0], kv[:, :, 1]
    out = torch.full((step.q.shape[0], 4, 2 * step.q.shape[2]), 5.0, device=DEVICE)
    view = out[:, :, : step.q.shape[2]]
    got = attend(dev, 0.3, "triton", out=view)
    assert got is view
    assert_close(got, want, torch.float32)
    assert bool((out[:, :, step.q.shape[2] :] == 5.0).all()), "wrote outside out"


@needs_triton
def test_triton_int64_metadata_and_empty_step() -> None:
    step = make_step([2, 1], [6, 30], seed=7)
    want = attend(step, 0.5, "torch")
    step.cu, step.ctx, step.tables = step.cu.long(), step.ctx.long(), step.tables.long()
    assert_close(attend(step.to(DEVICE), 0.5, "triton"), want, torch.float32)
    empty = make_step([0, 0], [0, 0]).to(DEVICE)
    assert attend(empty, 0.5, "triton").shape == (0, 4, 32)


@needs_triton
@pytest.mark.parametrize("splits", [2, 3, 7])
def test_triton_split_keys_match_the_reference(splits: int) -> None:
    # Decode rows with contexts from 1 key to several key steps (shares empty, partial and
    # full), and rows of up to a decode tile's tokens, which the split launch covers too.
    q_lens = [1, 1, 1, 1, 4, 8, 0, 1]
    ctx = [1, 5, 33, 130, 40, 8, 0, 77]
    step = make_step(q_lens, ctx, n_q=4, n_kv=2, head_dim=32, seed=13)
    want = attend(step, 0.3, "torch")
    assert_close(want, dense(step, 0.3), torch.float32)
    dev = step.to(DEVICE)
    args = (dev.q, dev.k_cache, dev.v_cache, dev.cu, dev.ctx, dev.tables, 0.3)
    got = paged_attention(*args, dev.max_query_len, backend="triton", splits=splits)
    assert_close(got, want, torch.float32)


@needs_triton
@pytest.mark.parametrize("with_map", [False, True])
def test_triton_split_decode_rows_beside_prompt_chunks(with_map: bool) -> None:
    # Only the decode tiles' launch splits; the chunks' launch (mapped or not) writes as before.
    step = make_step(MIXED_Q, MIXED_CTX, n_q=4, n_kv=2, seed=14)
    want = attend(step, 0.3, "torch")
    dev = step.to(DEVICE)
    args = (dev.q, dev.k_cache, dev.v_cache, dev.cu, dev.ctx, dev.tables, 0.3)
    tiles = None
    if with_map:
        q_lens = np.diff(step.cu.numpy())
        tiles = torch.from_numpy(chunk_tiles(q_lens, 2, torch.float32, 32, 12)).to(DEVICE)
    got = paged_attention(*args, dev.max_query_len, backend="triton", tiles=tiles, splits=4)
    assert_close(got, want, torch.float32)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_splits_must_be_a_positive_int(bad: object) -> None:
    step = make_step([1], [3])
    args = (step.q, step.k_cache, step.v_cache, step.cu, step.ctx, step.tables, 1.0)
    with pytest.raises(ValueError, match="splits"):
        paged_attention_triton(*args, 1, None, None, bad)  # type: ignore[arg-type]


def test_decode_splits_fill_the_gpu_and_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    assert decode_splits(4, 8, torch.device("cpu")) == 1
    monkeypatch.setattr(_attention_tiles, "_multiprocessors", lambda device: 132)
    cuda = torch.device("cuda")
    # 16 programs per multiprocessor: 2,112 programs for 132 of them, in at most 4 shares.
    got = {b: decode_splits(b, 8, cuda) for b in (256, 192, 128, 96, 64, 16, 1)}
    assert got == {256: 1, 192: 1, 128: 2, 96: 2, 64: 4, 16: 4, 1: 4}


def mapped(step: Step, scale: float, size: int | None = None) -> torch.Tensor:
    """The kernel with the step's tile map (padded to ``size``) deciding the chunk programs."""
    group = step.q.shape[1] // step.k_cache.shape[2]
    q_lens = np.diff(step.cu.numpy())
    tiles = chunk_tiles(q_lens, group, step.q.dtype, step.q.shape[2], size)
    dev = step.to(DEVICE)
    args = (dev.q, dev.k_cache, dev.v_cache, dev.cu, dev.ctx, dev.tables, scale)
    tiles_dev = torch.from_numpy(tiles).to(DEVICE)
    return paged_attention(*args, step.max_query_len, backend="triton", tiles=tiles_dev)


@needs_triton
@pytest.mark.parametrize("pad", [0, 5])
def test_triton_tile_map_matches_the_reference(pad: int) -> None:
    # Decode rows, rows either side of the decode tile, chunks spanning several wide tiles and
    # padding rows; the map padded or not. NaN in unowned slots shows any stray read.
    q_lens = [1, 8, 9, 0, 70, 1, 33, 2, 0]
    ctx = [30, 8, 40, 0, 90, 1, 33, 19, 0]
    step = make_step(q_lens, ctx, n_q=4, n_kv=2, head_dim=32, seed=11)
    want = attend(step, 0.3, "torch")
    assert_close(want, dense(step, 0.3), torch.float32)
    exact = chunk_tiles(np.array(q_lens), 2, torch.float32, 32).shape[1]
    assert_close(mapped(step, 0.3, exact + pad), want, torch.float32)


@needs_triton
def test_triton_tile_map_with_a_loose_max_query_len() -> None:
    # A graph launches with max_query_len at its token budget: the map alone bounds the work.
    step = make_step([1, 20, 1, 0], [5, 25, 60, 0], n_q=8, n_kv=2, seed=12)
    want = attend(step, 0.25, "torch")
    step.max_query_len = 256
    assert_close(mapped(step, 0.25, 40), want, torch.float32)


def test_chunk_tiles_lists_the_pairs_with_work() -> None:
    # float32, head dim 32, group 2: decode tiles hold 8 query tokens, wide ones 16.
    tiles = chunk_tiles(np.array([1, 8, 9, 0, 33, 16]), 2, torch.float32, 32)
    assert tiles.tolist() == [[2, 4, 4, 4, 5], [0, 0, 1, 2, 0]]
    padded = chunk_tiles(np.array([9]), 2, torch.float32, 32, size=3)
    assert padded[0].tolist() == [0, 0, 0]
    assert padded[1, 0] == 0 and bool((padded[1, 1:] > 1 << 30).all())
    with pytest.raises(ValueError, match="size=1"):
        chunk_tiles(np.array([40]), 2, torch.float32, 32, size=1)
    assert chunk_tiles(np.array([1, 1]), 2, torch.float32, 32).shape == (2, 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_max_chunk_tiles_bounds_any_split_of_a_step(dtype: torch.dtype) -> None:
    rng = np.random.default_rng(3)
    for total in (9, 100, 257, 2048):
        bound = max_chunk_tiles(total, 2, dtype, 128)
        for _ in range(200):
            cuts = np.sort(rng.integers(0, total + 1, size=int(rng.integers(1, 300))))
            q_lens = np.diff(np.concatenate(([0], cuts, [total])))
            assert chunk_tiles(q_lens, 2, dtype, 128).shape[1] <= bound
        # As many rows as fit, each one token past the decode tile and one past a wide tile.
        for width in (9, 33, 65):
            worst = np.full(total // width, width)
            assert chunk_tiles(worst, 2, dtype, 128).shape[1] <= bound


@needs_triton
def test_auto_backend_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(_attention, "paged_attention_reference", lambda *a: calls.append("torch"))
    monkeypatch.setattr(_attention, "paged_attention_triton", lambda *a: calls.append("triton"))
    step = make_step([1], [3])
    attend(step, 1.0, "auto")
    attend(step, 1.0, "triton")
    attend(step, 1.0, "torch")
    assert calls == ["torch", "triton", "torch"]
    if torch.cuda.is_available():
        attend(step.to("cuda"), 1.0, "auto")
        assert calls[-1] == "triton"


def test_without_triton_raises_runtime_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_attention, "HAS_TRITON", False)
    step = make_step([1], [3])
    assert_close(attend(step, 1.0, "auto"), dense(step, 1.0), torch.float32)
    with pytest.raises(RuntimeError, match="triton"):
        attend(step, 1.0, "triton")


STEP = make_step([2, 1], [4, 3])
OK: Args = (STEP.q, STEP.k_cache, STEP.v_cache, STEP.cu, STEP.ctx, STEP.tables)


def _with(index: int, value: torch.Tensor) -> Args:
    args = list(OK)
    args[index] = value
    return cast(Args, tuple(args))


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
@pytest.mark.parametrize(
    ("args", "out", "match"),
    [
        (_with(0, STEP.q[0]), None, "q must be"),
        (_with(0, STEP.q[:, :3]), None, "multiple of kv heads"),
        (_with(0, STEP.q[..., :16]), None, "head dim"),
        (_with(0, STEP.q.half()), None, "share one of"),
        (_with(1, STEP.k_cache[:, :8]), None, "k_cache and v_cache"),
        (_with(3, STEP.cu[:2]), None, "cu_query_lens must be"),
        (_with(4, STEP.ctx.float()), None, "int32 or int64"),
        (_with(5, STEP.tables.float()), None, "int32 or int64"),
        (_with(5, STEP.tables[:1]), None, "block_tables must be"),
        (_with(3, STEP.cu.to("meta")), None, "device"),
        (OK, STEP.q[:2], "out must be"),
        (OK, STEP.q.half(), "out must be"),
    ],
)
def test_bad_input_raises(
    args: Args, out: torch.Tensor | None, match: str, backend: Backend
) -> None:
    with pytest.raises(ValueError, match=match):
        paged_attention(*args, 1.0, 2, out, backend=backend)


@needs_triton
def test_triton_rejects_unsupported_layouts() -> None:
    step = make_step([1], [3], head_dim=24)
    with pytest.raises(ValueError, match="power of two"):
        attend(step, 1.0, "triton")
    args = (STEP.q.transpose(1, 2).contiguous().transpose(1, 2), *OK[1:], 1.0, 2)
    with pytest.raises(ValueError, match="last dimension"):
        paged_attention_triton(*args)


def test_bad_backend_and_max_query_len() -> None:
    with pytest.raises(ValueError, match="backend"):
        paged_attention(*OK, 1.0, 2, backend="cuda")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_query_len"):
        paged_attention(*OK, 1.0, -1)


def test_write_kv_writes_only_named_slots() -> None:
    gen = torch.Generator().manual_seed(8)
    cache_k = torch.full((5, 4, 2, 8), float("nan"))
    cache_v = torch.full((5, 4, 2, 8), float("nan"))
    slots = torch.tensor([17, 2, 3, 8, 19], dtype=torch.int64)
    k, v = torch.randn(5, 2, 8, generator=gen), torch.randn(5, 2, 8, generator=gen)
    write_kv(k, v, cache_k, cache_v, slots)
    for i, slot in enumerate(slots.tolist()):
        assert torch.equal(cache_k[slot // 4, slot % 4], k[i])
        assert torch.equal(cache_v[slot // 4, slot % 4], v[i])
    written = torch.zeros(20, dtype=torch.bool)
    written[slots] = True
    assert bool(cache_k.view(20, -1)[~written].isnan().all())
    assert bool(cache_v.view(20, -1)[~written].isnan().all())


def test_write_kv_into_interleaved_cache_then_attend() -> None:
    # A prefill of 6 tokens and a decode, stored by write_kv into one [blocks, bs, 2, H, D] tensor.
    step = make_step([6, 1], [6, 21], n_q=4, n_kv=2, block_size=8, seed=9)
    kv = torch.full((*step.k_cache.shape[:2], 2, *step.k_cache.shape[2:]), float("nan"))
    k_cache, v_cache = kv[:, :, 0], kv[:, :, 1]
    tables = step.tables.tolist()
    slots = []
    for b, n in enumerate(step.ctx.tolist()):
        slots += [tables[b][p // 8] * 8 + p % 8 for p in range(n)]
    keys, values = torch.cat(step.keys), torch.cat(step.values)
    write_kv(keys, values, k_cache, v_cache, torch.tensor(slots))
    step.k_cache, step.v_cache = k_cache, v_cache
    assert_close(attend(step, 0.3, "torch"), dense(step, 0.3), torch.float32)


@pytest.mark.parametrize(
    ("k", "cache", "slots", "match"),
    [
        (torch.zeros(2, 2, 8), torch.zeros(3, 4, 2, 8), torch.zeros(2, dtype=torch.int32), "int64"),
        (torch.zeros(2, 2, 8), torch.zeros(3, 4, 2, 8), torch.zeros(3, dtype=torch.int64), "int64"),
        (
            torch.zeros(2, 3, 8),
            torch.zeros(3, 4, 2, 8),
            torch.zeros(2, dtype=torch.int64),
            "caches",
        ),
        (torch.zeros(2, 8), torch.zeros(3, 4, 2, 8), torch.zeros(2, dtype=torch.int64), "k and v"),
        (
            torch.zeros(2, 2, 8).half(),
            torch.zeros(3, 4, 2, 8),
            torch.zeros(2, dtype=torch.int64),
            "dtype",
        ),
        (
            torch.zeros(2, 2, 8),
            torch.zeros(6, 4, 2, 8)[::2],
            torch.zeros(2, dtype=torch.int64),
            "back to back",
        ),
    ],
)
def test_write_kv_bad_input_raises(
    k: torch.Tensor, cache: torch.Tensor, slots: torch.Tensor, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        write_kv(k, k.clone(), cache, cache.clone(), slots)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_replay_matches_eager() -> None:
    # One captured decode step (write_kv, then attention) replayed on new step data.
    step = make_step([1, 1, 1, 0], [20, 33, 64, 0], n_q=8, n_kv=2, head_dim=64, seed=10)
    dev = step.to("cuda")
    lens = [20, 33, 64]
    tables = step.tables.tolist()
    last = [tables[b][(n - 1) // 16] * 16 + (n - 1) % 16 for b, n in enumerate(lens)]
    # Until the replay, the step writes back the keys already at those slots.
    slots = torch.tensor(last, device="cuda")
    new_k = torch.stack([k[n - 1] for k, n in zip(step.keys[:3], lens, strict=True)]).cuda()
    new_v = torch.stack([v[n - 1] for v, n in zip(step.values[:3], lens, strict=True)]).cuda()
    out = torch.empty_like(dev.q)

    def run() -> None:
        write_kv(new_k, new_v, dev.k_cache, dev.v_cache, slots)
        attend(dev, 0.125, "triton", out=out)

    run()  # compiles the kernel before the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    # New K/V for each decode token's position, a new query, then the graph replays.
    new_k.copy_(torch.randn(3, 2, 64))
    new_v.copy_(torch.randn(3, 2, 64))
    dev.q.copy_(torch.randn_like(dev.q))
    graph.replay()
    torch.cuda.synchronize()
    for b, n in enumerate(lens):
        step.keys[b][n - 1] = new_k[b].cpu()
        step.values[b][n - 1] = new_v[b].cpu()
    step.q = dev.q.cpu()
    assert_close(out, dense(step, 0.125), torch.float32)
