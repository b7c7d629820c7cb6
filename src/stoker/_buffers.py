"""Borrowing bytes-like inputs without copying them."""

from __future__ import annotations

from typing import Any

__all__ = ["byte_view"]


def byte_view(data: Any) -> memoryview:
    """A flat unsigned-byte view of a contiguous buffer (bytes, bytearray, memoryview, array)."""
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(f"an image must be bytes-like, got {type(data).__name__}") from None
    if not view.c_contiguous:
        raise ValueError("an image buffer must be contiguous")
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")
