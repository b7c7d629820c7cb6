"""Served generation under load: TTFT and inter-token latency of streamed OpenAI completions.

``--streams`` closed-loop clients each send ``POST /v1/completions`` with ``stream: true``, one
request after another on a keep-alive connection: a prompt of random token ids and ``max_tokens``
drawn uniformly from ``--input-len`` and ``--output-len``, sampled at temperature 1 with EOS
ignored, so every output runs to its drawn length. Recorded per request: the time to the first
server-sent event carrying text (TTFT), every gap between successive such events (ITL), the mean
time per output token after the first (TPOT), and failures by kind. Samples count from
``--warmup`` seconds on, which lets the first wave of prefills and the kernels' compilation pass
and the streams drift out of step; the run ends after ``--seconds`` more (requests still running
are cut off, their gaps so far kept) or after ``--requests`` in all. The acceptance line is issue
8's: p99 ITL at most twice p50.

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
import array
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import platform
import queue
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from stoker.bench._targets import free_port, wait_ready

_HEAD, _SIZE, _CHUNK, _TRAILER, _BODY = range(5)
_LAG_TICK_S = 0.005


@dataclass(frozen=True)
class Plan:
    """What one client process does (picklable: it crosses into a spawned process)."""

    index: int
    host: str
    port: int
    model: str
    token: str | None
    streams: int
    requests: int | None  # this process's share of --requests; None: until the window ends
    warmup: float
    seconds: float | None
    input_len: tuple[int, int]
    output_len: tuple[int, int]
    vocab: int
    temperature: float
    seed: int
    timeout: float


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection carrying one streamed completion at a time."""

    def __init__(self, client: _Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.reads: list[tuple[float, bytes]] = []  # stamped, not yet parsed
        self.closed = False
        self.done: asyncio.Future[str | None] | None = None
        self._new_response()

    def _new_response(self) -> None:
        self.state = _HEAD
        self.status = 0
        self.left = 0  # bytes of the current chunk (or of a sized body) still to come
        self.keep_alive = True
        self.sse = bytearray()
        self.sent_at = self.first_at = self.last_at = 0.0
        self.events = 0  # events carrying text, each a token for all we can see
        self.usage_tokens = -1
        self.error: str | None = None

    def send(self, payload: bytes) -> asyncio.Future[str | None]:
        """Sends a request; the future gives None or the kind of failure once it has ended."""
        assert self.transport is not None
        self._new_response()
        self.done = asyncio.get_running_loop().create_future()
        self.sent_at = time.monotonic()
        self.transport.write(payload)
        return self.done

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        # Each read is stamped now and parsed in a later callback: when a decode step's events
        # reach all streams at once, every connection's read is stamped before any is parsed, so
        # the parsing of the others does not count as latency.
        if not self.reads:
            asyncio.get_running_loop().call_soon(self._parse_reads)
        self.reads.append((time.monotonic(), data))

    def connection_lost(self, exc: Exception | None) -> None:
        self._parse_reads()  # an answer may end with the connection
        self.closed = True
        self._end("connection")

    def _parse_reads(self) -> None:
        reads, self.reads = self.reads, []
        for now, data in reads:
            self.buf += data
            try:
                self._parse(now)
            except (ValueError, IndexError, KeyError, TypeError, AttributeError):
                self._end("bad_response")
                self.close()
                return

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # -- parsing ------------------------------------------------------------------------------

    def _parse(self, now: float) -> None:
        buf = self.buf
        while self.done is not None and not self.done.done():
            if self.state == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
                del buf[: end + 4]
                self.status = int(lines[0].split(" ", 2)[1])
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip().lower()
                self.keep_alive = headers.get("connection") != "close"
                if "chunked" in headers.get("transfer-encoding", ""):
                    self.state = _SIZE
                else:
                    self.left, self.state = int(headers.get("content-length", "0")), _BODY
            elif self.state == _SIZE:
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                size = int(bytes(buf[:end]).split(b";")[0], 16)
                del buf[: end + 2]
                self.left, self.state = size, (_CHUNK if size else _TRAILER)
            elif self.state == _CHUNK:
                # The server sends each event as a chunk of its own: wait for the whole chunk.
                if len(buf) < self.left + 2:
                    return
                self._body(bytes(buf[: self.left]), now)
                del buf[: self.left + 2]
                self.state = _SIZE
            elif self.state == _TRAILER:
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                del buf[: end + 2]
                if end == 0:
                    self._complete(now)
            else:  # _BODY
                if len(buf) < self.left:
                    return
                self._body(bytes(buf[: self.left]), now)
                del buf[: self.left]
                self._complete(now)

    def _body(self, data: bytes, now: float) -> None:
        if self.status != 200:
            return
        self.sse += data
        while (end := self.sse.find(b"\n\n")) >= 0:
            event = bytes(self.sse[:end])
            del self.sse[: end + 2]
            for line in event.split(b"\n"):
                if line.startswith(b"data:"):
                    self._event(line[5:].strip(), now)

    def _event(self, payload: bytes, now: float) -> None:
        if payload == b"[DONE]":
            return
        obj = json.loads(payload)
        if "error" in obj:
            self.error = "stream_error"
            return
        usage = obj.get("usage")
        if usage:
            self.usage_tokens = int(usage.get("completion_tokens", -1))
        choices = obj.get("choices")
        if choices and choices[0].get("text"):
            self.client.token(self, now)

    def _complete(self, now: float) -> None:
        if self.status != 200:
            error: str | None = f"http_{self.status}"
        elif self.error is not None:
            error = self.error
        elif not self.events:
            error = "no_tokens"
        else:
            error = None
            self.client.completed(self, now)
        self._end(error)
        if not self.keep_alive:
            self.close()

    def _end(self, error: str | None) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(error)


class _Client:
    """The streams of one process and the samples they take."""

    def __init__(self, plan: Plan, start_at: float) -> None:
        self.plan = plan
        self.start_at = start_at
        self.measure_from = start_at + plan.warmup
        self.stop_at = float("inf") if plan.seconds is None else self.measure_from + plan.seconds
        self.remaining = plan.requests
        self.rng = np.random.default_rng([plan.seed, plan.index])
        self.ttft: list[float] = []
        self.itl = array.array("d")
        self.tpot: list[float] = []
        self.lag = array.array("d")
        self.same_read = 0  # gaps of zero: the event came in the read of the one before it
        self.window_events = 0
        self.last_event = 0.0
        self.started = self.completed_n = 0
        self.usage_tokens = self.usage_events = 0
        self.errors: Counter[str] = Counter()
        auth = f"Authorization: Bearer {plan.token}\r\n" if plan.token else ""
        self.head = (
            f"POST /v1/completions HTTP/1.1\r\nHost: {plan.host}:{plan.port}\r\n{auth}"
            "Content-Type: application/json\r\nAccept: text/event-stream\r\n"
        )

    # -- samples ------------------------------------------------------------------------------

    def token(self, conn: _Connection, now: float) -> None:
        if conn.events == 0:
            conn.first_at = now
            if conn.sent_at >= self.measure_from:
                self.ttft.append(now - conn.sent_at)
        elif now >= self.measure_from:
            gap = now - conn.last_at
            self.itl.append(gap)
            self.same_read += gap == 0.0
        conn.events += 1
        conn.last_at = now
        if self.measure_from <= now < self.stop_at:
            self.window_events += 1
            self.last_event = now

    def completed(self, conn: _Connection, now: float) -> None:
        if not self.measure_from <= now < self.stop_at:
            return
        self.completed_n += 1
        if conn.sent_at >= self.measure_from and conn.events > 1:
            self.tpot.append((conn.last_at - conn.first_at) / (conn.events - 1))
        if conn.usage_tokens >= 0:
            self.usage_tokens += conn.usage_tokens
            self.usage_events += conn.events

    # -- load ---------------------------------------------------------------------------------

    def _payload(self) -> bytes:
        plan, rng = self.plan, self.rng
        prompt = rng.integers(0, plan.vocab, int(rng.integers(*plan.input_len, endpoint=True)))
        body = (
            f'{{"model":{json.dumps(plan.model)},"prompt":[{",".join(map(str, prompt.tolist()))}],'
            f'"max_tokens":{int(rng.integers(*plan.output_len, endpoint=True))},'
            f'"temperature":{plan.temperature},"stream":true,"ignore_eos":true,'
            '"stream_options":{"include_usage":true}}'
        ).encode()
        return f"{self.head}Content-Length: {len(body)}\r\n\r\n".encode() + body

    def _more(self) -> bool:
        if self.remaining is None:
            return time.monotonic() < self.stop_at
        self.remaining -= 1
        return self.remaining >= 0

    async def _stream(self) -> None:
        loop = asyncio.get_running_loop()
        conn: _Connection | None = None
        try:
            while self._more():
                if conn is None or conn.closed:
                    try:
                        _, conn = await loop.create_connection(
                            lambda: _Connection(self), self.plan.host, self.plan.port
                        )
                    except OSError:
                        self.errors["connect"] += 1
                        await asyncio.sleep(0.5)
                        continue
                done = conn.send(self._payload())
                if conn.sent_at >= self.measure_from:
                    self.started += 1
                try:
                    error = await asyncio.wait_for(done, self.plan.timeout)
                except TimeoutError:
                    error = "timeout"
                    conn.close()
                if error is not None:
                    self.errors[error] += 1
                    # A refusing server is not hammered in a tight loop.
                    await asyncio.sleep(0.05)
        finally:
            if conn is not None:
                # Cut off at the end of the window: closing makes the server abort the sequence.
                conn.close()

    async def _watch_lag(self) -> None:
        """How late the loop wakes for a timer: the client's own contribution to latency."""
        while True:
            before = time.monotonic()
            await asyncio.sleep(_LAG_TICK_S)
            now = time.monotonic()
            if now >= self.measure_from:
                self.lag.append(now - before - _LAG_TICK_S)

    async def run(self) -> dict[str, Any]:
        await asyncio.sleep(max(self.start_at - time.monotonic(), 0.0))
        watcher = asyncio.create_task(self._watch_lag())
        streams = [asyncio.create_task(self._stream()) for _ in range(self.plan.streams)]
        await asyncio.sleep(max(self.measure_from - time.monotonic(), 0.0))
        cpu0, wall0 = time.process_time(), time.monotonic()
        if self.plan.seconds is None:
            await asyncio.gather(*streams)
        else:
            await asyncio.sleep(max(self.stop_at - time.monotonic(), 0.0))
            for task in streams:
                task.cancel()
            await asyncio.gather(*streams, return_exceptions=True)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        watcher.cancel()
        return {
            "ttft": np.array(self.ttft),
            "itl": np.frombuffer(self.itl, dtype=np.float64),
            "tpot": np.array(self.tpot),
            "lag": np.frombuffer(self.lag, dtype=np.float64),
            "same_read": self.same_read,
            "window_events": self.window_events,
            "last_event": self.last_event,
            "started": self.started,
            "completed": self.completed_n,
            "usage_tokens": self.usage_tokens,
            "usage_events": self.usage_events,
            "errors": dict(self.errors),
            "cpu_s": cpu,
            "wall_s": wall,
            "measure_from": self.measure_from,
        }


def _client_main(plan: Plan, ready: Any, go: Any, start: Any, results: Any) -> None:
    """A client process: says it is ready, waits for the common start, returns its samples."""
    try:
        ready.put(plan.index)
        go.wait()
        out = asyncio.run(_Client(plan, start.value).run())
    except BaseException:
        out = {"failed": traceback.format_exc()}
    results.put((plan.index, out))


def run_clients(plans: list[Plan], server_pid: int | None) -> tuple[list[dict[str, Any]], float]:
    """Every process's samples, and the server process's CPU share over the window (or NaN)."""
    ctx = mp.get_context("spawn")
    ready, results, go, start = ctx.Queue(), ctx.Queue(), ctx.Event(), ctx.Value("d", 0.0)
    procs = [
        ctx.Process(target=_client_main, args=(p, ready, go, start, results), daemon=True)
        for p in plans
    ]
    for proc in procs:
        proc.start()
    try:
        for _ in procs:
            ready.get(timeout=120)
        plan = plans[0]
        length = f"{plan.seconds:g} s" if plan.seconds is not None else "to the last request"
        print(
            f"{len(procs)} client processes ready: {plan.warmup:g} s warm-up, then {length}",
            flush=True,
        )
        # A common start on the system-wide monotonic clock, so all windows coincide.
        start.value = time.monotonic() + 0.2
        go.set()
        measure_from = start.value + plans[0].warmup
        time.sleep(max(measure_from - time.monotonic(), 0.0))
        server0, wall0 = _cpu_seconds(server_pid), time.monotonic()
        outs: dict[int, dict[str, Any]] = {}
        while len(outs) < len(procs):
            try:
                index, out = results.get(timeout=1.0)
            except queue.Empty:
                pass
            else:
                outs[index] = out
                continue
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"a client process exited with status {dead[0].exitcode}")
        server_share = (_cpu_seconds(server_pid) - server0) / (time.monotonic() - wall0)
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
    failed = [o["failed"] for o in outs.values() if "failed" in o]
    if failed:
        raise RuntimeError(f"a client process failed:\n{failed[0]}")
    return [outs[i] for i in sorted(outs)], server_share


def _cpu_seconds(pid: int | None) -> float:
    """User plus system CPU time of process ``pid`` (all its threads), NaN when unknown."""
    if pid is None:
        return float("nan")
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the server -------------------------------------------------------------------------------


def serve_command(args: argparse.Namespace, port: int) -> list[str]:
    """``stoker serve`` for the model folder, on loopback at ``port``."""
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


# -- figures ----------------------------------------------------------------------------------


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
    args: argparse.Namespace, outs: list[dict[str, Any]], server_share: float
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
        outs, server_share = run_clients(plans(args, host, port), server_pid)
    summary = summarize(args, outs, server_share)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    print(report(summary))


if __name__ == "__main__":
    main()
