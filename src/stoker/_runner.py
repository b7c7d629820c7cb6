"""Device runners: the per-batch work between a prepared staging slot and the model's output.

``launch`` runs on the engine's device thread and must be done with the staging slot when it
returns (the slot goes back to the native ring); ``wait`` and ``postprocess`` run on the
completion thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from stoker._hybrid import Decoded, GpuDecoder
from stoker._normalize import normalize_hwc
from stoker._spec import ImageSpec

__all__ = ["TORCH_DTYPES", "CpuRunner", "CudaRunner", "Flight", "buckets_for", "image_buckets"]

log = logging.getLogger("stoker.engine")

TORCH_DTYPES = {
    "uint8": torch.uint8,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


@dataclass
class Flight:
    """A batch between its launch and its answer."""

    output: Any
    n: int
    h2d_us: float = 0.0
    compute_us: float = 0.0
    decode_us: float = 0.0  # GPU decode and resize on the device (CUDA events)
    decode_host_us: float = 0.0  # a decode thread's time on the batch's GPU-decoded images
    failed: dict[int, Exception] = field(default_factory=dict)
    events: tuple[torch.cuda.Event, ...] = ()
    keep: Any = None  # device memory the batch's kernels read, held until it completes


def buckets_for(max_batch_size: int, preferred: Sequence[int] | None) -> list[int]:
    """CUDA graph buckets: the preferred sizes, else powers of two, always with the maximum."""
    if preferred:
        sizes = set(preferred)
    else:
        sizes = {1 << i for i in range(max_batch_size.bit_length()) if 1 << i <= max_batch_size}
    sizes.add(max_batch_size)
    return sorted(sizes)


def image_buckets(max_batch_size: int, preferred: Sequence[int] | None) -> list[int]:
    """The image engine's CUDA graph buckets: the preferred sizes if any; else powers of two,
    and steps of a sixteenth of the maximum above half of it. Under load most batches fall a
    little short of the maximum, and padding them up to it would run the model on rows nobody
    sent."""
    sizes = set(buckets_for(max_batch_size, preferred))
    if not preferred:
        step = max(1, max_batch_size // 16)
        sizes.update(range(max_batch_size, max_batch_size // 2, -step))
    return sorted(sizes)


def _slot_tensor(flat: npt.NDArray[np.uint8], spec: ImageSpec, rows: int) -> torch.Tensor:
    data = torch.from_numpy(flat).view(TORCH_DTYPES[spec.dtype])
    return data.view(rows, *spec.item_shape)


def _detach_from(output: Any, source: torch.Tensor) -> Any:
    # A model that returns (a view of) its input would hand back staging memory that the next
    # batch overwrites.
    if isinstance(output, torch.Tensor) and (
        output.untyped_storage().data_ptr() == source.untyped_storage().data_ptr()
    ):
        return output.clone()
    return output


class CpuRunner:
    """Runs the model on the staging slot in place: the native spec is the model's input."""

    def __init__(
        self,
        model: Callable[[torch.Tensor], Any],
        spec: ImageSpec,
        slots: Sequence[npt.NDArray[np.uint8]],
        max_batch_size: int,
        dtype: torch.dtype | None,
        channels_last: bool,
    ) -> None:
        self._model = model
        self._views = [_slot_tensor(s, spec, max_batch_size) for s in slots]
        self._dtype = dtype
        self._channels_last = channels_last and spec.layout == "NCHW"

    def launch(self, slot: int, n: int, deferred: Sequence[int], decoded: Decoded | None) -> Flight:
        x = self._views[slot][:n]
        if self._dtype is not None and x.dtype != self._dtype:
            x = x.to(self._dtype)
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        start = time.perf_counter_ns()
        with torch.inference_mode():
            out = _detach_from(self._model(x), self._views[slot])
        return Flight(out, n, compute_us=(time.perf_counter_ns() - start) / 1000)

    def wait(self, flight: Flight) -> None:
        """The output is ready when launch returns."""

    def postprocess(self, flight: Flight, fn: Callable[[Any], Sequence[Any]]) -> Sequence[Any]:
        with torch.inference_mode():
            return fn(flight.output)


class CudaRunner:
    """Staging slots hold uint8 NHWC; copies, normalization and the model run on the GPU.

    The copy of batch N (on the copy stream, into one of two landing buffers) overlaps the model
    on batch N-1 (on the compute stream); events order them. With CUDA graphs, each bucket's graph
    reads a shared static input that the compute stream fills from the landing buffer.
    """

    def __init__(
        self,
        model: Callable[[torch.Tensor], Any],
        user_spec: ImageSpec,
        slots: Sequence[npt.NDArray[np.uint8]],
        max_batch_size: int,
        device: torch.device,
        dtype: torch.dtype | None,
        channels_last: bool,
        buckets: Sequence[int],
        cuda_graphs: bool,
        decoder: GpuDecoder | None,
    ) -> None:
        h, w = user_spec.output_size
        self._model = model
        self._device = device
        # Pageable slots (pinning unavailable) still work, with synchronous copies.
        self._slots = [torch.from_numpy(s).view(max_batch_size, h, w, 3) for s in slots]
        self._copy = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
        self._compute = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
        # High priority: postprocess kernels are tiny and must not wait behind the next batch.
        self._post = torch.cuda.Stream(device, priority=-1)  # type: ignore[no-untyped-call]
        self._landing = [torch.empty((max_batch_size, h, w, 3), dtype=torch.uint8, device=device)]
        self._landing.append(torch.empty_like(self._landing[0]))
        self._landing_free = [torch.cuda.Event() for _ in range(2)]  # type: ignore[no-untyped-call]
        self._turn = 0
        self._decoder = decoder
        self._channels_last = channels_last
        self._out_dtype = dtype or (
            torch.float32 if user_spec.dtype == "uint8" else TORCH_DTYPES[user_spec.dtype]
        )
        self._raw = user_spec.dtype == "uint8" and dtype in (None, torch.uint8)
        mean = user_spec.mean or (0.0, 0.0, 0.0)
        std = user_spec.std or (1.0, 1.0, 1.0)
        self._scale = torch.tensor([1 / (255 * s) for s in std], device=device)
        self._shift = torch.tensor([-m / s for m, s in zip(mean, std, strict=True)], device=device)
        self._buckets = list(buckets)
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, Any]] = {}
        self._static = torch.zeros_like(self._landing[0])
        self._warm_up()
        if cuda_graphs:
            self._capture()

    def _forward(self, x: torch.Tensor) -> Any:
        if not self._raw:
            x = normalize_hwc(x, self._scale, self._shift, self._out_dtype)
        # NHWC -> NCHW view; its memory order is channels_last already.
        x = x.permute(0, 3, 1, 2)
        if not self._channels_last:
            x = x.contiguous()
        return self._model(x)

    def _warm_up(self) -> None:
        with torch.cuda.stream(self._compute), torch.inference_mode():
            for bucket in self._buckets:
                for _ in range(2):
                    self._forward(self._static[:bucket])
        self._compute.synchronize()

    def _capture(self) -> None:
        pool = torch.cuda.graph_pool_handle()
        try:
            with torch.inference_mode():
                for bucket in reversed(self._buckets):
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=pool, stream=self._compute):
                        out = self._forward(self._static[:bucket])
                    self._graphs[bucket] = (graph, out)
        except (RuntimeError, torch.cuda.CudaError) as e:  # the model cannot be captured
            log.warning("CUDA graph capture failed, running eagerly: %s", e)
            self._graphs.clear()
            torch.cuda.synchronize(self._device)

    def _bucket(self, n: int) -> int:
        for b in self._buckets:
            if b >= n:
                return b
        return self._buckets[-1]

    def launch(self, slot: int, n: int, deferred: Sequence[int], decoded: Decoded | None) -> Flight:
        k = self._turn
        self._turn ^= 1
        landing = self._landing[k]
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(6)]  # type: ignore[no-untyped-call]
        failed: dict[int, Exception] = {}
        decode_host_us = 0.0
        with torch.cuda.stream(self._copy):
            self._copy.wait_event(self._landing_free[k])
            ev[0].record()
            landing[:n].copy_(self._slots[slot][:n], non_blocking=True)
            ev[1].record()
            if deferred and decoded is not None and self._decoder is not None:
                failed = self._decoder.place(landing, deferred, decoded)
                decode_host_us = decoded.host_us
            ev[2].record()
        with torch.cuda.stream(self._compute), torch.inference_mode():
            self._compute.wait_event(ev[2])
            graph = self._graphs.get(self._bucket(n))
            if graph is not None:
                self._static[:n].copy_(landing[:n])
                self._landing_free[k].record()
                ev[3].record()
                graph[0].replay()
                ev[4].record()
                out = _clone(graph[1], n)
            else:
                ev[3].record()
                out = self._forward(landing[:n])
                ev[4].record()
                self._landing_free[k].record()
            ev[5].record()
        # The slot may go back to the ring only once its bytes are on the device.
        ev[1].synchronize()
        return Flight(
            out, n, decode_host_us=decode_host_us, failed=failed, events=tuple(ev), keep=decoded
        )

    def wait(self, flight: Flight) -> None:
        """Blocks until the batch's output is computed, then reads its stage times."""
        ev = flight.events
        ev[5].synchronize()
        flight.h2d_us = ev[0].elapsed_time(ev[1]) * 1000
        flight.decode_us = ev[1].elapsed_time(ev[2]) * 1000
        flight.compute_us = ev[3].elapsed_time(ev[4]) * 1000

    def postprocess(self, flight: Flight, fn: Callable[[Any], Sequence[Any]]) -> Sequence[Any]:
        # Postprocessing gets its own stream so it never queues behind later batches.
        _record_stream(flight.output, self._post)
        with torch.cuda.stream(self._post), torch.inference_mode():
            return fn(flight.output)


def _clone(out: Any, n: int) -> Any:
    # Graph outputs live in the graph's pool and are overwritten by its next replay.
    if isinstance(out, torch.Tensor):
        return out[:n].clone()
    if isinstance(out, (tuple, list)):
        return type(out)(_clone(o, n) for o in out)
    if isinstance(out, dict):
        return {key: _clone(v, n) for key, v in out.items()}
    raise TypeError(f"cannot batch a model output of type {type(out).__name__}")


def _record_stream(out: Any, stream: torch.cuda.Stream) -> None:
    if isinstance(out, torch.Tensor):
        out.record_stream(stream)
    elif isinstance(out, (tuple, list)):
        for o in out:
            _record_stream(o, stream)
    elif isinstance(out, dict):
        for o in out.values():
            _record_stream(o, stream)
