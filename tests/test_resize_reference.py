"""Resize, crop and normalize against the reference pipeline (see _reference.py for the bounds).

Images are random smooth+noise PNGs (lossless, so the decode is exact and every difference comes
from the resize/crop/normalize stage), in shapes that exercise downscaling by large and small
factors, upscaling, extreme aspect ratios and 1-pixel sides. Each geometry runs all images in one
batch, so mixed input sizes in a batch are covered too.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from _imagegen import pixels, png_rgb
from _reference import (
    TORCH_DTYPES,
    Interpolation,
    Layout,
    assert_matches_reference,
    reference_uint8,
    resize_target,
)

import stoker

IMAGES = [  # (height, width, seed)
    (37, 53, 1),
    (120, 90, 2),
    (300, 200, 3),
    (64, 64, 4),
    (17, 250, 5),
    (1, 1, 6),
    (211, 3, 7),
]

GEOMETRIES: dict[str, dict[str, Any]] = {
    "shorter-down": {"size": 32, "crop": 28},
    "shorter-up": {"size": 100, "crop": (90, 70)},
    "shorter-odd-crop": {"size": 45, "crop": (45, 31)},
    "exact-down": {"size": (24, 40), "crop": None},
    "exact-up-aniso": {"size": (150, 13), "crop": None},
    "exact-then-crop": {"size": (50, 60), "crop": (33, 47)},
    "none-crop": {"size": None, "crop": (30, 50)},
    "crop-larger-pads": {"size": 20, "crop": (41, 37)},
    "none-crop-larger-pads": {"size": None, "crop": (64, 301)},
    "exact-1x1": {"size": (1, 1), "crop": None},
    "exact-1-row": {"size": (1, 77), "crop": None},
}

MODES: dict[str, dict[str, Any]] = {
    "bilinear-aa": {"interpolation": "bilinear", "antialias": True},
    "bilinear-noaa": {"interpolation": "bilinear", "antialias": False},
    "bicubic-aa": {"interpolation": "bicubic", "antialias": True},
    "bicubic-noaa": {"interpolation": "bicubic", "antialias": False},
    "nearest": {"interpolation": "nearest"},
}


def _batch(spec: stoker.ImageSpec) -> torch.Tensor:
    out = stoker.preprocess_batch([png_rgb(h, w, s) for h, w, s in IMAGES], spec)
    assert tuple(out.shape) == (len(IMAGES), *spec.item_shape)
    return out


def test_reference_supports_uint8() -> None:
    """The reference runs on uint8 in every mode (no float fallback is needed)."""
    x = torch.randint(0, 256, (1, 3, 20, 30), dtype=torch.uint8)
    for mode in ("bilinear", "bicubic"):
        for aa in (True, False):
            y = torch.nn.functional.interpolate(
                x, size=(7, 45), mode=mode, antialias=aa, align_corners=False
            )
            assert y.dtype == torch.uint8
    assert torch.nn.functional.interpolate(x, size=(7, 45), mode="nearest").dtype == torch.uint8


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_reference_channels_last_is_same_kernel(mode: str) -> None:
    """Justifies _reference._interpolate_uint8: contiguous and channels-last uint8 inputs give
    identical results (it uses channels-last only for 1x1 outputs, where contiguous trips torch)."""
    g = torch.Generator().manual_seed(1)
    for _ in range(40):
        h, w, oh, ow = (int(v) for v in torch.randint(1, 50, (4,), generator=g))
        x = torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8, generator=g)
        for aa in (True, False):
            a = torch.nn.functional.interpolate(
                x, size=(oh, ow), mode=mode, antialias=aa, align_corners=False
            )
            b = torch.nn.functional.interpolate(
                x.contiguous(memory_format=torch.channels_last),
                size=(oh, ow),
                mode=mode,
                antialias=aa,
                align_corners=False,
            )
            assert torch.equal(a, b)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_float32_normalized(geometry: str, mode: str) -> None:
    spec = stoker.ImageSpec(
        **GEOMETRIES[geometry], **MODES[mode], mean=stoker.IMAGENET_MEAN, std=stoker.IMAGENET_STD
    )
    out = _batch(spec)
    for i, (h, w, s) in enumerate(IMAGES):
        assert_matches_reference(out[i], pixels(h, w, s), spec, f"image {h}x{w}")


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_uint8_exact(geometry: str, mode: str) -> None:
    spec = stoker.ImageSpec(**GEOMETRIES[geometry], **MODES[mode], dtype="uint8")
    out = _batch(spec)
    for i, (h, w, s) in enumerate(IMAGES):
        assert_matches_reference(out[i], pixels(h, w, s), spec, f"image {h}x{w}")


DTYPES = [  # (dtype, normalized); uint8 cannot be normalized (a ValueError, test_bad_input.py)
    ("uint8", False),
    ("float32", True),
    ("float32", False),
    ("float16", True),
    ("float16", False),
    ("bfloat16", True),
    ("bfloat16", False),
]


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize(
    ("dtype", "normalized"), DTYPES, ids=[f"{d}-{'norm' if n else 'raw'}" for d, n in DTYPES]
)
def test_layouts_and_dtypes(
    dtype: str, normalized: bool, layout: Layout, interpolation: Interpolation
) -> None:
    mean_std: dict[str, Any] = (
        {"mean": (0.5, 0.4, 0.3), "std": (0.25, 0.2, 0.3)} if normalized else {}
    )
    spec = stoker.ImageSpec(
        size=40, crop=(36, 29), interpolation=interpolation, layout=layout, dtype=dtype, **mean_std
    )
    out = _batch(spec)
    assert out.dtype == TORCH_DTYPES[dtype]
    assert out.is_contiguous()
    for i, (h, w, s) in enumerate(IMAGES):
        assert_matches_reference(out[i], pixels(h, w, s), spec, f"image {h}x{w}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.uint8])
def test_torch_dtype_in_spec(dtype: torch.dtype) -> None:
    spec = stoker.ImageSpec(size=32, crop=24, dtype=dtype)
    out = _batch(spec)
    assert out.dtype == dtype
    for i, (h, w, s) in enumerate(IMAGES):
        assert_matches_reference(out[i], pixels(h, w, s), spec, f"image {h}x{w}")


def test_nhwc_is_nchw_permuted() -> None:
    nchw = _batch(stoker.ImageSpec(size=50, crop=(40, 44), mean=(0.1, 0.2, 0.3), std=(1, 2, 3)))
    nhwc = _batch(
        stoker.ImageSpec(size=50, crop=(40, 44), mean=(0.1, 0.2, 0.3), std=(1, 2, 3), layout="NHWC")
    )
    assert tuple(nhwc.shape) == (len(IMAGES), 40, 44, 3)
    assert torch.equal(nchw.permute(0, 2, 3, 1), nhwc)


@pytest.mark.parametrize(
    ("h", "w", "size", "want"),
    [
        (300, 200, 256, (384, 256)),
        (200, 300, 256, (256, 384)),
        (375, 500, 256, (256, 341)),  # 341.33 truncated
        (500, 333, 224, (336, 224)),  # 336.3 truncated
        (17, 250, 10, (10, 147)),  # 147.06 truncated
        (64, 64, 100, (100, 100)),
    ],
)
def test_shorter_side_rule(h: int, w: int, size: int, want: tuple[int, int]) -> None:
    """size=int: shorter side = size, longer = int(size * long / short), seen through a crop as
    large as the expected resized image (no padding) and a crop one pixel larger (padding)."""
    assert resize_target(h, w, size) == want
    rgb = pixels(h, w, h + w)
    data = png_rgb(h, w, h + w)
    spec = stoker.ImageSpec(size=size, crop=want, dtype="uint8")
    assert_matches_reference(stoker.preprocess_batch([data], spec)[0], rgb, spec, "fit")
    bigger = (want[0] + 1, want[1] + 1)
    spec = stoker.ImageSpec(size=size, crop=bigger, dtype="uint8")
    out = stoker.preprocess_batch([data], spec)[0]
    assert_matches_reference(out, rgb, spec, "padded")
    # torchvision pads (crop - size) // 2 = 0 on top/left and 1 on bottom/right.
    assert int(out[:, -1, :].max()) == 0 and int(out[:, :, -1].max()) == 0
    assert torch.equal(out[:, : want[0], : want[1]], reference_uint8(rgb, size, want, "bilinear"))


def test_padding_is_centered_like_torchvision() -> None:
    """A 3x4 image, no resize, cropped to 8x9: placed at top=(8-3)//2=2, left=(9-4)//2=2."""
    rgb = pixels(3, 4, 99)
    spec = stoker.ImageSpec(size=None, crop=(8, 9), dtype="uint8")
    out = stoker.preprocess_batch([png_rgb(3, 4, 99)], spec)[0]
    want = torch.zeros((3, 8, 9), dtype=torch.uint8)
    want[:, 2:5, 2:6] = torch.from_numpy(rgb.transpose(2, 0, 1).copy())
    assert torch.equal(out, want)


def test_padding_normalized_is_black() -> None:
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    spec = stoker.ImageSpec(size=None, crop=(9, 10), mean=mean, std=std)
    out = stoker.preprocess_batch([png_rgb(3, 4, 98)], spec)[0]
    for c in range(3):
        corner = float(out[c, 0, 0])
        assert abs(corner - (0.0 - mean[c]) / std[c]) <= 1e-6
