"""One model on one device against the same model on several: the router's scaling.

The engines are built as `stoker serve --devices` builds them (``build_engine``: one engine per
device, each with its share of the native thread pool, the top-k postprocess). Two one-device
baselines: with the whole pool, as a one-GPU server on the same host would run, and with one
device's share of it, as one GPU of the several-GPU server gets. The first ratio is the gain of
adding GPUs to a host; the second the router's scaling, the CPU held equal per device. Where the
CPU (JPEG decoding) limits one engine, the two differ; `--gpu-decode auto` moves decoding off it.

Closed-loop asyncio callers on one thread await ``infer`` with the same JPEGs; the several-device
run gets as many callers per device as a one-device run, so that each device sees the same
offered load. Rounds interleave the runs; the figures are median ratios of images per second,
against the target (2 GPUs >= 1.8x one GPU).

    python benchmarks/bench_devices.py --devices cuda:0,cuda:1            # ResNet-50, fp16
    python benchmarks/bench_devices.py --devices cpu,cpu --model tiny     # smoke check on CPU

On CPU "devices" the engines share the same cores, so the ratio says nothing about scaling there;
the run only checks that the router spreads the load and the script works.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _images import large_images, small_images
from _nets import build_model
from bench_engine import drive

import stoker
from stoker._engine import Engine
from stoker.server import ModelConfig
from stoker.server._config import parse_devices
from stoker.server._replicas import Replicas, build_engine

BAR = 1.8


def engines_of(engine: Engine | Replicas) -> tuple[Engine, ...]:
    return engine.engines if isinstance(engine, Replicas) else (engine,)


def measure(
    engine: Engine | Replicas, images: Sequence[bytes], callers: int, seconds: float
) -> tuple[float, list[int], list[float], float]:
    """Images per second; per device, images answered and busy share of the wall time; and the
    share of one core the callers' thread used (near 100% the callers, not stoker, set the pace)."""
    asyncio.run(drive(engine, images, callers, min(1.0, seconds)))  # warm-up
    engine.reset_stats()
    start, cpu = time.perf_counter(), time.thread_time()
    rate = asyncio.run(drive(engine, images, callers, seconds))
    wall = time.perf_counter() - start
    caller_cpu = (time.thread_time() - cpu) / wall
    stats = [e.stats() for e in engines_of(engine)]
    answered = [s["total"].count for s in stats]
    busy = [s["batch_compute"].sum / 1e6 / wall for s in stats]
    return rate, answered, busy, caller_cpu


def build(
    args: argparse.Namespace, devices: tuple[str, ...], threads: int | None
) -> Engine | Replicas:
    config = ModelConfig(
        name="bench",
        model=args.model,
        device=devices[0],
        devices=devices if len(devices) > 1 else None,
        threads=threads,
        dtype=args.dtype,
        max_batch_size=args.max_batch,
        max_delay_ms=args.delay_ms,
        capacity=max(4096, 2 * args.concurrency * len(devices)),
        staging_slots=args.slots,
        gpu_decode=args.gpu_decode,
    )
    # The same weights for every run; build_engine copies the module once per GPU.
    return build_engine(config, copy.deepcopy(args.module))


def _threads(n: int) -> str:
    return f"{n} thread" + ("s" if n != 1 else "")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    cuda = torch.cuda.device_count() >= 2
    p.add_argument("--devices", default="cuda:0,cuda:1" if cuda else "cpu,cpu")
    p.add_argument("--model", default=None, help="resnet50 on GPUs, small on CPU by default")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None)
    p.add_argument("--images", choices=("small", "large"), default="small")
    p.add_argument("--count", type=int, default=64, help="distinct images, cycled")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=None, help="callers per device")
    p.add_argument("--max-batch", type=int, default=None)
    p.add_argument("--delay-ms", type=float, default=2.0)
    p.add_argument("--slots", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="native threads per engine")
    p.add_argument("--gpu-decode", default=None, help="GPU decode share (0..1) or 'auto'")
    args = p.parse_args()
    devices = parse_devices(args.devices)
    if len(devices) < 2:
        p.error("--devices needs at least two devices to compare with one")
    gpu = devices[0] != "cpu"
    args.model = args.model or ("resnet50" if gpu else "small")
    args.dtype = args.dtype or ("float16" if gpu else None)
    args.max_batch = args.max_batch or (256 if gpu else 32)
    args.concurrency = args.concurrency or (4 * args.max_batch if gpu else 64)
    if args.gpu_decode not in (None, "auto"):
        args.gpu_decode = float(args.gpu_decode)
    args.module = build_model(args.model).eval()

    print(f"# stoker multi-device benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(
        f"machine: {platform.node()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"stoker threads {stoker.get_num_threads()}"
    )
    for d in devices:
        if d != "cpu":
            print(f"{d}: {torch.cuda.get_device_name(d)}")
    print(f"args: { {k: v for k, v in vars(args).items() if k != 'module'} }")
    images = (small_images if args.images == "small" else large_images)(args.count)
    print(f"{len(images)} JPEGs, mean {np.mean([len(b) for b in images]) / 1e3:.0f} KB\n")

    pool = stoker.get_num_threads()
    share = max(1, pool // len(devices))
    baselines = {_threads(args.threads or pool): build(args, devices[:1], args.threads)}
    if args.threads is None and share != pool:  # --threads: every engine has the same already
        baselines[_threads(share)] = build(args, devices[:1], share)
    many = build(args, devices, args.threads)
    names = many.devices if isinstance(many, Replicas) else devices
    if args.gpu_decode is not None:
        print(f"GPU decoder: {engines_of(many)[0].gpu_decoder}\n")
    ratios: dict[str, list[float]] = {key: [] for key in baselines}
    try:
        for r in range(args.rounds):
            print(f"round {r}:")
            bases = {}
            for key, one in baselines.items():
                base, _, busy1, cpu1 = measure(one, images, args.concurrency, args.seconds)
                bases[key] = base
                print(
                    f"  1 device, {key:11s} {base:9.1f} img/s, busy {busy1[0]:4.0%}, "
                    f"callers' thread {cpu1:4.0%} of a core"
                )
            rate, answered, busy, cpu = measure(
                many, images, args.concurrency * len(devices), args.seconds
            )
            shares = ", ".join(
                f"{d}: {n / max(1, sum(answered)):.0%} of images, busy {b:.0%}"
                for d, n, b in zip(names, answered, busy, strict=True)
            )
            print(
                f"  {len(devices)} devices            {rate:9.1f} img/s  ({shares}), "
                f"callers' thread {cpu:4.0%} of a core"
            )
            for key, base in bases.items():
                ratios[key].append(rate / base)
    finally:
        for one in baselines.values():
            one.close()
        many.close()
    print()
    for key, values in ratios.items():
        median = statistics.median(values)
        line = f"{len(devices)} devices vs 1 device with {key}: median {median:.2f}x, "
        line += f"best {max(values):.2f}x"
        if gpu:
            line += f"; {'meets' if median >= BAR else 'misses'} the bar (>= {BAR}x for 2 GPUs)"
        print(line)
    if not gpu:
        print("(CPU devices share the same cores: a smoke check, not a scaling figure)")


if __name__ == "__main__":
    main()
