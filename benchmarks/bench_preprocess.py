"""Throughput of the ImageNet eval preprocessing pipeline: stoker against the usual Python stacks.

Every implementation runs the same pipeline on the same synthetic photos (benchmarks/_images.py):
decode JPEG bytes, resize the shorter side to 256 (bilinear, antialiased), center crop 224,
normalize with the ImageNet mean/std into a float32 NCHW batch. Baselines write each image into a
preallocated batch array, as a DataLoader's collate would.

Per core: every implementation single-threaded in this one process, timed in interleaved rounds
(each runs for --duration seconds, then the next; the round repeats --rounds times and the median
is reported), so machine noise hits all of them alike and the results are ratios.

All cores: stoker on every CPU this process may use, streaming large batches, against its own
single-thread rate on the same large batches (scaling efficiency).

    python benchmarks/bench_preprocess.py [--quick] [--sets small,large] [--impls stoker,pil,...]
                                          [--threads N] [--json PATH]

Baseline libraries that are not installed are skipped with a note.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import importlib.metadata
import io
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch
from _images import IMAGE_SETS

SIZE = 256
CROP = 224
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
_SCALE = (1.0 / (255.0 * np.asarray(STD))).astype(np.float32)
_OFFSET = (np.asarray(MEAN) / np.asarray(STD)).astype(np.float32)

# The bars the project measures itself against: (baseline key, image set, stoker ÷ baseline).
SPEED_BARS: tuple[tuple[str, str, float], ...] = (
    ("torchvision", "small", 1.2),
    ("torchvision", "large", 2.0),
    ("pil", "small", 2.5),
    ("pil-draft", "large", 1.5),
)
EFFICIENCY_BAR = 0.8

Batch = Sequence[bytes]
BatchFn = Callable[[Batch], Any]
F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]


# --------------------------------------------------------------------------------------------
# The pipeline's geometry, as torchvision defines it.


def resize_target(width: int, height: int, size: int = SIZE) -> tuple[int, int]:
    """(width, height) after torchvision's `Resize(size)`: the shorter side becomes `size`."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def crop_box(width: int, height: int, crop: int = CROP) -> tuple[int, int]:
    """(left, top) of torchvision's `CenterCrop(crop)` (the images here are never smaller)."""
    return round((width - crop) / 2.0), round((height - crop) / 2.0)


def normalize_into(hwc: U8, out: F32) -> None:
    """(x / 255 - mean) / std of a (H, W, 3) uint8 crop, written as (3, H, W) into `out`."""
    x = hwc.astype(np.float32)
    x *= _SCALE
    x -= _OFFSET
    out[...] = x.transpose(2, 0, 1)


def crop_normalize_into(resized: U8, out: F32) -> None:
    h, w = resized.shape[:2]
    left, top = crop_box(w, h)
    normalize_into(resized[top : top + CROP, left : left + CROP], out)


def new_batch(n: int) -> F32:
    return np.empty((n, 3, CROP, CROP), dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Implementations. Each builder returns a function that turns a batch of JPEG bytes into a
# (N, 3, 224, 224) float32 batch, or raises ImportError when its library is missing.


def _no_threads(n: int) -> None:
    """For libraries without a thread pool of their own."""


@dataclass
class Impl:
    key: str
    label: str
    fn: BatchFn
    set_threads: Callable[[int], None] = _no_threads


def _stoker_impl(key: str, label: str, reduce_gap: float | None, pin: bool | None) -> Impl:
    import stoker

    spec = stoker.ImageSpec(size=SIZE, crop=CROP, mean=MEAN, std=STD, reduce_gap=reduce_gap)

    def fn(batch: Batch) -> torch.Tensor:
        return stoker.preprocess_batch(batch, spec, pin_memory=pin)

    return Impl(key, label, fn, stoker.set_num_threads)


def _pil_impl(draft: bool) -> Impl:
    from PIL import Image

    def fn(batch: Batch) -> F32:
        out = new_batch(len(batch))
        for i, data in enumerate(batch):
            src = Image.open(io.BytesIO(data))
            tw, th = resize_target(*src.size)
            if draft:
                src.draft("RGB", (tw, th))
            img = src.convert("RGB").resize((tw, th), Image.Resampling.BILINEAR)
            crop_normalize_into(np.asarray(img), out[i])
        return out

    if draft:
        return Impl("pil-draft", "PIL + draft (DCT scaling)", fn)
    return Impl("pil", "PIL", fn)


def _cv2_resize_into(rgb: U8, out: F32) -> None:
    import cv2

    h, w = rgb.shape[:2]
    tw, th = resize_target(w, h)
    interp = cv2.INTER_AREA if tw < w else cv2.INTER_LINEAR
    crop_normalize_into(cast(U8, cv2.resize(rgb, (tw, th), interpolation=interp)), out)


def _cv2_set_threads(n: int) -> None:
    import cv2

    cv2.setNumThreads(n)


def _cv2_impl() -> Impl:
    import cv2

    def fn(batch: Batch) -> F32:
        out = new_batch(len(batch))
        for i, data in enumerate(batch):
            bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
            if bgr is None:
                raise ValueError(f"cv2.imdecode failed on item {i}")
            _cv2_resize_into(cast(U8, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)), out[i])
        return out

    return Impl("cv2", "OpenCV (INTER_AREA)", fn, _cv2_set_threads)


def _simplejpeg_impl(scaled: bool) -> Impl:
    import simplejpeg

    try:
        import cv2  # noqa: F401  (the resize step)
    except ImportError as e:
        raise ImportError(f"simplejpeg rows resize with OpenCV, which is missing ({e})") from e

    def fn(batch: Batch) -> F32:
        out = new_batch(len(batch))
        for i, data in enumerate(batch):
            if scaled:
                h, w, _, _ = simplejpeg.decode_jpeg_header(data)
                tw, th = resize_target(w, h)
                rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=th, min_width=tw)
            else:
                rgb = simplejpeg.decode_jpeg(data, colorspace="RGB")
            _cv2_resize_into(rgb, out[i])
        return out

    if scaled:
        return Impl(
            "simplejpeg-scaled", "simplejpeg + DCT scaling, cv2 resize", fn, _cv2_set_threads
        )
    return Impl("simplejpeg", "simplejpeg, cv2 resize", fn, _cv2_set_threads)


def _torchvision_impl() -> Impl:
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms import v2

    transform = v2.Compose(
        [
            v2.Resize(SIZE, antialias=True),
            v2.CenterCrop(CROP),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(MEAN), std=list(STD)),
        ]
    )

    def fn(batch: Batch) -> torch.Tensor:
        out = torch.empty((len(batch), 3, CROP, CROP), dtype=torch.float32)
        for i, data in enumerate(batch):
            encoded = torch.frombuffer(data, dtype=torch.uint8)
            out[i] = transform(decode_jpeg(encoded, mode=ImageReadMode.RGB))
        return out

    return Impl("torchvision", "torchvision v2", fn, torch.set_num_threads)


IMPL_KEYS = (
    "stoker",
    "stoker-rg1",
    "stoker-rg2",
    "pil",
    "pil-draft",
    "cv2",
    "simplejpeg",
    "simplejpeg-scaled",
    "torchvision",
)
STOKER_VARIANTS = {"stoker": None, "stoker-rg1": 1.0, "stoker-rg2": 2.0}
# Baselines that decode JPEGs at a reduced DCT scale, like stoker's reduce_gap=1.0.
SCALED_BASELINES = ("pil-draft", "simplejpeg-scaled")


def build_impl(key: str, pin: bool | None) -> Impl:
    if key in STOKER_VARIANTS:
        gap = STOKER_VARIANTS[key]
        label = "stoker" if gap is None else f"stoker reduce_gap={gap}"
        return _stoker_impl(key, label, gap, pin)
    builders: dict[str, Callable[[], Impl]] = {
        "pil": lambda: _pil_impl(draft=False),
        "pil-draft": lambda: _pil_impl(draft=True),
        "cv2": _cv2_impl,
        "simplejpeg": lambda: _simplejpeg_impl(scaled=False),
        "simplejpeg-scaled": lambda: _simplejpeg_impl(scaled=True),
        "torchvision": _torchvision_impl,
    }
    return builders[key]()


# --------------------------------------------------------------------------------------------
# Measurement.


def as_numpy(x: Any) -> F32:
    if isinstance(x, torch.Tensor):
        return np.asarray(x.detach().cpu().numpy(), dtype=np.float32)
    return np.asarray(x, dtype=np.float32)


def compare(ref: F32, out: F32) -> dict[str, Any]:
    """Shape check and abs difference on the 0-255 scale (undoing the std division)."""
    if ref.shape != out.shape:
        return {"shape_ok": False, "shape": list(out.shape), "ref_shape": list(ref.shape)}
    to_255 = (np.asarray(STD, dtype=np.float32) * 255.0).reshape(1, 3, 1, 1)
    diff = np.abs(ref - out) * to_255
    return {
        "shape_ok": True,
        "shape": list(out.shape),
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
    }


def make_batches(images: Sequence[bytes], batch: int, count: int) -> list[list[bytes]]:
    """`count` batches of `batch` images, cycling through `images`."""
    n = len(images)
    return [[images[(k * batch + j) % n] for j in range(batch)] for k in range(count)]


def timed_rate(fn: BatchFn, batches: Sequence[Batch], duration: float) -> float:
    """Images per second of `fn` over whole batches, for at least `duration` seconds."""
    done = 0
    k = 0
    start = time.perf_counter()
    while True:
        batch = batches[k % len(batches)]
        fn(batch)
        done += len(batch)
        k += 1
        elapsed = time.perf_counter() - start
        if elapsed >= duration:
            return done / elapsed


def stream_rate(
    stoker_mod: Any, spec: Any, batches: Sequence[Batch], duration: float, depth: int = 2
) -> float:
    """stoker's rate with `depth` batches in flight (preprocess_batch_async into preallocated
    outputs), so one batch's tail overlaps the next batch's start, as in a serving loop."""
    if not hasattr(stoker_mod, "preprocess_batch_async"):
        return timed_rate(_sync_into(stoker_mod, spec, len(batches[0])), batches, duration)
    outs = [
        torch.empty((len(batches[0]), 3, CROP, CROP), dtype=torch.float32) for _ in range(depth)
    ]
    pending: collections.deque[tuple[Future[torch.Tensor], int]] = collections.deque()
    done = 0
    k = 0
    start = time.perf_counter()
    while True:
        if len(pending) == depth:
            fut, n = pending.popleft()
            fut.result()
            done += n
            elapsed = time.perf_counter() - start
            if elapsed >= duration:
                for fut, _ in pending:
                    fut.result()
                return done / elapsed
        batch = batches[k % len(batches)]
        pending.append(
            (stoker_mod.preprocess_batch_async(batch, spec, out=outs[k % depth]), len(batch))
        )
        k += 1


def _sync_into(stoker_mod: Any, spec: Any, n: int) -> BatchFn:
    out = torch.empty((n, 3, CROP, CROP), dtype=torch.float32)

    def fn(batch: Batch) -> torch.Tensor:
        return stoker_mod.preprocess_batch(batch, spec, out=out)  # type: ignore[no-any-return]

    return fn


# --------------------------------------------------------------------------------------------
# Machine description.


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for dist in (
        "stoker",
        "torch",
        "torchvision",
        "numpy",
        "pillow",
        "opencv-python-headless",
        "opencv-python",
        "simplejpeg",
    ):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    with contextlib.suppress(ImportError):
        from PIL import features

        versions["pillow libjpeg_turbo"] = features.version("libjpeg_turbo")
    return versions


def machine_info() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "cuda_available": torch.cuda.is_available(),
    }


# --------------------------------------------------------------------------------------------
# Report.


def fmt_rate(x: float | None) -> str:
    return "-" if x is None else f"{x:,.1f}"


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def quiet_warnings() -> None:
    """Known, harmless warnings of the baselines: torch.frombuffer on read-only bytes (nothing
    writes to it), and torchvision's deprecation of its decoders in favor of TorchCodec."""
    warnings.filterwarnings("ignore", message="The given buffer is not writable")
    warnings.filterwarnings("ignore", message=".*TorchCodec")


def say(msg: str) -> None:
    print(msg, flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="short run for smoke tests")
    p.add_argument("--sets", default="small,large", help="image sets: small,large")
    p.add_argument(
        "--impls", default=",".join(IMPL_KEYS), help="comma list of: " + ", ".join(IMPL_KEYS)
    )
    p.add_argument(
        "--threads", type=int, default=None, help="threads for the all-core run (default: all)"
    )
    p.add_argument("--json", metavar="PATH", help="write every number and the machine here")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3)")
    p.add_argument("--duration", type=float, default=None, help="seconds per impl per round")
    p.add_argument("--batch", type=int, default=None, help="per-core batch size (default 32)")
    p.add_argument(
        "--no-pin", action="store_true", help="stoker returns unpinned memory even with CUDA"
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    for s in sets:
        if s not in IMAGE_SETS:
            sys.exit(f"unknown image set {s!r}; choose from {', '.join(IMAGE_SETS)}")
    keys = [k.strip() for k in args.impls.split(",") if k.strip()]
    for k in keys:
        if k not in IMPL_KEYS:
            sys.exit(f"unknown implementation {k!r}; choose from {', '.join(IMPL_KEYS)}")
    if "stoker" not in keys:
        keys.insert(0, "stoker")  # the reference every ratio is taken against

    quick = args.quick
    rounds = args.rounds or (2 if quick else 3)
    duration = args.duration or (0.25 if quick else 1.5)
    batch_size = args.batch or (8 if quick else 32)
    n_images = {"small": 16 if quick else 64, "large": 4 if quick else 16}
    threads = args.threads or usable_cpus()
    allcore_batch = max(64, 16 * threads) if not quick else 8 * threads
    native_batch = 16 if quick else 64
    warmup = 0.5 if quick else 1.5  # seconds at all threads before those are timed
    pin: bool | None = False if args.no_pin else None

    quiet_warnings()
    try:
        import stoker
    except ImportError as e:
        sys.exit(f"stoker is not importable ({e}); build it first: make setup")

    say(f"# stoker preprocessing benchmark ({'quick' if quick else 'full'})")
    machine = machine_info()
    versions = library_versions()
    say(
        f"{machine['cpu_model']}, {machine['usable_cpus']} usable CPUs, "
        f"{machine['platform']}, Python {machine['python']}"
    )
    say("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v is not None))
    say(
        f"per core: {rounds} interleaved rounds x {duration:g} s per implementation, batch "
        f"{batch_size}; all cores: {threads} threads, batch {allcore_batch}"
    )

    impls: list[Impl] = []
    skipped: dict[str, str] = {}
    for key in keys:
        try:
            impls.append(build_impl(key, pin))
        except ImportError as e:
            skipped[key] = f"not installed: {e}"
            say(f"note: skipping {key} ({e})")

    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "versions": versions,
        "config": {
            "quick": quick,
            "rounds": rounds,
            "duration_s": duration,
            "batch": batch_size,
            "allcore_threads": threads,
            "allcore_batch": allcore_batch,
            "native_batch": native_batch,
            "pin_memory": pin,
            "pipeline": f"decode, resize shorter side {SIZE} bilinear antialias, center crop "
            f"{CROP}, normalize ImageNet mean/std, float32 NCHW",
        },
        "skipped": skipped,
        "sets": {},
        "checks": {},
        "per_core": {},
        "all_core": {},
    }

    for set_name in sets:
        say(f"\n## {set_name} images")
        t0 = time.perf_counter()
        images = IMAGE_SETS[set_name](n_images[set_name])
        kb = [len(b) / 1000 for b in images]
        say(
            f"{len(images)} JPEGs generated in {time.perf_counter() - t0:.1f} s, "
            f"{min(kb):.0f}-{max(kb):.0f} KB (mean {statistics.mean(kb):.0f})"
        )
        results["sets"][set_name] = {"n_images": len(images), "kb": kb}

        # Correctness: every implementation against stoker on a few images; DCT-scaled decoders
        # against stoker's reduce_gap=1.0 (the same decode scale rule) when that row runs.
        for impl in impls:
            impl.set_threads(1)
        torch.set_num_threads(1)
        sample = images[:2]
        by_key = {impl.key: impl for impl in impls}
        refs: dict[str, F32] = {}
        checks: dict[str, Any] = {}
        live: list[Impl] = []
        say("check against stoker on 2 images (0-255 scale):")
        for impl in impls:
            ref_key = "stoker"
            if impl.key in SCALED_BASELINES and "stoker-rg1" in by_key:
                ref_key = "stoker-rg1"
            try:
                if ref_key not in refs:
                    refs[ref_key] = as_numpy(by_key[ref_key].fn(sample))
                c = compare(refs[ref_key], as_numpy(impl.fn(sample)))
            except Exception as e:  # a broken baseline is reported, not fatal
                checks[impl.key] = {"error": repr(e)}
                say(f"  {impl.key:18s} FAILED: {e!r}; left out")
                continue
            c["against"] = ref_key
            checks[impl.key] = c
            live.append(impl)
            if c["shape_ok"]:
                flag = "" if c["mean_abs"] < 5.0 else "   <-- WARNING: large difference"
                say(
                    f"  {impl.key:18s} vs {ref_key:10s} shape {tuple(c['shape'])} "
                    f"max abs {c['max_abs']:6.2f} mean abs {c['mean_abs']:6.3f}{flag}"
                )
            else:
                say(f"  {impl.key:18s} WARNING: shape {c['shape']} != {c['ref_shape']}")
        results["checks"][set_name] = checks

        # Per core, interleaved rounds.
        batches = make_batches(images, batch_size, max(1, len(images) // batch_size))
        for impl in live:
            impl.fn(batches[0])  # warm-up
        rates: dict[str, list[float]] = {impl.key: [] for impl in live}
        for r in range(rounds):
            order = live[r % len(live) :] + live[: r % len(live)]
            for impl in order:
                rates[impl.key].append(timed_rate(impl.fn, batches, duration))
            say(
                f"round {r + 1}/{rounds}: "
                + ", ".join(f"{impl.key} {rates[impl.key][-1]:.1f}" for impl in live)
            )
        per_core: dict[str, Any] = {
            impl.key: {
                "label": impl.label,
                "rates": rates[impl.key],
                "median": statistics.median(rates[impl.key]),
            }
            for impl in live
        }
        results["per_core"][set_name] = per_core

        # All cores: stoker's variants, single thread vs all threads on large batches.
        all_core: dict[str, Any] = {}
        variants = [k for k in STOKER_VARIANTS if k in {impl.key for impl in live}]
        specs = {
            k: stoker.ImageSpec(
                size=SIZE, crop=CROP, mean=MEAN, std=STD, reduce_gap=STOKER_VARIANTS[k]
            )
            for k in variants
        }
        native_batches = make_batches(images, native_batch, 2)
        big_batches = make_batches(images, allcore_batch, 2)
        single: dict[str, list[float]] = {k: [] for k in variants}
        multi: dict[str, list[float]] = {k: [] for k in variants}
        sync_fns = {k: _sync_into(stoker, specs[k], native_batch) for k in variants}
        # Right after the pool is resized, the first second or so runs slow (seen on VMs), so
        # each switch is followed by an untimed warm-up.
        for _ in range(rounds):
            stoker.set_num_threads(1)
            for k in variants:
                timed_rate(sync_fns[k], native_batches, warmup / len(variants))
            for k in variants:
                single[k].append(timed_rate(sync_fns[k], native_batches, duration))
            stoker.set_num_threads(threads)
            for k in variants:
                stream_rate(stoker, specs[k], big_batches, warmup / len(variants))
            for k in variants:
                multi[k].append(stream_rate(stoker, specs[k], big_batches, duration))
        for k in variants:
            s1 = statistics.median(single[k])
            sn = statistics.median(multi[k])
            eff = sn / (threads * s1)
            all_core[k] = {
                "threads": threads,
                "single_thread_rates": single[k],
                "all_thread_rates": multi[k],
                "single_thread": s1,
                "all_threads": sn,
                "efficiency": eff,
                "python_overhead": 1.0 - per_core[k]["median"] / s1,
            }
            say(
                f"{k}: 1 thread (batch {native_batch}, out=) {s1:.1f} img/s; {threads} threads "
                f"(batch {allcore_batch}, 2 in flight) {sn:.1f} img/s; efficiency {eff:.2f}"
            )
        results["all_core"][set_name] = all_core
        stoker.set_num_threads(1)

    report(results, sets)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
        say(f"\nwrote {args.json}")
    return 0


def report(results: dict[str, Any], sets: Sequence[str]) -> None:
    cfg = results["config"]
    say("\n# Results")
    say(
        f"\n{results['machine']['cpu_model']}, {results['machine']['usable_cpus']} CPUs; "
        f"per core = one thread each, median of {cfg['rounds']} interleaved rounds."
    )
    for set_name in sets:
        per_core = results["per_core"][set_name]
        base = per_core["stoker"]["median"]
        rows = []
        for key, r in per_core.items():
            c = results["checks"][set_name].get(key, {})
            diff = "-"
            if c.get("shape_ok"):
                diff = f"{c['mean_abs']:.2f} / {c['max_abs']:.1f}"
                if c["against"] != "stoker":
                    diff += f" (vs {per_core.get(c['against'], {}).get('label', c['against'])})"
            rows.append([r["label"], fmt_rate(r["median"]), fmt_ratio(r["median"] / base), diff])
        say(f"\n### {set_name} images, per core\n")
        say(
            markdown_table(
                ["implementation", "img/s", "÷ stoker", "diff vs stoker, mean / max (0-255)"], rows
            )
        )
        all_core = results["all_core"][set_name]
        if all_core:
            say(f"\n### {set_name} images, all cores (stoker)\n")
            say(
                markdown_table(
                    [
                        "variant",
                        "1 thread img/s",
                        f"{cfg['allcore_threads']} threads img/s",
                        "efficiency",
                        f"cost of batch-{cfg['batch']} calls vs batch-{cfg['native_batch']}",
                    ],
                    [
                        [
                            per_core[k]["label"],
                            fmt_rate(a["single_thread"]),
                            fmt_rate(a["all_threads"]),
                            f"{a['efficiency']:.2f}",
                            f"{100 * a['python_overhead']:.1f}%",
                        ]
                        for k, a in all_core.items()
                    ],
                )
            )

    variants = list(STOKER_VARIANTS)
    labels = {None: "stoker", 1.0: "reduce_gap=1.0", 2.0: "reduce_gap=2.0"}
    rows = []
    bars: list[dict[str, Any]] = []
    for baseline, set_name, need in SPEED_BARS:
        per_core = results["per_core"].get(set_name, {})
        if baseline not in per_core:
            continue
        row = [f"stoker ÷ {baseline}, {set_name}", f">= {need:g}x"]
        for k in variants:
            if k in per_core:
                ratio = per_core[k]["median"] / per_core[baseline]["median"]
                row.append(f"{ratio:.2f}x {'pass' if ratio >= need else 'FAIL'}")
                bars.append(
                    {"bar": row[0], "need": need, "variant": k, "ratio": ratio, "ok": ratio >= need}
                )
            else:
                row.append("-")
        rows.append(row)
    for set_name in sets:
        all_core = results["all_core"].get(set_name, {})
        if not all_core:
            continue
        row = [f"all-core efficiency, {set_name}", f">= {EFFICIENCY_BAR:g}"]
        for k in variants:
            if k in all_core:
                eff = all_core[k]["efficiency"]
                row.append(f"{eff:.2f} {'pass' if eff >= EFFICIENCY_BAR else 'FAIL'}")
                bars.append(
                    {
                        "bar": row[0],
                        "need": EFFICIENCY_BAR,
                        "variant": k,
                        "ratio": eff,
                        "ok": eff >= EFFICIENCY_BAR,
                    }
                )
            else:
                row.append("-")
        rows.append(row)
    results["bars"] = bars
    if rows:
        say("\n### Bars (stoker column by stoker variant)\n")
        say(markdown_table(["bar", "need", *(labels[STOKER_VARIANTS[k]] for k in variants)], rows))
    missing = [b for b, s, _ in SPEED_BARS if s in sets and b not in results["per_core"][s]]
    if missing:
        say(f"\nbars not measured (baseline not run): {', '.join(sorted(set(missing)))}")
    for key, why in results["skipped"].items():
        say(f"skipped {key}: {why}")


if __name__ == "__main__":
    sys.exit(main())
