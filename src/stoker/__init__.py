"""stoker: a native data plane that keeps the GPU fed.

Images in, batched tensors out: decoding, resizing, cropping and normalization run in C++ on a
GIL-free thread pool, and tensors leave through DLPack without copies.
"""

import os

# CUDA spreads a process's streams over 8 hardware queues unless told otherwise; nvJPEG's streams
# then share a queue with the model's, and every GPU decode waits behind a whole model batch (on
# an H100 under ResNet-50: 1,265 JPEGs/s with 8 queues, 15,684 with 32). CUDA reads this when it
# starts, so it is set here, before any use of the GPU, and only where the user has not chosen.
os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "32")

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
    get_thread_niceness,
    image_info,
    preprocess_batch,
    preprocess_batch_async,
    preprocess_batch_numpy,
    set_num_threads,
    set_thread_niceness,
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
    "get_thread_niceness",
    "image_info",
    "preprocess_batch",
    "preprocess_batch_async",
    "preprocess_batch_numpy",
    "set_num_threads",
    "set_thread_niceness",
    "top_k",
]
