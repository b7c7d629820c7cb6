"""One token per row of float32 logits, greedy or by the Gumbel-max trick, in one read of them.

``gumbel_argmax(logits, temperatures, seeds, offsets)`` returns, for row ``r`` of ``logits``
``(N, V)``, ``argmax_j logits[r, j]`` where ``temperatures[r]`` is 0 (or any value that is not
positive), and otherwise ``argmax_j (logits[r, j] / T + g_j)`` with Gumbel noise
``g_j = -log(E_j)``, ``E_j`` exponential. That draws token ``j`` with probability
``softmax(logits[r] / T)[j]`` without a softmax, a cumulative sum or a noise tensor in memory.

The noise is Triton's Philox4x32-10 (``tl.philox``): element ``j`` of a row uses output
``j % 4`` of the counter ``(j // 4, offsets[r] low 32 bits, offsets[r] high 32 bits, 0)`` under
the key ``seeds[r]``. It depends on ``(seed, offset, j)`` only, never on the row's position, the
batch or how the kernel tiles the vocabulary, so a caller that gives each token of a sequence
its own offset gets fresh, reproducible noise. The interpreter draws the same numbers; the GPU's
logarithms are approximate (relative error ~2^-22), so a near tie may still go either way.

Ties go to the smallest index and NaN beats everything (also the smallest index), as in
``torch.argmax``; a ``-inf`` logit is never drawn unless its whole row is ``-inf``.

CUDA tensors run compiled kernels: one program per (row, vocabulary chunk) and, where a row is
split over several chunks, a second tiny kernel that reduces the chunks' winners. The launches
depend only on shapes and never synchronize with the host, so they can be captured in a CUDA
graph. CPU tensors run the same kernels in Triton's interpreter (for tests without a GPU).
"""

from __future__ import annotations

import functools
from typing import Any, cast

import torch
from torch import Tensor

from stoker._triton import (
    HAS_TRITON,
    interpreted_copy,
    jit,
    jit_varying,
    on_device,
    tl,
    triton,
)

if HAS_TRITON:
    from triton.language.extra import (  # type: ignore[import-untyped,import-not-found,unused-ignore]
        libdevice,
    )

__all__ = ["HAS_TRITON", "gumbel_argmax"]

# Philox counters per tile on a GPU: a [512, 4] tile is 2048 logits, 8 per thread of 8 warps
# (two 16-byte loads and two Philox calls). ptxas (sm_90, triton 3.6) gives the kernel 48
# registers a thread and no spills, so five programs fit an SM; 16 logits a thread took 128.
_BLOCK = 512
_WARPS = 8
# The interpreter pays per operation, not per element; the small vocabularies of the tests
# still cross tiles. It runs one program at a time, so splitting rows gains nothing there, but
# a target of 2 programs splits lone rows (the two-stage path) and keeps the others whole.
_BLOCK_INTERPRETED = 128
_PROGRAMS_INTERPRETED = 2
# Chunk winners the combining kernel reads at a time: one compiled kernel for any number of
# chunks, where a width per power of two would compile anew as batch sizes change.
_COMBINE_WIDTH = 64
_COMBINE_WIDTH_INTERPRETED = 4
_MAX_VOCAB = 1 << 30  # token ids and tile offsets stay in int32


# The kernels call no @jit function of triton.language other than philox, which _interpreted
# copies too (see stoker._triton for why).


@jit
def _maximum(a: tl.tensor, b: tl.tensor) -> tl.tensor:
    return tl.maximum(a, b)


@jit
def _minimum(a: tl.tensor, b: tl.tensor) -> tl.tensor:
    return tl.minimum(a, b)


@jit
def _fast_log2(x: tl.tensor) -> tl.tensor:
    # One MUFU instruction (lg2.approx) where tl.log2 is a polynomial of about 15: the noise
    # needs no more, and the two logs per logit were a third of the kernel's arithmetic. Its
    # inputs are normal floats (the kernel clamps them), which its flush-to-zero spares.
    return libdevice.fast_log2f(x)


# The kernel calls Philox and log2 through these names so that the interpreted copy can swap in
# its own (the interpreter has no libdevice).
_philox: Any = tl.philox if HAS_TRITON else None
_log2 = _fast_log2


@jit_varying("splits")
def _gumbel_argmax_kernel(
    logits_ptr: tl.tensor,
    temp_ptr: tl.tensor,
    seed_ptr: tl.tensor,
    offset_ptr: tl.tensor,
    out_ptr: tl.tensor,
    part_key_ptr: tl.tensor,
    part_idx_ptr: tl.tensor,
    stride: tl.tensor,
    vocab: tl.tensor,
    chunk: tl.tensor,
    splits: tl.tensor,
    BLOCK: tl.constexpr,
    SINGLE: tl.constexpr,
) -> None:
    """One (row, chunk): the winner among logits [split * chunk, +chunk) of the row."""
    row = tl.program_id(0)  # rows on the grid's x axis: it holds 2^31 - 1, y only 65535
    split = tl.program_id(1)
    temp = tl.load(temp_ptr + row)
    sampled = temp > 0.0  # NaN and negative temperatures are greedy too
    # Scores are in base 2 (log2(e) * (logit / T + g)): the same argmax, and log2 is one
    # instruction on the GPU.
    scale = 1.4426950408889634 / tl.where(sampled, temp, 1.0)
    # Clamped so that no finite logit times the scale is NaN (0 * inf) and -inf stays -inf: an
    # infinite temperature samples uniformly, one under ~1e-30 acts like 1e-30.
    scale = tl.minimum(tl.maximum(scale, 1e-30), 1e30)
    seed = tl.load(seed_ptr + row)
    offset = tl.load(offset_ptr + row)
    offset_lo = offset.to(tl.uint32)
    offset_hi = (offset >> 32).to(tl.uint32)

    lane = tl.arange(0, BLOCK)
    col = tl.arange(0, 4)
    pos = lane[:, None] * 4 + col[None, :]  # tile element (lane, col) is logit 4 * lane + col
    row_ptr = logits_ptr + row.to(tl.int64) * stride
    begin = split * chunk
    end = tl.minimum(begin + chunk, vocab)
    # Each element keeps the best (key, index) it has seen; its indices only grow, so a strict
    # > keeps the first of equal keys, and one reduction at the end finds the row's.
    # (-2**31 as a literal would be an int64.)
    best_key = tl.full([BLOCK, 4], -2147483648, tl.int32)
    best_idx = tl.full([BLOCK, 4], 0x7FFFFFFF, tl.int32)
    for base in range(begin, end, 4 * BLOCK):
        j = base + pos
        ok = j < end
        x = tl.load(row_ptr + j, mask=ok, other=float("-inf"))
        if sampled:
            # One Philox call gives four 32-bit draws: one for each logit of a group of four.
            # begin and the tile width are multiples of 4, so the counter is j // 4.
            counter = (base // 4 + lane).to(tl.uint32)
            zero = counter * 0
            r0, r1, r2, r3 = _philox(seed, counter, zero + offset_lo, zero + offset_hi, zero)
            draw = tl.where(
                col[None, :] < 2,
                tl.where(col[None, :] == 0, r0[:, None], r1[:, None]),
                tl.where(col[None, :] == 2, r2[:, None], r3[:, None]),
            )
            # E = -ln(1 - u), u = draw / 2^32, is exponential. The winner's E is small, so the
            # series u + u^2/2 + u^3/3 keeps full precision there, where 1 - u would round it
            # away; clamps keep E in [2^-33, 23]: the noise is never infinite or NaN.
            u = draw.to(tl.float32) * 2.3283064365386963e-10
            e_small = tl.maximum(u, 1.1641532182693481e-10) * (1.0 + u * (0.5 + u * 0.333333333))
            w = tl.maximum(1.0 - u, 1.1641532182693481e-10)
            e_large = -0.6931471805599453 * _log2(w)
            e = tl.where(u < 0.00390625, e_small, e_large)
            score = x * scale - _log2(e)
        else:
            score = x
        # int32 keys ordered like the scores, with -0.0 == 0.0 and any NaN above +inf (as
        # torch.argmax). Lanes past the end loaded -inf: they lose every tie on their index.
        bits = score.to(tl.int32, bitcast=True)
        key = tl.where(bits < 0, -(bits & 0x7FFFFFFF), bits)
        key = tl.where(score != score, 0x7FFFFFFF, key)
        better = key > best_key
        best_key = tl.where(better, key, best_key)
        best_idx = tl.where(better, j, best_idx)

    top = tl.reduce(tl.reduce(best_key, 1, _maximum), 0, _maximum)
    first = tl.where(best_key == top, best_idx, 0x7FFFFFFF)
    idx = tl.reduce(tl.reduce(first, 1, _minimum), 0, _minimum)
    if SINGLE:
        tl.store(out_ptr + row, idx.to(tl.int64))
    else:
        tl.store(part_key_ptr + row * splits + split, top)
        tl.store(part_idx_ptr + row * splits + split, idx)


@jit_varying("splits")
def _combine_kernel(
    part_key_ptr: tl.tensor,
    part_idx_ptr: tl.tensor,
    out_ptr: tl.tensor,
    splits: tl.tensor,
    WIDTH: tl.constexpr,
) -> None:
    """One row: the best of its chunks' winners, WIDTH at a time. Chunks are in index order and
    a lane keeps the first of equal keys it sees, so ties take the smallest index."""
    row = tl.program_id(0)
    lane = tl.arange(0, WIDTH)
    best_key = tl.full([WIDTH], -2147483648, tl.int32)
    best_idx = tl.full([WIDTH], 0x7FFFFFFF, tl.int32)
    for base in range(0, splits, WIDTH):
        s = base + lane
        ok = s < splits
        key = tl.load(part_key_ptr + row * splits + s, mask=ok, other=0)
        key = tl.where(ok, key, tl.full([WIDTH], -2147483648, tl.int32))
        idx = tl.load(part_idx_ptr + row * splits + s, mask=ok, other=0x7FFFFFFF)
        better = key > best_key
        best_key = tl.where(better, key, best_key)
        best_idx = tl.where(better, idx, best_idx)
    top = tl.reduce(best_key, 0, _maximum)
    best = tl.reduce(tl.where(best_key == top, best_idx, 0x7FFFFFFF), 0, _minimum)
    tl.store(out_ptr + row, best.to(tl.int64))


_KERNELS = ("_maximum", "_minimum", "_gumbel_argmax_kernel", "_combine_kernel")


@functools.cache
def _interpreted() -> dict[str, Any]:
    """Interpreted copies of the kernels, for CPU tensors (tests without a GPU)."""
    # Copies live in private namespaces where what they call is interpreted too (an interpreted
    # kernel cannot call a compiled one): ours, and Philox's from triton.language.random.
    random = dict(vars(tl.random))
    for name in ("philox", "philox_impl"):
        random[name] = interpreted_copy(random[name], random)
    ns = dict(globals())
    ns["_philox"] = random["philox"]
    # A plain function, called inside the launch, finds tl.log2 patched; it spares the cost of
    # an interpreted call (the interpreter patches triton.language anew for each).
    ns["_log2"] = lambda x: tl.log2(x)
    # triton.language.core is what Philox's code calls "tl". The interpreter patches the
    # modules a kernel's namespace holds for the launch and restores them after; Philox's
    # copies patch it for every call without restoring, so the launch must own it.
    ns["_core"] = tl.core
    for name in _KERNELS:
        ns[name] = interpreted_copy(globals()[name], ns)
    # triton's own max and min combiners let the interpreter reduce with numpy instead of
    # element by element (the same results: no NaN reaches them).
    standard = getattr(tl, "standard", None)
    for name, fast in (("_maximum", "_elementwise_max"), ("_minimum", "_elementwise_min")):
        ns[name] = getattr(standard, fast, ns[name])
    return ns


def _check(logits: Tensor, temperatures: Tensor, seeds: Tensor, offsets: Tensor) -> None:
    """Raises ValueError for arguments the kernel cannot take (shapes and dtypes only)."""
    if logits.dim() != 2 or logits.dtype != torch.float32:
        raise ValueError(f"logits must be float32 (N, V), got {logits.dtype} {tuple(logits.shape)}")
    n, vocab = logits.shape
    if not 0 < vocab <= _MAX_VOCAB:
        raise ValueError(f"the vocabulary must have 1 to {_MAX_VOCAB} tokens, got {vocab}")
    if n > 0 and logits.stride(1) != 1:
        raise ValueError("logits must be contiguous in their last dimension")
    wanted = {"temperatures": torch.float32, "seeds": torch.int64, "offsets": torch.int64}
    for (name, dtype), t in zip(wanted.items(), (temperatures, seeds, offsets), strict=True):
        if t.dtype != dtype or t.shape != (n,):
            raise ValueError(f"{name} must be {dtype} ({n},), got {t.dtype} {tuple(t.shape)}")
        if t.device != logits.device:
            raise ValueError(f"{name} is on {t.device}, logits on {logits.device}")
    if logits.device.type not in ("cuda", "cpu"):
        raise ValueError(f"tensors must be on a CUDA device (or the CPU), got {logits.device}")


@functools.cache
def _gpu_programs(index: int) -> int:
    # Programs worth launching: eight per SM (about two waves of the five that fit). A small
    # batch then spreads each row over many SMs (a lone row read by one SM would take ~75
    # tiles in turn); a large one keeps longer runs of a row, and fewer partial results, per
    # program. Not tuned on hardware.
    return 8 * torch.cuda.get_device_properties(index).multi_processor_count


def _plan(n: int, vocab: int, block: int, programs: int) -> tuple[int, int]:
    """(chunk width, chunks per row): whole tiles per chunk, about `programs` programs."""
    tiles = triton.cdiv(vocab, 4 * block)
    per_chunk = triton.cdiv(tiles, min(tiles, triton.cdiv(programs, n)))
    return per_chunk * 4 * block, triton.cdiv(tiles, per_chunk)


def gumbel_argmax(logits: Tensor, temperatures: Tensor, seeds: Tensor, offsets: Tensor) -> Tensor:
    """The token id (int64 (N,), on the logits' device) of each row of float32 logits (N, V).

    ``temperatures`` float32 (N,): 0 (or not positive) for greedy, else the sampling
    temperature. ``seeds`` and ``offsets`` int64 (N,) select the row's noise (see the module
    docstring): equal (seed, offset) pairs draw equal noise wherever they sit in the batch.
    ``logits`` may have any row stride but must be contiguous in its last dimension. No host
    sync: capturable in a CUDA graph. CPU tensors run in Triton's interpreter (slow).
    """
    if not HAS_TRITON:
        raise RuntimeError("gumbel_argmax requires triton (pip install triton)")
    _check(logits, temperatures, seeds, offsets)
    n, vocab = logits.shape
    out = torch.empty(n, dtype=torch.int64, device=logits.device)
    if n == 0:
        return out
    interpreted = logits.device.type == "cpu"
    if interpreted:
        block, programs, width = (
            _BLOCK_INTERPRETED,
            _PROGRAMS_INTERPRETED,
            _COMBINE_WIDTH_INTERPRETED,
        )
    else:
        block, programs, width = _BLOCK, _gpu_programs(logits.device.index), _COMBINE_WIDTH
    chunk, splits = _plan(n, vocab, block, programs)
    # Partial winners only where a row is split; otherwise the kernel writes the token itself.
    parts = splits if splits > 1 else 0
    part_key = torch.empty((n, parts), dtype=torch.int32, device=logits.device)
    part_idx = torch.empty((n, parts), dtype=torch.int32, device=logits.device)
    kernels = _interpreted() if interpreted else globals()
    sample = cast(Any, kernels["_gumbel_argmax_kernel"])
    combine = cast(Any, kernels["_combine_kernel"])
    with on_device(logits.device):
        sample[(n, splits)](
            logits,
            temperatures,
            seeds,
            offsets,
            out,
            part_key,
            part_idx,
            logits.stride(0),
            vocab,
            chunk,
            splits,
            BLOCK=block,
            SINGLE=splits == 1,
            num_warps=_WARPS,
        )
        if splits > 1:
            combine[(n,)](part_key, part_idx, out, splits, WIDTH=width, num_warps=1)
    return out
