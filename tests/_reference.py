"""The reference pipeline stoker is measured against, and the comparison with its bounds.

Reference: decoded RGB pixels (uint8) → `torch.nn.functional.interpolate` on the uint8 CHW tensor
(`antialias` as in the spec, `align_corners=False`; torch's uint8 kernel is the one torchvision's
`Resize` uses on uint8 images) → center crop with torchvision's `CenterCrop` rule (zero padding
where the crop is larger) → `/ 255`, `(x - mean) / std`. torch supports all three modes on uint8 on
CPU (checked by `test_reference_supports_uint8`), so no float fallback is needed (a 1x1 output
needs a channels-last input, see `_interpolate_uint8`).

Bounds (docs/preprocessing.md, "Accuracy"):
- bilinear / bicubic float output: max abs error ≤ 1 level, i.e. 1 / 255 / std[c] (+1e-6);
- nearest: exact (float output: up to float32 rounding of the normalization, far below a level);
- uint8 output: exact equality with the reference uint8 crop, in every mode. This is stricter than
  the doc's 1-level bound for bilinear/bicubic; stoker's resampler reproduces torch's uint8 kernel
  (int16 fixed-point weights, same order of passes), so any difference is a regression;
- float16 / bfloat16: the reference is cast to the dtype and the tolerance widens by one unit of
  the dtype's rounding at the value (`eps * |x|`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

import stoker

U8 = npt.NDArray[np.uint8]
SizeArg = int | tuple[int, int] | None
Interpolation = Literal["bilinear", "bicubic", "nearest"]
Layout = Literal["NCHW", "NHWC"]

TORCH_DTYPES = {
    "uint8": torch.uint8,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def resize_target(height: int, width: int, size: SizeArg) -> tuple[int, int]:
    """(h, w) after torchvision's Resize(size): int → shorter side = size, longer side truncated."""
    if size is None:
        return height, width
    if isinstance(size, int):
        if height <= width:
            return size, int(size * width / height)
        return int(size * height / width), size
    return size[0], size[1]


def crop_pair(crop: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(crop, int):
        return crop, crop
    return int(crop[0]), int(crop[1])


def center_crop(x: torch.Tensor, crop_h: int, crop_w: int) -> torch.Tensor:
    """torchvision's CenterCrop on a (C, H, W) tensor, zero padding where the crop is larger."""
    _, h, w = x.shape
    if crop_h > h or crop_w > w:
        left = (crop_w - w) // 2 if crop_w > w else 0
        top = (crop_h - h) // 2 if crop_h > h else 0
        right = (crop_w - w + 1) // 2 if crop_w > w else 0
        bottom = (crop_h - h + 1) // 2 if crop_h > h else 0
        x = F.pad(x, (left, right, top, bottom), value=0)
        _, h, w = x.shape
    top = round((h - crop_h) / 2.0)  # torchvision: int(round(...)), Python's round-half-even
    left = round((w - crop_w) / 2.0)
    return x[:, top : top + crop_h, left : left + crop_w]


def _interpolate_uint8(
    x: torch.Tensor, size: tuple[int, int], mode: str, antialias: bool
) -> torch.Tensor:
    """torch's uint8 bilinear/bicubic on a (3, H, W) tensor.

    torch 2.x trips an internal assert (UpSampleKernelAVXAntialias.h, "num_channels ==
    unpacked_output.size(0)") when a contiguous uint8 input is resized to exactly 1x1. The same
    uint8 kernel runs on a channels-last input without it (the kernel packs the image channels-last
    internally either way; test_reference_channels_last_is_same_kernel checks that both layouts give
    identical results for other sizes), so that case is computed from a channels-last copy instead
    of falling back to float.
    """
    inp = x[None]
    if size == (1, 1):
        inp = inp.contiguous(memory_format=torch.channels_last)
    out = F.interpolate(inp, size=size, mode=mode, antialias=antialias, align_corners=False)
    return out[0].contiguous()


def reference_uint8(
    rgb: U8,
    size: SizeArg,
    crop: int | Sequence[int] | None,
    interpolation: str,
    antialias: bool = True,
) -> torch.Tensor:
    """(3, H, W) uint8: resize + center crop of (H, W, 3) RGB pixels, the reference way."""
    x = torch.from_numpy(np.array(rgb, dtype=np.uint8).transpose(2, 0, 1).copy())
    h, w = x.shape[1], x.shape[2]
    th, tw = resize_target(h, w, size)
    if (th, tw) != (h, w):  # torchvision's Resize returns the image itself at its own size
        if interpolation == "nearest":
            x = F.interpolate(x[None], size=(th, tw), mode="nearest")[0]
        else:
            x = _interpolate_uint8(x, (th, tw), interpolation, antialias)
    if crop is not None:
        x = center_crop(x, *crop_pair(crop))
    return x.contiguous()


def normalize(
    x: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None
) -> torch.Tensor:
    """float64 (3, H, W): x / 255, then (x - mean) / std per channel when given."""
    y = x.to(torch.float64) / 255.0
    if mean is not None and std is not None:
        m = torch.tensor(list(mean), dtype=torch.float64)[:, None, None]
        s = torch.tensor(list(std), dtype=torch.float64)[:, None, None]
        y = (y - m) / s
    return y


def zero_pixel_value(spec: stoker.ImageSpec) -> torch.Tensor:
    """float64 (3,): what a black pixel becomes under the spec."""
    return normalize(torch.zeros((3, 1, 1), dtype=torch.uint8), spec.mean, spec.std)[:, 0, 0]


def to_chw(item: torch.Tensor, layout: str) -> torch.Tensor:
    return item.permute(2, 0, 1) if layout == "NHWC" else item


def reference_item(rgb: U8, spec: stoker.ImageSpec) -> torch.Tensor:
    """The reference for one item in the spec's layout: uint8, or float64 before the dtype cast."""
    u8 = reference_uint8(rgb, spec.size, spec.crop, spec.interpolation, spec.antialias)
    out = u8 if spec.dtype == "uint8" else normalize(u8, spec.mean, spec.std)
    return out.permute(1, 2, 0) if spec.layout == "NHWC" else out


def max_level_error(got: torch.Tensor, rgb: U8, spec: stoker.ImageSpec) -> float:
    """Largest difference in 0-255 levels between a float item and the reference (diagnostics)."""
    want = normalize(
        reference_uint8(rgb, spec.size, spec.crop, spec.interpolation, spec.antialias),
        spec.mean,
        spec.std,
    )
    std = torch.tensor(list(spec.std) if spec.std is not None else [1.0] * 3, dtype=torch.float64)
    diff = (to_chw(got, spec.layout).to(torch.float64) - want).abs() * std[:, None, None] * 255
    return float(diff.max()) if diff.numel() else 0.0


def assert_matches_reference(
    got: torch.Tensor, rgb: U8, spec: stoker.ImageSpec, what: str = ""
) -> None:
    """Asserts one output item (spec layout and dtype) agrees with the reference (bounds above)."""
    want_u8 = reference_uint8(rgb, spec.size, spec.crop, spec.interpolation, spec.antialias)
    expected_shape = tuple(spec.item_shape)
    assert tuple(got.shape) == expected_shape, (
        f"{what}: shape {tuple(got.shape)} != {expected_shape}"
    )
    assert got.dtype == TORCH_DTYPES[spec.dtype], f"{what}: dtype {got.dtype} != {spec.dtype}"
    chw = to_chw(got, spec.layout)
    assert tuple(chw.shape) == tuple(want_u8.shape), f"{what}: reference shape {want_u8.shape}"
    if spec.dtype == "uint8":
        if not torch.equal(chw, want_u8):
            diff = (chw.to(torch.int16) - want_u8.to(torch.int16)).abs()
            raise AssertionError(
                f"{what}: uint8 output differs from the reference at {int((diff > 0).sum())} of "
                f"{diff.numel()} samples, max {int(diff.max())} levels ({spec})"
            )
        return
    want = normalize(want_u8, spec.mean, spec.std)
    std = torch.tensor(list(spec.std) if spec.std is not None else [1.0] * 3, dtype=torch.float64)
    if spec.interpolation == "nearest":
        tol = torch.full((3, 1, 1), 1e-5, dtype=torch.float64) * torch.clamp(want.abs(), min=1.0)
    else:
        tol = (1.0 / 255.0 / std + 1e-6)[:, None, None].expand_as(want)
    if spec.dtype != "float32":
        dtype = TORCH_DTYPES[spec.dtype]
        want = want.to(dtype).to(torch.float64)
        tol = tol + torch.finfo(dtype).eps * want.abs()
    err = (chw.to(torch.float64) - want).abs()
    bad = err > tol
    if bool(bad.any()):
        idx = tuple(int(i) for i in torch.nonzero(bad)[0])
        levels = float((err * std[:, None, None] * 255).max())
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {err.numel()} samples outside the bound; "
            f"first at (c, y, x)={idx}: got {float(chw[idx])}, want {float(want[idx])}, "
            f"tol {float(tol[idx])}; max error {levels:.3f} levels ({spec})"
        )
