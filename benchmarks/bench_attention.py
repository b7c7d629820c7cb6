"""Paged attention kernel speed: decode steps (bandwidth) and one prefill step (compute).

Decode steps of B sequences (one query token each, context lengths uniform in [100, 2048]) and a
prefill step of 4 sequences x 1024 tokens, Llama-style heads (Hq=16, Hkv=8, D=128), 16-token
cache blocks in shuffled order, bfloat16. Times ``paged_attention_triton`` with CUDA events
(median of --reps after --warmup calls) and reports the K/V bytes of the sequences divided by the
time (each key and value is read once per kv head), next to a device-to-device copy as the
practical bandwidth ceiling (bytes read + written). Kernel calls are timed inside a CUDA graph
(as a serving decode step runs), so launch overhead is left out. The torch reference (a Python
loop over sequences) runs on a smaller decode step for comparison, and checks the kernel there.

``--device cpu`` runs tiny sizes through Triton's interpreter: a smoke test of the script, not
a measurement.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from stoker.generate._attention import (
    decode_splits,
    paged_attention_reference,
    paged_attention_triton,
)


@dataclass
class Shape:
    n_q: int = 16
    n_kv: int = 8
    head_dim: int = 128
    block_size: int = 16
    dtype: torch.dtype = torch.bfloat16


@dataclass
class Step:
    q: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    cu: torch.Tensor
    ctx: torch.Tensor
    tables: torch.Tensor
    max_query_len: int

    def args(
        self,
    ) -> tuple[
        torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float
    ]:
        scale = self.q.shape[2] ** -0.5
        return (self.q, self.k_cache, self.v_cache, self.cu, self.ctx, self.tables, scale)


def make_step(
    q_lens: list[int], ctx_lens: list[int], shape: Shape, device: str, gen: torch.Generator
) -> Step:
    counts = [math.ceil(n / shape.block_size) for n in ctx_lens]
    order = torch.randperm(sum(counts), generator=gen)
    tables = torch.full((len(counts), max(counts)), -1, dtype=torch.int32)
    start = 0
    for b, count in enumerate(counts):
        tables[b, :count] = order[start : start + count]
        start += count
    cache = (sum(counts), shape.block_size, shape.n_kv, shape.head_dim)
    kw: dict[str, Any] = {"dtype": shape.dtype, "device": device}
    q = torch.randn(sum(q_lens), shape.n_q, shape.head_dim, **kw)
    cu = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    ctx = torch.tensor(ctx_lens, dtype=torch.int32)
    return Step(
        q,
        torch.randn(cache, **kw),
        torch.randn(cache, **kw),
        cu.to(device),
        ctx.to(device),
        tables.to(device),
        max(q_lens),
    )


def median_seconds(
    fn: Callable[[], object], device: str, warmup: int, reps: int, graph: bool
) -> float:
    """Median seconds per call. With ``graph`` (CUDA only) the calls are captured in a CUDA
    graph, as a decode step runs in serving, and timed with events: launch overhead excluded.
    Otherwise wall time around each call, synchronized."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    if graph and device == "cuda":
        calls = 10
        torch.cuda.synchronize()
        captured = torch.cuda.CUDAGraph()
        with torch.cuda.graph(captured):
            for _ in range(calls):
                fn()
        captured.replay()
        for _ in range(reps):
            start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            start.record()
            captured.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / calls)
        return statistics.median(times)
    for _ in range(reps):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(
    name: str,
    backend: str,
    step: Step,
    shape: Shape,
    device: str,
    warmup: int,
    reps: int,
    splits: int | None = None,
) -> dict[str, Any]:
    out = torch.empty_like(step.q)

    def run() -> object:
        if backend == "triton":
            return paged_attention_triton(*step.args(), step.max_query_len, out, None, splits)
        return paged_attention_reference(*step.args(), step.max_query_len, out)

    seconds = median_seconds(run, device, warmup, reps, backend == "triton")
    used = splits or decode_splits(len(step.ctx), shape.n_kv, step.q.device)
    ctx, cu = step.ctx.tolist(), step.cu.tolist()
    elem = torch.empty((), dtype=shape.dtype).element_size()
    kv_bytes = 2 * sum(ctx) * shape.n_kv * shape.head_dim * elem
    # Causal: query token i of a sequence with n keys and q_len queries sees n - q_len + i + 1.
    pairs = sum(
        sum(n - (cu[b + 1] - cu[b]) + i + 1 for i in range(cu[b + 1] - cu[b]))
        for b, n in enumerate(ctx)
    )
    flops = 4 * pairs * shape.n_q * shape.head_dim
    return {
        "case": name,
        "backend": backend,
        "sequences": len(ctx),
        "query_tokens": cu[-1],
        "kv_tokens": sum(ctx),
        "splits": used if backend == "triton" and name == "decode" else 1,
        "ms": seconds * 1e3,
        "kv_gb_per_s": kv_bytes / seconds / 1e9,
        "tflop_per_s": flops / seconds / 1e12,
    }


def copy_bandwidth(device: str, nbytes: int, warmup: int, reps: int) -> dict[str, Any]:
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    seconds = median_seconds(lambda: dst.copy_(src), device, warmup, reps, graph=True)
    return {"case": "device copy", "ms": seconds * 1e3, "gb_per_s": 2 * nbytes / seconds / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--reps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument(
        "--batches", help="decode steps of these many sequences, comma-separated [64,256]"
    )
    parser.add_argument(
        "--splits",
        default="auto",
        help="key shares of each decode program: auto (decode_splits), or numbers, "
        "comma-separated, each timed",
    )
    args = parser.parse_args()
    tiny = args.device == "cpu"
    gen = torch.Generator().manual_seed(args.seed)
    if tiny:
        shape = Shape(n_q=4, n_kv=2, head_dim=32)
        batches, ctx_range, prefill, ref_batch = [2, 4], (16, 80), (2, 32), 2
        args.warmup, args.reps = min(args.warmup, 1), min(args.reps, 3)
    else:
        shape = Shape()
        batches, ctx_range, prefill, ref_batch = [64, 256], (100, 2048), (4, 1024), 16
    if args.batches:
        batches = [int(b) for b in args.batches.split(",")]
    splits: list[int | None] = (
        [None] if args.splits == "auto" else [int(x) for x in args.splits.split(",")]
    )

    def decode(batch: int) -> Step:
        ctx = torch.randint(ctx_range[0], ctx_range[1] + 1, (batch,), generator=gen).tolist()
        return make_step([1] * batch, ctx, shape, args.device, gen)

    results = []
    for batch in batches:
        step = decode(batch)
        for split in splits:
            results.append(
                measure("decode", "triton", step, shape, args.device, args.warmup, args.reps, split)
            )
    seqs, tokens = prefill
    step = make_step([tokens] * seqs, [tokens] * seqs, shape, args.device, gen)
    results.append(measure("prefill", "triton", step, shape, args.device, args.warmup, args.reps))
    step = decode(ref_batch)
    ref_reps = max(1, args.reps // 10)
    for backend in ("triton", "torch"):
        results.append(measure("decode", backend, step, shape, args.device, 1, ref_reps))
    want = paged_attention_reference(*step.args(), step.max_query_len).float()
    got = paged_attention_triton(*step.args(), step.max_query_len).float()
    max_diff = float((got - want).abs().max())
    copy = copy_bandwidth(args.device, 256 << 20 if not tiny else 1 << 20, 2, 10)

    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU (Triton interpreter)"
    print(
        f"paged attention, {name}: Hq={shape.n_q} Hkv={shape.n_kv} D={shape.head_dim} "
        f"block_size={shape.block_size} {str(shape.dtype).removeprefix('torch.')}, "
        f"decode contexts uniform in {list(ctx_range)}"
    )
    print("| case | backend | seqs | key shares | q tokens | kv tokens | ms | KV GB/s | TFLOP/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['case']} | {r['backend']} | {r['sequences']} | {r['splits']} | "
            f"{r['query_tokens']} "
            f"| {r['kv_tokens']} | {r['ms']:.3f} | {r['kv_gb_per_s']:.0f} "
            f"| {r['tflop_per_s']:.2f} |"
        )
    print(f"device copy (read + write): {copy['gb_per_s']:.0f} GB/s")
    print(f"triton vs torch reference on the small decode step: max abs diff {max_diff:.2e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "results": results, "copy": copy, "max_diff": max_diff}, f)


if __name__ == "__main__":
    main()
