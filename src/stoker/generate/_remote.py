"""A generation engine in a process of its own, behind the same streaming interface.

A server's event loop writes every streamed token to a socket. In one process that work and the
engine thread's per-step Python take turns holding one interpreter lock, and while the engine's
thread waits for the lock the device may run out of queued work. ``RemoteEngine`` runs the
``GenerateEngine`` in a child process (a fresh interpreter: CUDA does not survive a fork, and the
parent's main module is not imported again) and talks to it through a pipe: submissions and
aborts one way; the other way, one message per step holding every request's new tokens and the
engine's counters. The parent reads the pipe on its event loop, so a step still costs that loop
one wake-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import pickle
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncGenerator, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from stoker._heap import frozen_heap
from stoker.generate._engine import GenerateEngine, folder_tokenizer
from stoker.generate._requests import Request, next_chunk
from stoker.generate._types import GenerationChunk, GeneratorStats, SamplingOptions

__all__ = ["RemoteEngine"]

_STATS_S = 0.1
_SEND_LAST_S = 10.0  # for the last refusals to leave once the engine has closed
_CHILD = "import sys; from stoker.generate._remote import child_main; child_main(int(sys.argv[1]))"

# One step's news for one request: key, new token ids, finish reason, prompt and cached tokens.
_Item = tuple[int, list[int], str | None, int, int]


def _portable(error: BaseException) -> BaseException:
    """``error`` if it survives pickling both ways, else a RuntimeError that names it.

    Some exceptions pickle but cannot be rebuilt (a constructor that wants more arguments than
    the message); the parent would fail to read the message and never hand the error out."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error


class RemoteEngine:
    """A ``GenerateEngine`` in a child process. ``engine_options`` are ``GenerateEngine``'s
    keyword arguments; they must pickle. Streams are served on one event loop at a time: the
    first to use the engine, until it closes."""

    def __init__(
        self,
        model: str | Path,
        *,
        name: str | None = None,
        start_timeout: float = 900.0,
        **engine_options: Any,
    ) -> None:
        self.model_folder = Path(model)
        self.model_name = name or self.model_folder.name
        self._send_lock = threading.Lock()
        self._conn, child = multiprocessing.Pipe()
        # It leaves when its end of the pipe closes, whichever way this process ends.
        self._process = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(child.fileno())],
            pass_fds=(child.fileno(),),
        )
        child.close()
        try:
            self._send(("start", str(model), name, engine_options))
            info = self._wait_ready(start_timeout)
        except BaseException:
            self._process.kill()
            self._process.wait()
            self._conn.close()
            raise
        self.max_model_len: int = info["max_model_len"]
        self.eos_token_ids: tuple[int, ...] = tuple(info["eos_token_ids"])
        self.tokenizer = folder_tokenizer(self.model_folder)
        self._stats = GeneratorStats(kv_blocks=info["kv_blocks"], kv_blocks_free=info["kv_blocks"])
        self._keys = itertools.count()
        self._queues: dict[int, asyncio.Queue[GenerationChunk | BaseException]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._gone: BaseException | None = None

    def _wait_ready(self, timeout: float) -> dict[str, Any]:
        if not self._conn.poll(timeout):
            raise TimeoutError(f"the generation engine did not start within {timeout:.0f} s")
        try:
            kind, payload = self._conn.recv()
        except EOFError:
            raise RuntimeError(
                f"the generation engine's process exited while starting "
                f"(exit code {self._process.wait()})"
            ) from None
        if kind == "failed":
            raise payload
        return dict(payload)

    def stats(self) -> GeneratorStats:
        """The engine's counters as of its latest step."""
        return self._stats

    async def stream(
        self, prompt_ids: Sequence[int], options: SamplingOptions
    ) -> AsyncGenerator[GenerationChunk, None]:
        """As ``GenerateEngine.stream``."""
        self._attach()
        if self._gone is not None:
            raise self._gone
        key = next(self._keys)
        chunks: asyncio.Queue[GenerationChunk | BaseException] = asyncio.Queue()
        self._queues[key] = chunks
        ended = False
        try:
            self._send(("submit", key, list(prompt_ids), options))
            while True:
                try:
                    item = await next_chunk(chunks)
                except Exception:  # the request's own error: it already ended in the engine
                    ended = True
                    raise
                yield item
                if item.finish_reason is not None:
                    ended = True
                    return
        finally:
            del self._queues[key]
            if not ended and self._gone is None:
                with contextlib.suppress(OSError):
                    self._send(("abort", key))

    def close(self) -> None:
        """Stops the engine (its running sequences end with an error) and its process."""
        if self._conn.closed:
            return
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(Exception):  # from another thread, the loop cleans up
                self._loop.remove_reader(self._conn.fileno())
        with contextlib.suppress(OSError):
            self._send(("close",))
        try:
            self._process.wait(60)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._conn.close()
        self._lost(RuntimeError("the engine closed"))

    def _attach(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        if self._loop is not None and not self._loop.is_closed():
            raise RuntimeError("a RemoteEngine serves one event loop at a time")
        loop.add_reader(self._conn.fileno(), self._on_readable)
        self._loop = loop

    def _send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            self._conn.send(message)

    def _on_readable(self) -> None:
        try:
            while self._conn.poll():
                _, items, error, stats = self._conn.recv()
                self._stats = stats
                self._hand_out(items, error)
        except (EOFError, OSError):
            if self._loop is not None:
                self._loop.remove_reader(self._conn.fileno())
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(5)
            code = self._process.returncode
            self._lost(RuntimeError(f"the generation engine's process exited (exit code {code})"))

    def _hand_out(self, items: list[_Item], error: BaseException | None) -> None:
        queues = self._queues
        for key, tokens, reason, prompt, cached in items:
            chunks = queues.get(key)
            if chunks is None:  # its caller left; the abort is on its way
                continue
            if error is not None:
                chunks.put_nowait(error)
            else:
                chunks.put_nowait(GenerationChunk(tokens, reason, prompt, cached))  # type: ignore[arg-type]

    def _lost(self, error: BaseException) -> None:
        if self._gone is None:
            self._gone = error
        for chunks in self._queues.values():
            chunks.put_nowait(error)


class _Child:
    """The child's side: submissions from the pipe to the engine, each step's chunks back (as
    the requests' outlet, on the engine's thread).

    The reading thread never waits on the pipe. The parent writes submissions from its event
    loop, which is also where it reads this process's messages: were the reading thread to wait
    on a send (or on a lock held across one), both ends could block on full pipes at once, each
    waiting for the other to read. So its refusals leave through a thread of their own, and the
    lock it shares with the engine's thread is never held across a send.
    """

    def __init__(self, engine: GenerateEngine, conn: Connection) -> None:
        self.engine = engine
        self.conn = conn
        self._lock = threading.Lock()  # the request maps: the engine's and the reading thread
        self._send_lock = threading.Lock()  # one message at a time on the pipe
        self._seqs: dict[int, tuple[int, Request]] = {}
        self._keys: dict[Request, int] = {}
        self._refusals: queue.SimpleQueue[tuple[list[_Item], BaseException] | None] = (
            queue.SimpleQueue()
        )

    def hand_out(
        self, items: list[tuple[Request, GenerationChunk]], error: BaseException | None
    ) -> None:
        out: list[_Item] = []
        with self._lock:
            for request, chunk in items:
                key = self._keys.get(request)
                if key is None:  # aborted by the parent
                    continue
                if error is not None or chunk.finish_reason is not None:
                    del self._keys[request]
                    del self._seqs[key]
                out.append(
                    (key, chunk.token_ids, chunk.finish_reason, chunk.prompt_tokens,
                     chunk.cached_tokens)
                )  # fmt: skip
        if out:
            self._post(out, error)

    def _post(self, items: list[_Item], error: BaseException | None) -> None:
        # The counters are read under the send lock, so that messages carry them in order.
        with self._send_lock:
            message = ("chunks", items, _portable(error) if error else None, self.engine.stats())
            # A parent that is gone cannot be told; its end of the pipe closing stops this
            # process.
            with contextlib.suppress(OSError):
                self.conn.send(message)

    def send_refusals(self) -> None:
        """The thread that posts the reading thread's refusals, until ``stop_refusals``."""
        while (refusal := self._refusals.get()) is not None:
            self._post(*refusal)

    def stop_refusals(self) -> None:
        """Lets ``send_refusals`` end once the refusals so far have left."""
        self._refusals.put(None)

    def watch(self, stop: threading.Event) -> None:
        """Posts the counters when they change between steps (an abort while idle), so that
        the parent's copy is never more than ``_STATS_S`` old."""
        last = self.engine.stats()
        while not stop.wait(_STATS_S):
            stats = self.engine.stats()
            if stats != last:
                self._post([], None)
                last = stats

    def serve(self) -> None:
        """Until the parent closes the engine or goes away."""
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                return
            if message[0] == "close":
                return
            if message[0] == "submit":
                self._submit(*message[1:])
            else:
                self._abort(message[1])

    def _submit(self, key: int, prompt: list[int], options: SamplingOptions) -> None:
        # Registered before the engine's thread can hand out its first chunk.
        with self._lock:
            try:
                seq, request = self.engine.submit(prompt, options, self)
            except Exception as e:
                self._refusals.put(([(key, [], None, len(prompt), 0)], e))
                return
            self._seqs[key] = seq, request
            self._keys[request] = key

    def _abort(self, key: int) -> None:
        with self._lock:
            entry = self._seqs.pop(key, None)
            if entry is None:  # it finished first
                return
            del self._keys[entry[1]]
        self.engine.abort(entry[0])


def child_main(fd: int) -> None:
    """The child process: serves the engine its parent asks for on the pipe end ``fd``."""
    # Ctrl-C in a terminal reaches the whole process group: the parent's shutdown closes the
    # engine in order, and a parent that dies closes the pipe, which ends this process too.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Connection(fd)
    _, model, name, options = conn.recv()
    try:
        engine = GenerateEngine(model, name=name, **options)
    except BaseException as e:
        with contextlib.suppress(OSError):
            conn.send(("failed", _portable(e)))
        conn.close()
        return
    child = _Child(engine, conn)
    info = {
        "max_model_len": engine.max_model_len,
        "eos_token_ids": list(engine.eos_token_ids),
        "kv_blocks": engine.num_blocks,
    }
    stop = threading.Event()
    watcher = threading.Thread(target=child.watch, args=(stop,), name="stoker-generate-stats")
    # A daemon, and joined for a bounded time: a parent that stopped reading must not keep this
    # process from ending.
    refusals = threading.Thread(
        target=child.send_refusals, name="stoker-generate-refusals", daemon=True
    )
    try:
        conn.send(("ready", info))
        refusals.start()
        watcher.start()
        with frozen_heap():
            child.serve()
    finally:
        stop.set()
        if watcher.is_alive():
            watcher.join()
        engine.close()
        child.stop_refusals()
        if refusals.is_alive():
            refusals.join(_SEND_LAST_S)
        conn.close()
