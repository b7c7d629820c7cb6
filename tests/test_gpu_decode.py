"""Which payloads the GPU decoder may take (the native probe), and the decode itself on a GPU.

The probe is pure header parsing and runs everywhere; decode_jpegs runs only where
gpu_decode_available says a CUDA device and torchvision's nvJPEG decode work.
"""

from __future__ import annotations

import struct
import sys

import numpy as np
import pytest
import torch
from _imagegen import encode_jpeg, encode_png, pixels
from PIL import Image

import stoker
from stoker import _native
from stoker._gpu_decode import decode_jpegs, gpu_decode_available

RGB = pixels(24, 32, 5)
BASELINE = encode_jpeg(RGB)


def needs_cpu(payload: bytes | bytearray | memoryview) -> bool:
    return not _native.jpeg_gpu_friendly(bytes(payload))


def _with_segment(jpeg: bytes, marker: int, body: bytes) -> bytes:
    """The JPEG with one more marker segment right after SOI."""
    return jpeg[:2] + struct.pack(">BBH", 0xFF, marker, len(body) + 2) + body + jpeg[2:]


def _exif(orientation: int, *, big_endian: bool = False, kind: int = 3) -> bytes:
    """An APP1 Exif body whose IFD0 holds only the orientation tag."""
    e = ">" if big_endian else "<"
    value = (
        struct.pack(e + "HH", orientation, 0) if kind == 3 else struct.pack(e + "I", orientation)
    )
    ifd = struct.pack(e + "H", 1) + struct.pack(e + "HHI", 0x0112, kind, 1) + value
    tiff = (b"MM" if big_endian else b"II") + struct.pack(e + "HI", 42, 8) + ifd + b"\0\0\0\0"
    return b"Exif\0\0" + tiff


def _with_sof(jpeg: bytes, marker: int) -> bytes:
    pos = jpeg.index(b"\xff\xc0")
    return jpeg[: pos + 1] + bytes([marker]) + jpeg[pos + 2 :]


def test_baseline_jpegs_go_to_the_gpu() -> None:
    for subsampling in ("444", "422", "420"):
        assert not needs_cpu(encode_jpeg(RGB, subsampling=subsampling))
    assert not needs_cpu(memoryview(BASELINE))
    assert not needs_cpu(bytearray(BASELINE))
    assert not needs_cpu(encode_jpeg(RGB, orientation=1))


@pytest.mark.parametrize("orientation", range(2, 9))
def test_exif_rotation_needs_cpu(orientation: int) -> None:
    assert needs_cpu(encode_jpeg(RGB, orientation=orientation))


def test_exif_variants() -> None:
    assert needs_cpu(_with_segment(BASELINE, 0xE1, _exif(6, big_endian=True)))
    assert needs_cpu(_with_segment(BASELINE, 0xE1, _exif(8, kind=4)))
    assert not needs_cpu(_with_segment(BASELINE, 0xE1, _exif(1, big_endian=True)))
    # Out-of-range values and malformed blocks mean "not rotated", as on the CPU path.
    assert not needs_cpu(_with_segment(BASELINE, 0xE1, _exif(9)))
    assert not needs_cpu(_with_segment(BASELINE, 0xE1, b"Exif\0\0XX*\0"))
    assert not needs_cpu(_with_segment(BASELINE, 0xE1, _exif(6)[:20]))
    # Only the first Exif segment counts (the CPU path reads that one); segments are prepended.
    first_plain = _with_segment(_with_segment(BASELINE, 0xE1, _exif(6)), 0xE1, _exif(1))
    assert not needs_cpu(first_plain)
    first_rotated = _with_segment(_with_segment(BASELINE, 0xE1, _exif(1)), 0xE1, _exif(3))
    assert needs_cpu(first_rotated)


@pytest.mark.parametrize("marker", [0xC2, 0xC3, 0xC5, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF])
def test_non_sequential_frames_need_cpu(marker: int) -> None:
    assert needs_cpu(_with_sof(BASELINE, marker))


def test_extended_sequential_goes_to_the_gpu() -> None:
    assert not needs_cpu(_with_sof(BASELINE, 0xC1))


def test_progressive_grayscale_cmyk_need_cpu() -> None:
    assert needs_cpu(encode_jpeg(RGB, progressive=True))
    assert needs_cpu(encode_jpeg(RGB[..., 0]))  # one component
    assert needs_cpu(encode_jpeg(Image.fromarray(RGB).convert("CMYK")))


def test_twelve_bit_needs_cpu() -> None:
    pos = BASELINE.index(b"\xff\xc0")
    assert BASELINE[pos + 4] == 8
    assert needs_cpu(BASELINE[: pos + 4] + b"\x0c" + BASELINE[pos + 5 :])


def test_adobe_rgb_transform_needs_cpu() -> None:
    adobe = b"Adobe" + struct.pack(">HHHB", 100, 0, 0, 0)
    assert needs_cpu(_with_segment(BASELINE, 0xEE, adobe))
    adobe_ycc = b"Adobe" + struct.pack(">HHHB", 100, 0, 0, 1)
    assert not needs_cpu(_with_segment(BASELINE, 0xEE, adobe_ycc))


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xff\xd8",
        b"\xff\xd8\xff",
        b"\xff\xd8\xff\xd9",  # EOI before any frame
        b"GIF89a" + bytes(20),
        BASELINE[: BASELINE.index(b"\xff\xc0") + 6],  # cut inside the frame header
        BASELINE[:2] + b"\x00" + BASELINE[2:],  # lost marker sync
        BASELINE[:2] + b"\xff\xe0\x00\x01" + BASELINE[2:],  # segment length < 2
    ],
    ids=["empty", "soi-only", "soi-ff", "eoi", "gif", "truncated", "no-sync", "bad-length"],
)
def test_malformed_needs_cpu(payload: bytes) -> None:
    assert needs_cpu(payload)


def test_fill_bytes_and_restart_markers_are_skipped() -> None:
    assert not needs_cpu(BASELINE[:2] + b"\xff\xff" + BASELINE[2:])
    assert not needs_cpu(BASELINE[:2] + b"\xff\xd0" + BASELINE[2:])


def test_png_and_webp_need_cpu() -> None:
    assert needs_cpu(encode_png(RGB))
    assert needs_cpu(b"RIFF\x10\x00\x00\x00WEBPVP8 " + bytes(16))


def test_no_gpu_decode_on_cpu() -> None:
    assert not gpu_decode_available(torch.device("cpu"))
    assert not gpu_decode_available("cpu")
    if not torch.cuda.is_available():
        assert not gpu_decode_available("cuda")


def test_decode_without_torchvision_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.io", None)
    with pytest.raises(RuntimeError, match="torchvision"):
        decode_jpegs([BASELINE], torch.device("cuda"))


def test_decode_jpegs_on_gpu() -> None:
    if not gpu_decode_available("cuda"):
        pytest.skip("needs a CUDA device and torchvision with nvJPEG")
    # 4:4:4: nvJPEG's pixels equal libjpeg-turbo's; subsampled chroma is upsampled differently.
    jpegs = [encode_jpeg(pixels(40 + i, 30 + 2 * i, i), subsampling="444") for i in range(4)]
    corrupt = BASELINE[: len(BASELINE) // 3]
    payloads: list[bytes | memoryview] = [jpegs[0], memoryview(jpegs[1]), corrupt, b"", *jpegs[2:]]
    images, errors = decode_jpegs(payloads, torch.device("cuda"))
    assert set(errors) == {2, 3}
    assert images[2] is None and images[3] is None
    for slot, jpeg in zip([0, 1, 4, 5], jpegs, strict=True):
        image = images[slot]
        assert image is not None and image.device.type == "cuda"
        expected = torch.from_numpy(np.ascontiguousarray(stoker.decode(jpeg))).permute(2, 0, 1)
        assert image.shape == expected.shape and image.dtype == torch.uint8
        diff = (image.cpu().int() - expected.int()).abs()
        assert diff.max().item() <= 1
    assert decode_jpegs([], torch.device("cuda")) == ([], {})
