"""Servers over loopback HTTP: stoker's native front against the naive baseline, one run.

Each server runs in a process of its own; stoker's native load generator (epoll, prebuilt KServe
v2 binary requests, one JPEG each) drives it closed-loop at a sweep of connection counts, then
open-loop (Poisson) at fractions of the best closed-loop rate to report tail latency at a known
load. The generator's own CPU use is printed beside every figure, so a saturated generator shows.

    python benchmarks/bench_http.py --model tiny --server both          # 2-core CPU machine
    python benchmarks/bench_http.py --model resnet50 --device cuda --server stoker --gpu-decode auto
    python benchmarks/bench_http.py --model resnet50 --device cuda --server stoker --devices 0,1

With ``--devices`` the stoker server runs one engine per device behind its native front; the
ceiling stays the model alone on one device.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import struct
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _images import IMAGE_SETS  # noqa: E402

from stoker import _native  # noqa: E402
from stoker._stats import HistogramSnapshot  # noqa: E402

STAGES = ("queue", "batch", "preprocess", "h2d", "compute", "postprocess", "total")


def kserve_request(image: bytes, model: str) -> bytes:
    data = struct.pack("<I", len(image)) + image
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": len(data)},
                }
            ]
        },
        separators=(",", ":"),
    ).encode()
    head = (
        f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/octet-stream\r\n"
        f"Inference-Header-Content-Length: {len(header)}\r\n"
        f"Content-Length: {len(header) + len(data)}\r\n\r\n"
    )
    return head.encode() + header + data


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_ready(port: int, proc: subprocess.Popen[bytes], seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    probe = b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(probe)
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not become ready")


def start_server(kind: str, args: argparse.Namespace, port: int) -> subprocess.Popen[bytes]:
    if kind == "naive":
        cmd = [sys.executable, str(HERE / "naive_server.py"), "--model", args.model]
        cmd += ["--device", args.device, "--port", str(port)]
        if args.device == "cuda":
            cmd += ["--dtype", "float16"]
    else:
        cmd = [sys.executable, str(HERE / "bench_http.py"), "--serve", "--port", str(port)]
        cmd += ["--model", args.model, "--device", args.device, "--max-batch", str(args.max_batch)]
        cmd += ["--io-threads", str(args.io_threads), "--capacity", str(args.capacity)]
        cmd += ["--slots", str(args.slots)]
        if args.threads is not None:
            cmd += ["--threads", str(args.threads)]
        if args.gpu_decode is not None:
            cmd += ["--gpu-decode", args.gpu_decode]
        if args.devices is not None:
            cmd += ["--devices", args.devices]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wait_ready(port, proc)
    return proc


def serve(args: argparse.Namespace) -> None:
    """The stoker side, in its own process: the native front with the model built here."""
    import asyncio

    from _nets import build_model

    import stoker
    from stoker.server import ModelConfig, NativeServer, ServerConfig
    from stoker.server._config import parse_devices

    if args.threads is not None:
        stoker.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    devices = parse_devices(args.devices) if args.devices is not None else None
    model = ModelConfig(
        name="m",
        model=args.model,
        device=devices[0] if devices else args.device,
        devices=devices,
        dtype="float16" if cuda else None,
        max_batch_size=args.max_batch,
        max_delay_ms=2.0,
        capacity=args.capacity,
        gpu_decode=_share(args.gpu_decode),
        staging_slots=args.slots,
    )
    config = ServerConfig(models=(model,), port=args.port)

    async def main() -> None:
        server = NativeServer(config, {"m": build_model(args.model)}, io_threads=args.io_threads)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await server.serve(stop)

    asyncio.run(main())


def _share(value: str | None) -> float | Literal["auto"] | None:
    if value is None or value == "auto":
        return value  # type: ignore[return-value]
    return float(value)


def drive(
    port: int, requests: list[bytes], connections: int, rate: float, args: Any
) -> dict[str, Any]:
    gen = _native.LoadGenerator(
        host="127.0.0.1",
        port=port,
        requests=requests,
        connections=connections,
        threads=args.gen_threads,
        rate=rate,
        warmup_s=args.warmup,
        duration_s=args.seconds,
        timeout_s=30.0,
    )
    gen.start()
    report: dict[str, Any] = gen.wait()
    return report


def row(label: str, r: dict[str, Any]) -> str:
    lat = HistogramSnapshot(*r["latency"])
    ok = r["statuses"].get(200, 0)
    rate = ok / r["elapsed_s"]
    errors = {k: v for k, v in r["statuses"].items() if k != 200}
    gen_cpu = r["cpu_s"] / r["elapsed_s"]
    stages = {k: HistogramSnapshot(*v).quantile(0.5) / 1000 for k, v in r["server_timing"].items()}
    stage_text = " ".join(f"{s[:4]} {stages[s]:.1f}" for s in STAGES if s in stages)
    q = [lat.quantile(p) / 1000 for p in (0.5, 0.9, 0.99, 0.999)]
    return (
        f"{label:>14} {rate:9.1f} req/s  p50 {q[0]:7.2f}  p90 {q[1]:7.2f}  p99 {q[2]:7.2f}  "
        f"p99.9 {q[3]:7.2f} ms  gen CPU {gen_cpu:4.2f} cores  late {r['late']}  "
        f"errors {errors or 0}  stages(ms p50) {stage_text}"
    )


def run_kind(kind: str, args: argparse.Namespace, requests_for: Any) -> dict[str, Any]:
    port = free_port()
    proc = start_server(kind, args, port)
    name = "m"
    requests = requests_for(name)
    results: dict[str, Any] = {"closed": {}, "open": {}}
    try:
        print(f"\n## {kind}")
        for c in args.connections:
            r = drive(port, requests, c, 0.0, args)
            results["closed"][c] = r
            print(row(f"closed c={c}", r))
        best = max(v["statuses"].get(200, 0) / v["elapsed_s"] for v in results["closed"].values())
        for f in args.fractions:
            r = drive(port, requests, max(args.connections), best * f, args)
            results["open"][f] = r
            print(row(f"open {f:.0%} {best * f:.0f}/s", r))
        results["best"] = best
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--server", choices=("stoker", "naive", "both"), default="both")
    p.add_argument("--model", default="tiny", help="small, tiny or a torchvision name")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--images", choices=tuple(IMAGE_SETS), default="small")
    p.add_argument("--connections", type=lambda s: [int(x) for x in s.split(",")], default=None)
    p.add_argument("--fractions", type=lambda s: [float(x) for x in s.split(",")], default=None)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--gen-threads", type=int, default=1)
    p.add_argument("--io-threads", type=int, default=1)
    p.add_argument("--max-batch", type=int, default=None)
    p.add_argument("--capacity", type=int, default=4096)
    p.add_argument("--gpu-decode", default=None)
    p.add_argument("--devices", default=None, help="stoker: one engine per device, e.g. 0,1")
    p.add_argument("--slots", type=int, default=3, help="staging slots of the stoker engine")
    p.add_argument("--threads", type=int, default=None, help="stoker's native threads")
    p.add_argument("--ceiling", action="store_true", help="also time the model alone (CUDA)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    cuda = args.device == "cuda"
    args.max_batch = args.max_batch or (256 if cuda else 32)
    if args.serve:
        serve(args)
        return
    args.connections = args.connections or ([64, 256, 1024] if cuda else [4, 16, 64])
    args.fractions = args.fractions or [0.5, 0.9]
    images = IMAGE_SETS[args.images]()
    print(f"# stoker HTTP benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs; args: {vars(args)}")
    ceiling = None
    if args.ceiling and cuda:
        import torch
        from _nets import build_model
        from bench_engine import model_only_rate

        net = build_model(args.model).eval().cuda().half()
        net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        ceiling = model_only_rate(net, args.max_batch, torch.float16, 3.0)
        print(f"model only (CUDA graph, batch {args.max_batch}, fp16): {ceiling:9.1f} img/s")
        del net
        torch.cuda.empty_cache()
    kinds = ["stoker", "naive"] if args.server == "both" else [args.server]
    results = {}
    for kind in kinds:
        results[kind] = run_kind(kind, args, lambda name: [kserve_request(i, name) for i in images])
    print()
    if "stoker" in results and ceiling:
        share = results["stoker"]["best"] / ceiling
        print(f"stoker best {results['stoker']['best']:.0f} req/s = {share:.1%} of model only")
    if len(results) == 2:
        s, n = results["stoker"], results["naive"]
        print(f"throughput stoker / naive: {s['best'] / n['best']:.2f}x")
        for f in args.fractions:
            p99 = [HistogramSnapshot(*r["open"][f]["latency"]).quantile(0.99) for r in (s, n)]
            print(
                f"p99 at {f:.0%} of each one's best: stoker {p99[0] / 1000:.2f} ms, "
                f"naive {p99[1] / 1000:.2f} ms (naive / stoker {p99[1] / p99[0]:.2f}x)"
            )
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args), "ceiling": ceiling}, default=str))


if __name__ == "__main__":
    main()
