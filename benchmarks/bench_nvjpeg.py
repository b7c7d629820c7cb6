"""GPU JPEG decode rates: stoker's nvJPEG binding against torchvision's decode, one and all GPUs.

Each decoder decodes batches of the same JPEGs on a stream of its own, from a thread of its own per
GPU, for a fixed time; the rate counts images whose decode finished on the device (the stream is
synchronized after every batch). On the GPUs' JPEG engines (A100, H100, H200) stoker's decoder
leaves the SMs free; the CPU figure (stoker's native decode on every core) is the rate the GPU
decode adds to.

With ``--under-load`` each rate is measured twice: on idle GPUs, and while every GPU replays a
CUDA graph of ResNet-50 (fp16, batch 256) back to back on a stream of its own, as in serving: a
decoder that waits for unrelated GPU work shows it there. A decode call that takes longer than
``--stall-seconds`` is reported with every thread's stack, and the run ends.

    python benchmarks/bench_nvjpeg.py                    # every GPU, small (500x375) JPEGs
    python benchmarks/bench_nvjpeg.py --images large --batch 32
    python benchmarks/bench_nvjpeg.py --under-load
    python benchmarks/bench_nvjpeg.py --interference --decode-rate 8000

``--interference`` turns the question around: how much of the model's speed does the GPU decode
take? It measures ResNet-50's replay rate alone, then beside each decoder paced at
``--decode-rate`` images/s (about the GPU's share in the engine), with and without the batched
resize that follows the decode, and beside the resize alone.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _images import IMAGE_SETS

import stoker
from stoker._gpu_decode import TorchvisionDecoder, gpu_decode_available
from stoker._nvjpeg import NvJpeg

Decode = Callable[[Sequence[bytes]], object]


class Load:
    """ResNet-50 fp16 CUDA graph replays, back to back, on every given GPU (one thread each)."""

    def __init__(self, devices: Sequence[torch.device]) -> None:
        import torchvision

        self._stop = threading.Event()
        self._graphs = []
        for d in devices:
            model = torchvision.models.resnet50().to(
                d, torch.float16, memory_format=torch.channels_last
            )
            model.eval()
            x = torch.randn(256, 3, 224, 224, device=d, dtype=torch.float16)
            x = x.contiguous(memory_format=torch.channels_last)
            stream = torch.cuda.Stream(d)  # type: ignore[no-untyped-call]
            with torch.cuda.device(d), torch.cuda.stream(stream), torch.inference_mode():
                model(x)
                stream.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=stream):
                    model(x)
            self._graphs.append((d, stream, graph, model, x))
        self.replays = [0] * len(devices)
        self._threads: list[threading.Thread] = []

    def rate(self, seconds: float) -> float:
        """Images/s of the first GPU's replays over ``seconds`` while running."""
        time.sleep(0.5)  # past the start of whatever runs beside it
        before, t0 = self.replays[0], time.perf_counter()
        time.sleep(seconds)
        return (self.replays[0] - before) * 256 / (time.perf_counter() - t0)

    def _run(self, k: int) -> None:
        d, stream, graph, _, _ = self._graphs[k]
        with torch.cuda.device(d), torch.cuda.stream(stream):
            while not self._stop.is_set():
                graph.replay()
                stream.synchronize()
                self.replays[k] += 1

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._run, args=(k,), daemon=True)
            for k in range(len(self._graphs))
        ]
        for t in self._threads:
            t.start()
        try:
            yield
        finally:
            self._stop.set()
            for t in self._threads:
                t.join()


def _native_stacks() -> None:
    """Every thread's native stack, through a debugger attached to this process, where one is
    installed (the GPU machines have cuda-gdb but no gdb); Python's stacks end at the call."""
    debugger = shutil.which("gdb") or shutil.which("cuda-gdb")
    if debugger is None:
        return
    command = [debugger, "-p", str(os.getpid()), "-batch", "-ex", "thread apply all bt 30"]
    subprocess.run(command, stdout=sys.stderr, stderr=sys.stderr, timeout=300, check=False)


def _rate(
    devices: Sequence[torch.device],
    make: Callable[[torch.device], Decode],
    images: Sequence[bytes],
    batch: int,
    seconds: float,
    stall: float,
) -> float:
    rates = [0.0] * len(devices)
    calls: list[float | None] = [None] * len(devices)  # when each thread's current call began
    done = threading.Event()

    def watchdog() -> None:
        # A decode call that never returns: every thread's stack, then the process ends.
        while not done.wait(1.0):
            now = time.perf_counter()
            if any(c is not None and now - c > stall for c in calls):
                print(f"a decode call took over {stall:.0f} s", file=sys.stderr, flush=True)
                faulthandler.dump_traceback(all_threads=True)
                _native_stacks()
                os._exit(3)

    errors: list[BaseException] = []
    start = threading.Barrier(len(devices))

    def run(k: int, device: torch.device) -> None:
        try:
            decode = make(device)
            # A high priority, as the engine's decode stream has.
            stream = torch.cuda.Stream(device, priority=-1)  # type: ignore[no-untyped-call]
            batches = [
                [images[(j * batch + i) % len(images)] for i in range(batch)] for j in range(8)
            ]
            with torch.cuda.device(device), torch.cuda.stream(stream):
                decode(batches[0])  # warm-up: handles and buffers
                stream.synchronize()
                start.wait()
                t0 = time.perf_counter()
                j = 0
                while time.perf_counter() < t0 + seconds:
                    calls[k] = time.perf_counter()
                    decode(batches[j % len(batches)])
                    stream.synchronize()
                    calls[k] = None
                    j += 1
                rates[k] = j * batch / (time.perf_counter() - t0)
        except BaseException as e:  # reported by the main thread
            errors.append(e)
            start.abort()

    threads = [threading.Thread(target=run, args=(k, d)) for k, d in enumerate(devices)]
    threads.append(threading.Thread(target=watchdog, daemon=True))
    for t in threads:
        t.start()
    for t in threads[:-1]:
        t.join()
    done.set()
    if errors:
        raise errors[0]
    return sum(rates)


def _cpu_rate(images: Sequence[bytes], seconds: float) -> float:
    spec = stoker.ImageSpec(size=256, crop=224, layout="NHWC", dtype="uint8")
    batch = [images[i % len(images)] for i in range(256)]
    stoker.preprocess_batch(batch, spec)
    n, stop, t0 = 0, time.perf_counter() + seconds, time.perf_counter()
    while time.perf_counter() < stop:
        stoker.preprocess_batch(batch, spec)
        n += len(batch)
    return n / (time.perf_counter() - t0)


def _paced(
    device: torch.device,
    work: Callable[[list[bytes]], object],
    images: Sequence[bytes],
    batch: int,
    rate: float,
    stop: threading.Event,
) -> None:
    """Runs ``work`` on batches of ``images`` at ``rate`` images/s on a high-priority stream."""
    stream = torch.cuda.Stream(device, priority=-1)  # type: ignore[no-untyped-call]
    items = [images[i % len(images)] for i in range(batch)]
    with torch.cuda.device(device), torch.cuda.stream(stream):
        t0, j = time.perf_counter(), 0
        while not stop.is_set():
            work(items)
            stream.synchronize()
            j += 1
            time.sleep(max(0.0, t0 + j * batch / rate - time.perf_counter()))


def _interference(
    device: torch.device, images: Sequence[bytes], batch: int, rate: float, seconds: float
) -> None:
    from stoker._gpu_resize import resize_into

    spec = stoker.ImageSpec(size=256, crop=224, layout="NHWC", dtype="uint8")
    landing = torch.empty((batch, 224, 224, 3), dtype=torch.uint8, device=device)
    rows = list(range(batch))
    nvjpeg = NvJpeg(device)

    def decode(items: list[bytes]) -> object:
        return nvjpeg.decode(items)

    def decode_resize(items: list[bytes]) -> object:
        decoded, _ = nvjpeg.decode(items)
        resize_into([d for d in decoded if d is not None], landing, rows, spec)
        return decoded

    with torch.cuda.device(device):
        kept, _ = nvjpeg.decode([images[i % len(images)] for i in range(batch)])
        ready = [d for d in kept if d is not None]

    def resize(_: list[bytes]) -> object:
        resize_into(ready, landing, rows, spec)
        return None

    load = Load([device])
    variants: dict[str, Callable[[list[bytes]], object] | None] = {
        "alone": None,
        "nvJPEG engines": decode,
        "nvJPEG engines + resize": decode_resize,
        "resize only": resize,
    }
    if gpu_decode_available(device):
        tv = TorchvisionDecoder(device)
        variants["torchvision decode_jpeg"] = tv.decode
    variants["alone again"] = None
    base = 0.0
    with load.running():
        for name, work in variants.items():
            stop = threading.Event()
            thread = None
            if work is not None:
                thread = threading.Thread(
                    target=_paced, args=(device, work, images, batch, rate, stop), daemon=True
                )
                thread.start()
            model = load.rate(seconds)
            stop.set()
            if thread is not None:
                thread.join()
            base = base or model
            print(f"ResNet-50 beside {name:26s} {model:8.0f} img/s ({model / base:6.1%} of alone)")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--images", choices=tuple(IMAGE_SETS), default="small")
    p.add_argument("--count", type=int, default=64)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--under-load", action="store_true", help="also with ResNet-50 running")
    p.add_argument("--stall-seconds", type=float, default=30.0)
    p.add_argument("--interference", action="store_true", help="the model's rate beside decode")
    p.add_argument("--decode-rate", type=float, default=8000.0, help="paced img/s, --interference")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_nvjpeg needs a CUDA device")
    images = IMAGE_SETS[args.images](args.count)
    gpus = [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    print(f"# GPU JPEG decode, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"{len(gpus)} x {torch.cuda.get_device_name(0)}, {os.cpu_count()} CPUs; {vars(args)}")
    if args.interference:
        _interference(gpus[0], images, args.batch, args.decode_rate, args.seconds)
        return
    probe = NvJpeg(gpus[0])
    print(f"stoker nvJPEG: {'hardware engines' if probe.hardware else 'CUDA'}, {probe.library}")
    decoders: dict[str, Callable[[torch.device], Decode]] = {
        "stoker nvJPEG": lambda d: NvJpeg(d).decode,
        "stoker nvJPEG, CUDA backend": lambda d: NvJpeg(d, backend="cuda").decode,
    }
    if gpu_decode_available(gpus[0]):
        decoders["torchvision decode_jpeg"] = lambda d: TorchvisionDecoder(d).decode
    print(
        f"CPU, stoker decode+resize on {stoker.get_num_threads()} threads: "
        f"{_cpu_rate(images, args.seconds):9.0f} img/s"
    )
    load = Load(gpus) if args.under_load else None
    for name, make in decoders.items():
        for loaded in (False, True) if load is not None else (False,):
            with load.running() if load is not None and loaded else contextlib.nullcontext():
                one = _rate(gpus[:1], make, images, args.batch, args.seconds, args.stall_seconds)
                every = (
                    _rate(gpus, make, images, args.batch, args.seconds, args.stall_seconds)
                    if len(gpus) > 1
                    else 0.0
                )
            line = f"{name:28s} {'under load' if loaded else 'idle GPU':10s} 1 GPU {one:9.0f} img/s"
            if len(gpus) > 1:
                line += f", {len(gpus)} GPUs {every:9.0f} img/s ({every / one:.2f}x)"
            if load is not None and loaded:
                line += f"; ResNet-50 replays {load.replays}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
