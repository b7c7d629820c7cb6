"""Runs scheduler steps on the model: the step's arrays to the device, the forward pass, sampling.

On a GPU, steps replay CUDA graphs (``_graphs``) where one fits: decode-only steps padded to a
batch-size bucket; with speculative decoding, steps whose every row decodes with up to k drafts,
each row k + 1 query tokens wide, its own tokens at the end and padding tokens in front (a
padding token sits at a position the row already has KV for and writes its KV to the scratch
block, so the row's own tokens see exactly the keys they would see unpadded; those graphs stop
at the final hidden states and the head runs on the rows verification needs); and steps that
carry prompt tokens, up to ``prompt_graph_tokens`` tokens, padded to a token bucket. Queueing
such a step's layers one kernel at a time takes the host longer than the device needs to run
them. Larger steps run eagerly. A step's integer arrays travel to the device in one copy from a
pinned staging buffer, two of them in turn: a step scheduled ahead is uploaded while the one
before may still be copying. A step scheduled ahead of the last one's tokens (see
csrc/core/scheduler.hpp) gets those tokens on the device, from that step's sampling output, so
the host never waits for them before launching it.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from stoker._native import SchedulerStep
from stoker.generate._attention import chunk_tiles, max_chunk_tiles
from stoker.generate._graphs import StepGraphs, graph_buckets, prompt_buckets
from stoker.generate._model import Decoder, KVCache, StepBatch
from stoker.generate._sampling import Sampled, sample, sample_verifying
from stoker.generate._speculative import step_drafts
from stoker.generate._types import SamplingOptions

__all__ = ["ModelRunner"]


class ModelRunner:
    def __init__(
        self,
        model: Decoder,
        num_blocks: int,
        block_size: int,
        max_num_seqs: int,
        max_model_len: int,
        cuda_graphs: bool = True,
        draft_tokens: int = 0,
        prompt_graph_tokens: int = 0,
    ) -> None:
        self.model, self.block_size = model, block_size
        self.device = model.device
        # One block past the scheduler's: the scratch block of graph padding rows.
        self.scratch = num_blocks
        self.cache: KVCache = model.new_cache(num_blocks + 1, block_size)
        self.width = -(-max_model_len // block_size)
        self.max_num_seqs = max_num_seqs
        pin = self.device.type == "cuda"
        self._staging = [torch.empty(1 << 16, dtype=torch.int64, pin_memory=pin) for _ in "ab"]
        self._copied: list[torch.cuda.Event | None] = [None, None]
        self._turn = 0
        cfg = model.cfg
        self._heads = (cfg.num_heads // cfg.num_kv_heads, model.dtype, cfg.head_dim)
        # Rows of k + 1 tokens for steps verifying up to k drafts; padding tokens sit at the
        # scratch block's first positions in padding rows, so a row must fit one block.
        self.verify_width = draft_tokens + 1 if 0 < draft_tokens < block_size else 0
        self.verify_replays = 0
        self.prompt_replays = 0
        # When a list, each step appends (start, logits done, end, rows, decode_only), the first
        # three CUDA events: the gaps between one step's end and the next one's start are the
        # GPU's idle time.
        self.timeline: list[tuple[Any, Any, Any, int, bool]] | None = None
        self.graphs: StepGraphs | None = None
        if cuda_graphs and self.device.type == "cuda":
            self.graphs = StepGraphs(
                model,
                self.cache,
                self.scratch,
                self.width,
                graph_buckets(max_num_seqs),
                self.verify_width,
                prompt_buckets(prompt_graph_tokens),
            )
        self.buckets = sorted(self.graphs.decode) if self.graphs else []
        self.prompt_buckets = sorted(self.graphs.prompt) if self.graphs else []
        if self.device.type == "cuda":
            # Compiles the sampling kernels now, not in a server's first sampled steps.
            for rows in sorted({1, max_num_seqs}):
                logits = torch.zeros((rows, cfg.vocab_size), device=self.device)
                sample(logits, [SamplingOptions(temperature=1.0)] * rows, [0] * rows)

    # -- inputs ------------------------------------------------------------------------------

    def _upload(self, parts: Sequence[npt.NDArray[np.int64]]) -> list[Tensor]:
        """The arrays on the device (int64), through one staging copy. Each starts 16 bytes
        aligned whatever the sizes before it: Triton compiles a kernel variant per alignment
        class of a pointer, and a variant first met in a running server stalls it."""
        starts = np.cumsum([0] + [p.size + (p.size & 1) for p in parts])
        total = int(starts[-1])
        turn = self._turn
        self._turn ^= 1
        copied = self._copied[turn]
        if copied is not None:
            copied.synchronize()  # the buffer's last copy has been read (long since, in practice)
        staging = self._staging[turn]
        if total > staging.numel():
            staging = self._staging[turn] = torch.empty(
                max(total, 2 * staging.numel()),
                dtype=torch.int64,
                pin_memory=self.device.type == "cuda",
            )
        host = staging.numpy()
        for p, start in zip(parts, starts[:-1].tolist(), strict=True):
            host[start : start + p.size] = p.reshape(-1)
        flat = staging[:total].to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            event = torch.cuda.Event()  # type: ignore[no-untyped-call]
            event.record()
            self._copied[turn] = event
        return [
            flat[start : start + p.size].view(p.shape)
            for p, start in zip(parts, starts[:-1].tolist(), strict=True)
        ]

    def _batch(
        self,
        step: SchedulerStep,
        rows: npt.NDArray[np.int64],
        verify: npt.NDArray[np.int64] | None,
        previous: Tensor | None,
    ) -> StepBatch:
        query_lens = step.query_lens.astype(np.int64)
        cu = np.zeros(len(query_lens) + 1, dtype=np.int64)
        np.cumsum(query_lens, out=cu[1:])
        index = cu[rows + 1] - 1 if verify is None else _verified_tokens(cu[rows + 1], verify)
        ids, pos, slots, cu_t, ctx, tables, logits_rows, tiles, *fill = self._upload(
            [
                step.input_ids.astype(np.int64),
                step.positions,
                step.slot_mapping,
                cu,
                step.context_lens.astype(np.int64),
                step.block_tables.astype(np.int64),
                index,
                chunk_tiles(query_lens, *self._heads),
                *_pending_arrays(step, previous),
            ]
        )
        _fill_pending(ids, fill, previous)
        return StepBatch(
            ids,
            pos,
            slots,
            cu_t.int(),
            ctx.int(),
            tables.int(),
            logits_rows,
            int(query_lens.max(initial=0)),
            tiles,
        )

    def _decode_arrays(self, step: SchedulerStep, bucket: int) -> list[npt.NDArray[np.int64]]:
        """A decode-only step's arrays padded to ``bucket`` rows and the full table width."""
        return [
            *self._padded_tokens(step, bucket),
            _padded(step.context_lens, bucket, 1),
            self._padded_tables(step, bucket),
        ]

    def _padded_tokens(self, step: SchedulerStep, size: int) -> list[npt.NDArray[np.int64]]:
        """Token ids, positions and slots, padded to ``size`` with tokens that write their K/V
        into the scratch block."""
        scratch = self.scratch * self.block_size
        return [
            _padded(step.input_ids, size, 0),
            _padded(step.positions, size, 0),
            _padded(step.slot_mapping, size, scratch),
        ]

    def prompt_arrays(
        self, step: SchedulerStep, rows: npt.NDArray[np.int64], bucket: int
    ) -> list[npt.NDArray[np.int64]]:
        """A step with prompt tokens padded to ``bucket`` tokens and ``max_num_seqs`` rows, in the
        order of a prompt graph's static inputs: ids, positions, slots, context lens, tables,
        query starts, the sampled ``rows``' last tokens, the attention's tile map."""
        n, t, top = len(step.query_lens), len(step.input_ids), self.max_num_seqs
        cu = np.full(top + 1, t, dtype=np.int64)  # padding rows: no query tokens
        cu[0] = 0
        np.cumsum(step.query_lens, out=cu[1 : n + 1])
        last = np.zeros(top, dtype=np.int64)
        last[: len(rows)] = cu[rows + 1] - 1
        tiles = chunk_tiles(step.query_lens, *self._heads, max_chunk_tiles(bucket, *self._heads))
        return [
            *self._padded_tokens(step, bucket),
            _padded(step.context_lens, top, 1),
            self._padded_tables(step, top),
            cu,
            last,
            tiles,
        ]

    def _padded_tables(self, step: SchedulerStep, bucket: int) -> npt.NDArray[np.int64]:
        """The step's block tables at the full width, padding rows on the scratch block."""
        n = len(step.query_lens)
        tables = np.full((bucket, self.width), -1, dtype=np.int64)
        tables[n:, 0] = self.scratch
        src = step.block_tables
        tables[:n, : src.shape[1]] = src
        return tables

    def verify_arrays(self, step: SchedulerStep, bucket: int) -> list[npt.NDArray[np.int64]]:
        """A verifying step's arrays, every row ``verify_width`` tokens wide with its own at the
        end."""
        w, n = self.verify_width, len(step.query_lens)
        own = self.verify_index(step, np.arange(n, dtype=np.int64))
        ctx = np.full(bucket, w, dtype=np.int64)
        ctx[:n] = step.context_lens
        ids = np.zeros(bucket * w, dtype=np.int64)
        ids[own] = step.input_ids
        # Query token i of a row sits at context - w + i, where the attention places it.
        pos = (ctx[:, None] - w + np.arange(w)).reshape(-1)
        pos[own] = step.positions
        slots = np.full(bucket * w, self.scratch * self.block_size, dtype=np.int64)
        slots[own] = step.slot_mapping
        return [ids, pos, slots, ctx, self._padded_tables(step, bucket)]

    def verify_index(
        self, step: SchedulerStep, rows: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.int64]:
        """Where the ``rows``' own tokens sit in the padded step, rows in the order asked: the
        tokens whose logits verification needs."""
        index: npt.NDArray[np.int64] = _verified_tokens(
            (rows + 1) * self.verify_width, step.query_lens[rows].astype(np.int64) - 1
        )
        return index

    def verify_fits(self, step: SchedulerStep, rows: npt.NDArray[np.int64]) -> bool:
        """Every row samples and decodes with at most k drafts, after at least k + 1 tokens."""
        n, w = len(step.query_lens), self.verify_width
        return (
            w > 0
            and len(rows) == n
            and n <= self.max_num_seqs
            and bool(np.all(step.query_lens == step.draft_lens + 1))
            and int(step.query_lens.max(initial=0)) <= w
            and int(step.context_lens.min(initial=w)) >= w
        )

    # -- steps -------------------------------------------------------------------------------

    def copy_blocks(self, copies: npt.NDArray[np.int32]) -> None:
        if len(copies) == 0:
            return
        # Not a blocking copy: the host must not wait for the step still running before it.
        src = torch.from_numpy(copies[:, 0].astype(np.int64)).to(self.device, non_blocking=True)
        dst = torch.from_numpy(copies[:, 1].astype(np.int64)).to(self.device, non_blocking=True)
        for k_cache, v_cache in self.cache:
            k_cache[dst] = k_cache[src]
            v_cache[dst] = v_cache[src]

    def logits(
        self,
        step: SchedulerStep,
        rows: npt.NDArray[np.int64],
        verify: npt.NDArray[np.int64] | None = None,
        previous: Tensor | None = None,
        poll: Callable[[], object] | None = None,
    ) -> Tensor:
        """Float32 logits of the last token of each of the step's ``rows`` (indices into its
        sequences), or with ``verify`` (the rows' draft counts), of their last ``verify + 1``
        tokens, row after row. ``previous``: the owed step's sampled tokens on the device, for
        a step scheduled ahead of them. ``poll``: called between the layers of a step that runs
        eagerly, which takes the host far longer to queue than a graph replay."""
        self.copy_blocks(step.copies)
        n, t = len(step.query_lens), len(step.input_ids)
        graphs = self.graphs
        if graphs is not None and t == n and len(rows) == n and n <= self.buckets[-1]:
            bucket = self.buckets[bisect.bisect_left(self.buckets, n)]
            arrays = self._decode_arrays(step, bucket)
            return self._replay(graphs, graphs.decode, bucket, step, arrays, previous)[:n]
        if (
            graphs is not None
            and graphs.verify
            and verify is not None
            and self.verify_fits(step, rows)
        ):
            bucket = self.buckets[bisect.bisect_left(self.buckets, n)]
            arrays = self.verify_arrays(step, bucket)
            *values, index = self._upload([*arrays, self.verify_index(step, rows)])
            self.verify_replays += 1
            return self.model.head(graphs.replay(graphs.verify, bucket, values)[index])
        prompt = self.prompt_buckets
        if (
            graphs is not None
            and verify is None
            and prompt
            and t <= prompt[-1]
            and n <= self.max_num_seqs
        ):
            bucket = prompt[bisect.bisect_left(prompt, t)]
            arrays = self.prompt_arrays(step, rows, bucket)
            hidden = self._replay(graphs, graphs.prompt, bucket, step, arrays, previous)
            self.prompt_replays += 1
            return self.model.head(hidden[: len(rows)])
        logits: Tensor = self.model(
            self._batch(step, rows, verify, previous), self.cache, True, poll
        )
        return logits

    def _replay(
        self,
        graphs: StepGraphs,
        kind: dict[int, Any],
        bucket: int,
        step: SchedulerStep,
        arrays: list[npt.NDArray[np.int64]],
        previous: Tensor | None,
    ) -> Tensor:
        """Uploads a padded step's arrays, fills its pending tokens and replays its graph."""
        fill = _pending_arrays(step, previous)
        uploaded = self._upload([*arrays, *fill])
        values = uploaded[: len(arrays)]
        _fill_pending(values[0], uploaded[len(arrays) :], previous)
        return graphs.replay(kind, bucket, values)

    def launch(
        self,
        step: SchedulerStep,
        rows: npt.NDArray[np.int64],
        options: Sequence[SamplingOptions],
        positions: Sequence[int],
        verify: npt.NDArray[np.int64] | None = None,
        previous: Sampled | None = None,
        poll: Callable[[], object] | None = None,
    ) -> Sampled:
        """Queues the step and its sampling on the device; the tokens come from the result.

        With ``verify`` (draft counts per row) a row with d drafts gets d + 1 tokens, a choice at
        each of its last d + 1 positions that keeps or replaces the draft it verifies
        (``sample_verifying``). ``poll`` as in ``logits``."""
        timed = self.timeline is not None and self.device.type == "cuda"
        if timed:
            start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            start.record()
        logits = self.logits(step, rows, verify, previous.device if previous else None, poll)
        if verify is not None:
            counts = verify.tolist()
            options = [o for o, d in zip(options, counts, strict=True) for _ in range(d + 1)]
            positions = [
                p - d + j for p, d in zip(positions, counts, strict=True) for j in range(d + 1)
            ]
            drafts = [t for row in step_drafts(step, rows.tolist()) for t in [*row, -1]]
        if timed:
            mid = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            mid.record()
        if verify is None:
            tokens = sample(logits, options, positions)
        else:
            tokens = sample_verifying(logits, options, positions, drafts)
        if self.device.type != "cuda":
            return Sampled(tokens, None, tokens)
        host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
        host.copy_(tokens, non_blocking=True)
        done = torch.cuda.Event(enable_timing=timed)  # type: ignore[no-untyped-call]
        done.record()
        if timed and self.timeline is not None:
            decode_only = len(step.input_ids) == len(step.query_lens)
            self.timeline.append((start, mid, done, len(step.query_lens), decode_only))
        return Sampled(host, done, tokens)


def _padded(values: npt.NDArray[Any], size: int, fill: int) -> npt.NDArray[np.int64]:
    out = np.full(size, fill, dtype=np.int64)
    out[: len(values)] = values
    return out


def _pending_arrays(step: SchedulerStep, previous: Tensor | None) -> list[npt.NDArray[np.int64]]:
    """Where the step's pending input tokens go (the first token of their rows) and which of the
    owed step's sampled tokens they are; none when no row is pending."""
    pending = step.pending.astype(np.int64)
    mask = pending >= 0
    if not mask.any():
        return []
    if previous is None:
        raise RuntimeError("a step scheduled ahead needs the owed step's sampled tokens")
    query_lens = step.query_lens.astype(np.int64)
    starts = np.cumsum(query_lens) - query_lens
    return [starts[mask], pending[mask]]


def _fill_pending(ids: Tensor, fill: Sequence[Tensor], previous: Tensor | None) -> None:
    if fill and previous is not None:
        where, which = fill
        ids[where] = previous[which].to(ids.dtype)


def _verified_tokens(ends: npt.NDArray[np.int64], drafts: npt.NDArray[np.int64]) -> Any:
    """Token indices of each row's last ``drafts + 1`` tokens, rows in order (``ends``: each
    row's end in the step's tokens)."""
    counts = drafts + 1
    starts = np.repeat(ends - counts, counts)
    within = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    return starts + within
