"""Deterministic test images and encoders shared by the test modules.

Pixels are a smooth random color field (bilinear upsampling of a coarse random grid) plus Gaussian
noise: smooth enough that resampling is not a no-op in any region and noisy enough that every
filter tap matters, so a wrong kernel, support, phase or rounding shows up in the comparison.
Everything is seeded; the same arguments give the same pixels (encoded bytes are cached).
"""

from __future__ import annotations

import functools
import io
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps

U8 = npt.NDArray[np.uint8]

# Pillow's `subsampling` argument: 0 = 4:4:4, 1 = 4:2:2, 2 = 4:2:0.
SUBSAMPLING = {"444": 0, "422": 1, "420": 2}


def _readonly(a: U8) -> U8:
    a.setflags(write=False)
    return a


def smooth_noise(
    height: int, width: int, seed: int, *, channels: int = 3, cell: int = 8, noise: float = 18.0
) -> U8:
    """(height, width, channels) uint8: random color field (features ~`cell` px) plus noise."""
    rng = np.random.default_rng(seed)
    gh, gw = max(2, height // cell + 2), max(2, width // cell + 2)
    out = np.empty((height, width, channels), dtype=np.float32)
    for c in range(channels):
        grid = rng.uniform(0.0, 255.0, size=(gh, gw)).astype(np.float32)
        up = Image.fromarray(grid).resize((width, height), Image.Resampling.BILINEAR)
        out[..., c] = np.asarray(up, dtype=np.float32)
    out += rng.normal(0.0, noise, size=out.shape).astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@functools.cache
def pixels(height: int, width: int, seed: int, channels: int = 3) -> U8:
    """Cached, read-only `smooth_noise` (copy before handing it to torch.from_numpy)."""
    return _readonly(smooth_noise(height, width, seed, channels=channels))


def _pil(a: npt.NDArray[Any]) -> Image.Image:
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    return Image.fromarray(np.ascontiguousarray(a))


def encode_png(a: npt.NDArray[Any] | Image.Image, **params: Any) -> bytes:
    buf = io.BytesIO()
    (a if isinstance(a, Image.Image) else _pil(a)).save(buf, format="PNG", **params)
    return buf.getvalue()


def encode_jpeg(
    a: npt.NDArray[Any] | Image.Image,
    *,
    quality: int = 90,
    subsampling: str = "420",
    progressive: bool = False,
    orientation: int | None = None,
) -> bytes:
    img = a if isinstance(a, Image.Image) else _pil(a)
    params: dict[str, Any] = {"quality": quality, "progressive": progressive}
    if img.mode != "L":
        params["subsampling"] = SUBSAMPLING[subsampling]
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        params["exif"] = exif
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **params)
    return buf.getvalue()


def encode_webp(a: npt.NDArray[Any] | Image.Image, *, lossless: bool, quality: int = 85) -> bytes:
    buf = io.BytesIO()
    img = a if isinstance(a, Image.Image) else _pil(a)
    img.save(buf, format="WEBP", lossless=lossless, quality=quality)
    return buf.getvalue()


@functools.cache
def png_rgb(height: int, width: int, seed: int) -> bytes:
    return encode_png(pixels(height, width, seed))


@functools.cache
def jpeg_rgb(
    height: int,
    width: int,
    seed: int,
    *,
    quality: int = 90,
    subsampling: str = "420",
    progressive: bool = False,
) -> bytes:
    return encode_jpeg(
        pixels(height, width, seed),
        quality=quality,
        subsampling=subsampling,
        progressive=progressive,
    )


def pillow_rgb(data: bytes) -> U8:
    """The reference decode: Pillow, EXIF orientation applied, converted to RGB (a fresh array)."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        rgb = ImageOps.exif_transpose(im).convert("RGB")
    return np.array(rgb, dtype=np.uint8)


def parse_pnm(data: bytes) -> U8:
    """(H, W, 3) uint8 from a binary PPM (P6) or PGM (P5, replicated to 3 channels), maxval 255."""
    fields: list[bytes] = []
    pos = 0
    while len(fields) < 4:
        while data[pos : pos + 1].isspace():
            pos += 1
        if data[pos : pos + 1] == b"#":
            pos = data.index(b"\n", pos) + 1
            continue
        end = pos
        while not data[end : end + 1].isspace():
            end += 1
        fields.append(data[pos:end])
        pos = end
    pos += 1  # the single whitespace byte after maxval
    magic, width, height, maxval = fields[0], int(fields[1]), int(fields[2]), int(fields[3])
    if maxval != 255:
        raise ValueError(f"unexpected PNM maxval {maxval}")
    channels = {b"P6": 3, b"P5": 1}[magic]
    n = width * height * channels
    body: U8 = np.frombuffer(data, dtype=np.uint8, count=n, offset=pos)
    body = body.reshape(height, width, channels)
    if channels == 1:
        body = np.repeat(body, 3, axis=2)
    return np.array(body, dtype=np.uint8)


# The Pillow transpose that displays a stored image with EXIF orientation k (None for 1).
TRANSPOSE: dict[int, Image.Transpose | None] = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
