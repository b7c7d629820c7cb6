"""ImageSpec: what a preprocessing call produces."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from stoker import _native

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ImageSpec"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
_LAYOUTS = ("NCHW", "NHWC")
_DTYPES = ("uint8", "float32", "float16", "bfloat16")
_MAX_SIDE = 32768

Size = int | tuple[int, int]


def _side(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if not 1 <= value <= _MAX_SIDE:
        raise ValueError(f"{name} must be between 1 and {_MAX_SIDE}, got {value}")
    return value


def _pair(value: Any, name: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        side = _side(value, name)
        return side, side
    if isinstance(value, Sequence) and len(value) == 2:
        return _side(value[0], f"{name}[0]"), _side(value[1], f"{name}[1]")
    raise ValueError(f"{name} must be an int or a (height, width) pair, got {value!r}")


def _triple(value: Any, name: str) -> tuple[float, float, float] | None:
    if value is None:
        return None
    if not isinstance(value, Sequence) or len(value) != 3:
        raise ValueError(f"{name} must be three numbers (R, G, B), got {value!r}")
    out = tuple(float(v) for v in value)
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return out[0], out[1], out[2]


def _dtype_name(dtype: Any) -> str:
    name = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    return name


@dataclass(frozen=True)
class ImageSpec:
    """Decode, resize, crop and normalize settings; see docs/preprocessing.md."""

    size: Size | None = 256
    crop: Size | None = 224
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bilinear"
    antialias: bool = True
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    dtype: Any = "float32"
    reduce_gap: float | None = None
    max_pixels: int = 50_000_000
    _native: _native.Preprocessor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.size is None:
            mode, rh, rw = "none", 1, 1
        elif isinstance(self.size, int) and not isinstance(self.size, bool):
            mode, rh = "shorter", _side(self.size, "size")
            rw = rh
        else:
            mode = "exact"
            rh, rw = _pair(self.size, "size")
        crop_h, crop_w = (1, 1) if self.crop is None else _pair(self.crop, "crop")
        if self.crop is None and mode != "exact":
            raise ValueError(
                "a batch needs one output size: give crop, or size as an exact (height, width)"
            )
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {', '.join(_INTERPOLATIONS)}, "
                f"got {self.interpolation!r}"
            )
        if self.layout not in _LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(_LAYOUTS)}, got {self.layout!r}")
        dtype = _dtype_name(self.dtype)
        mean, std = _triple(self.mean, "mean"), _triple(self.std, "std")
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        if std is not None and 0.0 in std:
            raise ValueError("std must be nonzero")
        if mean is not None and dtype == "uint8":
            raise ValueError(
                "uint8 output cannot be normalized: drop mean/std or use a float dtype"
            )
        gap = self.reduce_gap
        if gap is not None and (isinstance(gap, bool) or not math.isfinite(gap) or gap < 1.0):
            raise ValueError(f"reduce_gap must be a number >= 1 or None, got {gap!r}")
        if isinstance(self.max_pixels, bool) or not isinstance(self.max_pixels, int):
            raise ValueError(f"max_pixels must be an int, got {self.max_pixels!r}")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be positive, got {self.max_pixels}")
        object.__setattr__(self, "dtype", dtype)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        compiled = _native.Preprocessor(
            resize_mode=mode,
            resize_h=rh,
            resize_w=rw,
            crop=self.crop is not None,
            crop_h=crop_h,
            crop_w=crop_w,
            interpolation=self.interpolation,
            antialias=self.antialias,
            normalize=mean is not None,
            mean=mean or (0.0, 0.0, 0.0),
            std=std or (1.0, 1.0, 1.0),
            layout=self.layout,
            dtype=dtype,
            reduce_gap=0.0 if gap is None else float(gap),
            max_pixels=self.max_pixels,
        )
        object.__setattr__(self, "_native", compiled)

    @property
    def output_size(self) -> tuple[int, int]:
        """(height, width) of every item."""
        _, *rest = self._native.batch_shape(1)
        return (rest[1], rest[2]) if self.layout == "NCHW" else (rest[0], rest[1])

    @property
    def item_shape(self) -> tuple[int, int, int]:
        """Shape of one item: (3, H, W) for NCHW, (H, W, 3) for NHWC."""
        _, a, b, c = self._native.batch_shape(1)
        return a, b, c
