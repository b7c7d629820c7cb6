"""Served generation under load: TTFT and inter-token latency of streamed OpenAI completions.

``--streams`` closed-loop clients each send ``POST /v1/completions`` with ``stream: true``, one
request after another on a keep-alive connection: a prompt of random token ids and ``max_tokens``
drawn uniformly from ``--input-len`` and ``--output-len``, sampled at temperature 1 with EOS
ignored, so every output runs to its drawn length. Recorded per request: the time to the first
server-sent event carrying text (TTFT), every gap between successive such events (ITL), the mean
time per output token after the first (TPOT), and failures by kind. Samples count from
``--warmup`` seconds on, which lets the first wave of prefills and the kernels' compilation pass
and the streams drift out of step; the run ends after ``--seconds`` more (requests still running
are cut off, their gaps so far kept) or after ``--requests`` in all. The acceptance line is the
target for steady streaming: p99 ITL at most twice p50.

The clients run in ``--procs`` processes of one asyncio loop each, on a hand-written HTTP/1.1 and
SSE parser (a general client's per-event overhead would make the client part of the latency).
Each event is timestamped when its bytes are read. Printed beside the figures: each client
process's CPU use (near 100% of a core means the client, not the server, set the latency) and the
lateness of its event loop; with ``--serve``, the server process's CPU use too.

The server is either already running (``--url``, ``--model``, ``--vocab``) or started here from a
model folder (``--serve``, e.g. one from ``_llm_folder.py``) as ``python -m stoker serve --task
text-generation`` on a free port, and stopped at the end.

    python benchmarks/_llm_folder.py /tmp/qwen3-0.6b                          # on the GPU machine
    python benchmarks/bench_generate_serve.py --serve /tmp/qwen3-0.6b --device cuda \\
        --serve-args "--max-num-seqs 256" --streams 256 --warmup 20 --seconds 60 --json out.json
    python benchmarks/bench_generate_serve.py --url http://127.0.0.1:8000 --model qwen3 \\
        --vocab 151936 --streams 256                                       # a running server
    .venv/bin/python benchmarks/_llm_folder.py /tmp/tiny-llm --shape tiny    # 2-core CPU machine
    .venv/bin/python benchmarks/bench_generate_serve.py --serve /tmp/tiny-llm --device cpu \\
        --streams 8 --procs 2 --requests 64 --input-len 8:32 --output-len 8:64
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from _sse_load import Plan, run_clients

from stoker.bench._targets import free_port, wait_ready


def serve_command(args: argparse.Namespace, port: int) -> list[str]:
    """``stoker serve`` for the model folder, on loopback at ``port``; with ``--paced-ms``, the
    endpoints in front of a clock instead of the model (``_paced_server.py``)."""
    if args.paced_ms is not None:
        paced = Path(__file__).with_name("_paced_server.py")
        command = [sys.executable, str(paced), str(args.serve.resolve()), "--step-ms",
                   str(args.paced_ms), "--port", str(port)]  # fmt: skip
        return command + shlex.split(args.serve_args)
    command = [
        sys.executable, "-m", "stoker", "serve", "--task", "text-generation",
        "--model", str(args.serve), "--name", args.model, "--device", args.device,
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    if args.token:
        command += ["--token", args.token]
    return command + shlex.split(args.serve_args)


@contextlib.contextmanager
def started_server(args: argparse.Namespace) -> Iterator[tuple[str, int, int]]:
    """The server of ``serve_command`` until ready (host, port, pid); stopped after the block
    with SIGINT (a graceful uvicorn shutdown), then SIGKILL. Its output goes to a log file."""
    port = free_port()
    command = serve_command(args, port)
    if args.serve_log:
        log_path = Path(args.serve_log)
    else:
        fd, name = tempfile.mkstemp(prefix="stoker-serve-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    print(f"starting: {shlex.join(command)}\n  log: {log_path}", flush=True)
    with open(log_path, "wb") as log:
        # A session of its own: a Ctrl-C here reaches the server only through the stop below.
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            began = time.monotonic()
            wait_ready("127.0.0.1", port, args.start_timeout, alive=lambda: proc.poll() is None)
            print(f"server ready after {time.monotonic() - began:.1f} s", flush=True)
            yield "127.0.0.1", port, proc.pid
        except BaseException:
            log.flush()
            tail = log_path.read_text(errors="replace").splitlines()[-30:]
            print("server log (last lines):\n  " + "\n  ".join(tail), file=sys.stderr)
            raise
        finally:
            if proc.poll() is None:
                print("stopping the server", flush=True)
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            _print_tracebacks(log_path)


def _print_tracebacks(log_path: Path, most: int = 60) -> None:
    """The server's tracebacks, if it logged any: a failed request's cause, kept beside the
    figures (the log itself may be a temporary file on a machine that goes away)."""
    lines = log_path.read_text(errors="replace").splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback")]
    if not starts:
        return
    print(f"server log: {len(starts)} traceback(s); the first:", file=sys.stderr)
    print("  " + "\n  ".join(lines[starts[0] : starts[0] + most]), file=sys.stderr)


# -- figures ----------------------------------------------------------------------------------

_STEPS = "stoker_generation_step_seconds"


def scrape_steps(host: str, port: int, token: str | None) -> dict[str, dict[str, Any]]:
    """The server's step-time histogram by kind (cumulative counts by bound, seconds); empty
    when the server exports none."""
    from prometheus_client.parser import text_string_to_metric_families

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"http://{host}:{port}/metrics", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != _STEPS:
            continue
        for sample in family.samples:
            entry = out.setdefault(sample.labels["kind"], {"buckets": {}, "seconds": 0.0})
            if sample.name == _STEPS + "_bucket":
                entry["buckets"][float(sample.labels["le"])] = sample.value
            elif sample.name == _STEPS + "_sum":
                entry["seconds"] = sample.value
    return out


def step_figures(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per kind of step, over the window: how many, their mean, and the bucket bounds that hold
    their median and 99th percentile (ms)."""
    figures = {}
    for kind, end in after.items():
        start = before.get(kind, {"buckets": {}, "seconds": 0.0})
        bounds = sorted(end["buckets"])
        counts = [end["buckets"][b] - start["buckets"].get(b, 0.0) for b in bounds]
        n = counts[-1] if counts else 0.0
        if n <= 0:
            continue

        figures[kind] = {
            "n": n,
            "mean_ms": (end["seconds"] - start["seconds"]) / n * 1e3,
            "p50_ms_at_most": _bound_holding(0.5 * n, bounds, counts) * 1e3,
            "p99_ms_at_most": _bound_holding(0.99 * n, bounds, counts) * 1e3,
        }
    return figures


def _bound_holding(rank: float, bounds: list[float], cumulative: list[float]) -> float:
    return next(b for b, c in zip(bounds, cumulative, strict=True) if c >= rank)


def _percentiles(seconds: np.ndarray[Any, Any]) -> dict[str, float]:
    if not len(seconds):
        return {"n": 0}
    ms = seconds * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99]).tolist()
    return {
        "n": len(ms),
        "mean": float(ms.mean()),
        "p50": p50,
        "p90": p90,
        "p99": p99,
        "max": float(ms.max()),
    }


def summarize(
    args: argparse.Namespace,
    outs: list[dict[str, Any]],
    server_share: float,
    steps: dict[str, dict[str, float]],
) -> dict[str, Any]:
    def joined(key: str) -> np.ndarray[Any, Any]:
        return np.concatenate([o[key] for o in outs])

    if args.seconds is not None:
        window = args.seconds
    else:  # to the last event: the run ended with the last request
        window = max(max(o["last_event"] for o in outs) - outs[0]["measure_from"], 0.0)
    itl = _percentiles(joined("itl"))
    ratio = itl["p99"] / itl["p50"] if itl["n"] and itl["p50"] > 0 else float("inf")
    errors: Counter[str] = Counter()
    for o in outs:
        errors.update(o["errors"])
    usage_tokens = sum(o["usage_tokens"] for o in outs)
    usage_events = sum(o["usage_events"] for o in outs)
    lag = joined("lag")
    events = sum(o["window_events"] for o in outs)
    return {
        "bench": "generate_serve",
        "target": args.url or f"stoker serve {args.serve} --device {args.device} {args.serve_args}",
        "model": args.model,
        "streams": args.streams,
        "procs": len(outs),
        "input_len": args.input_len,
        "output_len": args.output_len,
        "warmup_s": args.warmup,
        "temperature": args.temperature,
        "seed": args.seed,
        "window_s": window,
        "requests_started": sum(o["started"] for o in outs),
        "requests_completed": sum(o["completed"] for o in outs),
        "output_tokens_per_s": events / window if window > 0 else 0.0,
        "ttft_ms": _percentiles(joined("ttft")),
        "itl_ms": itl,
        "tpot_ms": _percentiles(joined("tpot")),
        "itl_p99_over_p50": ratio,
        "itl_pass": ratio <= 2.0,
        "same_read_events": sum(o["same_read"] for o in outs),
        # Tokens that reached the client inside another token's event (text held back by the
        # detokenizer, or a special token with no text), over completed requests.
        "tokens_without_event": usage_tokens - usage_events,
        "client_cpu_share": [o["cpu_s"] / o["wall_s"] for o in outs],
        "client_loop_lag_ms": {
            "p50": float(np.percentile(lag, 50) * 1e3) if len(lag) else 0.0,
            "p99": float(np.percentile(lag, 99) * 1e3) if len(lag) else 0.0,
            "max": float(lag.max() * 1e3) if len(lag) else 0.0,
        },
        "server_cpu_share": None if np.isnan(server_share) else server_share,
        "engine_steps": steps,
        "errors": dict(errors),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def report(s: dict[str, Any]) -> str:
    def row(name: str, p: dict[str, float]) -> str:
        if not p["n"]:
            return f"{name:<14}no samples"
        return (
            f"{name:<14}p50 {p['p50']:9.2f}  p90 {p['p90']:9.2f}  p99 {p['p99']:9.2f}  "
            f"max {p['max']:9.2f}  (n={p['n']})"
        )

    verdict = "PASS" if s["itl_pass"] else "FAIL"
    cpu = " ".join(f"{c:.0%}" for c in s["client_cpu_share"])
    server = f", server {s['server_cpu_share']:.0%}" if s["server_cpu_share"] is not None else ""
    lag = s["client_loop_lag_ms"]
    errors = ", ".join(f"{k} {v}" for k, v in sorted(s["errors"].items())) or "none"
    return "\n".join(
        [
            f"{s['streams']} streams over {s['procs']} client processes, input "
            f"{s['input_len']} output {s['output_len']} tokens, window {s['window_s']:.1f} s "
            f"after {s['warmup_s']:g} s warm-up",
            f"requests      {s['requests_started']} started, {s['requests_completed']} completed",
            f"output        {s['output_tokens_per_s']:.1f} tokens/s",
            row("TTFT ms", s["ttft_ms"]),
            row("ITL ms", s["itl_ms"]),
            row("TPOT ms", s["tpot_ms"]),
            f"ITL p99/p50   {s['itl_p99_over_p50']:.2f}  {verdict} (limit 2.00)",
            f"events        {s['same_read_events']} read together with the one before, "
            f"{s['tokens_without_event']} tokens without an event of their own",
            f"CPU           client processes {cpu} of a core{server}; client loop lag p99 "
            f"{lag['p99']:.2f} ms, max {lag['max']:.2f} ms",
            f"errors        {errors}",
            *(
                f"steps {kind:<8}n={p['n']:.0f}, mean {p['mean_ms']:.2f} ms, p50 <= "
                f"{p['p50_ms_at_most']:g} ms, p99 <= {p['p99_ms_at_most']:g} ms (server's "
                "step-time histogram)"
                for kind, p in s["engine_steps"].items()
            ),
        ]
    )


def _span(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition(":")
    span = (int(lo), int(hi or lo))
    if not 1 <= span[0] <= span[1]:
        raise argparse.ArgumentTypeError(f"want LO:HI with 1 <= LO <= HI, got {text!r}")
    return span


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8000")
    target.add_argument("--serve", type=Path, metavar="FOLDER", help="start stoker on this model")
    p.add_argument("--model", help="served model name (--serve: default the folder's name)")
    p.add_argument("--token", help="bearer token")
    p.add_argument("--vocab", type=int, help="vocabulary size (--serve: from config.json)")
    p.add_argument("--device", default="cuda", help="--serve: the server's device")
    p.add_argument("--serve-args", default="", help="--serve: more `stoker serve` options")
    p.add_argument("--paced-ms", type=float, help="--serve: no model; every this many ms one "
                   "token to each running stream (the server's own cost)")  # fmt: skip
    p.add_argument("--serve-log", help="--serve: the server's output (default: a temp file)")
    p.add_argument("--start-timeout", type=float, default=600.0, help="--serve: seconds")
    p.add_argument("--streams", type=int, default=256, help="concurrent closed-loop streams")
    p.add_argument("--procs", type=int, default=4, help="client processes")
    run = p.add_mutually_exclusive_group()
    run.add_argument("--seconds", type=float, help="measured window (default 60)")
    run.add_argument("--requests", type=int, help="requests in all, instead of a window")
    p.add_argument("--warmup", type=float, help="seconds not measured (default 20; 0 with "
                   "--requests)")  # fmt: skip
    p.add_argument("--input-len", type=_span, default=(100, 1024), help="prompt tokens LO:HI")
    p.add_argument("--output-len", type=_span, default=(100, 1024), help="max_tokens LO:HI")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--timeout", type=float, default=600.0, help="per request, seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write all figures here")
    args = p.parse_args(argv)
    if args.requests is None and args.seconds is None:
        args.seconds = 60.0
    if args.warmup is None:
        args.warmup = 0.0 if args.requests is not None else 20.0
    if args.serve is not None:
        config = json.loads((args.serve / "config.json").read_text())
        args.vocab = args.vocab or int(config["vocab_size"])
        args.model = args.model or args.serve.resolve().name
    elif args.model is None or args.vocab is None:
        p.error("--url needs --model and --vocab")
    if args.streams < 1 or args.procs < 1 or (args.requests is not None and args.requests < 1):
        p.error("--streams, --procs and --requests must be positive")
    return args


def plans(args: argparse.Namespace, host: str, port: int) -> list[Plan]:
    """The streams (and requests) dealt out to the client processes as evenly as they go."""
    n = min(args.procs, args.streams)
    return [
        Plan(
            index=i,
            host=host,
            port=port,
            model=args.model,
            token=args.token,
            streams=args.streams // n + (i < args.streams % n),
            requests=None
            if args.requests is None
            else args.requests // n + (i < args.requests % n),
            warmup=args.warmup,
            seconds=args.seconds,
            input_len=args.input_len,
            output_len=args.output_len,
            vocab=args.vocab,
            temperature=args.temperature,
            seed=args.seed,
            timeout=args.timeout,
        )
        for i in range(n)
    ]


def main() -> None:
    args = parse_args()
    with contextlib.ExitStack() as stack:
        if args.serve is not None:
            host, port, pid = stack.enter_context(started_server(args))
            server_pid: int | None = pid
        else:
            parts = urlsplit(args.url if "//" in args.url else f"http://{args.url}")
            if parts.scheme != "http" or not parts.hostname:
                raise SystemExit("give a plain http URL such as http://127.0.0.1:8000")
            host, port, server_pid = parts.hostname, parts.port or 80, None
            wait_ready(host, port, 10.0)
        scrapes: list[dict[str, dict[str, Any]]] = []
        outs, server_share = run_clients(
            plans(args, host, port),
            server_pid,
            on_window=lambda: scrapes.append(scrape_steps(host, port, args.token)),
        )
    summary = summarize(args, outs, server_share, step_figures(*scrapes))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    print(report(summary))


if __name__ == "__main__":
    main()
