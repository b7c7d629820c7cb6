"""GPU JPEG decode rates: stoker's nvJPEG binding against torchvision's decode, one and all GPUs.

Each decoder decodes batches of the same JPEGs on a stream of its own, from a thread of its own per
GPU, for a fixed time; the rate counts images whose decode finished on the device (the stream is
synchronized after every batch). On the GPUs' JPEG engines (A100, H100, H200) stoker's decoder
leaves the SMs free; the CPU figure (stoker's native decode on every core) is the rate the GPU
decode adds to.

    python benchmarks/bench_nvjpeg.py                    # every GPU, small (500x375) JPEGs
    python benchmarks/bench_nvjpeg.py --images large --batch 32
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _images import IMAGE_SETS

import stoker
from stoker._gpu_decode import TorchvisionDecoder, gpu_decode_available
from stoker._nvjpeg import NvJpeg

Decode = Callable[[Sequence[bytes]], object]


def _rate(
    devices: Sequence[torch.device],
    make: Callable[[torch.device], Decode],
    images: Sequence[bytes],
    batch: int,
    seconds: float,
) -> float:
    rates = [0.0] * len(devices)
    errors: list[BaseException] = []
    start = threading.Barrier(len(devices))

    def run(k: int, device: torch.device) -> None:
        try:
            decode = make(device)
            stream = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
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
                    decode(batches[j % len(batches)])
                    stream.synchronize()
                    j += 1
                rates[k] = j * batch / (time.perf_counter() - t0)
        except BaseException as e:  # reported by the main thread
            errors.append(e)
            start.abort()

    threads = [threading.Thread(target=run, args=(k, d)) for k, d in enumerate(devices)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
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


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--images", choices=tuple(IMAGE_SETS), default="small")
    p.add_argument("--count", type=int, default=64)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seconds", type=float, default=4.0)
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_nvjpeg needs a CUDA device")
    images = IMAGE_SETS[args.images](args.count)
    gpus = [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    print(f"# GPU JPEG decode, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"{len(gpus)} x {torch.cuda.get_device_name(0)}, {os.cpu_count()} CPUs; {vars(args)}")
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
    for name, make in decoders.items():
        one = _rate(gpus[:1], make, images, args.batch, args.seconds)
        line = f"{name:28s} 1 GPU {one:9.0f} img/s"
        if len(gpus) > 1:
            every = _rate(gpus, make, images, args.batch, args.seconds)
            line += f", {len(gpus)} GPUs {every:9.0f} img/s ({every / one:.2f}x)"
        print(line)


if __name__ == "__main__":
    main()
