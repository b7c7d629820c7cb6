"""CPU cost per request of the native front, by thread: Python, HTTP, preprocessing, dispatch.

A NativeServer runs in this process with a small CNN; stoker's load generator, in a process of its
own, drives KServe v2 binary requests (one ~500x375 JPEG each) closed-loop over loopback. Each
thread's CPU time comes from /proc/self/task/*/schedstat (nanoseconds on the CPU) before and after
the measured window, and is grouped by the names stoker gives its native threads; every Python
thread but the engine's device thread (which spends its time in the model's forward pass) counts as
Python: the event loop, the completion thread (postprocess and answers, once per batch), the
bridge. Torch's own worker threads land in "other native". The issue's figure is the Python group.

    python benchmarks/bench_native_front.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _images import small_images  # noqa: E402
from _nets import build_model  # noqa: E402
from bench_http import kserve_request  # noqa: E402

from stoker import _native  # noqa: E402
from stoker.server import ModelConfig, NativeServer, ServerConfig  # noqa: E402


def thread_cpu() -> dict[int, tuple[str, int]]:
    """Every thread of this process: its name and nanoseconds spent on a CPU."""
    out = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            ns = int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError):  # the thread ended meanwhile
            continue
        out[int(task.name)] = (name, ns)
    return out


def group(tid: int, name: str, python_threads: dict[int, str]) -> str:
    if tid in python_threads:
        # The device thread's time is the model's forward pass, called once per batch.
        return "model (py device thread)" if python_threads[tid] == "stoker-device" else "python"
    if name.startswith("stoker-"):
        return name.removeprefix("stoker-")
    return "other native"


def drive(port: int, seconds: float, connections: int) -> None:
    requests = [kserve_request(i, "m") for i in small_images(64)]
    gen = _native.LoadGenerator(
        host="127.0.0.1",
        port=port,
        requests=requests,
        connections=connections,
        warmup_s=0.0,
        duration_s=seconds,
    )
    gen.start()
    report = gen.wait()
    print(json.dumps({"completed": report["completed"], "statuses": report["statuses"]}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--drive", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--model", default="tiny")
    p.add_argument("--max-batch", type=int, default=32)
    args = p.parse_args()
    if args.drive:
        drive(args.drive, args.seconds, args.connections)
        return
    config = ServerConfig(
        models=(ModelConfig(name="m", model=args.model, max_batch_size=args.max_batch),)
    )
    server = NativeServer(config, {"m": build_model(args.model)}, port=0)
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    runner = threading.Thread(target=lambda: loop.run_until_complete(server.serve(stop)))
    runner.start()
    print(f"# native front CPU per request, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs; args: {vars(args)}\n")
    cmd = [sys.executable, __file__, "--drive", str(server.port)]
    cmd += ["--connections", str(args.connections)]
    try:
        subprocess.run([*cmd, "--seconds", "1"], check=True, capture_output=True)  # warm-up
        for r in range(args.rounds):
            python_threads = {t.native_id: t.name for t in threading.enumerate() if t.native_id}
            before = thread_cpu()
            done = subprocess.run(
                [*cmd, "--seconds", str(args.seconds)], check=True, capture_output=True, text=True
            )
            after = thread_cpu()
            result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
            n = result["completed"]
            groups: dict[str, float] = {}
            for tid, (name, ns) in after.items():
                spent = ns - before.get(tid, (name, 0))[1]
                key = group(tid, name, python_threads)
                groups[key] = groups.get(key, 0.0) + spent
            per = {k: v / 1000 / n for k, v in sorted(groups.items())}
            text = "  ".join(f"{k} {v:7.1f}" for k, v in per.items())
            print(f"round {r}: {n} requests {result['statuses']}; CPU µs/request: {text}")
    finally:
        loop.call_soon_threadsafe(stop.set)
        runner.join(timeout=30)
        loop.close()


if __name__ == "__main__":
    main()
