"""Normalization of uint8 RGB batches on the GPU: one pass from bytes to the model's dtype.

The torch formula (``x.float() * scale + shift``, then a cast) runs four elementwise kernels over
float32 intermediates: about 27 bytes of memory traffic per channel value, against 3 for one
kernel that reads each byte once and writes the result in its final dtype. For a batch of 256
images of 224 x 224 in half precision that is about 1 GB against 0.12 GB.
"""

from __future__ import annotations

import functools
from typing import Any, cast

import torch

from stoker._triton import HAS_TRITON, interpreted, jit, on_device, tl, triton

__all__ = ["normalize_hwc"]

_BLOCK = 2048
_BLOCK_INTERPRETED = 64


@jit
def _normalize_kernel(
    src: tl.tensor,
    dst: tl.tensor,
    scale: tl.tensor,
    shift: tl.tensor,
    n: tl.tensor,
    BLOCK: tl.constexpr,
) -> None:
    # int64 offsets: a large batch of large outputs passes 2**31 values.
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    channel = offs % 3
    x = tl.load(src + offs, mask=ok, other=0).to(tl.float32)
    a = tl.load(scale + channel, mask=ok, other=0.0)
    b = tl.load(shift + channel, mask=ok, other=0.0)
    tl.store(dst + offs, (x * a + b).to(dst.dtype.element_ty), mask=ok)


@functools.cache
def _interpreted() -> Any:
    """An interpreted copy of the kernel, for CPU tensors (tests without a GPU)."""
    return interpreted(globals(), ("_normalize_kernel",))["_normalize_kernel"]


def normalize_hwc(
    x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """``x * scale[c] + shift[c]`` in float32, as ``dtype``, for a contiguous uint8 ``x`` whose
    last dimension holds 3 channels; ``scale`` and ``shift`` are float32 of 3 values on x's
    device. Without triton, the torch formula."""
    if x.dtype != torch.uint8 or x.shape[-1:] != (3,) or not x.is_contiguous():
        raise ValueError(f"x must be contiguous uint8 [..., 3], got {x.dtype} {tuple(x.shape)}")
    if not HAS_TRITON:
        return (x.float() * scale + shift).to(dtype)
    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    n = x.numel()
    if n == 0:
        return out
    cpu = x.device.type == "cpu"
    block = _BLOCK_INTERPRETED if cpu else _BLOCK
    kernel = _interpreted() if cpu else cast(Any, _normalize_kernel)
    with on_device(x.device):
        kernel[(triton.cdiv(n, block),)](x, out, scale, shift, n, BLOCK=block)
    return out
