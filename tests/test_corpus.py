"""The conformance corpus ($STOKER_CORPUS/manifest.json): real-world files other decoders test with.

For every file the reference (Pillow, EXIF orientation applied, `convert("RGB")`) decodes, stoker
must give the same (H, W) and agreeing pixels:

- 8-bit PNG and WebP: the manifest's sha256 exactly. PNG is lossless; WebP lossy decoding is
  bit-exact by the VP8 spec and libwebp's YUV->RGB conversion is the same in the system libwebp
  stoker links and the one bundled with Pillow (the checksums match).
- 8-bit JPEG: the manifest's sha256 exactly when Pillow bundles the libjpeg-turbo version stoker
  links; otherwise within 2 levels of Pillow in the same run (another libjpeg-turbo release may
  differ by a level) - and in every environment byte for byte with djpeg of the linked library
  (`test_corpus_jpeg_matches_djpeg`).

Known to differ from the reference by rule (docs/preprocessing.md, "Color and format rules"):
- 16-bit grayscale PNG (Pillow mode "I;16", e.g. pillow__i_trns.png): stoker keeps the high byte of
  each sample; Pillow clips values above 255 instead. Checked exactly against the high bytes of
  Pillow's 16-bit samples; the manifest's checksum and mean do not apply.
- CMYK JPEG (pillow__pil_sample_cmyk.jpg): converted with Pillow's rule, R = K'·C'/255 on the
  stored (Adobe-inverted) values; the integer division may round differently, so it is compared
  with Pillow in the same run within 1 level. libjpeg does not convert CMYK, so there is no djpeg
  reference for it.

For files the reference refuses: stoker raises a subclass of `stoker.ImageError`, never crashes.
- libjpeg-turbo__monkey12.jpg (12-bit JPEG) must fail as UnsupportedImageError (the doc says so);
- pillow__truncated_jpeg.jpg must fail as CorruptImageError (truncated JPEG, doc);
- pillow__ultrahdr.jpg may decode: Pillow refuses it as truncated ("0 bytes not processed"), but
  libjpeg reads the primary image; the doc neither requires nor forbids that. If it decodes, its
  shape must agree with `image_info`.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from _imagegen import TRANSPOSE, pillow_rgb
from _reference import zero_pixel_value
from _support import (
    corpus_bytes,
    corpus_entries,
    corpus_missing_reason,
    corpus_name,
    corpus_params,
    djpeg_decode,
    jpeg_tolerance_vs_pillow,
    require_djpeg,
)
from PIL import Image

import stoker

EXPECTED_ERROR: dict[str, type[stoker.ImageError]] = {
    "libjpeg-turbo__monkey12.jpg": stoker.UnsupportedImageError,
    "pillow__truncated_jpeg.jpg": stoker.CorruptImageError,
}
MAY_DECODE = {"pillow__ultrahdr.jpg"}


def _is_gray16(entry: dict[str, Any]) -> bool:
    return entry.get("format") == "PNG" and str(entry.get("mode", "")).startswith("I")


def _is_cmyk(entry: dict[str, Any]) -> bool:
    return entry.get("format") == "JPEG" and entry.get("mode") == "CMYK"


def _max_diff(a: npt.NDArray[np.uint8], b: npt.NDArray[np.uint8]) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()) if a.size else 0


def _pillow_orientation(data: bytes) -> int:
    with Image.open(io.BytesIO(data)) as im:
        value = im.getexif().get(0x0112, 1)
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else 1


@pytest.mark.parametrize("entry", corpus_params(reference="decodes"))
def test_corpus_decodes_like_reference(entry: dict[str, Any]) -> None:
    data = corpus_bytes(entry)
    name = corpus_name(entry)
    got = stoker.decode(data)
    assert got.dtype == np.uint8
    assert got.shape == (entry["height"], entry["width"], 3), name

    if _is_gray16(entry):
        with Image.open(io.BytesIO(data)) as im:
            samples = np.array(im, dtype=np.int64)
        high = (samples >> 8).astype(np.uint8)
        want = np.repeat(high[..., None], 3, axis=2)
        assert np.array_equal(got, want), f"{name}: 16-bit gray must keep the high byte"
        return
    if _is_cmyk(entry):
        diff = _max_diff(got, pillow_rgb(data))
        assert diff <= 1, f"{name}: CMYK differs from Pillow by {diff} levels"
        return

    sha = hashlib.sha256(np.ascontiguousarray(got).tobytes()).hexdigest()
    if sha != entry["rgb_sha256"] and entry["format"] == "JPEG" and jpeg_tolerance_vs_pillow():
        # Pillow bundles another libjpeg-turbo release than the one stoker links.
        tol = jpeg_tolerance_vs_pillow()
        diff = _max_diff(got, pillow_rgb(data))
        assert diff <= tol, f"{name}: {diff} levels from Pillow (allowed {tol})"
        return
    assert sha == entry["rgb_sha256"], (
        f"{name}: pixels differ from the reference (mean {got.mean():.3f}, "
        f"reference {entry['rgb_mean']}, max diff vs Pillow now {_max_diff(got, pillow_rgb(data))})"
    )


@pytest.mark.parametrize("entry", corpus_params(reference="decodes"))
def test_corpus_image_info(entry: dict[str, Any]) -> None:
    info = stoker.image_info(corpus_bytes(entry))
    assert info.format == str(entry["format"]).lower()
    assert (info.width, info.height) == (entry["width"], entry["height"])
    assert 1 <= info.orientation <= 8
    if entry["format"] == "JPEG":
        assert info.orientation == _pillow_orientation(corpus_bytes(entry))


# CMYK->RGB is Pillow's rule, not libjpeg's: CMYK files are compared with Pillow instead.
@pytest.mark.parametrize(
    "entry", corpus_params(reference="decodes", jpeg_only=True, exclude_modes=("CMYK",))
)
def test_corpus_jpeg_matches_djpeg(entry: dict[str, Any]) -> None:
    """Byte for byte with the linked libjpeg-turbo (djpeg), EXIF orientation applied on top."""
    require_djpeg()
    data = corpus_bytes(entry)
    want = djpeg_decode(data)
    transpose = TRANSPOSE[_pillow_orientation(data)]
    if transpose is not None:
        want = np.array(Image.fromarray(want).transpose(transpose))
    got = stoker.decode(data)
    assert got.shape == want.shape
    assert np.array_equal(got, want), f"{corpus_name(entry)}: max diff {_max_diff(got, want)}"


@pytest.mark.parametrize("entry", corpus_params(reference="error"))
def test_corpus_refused_files(entry: dict[str, Any]) -> None:
    name = corpus_name(entry)
    data = corpus_bytes(entry)
    if name in MAY_DECODE:
        try:
            got = stoker.decode(data)
        except stoker.ImageError as e:
            assert e.index is None
            assert e.reason
            return
        info = stoker.image_info(data)
        assert got.shape == (info.height, info.width, 3)
        return
    expected = EXPECTED_ERROR.get(name, stoker.ImageError)
    with pytest.raises(expected) as excinfo:
        stoker.decode(data)
    assert type(excinfo.value) is not stoker.ImageError, "the error must say its cause"
    assert excinfo.value.index is None
    assert excinfo.value.reason


def test_corpus_in_one_batch() -> None:
    """Every corpus file in one batch: the batch error names exactly the items that fail alone,
    and every good item equals the same item processed alone."""
    entries = corpus_entries()
    if entries is None:
        pytest.skip(corpus_missing_reason())
    items = [corpus_bytes(e) for e in entries]
    spec = stoker.ImageSpec(
        size=64, crop=(56, 48), mean=stoker.IMAGENET_MEAN, std=stoker.IMAGENET_STD
    )
    alone: dict[int, torch.Tensor] = {}
    failed_alone: dict[int, type[stoker.ImageError]] = {}
    for i, data in enumerate(items):
        try:
            alone[i] = stoker.preprocess_batch([data], spec)[0]
        except stoker.BatchError as batch_error:
            assert set(batch_error.errors) == {0}
            failed_alone[i] = type(batch_error.errors[0])
    for i, e in enumerate(entries):
        if e["reference"] == "decodes":
            assert i in alone, f"{corpus_name(e)} fails in a batch but decodes with the reference"
    assert failed_alone, "the corpus has files every decoder refuses (12-bit, truncated)"

    with pytest.raises(stoker.BatchError) as excinfo:
        stoker.preprocess_batch(items, spec)
    err = excinfo.value
    assert set(err.errors) == set(failed_alone)
    for i, ie in err.errors.items():
        assert ie.index == i
        assert type(ie) is failed_alone[i], corpus_name(entries[i])
    out = err.output
    assert isinstance(out, torch.Tensor)
    assert tuple(out.shape) == (len(items), *spec.item_shape)
    for i, want in alone.items():
        assert torch.equal(out[i], want), corpus_name(entries[i])
    black = zero_pixel_value(spec)[:, None, None].expand(spec.item_shape)
    for i in failed_alone:
        err_black = float((out[i].to(torch.float64) - black).abs().max())
        assert err_black <= 1e-6, f"{corpus_name(entries[i])}: failed slot is not black"
