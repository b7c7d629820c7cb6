"""Speculative decoding: draft tokens proposed on the host, verified in one target forward pass.

A decoding sequence's row carries its input token and the drafts; the model's greedy choice at
every position of the row says how many drafts were right (the accepted ones) and gives one more
token of its own. The output is the model's greedy output token for token, whatever the drafts;
only the number of forward passes changes. Drafts go to greedy requests only, so sampled ones
keep their distribution by construction.

The proposer shipped here is prompt lookup (n-gram): the longest recent n-gram at the end of the
sequence that occurred before proposes what followed it then. It needs no draft model and pays
off where output repeats its context (extraction, code edits, summaries quoting the input).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

__all__ = ["NgramProposer", "Proposer", "TokenHistory", "accept"]

_WIDTH = 4  # bytes per token in a TokenHistory


class TokenHistory:
    """A sequence's tokens as little-endian int32 bytes: appends are cheap and n-gram lookups run
    as one C-level ``bytearray.rfind``."""

    def __init__(self, tokens: Sequence[int] = ()) -> None:
        self._bytes = bytearray()
        self.extend(tokens)

    def __len__(self) -> int:
        return len(self._bytes) // _WIDTH

    def extend(self, tokens: Sequence[int]) -> None:
        for t in tokens:
            self._bytes += int(t).to_bytes(_WIDTH, "little")

    def tokens(self, start: int = 0, stop: int | None = None) -> list[int]:
        end = len(self) if stop is None else min(stop, len(self))
        return [
            int.from_bytes(self._bytes[i * _WIDTH : (i + 1) * _WIDTH], "little")
            for i in range(max(start, 0), end)
        ]

    def rfind(self, start: int, stop: int, end: int) -> int:
        """The token index of the last occurrence of tokens[start:stop] lying wholly before
        token ``end``, or -1."""
        pattern = bytes(self._bytes[start * _WIDTH : stop * _WIDTH])
        limit = end * _WIDTH
        while True:
            at = self._bytes.rfind(pattern, 0, limit)
            if at < 0:
                return -1
            if at % _WIDTH == 0:
                return at // _WIDTH
            limit = at + len(pattern) - 1  # a match across token boundaries: look further back


class Proposer(Protocol):
    """Draft tokens for a sequence's next step, from its tokens so far (prompt and output)."""

    def propose(self, history: TokenHistory) -> list[int]: ...


class NgramProposer:
    """Prompt lookup: up to ``num_tokens`` drafts copied from what followed the last earlier
    occurrence of the sequence's final n-gram, trying n from ``max_ngram`` down to
    ``min_ngram``."""

    def __init__(self, num_tokens: int = 4, max_ngram: int = 3, min_ngram: int = 1) -> None:
        if num_tokens < 1:
            raise ValueError(f"num_tokens must be at least 1, got {num_tokens}")
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        self.num_tokens = num_tokens
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram

    def propose(self, history: TokenHistory) -> list[int]:
        n_tokens = len(history)
        for n in range(min(self.max_ngram, n_tokens - 1), self.min_ngram - 1, -1):
            # The match must end before the final n-gram's last token, so something follows it.
            at = history.rfind(n_tokens - n, n_tokens, n_tokens - 1)
            if at >= 0:
                return history.tokens(at + n, at + n + self.num_tokens)
        return []


def accept(drafts: Sequence[int], chosen: Sequence[int]) -> list[int]:
    """The tokens a row emits: the model's choices at each position (``chosen``, one more than
    the drafts) up to and including the first that differs from the draft it verifies."""
    accepted = 0
    while accepted < len(drafts) and chosen[accepted] == drafts[accepted]:
        accepted += 1
    return list(chosen[: accepted + 1])
