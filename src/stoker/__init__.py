"""stoker: a native data plane that keeps the GPU fed.

Images in, batched tensors out: decoding, resizing, cropping and normalization run in C++ on a
GIL-free thread pool, and tensors leave through DLPack without copies.
"""

from stoker._engine import Engine
from stoker._errors import (
    BatchError,
    CorruptImageError,
    DeadlineExceededError,
    DeviceMemoryError,
    EmptyImageError,
    EngineClosedError,
    EngineError,
    ImageError,
    ImageTooLargeError,
    QueueFullError,
    UnsupportedImageError,
)
from stoker._models import top_k
from stoker._preprocess import (
    SUPPORTED_FORMATS,
    ImageInfo,
    decode,
    get_num_threads,
    image_info,
    preprocess_batch,
    preprocess_batch_async,
    preprocess_batch_numpy,
    set_num_threads,
)
from stoker._spec import IMAGENET_MEAN, IMAGENET_STD, ImageSpec
from stoker._stats import STAGES, HistogramSnapshot, Timings

__version__ = "0.1.0"

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "STAGES",
    "SUPPORTED_FORMATS",
    "BatchError",
    "CorruptImageError",
    "DeadlineExceededError",
    "DeviceMemoryError",
    "EmptyImageError",
    "Engine",
    "EngineClosedError",
    "EngineError",
    "HistogramSnapshot",
    "ImageError",
    "ImageInfo",
    "ImageSpec",
    "ImageTooLargeError",
    "QueueFullError",
    "Timings",
    "UnsupportedImageError",
    "decode",
    "get_num_threads",
    "image_info",
    "preprocess_batch",
    "preprocess_batch_async",
    "preprocess_batch_numpy",
    "set_num_threads",
    "top_k",
]
