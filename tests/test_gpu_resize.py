"""resize_into (the GPU half of the hybrid decode) against torch's float interpolate + center crop.

resize_into runs CPU tensors through Triton's interpreter, so these tests need triton but no GPU;
with a GPU the same comparisons also run the compiled kernels on it. TRITON_INTERPRET is left
alone: resize_into builds its interpreted kernels itself, and the variable would switch every
other Triton user of the process (torch.compile in other tests) to the interpreter too.

The reference resizes the whole image with `F.interpolate` on float32 (antialias as the spec says,
align_corners=False), rounds and clamps to uint8, then crops with _reference.center_crop
(torchvision's CenterCrop, zero padding): at most one level apart for bilinear/bicubic, exact for
nearest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _imagegen import encode_jpeg, pixels
from _reference import center_crop, crop_pair, resize_target

import stoker
from stoker import _gpu_resize
from stoker._gpu_resize import resize_into

pytest.importorskip("triton")

# The compiled kernel where there is a GPU; Triton's interpreter (pinned numpy; newer numpy
# releases break it) stands in for it on machines without one.
DEVICES = ["cuda"] if torch.cuda.is_available() else ["cpu"]

MODES: dict[str, dict[str, Any]] = {
    "bilinear-aa": {"interpolation": "bilinear", "antialias": True},
    "bilinear": {"interpolation": "bilinear", "antialias": False},
    "bicubic-aa": {"interpolation": "bicubic", "antialias": True},
    "bicubic": {"interpolation": "bicubic", "antialias": False},
    "nearest": {"interpolation": "nearest"},
}

GEOMETRIES: dict[str, dict[str, Any]] = {
    "shorter-down": {"size": 24, "crop": 20},
    "shorter-up-odd-crop": {"size": 61, "crop": (55, 43)},
    "exact": {"size": (30, 45), "crop": None},
    "exact-then-crop": {"size": (40, 37), "crop": (31, 36)},
    "none-crop": {"size": None, "crop": (19, 27)},
    "crop-larger-pads": {"size": 16, "crop": (29, 23)},
    "none-crop-larger-pads": {"size": None, "crop": (40, 90)},
}

# (height, width): downscale by 8 and more, upscale, odd sides, extreme aspect ratios, 1 pixel.
SHAPES = [(200, 170), (21, 33), (7, 5), (64, 64), (1, 1), (3, 90), (97, 2)]
# Fewer, smaller ones for the other modes: the interpreter's cost grows with the taps per pixel.
SMALL_SHAPES = [(130, 115), (21, 33), (7, 5), (1, 1), (97, 2)]


def _image(h: int, w: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(pixels(h, w, seed).copy()).permute(2, 0, 1).contiguous()


def reference(img: torch.Tensor, spec: stoker.ImageSpec) -> torch.Tensor:
    """(H, W, 3) uint8: float interpolate of the whole image, rounded, then CenterCrop."""
    th, tw = resize_target(int(img.shape[1]), int(img.shape[2]), spec.size)
    kwargs: dict[str, Any] = {"mode": spec.interpolation}
    if spec.interpolation != "nearest":
        kwargs.update(antialias=spec.antialias, align_corners=False)
    x = F.interpolate(img.float()[None], size=(th, tw), **kwargs)[0]
    x = x.round().clamp(0, 255).to(torch.uint8)
    if spec.crop is not None:
        x = center_crop(x, *crop_pair(spec.crop))
    return x.permute(1, 2, 0).contiguous()


def run(
    images: list[torch.Tensor], spec: stoker.ImageSpec, rows: list[int], n: int, device: str
) -> torch.Tensor:
    """A batch of n rows, each byte 77 first, after resize_into writes `rows`; on the CPU."""
    out = torch.full((n, *spec.output_size, 3), 77, dtype=torch.uint8, device=device)
    resize_into([im.to(device) for im in images], out, rows, spec)
    return out.cpu()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> int:
    return int((a.int() - b.int()).abs().max().item())


def check(images: list[torch.Tensor], spec: stoker.ImageSpec, device: str) -> None:
    # Rows out of order with gaps: every other row of the batch must stay untouched.
    n = 2 * len(images) + 1
    rows = [n - 2 - 2 * i for i in range(len(images))]
    got = run(images, spec, rows, n, device)
    bound = 0 if spec.interpolation == "nearest" else 1
    for i, (img, row) in enumerate(zip(images, rows, strict=True)):
        diff = max_diff(got[row], reference(img, spec))
        assert diff <= bound, f"image {i} {tuple(img.shape)}: max abs diff {diff} > {bound}"
    untouched = sorted(set(range(n)) - set(rows))
    assert bool((got[untouched] == 77).all()), "rows not named were written"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_bilinear_antialiased_matches_interpolate(geometry: str, device: str) -> None:
    images = [_image(h, w, seed) for seed, (h, w) in enumerate(SHAPES)]
    check(images, stoker.ImageSpec(**GEOMETRIES[geometry]), device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("geometry", ["shorter-down", "exact", "crop-larger-pads"])
@pytest.mark.parametrize("mode", [m for m in MODES if m != "bilinear-aa"])
def test_other_modes_match_interpolate(mode: str, geometry: str, device: str) -> None:
    images = [_image(h, w, 10 + seed) for seed, (h, w) in enumerate(SMALL_SHAPES)]
    check(images, stoker.ImageSpec(**GEOMETRIES[geometry], **MODES[mode]), device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", list(MODES))
def test_random_sizes(mode: str, device: str) -> None:
    rng = np.random.default_rng(7)
    images = [
        _image(int(rng.integers(1, 160)), int(rng.integers(1, 160)), 20 + i) for i in range(5)
    ]
    spec = stoker.ImageSpec(size=int(rng.integers(12, 48)), crop=(27, 33), **MODES[mode])
    check(images, spec, device)


def test_non_contiguous_input() -> None:
    hwc = torch.from_numpy(pixels(45, 38, 3).copy())
    chw = hwc.permute(2, 0, 1)  # a strided view, as from an HWC decode
    assert not chw.is_contiguous()
    spec = stoker.ImageSpec(size=20, crop=18)
    got = run([chw], spec, [0], 1, DEVICES[0])
    assert max_diff(got[0], reference(chw.contiguous(), spec)) <= 1


@pytest.mark.parametrize(
    ("shape", "spec"),
    [
        ((97, 131), stoker.ImageSpec(size=64, crop=56, dtype="uint8", layout="NHWC")),
        ((60, 40), stoker.ImageSpec(size=(33, 70), crop=None, dtype="uint8", layout="NHWC")),
        ((50, 52), stoker.ImageSpec(size=32, crop=(41, 45), dtype="uint8", layout="NHWC")),
        (
            (120, 90),
            stoker.ImageSpec(
                size=36, crop=30, interpolation="nearest", dtype="uint8", layout="NHWC"
            ),
        ),
    ],
)
def test_geometry_matches_cpu_path(shape: tuple[int, int], spec: stoker.ImageSpec) -> None:
    jpeg = encode_jpeg(pixels(*shape, 31), quality=92)
    expected = stoker.preprocess_batch_numpy([jpeg], spec)[0]
    # stoker's own decode, so that only the resize and crop are compared.
    decoded = torch.from_numpy(stoker.decode(jpeg)).permute(2, 0, 1)
    got = run([decoded], spec, [0], 1, DEVICES[0])[0]
    assert max_diff(got, torch.from_numpy(np.ascontiguousarray(expected))) <= 1


def test_empty_batch_is_a_no_op() -> None:
    out = torch.full((2, 4, 4, 3), 5, dtype=torch.uint8)
    resize_into([], out, [], stoker.ImageSpec(size=4, crop=4))
    assert bool((out == 5).all())


SPEC = stoker.ImageSpec(size=8, crop=6)
IMG = torch.zeros((3, 10, 12), dtype=torch.uint8)
OUT = torch.zeros((3, 6, 6, 3), dtype=torch.uint8)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: resize_into([IMG.float()], OUT, [0], SPEC), TypeError, "uint8"),
        (lambda: resize_into([IMG.numpy()], OUT, [0], SPEC), TypeError, "torch.Tensor"),  # type: ignore[list-item]
        (lambda: resize_into([IMG[:2]], OUT, [0], SPEC), ValueError, "RGB"),
        (lambda: resize_into([IMG[0]], OUT, [0], SPEC), ValueError, "RGB"),
        (lambda: resize_into([IMG[:, :0]], OUT, [0], SPEC), ValueError, "RGB"),
        (lambda: resize_into([IMG], OUT.float(), [0], SPEC), TypeError, "uint8"),
        (lambda: resize_into([IMG], OUT[:, :5], [0], SPEC), ValueError, "shape"),
        (lambda: resize_into([IMG], OUT[0], [0], SPEC), ValueError, "shape"),
        (lambda: resize_into([IMG], OUT.permute(0, 2, 1, 3), [0], SPEC), ValueError, "contig"),
        (lambda: resize_into([IMG], OUT, [0, 1], SPEC), ValueError, "rows"),
        (lambda: resize_into([IMG, IMG], OUT, [1], SPEC), ValueError, "rows"),
        (lambda: resize_into([IMG], OUT, [3], SPEC), ValueError, "out of range"),
        (lambda: resize_into([IMG], OUT, [-1], SPEC), ValueError, "out of range"),
        (lambda: resize_into([IMG, IMG], OUT, [1, 1], SPEC), ValueError, "distinct"),
        (lambda: resize_into([IMG], OUT, [1.0], SPEC), TypeError, "int"),  # type: ignore[list-item]
        (lambda: resize_into([IMG], OUT, [0], "spec"), TypeError, "ImageSpec"),  # type: ignore[arg-type]
        (lambda: resize_into([IMG], OUT.to("meta"), [0], SPEC), ValueError, "is on"),
    ],
)
def test_bad_input_raises(call: Callable[[], None], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call()


def test_without_triton_raises_runtime_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_gpu_resize, "HAS_TRITON", False)
    with pytest.raises(RuntimeError, match="triton"):
        resize_into([IMG], OUT, [0], SPEC)
