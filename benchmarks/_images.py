"""Deterministic synthetic photo-like JPEGs for the benchmarks.

Real photos are not in the repository, so the benchmarks draw their own: a smooth low-frequency
color field (sky, walls, out-of-focus background), mid- and high-frequency texture that is strong in
some regions and absent in others (foliage, fabric, gravel), hard-edged shapes softened by a little
blur (objects), and mild sensor noise. Encoded by Pillow as JPEG at quality 90 with 4:2:0 chroma
subsampling, the files come out at the sizes real photos have: about 30-80 KB at 500x375 and
0.8-2 MB at 4 megapixels.

Everything is seeded, so a set is the same pixels on every machine (the JPEG bytes can differ by
libjpeg version, the pixels do not).
"""

from __future__ import annotations

import functools
import io

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFilter

SMALL_SIZES: tuple[tuple[int, int], ...] = ((500, 375), (375, 500), (500, 333), (333, 500))
"""(width, height) of the small set, cycled; the classic ImageNet-validation photo sizes."""

LARGE_SIZES: tuple[tuple[int, int], ...] = ((2304, 1728), (1728, 2304))
"""(width, height) of the large set, cycled: 4 megapixels, landscape and portrait."""

JPEG_QUALITY = 90

FloatImage = npt.NDArray[np.float32]


def _upsampled_noise(rng: np.random.Generator, width: int, height: int, cell: float) -> FloatImage:
    """Zero-mean, unit-ish noise with features about `cell` pixels wide (bicubic value noise)."""
    gw = max(2, round(width / cell) + 1)
    gh = max(2, round(height / cell) + 1)
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    up = Image.fromarray(grid, mode="F").resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(up, dtype=np.float32)


def _smoothstep(x: FloatImage) -> FloatImage:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def photo(width: int, height: int, seed: int) -> npt.NDArray[np.uint8]:
    """One photo-like (height, width, 3) uint8 RGB image, a pure function of its arguments."""
    rng = np.random.default_rng(seed)
    scale = min(width, height) / 375.0  # shapes and large features scale with the image

    # Low-frequency color field: a coarse grid of colors, smoothly interpolated.
    base = np.empty((height, width, 3), dtype=np.float32)
    palette_mean = rng.uniform(60.0, 190.0, size=3)
    for c in range(3):
        field = _upsampled_noise(rng, width, height, cell=min(width, height) / 2.5)
        base[..., c] = palette_mean[c] + 45.0 * field
    # A vertical gradient, like light falling off towards the ground.
    ramp = np.linspace(1.12, 0.82, height, dtype=np.float32)[:, None, None]
    base *= ramp

    # Shapes with hard edges (objects, wires, window frames), softened by a slight optical blur.
    layer = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(layer)
    for _ in range(int(rng.integers(10, 22) * scale**0.7)):
        color = tuple(int(v) for v in rng.integers(0, 256, size=3))
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        r = float(np.exp(rng.uniform(np.log(10.0), np.log(90.0 * scale))))
        kind = int(rng.integers(0, 3))
        if kind == 0:
            draw.ellipse((cx - r, cy - r * rng.uniform(0.4, 1.0), cx + r, cy + r), fill=color)
        elif kind == 1:
            draw.rectangle((cx - r, cy - r / 2, cx + r, cy + r / 2), fill=color)
        else:
            n = int(rng.integers(3, 7))
            angles = np.sort(rng.uniform(0, 2 * np.pi, size=n))
            pts = [(float(cx + r * np.cos(a)), float(cy + r * np.sin(a))) for a in angles.tolist()]
            draw.polygon(pts, fill=color)
        x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
        draw.line(
            (x0, y0, x0 + rng.uniform(-200, 200) * scale, y0 + rng.uniform(-200, 200) * scale),
            fill=tuple(int(v) for v in rng.integers(0, 256, size=3)),
            width=max(1, round(2 * scale)),
        )
    layer = layer.filter(ImageFilter.GaussianBlur(radius=0.6))
    img = np.asarray(layer, dtype=np.float32)

    # Texture over everything (foliage, fabric, gravel): several octaves in absolute pixel scale,
    # since fine detail per pixel is alike in a phone's 4 MP photo and a downscaled web photo;
    # masked so that some regions stay smooth. `detail` spreads the file sizes.
    detail = float(rng.uniform(0.8, 1.6))
    mask = _smoothstep(
        0.55 + 0.9 * _upsampled_noise(rng, width, height, cell=min(width, height) / 3.0)
    )
    texture = np.zeros((height, width), dtype=np.float32)
    for cell, amp in ((48.0 * scale, 10.0), (12.0, 9.0), (4.0, 10.0), (1.6, 10.0)):
        texture += amp * _upsampled_noise(rng, width, height, cell=cell)
    tint = rng.uniform(0.7, 1.3, size=3).astype(np.float32)
    img += (detail * mask * texture)[..., None] * tint

    # Shading, then mild sensor noise.
    shade = 1.0 + 0.08 * _upsampled_noise(rng, width, height, cell=min(width, height) / 4.0)
    img *= shade[..., None]
    img += rng.normal(0.0, 2.5, size=img.shape).astype(np.float32)
    pixels: npt.NDArray[np.uint8] = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    return pixels


def encode_jpeg(pixels: npt.NDArray[np.uint8], quality: int = JPEG_QUALITY) -> bytes:
    """Baseline JPEG, 4:2:0 chroma subsampling, as a camera or a web pipeline writes it."""
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buf, format="JPEG", quality=quality, subsampling=2)
    return buf.getvalue()


@functools.cache
def _jpeg(width: int, height: int, seed: int) -> bytes:
    return encode_jpeg(photo(width, height, seed))


def small_images(n: int = 64, seed: int = 0) -> list[bytes]:
    """`n` distinct photo-like JPEGs of about 500x375 (landscape and portrait variants)."""
    return [_jpeg(*SMALL_SIZES[i % len(SMALL_SIZES)], seed=seed * 100_003 + i) for i in range(n)]


def large_images(n: int = 16, seed: int = 1) -> list[bytes]:
    """`n` distinct photo-like 4-megapixel JPEGs (2304x1728 and 1728x2304)."""
    return [_jpeg(*LARGE_SIZES[i % len(LARGE_SIZES)], seed=seed * 100_003 + i) for i in range(n)]


IMAGE_SETS = {"small": small_images, "large": large_images}


if __name__ == "__main__":
    import time

    for name, make in IMAGE_SETS.items():
        t0 = time.perf_counter()
        images = make(8)
        dt = time.perf_counter() - t0
        sizes = [len(b) / 1000 for b in images]
        print(
            f"{name}: {len(images)} images in {dt:.2f} s, "
            f"KB min {min(sizes):.0f} mean {sum(sizes) / len(sizes):.0f} max {max(sizes):.0f}"
        )
