"""Speculative decoding: draft tokens proposed on the host, verified in one target forward pass.

A decoding sequence's row carries its input token and the drafts; a choice at every position of
the row (``sample_verifying``) keeps or replaces the draft there, the row emits the kept drafts
up to the first replaced one, and that replacement (or, with every draft kept, one more token).
For a greedy request the choice is the argmax: the output is the model's greedy output token
for token, whatever the drafts. For a sampled one a draft is kept with its probability and
otherwise replaced by a draw from the rest of the distribution, which leaves the output's
distribution that of sampling without drafts. Only the number of forward passes changes.

The proposer shipped here is prompt lookup (n-gram, in C++): the longest n-gram at the end of the
sequence that occurred before proposes what followed it then. It needs no draft model and pays
off where output repeats its context (extraction, code edits, summaries quoting the input).
"""

from __future__ import annotations

import array
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from stoker._native import Scheduler, SchedulerStep, ngram_propose

if array.array("i").itemsize != 4:
    raise ImportError("speculative decoding needs a 4-byte C int for its token buffers")

__all__ = ["NgramProposer", "Proposer", "Speculation", "TokenHistory", "accept"]


class TokenHistory:
    """A sequence's tokens as an int32 array: appends are cheap, and the native proposer reads
    the buffer without a copy into Python objects."""

    def __init__(self, tokens: Sequence[int] = ()) -> None:
        self.buffer = array.array("i", tokens)

    def __len__(self) -> int:
        return len(self.buffer)

    def extend(self, tokens: Sequence[int]) -> None:
        self.buffer.extend(tokens)

    def tokens(self, start: int = 0, stop: int | None = None) -> list[int]:
        return self.buffer[start:stop].tolist()


class Proposer(Protocol):
    """Draft tokens for each sequence's next step, from its tokens so far (prompt and output),
    for all the sequences of a step at once: at most ``num_tokens`` per sequence (steps with
    more run without CUDA graphs)."""

    num_tokens: int

    def propose(self, histories: Sequence[TokenHistory]) -> list[list[int]]: ...


class NgramProposer:
    """Prompt lookup: up to ``num_tokens`` drafts copied from what followed the latest earlier
    occurrence of the sequence's final n-gram, trying n from ``max_ngram`` down to
    ``min_ngram`` (natively, one call per step)."""

    def __init__(self, num_tokens: int = 4, max_ngram: int = 3, min_ngram: int = 1) -> None:
        if num_tokens < 1:
            raise ValueError(f"num_tokens must be at least 1, got {num_tokens}")
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        self.num_tokens = num_tokens
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram

    def propose(self, histories: Sequence[TokenHistory]) -> list[list[int]]:
        drafts: list[list[int]] = ngram_propose(
            [h.buffer for h in histories], self.max_ngram, self.min_ngram, self.num_tokens
        )
        return drafts


def step_drafts(step: SchedulerStep, rows: Sequence[int]) -> list[list[int]]:
    """The draft tokens of the step's ``rows`` (indices into its sequences): the last
    ``draft_lens`` of each row's input tokens."""
    ends = np.cumsum(step.query_lens)
    ids = step.input_ids
    lens = step.draft_lens
    return [ids[int(ends[r]) - int(lens[r]) : int(ends[r])].tolist() for r in rows]


def accept(drafts: Sequence[int], chosen: Sequence[int]) -> list[int]:
    """The tokens a row emits: the choices at its positions (``chosen``, one more than the
    drafts) up to and including the first that differs from the draft it verifies."""
    accepted = 0
    while accepted < len(drafts) and chosen[accepted] == drafts[accepted]:
        accepted += 1
    return list(chosen[: accepted + 1])


class Speculation:
    """The engine's side of speculative decoding: every admitted sequence's tokens, drafts for
    the sequences about to decode, and the verification of a step's tokens."""

    def __init__(self, proposer: Proposer) -> None:
        self.proposer = proposer
        self._history: dict[int, TokenHistory] = {}
        self._decoding: list[int] = []  # after the last step: those a draft may go to
        self.draft_tokens = 0
        self.accepted_tokens = 0

    def admit(self, seq: int, prompt: Sequence[int]) -> None:
        self._history[seq] = TokenHistory(prompt)

    def forget(self, seq: int) -> None:
        self._history.pop(seq, None)

    def clear(self) -> None:
        self._history.clear()
        self._decoding = []

    def propose(self, scheduler: Scheduler, live: Callable[[int], bool]) -> None:
        """Drafts for the sequences decoding in the next step (those ``live`` still serves)."""
        seqs = [q for q in self._decoding if q in self._history and live(q)]
        if not seqs:
            return
        drafts = self.proposer.propose([self._history[q] for q in seqs])
        for seq, draft in zip(seqs, drafts, strict=True):
            if draft:
                scheduler.propose(seq, draft)

    def verify(self, step: SchedulerStep, seqs: list[int], flat: list[int]) -> list[list[int]]:
        """Each sampled sequence's tokens from the choices at its row's positions (``flat``,
        rows in ``seqs`` order): the kept drafts and one more."""
        row_of = {seq: r for r, seq in enumerate(step.seq_ids.tolist())}
        rows, offset = [], 0
        for drafts in step_drafts(step, [row_of[q] for q in seqs]):
            d = len(drafts)
            row = accept(drafts, flat[offset : offset + d + 1])
            offset += d + 1
            self.draft_tokens += d
            self.accepted_tokens += len(row) - 1
            rows.append(row)
        return rows

    def finish(self, seq: int, prompt_len: int, generated: int, row: list[int]) -> list[int]:
        """A finished sequence's last tokens: the scheduler drops those after a stop condition,
        keeping ``generated`` in all."""
        history = self._history.pop(seq, None)
        if history is None:
            return row
        return row[: generated - (len(history) - prompt_len)]

    def advance(self, seqs: list[int], rows: list[list[int]], finished: dict[int, str]) -> None:
        for seq, row in zip(seqs, rows, strict=True):
            if seq not in finished:
                self._history[seq].extend(row)
        self._decoding = [q for q in seqs if q not in finished]
