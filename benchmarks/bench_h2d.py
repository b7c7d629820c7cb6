"""Host-to-device copies of stoker's batch outputs: are they page-locked, and is the copy async?

Compares, for one (256, 3, 224, 224) float32 batch: stoker's arena output (pinned through the CUDA
runtime torch loaded), a pageable torch tensor and a torch ``pin_memory()`` tensor. For each:
``tensor.is_pinned()`` (which torch answers from the CUDA driver), how long a non-blocking copy
takes to return, and the copy bandwidth measured with CUDA events.
Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from typing import Any

import numpy as np
import torch
from PIL import Image

import stoker


def measure(host: torch.Tensor, repeats: int) -> dict[str, Any]:
    device = torch.empty_like(host, device="cuda")
    device.copy_(host, non_blocking=True)
    torch.cuda.synchronize()
    returns, seconds = [], []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        torch.cuda.synchronize()
        start.record()
        t0 = time.perf_counter()
        device.copy_(host, non_blocking=True)
        returns.append(time.perf_counter() - t0)
        end.record()
        end.synchronize()
        seconds.append(start.elapsed_time(end) / 1e3)
    assert torch.equal(device.cpu(), host)
    return {
        "is_pinned": bool(host.is_pinned()),
        "call_returns_ms": float(np.median(returns) * 1e3),
        "copy_ms": float(np.median(seconds) * 1e3),
        "gb_per_s": host.nbytes / float(np.median(seconds)) / 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_h2d needs a CUDA GPU")
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (375, 500, 3), dtype=np.uint8)).save(buf, "JPEG")
    images = [buf.getvalue()] * args.batch
    batch = stoker.preprocess_batch(images)
    rows = {
        "stoker arena": batch,
        "torch pageable": batch.clone(),
        "torch pin_memory()": batch.clone().pin_memory(),
    }
    results = {name: measure(t, args.repeats) for name, t in rows.items()}
    print(
        f"H2D of {tuple(batch.shape)} float32 ({batch.nbytes / 1e6:.0f} MB), "
        f"{torch.cuda.get_device_name()}"
    )
    print("| host buffer | is_pinned() | call returns (ms) | copy (ms) | GB/s |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['is_pinned']} | {r['call_returns_ms']:.3f} "
            f"| {r['copy_ms']:.3f} | {r['gb_per_s']:.1f} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
