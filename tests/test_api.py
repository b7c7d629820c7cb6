"""The Python API: `out=`, the numpy and async variants, the thread pool, buffers, image_info."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _imagegen import encode_webp, jpeg_rgb, pixels, png_rgb
from _reference import TORCH_DTYPES, assert_matches_reference, zero_pixel_value
from _support import HAS_WEBP

import stoker


def _images(n: int = 6) -> list[bytes]:
    shapes = [(120, 90), (64, 200), (33, 33), (250, 140), (17, 40), (90, 120)]
    out: list[bytes] = []
    for i in range(n):
        h, w = shapes[i % len(shapes)]
        out.append(png_rgb(h, w, 100 + i) if i % 2 else jpeg_rgb(h, w, 100 + i))
    return out


def _spec(**kwargs: Any) -> stoker.ImageSpec:
    base: dict[str, Any] = {
        "size": 64,
        "crop": (56, 48),
        "mean": stoker.IMAGENET_MEAN,
        "std": stoker.IMAGENET_STD,
    }
    base.update(kwargs)
    return stoker.ImageSpec(**base)


# --------------------------------------------------------------------------------------------
# ImageSpec


def test_spec_defaults_and_properties() -> None:
    spec = stoker.ImageSpec()
    assert spec.size == 256 and spec.crop == 224
    assert spec.interpolation == "bilinear" and spec.antialias is True
    assert spec.mean is None and spec.std is None
    assert spec.layout == "NCHW" and spec.dtype == "float32"
    assert spec.reduce_gap is None and spec.max_pixels == 50_000_000
    assert spec.output_size == (224, 224)
    assert spec.item_shape == (3, 224, 224)
    nhwc = stoker.ImageSpec(size=(30, 50), crop=None, layout="NHWC")
    assert nhwc.output_size == (30, 50)
    assert nhwc.item_shape == (30, 50, 3)
    assert stoker.ImageSpec(size=None, crop=(7, 9)).output_size == (7, 9)
    assert stoker.ImageSpec(size=(100, 80), crop=(7, 9)).item_shape == (3, 7, 9)
    assert stoker.IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert stoker.IMAGENET_STD == (0.229, 0.224, 0.225)


def test_spec_equality() -> None:
    assert _spec() == _spec()
    assert _spec() != _spec(size=65)


def test_default_spec_is_used() -> None:
    images = _images(2)
    out = stoker.preprocess_batch(images)
    assert tuple(out.shape) == (2, 3, 224, 224)
    assert out.dtype == torch.float32
    assert torch.equal(out, stoker.preprocess_batch(images, stoker.ImageSpec()))


def test_error_hierarchy() -> None:
    for cls in (
        stoker.EmptyImageError,
        stoker.UnsupportedImageError,
        stoker.CorruptImageError,
        stoker.ImageTooLargeError,
    ):
        assert issubclass(cls, stoker.ImageError)
    assert issubclass(stoker.ImageError, ValueError)
    assert issubclass(stoker.BatchError, ValueError)


# --------------------------------------------------------------------------------------------
# preprocess_batch: out, buffers, numpy


@pytest.mark.parametrize("dtype", ["float32", "uint8", "float16", "bfloat16"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_out_is_filled_in_place(layout: str, dtype: str) -> None:
    kwargs: dict[str, Any] = {"layout": layout, "dtype": dtype}
    if dtype == "uint8":
        kwargs.update(mean=None, std=None)
    spec = _spec(**kwargs)
    images = _images()
    want = stoker.preprocess_batch(images, spec)
    out = torch.full((len(images), *spec.item_shape), 7, dtype=TORCH_DTYPES[dtype])
    ptr = out.data_ptr()
    got = stoker.preprocess_batch(images, spec, out=out)
    assert got is out or got.data_ptr() == ptr
    assert got.data_ptr() == ptr
    assert torch.equal(out, want)


def test_out_with_failed_items_is_filled() -> None:
    spec = _spec()
    images = [*_images(2), b""]
    out = torch.full((3, *spec.item_shape), 123.0)
    with pytest.raises(stoker.BatchError) as excinfo:
        stoker.preprocess_batch(images, spec, out=out)
    assert excinfo.value.output.data_ptr() == out.data_ptr()
    assert torch.equal(out[:2], stoker.preprocess_batch(images[:2], spec))
    black = zero_pixel_value(spec)[:, None, None]
    assert float((out[2].to(torch.float64) - black).abs().max()) <= 1e-6  # not the fill value


def test_out_numpy_in_place() -> None:
    spec = _spec()
    images = _images()
    out = np.zeros((len(images), *spec.item_shape), dtype=np.float32)
    got = stoker.preprocess_batch_numpy(images, spec, out=out)
    assert got.ctypes.data == out.ctypes.data
    assert np.array_equal(out, stoker.preprocess_batch(images, spec).numpy())


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"dtype": "uint8", "mean": None, "std": None, "layout": "NHWC"},
        {"dtype": "float16", "interpolation": "bicubic"},
        {"size": (40, 70), "crop": None, "interpolation": "nearest"},
    ],
    ids=["f32", "u8-nhwc", "f16-bicubic", "nearest-exact-size"],
)
def test_numpy_variant_equals_torch(kwargs: dict[str, Any]) -> None:
    spec = _spec(**kwargs)
    images = _images()
    t = stoker.preprocess_batch(images, spec)
    n = stoker.preprocess_batch_numpy(images, spec)
    assert isinstance(n, np.ndarray)
    assert n.shape == tuple(t.shape)
    assert n.dtype == t.numpy().dtype
    assert n.flags.c_contiguous
    assert np.array_equal(n, t.numpy())


def test_buffer_types() -> None:
    spec = _spec()
    data = _images(1)[0]
    want = stoker.preprocess_batch([data], spec)[0]
    variants: list[Any] = [
        bytearray(data),
        memoryview(data),
        np.frombuffer(data, dtype=np.uint8).copy(),
        memoryview(b"xx" + data + b"yy")[2:-2],
    ]
    out = stoker.preprocess_batch(variants, spec)
    for i in range(len(variants)):
        assert torch.equal(out[i], want), f"variant {i}"
    assert np.array_equal(stoker.decode(bytearray(data)), stoker.decode(data))
    assert np.array_equal(stoker.decode(memoryview(data)), stoker.decode(data))


def test_tuple_and_iterables_of_images() -> None:
    spec = _spec()
    images = _images(3)
    want = stoker.preprocess_batch(images, spec)
    assert torch.equal(stoker.preprocess_batch(tuple(images), spec), want)


def test_empty_batch() -> None:
    spec = _spec()
    out = stoker.preprocess_batch([], spec)
    assert tuple(out.shape) == (0, *spec.item_shape)
    assert stoker.preprocess_batch_numpy([], spec).shape == (0, *spec.item_shape)


def test_output_is_a_cpu_tensor_that_survives() -> None:
    """Arena memory returns to the pool only when the tensor is freed: a result kept alive while
    many other batches run must keep its values."""
    spec = _spec()
    images = _images()
    first = stoker.preprocess_batch(images, spec)
    copy = first.clone()
    for _ in range(10):
        stoker.preprocess_batch(_images(3), _spec(dtype="float32", size=80))
    assert first.device.type == "cpu"
    assert torch.equal(first, copy)


def test_pin_memory() -> None:
    spec = _spec()
    images = _images(2)
    out = stoker.preprocess_batch(images, spec, pin_memory=False)
    assert not out.is_pinned()
    default = stoker.preprocess_batch(images, spec)
    assert torch.equal(default, out)
    if torch.cuda.is_available():
        assert stoker.preprocess_batch(images, spec, pin_memory=True).is_pinned()
        assert default.is_pinned()
    else:
        with pytest.raises((RuntimeError, ValueError)):
            stoker.preprocess_batch(images, spec, pin_memory=True)


# --------------------------------------------------------------------------------------------
# Async


def test_async_returns_future_with_sync_result() -> None:
    spec = _spec()
    images = _images()
    fut = stoker.preprocess_batch_async(images, spec)
    assert isinstance(fut, concurrent.futures.Future)
    result = fut.result(timeout=60)
    assert torch.equal(result, stoker.preprocess_batch(images, spec))


def test_async_out_and_error() -> None:
    spec = _spec()
    images = _images()
    out = torch.zeros((len(images), *spec.item_shape))
    got = stoker.preprocess_batch_async(images, spec, out=out).result(timeout=60)
    assert got.data_ptr() == out.data_ptr()
    assert torch.equal(out, stoker.preprocess_batch(images, spec))

    fut = stoker.preprocess_batch_async([images[0], b"", b"junk"], spec)
    exc = fut.exception(timeout=60)
    assert isinstance(exc, stoker.BatchError)
    assert set(exc.errors) == {1, 2}
    assert torch.equal(exc.output[0], stoker.preprocess_batch([images[0]], spec)[0])


def test_async_many_concurrent_batches_from_threads() -> None:
    spec = _spec()
    all_images = _images(6)
    batches = [all_images[i % 6 :] + all_images[: i % 6] for i in range(24)]
    want = [stoker.preprocess_batch(b, spec) for b in batches]
    barrier = threading.Barrier(4)

    def worker(k: int) -> list[torch.Tensor]:
        barrier.wait()
        futs = [stoker.preprocess_batch_async(b, spec) for b in batches[k::4]]
        return [f.result(timeout=120) for f in futs]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(worker, range(4)))
    for k in range(4):
        for j, got in enumerate(results[k]):
            assert torch.equal(got, want[k + 4 * j]), f"thread {k} batch {j}"


def test_async_from_asyncio() -> None:
    spec = _spec(dtype="float16")
    images = _images()
    batches = [images[i:] + images[:i] for i in range(6)] * 3
    want = [stoker.preprocess_batch(b, spec) for b in batches]

    async def main() -> list[torch.Tensor]:
        futs = [asyncio.wrap_future(stoker.preprocess_batch_async(b, spec)) for b in batches]
        return list(await asyncio.gather(*futs))

    got = asyncio.run(main())
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)


def test_async_error_from_asyncio() -> None:
    spec = _spec()

    async def main() -> None:
        await asyncio.wrap_future(stoker.preprocess_batch_async([b""], spec))

    with pytest.raises(stoker.BatchError):
        asyncio.run(main())


def test_sync_calls_from_many_threads() -> None:
    spec = _spec(interpolation="bicubic")
    images = _images()
    want = stoker.preprocess_batch(images, spec)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: stoker.preprocess_batch(images, spec), range(24)))
    for r in results:
        assert torch.equal(r, want)


# --------------------------------------------------------------------------------------------
# Thread pool


def test_num_threads_round_trip_and_same_results(restore_num_threads: int) -> None:
    assert restore_num_threads >= 1
    spec = _spec(interpolation="bicubic")
    images = _images(6) * 3
    stoker.set_num_threads(1)
    assert stoker.get_num_threads() == 1
    one = stoker.preprocess_batch(images, spec)
    for n in (2, 3, 8):
        stoker.set_num_threads(n)
        assert stoker.get_num_threads() == n
        assert torch.equal(stoker.preprocess_batch(images, spec), one), f"{n} threads"
        assert torch.equal(stoker.preprocess_batch_async(images, spec).result(timeout=60), one)
    for i, data in enumerate(images):
        assert torch.equal(one[i], stoker.preprocess_batch([data], spec)[0])


def _num_threads_in_fresh_process(env_value: str | None) -> int:
    env = {k: v for k, v in os.environ.items() if k != "STOKER_NUM_THREADS"}
    if env_value is not None:
        env["STOKER_NUM_THREADS"] = env_value
    proc = subprocess.run(
        [sys.executable, "-c", "import stoker; print(stoker.get_num_threads())"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return int(proc.stdout.strip())


def test_default_num_threads() -> None:
    """Default: the CPUs this process may run on, or STOKER_NUM_THREADS."""
    assert _num_threads_in_fresh_process(None) == len(os.sched_getaffinity(0))
    assert _num_threads_in_fresh_process("3") == 3


def test_set_num_threads_invalid(restore_num_threads: int) -> None:
    for bad in (0, -1):
        with pytest.raises((ValueError, TypeError, OverflowError)):
            stoker.set_num_threads(bad)
    assert stoker.get_num_threads() == restore_num_threads


def _pool_niceness() -> list[int]:
    """The nice value of each native pool worker (Linux keeps one per thread)."""
    tasks = Path("/proc/self/task")
    return [
        os.getpriority(os.PRIO_PROCESS, int(t.name))
        for t in tasks.iterdir()
        if (t / "comm").read_text().strip() == "stoker-pool"
    ]


def test_thread_niceness_lowers_only_the_pool(restore_num_threads: int) -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)
    spec = _spec()
    images = _images(6)
    expected = stoker.preprocess_batch(images, spec)
    try:
        stoker.set_thread_niceness(5)
        assert stoker.get_thread_niceness() == 5
        assert stoker.get_num_threads() == restore_num_threads
        assert set(_pool_niceness()) == {min(base + 5, 19)}
        assert len(_pool_niceness()) == restore_num_threads
        assert os.getpriority(os.PRIO_PROCESS, 0) == base  # the caller keeps its priority
        assert torch.equal(stoker.preprocess_batch(images, spec), expected)
        stoker.set_num_threads(3)  # a resized pool keeps the niceness
        assert stoker.get_thread_niceness() == 5 and set(_pool_niceness()) == {min(base + 5, 19)}
        for bad in (-1, 20):
            with pytest.raises(ValueError, match="niceness"):
                stoker.set_thread_niceness(bad)
        assert stoker.get_thread_niceness() == 5 and stoker.get_num_threads() == 3
    finally:
        stoker.set_thread_niceness(0)
    assert set(_pool_niceness()) == {base}


# --------------------------------------------------------------------------------------------
# image_info and decode


def test_image_info_values() -> None:
    rgb = pixels(70, 110, 5)
    jpeg = jpeg_rgb(70, 110, 5)
    assert stoker.image_info(jpeg) == stoker.ImageInfo("jpeg", 110, 70, 1)
    info = stoker.image_info(png_rgb(70, 110, 5))
    assert (info.format, info.width, info.height, info.orientation) == ("png", 110, 70, 1)
    for lossless in (False, True) if HAS_WEBP else ():
        info = stoker.image_info(encode_webp(rgb, lossless=lossless))
        assert (info.format, info.width, info.height, info.orientation) == ("webp", 110, 70, 1)


def test_image_info_reads_only_the_header() -> None:
    """A file cut right after the header still has an image_info (decode fails on it)."""
    png = png_rgb(70, 110, 5)
    head = png[:100]
    assert stoker.image_info(head) == stoker.ImageInfo("png", 110, 70, 1)
    with pytest.raises(stoker.CorruptImageError):
        stoker.decode(head)


def test_decode_matches_preprocess_without_resize() -> None:
    data = png_rgb(45, 61, 9)
    rgb = stoker.decode(data)
    assert rgb.shape == (45, 61, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb, pixels(45, 61, 9))
    spec = stoker.ImageSpec(size=None, crop=(45, 61), dtype="uint8", layout="NHWC")
    assert np.array_equal(stoker.preprocess_batch_numpy([data], spec)[0], rgb)
    spec = stoker.ImageSpec(size=30, crop=20, mean=(0.1, 0.2, 0.3), std=(0.3, 0.2, 0.1))
    assert_matches_reference(stoker.preprocess_batch([data], spec)[0], rgb, spec)
