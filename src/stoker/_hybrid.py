"""GPU decode of part of each batch: nvJPEG through torchvision, then the batched Triton resize.

The native feeder leaves a share of the GPU-friendly JPEGs undecoded; the device thread decodes
them on the GPU into their rows of the landing buffer. The share follows the measured rates of the
two paths, so that both finish a batch at about the same time.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from stoker._spec import ImageSpec

__all__ = ["GpuDecoder", "SharePolicy"]


class GpuDecoder:
    """Decodes JPEG payloads on ``device`` and resizes them into rows of a uint8 NHWC batch."""

    def __init__(self, spec: ImageSpec, device: torch.device) -> None:
        from stoker._gpu_decode import gpu_decode_available
        from stoker._gpu_resize import HAS_TRITON

        if not HAS_TRITON:
            raise ValueError("GPU decode needs triton for the batched resize")
        if not gpu_decode_available(device):
            raise ValueError(f"GPU decode is not available on {device} (torchvision with nvJPEG)")
        self._spec = spec
        self._device = device

    def __call__(
        self, landing: torch.Tensor, rows: Sequence[int], payloads: Sequence[bytes | memoryview]
    ) -> dict[int, Exception]:
        from stoker._gpu_decode import decode_jpegs
        from stoker._gpu_resize import resize_into

        images, errors = decode_jpegs(payloads, self._device)
        kept = [(row, img) for row, img in zip(rows, images, strict=True) if img is not None]
        if kept:
            resize_into([img for _, img in kept], landing, [row for row, _ in kept], self._spec)
        return {rows[i]: e for i, e in errors.items()}


class SharePolicy:
    """The GPU's share of decodable images: its rate over the sum of both rates, smoothed."""

    def __init__(self, initial: float, smoothing: float = 0.2, cap: float = 0.9) -> None:
        self.share = initial
        self._smoothing = smoothing
        self._cap = cap

    def update(self, cpu_items: int, cpu_us: float, gpu_items: int, gpu_us: float) -> float:
        if cpu_items == 0 or gpu_items == 0 or cpu_us <= 0 or gpu_us <= 0:
            return self.share
        cpu_rate = cpu_items / cpu_us
        gpu_rate = gpu_items / gpu_us
        target = min(self._cap, gpu_rate / (cpu_rate + gpu_rate))
        self.share += self._smoothing * (target - self.share)
        return self.share
