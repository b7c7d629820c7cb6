"""stoker's own nvJPEG binding: loading and errors everywhere, decoding where a GPU is."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from _imagegen import encode_jpeg, pixels

import stoker
from stoker import _native
from stoker._gpu_decode import open_jpeg_decoder
from stoker._nvjpeg import NvJpeg, library_candidates
from stoker._preprocess import loaded_libraries


def _nvjpeg(device: str = "cuda") -> NvJpeg:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    try:
        return NvJpeg(device)
    except RuntimeError as e:
        pytest.skip(f"nvJPEG does not load here: {e}")


def _cpu_decode(jpeg: bytes) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(stoker.decode(jpeg))).permute(2, 0, 1)


def test_library_candidates_end_with_the_loader_search() -> None:
    names = library_candidates()
    assert names[-4:] == ("libnvjpeg.so.13", "libnvjpeg.so.12", "libnvjpeg.so.11", "libnvjpeg.so")
    assert len(set(names)) == len(names)


def test_loaded_libraries_reads_this_process_maps() -> None:
    libc = loaded_libraries("libc.so")
    assert libc and all(os.path.basename(p).startswith("libc.so") for p in libc)
    assert loaded_libraries("libstoker-never-loaded") == []


def test_a_missing_library_is_named() -> None:
    with pytest.raises(RuntimeError, match=r"could not be loaded:\n  /nowhere/libnvjpeg\.so"):
        _native.NvJpegDecoder("auto", ["/nowhere/libnvjpeg.so"])


def test_a_library_without_nvjpeg_is_refused() -> None:
    # libc loads but has none of nvJPEG's entry points.
    with pytest.raises(RuntimeError, match="no symbol nvjpegCreateEx"):
        _native.NvJpegDecoder("auto", ["libc.so.6"])


def test_bad_arguments_are_value_errors() -> None:
    with pytest.raises(ValueError, match="backend must be one of auto, hardware, cuda"):
        _native.NvJpegDecoder("fast", [])
    with pytest.raises(ValueError, match="max_pixels"):
        _native.NvJpegDecoder("auto", [], -1)


def test_nvjpeg_needs_a_cuda_device() -> None:
    with pytest.raises(ValueError, match="needs a CUDA device"):
        NvJpeg("cpu")


def test_decoder_choice_is_checked() -> None:
    with pytest.raises(ValueError, match="must be one of auto, nvjpeg, torchvision"):
        open_jpeg_decoder(torch.device("cpu"), 1000, "pil")
    with pytest.raises(ValueError, match="GPU decode is not available on cpu"):
        open_jpeg_decoder(torch.device("cpu"), 1000, "nvjpeg")
    with pytest.raises(ValueError, match="torchvision with nvJPEG: not available"):
        open_jpeg_decoder(torch.device("cpu"), 1000, "auto")


def test_decode_matches_the_cpu_path_and_bad_items_fail_alone() -> None:
    dec = _nvjpeg()
    # 4:4:4 baseline: no chroma upsampling, so only the IDCT may differ from libjpeg-turbo's.
    jpegs = [encode_jpeg(pixels(40 + 8 * i, 30 + 6 * i, i), subsampling="444") for i in range(5)]
    progressive = encode_jpeg(pixels(33, 47, 9), progressive=True)
    truncated = jpegs[0][: len(jpegs[0]) // 3]
    payloads: list[bytes | memoryview] = [
        jpegs[0],
        memoryview(jpegs[1]),
        b"",
        b"not a jpeg at all",
        jpegs[2],
        progressive,
        truncated,
        *jpegs[3:],
    ]
    images, errors = dec.decode(payloads)
    assert {2, 3} <= set(errors)
    assert all(isinstance(errors[i], stoker.ImageError) for i in (2, 3))
    for slot, jpeg in [(0, jpegs[0]), (1, jpegs[1]), (4, jpegs[2]), (7, jpegs[3]), (8, jpegs[4])]:
        image = images[slot]
        assert image is not None and image.device.type == "cuda" and image.dtype == torch.uint8
        expected = _cpu_decode(jpeg)
        assert image.shape == expected.shape
        diff = (image.cpu().int() - expected.int()).abs()
        assert diff.max().item() <= 2 and diff.float().mean().item() < 0.5
    # The progressive image decodes too: on the JPEG engines' fallback (the CPU) or on the SMs.
    got = images[5]
    assert got is not None and got.shape == _cpu_decode(progressive).shape
    # A truncated scan either fails alone or decodes to an image of the right size.
    cut = images[6]
    assert 6 in errors or (cut is not None and cut.shape == _cpu_decode(jpegs[0]).shape)
    assert dec.decode([]) == ([], {})


def test_undersized_output_is_refused() -> None:
    dec = _nvjpeg()
    out = torch.empty(16, dtype=torch.uint8, device=dec.device)
    stream = torch.cuda.current_stream(dec.device).cuda_stream
    with pytest.raises(ValueError, match="the output holds 16 bytes; these images need 3600"):
        dec._decoder().decode([encode_jpeg(pixels(40, 30, 1))], out.data_ptr(), 16, stream)


def test_decode_never_writes_memory_that_queued_work_still_reads() -> None:
    dec = _nvjpeg()
    jpegs = [encode_jpeg(pixels(64, 48, i), subsampling="444") for i in range(8)]
    need = 8 * 3 * 64 * 48
    stream = torch.cuda.Stream(dec.device)  # type: ignore[no-untyped-call]
    wrong = 0
    with torch.cuda.stream(stream):
        for _ in range(10):
            # A block of exactly the decode's size, read by a sum queued behind ~50 ms of GPU
            # work and then freed: the allocator hands it to the decode's output on this stream.
            held = torch.full((need,), 7, dtype=torch.uint8, device=dec.device)
            torch.cuda._sleep(100_000_000)  # type: ignore[no-untyped-call]
            total = held.sum(dtype=torch.int64)
            del held
            images, errors = dec.decode(jpegs)
            assert errors == {} and all(image is not None for image in images)
            wrong += int(total.item() != 7 * need)
    assert wrong == 0


def test_images_over_the_pixel_limit_fail_alone() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    try:
        dec = NvJpeg("cuda", max_pixels=2000)
    except RuntimeError as e:
        pytest.skip(f"nvJPEG does not load here: {e}")
    images, errors = dec.decode([encode_jpeg(pixels(40, 30, 1)), encode_jpeg(pixels(50, 50, 2))])
    assert images[0] is not None and set(errors) == {1}
    assert "2000-pixel limit" in str(errors[1])


def test_one_decoder_per_gpu_from_threads_of_their_own() -> None:
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    decoders = [_nvjpeg("cuda:0"), _nvjpeg("cuda:1")]
    jpegs = [encode_jpeg(pixels(64, 48, i), subsampling="444") for i in range(16)]
    expected = [_cpu_decode(j) for j in jpegs]
    failures: list[str] = []

    def run(dec: NvJpeg) -> None:
        for _ in range(20):
            images, errors = dec.decode(jpegs)
            torch.cuda.synchronize(dec.device)
            if errors:
                failures.append(f"{dec.device}: {errors}")
            for image, want in zip(images, expected, strict=True):
                if image is None or image.device != dec.device:
                    failures.append(f"{dec.device}: missing or misplaced image")
                elif (image.cpu().int() - want.int()).abs().max().item() > 2:
                    failures.append(f"{dec.device}: pixels differ")

    threads = [threading.Thread(target=run, args=(d,)) for d in decoders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


@pytest.mark.parametrize(("given", "expected"), [(None, "32"), ("4", "4")])
def test_importing_stoker_widens_cudas_hardware_queues_unless_chosen(
    given: str | None, expected: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CUDA_DEVICE_MAX_CONNECTIONS"}
    if given is not None:
        env["CUDA_DEVICE_MAX_CONNECTIONS"] = given
    code = "import os, stoker; print(os.environ['CUDA_DEVICE_MAX_CONNECTIONS'])"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == expected
