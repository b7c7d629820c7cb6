"""Resize + center crop of GPU-decoded images into rows of a uint8 NHWC batch, with Triton.

Geometry is the CPU path's (csrc/core/spec.cpp `resize_target`, csrc/core/pipeline.cpp
`crop_offset`); filters are torch's float `interpolate` ones (antialiased or plain bilinear and
bicubic, nearest; none falls back to torch), so a row matches `F.interpolate(img.float(), ...)`
rounded to uint8 within one level. Two launches per batch: a horizontal pass over every image into
a float32 scratch buffer, then a vertical pass writing the output rows. Per-image pointers, shapes
and offsets travel in one int64 table, so images of different sizes share a launch, and only the
input rows and output columns that survive the crop are computed.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, cast

import torch

from stoker._spec import ImageSpec
from stoker._triton import HAS_TRITON, interpreted, jit, on_device, tl, triton

__all__ = ["HAS_TRITON", "resize_into"]


# Filter kinds (the kernels' KIND): < 2 triangle, < 4 cubic; even ones antialiased.
_AA_TRIANGLE, _BILINEAR, _AA_CUBIC, _BICUBIC, _NEAREST = range(5)
# Columns of the per-image table (16 int64 each): input pointer, H, W, strides (c, h, w), resize
# target (h, w), crop offsets (y, x), output row, first input row kept, kept input rows, scratch
# offset, first kept resized column, kept resized columns.
# Tile (rows, columns) of a program; the interpreter pays per operation, not per element.
_BLOCKS, _BLOCKS_INTERPRETED = (8, 64), (128, 32)


@jit
def _window(o: tl.tensor, in_size: tl.tensor, out_size: tl.tensor, KIND: tl.constexpr) -> Any:
    """Taps [first, first + count) of output index o, and where the filter is centered."""
    scale = in_size.to(tl.float32) / out_size.to(tl.float32)
    of = o.to(tl.float32)
    if KIND == 1:
        c = tl.maximum(scale * (of + 0.5) - 0.5, 0.0)
        first = tl.minimum(c.to(tl.int32), in_size.to(tl.int32) - 1)
        count = tl.where(first < in_size - 1, 2, 1)
        inv = 1.0
    elif KIND == 3:
        # Border taps are clamped (replicated), not dropped, as torch's plain bicubic does.
        c = scale * (of + 0.5) - 0.5
        first = tl.floor(c).to(tl.int32) - 1
        count = first * 0 + 4
        inv = 1.0
    elif KIND == 4:
        first = tl.minimum(tl.floor(of * scale).to(tl.int32), in_size.to(tl.int32) - 1)
        count = first * 0 + 1
        c = of
        inv = 1.0
    else:
        # torch's _upsample_*_aa: the filter's support stretches with the downscale factor.
        base = 1.0 if KIND == 0 else 2.0
        support = tl.where(scale >= 1.0, base * scale, base)
        inv = tl.where(scale >= 1.0, 1.0 / scale, 1.0)
        center = scale * (of + 0.5)
        first = tl.maximum((center - support + 0.5).to(tl.int32), 0)
        count = tl.minimum((center + support + 0.5).to(tl.int32), in_size.to(tl.int32)) - first
        c = center - 0.5
    return first, count, c, inv


@jit
def _weight(d: tl.tensor, KIND: tl.constexpr) -> tl.tensor:
    a = tl.abs(d)
    if KIND < 2:
        return tl.maximum(1.0 - a, 0.0)
    elif KIND < 4:
        # Keys' cubic: torch uses a = -0.5 when antialiasing (PIL's) and -0.75 otherwise.
        A = -0.5 if KIND == 2 else -0.75
        far = tl.where(a < 2.0, ((A * a - 5.0 * A) * a + 8.0 * A) * a - 4.0 * A, 0.0)
        return tl.where(a < 1.0, ((A + 2.0) * a - (A + 3.0)) * a * a + 1.0, far)
    else:
        return a * 0.0 + 1.0


@jit
def _hpass(
    table: tl.tensor, tmp: tl.tensor, tiles_x: tl.tensor, taps: tl.tensor, KIND: tl.constexpr,
    BR: tl.constexpr, BX: tl.constexpr,
) -> None:  # fmt: skip
    meta = table + tl.program_id(1) * 16
    need_h, cw = tl.load(meta + 12), tl.load(meta + 15)
    tr = tl.program_id(0) // tiles_x
    tx = tl.program_id(0) % tiles_x
    if tr * BR >= need_h or tx * BX >= cw:
        return  # the grid covers the largest image; smaller ones leave tiles idle
    src = tl.load(meta).to(tl.pointer_type(tl.uint8))
    in_w, sc, sh, sw = tl.load(meta + 2), tl.load(meta + 3), tl.load(meta + 4), tl.load(meta + 5)
    # Tiles are (rows, columns, channels), channels padded to 4 lanes and masked.
    ch = tl.arange(0, 4)[None, None, :]
    rows = tr * BR + tl.arange(0, BR)
    q = tx * BX + tl.arange(0, BX)
    first, count, c, inv = _window(tl.load(meta + 14) + q, in_w, tl.load(meta + 7), KIND)
    base = src + (tl.load(meta + 11) + rows)[:, None, None] * sh + ch * sc
    keep = (rows < need_h)[:, None, None] & (q < cw)[None, :, None] & (ch < 3)
    acc = tl.full((BR, BX, 4), 0.0, tl.float32)
    wsum = tl.full((BX,), 0.0, tl.float32)
    for t in range(taps):
        k = first + t
        live = t < count
        w = tl.where(live, _weight((k.to(tl.float32) - c) * inv, KIND), 0.0)
        p = base + (tl.minimum(tl.maximum(k, 0), in_w - 1) * sw)[None, :, None]
        v = tl.load(p, mask=keep & live[None, :, None], other=0).to(tl.float32)
        acc += w[None, :, None] * v
        wsum += w
    # Dividing by the summed weights is torch's per-window normalization, done once.
    norm = 1.0 / tl.where(wsum == 0.0, 1.0, wsum)
    dst = tmp + tl.load(meta + 13) + (rows[:, None, None] * cw + q[None, :, None]) * 3 + ch
    tl.store(dst, acc * norm[None, :, None], mask=keep)


@jit
def _vpass(
    table: tl.tensor, tmp: tl.tensor, out: tl.tensor, out_h: tl.tensor, out_w: tl.tensor,
    tiles_x: tl.tensor, taps: tl.tensor, KIND: tl.constexpr, BR: tl.constexpr, BX: tl.constexpr,
) -> None:  # fmt: skip
    meta = table + tl.program_id(1) * 16
    ty = tl.program_id(0) // tiles_x
    tx = tl.program_id(0) % tiles_x
    ch = tl.arange(0, 4)[None, None, :]
    j = ty * BR + tl.arange(0, BR)
    col = tx * BX + tl.arange(0, BX)
    in_h, rh, rw = tl.load(meta + 1), tl.load(meta + 6), tl.load(meta + 7)
    ylo, need_h, cw = tl.load(meta + 11), tl.load(meta + 12), tl.load(meta + 15)
    r = tl.load(meta + 8) + j
    x = tl.load(meta + 9) + col
    # Rows and columns outside the resized image are the crop's zero padding.
    rv = (j < out_h) & (r >= 0) & (r < rh)
    xv = (col < out_w) & (x >= 0) & (x < rw)
    first, count, c, inv = _window(r, in_h, rh, KIND)
    base = tmp + tl.load(meta + 13) + ((x - tl.load(meta + 14)) * 3)[None, :, None] + ch
    keep = xv[None, :, None] & (ch < 3)
    acc = tl.full((BR, BX, 4), 0.0, tl.float32)
    wsum = tl.full((BR,), 0.0, tl.float32)
    for t in range(taps):
        k = first + t
        live = t < count
        w = tl.where(live, _weight((k.to(tl.float32) - c) * inv, KIND), 0.0)
        srow = tl.minimum(tl.maximum(tl.minimum(tl.maximum(k, 0), in_h - 1) - ylo, 0), need_h - 1)
        p = base + (srow * cw * 3)[:, None, None]
        acc += w[:, None, None] * tl.load(p, mask=keep & (rv & live)[:, None, None], other=0.0)
        wsum += w
    v = acc * (1.0 / tl.where(wsum == 0.0, 1.0, wsum))[:, None, None]
    v = tl.where(rv[:, None, None] & xv[None, :, None], v, 0.0)
    # Round half to even, as torch.round does on the float reference.
    f = tl.floor(v)
    odd = f - 2.0 * tl.floor(f * 0.5)
    v = tl.where(v - f > 0.5, f + 1.0, tl.where(v - f < 0.5, f, f + odd))
    dst = out + tl.load(meta + 10) * out_h * out_w * 3
    dst += (j[:, None, None] * out_w + col[None, :, None]) * 3 + ch
    inside = (j < out_h)[:, None, None] & (col < out_w)[None, :, None] & (ch < 3)
    tl.store(dst, tl.minimum(tl.maximum(v, 0.0), 255.0).to(tl.uint8), mask=inside)


@functools.cache
def _interpreted() -> tuple[Any, Any]:
    """Interpreted copies of the two kernels, for tensors on the CPU (tests without a GPU)."""
    ns = interpreted(globals(), ("_window", "_weight", "_hpass", "_vpass"))
    return ns["_hpass"], ns["_vpass"]


def _resize_target(spec: ImageSpec, height: int, width: int) -> tuple[int, int]:
    """(h, w) after the resize; mirrors resize_target in csrc/core/spec.cpp."""
    if spec.size is None:
        return height, width
    if not isinstance(spec.size, int):
        return int(spec.size[0]), int(spec.size[1])
    size = spec.size
    # torchvision: the longer side is int(size * long / short), true division then truncation.
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def _crop_offset(size: int, crop: int) -> int:
    """Mirrors crop_offset in csrc/core/pipeline.cpp (torchvision's CenterCrop)."""
    if crop > size:
        return -((crop - size) // 2)
    return round((size - crop) / 2)


def _kind(spec: ImageSpec) -> int:
    if spec.interpolation == "nearest":
        return _NEAREST
    if spec.interpolation == "bilinear":
        return _AA_TRIANGLE if spec.antialias else _BILINEAR
    return _AA_CUBIC if spec.antialias else _BICUBIC


def _span(kind: int, in_size: int, out_size: int, begin: int, end: int) -> tuple[int, int, int]:
    """Input range [lo, hi) that outputs [begin, end) read, and a bound on taps per output.

    Computed in float64 while the kernel uses float32, so the range gets a one-pixel margin.
    """
    s = in_size / out_size
    first, last = begin + 0.5, end - 0.5
    if kind in (_AA_TRIANGLE, _AA_CUBIC):
        support = (1.0 if kind == _AA_TRIANGLE else 2.0) * max(s, 1.0)
        lo, hi = int(s * first - support + 0.5), int(s * last + support + 0.5)
        taps = min(int(2.0 * support) + 3, in_size)
    elif kind == _BILINEAR:
        lo, hi, taps = int(max(s * first - 0.5, 0.0)), int(max(s * last - 0.5, 0.0)) + 2, 2
    elif kind == _BICUBIC:
        lo, hi, taps = math.floor(s * first - 0.5) - 1, math.floor(s * last - 0.5) + 3, 4
    else:
        lo, hi, taps = math.floor(begin * s), math.floor((end - 1) * s) + 1, 1
    lo = min(max(lo - 1, 0), in_size - 1)
    return lo, max(min(hi + 1, in_size), lo + 1), taps


def _geometry(spec: ImageSpec, kind: int, h: int, w: int) -> tuple[int, ...]:
    """An (h, w) image's resize and crop: (resized h, w, crop offsets y, x, first input row
    read, rows read, first kept column, kept columns, vertical taps, horizontal taps)."""
    out_h, out_w = spec.output_size
    rh, rw = _resize_target(spec, h, w)
    off_y = _crop_offset(rh, out_h) if spec.crop is not None else 0
    off_x = _crop_offset(rw, out_w) if spec.crop is not None else 0
    by, ey = min(max(off_y, 0), rh), min(max(off_y + out_h, 0), rh)
    bx, ex = min(max(off_x, 0), rw), min(max(off_x + out_w, 0), rw)
    ylo, yhi, ty = _span(kind, h, rh, by, ey)
    _, _, tx = _span(kind, w, rw, bx, ex)
    return rh, rw, off_y, off_x, ylo, yhi - ylo, bx, ex - bx, ty, tx


def _check(
    images: Sequence[torch.Tensor], out: torch.Tensor, rows: Sequence[int], spec: ImageSpec
) -> None:
    if not isinstance(spec, ImageSpec):
        raise TypeError(f"spec must be an ImageSpec, got {type(spec).__name__}")
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"out must be a torch.Tensor, got {type(out).__name__}")
    if out.dtype != torch.uint8:
        raise TypeError(f"out must be uint8, got {out.dtype}")
    want = (*spec.output_size, 3)
    if out.dim() != 4 or tuple(out.shape[1:]) != want:
        raise ValueError(
            f"out must have shape (N, {want[0]}, {want[1]}, 3), got {tuple(out.shape)}"
        )
    if not out.is_contiguous():
        raise ValueError("out must be contiguous")
    if len(rows) != len(images):
        raise ValueError(f"got {len(images)} images but {len(rows)} rows")
    for i, row in enumerate(rows):
        if isinstance(row, bool) or not isinstance(row, int):
            raise TypeError(f"rows[{i}] must be an int, got {row!r}")
        if not 0 <= row < out.shape[0]:
            raise ValueError(f"rows[{i}] = {row} is out of range for a batch of {out.shape[0]}")
    if len(set(rows)) != len(rows):
        raise ValueError("rows must be distinct: two images cannot share an output row")
    for i, img in enumerate(images):
        if not isinstance(img, torch.Tensor):
            raise TypeError(f"images[{i}] must be a torch.Tensor, got {type(img).__name__}")
        if img.dtype != torch.uint8:
            raise TypeError(f"images[{i}] must be uint8, got {img.dtype}")
        if img.dim() != 3 or img.shape[0] != 3 or img.shape[1] < 1 or img.shape[2] < 1:
            raise ValueError(f"images[{i}] must be (3, H, W) RGB, got {tuple(img.shape)}")
        if img.device != out.device:
            raise ValueError(f"images[{i}] is on {img.device}, out on {out.device}")


def resize_into(
    images: Sequence[torch.Tensor], out: torch.Tensor, rows: Sequence[int], spec: ImageSpec
) -> None:
    """Resize and center-crop each (3, H_i, W_i) uint8 image into ``out[rows[i]]`` as HWC.

    ``out`` is a contiguous uint8 (N, crop_h, crop_w, 3) tensor on the images' device; rows not
    named are left untouched. Only the spec's geometry fields (size, crop, interpolation,
    antialias) are used. Needs triton. CUDA tensors run the compiled kernels; CPU tensors run
    them in Triton's interpreter (slow, for tests on machines without a GPU).
    """
    if not HAS_TRITON:
        raise RuntimeError("resize_into requires triton (pip install triton)")
    _check(images, out, rows, spec)
    if not images:
        return
    if out.device.type not in ("cuda", "cpu"):
        raise ValueError(f"tensors must be on a CUDA device (or the CPU), got {out.device}")
    interpreted = out.device.type == "cpu"
    out_h, out_w = spec.output_size
    kind = _kind(spec)
    table: list[list[int]] = []
    tmp_size = taps_x = taps_y = max_h = max_w = 0
    # Photos come in a few sizes: each size's geometry is worked out once per call.
    geometry: dict[tuple[int, int], tuple[int, ...]] = {}
    for img, row in zip(images, rows, strict=True):
        h, w = int(img.shape[1]), int(img.shape[2])
        g = geometry.get((h, w))
        if g is None:
            g = geometry[h, w] = _geometry(spec, kind, h, w)
        rh, rw, off_y, off_x, ylo, kept_h, bx, kept_w, ty, tx = g
        table.append([img.data_ptr(), h, w, *img.stride(), rh, rw, off_y, off_x, row, ylo])
        table[-1] += [kept_h, tmp_size, bx, kept_w]
        tmp_size += 3 * kept_h * kept_w
        taps_x, taps_y = max(taps_x, tx), max(taps_y, ty)
        max_h, max_w = max(max_h, kept_h), max(max_w, kept_w)
    meta = torch.tensor(table, dtype=torch.int64)
    if not interpreted:
        # From pageable memory the copy would block this thread until the stream's earlier work
        # (the batch's copy, the wait for a free landing buffer) is done; pinned, it is queued.
        meta = meta.pin_memory()
    meta = meta.to(out.device, non_blocking=True)
    tmp = torch.empty(tmp_size, dtype=torch.float32, device=out.device)
    br, bx = _BLOCKS_INTERPRETED if interpreted else _BLOCKS
    tiles = triton.cdiv(max_w, bx)
    grid = (triton.cdiv(max_h, br) * tiles, len(images))
    hpass, vpass = _interpreted() if interpreted else cast(tuple[Any, Any], (_hpass, _vpass))
    # Triton launches on the current device (and its current stream); make that the images' one.
    with on_device(out.device):
        hpass[grid](meta, tmp, tiles, taps_x, kind, br, bx)
        tiles = triton.cdiv(out_w, bx)
        grid = (triton.cdiv(out_h, br) * tiles, len(images))
        vpass[grid](meta, tmp, out, out_h, out_w, tiles, taps_y, kind, br, bx)
