"""Batch preprocessing entry points: one native call per batch, GIL released while it runs."""

from __future__ import annotations

import atexit
import functools
from collections.abc import Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import numpy.typing as npt

from stoker import _native
from stoker._errors import BatchError, ImageError, image_error, translate_native
from stoker._spec import ImageSpec

if TYPE_CHECKING:
    import torch

__all__ = [
    "SUPPORTED_FORMATS",
    "ImageInfo",
    "decode",
    "get_num_threads",
    "get_thread_niceness",
    "image_info",
    "preprocess_batch",
    "preprocess_batch_async",
    "preprocess_batch_numpy",
    "set_num_threads",
    "set_thread_niceness",
]

SUPPORTED_FORMATS: tuple[str, ...] = tuple(_native.supported_formats())
"""Image formats this build decodes (WebP is optional at build time)."""

_DEFAULT_SPEC = ImageSpec()
_DEFAULT_MAX_PIXELS = _DEFAULT_SPEC.max_pixels

# Completions call back into Python from native workers; none may still run during shutdown.
atexit.register(_native.wait_idle)


class ImageInfo(NamedTuple):
    format: str
    width: int
    height: int
    orientation: int


def _items(images: Sequence[Any]) -> Sequence[Any]:
    if isinstance(images, (bytes, bytearray, memoryview, str)):
        raise TypeError("images must be a sequence of encoded images, not a single one")
    return images if isinstance(images, (list, tuple)) else list(images)


def _torch() -> Any:
    try:
        import torch
    except ImportError as e:  # torch is optional for the numpy API
        raise ImportError("preprocess_batch needs torch; use preprocess_batch_numpy") from e
    return torch


@functools.cache
def _cuda_runtime_path() -> str | None:
    """Path of the CUDA runtime library torch loaded, when torch sees a GPU."""
    torch = _torch()
    if not torch.cuda.is_available():
        return None
    # torch answers is_pinned() and plans async copies only once it has initialized CUDA itself.
    torch.cuda.init()
    found = loaded_libraries("libcudart")
    return found[0] if found else None


def loaded_libraries(name: str) -> list[str]:
    """Paths of the shared libraries this process has mapped whose file name starts with
    ``name``."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.rsplit(" ", 1)[-1].strip() for line in maps}
    except OSError:
        return []
    return sorted(p for p in paths if f"/{name}" in p)


def _pinned(pin_memory: bool | None, out: Any) -> bool:
    if out is not None or pin_memory is False:
        return False
    if not _native.pinning_enabled():
        path = _cuda_runtime_path()
        if path is None:
            if pin_memory:
                raise RuntimeError("pin_memory=True needs a CUDA build of torch with a GPU")
            return False
        _native.enable_pinning(path)
    return True


def enable_pinning() -> bool:
    """Page-lock arena blocks through the CUDA runtime torch loaded; False where there is none."""
    return _pinned(None, None)


def _failures(errors: list[tuple[int, str, str]], output: Any) -> BatchError | None:
    if not errors:
        return None
    failed: dict[int, ImageError] = {i: image_error(k, m, i) for i, k, m in errors}
    return BatchError(failed, output)


def preprocess_batch(
    images: Sequence[Any],
    spec: ImageSpec = _DEFAULT_SPEC,
    *,
    out: torch.Tensor | None = None,
    pin_memory: bool | None = None,
) -> torch.Tensor:
    """Decode, resize, crop and normalize a batch of encoded images into one tensor."""
    torch = _torch()
    pinned = _pinned(pin_memory, out)
    array, errors = _native.run_batch(spec._native, _items(images), out, pinned)
    result = out if out is not None else torch.from_dlpack(array)
    failure = _failures(errors, result)
    if failure is not None:
        raise failure
    return result


def preprocess_batch_numpy(
    images: Sequence[Any],
    spec: ImageSpec = _DEFAULT_SPEC,
    *,
    out: npt.NDArray[Any] | None = None,
) -> npt.NDArray[Any]:
    """preprocess_batch without torch: returns a numpy array (no bfloat16)."""
    if spec.dtype == "bfloat16":
        raise ValueError("numpy has no bfloat16; use preprocess_batch or another dtype")
    array, errors = _native.run_batch(spec._native, _items(images), out, False, numpy=True)
    result: npt.NDArray[Any] = out if out is not None else np.asarray(array)
    failure = _failures(errors, result)
    if failure is not None:
        raise failure
    return result


def preprocess_batch_async(
    images: Sequence[Any],
    spec: ImageSpec = _DEFAULT_SPEC,
    *,
    out: torch.Tensor | None = None,
    pin_memory: bool | None = None,
) -> Future[torch.Tensor]:
    """Start a batch and return at once; the future completes from a native worker.

    From asyncio: ``await asyncio.wrap_future(fut)``. Keep the inputs unmodified until it is done.
    """
    torch_ = _torch()
    pinned = _pinned(pin_memory, out)
    future: Future[torch.Tensor] = Future()
    future.set_running_or_notify_cancel()

    def complete(array: Any, errors: list[tuple[int, str, str]]) -> None:
        try:
            result = out if out is not None else torch_.from_dlpack(array)
            failure = _failures(errors, result)
        except BaseException as e:
            future.set_exception(e)
            return
        if failure is not None:
            future.set_exception(failure)
        else:
            future.set_result(result)

    _native.submit_batch(spec._native, _items(images), out, pinned, complete)
    return future


def decode(
    data: bytes | bytearray | memoryview, *, max_pixels: int = _DEFAULT_MAX_PIXELS
) -> npt.NDArray[np.uint8]:
    """Decode one image to (H, W, 3) uint8 RGB, EXIF orientation applied, no resize."""
    try:
        return np.asarray(_native.decode(bytes(data), max_pixels))
    except ValueError as e:
        raise translate_native(e) from None


def image_info(
    data: bytes | bytearray | memoryview, *, max_pixels: int = _DEFAULT_MAX_PIXELS
) -> ImageInfo:
    """Format, oriented width and height, and EXIF orientation, from the header alone."""
    try:
        return ImageInfo(*_native.image_info(bytes(data), max_pixels))
    except ValueError as e:
        raise translate_native(e) from None


def set_num_threads(n: int) -> None:
    """Resize the native worker pool (waits for running batches)."""
    _native.set_num_threads(n)


def get_num_threads() -> int:
    """Size of the native worker pool."""
    return int(_native.get_num_threads())


def set_thread_niceness(niceness: int) -> None:
    """Run the native worker pool ``niceness`` nice levels (0..19) below the calling thread.

    Where the same cores run the pool's batch work and Python threads that feed a GPU (the
    engine's device and GPU-decode threads, the callers' event loop), a positive value lets those
    threads win a core at once instead of waiting for a worker's time slice. Rebuilds the pool
    (waits for running batches); ValueError outside 0..19.
    """
    _native.set_thread_niceness(niceness)


def get_thread_niceness() -> int:
    """How many nice levels the native worker pool runs below the thread that made it."""
    return int(_native.get_thread_niceness())
