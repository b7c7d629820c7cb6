"""Pure-Python reference of stoker's paged KV-cache block manager, for differential tests.

It follows the policies written down in csrc/core/kv_blocks.hpp, but finds cached blocks by the
exact token prefix they end instead of by a chained hash: it cannot collide, so the native
manager's hash-then-verify lookup must make exactly its decisions. Errors mirror the exceptions
the native binding raises: IndexError for an unknown sequence or position, ValueError for bad input.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

Prefix = tuple[int, ...]


@dataclass
class _Sequence:
    blocks: list[int]
    tokens: list[int]
    tentative: int = 0


class ReferenceKVBlocks:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._holders = [0] * num_blocks
        # The prefix each cached block ends (its KV depends on all of it); None when not cached.
        self._ends: list[Prefix | None] = [None] * num_blocks
        self._cache: dict[Prefix, int] = {}
        self._uncached_free = list(range(num_blocks))  # a heap: the lowest id is taken first
        self._cached_free: OrderedDict[int, None] = OrderedDict()  # least recently freed first
        self._seqs: dict[int, _Sequence] = {}
        self.prefix_hits = 0
        self.prefix_misses = 0

    @property
    def num_free_blocks(self) -> int:
        return len(self._uncached_free) + len(self._cached_free)

    @property
    def num_cached_blocks(self) -> int:
        return len(self._cache)

    def __contains__(self, seq: int) -> bool:
        return seq in self._seqs

    def _get(self, seq: int) -> _Sequence:
        if seq not in self._seqs:
            raise IndexError(f"unknown sequence {seq}")
        return self._seqs[seq]

    @staticmethod
    def _check_tokens(tokens: Iterable[int]) -> None:
        if any(t < 0 for t in tokens):
            raise ValueError("token ids must not be negative")

    def _take(self) -> int:
        if self._uncached_free:
            block = heapq.heappop(self._uncached_free)
        else:
            block, _ = self._cached_free.popitem(last=False)
            ends = self._ends[block]
            assert ends is not None
            del self._cache[ends]
            self._ends[block] = None
        self._holders[block] = 1
        return block

    def _drop(self, block: int) -> None:
        self._holders[block] -= 1
        if self._holders[block] > 0:
            return
        if self._ends[block] is None:
            heapq.heappush(self._uncached_free, block)
        else:
            self._cached_free[block] = None

    def _remember(self, s: _Sequence, i: int) -> None:
        """Cache s's block i, just filled, unless its prefix is cached or its predecessor is not."""
        prefix = tuple(s.tokens[: (i + 1) * self.block_size])
        if prefix in self._cache or (i > 0 and self._ends[s.blocks[i - 1]] is None):
            return
        self._cache[prefix] = s.blocks[i]
        self._ends[s.blocks[i]] = prefix

    def can_allocate(self, n_tokens: int) -> bool:
        if n_tokens < 0:
            raise ValueError("n_tokens must not be negative")
        return -(-n_tokens // self.block_size) <= self.num_free_blocks

    def allocate(self, seq: int, tokens: list[int]) -> int | None:
        if seq in self._seqs:
            raise ValueError(f"sequence {seq} already exists")
        self._check_tokens(tokens)
        bs = self.block_size
        full, total = len(tokens) // bs, -(-len(tokens) // bs)
        found: list[int] = []
        while len(found) < full:
            block = self._cache.get(tuple(tokens[: (len(found) + 1) * bs]))
            if block is None:
                break
            found.append(block)
        revived = sum(1 for b in found if self._holders[b] == 0)
        if total - len(found) + revived > self.num_free_blocks:
            return None
        for b in found:
            if self._holders[b] == 0:
                del self._cached_free[b]
            self._holders[b] += 1
        s = _Sequence(list(found), list(tokens))
        for i in range(len(found), total):
            s.blocks.append(self._take())
            if i < full:
                self._remember(s, i)
        self._seqs[seq] = s
        self.prefix_hits += len(found)
        self.prefix_misses += full - len(found)
        return len(found) * bs

    def append_needs_block(self, seq: int) -> bool:
        s = self._get(seq)
        return len(s.tokens) % self.block_size == 0 or self._holders[s.blocks[-1]] > 1

    def can_append(self, seq: int) -> bool:
        return not self.append_needs_block(seq) or self.num_free_blocks > 0

    def append_slot(
        self, seq: int, token: int, tentative: bool = False
    ) -> tuple[bool, tuple[int, int] | None]:
        s = self._get(seq)
        self._check_tokens([token])
        if not tentative and s.tentative:
            raise RuntimeError(f"settle() the tentative tokens of sequence {seq} first")
        copy = None
        if not self.can_append(seq):
            return False, None
        if len(s.tokens) % self.block_size == 0:
            s.blocks.append(self._take())
        elif self._holders[s.blocks[-1]] > 1:
            old, new = s.blocks[-1], self._take()
            self._drop(old)
            s.blocks[-1] = new
            copy = (old, new)
        s.tokens.append(token)
        if tentative:
            s.tentative += 1
        elif len(s.tokens) % self.block_size == 0:
            self._remember(s, len(s.blocks) - 1)
        return True, copy

    def settle(self, seq: int, n: int) -> None:
        s = self._get(seq)
        settled = len(s.tokens) - s.tentative
        if not settled <= n <= len(s.tokens):
            raise ValueError(
                f"settle() keeps {settled} to {len(s.tokens)} tokens of sequence {seq}, not {n}"
            )
        bs = self.block_size
        while len(s.blocks) > -(-n // bs):
            self._drop(s.blocks.pop())
        del s.tokens[n:]
        s.tentative = 0
        for i in range(settled // bs, n // bs):
            self._remember(s, i)

    def confirm(self, seq: int, token: int) -> None:
        s = self._get(seq)
        self._check_tokens([token])
        if not s.tentative:
            raise RuntimeError(f"sequence {seq} has no tentative token")
        settled = len(s.tokens) - s.tentative
        s.tokens[settled] = token
        self.settle(seq, settled + 1)

    def fork(self, parent: int, child: int) -> None:
        p = self._get(parent)
        if child in self._seqs:
            raise ValueError(f"sequence {child} already exists")
        for b in p.blocks:
            self._holders[b] += 1
        self._seqs[child] = _Sequence(list(p.blocks), list(p.tokens), p.tentative)

    def free(self, seq: int) -> None:
        s = self._get(seq)
        for b in reversed(s.blocks):
            self._drop(b)
        del self._seqs[seq]

    def block_table(self, seq: int) -> list[int]:
        return list(self._get(seq).blocks)

    def num_tokens(self, seq: int) -> int:
        return len(self._get(seq).tokens)

    def slot_mapping(self, seq: int, positions: Iterable[int]) -> list[int]:
        s = self._get(seq)
        slots = []
        for p in positions:
            if not 0 <= p < len(s.tokens):
                raise IndexError(f"position {p} is outside sequence {seq}")
            slots.append(s.blocks[p // self.block_size] * self.block_size + p % self.block_size)
        return slots
