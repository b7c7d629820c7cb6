"""Exceptions for bad images and for batches with failed items."""

from __future__ import annotations

from typing import Any

__all__ = [
    "BatchError",
    "CorruptImageError",
    "DeadlineExceededError",
    "DeviceMemoryError",
    "EmptyImageError",
    "EngineClosedError",
    "EngineError",
    "ImageError",
    "ImageTooLargeError",
    "QueueFullError",
    "UnsupportedImageError",
]


class ImageError(ValueError):
    """One image could not be decoded; ``index`` is its position in the batch (None alone)."""

    def __init__(self, reason: str, index: int | None = None) -> None:
        self.reason = reason
        self.index = index
        super().__init__(reason if index is None else f"item {index}: {reason}")


class EmptyImageError(ImageError):
    """The input had no bytes."""


class UnsupportedImageError(ImageError):
    """Not JPEG, PNG or WebP, or a variant of them that is not supported (e.g. 12-bit JPEG)."""


class CorruptImageError(ImageError):
    """Malformed or truncated image data."""


class ImageTooLargeError(ImageError):
    """More pixels than the spec's ``max_pixels``."""


_KINDS: dict[str, type[ImageError]] = {
    "empty": EmptyImageError,
    "unsupported": UnsupportedImageError,
    "corrupt": CorruptImageError,
    "too_large": ImageTooLargeError,
}


def image_error(kind: str, message: str, index: int | None = None) -> ImageError:
    return _KINDS.get(kind, ImageError)(message, index)


def translate_native(error: ValueError) -> ImageError | ValueError:
    """Turns the native layer's ``ValueError("<kind>: <message>")`` into its ImageError."""
    kind, sep, message = str(error).partition(": ")
    if sep and (kind in _KINDS or kind == "internal"):
        return image_error(kind, message)
    return error


class BatchError(ValueError):
    """Some items of a batch failed; the others were processed.

    ``errors`` maps each failed index to its ImageError; ``output`` is the complete batch output,
    failed slots filled with the value a black pixel normalizes to.
    """

    def __init__(self, errors: dict[int, ImageError], output: Any) -> None:
        self.errors = errors
        self.output = output
        shown = "; ".join(str(e) for e in list(errors.values())[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        super().__init__(f"{len(errors)} image(s) failed: {shown}{more}")


class EngineError(RuntimeError):
    """A request the engine did not run."""


class QueueFullError(EngineError):
    """The engine's queue is at capacity; the request was rejected at once (HTTP 503)."""


class DeadlineExceededError(EngineError, TimeoutError):
    """The request's deadline passed while it waited; it was never run (HTTP 504)."""


class EngineClosedError(EngineError):
    """The engine is closed or closing and takes no more requests."""


class DeviceMemoryError(EngineError):
    """The device ran out of memory on this request's batch; the batch failed, the engine freed
    its cached memory and goes on, so a retry may succeed (HTTP 503)."""
