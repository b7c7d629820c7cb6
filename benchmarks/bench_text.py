"""Text embeddings: stoker's TextEngine against per-request ``SentenceTransformer.encode``.

A stream of single-sentence requests from many callers, as a server sees it. The naive server
calls ``encode`` once per request, from a thread pool (one worker per caller) and, as a second
baseline, from one caller in sequence. stoker's callers call ``TextEngine.infer_sync`` from the
same number of threads. Same sentences, same model files, same device, one run.

    .venv/bin/python benchmarks/bench_text.py --device cpu
    .venv/bin/python benchmarks/bench_text.py --device cuda --dtype float16

Nothing is downloaded: both sides load the installed all-MiniLM-L6-v2 folder (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch

from stoker.text import TextEngine, default_model_dir, sample_sentences


def _rate(
    label: str, call: Callable[[str], Any], sentences: Sequence[str], callers: int
) -> tuple[float, list[Any]]:
    """Requests per second with ``callers`` threads each taking the next sentence."""
    call(sentences[0])  # warm-up outside the clock
    start = time.perf_counter()
    if callers == 1:
        out = [call(s) for s in sentences]
    else:
        with ThreadPoolExecutor(max_workers=callers) as pool:
            out = list(pool.map(call, sentences))
    rate = len(sentences) / (time.perf_counter() - start)
    print(f"  {label:44s} {rate:9.1f} sentences/s")
    return rate, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    parser.add_argument("--sentences", type=int, default=600)
    parser.add_argument("--callers", type=int, default=32)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-delay-ms", type=float, default=2.0)
    parser.add_argument("--model", help="a model folder (default: the installed all-MiniLM-L6-v2)")
    parser.add_argument(
        "--cuda-graphs",
        choices=("on", "off", "both"),
        default="on",
        help="stoker's encoder as CUDA graphs; 'both' also runs it eagerly, for an A/B",
    )
    parser.add_argument(
        "--baseline",
        choices=("sentence-transformers", "none"),
        default="sentence-transformers",
        help="'none' measures stoker alone (with --cuda-graphs both: graphs against eager)",
    )
    args = parser.parse_args()

    dtype = getattr(torch, args.dtype)
    folder = args.model or default_model_dir()
    sentences = sample_sentences(args.sentences, seed=7)
    words = [len(s.split()) for s in sentences]
    print(
        f"{len(sentences)} sentences of {min(words)}-{max(words)} words "
        f"(mean {np.mean(words):.0f}), {args.callers} callers, device {args.device}, "
        f"{args.dtype}, torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
        f"{os.cpu_count()} CPUs {platform.machine()}"
    )
    print("throughput, single-sentence requests:")
    baselines: list[tuple[str, float, list[Any]]] = []
    if args.baseline == "sentence-transformers":
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(folder), device=args.device)
        if dtype != torch.float32:
            st = st.to(dtype)
        seq, _ = _rate("SentenceTransformer.encode, 1 caller", st.encode, sentences, 1)
        naive, reference = _rate(
            f"SentenceTransformer.encode, {args.callers} threads",
            st.encode,
            sentences,
            args.callers,
        )
        baselines = [("encode in threads", naive, reference), ("encode in sequence", seq, [])]
    graphs = {"on": [True], "off": [False], "both": [False, True]}[args.cuda_graphs]
    for cuda_graphs in graphs:
        with TextEngine(
            folder,
            device=args.device,
            dtype=None if dtype == torch.float32 else dtype,
            max_batch_size=args.max_batch_size,
            max_delay_ms=args.max_delay_ms,
            cuda_graphs=cuda_graphs,
        ) as engine:
            engine.infer_sync(sentences[0])
            engine.reset_stats()
            mode = "graphs" if engine.graphs is not None else "eager"
            ours, got = _rate(
                f"stoker TextEngine.infer_sync ({mode}), {args.callers} threads",
                engine.infer_sync,
                sentences,
                args.callers,
            )
            stats = engine.stats()
        _report(ours, got, baselines, stats)
        # A later stoker run is compared with the earlier ones too (graphs against eager).
        baselines.append((f"stoker {mode}", ours, got))


def _report(
    ours: float, got: list[Any], baselines: list[tuple[str, float, list[Any]]], stats: Any
) -> None:
    for name, rate, reference in baselines:
        line = f"stoker / {name}: {ours / rate:.2f}x"
        if reference:
            cos = [
                float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
                for a, b in zip(got, reference, strict=True)
            ]
            line += f"; agreement: min cosine {min(cos):.6f} over {len(cos)} sentences"
        print(line)
    n = stats["total"].count
    model_us = stats["batch_compute"].sum / max(n, 1)
    print(
        f"per request (µs, means over {n} requests in {stats['batch_size'].count} batches of "
        f"{stats['batch_size'].mean:.1f}):\n"
        f"  tokenize {stats['tokenize'].mean:.0f}, batching (pad + copy) "
        f"{stats['batch'].mean / max(stats['batch_size'].mean, 1):.0f} per request "
        f"({stats['batch'].mean:.0f} per batch), postprocess "
        f"{stats['postprocess'].mean / max(stats['batch_size'].mean, 1):.0f} per request\n"
        f"  model time {model_us:.0f} per request (batch compute / requests); "
        f"queue wait {stats['queue'].mean:.0f}, total latency {stats['total'].mean:.0f}"
    )


if __name__ == "__main__":
    main()
