"""The generation engine: continuous batching on the native scheduler, one loop thread per engine.

Callers on any asyncio loop ``stream()`` a sequence's tokens; the engine's thread runs steps: it
schedules (natively), runs the model, samples, and hands each step's new tokens to the callers'
loops with one wake-up per loop per step. Python touches each step, never each token's scheduling.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections import defaultdict
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from tokenizers import Tokenizer

from stoker._answers import device_error
from stoker._native import Scheduler, SchedulerStep
from stoker.generate._config import DecoderConfig, read_config
from stoker.generate._model import Decoder, load_weights
from stoker.generate._runner import ModelRunner, Sampled
from stoker.generate._speculative import Proposer, TokenHistory, accept
from stoker.generate._types import (
    GenerationChunk,
    GenerationError,
    GeneratorStats,
    SamplingOptions,
)

__all__ = ["GenerateEngine"]

_REASONS = {"eos": "stop", "stop": "stop", "length": "length"}


@dataclass(eq=False)
class _Request:
    prompt: list[int]
    options: SamplingOptions
    loop: asyncio.AbstractEventLoop | None  # None: an offline request, waited on by `done`
    chunks: asyncio.Queue[GenerationChunk | BaseException] = field(default_factory=asyncio.Queue)
    generated: list[int] = field(default_factory=list)
    cached: int = -1  # prompt tokens the prefix cache held; known at the first schedule
    done: threading.Event = field(default_factory=threading.Event)
    finish: str | None = None
    error: BaseException | None = None


_Updates = dict[_Request, tuple[list[int], str | None]]
"""New tokens and finish reason (None: running on) per request of one step."""


@dataclass
class _Done:
    """A step whose tokens are in, not yet handed to its requests."""

    seqs: list[int]
    requests: list[_Request]
    tokens: list[list[int]]  # per sequence: one, or with speculation the accepted drafts and one
    finished: dict[int, str]


def _kv_bytes_per_block(cfg: DecoderConfig, block_size: int, dtype: torch.dtype) -> int:
    element = torch.empty((), dtype=dtype).element_size()
    return 2 * cfg.num_layers * block_size * cfg.num_kv_heads * cfg.head_dim * element


class GenerateEngine:
    """A decoder model from a local folder behind continuous batching.

    ``num_blocks`` fixes the KV cache's size; by default it takes ``kv_cache_fraction`` of the
    GPU memory left after the weights (on CPU: room for every sequence at full length, at most
    ``cpu_kv_bytes``). ``speculative`` proposes draft tokens for greedy requests (for example
    ``NgramProposer()``), verified in the step that decodes them (see ``_speculative``).
    """

    def __init__(
        self,
        model: str | Path,
        *,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        max_num_seqs: int = 256,
        max_num_batched_tokens: int = 8192,
        max_model_len: int | None = None,
        block_size: int = 16,
        num_blocks: int | None = None,
        kv_cache_fraction: float = 0.8,
        cpu_kv_bytes: int = 1 << 29,
        cuda_graphs: bool = True,
        name: str | None = None,
        decoder: Decoder | None = None,
        speculative: Proposer | None = None,
    ) -> None:
        """``decoder``: a model already built and loaded (``model`` then only names the folder
        of its tokenizer); its device and dtype override ``device`` and ``dtype``."""
        self.model_folder = Path(model)
        self.model_name = name or self.model_folder.name
        self.config = read_config(self.model_folder) if decoder is None else decoder.cfg
        cfg = self.config
        if decoder is not None:  # a ready model brings its own device and precision
            device, dtype = str(decoder.device), decoder.dtype
        elif dtype is None:
            dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        self.max_model_len = min(
            max_model_len or cfg.max_position_embeddings, cfg.max_position_embeddings
        )
        if decoder is None:
            decoder = Decoder(cfg, dtype, device)
            load_weights(decoder, self.model_folder)
        self.decoder = decoder
        self.eos_token_ids = cfg.eos_token_ids
        self.tokenizer = self._tokenizer()
        if num_blocks is None:
            per_block = _kv_bytes_per_block(cfg, block_size, dtype)
            if decoder.device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(decoder.device)
                # Memory the allocator holds but no tensor uses is free for the cache too.
                free += torch.cuda.memory_reserved(decoder.device)
                free -= torch.cuda.memory_allocated(decoder.device)
                budget = int(free * kv_cache_fraction)
            else:
                need = max_num_seqs * -(-self.max_model_len // block_size) * per_block
                budget = min(cpu_kv_bytes, need)
            num_blocks = max(budget // per_block, 1)
        self.num_blocks = num_blocks
        self.max_num_seqs = max_num_seqs
        self.scheduler = Scheduler(
            num_blocks, block_size, max(max_num_batched_tokens, max_num_seqs), max_num_seqs
        )
        self.runner = ModelRunner(
            decoder, num_blocks, block_size, max_num_seqs, self.max_model_len, cuda_graphs
        )
        self._ids = itertools.count()
        self._proposer = speculative
        # With speculation: every admitted sequence's tokens, and those decoding after the last
        # step (the ones a draft may go to).
        self._history: dict[int, TokenHistory] = {}
        self._decoding: list[int] = []
        self._requests: dict[int, _Request] = {}
        self._unstarted: set[int] = set()  # admitted, not yet scheduled: prefix hits unknown
        self._owed = 0  # tokens the scheduler's update() expects for the last step
        self._inbox: list[tuple[int, _Request]] = []
        self._aborts: list[int] = []
        self._cv = threading.Condition()
        self._closing = False
        self._counts = defaultdict(int)  # type: defaultdict[str, int]
        self._thread = threading.Thread(target=self._loop, name="stoker-generate", daemon=True)
        self._thread.start()

    def _tokenizer(self) -> Tokenizer:
        """The folder's tokenizer; a folder without one gets an empty stand-in, enough for
        token-id prompts and outputs (offline use), and serving refuses it."""
        from tokenizers import models

        path = self.model_folder / "tokenizer.json"
        return Tokenizer.from_file(str(path)) if path.is_file() else Tokenizer(models.BPE())

    # -- callers -----------------------------------------------------------------------------

    def _check(self, prompt_ids: Sequence[int], options: SamplingOptions) -> list[int]:
        options.check()
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise GenerationError("the prompt is empty")
        if min(prompt) < 0 or max(prompt) >= self.config.vocab_size:
            raise GenerationError(f"prompt token ids must be in [0, {self.config.vocab_size})")
        if len(prompt) + options.max_tokens > self.max_model_len:
            raise GenerationError(
                f"the prompt ({len(prompt)} tokens) plus max_tokens ({options.max_tokens}) "
                f"exceeds the model's {self.max_model_len}-token context"
            )
        return prompt

    def _submit(self, request: _Request) -> int:
        seq = next(self._ids)
        with self._cv:
            if self._closing:
                raise RuntimeError("the engine is closed")
            self._inbox.append((seq, request))
            self._cv.notify()
        return seq

    def _abort(self, seq: int) -> None:
        with self._cv:
            self._aborts.append(seq)
            self._cv.notify()

    async def stream(
        self, prompt_ids: Sequence[int], options: SamplingOptions
    ) -> AsyncGenerator[GenerationChunk, None]:
        prompt = self._check(prompt_ids, options)
        request = _Request(prompt, options, asyncio.get_running_loop())
        seq = self._submit(request)
        try:
            while True:
                item = await request.chunks.get()
                # A caller that fell behind gets what piled up as one chunk: under load that
                # saves a wake-up and a response event per token.
                while isinstance(item, GenerationChunk) and item.finish_reason is None:
                    try:
                        more = request.chunks.get_nowait()
                    except asyncio.QueueEmpty:
                        break
                    if isinstance(more, BaseException):
                        item = more
                        break
                    more.token_ids[:0] = item.token_ids
                    item = more
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            if request.finish is None:
                self._abort(seq)

    def generate(
        self, prompts: Sequence[Sequence[int]], options: SamplingOptions | Sequence[SamplingOptions]
    ) -> list[list[int]]:
        """Offline: every prompt's generated tokens, all submitted at once (blocks the caller)."""
        each = [options] * len(prompts) if isinstance(options, SamplingOptions) else options
        if len(each) != len(prompts):
            raise GenerationError(f"{len(prompts)} prompts but {len(each)} sampling options")
        pairs = zip(prompts, each, strict=True)
        requests = [_Request(self._check(p, o), o, None) for p, o in pairs]
        for request in requests:
            self._submit(request)
        for request in requests:
            request.done.wait()
            if request.error is not None:
                raise request.error
        return [r.generated for r in requests]

    def stats(self) -> GeneratorStats:
        s = self.scheduler
        return GeneratorStats(
            running=s.num_running,
            waiting=s.num_waiting,
            kv_blocks=self.num_blocks,
            kv_blocks_free=s.num_free_blocks,
            prefix_hit_blocks=s.prefix_hits,
            prefix_miss_blocks=s.prefix_misses,
            steps=self._counts["steps"],
            prompt_tokens=self._counts["prompt_tokens"],
            generated_tokens=self._counts["generated_tokens"],
            preemptions=self._counts["preemptions"],
            draft_tokens=self._counts["draft_tokens"],
            accepted_tokens=self._counts["accepted_tokens"],
        )

    def close(self) -> None:
        with self._cv:
            self._closing = True
            self._cv.notify()
        self._thread.join()

    # -- the loop ----------------------------------------------------------------------------

    def _loop(self) -> None:
        # Between two steps stand only the native update and schedule and the launch: the
        # Python bookkeeping of step N (tokens to requests, chunks to callers) runs while step
        # N + 1 is on the device.
        pending: _Done | None = None
        try:
            while True:
                if pending is not None and self._idle():
                    self._deliver(self._collect(pending))  # nothing else will run: hand it out
                    pending = None
                if not self._take():
                    break
                try:
                    launched = self._launch()
                    if pending is not None:
                        self._deliver(self._collect(pending))
                        pending = None
                    pending = self._finish(*launched) if launched else None
                except Exception as e:  # a failed step fails the admitted sequences, not the engine
                    pending = None
                    self._fail_all(device_error(e))
        except BaseException as e:  # the loop must never die silently with callers waiting
            self._fail_all(e)
            raise
        if pending is not None:
            self._deliver(self._collect(pending))
        self._fail_all(RuntimeError("the engine closed"))

    def _fail_all(self, error: BaseException) -> None:
        """Ends every admitted sequence with ``error``: the scheduler forgets them (their
        blocks are freed) and their callers get the error."""
        s = self.scheduler
        with contextlib.suppress(Exception):
            # A step may have failed between schedule() and update(): settle what it owes.
            s.update([0] * self._owed)
        self._owed = 0
        for seq, request in list(self._requests.items()):
            with contextlib.suppress(Exception):
                s.abort(seq)
            self._deliver({request: ([], None)}, error=error)
        self._requests.clear()
        self._unstarted.clear()
        self._history.clear()
        self._decoding = []

    def _idle(self) -> bool:
        s = self.scheduler
        with self._cv:
            return not (self._inbox or self._aborts or s.num_running or s.num_waiting)

    def _take(self) -> bool:
        """Admits new requests and aborts, waiting for work; False once closing."""
        s = self.scheduler
        with self._cv:
            while not (
                self._closing or self._inbox or self._aborts or s.num_running or s.num_waiting
            ):
                self._cv.wait()
            if self._closing:
                return False
            inbox, self._inbox = self._inbox, []
            aborts, self._aborts = self._aborts, []
        for seq, request in inbox:
            o = request.options
            eos = () if o.ignore_eos else self.eos_token_ids
            try:
                s.add(
                    seq,
                    request.prompt,
                    o.max_tokens,
                    eos[0] if eos else None,
                    [*eos[1:], *o.stop_token_ids],
                )
            except ValueError as e:
                self._deliver({request: ([], None)}, error=GenerationError(str(e)))
                continue
            self._requests[seq] = request
            self._unstarted.add(seq)
            if self._proposer is not None:
                self._history[seq] = TokenHistory(request.prompt)
            self._counts["prompt_tokens"] += len(request.prompt)
        for seq in aborts:
            if self._requests.pop(seq, None) is not None:
                s.abort(seq)
                self._unstarted.discard(seq)
                self._history.pop(seq, None)
        return True

    def _propose(self, proposer: Proposer) -> None:
        """Drafts for the greedy sequences that decode in the next step."""
        for seq in self._decoding:
            request = self._requests.get(seq)
            if request is None or request.options.temperature != 0.0:
                continue
            draft = proposer.propose(self._history[seq])
            if draft:
                self.scheduler.propose(seq, draft)

    def _launch(self) -> tuple[SchedulerStep, list[_Request], Sampled | None] | None:
        """Schedules a step and queues it on the device."""
        if not (self.scheduler.num_running or self.scheduler.num_waiting):
            return None
        if self._proposer is not None:
            self._propose(self._proposer)
        step = self.scheduler.schedule()
        self._owed = len(step.sample)
        self._counts["preemptions"] += len(step.preempted)
        seq_ids = step.seq_ids.tolist()
        if not seq_ids:
            return None
        sample = step.sample.tolist()
        rows: npt.NDArray[np.int64]
        if self._unstarted or len(sample) != len(seq_ids):
            where = {s: i for i, s in enumerate(seq_ids)}
            rows = np.array([where[s] for s in sample], dtype=np.int64)
            for seq in [q for q in self._unstarted if q in where]:
                i = where[seq]
                self._requests[seq].cached = int(step.context_lens[i] - step.query_lens[i])
                self._unstarted.discard(seq)
        else:
            rows = np.arange(len(seq_ids), dtype=np.int64)
        requests = [self._requests[s] for s in sample]
        if not requests:
            self.runner.logits(step, rows)  # prefill chunks only: nothing to sample
            return step, requests, None
        options = [r.options for r in requests]
        # A seeded row's noise is keyed by the sampled token's position, which depends on the
        # sequence alone, not on the batch it runs in.
        positions = step.context_lens[rows].tolist()
        verify = step.draft_lens[rows].astype(np.int64) if self._proposer is not None else None
        if verify is not None and not verify.any():
            verify = None
        return step, requests, self.runner.launch(step, rows, options, positions, verify)

    def _finish(
        self, step: SchedulerStep, requests: list[_Request], sampled: Sampled | None
    ) -> _Done:
        """Waits for the step's tokens and updates the scheduler."""
        flat = sampled.tokens() if sampled is not None else []
        seqs = step.sample.tolist()
        rows = self._verified(step, seqs, flat)
        counts = [len(r) for r in rows] if len(flat) != len(seqs) else None
        emitted = [t for r in rows for t in r]
        finished = {}
        index = {seq: i for i, seq in enumerate(seqs)}
        for seq, generated, reason in self.scheduler.update(emitted, counts):
            finished[seq] = reason
            request = self._requests.pop(seq)
            history = self._history.pop(seq, None)
            if history is not None:
                # Tokens after a stop condition were dropped: keep those the scheduler kept.
                before = len(history) - len(request.prompt)
                rows[index[seq]] = rows[index[seq]][: len(generated) - before]
        self._owed = 0
        if self._proposer is not None:
            for seq, row in zip(seqs, rows, strict=True):
                if seq not in finished:
                    self._history[seq].extend(row)
            self._decoding = [q for q in seqs if q not in finished]
        self._counts["steps"] += 1
        self._counts["generated_tokens"] += sum(len(r) for r in rows)
        return _Done(seqs, requests, rows, finished)

    def _verified(self, step: SchedulerStep, seqs: list[int], flat: list[int]) -> list[list[int]]:
        """Each sampled sequence's tokens: its one sampled token, or with drafts the ones the
        model's choices accept (counted in the stats)."""
        if len(flat) == len(seqs):
            return [[t] for t in flat]
        ends = dict(zip(step.seq_ids.tolist(), np.cumsum(step.query_lens).tolist(), strict=True))
        lens = dict(zip(step.seq_ids.tolist(), step.draft_lens.tolist(), strict=True))
        ids = step.input_ids
        rows, offset = [], 0
        for seq in seqs:
            d, end = lens[seq], ends[seq]
            row = accept(ids[end - d : end].tolist(), flat[offset : offset + d + 1])
            offset += d + 1
            self._counts["draft_tokens"] += d
            self._counts["accepted_tokens"] += len(row) - 1
            rows.append(row)
        return rows

    def _collect(self, done: _Done) -> _Updates:
        """A finished step's tokens appended to its requests, as updates for the callers."""
        out: _Updates = {}
        finished = done.finished
        for seq, request, tokens in zip(done.seqs, done.requests, done.tokens, strict=True):
            request.generated.extend(tokens)
            reason = finished.get(seq)
            out[request] = (tokens, _REASONS[reason] if reason else None)
        return out

    def _deliver(
        self,
        updates: _Updates,
        error: BaseException | None = None,
    ) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Request, GenerationChunk]]] = (
            defaultdict(list)
        )
        for request, (tokens, reason) in updates.items():
            if error is not None:
                request.error, request.finish = error, "abort"
            elif reason is not None:
                request.finish = reason
            if request.finish is not None:
                request.done.set()
            if request.loop is None:
                continue
            chunk = GenerationChunk(tokens, reason, len(request.prompt), max(request.cached, 0))  # type: ignore[arg-type]
            by_loop[request.loop].append((request, chunk))
        for loop, items in by_loop.items():
            # A closed loop raises RuntimeError: that caller is gone and nobody waits any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_hand_out, items, error)


def _hand_out(items: list[tuple[_Request, GenerationChunk]], error: BaseException | None) -> None:
    for request, chunk in items:
        request.chunks.put_nowait(error if error is not None else chunk)
