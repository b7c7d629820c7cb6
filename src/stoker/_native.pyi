"""stoker's native data plane"""

from collections.abc import Callable, Sequence

import numpy
from numpy.typing import NDArray

class Preprocessor:
    """A compiled ImageSpec: decode, resize, crop and normalize settings."""

    def __init__(
        self,
        resize_mode: str,
        resize_h: int,
        resize_w: int,
        crop: bool,
        crop_h: int,
        crop_w: int,
        interpolation: str,
        antialias: bool,
        normalize: bool,
        mean: Sequence[float],
        std: Sequence[float],
        layout: str,
        dtype: str,
        reduce_gap: float,
        max_pixels: int,
    ) -> None: ...
    @property
    def item_bytes(self) -> int: ...
    def batch_shape(self, n: int) -> list[int]: ...

def run_batch(
    pre: Preprocessor, items: object, out: object | None, pinned: bool, numpy: bool = False
) -> tuple[object, list[tuple[int, str, str]]]:
    """
    Preprocess a batch; returns (output or None when `out` was given, [(index, kind, message)]).
    """

def submit_batch(
    pre: Preprocessor, items: object, out: object | None, pinned: bool, callback: Callable
) -> None:
    """
    Start a batch; callback(output or None, errors) runs on a worker thread when it is done.
    """

def decode(data: bytes, max_pixels: int) -> NDArray[numpy.uint8]:
    """Decode one image to (H, W, 3) uint8 RGB with EXIF orientation applied."""

def image_info(data: bytes, max_pixels: int) -> tuple[str, int, int, int]:
    """(format, width, height, orientation) of one image from its header."""

def supported_formats() -> list[str]:
    """Formats this build decodes."""

def set_num_threads(n: int) -> None:
    """Resize the native worker pool (waits for running batches)."""

def get_num_threads() -> int:
    """Size of the native worker pool."""

def wait_idle() -> None:
    """Block until no batch is running."""

def enable_pinning(library: str) -> None:
    """Load the CUDA runtime at `library` to page-lock output buffers."""

def pinning_enabled() -> bool:
    """Whether output buffers can be page-locked."""

def arena_stats() -> dict:
    """Counters of the pooled output arena."""

def arena_trim() -> None:
    """Free every cached output buffer."""
