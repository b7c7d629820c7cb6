"""stoker: a native data plane that keeps the GPU fed.

Images in, batched tensors out: decoding, resizing, cropping and normalization run in C++ on a
GIL-free thread pool, and tensors leave through DLPack without copies.
"""

from stoker._errors import (
    BatchError,
    CorruptImageError,
    EmptyImageError,
    ImageError,
    ImageTooLargeError,
    UnsupportedImageError,
)
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

__version__ = "0.1.0"

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SUPPORTED_FORMATS",
    "BatchError",
    "CorruptImageError",
    "EmptyImageError",
    "ImageError",
    "ImageInfo",
    "ImageSpec",
    "ImageTooLargeError",
    "UnsupportedImageError",
    "decode",
    "get_num_threads",
    "image_info",
    "preprocess_batch",
    "preprocess_batch_async",
    "preprocess_batch_numpy",
    "set_num_threads",
]
