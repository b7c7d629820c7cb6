"""JPEG decode on the GPU through stoker's own nvJPEG binding.

nvJPEG is loaded at run time from wherever the CUDA stack of this process lives (torch's CUDA
wheels, torchvision's bundled copy, the CUDA toolkit); stoker neither links it nor needs it to
build. On GPUs with JPEG engines (A100, H100, H200) the hardware backend decodes without taking
SMs from the model. One decoder serves one device: several engines on several GPUs each hold
their own, unlike torchvision's decode, which keeps one decoder for the whole process and
rebuilds it whenever the device changes.
"""

from __future__ import annotations

import functools
import glob
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any

import torch

from stoker import _native
from stoker._buffers import byte_view
from stoker._errors import ImageError, image_error
from stoker._preprocess import decode, loaded_libraries

__all__ = ["NvJpeg", "library_candidates"]

Payload = bytes | bytearray | memoryview

# Images per batched nvJPEG call: the native decoder's own cap, and the size measured on GPUs.
CALL_SIZE = 64


@functools.cache
def library_candidates() -> tuple[str, ...]:
    """nvJPEG libraries to try, best first: one this process loaded already, then those of the
    CUDA wheels and toolkit beside it, then the loader's own search by name."""
    found = loaded_libraries("libnvjpeg")
    for root in sys.path:
        found += sorted(glob.glob(os.path.join(root, "nvidia", "*", "lib", "libnvjpeg.so*")))
        found += sorted(glob.glob(os.path.join(root, "nvidia", "*", "*", "lib", "libnvjpeg.so*")))
        found += sorted(glob.glob(os.path.join(root, "torchvision.libs", "libnvjpeg*.so*")))
    for cudart in loaded_libraries("libcudart"):
        found += sorted(glob.glob(os.path.join(os.path.dirname(cudart), "libnvjpeg.so*")))
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    found += sorted(glob.glob(os.path.join(cuda_home, "lib64", "libnvjpeg.so*")))
    found += ["libnvjpeg.so.13", "libnvjpeg.so.12", "libnvjpeg.so.11", "libnvjpeg.so"]
    return tuple(dict.fromkeys(found))


class NvJpeg:
    """Batched JPEG decode on one CUDA device to (3, H, W) uint8 RGB tensors.

    ``backend``: "auto" (the JPEG engines where the GPU has them, else the SMs), "hardware" or
    "cuda". Images nvJPEG's batched decoder does not take (progressive ones on the JPEG engines,
    say) are decoded on the CPU and uploaded, so every valid JPEG decodes.
    """

    name = "nvjpeg"

    def __init__(
        self, device: torch.device | str, backend: str = "auto", max_pixels: int = 50_000_000
    ) -> None:
        device = torch.device(device)
        if device.type != "cuda" or not torch.cuda.is_available():
            raise ValueError(f"nvJPEG needs a CUDA device, got {device}")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = device
        self._backend = backend
        self._max_pixels = max_pixels
        # A handle per thread, made on the thread that decodes with it: on a two-GPU host,
        # handles made on one thread and used on another failed with allocator errors.
        self._local = threading.local()
        self._native = self._decoder()

    def _decoder(self) -> Any:
        native = getattr(self._local, "native", None)
        if native is None:
            with torch.cuda.device(self.device):
                native = _native.NvJpegDecoder(
                    self._backend, list(library_candidates()), self._max_pixels
                )
            self._local.native = native
        return native

    @property
    def hardware(self) -> bool:
        """Whether the GPU's JPEG engines decode (not the SMs)."""
        return bool(self._native.hardware)

    @property
    def library(self) -> str:
        return str(self._native.library)

    def decode(
        self, payloads: Sequence[Payload]
    ) -> tuple[list[torch.Tensor | None], dict[int, Exception]]:
        """Decode on the current stream of the device; None and an error where an item failed.

        The images are views of one allocation made on that stream; the payloads are read
        during the call only.
        """
        images: list[torch.Tensor | None] = [None] * len(payloads)
        errors: dict[int, Exception] = {}
        views: dict[int, memoryview] = {}
        for i, payload in enumerate(payloads):
            try:
                views[i] = byte_view(payload)
            except (TypeError, ValueError) as e:
                errors[i] = e
        order = list(views)
        native = self._decoder()
        headers = native.inspect([views[i] for i in order])
        batched: list[int] = []
        sizes: list[int] = []  # output bytes of the batched ones
        on_cpu: list[int] = []
        for i, (width, height, takes, error) in zip(order, headers, strict=True):
            if error:
                errors[i] = image_error("corrupt", error)
            elif takes:
                batched.append(i)
                sizes.append(3 * width * height)
            else:
                on_cpu.append(i)
        with torch.cuda.device(self.device):
            for start in range(0, len(batched), CALL_SIZE):
                which = batched[start : start + CALL_SIZE]
                need = sum(sizes[start : start + CALL_SIZE])
                self._decode_batched(native, [views[i] for i in which], need, which, images, errors)
            for i in on_cpu:
                try:
                    rgb = decode(views[i], max_pixels=self._max_pixels)
                except ImageError as e:
                    errors[i] = e
                    continue
                host = torch.from_numpy(rgb).pin_memory()
                images[i] = host.to(self.device, non_blocking=True).permute(2, 0, 1).contiguous()
        return images, errors

    def _decode_batched(
        self,
        native: Any,
        items: list[memoryview],
        need: int,
        which: list[int],
        images: list[torch.Tensor | None],
        errors: dict[int, Exception],
    ) -> None:
        # The native decode reads the headers again and refuses an output too small for them.
        out = torch.empty(max(need, 1), dtype=torch.uint8, device=self.device)
        current = torch.cuda.current_stream(self.device)
        if native.hardware:
            # Two behaviours of the JPEG engines, seen on H100s, make the host wait for the
            # stream first: they write the output when the call is made, not in stream order
            # (`out` may be a block whose last readers are still queued here), and a batched call
            # made while the previous one is still queued behind other GPU work hangs the device.
            current.synchronize()
        results = native.decode(items, out.data_ptr(), out.numel(), current.cuda_stream)
        for i, (width, height, offset, error) in zip(which, results, strict=True):
            if error:
                errors[i] = image_error("corrupt", error)
            else:
                size = 3 * width * height
                images[i] = out[offset : offset + size].view(3, height, width)
