"""GPU decode of part of each batch: nvJPEG (stoker's binding or torchvision's), then the batched
Triton resize.

The native feeder leaves a share of the GPU-friendly JPEGs undecoded. A decode thread of their own
runs nvJPEG on them (on a stream of its own) ahead of the device thread, which then only resizes
the decoded images into their rows of the landing buffer: nvJPEG's host work (headers, the
hardware engines' setup) stays off the thread that launches the model. The share follows the
measured rates of the two paths, so that both finish a batch at about the same time.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from stoker._spec import ImageSpec

__all__ = [
    "DecodeAhead",
    "Decoded",
    "GpuDecoder",
    "SharePolicy",
    "check_share",
    "gpu_decode_setup",
]

Payload = bytes | memoryview


@dataclass
class Decoded:
    """A batch's deferred images, decoded on the device (None where an image failed)."""

    images: list[torch.Tensor | None]
    errors: dict[int, Exception]  # by position in the deferred rows
    ready: torch.cuda.Event | None = None
    host_us: float = 0.0
    keep: list[Any] = field(default_factory=list)


class GpuDecoder:
    """Decodes JPEG payloads on ``device`` and resizes them into rows of a uint8 NHWC batch."""

    def __init__(self, spec: ImageSpec, device: torch.device) -> None:
        from stoker._gpu_decode import open_jpeg_decoder
        from stoker._gpu_resize import HAS_TRITON

        if not HAS_TRITON:
            raise ValueError("GPU decode needs triton for the batched resize")
        self._jpeg = open_jpeg_decoder(device, spec.max_pixels)
        self._spec = spec
        self._device = device
        self._local = threading.local()

    @property
    def _stream(self) -> torch.cuda.Stream | None:
        """This thread's decode stream: the JPEG engines' calls wait for their own stream before
        they start, and must not wait for another thread's decodes. A high priority: the
        decode's few short kernels run between the model's kernels, not after a batch of them."""
        if self._device.type != "cuda":
            return None
        stream = getattr(self._local, "stream", None)
        if stream is None:
            stream = torch.cuda.Stream(self._device, priority=-1)  # type: ignore[no-untyped-call]
            self._local.stream = stream
        return stream

    @property
    def name(self) -> str:
        """Which decoder runs: "nvjpeg-hardware", "nvjpeg-cuda" or "torchvision"."""
        hardware = getattr(self._jpeg, "hardware", None)
        if hardware is None:
            return self._jpeg.name
        return f"{self._jpeg.name}-{'hardware' if hardware else 'cuda'}"

    def decode(self, payloads: Sequence[Payload]) -> Decoded:
        """nvJPEG on the decoder's own stream; ``ready`` marks the end of its device work."""
        start = time.perf_counter_ns()
        stream = self._stream
        if stream is None:
            images, errors = self._jpeg.decode(payloads)
            return Decoded(images, errors, None, (time.perf_counter_ns() - start) / 1000)
        with torch.cuda.stream(stream):
            images, errors = self._jpeg.decode(payloads)
            ready = torch.cuda.Event()  # type: ignore[no-untyped-call]
            ready.record()
        return Decoded(images, errors, ready, (time.perf_counter_ns() - start) / 1000)

    def place(
        self, landing: torch.Tensor, rows: Sequence[int], decoded: Decoded
    ) -> dict[int, Exception]:
        """Resizes the decoded images into ``landing[rows]`` on the current stream."""
        from stoker._gpu_resize import resize_into

        if decoded.ready is not None:
            torch.cuda.current_stream().wait_event(decoded.ready)
        kept = [
            (row, img) for row, img in zip(rows, decoded.images, strict=True) if img is not None
        ]
        if kept:
            resize_into([img for _, img in kept], landing, [row for row, _ in kept], self._spec)
        # The images were made on the decode stream; the allocator must not reuse them before
        # the resize has read them, so the flight holds them until its batch completes.
        decoded.keep = [img for _, img in kept]
        return {rows[i]: e for i, e in decoded.errors.items()}

    def __call__(
        self, landing: torch.Tensor, rows: Sequence[int], payloads: Sequence[Payload]
    ) -> dict[int, Exception]:
        """Decode and place in one call."""
        return self.place(landing, rows, self.decode(payloads))


class DecodeAhead:
    """Takes prepared batches from the feeder and GPU-decodes their deferred rows on threads of
    their own, ahead of the device thread. Each thread decodes a whole batch: a decode call
    waits for its device work, so one thread alone would leave the JPEG engines idle between
    calls. Batches may reach the device thread out of order; each carries its own requests."""

    def __init__(
        self,
        feeder: Any,
        decoder: GpuDecoder,
        payload: Callable[[int], Payload],
        workers: int = 2,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self._feeder = feeder
        self._decoder = decoder
        self._payload = payload
        self.workers = workers
        # One decoded batch waiting per worker is enough to hide the decode; more would only
        # hold staging slots.
        self._ready: queue.Queue[tuple[Any, Decoded | Exception | None] | None] = queue.Queue(
            workers
        )
        self._lock = threading.Lock()
        self._running = workers
        self.threads = [
            threading.Thread(target=self._loop, name=f"stoker-decode-{k}", daemon=True)
            for k in range(workers)
        ]

    def next(self) -> tuple[Any, Decoded | Exception | None] | None:
        return self._ready.get()

    def _loop(self) -> None:
        while (batch := self._feeder.next()) is not None:
            decoded: Decoded | Exception | None = None
            if len(batch.deferred):
                try:
                    ids = batch.ids
                    decoded = self._decoder.decode(
                        [self._payload(int(ids[r])) for r in batch.deferred]
                    )
                except Exception as e:  # the device thread fails this batch alone
                    decoded = e
            self._ready.put((batch, decoded))
        with self._lock:
            self._running -= 1
            last = self._running == 0
        if last:  # the end mark goes after every worker's last batch
            self._ready.put(None)


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


def check_share(gpu_decode: object) -> None:
    """Refuses a ``gpu_decode`` setting that is neither None, "auto" nor a share in [0, 1]."""
    if gpu_decode is None or gpu_decode == "auto":
        return
    is_number = isinstance(gpu_decode, (int, float)) and not isinstance(gpu_decode, bool)
    if is_number and 0.0 <= gpu_decode <= 1.0:  # type: ignore[operator]
        return
    raise ValueError(f"gpu_decode must be a share in [0, 1] or 'auto', got {gpu_decode!r}")


def gpu_decode_setup(
    gpu_decode: float | str | None, spec: ImageSpec, device: torch.device, feeder: Any
) -> tuple[GpuDecoder | None, SharePolicy | None]:
    """The decoder for ``gpu_decode`` and, for "auto", the policy that steers the share."""
    if gpu_decode is None:
        return None, None
    if device.type != "cuda":
        raise ValueError("gpu_decode needs a CUDA device")
    decoder = GpuDecoder(spec, device)
    if gpu_decode == "auto":
        feeder.set_gpu_share(0.25)
        return decoder, SharePolicy(initial=0.25)
    feeder.set_gpu_share(float(gpu_decode))
    return decoder, None
