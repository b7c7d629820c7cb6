"""Offline generation: stoker's engine against Hugging Face ``generate`` with static batching.

A Qwen3-0.6B-shaped decoder with random bf16 weights (nothing can be downloaded; the shape, not
the weights, sets the cost), 256 requests whose prompt and output lengths are drawn from
100-1,024 tokens, every output running to its drawn length (EOS ignored), sampled at
temperature 1. stoker gets all requests at once, as vLLM's offline throughput benchmark does;
the baseline runs ``generate`` on fixed batches of left-padded prompts. Both use the same
weights in the same process. Also reported: the GPU's idle time between decode steps (CUDA events
around every step), and a prefix-cache workload (a shared 1,000-token system prompt).

    python benchmarks/bench_generate.py --device cuda                 # on the GPU machine
    .venv/bin/python benchmarks/bench_generate.py --shape tiny --requests 16 --hf-batch 8
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import time
from typing import Any

import torch

from stoker.generate import Decoder, DecoderConfig, GenerateEngine, SamplingOptions

SHAPES: dict[str, dict[str, Any]] = {
    # Qwen3-0.6B's published architecture.
    "qwen3-0.6b": dict(
        vocab_size=151936, hidden_size=1024, num_layers=28, num_heads=16, num_kv_heads=8,
        head_dim=128, intermediate_size=3072, rope_theta=1e6, tie_word_embeddings=True,
    ),
    "tiny": dict(
        vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
        head_dim=16, intermediate_size=128, rope_theta=1e4, tie_word_embeddings=False,
    ),
}  # fmt: skip


def _hf_config(shape: dict[str, Any], max_len: int) -> Any:
    import transformers

    return transformers.Qwen3Config(
        vocab_size=shape["vocab_size"],
        hidden_size=shape["hidden_size"],
        num_hidden_layers=shape["num_layers"],
        num_attention_heads=shape["num_heads"],
        num_key_value_heads=shape["num_kv_heads"],
        head_dim=shape["head_dim"],
        intermediate_size=shape["intermediate_size"],
        rope_parameters={"rope_type": "default", "rope_theta": shape["rope_theta"]},
        tie_word_embeddings=shape["tie_word_embeddings"],
        max_position_embeddings=max_len,
        eos_token_id=None,
        bos_token_id=None,
        pad_token_id=0,
    )


def _decoder_config(shape: dict[str, Any], max_len: int) -> DecoderConfig:
    return DecoderConfig(
        family="qwen3",
        vocab_size=shape["vocab_size"],
        hidden_size=shape["hidden_size"],
        num_layers=shape["num_layers"],
        num_heads=shape["num_heads"],
        num_kv_heads=shape["num_kv_heads"],
        head_dim=shape["head_dim"],
        intermediate_size=shape["intermediate_size"],
        rms_norm_eps=1e-6,
        rope_theta=shape["rope_theta"],
        max_position_embeddings=max_len,
        tie_word_embeddings=shape["tie_word_embeddings"],
        attention_bias=False,
        qk_norm=True,
        eos_token_ids=(),
    )


def _workload(n: int, lo: int, hi: int, vocab: int, seed: int) -> list[tuple[list[int], int]]:
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(lo, hi + 1, (n, 2), generator=g).tolist()
    return [(torch.randint(0, vocab, (p,), generator=g).tolist(), o) for p, o in lens]


_ROW_BANDS = (1, 16, 32, 64, 128, 192)


def _idle(engine: GenerateEngine) -> dict[str, Any]:
    """GPU idle time between consecutive decode steps, as a share of their busy time; the GPU
    time of steps with prompt tokens beside."""
    timeline = engine.runner.timeline or []
    torch.cuda.synchronize()
    gaps, busy, sampling, big, mixed = [], [], [], [], []
    by_rows: dict[int, list[float]] = {b: [] for b in _ROW_BANDS}
    for (_, _, end, _, _), (start, mid, end2, rows, decode) in itertools.pairwise(timeline):
        if not decode:
            mixed.append(start.elapsed_time(end2))
        else:
            gaps.append(end.elapsed_time(start))
            busy.append(start.elapsed_time(end2))
            sampling.append(mid.elapsed_time(end2))
            if rows >= 192:
                big.append(start.elapsed_time(end2))
            by_rows[max(b for b in _ROW_BANDS if b <= rows)].append(busy[-1])
    if not busy:
        return {}
    return {
        "decode_steps": len(busy),
        "step_ms_median": statistics.median(busy),
        "step_ms_median_192_rows_up": statistics.median(big) if big else 0.0,
        "sampling_ms_median": statistics.median(sampling),
        "gap_ms_median": statistics.median(gaps),
        "gap_ms_p90": sorted(gaps)[int(0.9 * len(gaps))],
        "idle_share": sum(gaps) / sum(busy),
        "prompt_steps": len(mixed),
        "prompt_step_ms_median": statistics.median(mixed) if mixed else 0.0,
        # Decode steps by how many rows they ran: (steps, their total ms) from each band's floor.
        "decode_ms_by_rows": {b: (len(t), sum(t)) for b, t in by_rows.items() if t},
    }


def run_stoker(args: argparse.Namespace, decoder: Decoder, work: list[Any]) -> dict[str, Any]:
    if decoder.device.type == "cuda":
        free, total = torch.cuda.mem_get_info()
        print(
            f"GPU memory before the engine: {free / 2**30:.1f} of {total / 2**30:.1f} GiB free, "
            f"{torch.cuda.memory_allocated() / 2**30:.1f} GiB allocated, "
            f"{torch.cuda.memory_reserved() / 2**30:.1f} GiB reserved by torch"
        )
    engine = GenerateEngine(
        "random-" + args.shape,
        decoder=decoder,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=args.max_len,
        cuda_graphs=not args.no_graphs,
        schedule_ahead=not args.no_ahead,
        prompt_graph_tokens=args.prompt_graph_tokens,
    )
    try:
        opts = [SamplingOptions(max_tokens=o, temperature=1.0, ignore_eos=True) for _, o in work]
        warm = SamplingOptions(max_tokens=8, temperature=1.0, ignore_eos=True)
        engine.generate([p for p, _ in work[:8]], warm)
        if decoder.device.type == "cuda":
            engine.runner.timeline = []
        start = time.perf_counter()
        out = engine.generate([p for p, _ in work], opts)
        seconds = time.perf_counter() - start
        engine.runner.timeline, timeline = None, engine.runner.timeline
        if [len(t) for t in out] != [o for _, o in work]:
            raise RuntimeError("stoker returned outputs of the wrong length")
        engine.runner.timeline = timeline
        result: dict[str, Any] = {
            "seconds": seconds,
            "output_tokens": sum(o for _, o in work),
            "total_tokens": sum(len(p) + o for p, o in work),
            "kv_blocks": engine.num_blocks,
            "preemptions": engine.stats().preemptions,
            "prompt_replays": engine.runner.prompt_replays,
        }
        if decoder.device.type == "cuda":
            result |= _idle(engine)
        if args.prefix:
            engine.runner.timeline = None
            result["prefix"] = _prefix(engine, args)
        return result
    finally:
        engine.close()
        engine.runner.cache.clear()


def _ttft(engine: GenerateEngine, prompts: list[list[int]]) -> float:
    """Median time to the first token of requests submitted together, in ms."""
    import asyncio

    async def one(prompt: list[int]) -> float:
        start = time.perf_counter()
        async for _ in engine.stream(prompt, SamplingOptions(max_tokens=1, temperature=0.0)):
            break
        return (time.perf_counter() - start) * 1e3

    async def all_of() -> list[float]:
        return list(await asyncio.gather(*(one(p) for p in prompts)))

    return statistics.median(asyncio.run(all_of()))


def _prefix(engine: GenerateEngine, args: argparse.Namespace) -> dict[str, float]:
    vocab = engine.config.vocab_size
    g = torch.Generator().manual_seed(args.seed + 1)
    n = args.prefix_requests

    def rand(k: int) -> list[int]:
        return torch.randint(0, vocab, (k,), generator=g).tolist()

    unique = [rand(1000) + rand(100) for _ in range(n)]
    system = rand(1000)
    shared = [system + rand(100) for _ in range(n)]
    before = engine.stats()
    cold = _ttft(engine, unique)
    _ttft(engine, [system + rand(100)])  # puts the system prompt in the cache
    mid = engine.stats()
    warm = _ttft(engine, shared)
    after = engine.stats()
    hits = after.prefix_hit_blocks - mid.prefix_hit_blocks
    looked = hits + after.prefix_miss_blocks - mid.prefix_miss_blocks
    del before
    return {
        "requests": n,
        "ttft_ms_unique_prefixes": cold,
        "ttft_ms_shared_prefix": warm,
        "hit_rate": hits / looked if looked else 0.0,
    }


def run_hf(args: argparse.Namespace, model: Any, work: list[Any]) -> dict[str, Any]:
    device = next(model.parameters()).device
    batches = [work[i : i + args.hf_batch] for i in range(0, len(work), args.hf_batch)]
    if args.hf_batches:
        batches = batches[: args.hf_batches]
    tokens = sum(o for b in batches for _, o in b)
    start = time.perf_counter()
    for batch in batches:
        width = max(len(p) for p, _ in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for i, (p, _) in enumerate(batch):
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        model.generate(
            ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max(o for _, o in batch),
            min_new_tokens=max(o for _, o in batch),
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            pad_token_id=0,
        )
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {
        "seconds": time.perf_counter() - start,
        "output_tokens": tokens,
        "requests": sum(len(b) for b in batches),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--shape", choices=sorted(SHAPES), default="qwen3-0.6b")
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--min-len", type=int, default=100)
    p.add_argument("--max-len-draw", type=int, default=1024)
    p.add_argument("--max-len", type=int, default=2048, help="the engine's context length")
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=int, default=8192)
    p.add_argument("--no-graphs", action="store_true")
    p.add_argument(
        "--no-ahead",
        action="store_true",
        help="wait for each step's tokens before scheduling the next (the A/B baseline)",
    )
    p.add_argument(
        "--prompt-graph-tokens",
        type=int,
        default=2048,
        help="steps with prompt tokens replay CUDA graphs up to this many tokens (0: eager)",
    )
    p.add_argument(
        "--no-split-kv",
        action="store_true",
        help="one attention program per decode row and kv head, however few (the A/B baseline)",
    )
    p.add_argument("--hf-batch", type=int, default=64)
    p.add_argument("--hf-batches", type=int, default=0, help="run only this many (0: all)")
    p.add_argument("--no-hf", action="store_true")
    p.add_argument("--prefix", action="store_true", help="also the shared-prefix TTFT workload")
    p.add_argument("--prefix-requests", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()

    import transformers

    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    shape = SHAPES[args.shape]
    torch.manual_seed(args.seed)
    model_class: Any = transformers.Qwen3ForCausalLM
    with torch.device(args.device):
        hf = model_class(_hf_config(shape, args.max_len)).to(dtype).eval()
    decoder = Decoder(_decoder_config(shape, args.max_len), dtype, args.device)
    decoder.load(hf.state_dict().items())
    decoder.split_kv = not args.no_split_kv
    work = _workload(args.requests, args.min_len, args.max_len_draw, shape["vocab_size"], args.seed)
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor()
    print(f"device {gpu}; shape {args.shape}; {args.requests} requests; torch {torch.__version__}")

    hf_on_gpu = hf
    if not args.no_hf:
        hf_on_gpu = hf.cpu() if args.device.startswith("cuda") else hf  # room for stoker's cache
    figures: dict[str, Any] = {"stoker": run_stoker(args, decoder, work)}
    del decoder
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    if not args.no_hf:
        hf_on_gpu = hf.to(args.device)
        figures["hf"] = run_hf(args, hf_on_gpu, work)

    s = figures["stoker"]
    rate = s["output_tokens"] / s["seconds"]
    total = s["total_tokens"] / s["seconds"]
    print(f"stoker: {rate:,.0f} output tok/s ({s['output_tokens']} tokens, {s['seconds']:.1f} s),")
    print(f"        {total:,.0f} total tok/s, {s['kv_blocks']} KV blocks")
    if "idle_share" in s:
        print(
            f"        decode step median {s['step_ms_median']:.2f} ms "
            f"({s['step_ms_median_192_rows_up']:.2f} ms at >= 192 rows, sampling "
            f"{s['sampling_ms_median']:.2f} ms), gap median {s['gap_ms_median'] * 1e3:.0f} us "
            f"(p90 {s['gap_ms_p90'] * 1e3:.0f}), GPU idle {100 * s['idle_share']:.2f}% of steps"
        )
        print(
            f"        {s['prompt_steps']} steps with prompt tokens, median "
            f"{s['prompt_step_ms_median']:.2f} ms, {s['prompt_replays']} of them graph replays"
        )
        bands = ", ".join(
            f"{b}+: {n} in {ms / 1e3:.2f} s" for b, (n, ms) in s["decode_ms_by_rows"].items()
        )
        print(f"        decode steps by rows: {bands}")
    if "prefix" in s:
        x = s["prefix"]
        print(
            f"prefix: TTFT {x['ttft_ms_unique_prefixes']:.1f} ms unique -> "
            f"{x['ttft_ms_shared_prefix']:.1f} ms shared, hit rate {100 * x['hit_rate']:.1f}%"
        )
    if "hf" in figures:
        h = figures["hf"]
        hf_rate = h["output_tokens"] / h["seconds"]
        print(
            f"hf generate (batch {args.hf_batch}): {hf_rate:,.0f} output tok/s "
            f"({h['requests']} requests, {h['seconds']:.1f} s); stoker/hf {rate / hf_rate:.2f}x"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
