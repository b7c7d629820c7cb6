"""The native paged KV block manager against the pure-Python reference (tests/_kv_reference.py).

Random workloads run the same operations on both and compare every observable after each step;
they also keep a simulated KV store, written the way a model runner would, to check that every
position of every live sequence reads the KV of its own prefix (prefix hits and copy-on-write
never hand out another sequence's data). Hand-checked scenarios pin the policies themselves.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import numpy as np
import pytest
from _kv_reference import ReferenceKVBlocks

from stoker._native import KVBlockManager


class Manager(Protocol):
    def can_allocate(self, n_tokens: int) -> bool: ...
    def allocate(self, seq: int, tokens: list[int]) -> int | None: ...
    def can_append(self, seq: int) -> bool: ...
    def append_needs_block(self, seq: int) -> bool: ...
    def append_slot(
        self, seq: int, token: int, tentative: bool = False
    ) -> tuple[bool, tuple[int, int] | None]: ...
    def settle(self, seq: int, n: int) -> None: ...
    def confirm(self, seq: int, token: int) -> None: ...
    def fork(self, parent: int, child: int) -> None: ...
    def free(self, seq: int) -> None: ...
    def block_table(self, seq: int) -> Iterable[Any]: ...
    def num_tokens(self, seq: int) -> int: ...
    def slot_mapping(self, seq: int, positions: list[int]) -> Iterable[Any]: ...
    @property
    def num_free_blocks(self) -> int: ...
    @property
    def num_cached_blocks(self) -> int: ...
    @property
    def prefix_hits(self) -> int: ...
    @property
    def prefix_misses(self) -> int: ...


MAKERS: list[Callable[[int, int], Manager]] = [KVBlockManager, ReferenceKVBlocks]


def ints(values: Iterable[Any]) -> list[int]:
    return [int(v) for v in values]


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", call()
    except (IndexError, ValueError) as e:
        return "error", type(e)


class KVStore:
    """What a model runner would write: each slot holds the KV of the prefix ending there."""

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.slots: dict[int, tuple[int, ...]] = {}
        self.tokens: dict[int, list[int]] = {}

    def write(self, m: Manager, seq: int, start: int) -> None:
        toks = self.tokens[seq]
        positions = list(range(start, len(toks)))
        for p, slot in zip(positions, ints(m.slot_mapping(seq, positions)), strict=True):
            self.slots[slot] = tuple(toks[: p + 1])

    def copy(self, src: int, dst: int) -> None:
        for offset in range(self.block_size):
            if src * self.block_size + offset in self.slots:
                self.slots[dst * self.block_size + offset] = self.slots[
                    src * self.block_size + offset
                ]

    def check(self, m: Manager, seq: int) -> None:
        toks = self.tokens[seq]
        slots = ints(m.slot_mapping(seq, list(range(len(toks)))))
        for p, slot in enumerate(slots):
            assert self.slots.get(slot) == tuple(toks[: p + 1]), (seq, p)


def compare(native: Manager, ref: Manager, live: Sequence[int], num_blocks: int) -> None:
    for name in ("num_free_blocks", "num_cached_blocks", "prefix_hits", "prefix_misses"):
        assert getattr(native, name) == getattr(ref, name), name
    held: set[int] = set()
    for seq in live:
        assert ints(native.block_table(seq)) == ref.block_table(seq), seq
        assert native.num_tokens(seq) == ref.num_tokens(seq)
        assert native.can_append(seq) == ref.can_append(seq)
        assert native.append_needs_block(seq) == ref.append_needs_block(seq)
        held.update(ref.block_table(seq))
    assert len(held) + ref.num_free_blocks == num_blocks, "a block leaked or was double-freed"
    for n in (0, 1, 5, 17):
        assert native.can_allocate(n) == ref.can_allocate(n)


def run_workload(seed: int, num_blocks: int, block_size: int, steps: int = 250) -> Counter[str]:
    rng = random.Random(seed)
    native = KVBlockManager(num_blocks, block_size)
    ref = ReferenceKVBlocks(num_blocks, block_size)
    store = KVStore(block_size)
    # Few distinct tokens and a few shared prompt stems, so that prefixes repeat often.
    stems = [[rng.randrange(3) for _ in range(rng.randrange(1, 4 * block_size))] for _ in range(4)]
    live: list[int] = []
    events: Counter[str] = Counter()
    next_id = 0

    def both(method: str, *args: Any) -> Any:
        got = outcome(lambda: getattr(native, method)(*args))
        want = outcome(lambda: getattr(ref, method)(*args))
        assert got == want
        return got[1] if got[0] == "ok" else None

    for _ in range(steps):
        op = rng.choices(
            ["allocate", "append", "speculate", "fork", "free", "bad"], [3, 8, 3, 1, 3, 1]
        )[0]
        cached_before = native.num_cached_blocks
        if op == "allocate" or not live:
            stem = rng.choice(stems)
            prompt = stem[: rng.randrange(len(stem) + 1)] + [rng.randrange(3)] * rng.randrange(3)
            hit = both("allocate", next_id, prompt)
            if hit is None:
                events["out of blocks"] += 1
            else:
                events["hit"] += hit > 0
                store.tokens[next_id] = prompt
                store.write(native, next_id, hit)
                live.append(next_id)
            next_id += 1
        elif op == "append":
            seq, token = rng.choice(live), rng.randrange(3)
            appended, copy = both("append_slot", seq, token)
            events["out of blocks"] += not appended
            if copy is not None:
                events["copy"] += 1
                store.copy(*copy)
            if appended:
                store.tokens[seq].append(token)
                store.write(native, seq, len(store.tokens[seq]) - 1)
        elif op == "speculate":
            # Draft tokens get slots and KV like any other, then only a prefix of them is kept.
            seq = rng.choice(live)
            settled = len(store.tokens[seq])
            for _ in range(rng.randint(1, 2 * block_size)):
                token = rng.randrange(3)
                appended, copy = both("append_slot", seq, token, True)
                if not appended:
                    break
                if copy is not None:
                    store.copy(*copy)
                store.tokens[seq].append(token)
                store.write(native, seq, len(store.tokens[seq]) - 1)
            keep = rng.randint(settled, len(store.tokens[seq]))
            events["dropped drafts"] += keep < len(store.tokens[seq])
            both("settle", seq, keep)
            del store.tokens[seq][keep:]
        elif op == "fork":
            parent = rng.choice(live)
            both("fork", parent, next_id)
            store.tokens[next_id] = list(store.tokens[parent])
            live.append(next_id)
            next_id += 1
        elif op == "free":
            seq = live.pop(rng.randrange(len(live)))
            both("free", seq)
        else:
            bad: list[tuple[Any, ...]] = [
                ("allocate", live[0], [1]),
                ("allocate", next_id, [0, -1]),
                ("append_slot", next_id, 1),
                ("fork", live[0], live[-1]),
                ("free", next_id),
                ("slot_mapping", live[0], [ref.num_tokens(live[0])]),
                ("can_allocate", -1),
                ("settle", live[0], ref.num_tokens(live[0]) + 1),
                ("settle", next_id, 0),
            ]
            assert both(*rng.choice(bad)) is None
        events["eviction"] += native.num_cached_blocks < cached_before
        compare(native, ref, live, num_blocks)
        for seq in live:
            store.check(native, seq)
    return events


CONFIGS = [(6, 1), (8, 2), (12, 4), (20, 3), (64, 16)]


@pytest.mark.parametrize("seed", range(30))
def test_random_workloads_match_the_reference(seed: int) -> None:
    num_blocks, block_size = CONFIGS[seed % len(CONFIGS)]
    run_workload(seed, num_blocks, block_size)


def test_random_workloads_exercise_every_policy() -> None:
    events: Counter[str] = Counter()
    for seed in range(10):
        events += run_workload(seed, *CONFIGS[seed % len(CONFIGS)])
    for kind in ("hit", "copy", "out of blocks", "eviction", "dropped drafts"):
        assert events[kind] > 0, kind


@pytest.fixture(params=MAKERS, ids=["native", "reference"])
def make(request: pytest.FixtureRequest) -> Callable[[int, int], Manager]:
    maker: Callable[[int, int], Manager] = request.param
    return maker


def test_fork_then_copy_on_write(make: Callable[[int, int], Manager]) -> None:
    m = make(8, 4)
    assert m.allocate(1, list(range(6))) == 0
    m.fork(1, 2)
    assert m.append_slot(2, 50) == (True, (1, 2))
    assert ints(m.block_table(2)) == [0, 2]
    assert m.append_slot(1, 60) == (True, None), "block 1 is no longer shared"
    assert ints(m.block_table(1)) == [0, 1]
    assert m.num_free_blocks == 5


def test_prefix_hits_stop_at_the_first_different_block(make: Callable[[int, int], Manager]) -> None:
    m = make(16, 4)
    assert m.allocate(1, list(range(12))) == 0
    m.free(1)
    assert (m.num_free_blocks, m.num_cached_blocks) == (16, 3)
    assert m.allocate(2, list(range(10))) == 8
    assert ints(m.block_table(2)) == [0, 1, 3]
    assert m.allocate(3, [0, 1, 2, 3, 9, 9, 9, 9, 8, 9, 10, 11]) == 4
    assert ints(m.block_table(3)) == [0, 4, 5]
    assert (m.prefix_hits, m.prefix_misses) == (3, 5)


def test_eviction_takes_uncached_then_least_recently_freed(
    make: Callable[[int, int], Manager],
) -> None:
    m = make(4, 2)
    m.allocate(1, [0, 1])
    m.allocate(2, [10, 11, 12, 13])
    m.free(2)
    m.free(1)
    assert m.allocate(3, [50]) == 0
    assert ints(m.block_table(3)) == [3]
    assert m.allocate(4, [60, 61]) == 0
    assert ints(m.block_table(4)) == [2], "the tail of sequence 2 went first"
    assert m.allocate(5, [0, 1]) == 2


def test_exhaustion_is_a_return_value(make: Callable[[int, int], Manager]) -> None:
    m = make(2, 2)
    assert m.allocate(1, [0, 1, 2]) == 0
    assert not m.can_allocate(1)
    assert m.allocate(2, [5]) is None
    assert m.append_slot(1, 3) == (True, None)
    assert not m.can_append(1)
    assert m.append_slot(1, 4) == (False, None)
    assert m.num_tokens(1) == 4


def test_bad_input_raises(make: Callable[[int, int], Manager]) -> None:
    with pytest.raises(ValueError):
        make(0, 4)
    with pytest.raises(ValueError):
        make(4, -1)
    m = make(4, 2)
    m.allocate(1, [1])
    with pytest.raises(ValueError):
        m.allocate(1, [1])
    with pytest.raises(ValueError):
        m.append_slot(1, -3)
    with pytest.raises(IndexError):
        m.free(2)
    with pytest.raises(IndexError):
        m.slot_mapping(1, [1])


def test_native_slot_mapping_takes_lists_and_arrays() -> None:
    m = KVBlockManager(8, 4)
    m.allocate(1, np.arange(6, dtype=np.int32).tolist())
    m.fork(1, 2)
    m.append_slot(2, 7)
    want = [0, 3, 8, 9, 10]
    for positions in ([0, 3, 4, 5, 6], np.array([0, 3, 4, 5, 6]), np.array([0, 3, 4, 5, 6], "i4")):
        slots = m.slot_mapping(2, positions)
        assert slots.dtype == np.int64
        assert slots.tolist() == want
    table = m.block_table(2)
    assert table.dtype == np.int32
    assert table.tolist() == [0, 2]
    assert 2 in m and 3 not in m


def test_a_settled_token_cannot_follow_unsettled_drafts(
    make: Callable[[int, int], Manager],
) -> None:
    m = make(8, 2)
    m.allocate(1, [5, 6, 7])
    assert m.append_slot(1, 8, True) == (True, None)
    assert m.append_slot(1, 9, True) == (True, None)
    with pytest.raises(RuntimeError, match="settle"):
        m.append_slot(1, 10)
    with pytest.raises(ValueError, match="keeps 3 to 5 tokens"):
        m.settle(1, 2)
    m.settle(1, 4)  # the first draft is kept, the second dropped with its block
    assert m.num_tokens(1) == 4 and len(list(m.block_table(1))) == 2
    assert m.append_slot(1, 10) == (True, None)


def test_only_settled_drafts_fill_the_prefix_cache(make: Callable[[int, int], Manager]) -> None:
    m = make(8, 2)
    m.allocate(1, [5])
    m.append_slot(1, 6, True)  # fills block 0 with a draft
    m.settle(1, 1)
    assert m.num_cached_blocks == 0
    m.append_slot(1, 7, True)
    m.settle(1, 2)
    assert m.num_cached_blocks == 1
    assert m.allocate(2, [5, 7, 1]) == 2  # the kept draft's block is found


def test_a_confirmed_token_replaces_the_placeholder_in_the_prefix_cache(
    make: Callable[[int, int], Manager],
) -> None:
    m = make(8, 2)
    m.allocate(1, [5])
    with pytest.raises(RuntimeError, match="no tentative"):
        m.confirm(1, 6)
    m.append_slot(1, 0, True)  # a slot for a token not sampled yet
    assert m.num_cached_blocks == 0
    with pytest.raises(ValueError):
        m.confirm(1, -1)
    m.confirm(1, 6)
    assert m.num_cached_blocks == 1 and m.num_tokens(1) == 2
    assert m.append_slot(1, 7) == (True, None)  # settled, so plain tokens follow
    assert m.allocate(2, [5, 6, 9]) == 2 and m.allocate(3, [5, 0, 9]) == 0
