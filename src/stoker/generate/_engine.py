"""The generation engine: continuous batching on the native scheduler, one loop thread per engine.

Callers on any asyncio loop ``stream()`` a sequence's tokens; the engine's thread runs steps: it
schedules (natively), runs the model, samples, and hands each step's new tokens to the callers'
loops with one wake-up per loop per step. Python touches each step, never each token's scheduling.

By default each step is scheduled and launched ahead of the last one's tokens (the scheduler's
pending rows, filled on the device): the host's work for step N + 1 (schedule, upload, launch)
and for step N's tokens (update, hand-out) all run while the device computes, so it never waits
for them. A row of a sequence that stopped on eos in the step before runs for nothing. With
speculative decoding the drafts depend on the last tokens, so each step waits for them first.

A step that runs eagerly (one carrying more prompt tokens than ``prompt_graph_tokens``, or any
without CUDA graphs) takes the host longer to queue than the device needs for the decode step
before it (on an H100, about 13 ms against 11 ms for Qwen3-0.6B at 256 sequences). Between its
layers the engine checks whether the step before has finished and hands its tokens out at once,
rather than after the whole step is queued: the gap a stream sees between two tokens follows
the device, not the host's queueing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
from collections import defaultdict
from collections.abc import AsyncGenerator, Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from tokenizers import Tokenizer

from stoker._answers import device_error
from stoker._native import Scheduler, SchedulerStep
from stoker.generate._clock import StepClock
from stoker.generate._config import read_config
from stoker.generate._model import Decoder, load_weights
from stoker.generate._requests import (
    Done,
    LoopOutlet,
    Outlet,
    Request,
    collect,
    deliver,
    next_chunk,
)
from stoker.generate._runner import ModelRunner
from stoker.generate._sampling import Sampled
from stoker.generate._speculative import Proposer, Speculation
from stoker.generate._types import (
    GenerationChunk,
    GenerationError,
    GeneratorStats,
    SamplingOptions,
)

__all__ = ["GenerateEngine", "folder_tokenizer"]

log = logging.getLogger("stoker.generate")

Launched = tuple[SchedulerStep, list[Request], Sampled | None]


class _Owed:
    """A launched step whose tokens are handed out once: by ``poll``, as soon as the device has
    them, or by ``hand_out``, waiting for them."""

    def __init__(self, finish: Callable[..., Done], launched: Launched) -> None:
        self._finish = finish
        self._launched: Launched | None = launched

    def poll(self) -> None:
        launched = self._launched
        if launched is not None and (launched[2] is None or launched[2].ready()):
            self.hand_out()

    def hand_out(self) -> None:
        launched, self._launched = self._launched, None
        if launched is not None:
            deliver(collect(self._finish(*launched)))


def folder_tokenizer(folder: Path) -> Tokenizer:
    """The folder's tokenizer; a folder without one gets an empty stand-in, enough for token-id
    prompts and outputs (offline use), and serving refuses it."""
    from tokenizers import models

    path = folder / "tokenizer.json"
    return Tokenizer.from_file(str(path)) if path.is_file() else Tokenizer(models.BPE())


class GenerateEngine:
    """A decoder model from a local folder behind continuous batching.

    ``num_blocks`` fixes the KV cache's size; by default it takes ``kv_cache_fraction`` of the
    GPU memory left after the weights (on CPU: room for every sequence at full length, at most
    ``cpu_kv_bytes``). ``speculative`` proposes draft tokens (for example ``NgramProposer()``),
    verified in the step that decodes them (see ``_speculative``).
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
        schedule_ahead: bool = True,
        prompt_graph_tokens: int = 2048,
    ) -> None:
        """``decoder``: a model already built and loaded (``model`` then only names the folder
        of its tokenizer); its device and dtype override ``device`` and ``dtype``.
        ``schedule_ahead``: launch each step before the last one's tokens are in (off with
        ``speculative``). ``prompt_graph_tokens``: with ``cuda_graphs``, steps that carry
        prompt tokens replay CUDA graphs too, up to this many tokens (at most
        ``max_num_batched_tokens``; 0: they run eagerly)."""
        if prompt_graph_tokens < 0:
            raise ValueError(f"prompt_graph_tokens must be >= 0, got {prompt_graph_tokens}")
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
        self.tokenizer = folder_tokenizer(self.model_folder)
        if num_blocks is None:
            num_blocks = decoder.cache_blocks(block_size, kv_cache_fraction, cpu_kv_bytes)
            # On the CPU no more than every sequence at full length.
            if decoder.device.type != "cuda":
                num_blocks = min(num_blocks, max_num_seqs * -(-self.max_model_len // block_size))
        self.num_blocks = num_blocks
        self.max_num_seqs = max_num_seqs
        self.scheduler = Scheduler(
            num_blocks, block_size, max(max_num_batched_tokens, max_num_seqs), max_num_seqs
        )
        self.runner = ModelRunner(
            decoder,
            num_blocks,
            block_size,
            max_num_seqs,
            self.max_model_len,
            cuda_graphs,
            speculative.num_tokens if speculative is not None else 0,
            min(prompt_graph_tokens, max_num_batched_tokens),
        )
        self._ids = itertools.count()
        self._speculation = Speculation(speculative) if speculative is not None else None
        self.schedule_ahead = schedule_ahead and speculative is None
        self._requests: dict[int, Request] = {}
        self._unstarted: set[int] = set()  # admitted, not yet scheduled: prefix hits unknown
        self._owed: list[int] = []  # tokens each owed update() expects, oldest first
        self._inbox: list[tuple[int, Request]] = []
        self._aborts: list[int] = []
        self._cv = threading.Condition()
        self._closing = False
        self._counts = defaultdict(int)  # type: defaultdict[str, int]
        self._clock = StepClock()
        self._thread = threading.Thread(target=self._loop, name="stoker-generate", daemon=True)
        self._thread.start()

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

    def _submit(self, request: Request) -> int:
        seq = next(self._ids)
        with self._cv:
            if self._closing:
                raise RuntimeError("the engine is closed")
            self._inbox.append((seq, request))
            self._cv.notify()
        return seq

    def submit(
        self, prompt_ids: Sequence[int], options: SamplingOptions, outlet: Outlet
    ) -> tuple[int, Request]:
        """Admits a sequence whose chunks go to ``outlet`` (``stream`` is this on the caller's
        loop); the returned id aborts it."""
        request = Request(self._check(prompt_ids, options), options, outlet)
        return self._submit(request), request

    def abort(self, seq: int) -> None:
        """Ends a submitted sequence early and frees its KV blocks; an id that already
        finished is ignored."""
        with self._cv:
            self._aborts.append(seq)
            self._cv.notify()

    async def stream(
        self, prompt_ids: Sequence[int], options: SamplingOptions
    ) -> AsyncGenerator[GenerationChunk, None]:
        seq, request = self.submit(prompt_ids, options, LoopOutlet(asyncio.get_running_loop()))
        try:
            while True:
                item = await next_chunk(request.chunks)
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            if request.finish is None:
                self.abort(seq)

    def generate(
        self, prompts: Sequence[Sequence[int]], options: SamplingOptions | Sequence[SamplingOptions]
    ) -> list[list[int]]:
        """Offline: every prompt's generated tokens, all submitted at once (blocks the caller)."""
        each = [options] * len(prompts) if isinstance(options, SamplingOptions) else options
        if len(each) != len(prompts):
            raise GenerationError(f"{len(prompts)} prompts but {len(each)} sampling options")
        pairs = zip(prompts, each, strict=True)
        requests = [Request(self._check(p, o), o, None) for p, o in pairs]
        for request in requests:
            self._submit(request)
        for request in requests:
            request.done.wait()
            if request.error is not None:
                raise request.error
        return [r.generated for r in requests]

    def stats(self) -> GeneratorStats:
        s = self.scheduler
        decode_steps, prompt_steps = self._clock.times()
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
            draft_tokens=self._speculation.draft_tokens if self._speculation else 0,
            accepted_tokens=self._speculation.accepted_tokens if self._speculation else 0,
            decode_steps=decode_steps,
            prompt_steps=prompt_steps,
        )

    def close(self) -> None:
        with self._cv:
            self._closing = True
            self._cv.notify()
        self._thread.join()

    # -- the loop ----------------------------------------------------------------------------

    def _loop(self) -> None:
        # Waiting for step N's tokens, the device already has step N + 1 (ahead) or the Python
        # bookkeeping of step N - 1 runs (not ahead): either way the host works while it computes.
        pending: Done | None = None  # not ahead: a step's tokens not yet handed out
        inflight: Launched | None = None  # ahead: a launched step whose tokens are not in
        try:
            while True:
                if pending is not None and self._idle():
                    deliver(collect(pending))  # nothing else will run: hand it out
                    pending = None
                if not self._take(wait=inflight is None):
                    break
                try:
                    owed = _Owed(self._finish, inflight) if inflight is not None else None
                    launched = self._launch(inflight, owed.poll if owed else None)
                    if owed is not None:
                        owed.hand_out()
                        inflight = None
                    if pending is not None:
                        deliver(collect(pending))
                        pending = None
                    if launched is not None and self.schedule_ahead:
                        inflight = launched
                    elif launched is not None:
                        pending = self._finish(*launched)
                except Exception as e:  # a failed step fails the admitted sequences, not the engine
                    # Logged here, with the step's own traceback: its callers may be in another
                    # process, and they get only the error.
                    log.exception(
                        "a generation step failed; its %d sequences end", len(self._requests)
                    )
                    pending = inflight = None
                    self._fail_all(device_error(e))
            if inflight is not None:
                deliver(collect(self._finish(*inflight)))
        except BaseException as e:  # the loop must never die silently with callers waiting
            self._fail_all(e)
            raise
        if pending is not None:
            deliver(collect(pending))
        self._fail_all(RuntimeError("the engine closed"))

    def _fail_all(self, error: BaseException) -> None:
        """Ends every admitted sequence with ``error``: the scheduler forgets them (their
        blocks are freed) and their callers get the error."""
        s = self.scheduler
        for owed in self._owed:  # steps that failed between schedule() and update()
            with contextlib.suppress(Exception):
                s.update([0] * owed)
        self._owed.clear()
        self._clock.forget_launched()
        for seq, request in list(self._requests.items()):
            with contextlib.suppress(Exception):
                s.abort(seq)
            deliver({request: ([], None)}, error=error)
        self._requests.clear()
        self._unstarted.clear()
        if self._speculation is not None:
            self._speculation.clear()

    def _idle(self) -> bool:
        s = self.scheduler
        with self._cv:
            return not (self._inbox or self._aborts or s.num_running or s.num_waiting)

    def _take(self, wait: bool) -> bool:
        """Admits new requests and aborts, waiting for work if ``wait``; False once closing."""
        s = self.scheduler
        with self._cv:
            while wait and not (
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
                deliver({request: ([], None)}, error=GenerationError(str(e)))
                continue
            self._requests[seq] = request
            self._unstarted.add(seq)
            if self._speculation is not None:
                self._speculation.admit(seq, request.prompt)
            self._counts["prompt_tokens"] += len(request.prompt)
        for seq in aborts:
            if self._requests.pop(seq, None) is not None:
                s.abort(seq)
                self._unstarted.discard(seq)
                if self._speculation is not None:
                    self._speculation.forget(seq)
        return True

    def _launch(
        self, inflight: Launched | None, poll: Callable[[], object] | None = None
    ) -> Launched | None:
        """Schedules a step and queues it on the device, ahead of ``inflight``'s tokens;
        ``poll`` goes to the runner."""
        if not (self.scheduler.num_running or self.scheduler.num_waiting):
            return None
        if self._speculation is not None:
            self._speculation.propose(self.scheduler, self._requests.__contains__)
        step = self.scheduler.schedule()
        if len(step.sample):
            self._owed.append(len(step.sample))
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
        self._clock.launched()
        if not requests:
            self.runner.logits(step, rows, None, None, poll)  # prefill chunks only: no sampling
            return step, requests, None
        options = [r.options for r in requests]
        # A seeded row's noise is keyed by the sampled token's position, which depends on the
        # sequence alone, not on the batch it runs in.
        positions = step.context_lens[rows].tolist()
        verify = step.draft_lens[rows].astype(np.int64) if self._speculation else None
        if verify is not None and not verify.any():
            verify = None
        previous = inflight[2] if inflight is not None else None
        return (
            step,
            requests,
            self.runner.launch(step, rows, options, positions, verify, previous, poll),
        )

    def _finish(
        self, step: SchedulerStep, requests: list[Request], sampled: Sampled | None
    ) -> Done:
        """Waits for the step's tokens and updates the scheduler."""
        flat = sampled.tokens() if sampled is not None else []
        self._clock.finished(bool((step.query_lens > step.draft_lens + 1).any()))
        seqs = step.sample.tolist()
        if not seqs:  # nothing sampled, nothing owed
            self._counts["steps"] += 1
            return Done([], [], [], {})
        # Rows of sequences aborted, or stopped a step before (scheduled ahead), are dropped.
        alive = [seq in self._requests for seq in seqs]
        spec = self._speculation
        verified = spec is not None and len(flat) != len(seqs)
        rows = spec.verify(step, seqs, flat) if spec and verified else [[t] for t in flat]
        index = {seq: i for i, seq in enumerate(seqs)}
        finished = {}
        emitted = [t for r in rows for t in r]
        for seq, generated, reason in self.scheduler.update(
            emitted, [len(r) for r in rows] if verified else None
        ):
            finished[seq] = reason
            request = self._requests.pop(seq)
            if spec is not None:
                i = index[seq]
                rows[i] = spec.finish(seq, len(request.prompt), len(generated), rows[i])
        self._owed.pop(0)
        if spec is not None:
            spec.advance(seqs, rows, finished)
        if not all(alive):
            seqs, requests, rows = (
                [x for x, keep in zip(xs, alive, strict=True) if keep]
                for xs in (seqs, requests, rows)
            )
        self._counts["steps"] += 1
        self._counts["generated_tokens"] += sum(len(r) for r in rows)
        return Done(seqs, requests, rows, finished)
