"""The engine end to end: JPEG bytes from many concurrent in-process callers to class ids.

CPU (the bar on a 2-core machine): a small CNN behind stoker's engine against a plain loop of PIL
preprocessing and one model call per image, interleaved rounds in one run.

CUDA: ResNet-50 (torchvision, random weights: speed does not depend on them) in fp16 and
channels_last. The ceiling is the model alone, replaying a CUDA graph of the largest batch on a
preprocessed input resident on the GPU, measured in the same run; the engine is then driven by
asyncio callers with JPEG bytes and must reach >= 90% of it. GPU busy is the sum of the batches'
compute times (CUDA events) over wall time.

By default (``--method windows``) the callers start once and keep the engine loaded throughout:
after ``--warmup`` seconds, each round counts the answers of a window of ``--seconds`` under that
sustained load. ``--method restart`` starts and stops the callers for every round instead (a 1 s
warm-up, then the round), so each round also holds the pipeline's filling at its start and its
draining at its end.

    python benchmarks/bench_engine.py --device cpu
    python benchmarks/bench_engine.py --device cuda --images small
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _images import large_images, small_images
from _nets import build_model
from _pipelines import MEAN, STD, crop_box, resize_target

import stoker
from stoker._callers import CallerAPI


def argmax(logits: torch.Tensor) -> list[int]:
    ids: list[int] = logits.argmax(1).tolist()
    return ids


def pil_loop(model: torch.nn.Module, images: Sequence[bytes], seconds: float) -> float:
    """Images per second of the plain Python server loop: PIL preprocessing, one call each."""
    from PIL import Image

    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    done = -len(images)  # one pass over the images first, untimed, as the engine's warm-up
    start = time.perf_counter()
    with torch.inference_mode():
        while done < 0 or time.perf_counter() - start < seconds:
            if done == 0:
                start = time.perf_counter()
            data = images[done % len(images)]
            img = Image.open(io.BytesIO(data)).convert("RGB")
            w, h = resize_target(*img.size)
            img = img.resize((w, h), Image.Resampling.BILINEAR)
            left, top = crop_box(w, h)
            img = img.crop((left, top, left + 224, top + 224))
            x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float().div(255)
            x = (x - mean) / std
            argmax(model(x[None]))
            done += 1
    return done / (time.perf_counter() - start)


async def drive(
    engine: CallerAPI[bytes, Any], images: Sequence[bytes], concurrency: int, seconds: float
) -> float:
    """Images per second from ``concurrency`` closed-loop asyncio callers awaiting ``infer``."""
    done = 0
    stop = time.perf_counter() + seconds

    async def caller(k: int) -> None:
        nonlocal done
        i = k
        while time.perf_counter() < stop:
            await engine.infer(images[i % len(images)])
            i += concurrency
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(caller(k) for k in range(concurrency)))
    return done / (time.perf_counter() - start)


def engine_rate(
    engine: stoker.Engine, images: Sequence[bytes], concurrency: int, seconds: float
) -> tuple[float, float]:
    """(images per second, GPU-or-model busy fraction) over `seconds` of closed-loop load."""
    asyncio.run(drive(engine, images, concurrency, min(1.0, seconds)))  # warm-up
    engine.reset_stats()
    start = time.perf_counter()
    rate = asyncio.run(drive(engine, images, concurrency, seconds))
    wall = time.perf_counter() - start
    busy = engine.stats()["batch_compute"].sum / 1e6 / wall
    return rate, busy


@dataclass
class Window:
    """One round under sustained load."""

    rate: float  # answers per second
    busy: float  # the batches' compute time over the window's wall time
    mean_batch: float
    share: float  # the GPU decode share at the window's end


async def drive_windows(
    engine: stoker.Engine,
    images: Sequence[bytes],
    concurrency: int,
    warmup: float,
    seconds: float,
    rounds: int,
) -> list[Window]:
    """Closed-loop asyncio callers that never stop between rounds; each round counts the answers
    that arrive within its window."""
    done = 0
    running = True

    async def caller(k: int) -> None:
        nonlocal done
        i = k
        while running:
            await engine.infer(images[i % len(images)])
            i += concurrency
            done += 1

    tasks = [asyncio.create_task(caller(k)) for k in range(concurrency)]
    await asyncio.sleep(warmup)
    windows = []
    for _ in range(rounds):
        engine.reset_stats()
        start, first = time.perf_counter(), done
        await asyncio.sleep(seconds)
        wall, answered = time.perf_counter() - start, done - first
        stats = engine.stats()
        windows.append(
            Window(
                answered / wall,
                stats["batch_compute"].sum / 1e6 / wall,
                stats["batch_size"].mean,
                engine.gpu_share,
            )
        )
    running = False
    await asyncio.gather(*tasks)
    return windows


def model_only_rate(
    model: torch.nn.Module, batch: int, dtype: torch.dtype, seconds: float
) -> float:
    """Images per second of the model alone: a CUDA graph replayed on a resident input."""
    x = torch.randn(batch, 3, 224, 224, device="cuda", dtype=dtype).contiguous(
        memory_format=torch.channels_last
    )
    stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(3):
            model(x)
    stream.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(graph, stream=stream):
        model(x)
    for _ in range(5):
        graph.replay()
    torch.cuda.synchronize()
    n = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(10):
            graph.replay()
        torch.cuda.synchronize()
        n += 10
    return n * batch / (time.perf_counter() - start)


def header(args: argparse.Namespace) -> None:
    print(f"# stoker engine benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(
        f"machine: {platform.node()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"stoker threads {stoker.get_num_threads()} (niceness {stoker.get_thread_niceness()})"
    )
    if torch.cuda.is_available():
        print(f"device: {torch.cuda.get_device_name()}")
    print(f"args: {vars(args)}\n")


def run_cpu(args: argparse.Namespace, images: Sequence[bytes]) -> None:
    model = build_model(args.model).eval()
    spec = stoker.ImageSpec(mean=MEAN, std=STD, reduce_gap=args.reduce_gap)
    ratios = []
    with stoker.Engine(
        model, spec, max_batch_size=args.max_batch, max_delay_ms=args.delay_ms, postprocess=argmax
    ) as engine:
        for r in range(args.rounds):
            base = pil_loop(model, images, args.seconds)
            rate, _ = engine_rate(engine, images, args.concurrency, args.seconds)
            ratios.append(rate / base)
            print(
                f"round {r}: PIL loop {base:8.1f} img/s | engine {rate:8.1f} img/s | "
                f"{rate / base:5.2f}x"
            )
        stats = engine.stats()
    print(f"\nengine vs plain PIL loop: median {statistics.median(ratios):.2f}x (bar >= 5x)")
    report_stages(stats)


def run_cuda(args: argparse.Namespace, images: Sequence[bytes]) -> None:
    import torchvision

    dtype = torch.float16
    gpu_decode = args.gpu_decode
    if gpu_decode not in (None, "auto"):
        gpu_decode = float(gpu_decode)
    model = (
        torchvision.models.resnet50().eval().cuda().to(dtype).to(memory_format=torch.channels_last)
    )
    spec = stoker.ImageSpec(mean=MEAN, std=STD, reduce_gap=args.reduce_gap)
    ceiling = model_only_rate(model, args.max_batch, dtype, args.seconds)
    print(
        f"model only (CUDA graph, batch {args.max_batch}, fp16, channels_last): "
        f"{ceiling:9.1f} img/s"
    )
    with stoker.Engine(
        model,
        spec,
        device="cuda",
        dtype=dtype,
        max_batch_size=args.max_batch,
        max_delay_ms=args.delay_ms,
        postprocess=argmax,
        staging_slots=args.slots,
        gpu_decode=gpu_decode,
        preferred_batch_sizes=[int(b) for b in args.preferred.split(",")]
        if args.preferred
        else None,
    ) as engine:
        if args.method == "windows":
            windows = asyncio.run(
                drive_windows(
                    engine, images, args.concurrency, args.warmup, args.seconds, args.rounds
                )
            )
        else:
            windows = []
            for _ in range(args.rounds):
                rate, busy = engine_rate(engine, images, args.concurrency, args.seconds)
                stats = engine.stats()
                windows.append(Window(rate, busy, stats["batch_size"].mean, engine.gpu_share))
        for r, w in enumerate(windows):
            print(
                f"round {r}: engine {w.rate:9.1f} img/s = {w.rate / ceiling:6.1%} of model-only, "
                f"GPU busy {w.busy:6.1%}, mean batch {w.mean_batch:5.1f}, share {w.share:.2f}"
            )
        results = [(w.rate, w.busy) for w in windows]
        stats = engine.stats()
        share = engine.gpu_share
        decoder = engine.gpu_decoder
    best = max(results)
    print(
        f"\nengine/model-only: median {statistics.median(r for r, _ in results) / ceiling:.1%}, "
        f"best {best[0] / ceiling:.1%}; "
        f"GPU busy median {statistics.median(b for _, b in results):.1%} "
        "(bars: >= 90% and >= 90%)"
    )
    if args.gpu_decode is not None:
        print(f"GPU decode share at the end: {share:.2f} ({decoder})")
    report_stages(stats)


def report_stages(stats: dict[str, Any]) -> None:
    print("\nstage          p50 us     p99 us    mean us")
    for name in stoker.STAGES:
        h = stats[name]
        print(f"{name:12s} {h.quantile(0.5):9.0f} {h.quantile(0.99):10.0f} {h.mean:10.0f}")
    print(
        f"batch size: mean {stats['batch_size'].mean:.1f}, "
        f"p50 {stats['batch_size'].quantile(0.5):.0f}"
    )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--images", choices=("small", "large"), default="small")
    p.add_argument("--model", choices=("small", "tiny"), default="small", help="CPU model")
    p.add_argument("--count", type=int, default=64, help="distinct images, cycled")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--method",
        choices=("windows", "restart"),
        default="windows",
        help="CUDA: rounds as windows of one sustained load, or callers restarted per round",
    )
    p.add_argument(
        "--warmup", type=float, default=3.0, help="CUDA windows: seconds of load before round 0"
    )
    p.add_argument("--concurrency", type=int, default=None)
    p.add_argument("--max-batch", type=int, default=None)
    p.add_argument("--delay-ms", type=float, default=2.0)
    p.add_argument("--slots", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="stoker's native threads")
    p.add_argument(
        "--pool-nice", type=int, default=0, help="nice levels of stoker's native threads"
    )
    p.add_argument("--reduce-gap", type=float, default=None)
    p.add_argument("--gpu-decode", default=None, help="GPU decode share (0..1) or 'auto'")
    p.add_argument(
        "--preferred",
        default=None,
        help="preferred batch sizes, comma-separated (also the CUDA graph buckets)",
    )
    p.add_argument(
        "--switch-interval",
        type=float,
        default=None,
        help="sys.setswitchinterval in ms: how long a thread holding the GIL makes others wait",
    )
    args = p.parse_args()
    if args.threads is not None:
        stoker.set_num_threads(args.threads)
    if args.pool_nice:
        stoker.set_thread_niceness(args.pool_nice)
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval / 1000)
    cuda = args.device == "cuda"
    args.max_batch = args.max_batch or (256 if cuda else 32)
    # Closed-loop callers keep the GPU fed only if they outnumber what the engine holds in flight
    # (the staging slots and the batches on the device, about nine batches): with fewer, the
    # queue runs dry and batches leave short.
    args.concurrency = args.concurrency or (16 * args.max_batch if cuda else 64)
    header(args)
    images = (small_images if args.images == "small" else large_images)(args.count)
    print(f"{len(images)} JPEGs, mean {np.mean([len(b) for b in images]) / 1e3:.0f} KB\n")
    (run_cuda if cuda else run_cpu)(args, images)


if __name__ == "__main__":
    main()
