"""A full decode matches libjpeg-turbo's own output (djpeg) byte for byte (docs: "Accuracy").

JPEGs are generated with Pillow in each chroma layout stoker must handle (4:4:4, 4:2:2, 4:2:0,
grayscale; baseline and progressive; odd sizes that leave partial MCUs) and decoded both by
`djpeg -pnm` (the system libjpeg-turbo that stoker links) and by stoker. Grayscale is replicated to
three channels. The same pixels must come out of `preprocess_batch` when it neither resizes nor
crops into the image (size=None, crop = the image size, uint8 NHWC).
"""

from __future__ import annotations

import numpy as np
import pytest
from _imagegen import encode_jpeg, jpeg_rgb, pixels
from _support import djpeg_decode, require_djpeg

import stoker

CASES = [
    # (height, width, seed, subsampling, progressive, quality)
    (64, 96, 1, "444", False, 90),
    (61, 83, 2, "420", False, 90),
    (45, 67, 3, "422", False, 75),
    (240, 320, 4, "420", False, 95),
    (77, 51, 5, "420", True, 90),
    (50, 70, 6, "444", True, 60),
    (33, 17, 7, "422", True, 85),
    (1, 1, 8, "420", False, 90),
    (1, 37, 9, "420", False, 90),
    (29, 2, 10, "444", False, 100),
    (16, 16, 11, "420", False, 20),
]


@pytest.mark.parametrize(
    ("height", "width", "seed", "subsampling", "progressive", "quality"),
    CASES,
    ids=[f"{h}x{w}-{s}{'-prog' if p else ''}-q{q}" for h, w, _, s, p, q in CASES],
)
def test_color_jpeg_matches_djpeg(
    height: int, width: int, seed: int, subsampling: str, progressive: bool, quality: int
) -> None:
    require_djpeg()
    data = jpeg_rgb(
        height, width, seed, quality=quality, subsampling=subsampling, progressive=progressive
    )
    want = djpeg_decode(data)
    got = stoker.decode(data)
    assert got.shape == (height, width, 3) == want.shape
    assert got.dtype == np.uint8
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert np.array_equal(got, want), f"{int((diff > 0).sum())} samples differ, max {diff.max()}"


@pytest.mark.parametrize("progressive", [False, True], ids=["baseline", "progressive"])
@pytest.mark.parametrize(("height", "width"), [(57, 91), (128, 64), (3, 5)])
def test_gray_jpeg_matches_djpeg(height: int, width: int, progressive: bool) -> None:
    require_djpeg()
    gray = pixels(height, width, height * 1000 + width, channels=1)
    data = encode_jpeg(gray, quality=88, progressive=progressive)
    want = djpeg_decode(data)  # PGM, replicated to 3 channels by the parser
    got = stoker.decode(data)
    assert got.shape == (height, width, 3)
    assert np.array_equal(got[..., 0], got[..., 1])
    assert np.array_equal(got[..., 0], got[..., 2])
    assert np.array_equal(got, want)


@pytest.mark.parametrize(("subsampling", "progressive"), [("420", False), ("444", True)])
def test_batch_without_resize_matches_djpeg(subsampling: str, progressive: bool) -> None:
    require_djpeg()
    images = [
        jpeg_rgb(71, 93, 20, subsampling=subsampling, progressive=progressive),
        jpeg_rgb(71, 93, 21, subsampling=subsampling, progressive=progressive),
    ]
    spec = stoker.ImageSpec(size=None, crop=(71, 93), dtype="uint8", layout="NHWC")
    out = stoker.preprocess_batch(images, spec)
    assert tuple(out.shape) == (2, 71, 93, 3)
    for i, data in enumerate(images):
        assert np.array_equal(out[i].numpy(), djpeg_decode(data)), f"item {i}"
