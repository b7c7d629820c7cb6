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
import datetime
import resource
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import torch
from _images import IMAGE_SETS
from _pipelines import (
    CROP,
    F32,
    IMPL_KEYS,
    MEAN,
    SCALED_BASELINES,
    SIZE,
    STD,
    STOKER_VARIANTS,
    Batch,
    BatchFn,
    Impl,
    as_numpy,
    build_impl,
    compare,
    quiet_warnings,
)
from _report import library_versions, machine_info, report, say, usable_cpus, write_json

# --------------------------------------------------------------------------------------------
# Measurement.


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
# Command line.


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
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 7)")
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
    rounds = args.rounds or (2 if quick else 7)
    duration = args.duration or (0.25 if quick else 0.8)
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
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
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
        # Kernel time's share of the process's CPU time at all threads: page faults and lock
        # contention in the kernel show up here, not in user time.
        kernel: dict[str, list[float]] = {k: [] for k in variants}
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
                before = resource.getrusage(resource.RUSAGE_SELF)
                multi[k].append(stream_rate(stoker, specs[k], big_batches, duration))
                after = resource.getrusage(resource.RUSAGE_SELF)
                cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
                kernel[k].append((after.ru_stime - before.ru_stime) / max(cpu, 1e-9))
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
                "kernel_cpu_share": kernel[k],
                "python_overhead": 1.0 - per_core[k]["median"] / s1,
            }
            say(
                f"{k}: 1 thread (batch {native_batch}, out=) {s1:.1f} img/s; {threads} threads "
                f"(batch {allcore_batch}, 2 in flight) {sn:.1f} img/s; efficiency {eff:.2f}; "
                f"kernel share of CPU time {statistics.median(kernel[k]):.1%}"
            )
        results["all_core"][set_name] = all_core
        stoker.set_num_threads(1)

    report(results, sets)
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
