"""JPEG decode on the GPU for the hybrid decode path: torchvision's, or stoker's own nvJPEG binding.

The GPU takes only JPEGs it decodes the way the CPU path would; the native feeder picks them with
`_native.jpeg_gpu_friendly`, a look at the marker segments before the first scan.

``STOKER_GPU_DECODER`` picks the decoder. ``nvjpeg`` is stoker's binding (`stoker._nvjpeg`): the
GPU's JPEG engines, one decoder per device. ``torchvision`` runs nvJPEG through torchvision; it
keeps one decoder per process, so it serves one GPU well and several GPUs in one process badly
(it rebuilds its decoder at every change of device). ``auto`` (the default) takes stoker's
binding where nvJPEG loads, else torchvision's. torchvision is optional and imported only when
its decode is asked for.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Sequence
from typing import Any, Protocol

import torch

from stoker._buffers import byte_view

__all__ = ["JpegDecoder", "decode_jpegs", "gpu_decode_available", "open_jpeg_decoder"]

DECODERS = ("auto", "nvjpeg", "torchvision")

Payload = bytes | bytearray | memoryview


def _torchvision_io() -> Any:
    try:
        import torchvision.io
    except ImportError as e:  # optional: only the GPU decode path needs it
        raise RuntimeError("GPU JPEG decode requires torchvision") from e
    return torchvision.io


@functools.cache
def _probe(device: torch.device) -> bool:
    try:
        io = _torchvision_io()
        tiny = io.encode_jpeg(torch.zeros((3, 8, 8), dtype=torch.uint8))
        got = io.decode_jpeg([tiny], device=device, mode=io.ImageReadMode.RGB)
        return bool(got[0].shape == (3, 8, 8) and got[0].device.type == "cuda")
    except Exception:  # any failure means "use the CPU path"; the probe must never raise
        return False


def gpu_decode_available(device: torch.device | str) -> bool:
    """True when torchvision is importable, `device` is CUDA and a tiny JPEG decodes on it."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return _probe(device)


def _as_tensor(payload: Payload) -> torch.Tensor:
    view = byte_view(payload)
    if len(view) == 0:
        raise ValueError("empty image data")
    with warnings.catch_warnings():
        # decode only reads the buffer, so torch's warning about read-only memory does not apply.
        warnings.simplefilter("ignore", UserWarning)
        return torch.frombuffer(view, dtype=torch.uint8)


def decode_jpegs(
    payloads: Sequence[Payload], device: torch.device | str
) -> tuple[list[torch.Tensor | None], dict[int, Exception]]:
    """Decode JPEG payloads on `device` to (3, H, W) uint8 RGB tensors in one batched call.

    Returns the decoded images, None in the slot of each failed item, and the failures by index.
    The payloads are wrapped without copying and must stay unmodified until this returns. When the
    batched call fails, items are decoded one by one so that a corrupt image fails alone.
    """
    io = _torchvision_io()
    device = torch.device(device)
    images: list[torch.Tensor | None] = [None] * len(payloads)
    errors: dict[int, Exception] = {}
    tensors: dict[int, torch.Tensor] = {}
    for i, payload in enumerate(payloads):
        try:
            tensors[i] = _as_tensor(payload)
        except (ValueError, TypeError) as e:
            errors[i] = e
    if not tensors:
        return images, errors
    order = list(tensors)
    try:
        decoded = io.decode_jpeg(
            [tensors[i] for i in order], device=device, mode=io.ImageReadMode.RGB
        )
    except Exception:  # one bad item fails the whole batched call: retry item by item
        for i in order:
            try:
                images[i] = io.decode_jpeg(tensors[i], device=device, mode=io.ImageReadMode.RGB)
            except Exception as e:  # reported per item, like the CPU path's BatchError entries
                errors[i] = e
        return images, errors
    for i, image in zip(order, decoded, strict=True):
        images[i] = image
    return images, errors


class JpegDecoder(Protocol):
    """Batched GPU JPEG decode: (3, H, W) uint8 tensors, None and an error where an item failed."""

    name: str

    def decode(
        self, payloads: Sequence[Payload]
    ) -> tuple[list[torch.Tensor | None], dict[int, Exception]]: ...


class TorchvisionDecoder:
    name = "torchvision"

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def decode(
        self, payloads: Sequence[Payload]
    ) -> tuple[list[torch.Tensor | None], dict[int, Exception]]:
        return decode_jpegs(payloads, self.device)


def open_jpeg_decoder(
    device: torch.device, max_pixels: int, kind: str | None = None
) -> JpegDecoder:
    """The GPU JPEG decoder for ``device``: ``kind``, else ``STOKER_GPU_DECODER``, else "auto".
    ValueError names why none is available."""
    kind = kind or os.environ.get("STOKER_GPU_DECODER", "auto")
    if kind not in DECODERS:
        raise ValueError(f"the GPU decoder must be one of {', '.join(DECODERS)}, got {kind!r}")
    reasons = []
    if kind == "nvjpeg" and device.type != "cuda":
        raise ValueError(f"GPU decode is not available on {device} (nvJPEG needs CUDA)")
    if kind in ("auto", "nvjpeg") and device.type == "cuda":
        from stoker._nvjpeg import NvJpeg

        try:
            return NvJpeg(device, max_pixels=max_pixels)
        except RuntimeError as e:
            if kind == "nvjpeg":
                raise ValueError(f"GPU decode is not available on {device}: {e}") from e
            reasons.append(f"stoker's nvJPEG: {e}")
    if gpu_decode_available(device):
        return TorchvisionDecoder(device)
    reasons.append("torchvision with nvJPEG: not available")
    raise ValueError(f"GPU decode is not available on {device} ({'; '.join(reasons)})")
