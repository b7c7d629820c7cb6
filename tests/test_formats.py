"""Formats and color rules (docs/preprocessing.md, "Color and format rules"), EXIF orientation, and
JPEG DCT-scaled decoding (`reduce_gap`).

PNG and lossless WebP are compared exactly with the source pixels or Pillow. Lossy WebP is compared
exactly with Pillow: VP8 decoding is bit-exact by spec and libwebp's RGB conversion is the same in
the system libwebp and Pillow's bundled one. JPEG pixels are compared exactly with stoker's own
decode of the same scan data (geometry checks) and with Pillow within `jpeg_tolerance_vs_pillow()`
(0 when Pillow bundles the libjpeg-turbo stoker links; see _support.py).
"""

from __future__ import annotations

import io
import struct
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from _imagegen import (
    TRANSPOSE,
    encode_jpeg,
    encode_png,
    encode_webp,
    jpeg_rgb,
    pillow_rgb,
    pixels,
    smooth_noise,
)
from _reference import Interpolation, assert_matches_reference
from _support import jpeg_tolerance_vs_pillow, png_chunk, raw_png
from PIL import Image

import stoker

U8 = npt.NDArray[np.uint8]
H, W = 45, 77  # odd and non-square, so every transpose is distinguishable


def _oriented(rgb: U8, k: int) -> U8:
    t = TRANSPOSE[k]
    return rgb if t is None else np.array(Image.fromarray(rgb).transpose(t))


def _max_diff(a: U8, b: U8) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def _with_exif(rgb: U8, fmt: str, k: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = k
    buf = io.BytesIO()
    extra = {"lossless": True} if fmt == "WEBP" else {"quality": 90} if fmt == "JPEG" else {}
    Image.fromarray(rgb).save(buf, format=fmt, exif=exif, **extra)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# EXIF orientation


@pytest.mark.parametrize("k", range(1, 9))
def test_jpeg_exif_orientation(k: int) -> None:
    rgb = pixels(H, W, 11)
    plain = encode_jpeg(rgb, quality=90)
    data = encode_jpeg(rgb, quality=90, orientation=k)
    upright = stoker.decode(plain)
    want = _oriented(upright, k)

    info = stoker.image_info(data)
    assert info.orientation == k
    assert (info.height, info.width) == want.shape[:2]

    got = stoker.decode(data)
    assert got.shape == want.shape
    assert np.array_equal(got, want), "orientation must be applied exactly to the decoded pixels"
    diff = _max_diff(got, pillow_rgb(data))
    assert diff <= jpeg_tolerance_vs_pillow(), f"differs from Pillow's exif_transpose by {diff}"

    # Through the batch path, with a non-square crop: the resize sees the oriented image.
    for interpolation in ("bilinear", "nearest"):
        spec = stoker.ImageSpec(size=40, crop=(36, 22), interpolation=interpolation, dtype="uint8")
        out = stoker.preprocess_batch([data, plain], spec)
        assert_matches_reference(out[0], want, spec, f"orientation {k}")
        spec = stoker.ImageSpec(size=(30, 50), crop=None, mean=(0.5,) * 3, std=(0.25,) * 3)
        assert_matches_reference(
            stoker.preprocess_batch([data], spec)[0], want, spec, f"orientation {k}"
        )


@pytest.mark.parametrize("k", [2, 3, 6, 8])
@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_png_and_webp_exif_orientation(fmt: str, k: int) -> None:
    """PNG eXIf chunk and WebP EXIF chunk (as Pillow writes them); lossless, so exact."""
    rgb = pixels(H, W, 12)
    data = _with_exif(rgb, fmt, k)
    want = _oriented(rgb, k)
    info = stoker.image_info(data)
    assert info.orientation == k
    assert (info.height, info.width) == want.shape[:2]
    got = stoker.decode(data)
    assert np.array_equal(got, want)
    assert np.array_equal(got, pillow_rgb(data))


def test_png_imagemagick_raw_profile_orientation() -> None:
    """ImageMagick's "Raw profile type exif" zTXt/tEXt chunk (hex dump of the EXIF block)."""
    rgb = pixels(H, W, 13)
    exif = Image.Exif()
    exif[0x0112] = 6
    blob = exif.tobytes()  # b"Exif\0\0" + TIFF header + IFD, as ImageMagick stores it
    hexdump = blob.hex()
    lines = "\n".join(hexdump[i : i + 72] for i in range(0, len(hexdump), 72))
    text = f"\nexif\n{len(blob):8d}\n{lines}\n".encode("latin-1")
    chunk = png_chunk(b"tEXt", b"Raw profile type exif\x00" + text)
    png = encode_png(rgb)
    # insert right after IHDR (8-byte signature + 25-byte IHDR chunk)
    data = png[:33] + chunk + png[33:]
    want = _oriented(rgb, 6)
    assert np.array_equal(pillow_rgb(data), want), "the crafted chunk is what Pillow reads too"
    assert stoker.image_info(data).orientation == 6
    assert np.array_equal(stoker.decode(data), want)


def test_invalid_orientation_values_are_ignored() -> None:
    """Orientation 0 or 9 is not a valid EXIF orientation; the image stays upright."""
    rgb = pixels(H, W, 14)
    for k in (0, 9):
        data = _with_exif(rgb, "PNG", k)
        assert stoker.image_info(data).orientation == 1
        assert np.array_equal(stoker.decode(data), rgb)


# --------------------------------------------------------------------------------------------
# WebP


@pytest.mark.parametrize("lossless", [False, True], ids=["lossy", "lossless"])
@pytest.mark.parametrize(("h", "w"), [(H, W), (1, 1), (128, 3), (300, 200)])
def test_webp(h: int, w: int, lossless: bool) -> None:
    rgb = pixels(h, w, 20)
    data = encode_webp(rgb, lossless=lossless)
    got = stoker.decode(data)
    assert got.shape == (h, w, 3)
    assert np.array_equal(got, pillow_rgb(data))
    if lossless:
        assert np.array_equal(got, rgb)
    info = stoker.image_info(data)
    assert (info.format, info.width, info.height) == ("webp", w, h)


@pytest.mark.parametrize("lossless", [False, True], ids=["lossy", "lossless"])
def test_webp_with_alpha_drops_alpha(lossless: bool) -> None:
    rgba = np.dstack([pixels(H, W, 21), pixels(H, W, 22)[..., 0]])
    data = encode_webp(rgba, lossless=lossless)
    got = stoker.decode(data)
    assert np.array_equal(got, pillow_rgb(data))
    if lossless:
        # Pillow encodes lossless with exact=False, which may rewrite RGB under alpha=0 only
        visible = rgba[..., 3] > 0
        assert np.array_equal(got[visible], rgba[..., :3][visible])


def test_animated_webp_first_frame() -> None:
    frames = [Image.fromarray(pixels(30, 40, s)) for s in (31, 32, 33)]
    buf = io.BytesIO()
    frames[0].save(
        buf, format="WEBP", save_all=True, append_images=frames[1:], lossless=True, duration=50
    )
    data = buf.getvalue()
    assert np.array_equal(stoker.decode(data), pixels(30, 40, 31))
    spec = stoker.ImageSpec(size=None, crop=(30, 40), dtype="uint8", layout="NHWC")
    assert np.array_equal(stoker.preprocess_batch_numpy([data], spec)[0], pixels(30, 40, 31))


# --------------------------------------------------------------------------------------------
# PNG color types and bit depths


def _gray_pixels(h: int, w: int, seed: int) -> U8:
    return np.array(pixels(h, w, seed, channels=1)[..., 0])


def _png_variants() -> dict[str, tuple[bytes, U8]]:
    """name -> (PNG bytes, expected RGB)."""
    rgb = pixels(H, W, 40)
    gray = _gray_pixels(H, W, 41)
    alpha = _gray_pixels(H, W, 42)
    out: dict[str, tuple[bytes, U8]] = {}
    out["rgb"] = (encode_png(rgb), rgb)
    out["rgba"] = (encode_png(np.dstack([rgb, alpha])), rgb)
    out["gray"] = (encode_png(gray), np.repeat(gray[..., None], 3, axis=2))
    gray_alpha = Image.merge("LA", [Image.fromarray(gray), Image.fromarray(alpha)])
    out["gray-alpha"] = (encode_png(gray_alpha), np.repeat(gray[..., None], 3, axis=2))
    pal = Image.fromarray(rgb).quantize(colors=200)
    out["palette"] = (encode_png(pal), np.array(pal.convert("RGB")))
    pal16 = Image.fromarray(rgb).quantize(colors=16)
    out["palette-4bit"] = (encode_png(pal16, bits=4), np.array(pal16.convert("RGB")))
    pal_t = Image.fromarray(rgb).quantize(colors=64)
    pal_t.info["transparency"] = 3
    out["palette-trns"] = (encode_png(pal_t, transparency=3), np.array(pal_t.convert("RGB")))
    bilevel = Image.fromarray(gray).convert("1")
    out["1-bit"] = (encode_png(bilevel), np.array(bilevel.convert("RGB")))
    return out


PNG_VARIANTS = _png_variants()


@pytest.mark.parametrize("name", list(PNG_VARIANTS))
def test_png_variants(name: str) -> None:
    data, want = PNG_VARIANTS[name]
    got = stoker.decode(data)
    assert got.shape == want.shape
    assert np.array_equal(got, want)
    assert np.array_equal(got, pillow_rgb(data))
    spec = stoker.ImageSpec(size=31, crop=(29, 27), interpolation="bicubic", dtype="uint8")
    assert_matches_reference(stoker.preprocess_batch([data], spec)[0], want, spec, name)


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_png_low_bit_gray(bits: int) -> None:
    """Gray at 1/2/4 bits scales to 8 bits by bit replication (v * 255 / (2^bits - 1))."""
    rng = np.random.default_rng(bits)
    h, w = 13, 29
    values = rng.integers(0, 1 << bits, size=(h, w))
    per_byte = 8 // bits
    row_bytes = (w * bits + 7) // 8
    rows = bytearray()
    for y in range(h):
        packed = bytearray(row_bytes)
        for x in range(w):
            shift = 8 - bits * (x % per_byte + 1)
            packed[x // per_byte] |= int(values[y, x]) << shift
        rows += packed
    data = raw_png(w, h, bits, 0, bytes(rows))
    scaled = (values * 255 // ((1 << bits) - 1)).astype(np.uint8)
    want = np.repeat(scaled[..., None], 3, axis=2)
    assert np.array_equal(pillow_rgb(data), want)
    assert np.array_equal(stoker.decode(data), want)


def test_png_16bit_gray_keeps_high_byte() -> None:
    """Doc rule: 16-bit samples keep their high byte (Pillow clips 16-bit gray instead)."""
    rng = np.random.default_rng(5)
    samples = rng.integers(0, 65536, size=(H, W), dtype=np.uint16)
    data = raw_png(W, H, 16, 0, samples.astype(">u2").tobytes())
    want = np.repeat((samples >> 8).astype(np.uint8)[..., None], 3, axis=2)
    assert np.array_equal(stoker.decode(data), want)


@pytest.mark.parametrize(("color_type", "channels"), [(2, 3), (6, 4), (4, 2)])
def test_png_16bit_color_keeps_high_byte(color_type: int, channels: int) -> None:
    rng = np.random.default_rng(color_type)
    samples = rng.integers(0, 65536, size=(H, W, channels), dtype=np.uint16)
    data = raw_png(W, H, 16, color_type, samples.astype(">u2").tobytes())
    high = (samples >> 8).astype(np.uint8)
    want = np.repeat(high[..., :1], 3, axis=2) if channels == 2 else high[..., :3]
    got = stoker.decode(data)
    assert np.array_equal(got, want)
    if color_type in (2, 6):  # Pillow also keeps the high byte for 16-bit RGB(A)
        assert np.array_equal(got, pillow_rgb(data))


def test_png_16bit_with_low_bytes_only_is_black() -> None:
    """Values below 256 in a 16-bit gray PNG become 0 (high byte), unlike Pillow's clip."""
    samples = np.arange(H * W, dtype=np.uint16).reshape(H, W) % 256
    data = raw_png(W, H, 16, 0, samples.astype(">u2").tobytes())
    assert int(stoker.decode(data).max()) == 0


def test_png_with_trailing_data_and_crc_valid_ancillary_chunk() -> None:
    rgb = pixels(20, 30, 50)
    png = encode_png(rgb)
    chunk = png_chunk(b"tEXt", b"Comment\x00hello")
    data = png[:33] + chunk + png[33:] + b"trailing junk"
    assert np.array_equal(stoker.decode(data), rgb)


def test_png_bad_crc_is_an_image_error() -> None:
    png = bytearray(encode_png(pixels(20, 30, 51)))
    # IHDR's CRC is at bytes 29..32
    struct.pack_into(">I", png, 29, struct.unpack_from(">I", png, 29)[0] ^ 1)
    with pytest.raises(stoker.ImageError):
        stoker.decode(bytes(png))


# --------------------------------------------------------------------------------------------
# JPEG color and the CMYK rule


def test_jpeg_grayscale_replicated() -> None:
    gray = _gray_pixels(H, W, 60)
    data = encode_jpeg(gray, quality=92)
    got = stoker.decode(data)
    assert got.shape == (H, W, 3)
    assert np.array_equal(got[..., 0], got[..., 1]) and np.array_equal(got[..., 1], got[..., 2])
    assert _max_diff(got, pillow_rgb(data)) <= jpeg_tolerance_vs_pillow()


def test_jpeg_cmyk_follows_pillow_rule() -> None:
    """Pillow writes CMYK JPEGs Adobe-inverted; R = K'·C'/255 on the stored values (doc)."""
    cmyk = np.dstack([pixels(H, W, 61), _gray_pixels(H, W, 62)])
    img = Image.frombytes("CMYK", (W, H), np.ascontiguousarray(cmyk).tobytes())
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    data = buf.getvalue()
    got = stoker.decode(data)
    assert got.shape == (H, W, 3)
    # Pillow's own conversion of the same decoded CMYK; the rounding of /255 may differ by 1.
    assert _max_diff(got, pillow_rgb(data)) <= 1


# --------------------------------------------------------------------------------------------
# reduce_gap (JPEG DCT scaling)


@pytest.fixture(scope="module")
def large_jpeg() -> bytes:
    """2000x1500 (w x h), the default smooth+noise content: per-pixel noise (sigma 18) at quality
    90 keeps more high-frequency energy than a typical photo, so DCT scaling errors are larger
    here than on photos; the bounds below hold with margin on this harsher content."""
    return encode_jpeg(smooth_noise(1500, 2000, 77), quality=90)


# Measured on this image (uint8 output, 0-255 levels, vs the full decode; bilinear and bicubic,
# the three geometries below):
#   gap 1.0: mean 1.47-2.08, max 8-14 (worst: exact 300x400, decoded at 1/4 = 500x375, so only a
#            1.25x resize is left to smooth the DCT-scaling error);
#   gap 2.0: mean 0.78-1.24, max 6-11.
# Bounds, with margin for other libjpeg-turbo builds: mean ≤ 2.5 / 1.5 levels, max ≤ 20 / 16
# levels; and gap 2 must be no worse on average than gap 1.
REDUCE_BOUNDS = {1.0: (2.5, 20), 2.0: (1.5, 16)}


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize(("size", "crop"), [(256, 224), (224, 224), ((300, 400), None)])
def test_reduce_gap_close_to_full_decode(
    large_jpeg: bytes,
    size: int | tuple[int, int],
    crop: int | None,
    interpolation: Interpolation,
) -> None:
    full_spec = stoker.ImageSpec(size=size, crop=crop, interpolation=interpolation, dtype="uint8")
    full = stoker.preprocess_batch([large_jpeg], full_spec).to(torch.int16)
    means = {}
    for gap, (mean_bound, max_bound) in REDUCE_BOUNDS.items():
        spec = stoker.ImageSpec(
            size=size, crop=crop, interpolation=interpolation, dtype="uint8", reduce_gap=gap
        )
        got = stoker.preprocess_batch([large_jpeg], spec)
        assert got.shape == full.shape
        diff = (got.to(torch.int16) - full).abs()
        means[gap] = float(diff.float().mean())
        assert means[gap] <= mean_bound, f"gap {gap}: mean abs error {means[gap]:.3f}"
        assert int(diff.max()) <= max_bound, f"gap {gap}: max abs error {int(diff.max())}"
        assert means[gap] > 0.0 or gap > 1.0, "gap 1 on a 6x downscale must use DCT scaling"
    assert means[2.0] <= means[1.0] + 1e-9


def test_reduce_gap_float_output_shape_and_values(large_jpeg: bytes) -> None:
    base: dict[str, Any] = {
        "size": 256,
        "crop": 224,
        "mean": stoker.IMAGENET_MEAN,
        "std": stoker.IMAGENET_STD,
    }
    full = stoker.preprocess_batch([large_jpeg], stoker.ImageSpec(**base))
    got = stoker.preprocess_batch([large_jpeg], stoker.ImageSpec(**base, reduce_gap=2.0))
    assert got.shape == full.shape == (1, 3, 224, 224)
    levels = (got - full).abs() * torch.tensor(stoker.IMAGENET_STD)[:, None, None] * 255
    assert float(levels.mean()) <= REDUCE_BOUNDS[2.0][0]
    assert float(levels.max()) <= REDUCE_BOUNDS[2.0][1] + 1e-3


def test_reduce_gap_too_large_to_scale_is_a_full_decode(large_jpeg: bytes) -> None:
    """No k/8 scale keeps the decode 100x the target: the output is the full decode's."""
    full = stoker.preprocess_batch([large_jpeg], stoker.ImageSpec(size=256, crop=224))
    got = stoker.preprocess_batch(
        [large_jpeg], stoker.ImageSpec(size=256, crop=224, reduce_gap=100)
    )
    assert torch.equal(got, full)


def test_reduce_gap_ignored_for_png_and_webp() -> None:
    images = [
        encode_png(pixels(400, 600, 80)),
        encode_webp(pixels(400, 600, 81), lossless=True),
        encode_webp(pixels(400, 600, 82), lossless=False),
    ]
    full = stoker.preprocess_batch(images, stoker.ImageSpec(size=64, crop=56))
    got = stoker.preprocess_batch(images, stoker.ImageSpec(size=64, crop=56, reduce_gap=1.0))
    assert torch.equal(got, full)


def test_reduce_gap_with_orientation() -> None:
    """DCT scaling composes with EXIF orientation: the oriented geometry decides the scale."""
    rgb = smooth_noise(600, 1000, 90, cell=24, noise=4.0)
    data = encode_jpeg(rgb, quality=92, orientation=6)
    spec_full = stoker.ImageSpec(size=64, crop=(60, 40), dtype="uint8")
    spec_gap = stoker.ImageSpec(size=64, crop=(60, 40), dtype="uint8", reduce_gap=2.0)
    full = stoker.preprocess_batch([data], spec_full)
    got = stoker.preprocess_batch([data], spec_gap)
    assert got.shape == full.shape == (1, 3, 60, 40)
    diff = (got.to(torch.int16) - full.to(torch.int16)).abs()
    assert float(diff.float().mean()) <= REDUCE_BOUNDS[2.0][0]
    assert int(diff.max()) <= REDUCE_BOUNDS[2.0][1]
    assert_matches_reference(full[0], stoker.decode(data), spec_full, "full decode, oriented")


def test_jpeg_decode_unaffected_by_reduce_gap_elsewhere() -> None:
    data = jpeg_rgb(H, W, 95)
    before = stoker.decode(data)
    stoker.preprocess_batch([data], stoker.ImageSpec(size=8, crop=8, reduce_gap=1.0))
    assert np.array_equal(stoker.decode(data), before)
