"""The client side of ``bench_generate_serve.py``: closed-loop streams of OpenAI completions
over keep-alive HTTP/1.1, in several processes of one asyncio loop each, on a hand-written
chunked-transfer and SSE parser that timestamps every event when its bytes are read."""

from __future__ import annotations

import array
import asyncio
import gc
import json
import multiprocessing as mp
import os
import queue
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Plan", "run_clients"]

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
        # A full collection over the imported modules would stall the reads it times.
        gc.collect()
        gc.freeze()
        go.wait()
        out = asyncio.run(_Client(plan, start.value).run())
    except BaseException:
        out = {"failed": traceback.format_exc()}
    results.put((plan.index, out))


def run_clients(
    plans: list[Plan], server_pid: int | None, on_window: Callable[[], None] | None = None
) -> tuple[list[dict[str, Any]], float]:
    """Every process's samples, and the server process's CPU share over the window (or NaN).
    ``on_window`` runs where the measured window starts and again once every client is done."""
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
        if on_window is not None:
            on_window()
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
        if on_window is not None:
            on_window()
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
