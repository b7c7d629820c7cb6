"""Pure-Python reference of stoker's continuous-batching scheduler, for differential tests.

It follows the policies written down in csrc/core/scheduler.hpp on top of the reference block
manager (tests/_kv_reference.py), and returns plain lists where the native binding returns numpy
arrays. Errors mirror the native binding's: ValueError for bad input, IndexError for an unknown
sequence, RuntimeError for a call out of turn.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from _kv_reference import ReferenceKVBlocks

Finished = tuple[int, list[int], str]


@dataclass
class Step:
    input_ids: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    seq_ids: list[int] = field(default_factory=list)
    query_lens: list[int] = field(default_factory=list)
    context_lens: list[int] = field(default_factory=list)
    draft_lens: list[int] = field(default_factory=list)
    block_tables: list[list[int]] = field(default_factory=list)
    slot_mapping: list[int] = field(default_factory=list)
    copies: list[tuple[int, int]] = field(default_factory=list)
    sample: list[int] = field(default_factory=list)
    preempted: list[int] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)


@dataclass
class _Seq:
    tokens: list[int]
    prompt_len: int
    max_new_tokens: int
    eos_token_id: int | None
    stop_token_ids: list[int]
    prefill_target: int = 0
    prefilling: bool = True
    owed: int = 0
    owed_row: int = 0
    unconfirmed: bool = False
    draft: list[int] = field(default_factory=list)


class ReferenceScheduler:
    def __init__(
        self, num_blocks: int, block_size: int, max_num_batched_tokens: int, max_num_seqs: int
    ) -> None:
        self.blocks = ReferenceKVBlocks(num_blocks, block_size)
        if max_num_seqs <= 0:
            raise ValueError("max_num_seqs must be positive")
        if max_num_batched_tokens < max_num_seqs:
            raise ValueError("max_num_batched_tokens must be at least max_num_seqs")
        self.max_tokens = max_num_batched_tokens
        self.max_seqs = max_num_seqs
        self._seqs: dict[int, _Seq] = {}
        self._waiting: deque[int] = deque()
        self._running: list[int] = []
        self._owed: deque[tuple[list[int], list[list[int]]]] = deque()  # (sample, drafts)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def num_running(self) -> int:
        return len(self._running)

    def add(
        self,
        seq: int,
        prompt: list[int],
        max_new_tokens: int,
        eos_token_id: int | None = None,
        stop_token_ids: list[int] | None = None,
    ) -> None:
        if seq in self._seqs:
            raise ValueError(f"sequence {seq} already exists")
        if not prompt:
            raise ValueError("the prompt is empty")
        if any(t < 0 for t in prompt):
            raise ValueError("token ids must not be negative")
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be positive")
        if len(prompt) + max_new_tokens - 1 > self.blocks.num_blocks * self.blocks.block_size:
            raise ValueError(f"sequence {seq} needs more KV than the whole cache holds")
        stops = list(stop_token_ids or [])
        self._seqs[seq] = _Seq(list(prompt), len(prompt), max_new_tokens, eos_token_id, stops)
        self._waiting.append(seq)

    def _check_idle(self, what: str) -> None:
        if self._owed:
            raise RuntimeError(f"{what} needs update() with the last step's tokens")

    def _room(self, seq: int) -> int:
        bs = self.blocks.block_size
        used = self.blocks.num_tokens(seq)
        return len(self.blocks.block_table(seq)) * bs - used + self.blocks.num_free_blocks * bs

    def _make_room(
        self, seq: int, fits: Callable[[int], bool], scheduled: set[int], out: Step
    ) -> bool:
        while not fits(seq):
            victim = next(s for s in reversed(self._running) if s not in scheduled)
            self.blocks.free(victim)
            self._running.remove(victim)
            self._seqs[victim].prefilling = True
            self._seqs[victim].unconfirmed = False
            self._waiting.appendleft(victim)
            out.preempted.append(victim)
            if victim == seq:
                return False
        return True

    def propose(self, seq: int, draft: list[int]) -> None:
        self._check_idle("propose()")
        if seq not in self._seqs:
            raise IndexError(f"unknown sequence {seq}")
        if self._seqs[seq].prefilling:
            raise ValueError(f"sequence {seq} is not decoding")
        if any(t < 0 for t in draft):
            raise ValueError("token ids must not be negative")
        self._seqs[seq].draft = list(draft)

    def _append(self, seq: int, token: int, out: Step, tentative: bool = False) -> None:
        appended, copy = self.blocks.append_slot(seq, token, tentative)
        assert appended
        if copy is not None:
            out.copies.append(copy)

    def _emit(
        self, seq: int, start: int, end: int, out: Step, draft_len: int = 0, pending: int = -1
    ) -> None:
        s = self._seqs[seq]
        positions = list(range(start, end))
        out.input_ids += (s.tokens + ([0] if pending >= 0 else s.draft))[start:end]
        out.positions += positions
        out.slot_mapping += self.blocks.slot_mapping(seq, positions)
        out.seq_ids.append(seq)
        out.query_lens.append(end - start)
        out.context_lens.append(end)
        out.draft_lens.append(draft_len)
        out.pending.append(pending)
        if not s.prefilling:
            out.sample.append(seq)

    def schedule(self) -> Step:
        if len(self._owed) > 1:
            raise RuntimeError("schedule() needs update() with an earlier step's tokens")
        if self._owed and any(self._owed[-1][1]):
            raise RuntimeError("schedule() ahead of a step with drafts needs its update() first")
        out = Step()
        scheduled: set[int] = set()
        budget = self.max_tokens
        decoders = sum(1 for q in self._running if not self._seqs[q].prefilling)
        spare = budget - decoders
        i = 0
        while i < len(self._running):
            seq = self._running[i]
            i += 1
            s = self._seqs[seq]
            if s.prefilling:
                continue
            ahead = s.owed > 0
            if ahead and len(s.tokens) - s.prompt_len + 1 >= s.max_new_tokens:
                scheduled.add(seq)
                continue
            if not self._make_room(seq, self.blocks.can_append, scheduled, out):
                break
            n = self.blocks.num_tokens(seq)
            self._append(seq, 0 if ahead else s.tokens[n], out, ahead)
            s.unconfirmed = ahead
            decoders -= 1
            left = s.max_new_tokens - (len(s.tokens) - s.prompt_len) - 1
            k = 0
            while k < min(len(s.draft), spare, left) and (
                not self.blocks.append_needs_block(seq) or self.blocks.num_free_blocks > decoders
            ):
                self._append(seq, s.draft[k], out, tentative=True)
                k += 1
            del s.draft[k:]
            self._emit(seq, n, n + 1 + k, out, k, s.owed_row if ahead else -1)
            scheduled.add(seq)
            spare -= k
            budget -= 1 + k
        i = 0
        while i < len(self._running) and budget > 0:
            seq = self._running[i]
            i += 1
            s = self._seqs[seq]
            if not s.prefilling:
                continue
            if not self._make_room(seq, lambda q: self._room(q) > 0, scheduled, out):
                break
            done = self.blocks.num_tokens(seq)
            chunk = min(s.prefill_target - done, budget, self._room(seq))
            for p in range(done, done + chunk):
                self._append(seq, s.tokens[p], out)
            s.prefilling = done + chunk < s.prefill_target
            self._emit(seq, done, done + chunk, out)
            scheduled.add(seq)
            budget -= chunk
        while (
            not out.preempted
            and budget > 0
            and self._waiting
            and len(self._running) < self.max_seqs
        ):
            seq = self._waiting[0]
            s = self._seqs[seq]
            if s.owed:
                break
            n = min(len(s.tokens), budget)
            cached = self.blocks.allocate(seq, s.tokens[:n])
            if cached is None:
                break
            self._waiting.popleft()
            self._running.append(seq)
            s.prefill_target = len(s.tokens)
            s.prefilling = n < s.prefill_target
            done = min(cached, n - 1)
            self._emit(seq, done, n, out)
            scheduled.add(seq)
            budget -= n - done
        tables = [self.blocks.block_table(seq) for seq in out.seq_ids]
        width = max((len(t) for t in tables), default=0)
        out.block_tables = [t + [-1] * (width - len(t)) for t in tables]
        if out.sample:
            self._owed.append((list(out.sample), [self._seqs[q].draft for q in out.sample]))
        for i, q in enumerate(out.sample):
            self._seqs[q].owed += 1
            self._seqs[q].owed_row = i
        for s in self._seqs.values():
            s.draft = []
        return out

    def update(self, sampled: list[int], counts: list[int] | None = None) -> list[Finished]:
        sample, drafts = self._owed[0] if self._owed else ([], [])
        rows = len(sample)
        if counts is not None and len(counts) != rows:
            raise ValueError(f"expected {rows} counts, got {len(counts)}")
        per_row = list(counts) if counts is not None else [1] * rows
        total = 0
        for seq, draft, c in zip(sample, drafts, per_row, strict=True):
            if not 1 <= c <= len(draft) + 1:
                raise ValueError(
                    f"sequence {seq} carried {len(draft)} drafts, so it takes 1 to "
                    f"{len(draft) + 1} tokens, not {c}"
                )
            if sampled[total : total + c - 1] != draft[: c - 1][: max(0, len(sampled) - total)]:
                raise ValueError(f"the accepted tokens of sequence {seq} differ from its draft")
            total += c
        if len(sampled) != total:
            raise ValueError(f"expected {total} sampled tokens, got {len(sampled)}")
        if any(t < 0 for t in sampled):
            raise ValueError("token ids must not be negative")
        finished: list[Finished] = []
        offset = 0
        for seq, draft, c in zip(sample, drafts, per_row, strict=True):
            tokens = sampled[offset : offset + c]
            offset += c
            if seq not in self._seqs:
                continue
            s = self._seqs[seq]
            s.owed -= 1
            if draft:
                self.blocks.settle(seq, self.blocks.num_tokens(seq) - len(draft) + c - 1)
            reason = None
            for t in tokens:
                s.tokens.append(t)
                if t == s.eos_token_id:
                    reason = "eos"
                elif t in s.stop_token_ids:
                    reason = "stop"
                elif len(s.tokens) - s.prompt_len >= s.max_new_tokens:
                    reason = "length"
                if reason is not None:
                    break
            if reason is None:
                if s.unconfirmed:
                    self.blocks.confirm(seq, tokens[0])
                s.unconfirmed = False
                continue
            finished.append((seq, s.tokens[s.prompt_len :], reason))
            self._drop(seq)
        if self._owed:
            self._owed.popleft()
        return finished

    def abort(self, seq: int) -> None:
        if seq not in self._seqs:
            raise IndexError(f"unknown sequence {seq}")
        self._drop(seq)

    def _drop(self, seq: int) -> None:
        """Forgets the sequence wherever it is, freeing its blocks."""
        del self._seqs[seq]
        if seq in self.blocks:
            self.blocks.free(seq)
        if seq in self._running:
            self._running.remove(seq)
        if seq in self._waiting:
            self._waiting.remove(seq)
