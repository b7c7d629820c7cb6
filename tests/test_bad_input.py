"""Bad input never takes a batch down; bad specs and `out` buffers are rejected before any work.

Per docs/preprocessing.md, "Errors": every failed item becomes an `ImageError` subclass naming its
cause (`EmptyImageError`, `UnsupportedImageError`, `CorruptImageError`, `ImageTooLargeError`) in
`BatchError.errors`, and `BatchError.output` is complete, each failed slot filled with the value a
black pixel normalizes to.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from _imagegen import encode_webp, jpeg_rgb, pixels, png_rgb
from _reference import TORCH_DTYPES, zero_pixel_value
from _support import HAS_WEBP, jpeg_scan_start, jpeg_with_dimensions, png_header_only

import stoker

SPEC = stoker.ImageSpec(size=48, crop=(40, 36), mean=stoker.IMAGENET_MEAN, std=stoker.IMAGENET_STD)


def _good_images() -> dict[str, bytes]:
    return {
        "jpeg": jpeg_rgb(120, 90, 1),
        "jpeg-progressive": jpeg_rgb(120, 90, 1, progressive=True),
        "png": png_rgb(120, 90, 1),
    } | (
        {
            "webp-lossy": encode_webp(pixels(120, 90, 1), lossless=False),
            "webp-lossless": encode_webp(pixels(120, 90, 1), lossless=True),
        }
        if HAS_WEBP
        else {}
    )


GOOD = _good_images()


def _cut_points(fmt: str, n: int) -> list[int]:
    """Cuts that remove image data. A PNG's last 12 bytes are the IEND chunk (the pixels are all
    there before it), so PNG cuts stop before its last IDAT chunk ends."""
    end = n - 16 if fmt == "png" else n - 1
    return [16, 40, 100, n // 4, n // 2, (3 * n) // 4, end - 4, end]


# --------------------------------------------------------------------------------------------
# decode() on bad bytes


def test_empty_bytes() -> None:
    for empty in (b"", bytearray(), memoryview(b"")):
        with pytest.raises(stoker.EmptyImageError) as excinfo:
            stoker.decode(empty)
        assert excinfo.value.index is None
        assert excinfo.value.reason
    with pytest.raises(stoker.EmptyImageError):
        stoker.image_info(b"")


def test_random_garbage() -> None:
    rng = random.Random(1234)
    for n in (1, 2, 3, 7, 64, 1000, 50_000):
        data = bytes(rng.randrange(256) for _ in range(n))
        if data[:2] == b"\xff\xd8" or data[:4] in (b"\x89PNG", b"RIFF"):
            continue
        with pytest.raises(stoker.UnsupportedImageError):
            stoker.decode(data)
    with pytest.raises(stoker.UnsupportedImageError):
        stoker.decode(b"GIF89a" + bytes(200))
    with pytest.raises(stoker.UnsupportedImageError):
        stoker.decode(b"hello, world, this is not an image")


@pytest.mark.parametrize(
    "magic",
    [b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"RIFF\x00\x10\x00\x00WEBPVP8 "],
    ids=["jpeg", "png", "webp"],
)
def test_garbage_after_magic(magic: bytes) -> None:
    rng = random.Random(len(magic))
    for n in (0, 1, 10, 500, 5000):
        data = magic + bytes(rng.randrange(256) for _ in range(n))
        with pytest.raises(stoker.ImageError) as excinfo:
            stoker.decode(data)
        assert type(excinfo.value) is not stoker.ImageError


@pytest.mark.parametrize("fmt", list(GOOD))
def test_truncated(fmt: str) -> None:
    data = GOOD[fmt]
    assert stoker.decode(data).shape == (120, 90, 3)
    for cut in _cut_points(fmt.split("-")[0], len(data)):
        with pytest.raises(stoker.CorruptImageError):
            stoker.decode(data[:cut])
    for cut in (1, 2, 3):  # not even a whole signature: any specific ImageError
        with pytest.raises(stoker.ImageError) as excinfo:
            stoker.decode(data[:cut])
        assert type(excinfo.value) is not stoker.ImageError


@pytest.mark.parametrize("progressive", [False, True], ids=["baseline", "progressive"])
def test_flipped_entropy_byte(progressive: bool) -> None:
    """A flipped bit pattern in the scan may still decode (JPEG resynchronizes); if it does, the
    image has its declared shape; if not, it is a CorruptImageError. Never a crash."""
    data = jpeg_rgb(120, 90, 3, progressive=progressive)
    start = jpeg_scan_start(data)
    rng = random.Random(7 if progressive else 8)
    spec = stoker.ImageSpec(size=32, crop=32)
    for _ in range(25):
        corrupt = bytearray(data)
        pos = rng.randrange(start, len(data) - 2)
        corrupt[pos] ^= 1 << rng.randrange(8)
        try:
            got = stoker.decode(bytes(corrupt))
        except stoker.CorruptImageError:
            pass
        else:
            assert got.shape == (120, 90, 3)
            assert got.dtype == np.uint8
        try:
            out = stoker.preprocess_batch([bytes(corrupt), data], spec)
        except stoker.BatchError as e:
            assert set(e.errors) == {0}
            assert isinstance(e.errors[0], stoker.CorruptImageError)
            out = e.output
        assert tuple(out.shape) == (2, 3, 32, 32)
        assert torch.equal(out[1], stoker.preprocess_batch([data], spec)[0])


def test_png_header_declaring_huge_dimensions() -> None:
    data = png_header_only(100_000, 100_000)
    with pytest.raises(stoker.ImageTooLargeError):
        stoker.decode(data)
    with pytest.raises(stoker.BatchError) as excinfo:
        stoker.preprocess_batch([data], SPEC)
    assert isinstance(excinfo.value.errors[0], stoker.ImageTooLargeError)


def test_jpeg_sof_declaring_huge_dimensions() -> None:
    data = jpeg_with_dimensions(jpeg_rgb(120, 90, 1), 60_000, 60_000)
    with pytest.raises(stoker.ImageTooLargeError):
        stoker.decode(data)
    with pytest.raises(stoker.BatchError) as excinfo:
        stoker.preprocess_batch([data], SPEC)
    assert isinstance(excinfo.value.errors[0], stoker.ImageTooLargeError)


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp-lossless"])
def test_max_pixels_boundary(fmt: str) -> None:
    """120x90 = 10800 pixels: allowed at max_pixels=10800, ImageTooLargeError at 10799."""
    data = GOOD[fmt]
    ok = stoker.ImageSpec(size=48, crop=40, max_pixels=120 * 90)
    assert tuple(stoker.preprocess_batch([data], ok).shape) == (1, 3, 40, 40)
    small = stoker.ImageSpec(size=48, crop=40, max_pixels=120 * 90 - 1)
    with pytest.raises(stoker.BatchError) as excinfo:
        stoker.preprocess_batch([data, png_rgb(10, 10, 2)], small)
    assert set(excinfo.value.errors) == {0}
    assert isinstance(excinfo.value.errors[0], stoker.ImageTooLargeError)
    assert excinfo.value.errors[0].index == 0


# --------------------------------------------------------------------------------------------
# Batches with good and bad items


def _bad_items() -> dict[str, tuple[bytes, type[stoker.ImageError]]]:
    jpeg = GOOD["jpeg"]
    return {
        "empty": (b"", stoker.EmptyImageError),
        "garbage": (b"this is not an image at all" * 5, stoker.UnsupportedImageError),
        "truncated-jpeg": (jpeg[: len(jpeg) // 2], stoker.CorruptImageError),
        "truncated-png": (GOOD["png"][:500], stoker.CorruptImageError),
        "huge-png": (png_header_only(100_000, 100_000), stoker.ImageTooLargeError),
        "huge-jpeg": (jpeg_with_dimensions(jpeg, 60_000, 60_000), stoker.ImageTooLargeError),
    } | (
        {"truncated-webp": (GOOD["webp-lossy"][:300], stoker.CorruptImageError)} if HAS_WEBP else {}
    )


BAD = _bad_items()


# Specs are built inside the tests: an ImageSpec held by pytest's parametrization until interpreter
# exit outlives the nanobind module and makes nanobind print a (harmless) leak report at exit.
BATCH_SPECS: dict[str, dict[str, Any]] = {
    "f32-imagenet": {"mean": stoker.IMAGENET_MEAN, "std": stoker.IMAGENET_STD},
    "f32-raw": {},
    "u8-nhwc": {"dtype": "uint8", "layout": "NHWC"},
    "f16": {
        "size": (30, 20),
        "crop": None,
        "mean": (0.2, 0.5, 0.9),
        "std": (3, 2, 1),
        "dtype": "float16",
    },
    "bf16": {
        "size": (30, 20),
        "crop": None,
        "mean": (0.2, 0.5, 0.9),
        "std": (3, 2, 1),
        "dtype": "bfloat16",
    },
}


@pytest.mark.parametrize("spec_name", list(BATCH_SPECS))
def test_batch_with_bad_items(spec_name: str) -> None:
    spec = stoker.ImageSpec(**{"size": 48, "crop": (40, 36), **BATCH_SPECS[spec_name]})
    names = list(BAD)
    # interleave: good, bad, bad, good, ...
    items: list[bytes] = []
    kinds: dict[int, type[stoker.ImageError]] = {}
    good_at: dict[int, bytes] = {}
    goods = list(GOOD.values())
    for i, name in enumerate(names):
        if i % 2 == 0:
            good_at[len(items)] = goods[i % len(goods)]
            items.append(goods[i % len(goods)])
        kinds[len(items)] = BAD[name][1]
        items.append(BAD[name][0])
    good_at[len(items)] = goods[-1]
    items.append(goods[-1])

    with pytest.raises(stoker.BatchError) as excinfo:
        stoker.preprocess_batch(items, spec)
    err = excinfo.value
    assert isinstance(err, ValueError)
    assert set(err.errors) == set(kinds), "errors must be keyed by exactly the failed indices"
    for i, ie in err.errors.items():
        assert isinstance(ie, kinds[i]), f"item {i}: {type(ie).__name__}, want {kinds[i].__name__}"
        assert isinstance(ie, ValueError)
        assert ie.index == i
        assert isinstance(ie.reason, str) and ie.reason
        assert ie.reason in str(ie)
    assert "empty" in err.errors[min(kinds)].reason.lower()

    out = err.output
    assert isinstance(out, torch.Tensor)
    assert tuple(out.shape) == (len(items), *spec.item_shape)
    assert out.dtype == TORCH_DTYPES[spec.dtype]
    for i, data in good_at.items():
        assert torch.equal(out[i], stoker.preprocess_batch([data], spec)[0]), f"good item {i}"
    black = zero_pixel_value(spec)
    if spec.layout == "NCHW":
        black = black[:, None, None]
    tol = (
        1e-6
        if spec.dtype in ("uint8", "float32")
        else torch.finfo(TORCH_DTYPES[spec.dtype]).eps * 3
    )
    for i in kinds:
        diff = (out[i].to(torch.float64) - black).abs().max()
        assert float(diff) <= tol, f"failed slot {i} is not a black pixel's value"


def test_batch_error_numpy_variant() -> None:
    items = [GOOD["png"], b"", GOOD["jpeg"]]
    with pytest.raises(stoker.BatchError) as excinfo:
        stoker.preprocess_batch_numpy(items, SPEC)
    err = excinfo.value
    assert set(err.errors) == {1}
    assert isinstance(err.errors[1], stoker.EmptyImageError)
    assert isinstance(err.output, np.ndarray)
    assert err.output.shape == (3, *SPEC.item_shape)
    want = stoker.preprocess_batch([items[0], items[2]], SPEC).numpy()
    assert np.array_equal(err.output[[0, 2]], want)


def test_all_items_bad() -> None:
    with pytest.raises(stoker.BatchError) as excinfo:
        stoker.preprocess_batch([b"", b"x", b"\xff\xd8\xff\xe0"], SPEC)
    assert set(excinfo.value.errors) == {0, 1, 2}
    assert tuple(excinfo.value.output.shape) == (3, *SPEC.item_shape)


@pytest.mark.parametrize("item", [3, None, 2.5, "a string", ["nested"], object()])
def test_non_bytes_item(item: Any) -> None:
    with pytest.raises((TypeError, ValueError)):
        stoker.preprocess_batch([GOOD["png"], item], SPEC)
    with pytest.raises((TypeError, ValueError)):
        stoker.preprocess_batch_numpy([item], SPEC)


def test_single_image_instead_of_a_batch() -> None:
    with pytest.raises((TypeError, ValueError)):
        stoker.preprocess_batch(GOOD["png"], SPEC)


def test_non_contiguous_buffer_item() -> None:
    strided = memoryview(GOOD["png"])[::2]
    with pytest.raises((TypeError, ValueError)):
        stoker.preprocess_batch([strided], SPEC)


# --------------------------------------------------------------------------------------------
# Invalid specs


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"size": -1}, "size"),
        ({"size": 0}, "size"),
        ({"size": (10, -3)}, "size"),
        ({"size": (10, 20, 30)}, "size"),
        ({"size": 2.5}, "size"),
        ({"crop": -5}, "crop"),
        ({"crop": 0}, "crop"),
        ({"crop": (0, 10)}, "crop"),
        ({"size": 256, "crop": None}, "crop"),
        ({"size": None, "crop": None}, "crop"),
        ({"mean": (0.5, 0.5, 0.5)}, "std"),
        ({"std": (0.5, 0.5, 0.5)}, "mean"),
        ({"mean": (0.5, 0.5), "std": (0.5, 0.5)}, "mean"),
        ({"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.0, 0.5)}, "std"),
        ({"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "dtype": "uint8"}, "uint8"),
        ({"layout": "CHW"}, "layout"),
        ({"layout": "nchw_typo"}, "layout"),
        ({"dtype": "float64"}, "dtype"),
        ({"dtype": torch.float64}, "dtype"),
        ({"dtype": "int8"}, "dtype"),
        ({"interpolation": "lanczos"}, "interpolation"),
        ({"interpolation": "nearest-exact"}, "interpolation"),
        ({"reduce_gap": 0.5}, "reduce_gap"),
        ({"reduce_gap": -1.0}, "reduce_gap"),
        ({"max_pixels": 0}, "max_pixels"),
        ({"max_pixels": -10}, "max_pixels"),
    ],
)
def test_invalid_spec(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        stoker.ImageSpec(**kwargs)


def test_spec_is_frozen() -> None:
    spec = stoker.ImageSpec()
    with pytest.raises(AttributeError):  # dataclasses.FrozenInstanceError
        spec.size = 5  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# Invalid `out`


@pytest.mark.parametrize(
    "make_out",
    [
        lambda: torch.full((2, 3, 40, 37), 5.0),
        lambda: torch.full((3, 3, 40, 36), 5.0),
        lambda: torch.full((2, 40, 36, 3), 5.0),
        lambda: torch.full((2, 3, 40, 36), 5, dtype=torch.float64),
        lambda: torch.full((2, 3, 40, 36), 5, dtype=torch.float16),
        lambda: torch.full((2, 3, 40, 36), 5, dtype=torch.uint8),
        lambda: torch.full((2, 3, 40, 72), 5.0)[..., ::2],
        lambda: torch.full((2, 40, 36, 3), 5.0).permute(0, 3, 1, 2),
        lambda: torch.full((3 * 2 * 40 * 36,), 5.0),
    ],
    ids=[
        "wrong-width",
        "wrong-n",
        "nhwc-shape",
        "float64",
        "float16",
        "uint8",
        "strided",
        "channels-last",
        "flat",
    ],
)
def test_invalid_out(make_out: Any) -> None:
    out = make_out()
    before = out.clone()
    with pytest.raises(ValueError):
        stoker.preprocess_batch([GOOD["png"], GOOD["jpeg"]], SPEC, out=out)
    assert torch.equal(out, before), "an invalid out must be rejected before any work"


@pytest.mark.parametrize(
    "out",
    [
        np.empty((2, 3, 40, 35), dtype=np.float32),
        np.empty((2, 3, 40, 36), dtype=np.float64),
        np.empty((2, 3, 40, 72), dtype=np.float32)[..., ::2],
    ],
    ids=["wrong-shape", "float64", "strided"],
)
def test_invalid_out_numpy(out: npt.NDArray[Any]) -> None:
    with pytest.raises(ValueError):
        stoker.preprocess_batch_numpy([GOOD["png"], GOOD["jpeg"]], SPEC, out=out)


def test_bfloat16_numpy_unavailable() -> None:
    with pytest.raises(ValueError):
        stoker.preprocess_batch_numpy([GOOD["png"]], stoker.ImageSpec(dtype="bfloat16"))
