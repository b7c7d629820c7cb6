"""The native continuous-batching scheduler against the pure-Python reference
(tests/_scheduler_reference.py).

Random workloads drive both with the same sequences, sampled tokens and aborts, and compare every
step's batch and every finished report; small caches force preemption, shared prompt prefixes
give prefix hits, and a small vocabulary makes eos and stop tokens common. Independently of the
reference, each finished sequence must report exactly the tokens the test sampled for it, and each
sampling row must feed back the token sampled for it last. Hand-checked scenarios pin the policies.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import pytest
from _scheduler_reference import ReferenceScheduler

from stoker._native import Scheduler

MAKERS: list[Callable[[int, int, int, int], Any]] = [Scheduler, ReferenceScheduler]


def plain(step: Any) -> dict[str, list[Any]]:
    """A step's fields as lists, whichever implementation made it."""
    fields = [
        "input_ids",
        "positions",
        "seq_ids",
        "query_lens",
        "context_lens",
        "draft_lens",
        "slot_mapping",
    ]
    out: dict[str, list[Any]] = {
        f: [int(v) for v in getattr(step, f)] for f in [*fields, "sample", "preempted", "pending"]
    }
    out["block_tables"] = [[int(b) for b in row] for row in step.block_tables]
    out["copies"] = [tuple(int(b) for b in c) for c in step.copies]
    return out


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", call()
    except (IndexError, ValueError, RuntimeError) as e:
        return "error", type(e)


def check_native_dtypes(step: Any) -> None:
    assert step.input_ids.dtype == np.int32 and step.positions.dtype == np.int64
    assert step.seq_ids.dtype == np.int64 and step.slot_mapping.dtype == np.int64
    assert step.query_lens.dtype == np.int32 and step.context_lens.dtype == np.int32
    assert step.block_tables.dtype == np.int32 and step.block_tables.ndim == 2
    assert len(step.block_tables) == len(step.seq_ids)
    assert int(step.query_lens.sum()) == len(step.input_ids) == len(step.slot_mapping)


def run_workload(seed: int, stats: Counter[str]) -> None:
    rng = random.Random(seed)
    block_size = rng.randint(1, 4)
    num_blocks = rng.randint(3, 12)
    max_seqs = rng.randint(1, 5)
    budget = rng.randint(max_seqs, 16)
    native, ref = (
        Scheduler(num_blocks, block_size, budget, max_seqs),
        ReferenceScheduler(num_blocks, block_size, budget, max_seqs),
    )
    prefixes = [[rng.randrange(8) for _ in range(rng.randint(1, 8))] for _ in range(3)]
    sampled_for: dict[int, list[int]] = {}
    owed: list[dict[str, list[Any]]] = []  # scheduled steps whose tokens are still to come
    ahead_rate = rng.choice([0.0, 0.5, 1.0])
    next_id = 0

    def update() -> None:
        got = owed.pop(0)
        ends = np.cumsum(got["query_lens"])
        rows = dict(zip(got["seq_ids"], zip(ends, got["draft_lens"], strict=True), strict=True))
        tokens: list[int] = []
        counts: list[int] = []
        for seq in got["sample"]:
            end, drafts = rows[seq]
            accepted = rng.randint(0, drafts)
            stats["drafts"] += drafts
            stats["accepted"] += accepted
            row = [*got["input_ids"][end - drafts : end - drafts + accepted], rng.randrange(12)]
            tokens += row
            counts.append(len(row))
            if seq in sampled_for:  # else aborted, or stopped at an earlier step
                sampled_for[seq] += row
            else:
                stats["ignored rows"] += 1
        per_row = counts if any(c > 1 for c in counts) or rng.random() < 0.5 else None
        if per_row and rng.random() < 0.05:  # a bad update changes nothing
            bad = [*per_row[:-1], per_row[-1] + 1]
            assert outcome(partial(native.update, tokens, bad))[0] == "error"
            assert outcome(partial(ref.update, tokens, bad))[0] == "error"
        finished = [(int(s), [int(t) for t in g], r) for s, g, r in native.update(tokens, per_row)]
        assert finished == ref.update(tokens, per_row)
        for seq, generated, reason in finished:
            # Tokens past a stop condition are dropped.
            assert generated == sampled_for.pop(seq)[: len(generated)]
            stats[reason] += 1

    for _ in range(120):
        if rng.random() < 0.3:
            prompt = rng.choice(prefixes) + [rng.randrange(8) for _ in range(rng.randint(0, 10))]
            args = (next_id, prompt, rng.randint(1, 8), rng.choice([None, 0]), [rng.randrange(12)])
            added = outcome(partial(native.add, *args))
            assert added == outcome(partial(ref.add, *args))
            if added[0] == "ok":
                sampled_for[next_id] = []
            else:
                stats["rejected"] += 1
            next_id += 1
        if sampled_for and rng.random() < 0.03:
            victim = rng.choice(sorted(sampled_for))
            native.abort(victim)
            ref.abort(victim)
            del sampled_for[victim]
        for seq in sorted(sampled_for):
            if rng.random() < 0.4:  # drafts, sometimes for a sequence that is not decoding
                draft = [rng.randrange(12) for _ in range(rng.randint(0, 4))]
                proposed = outcome(partial(native.propose, seq, draft))
                assert proposed == outcome(partial(ref.propose, seq, draft))
                stats["proposals refused"] += proposed[0] == "error"
        scheduled, expected = outcome(native.schedule), outcome(ref.schedule)
        assert scheduled[0] == expected[0]
        if scheduled[0] == "error":  # ahead of a step with drafts
            stats["ahead refused"] += 1
            update()
            scheduled, expected = ("ok", native.schedule()), ("ok", ref.schedule())
        step = scheduled[1]
        check_native_dtypes(step)
        got = plain(step)
        assert got == plain(expected[1])
        stats["preempted"] += len(got["preempted"])
        stats["chunks"] += sum(s not in got["sample"] for s in got["seq_ids"])
        ends = np.cumsum(got["query_lens"])
        for seq, end, drafts, pending in zip(
            got["seq_ids"], ends, got["draft_lens"], got["pending"], strict=True
        ):
            if pending >= 0:  # its input is the owed step's token, still to come
                assert owed[-1]["sample"][pending] == seq and got["input_ids"][end - 1] == 0
                stats["ahead"] += 1
            elif seq in got["sample"] and sampled_for[seq]:
                # A decode or a recompute's input is the last sampled token.
                assert got["input_ids"][end - drafts - 1] == sampled_for[seq][-1]
        if got["sample"]:
            owed.append(got)
        while len(owed) > (1 if rng.random() < ahead_rate else 0):
            update()
        assert (native.num_waiting, native.num_running) == (ref.num_waiting, ref.num_running)
        assert native.num_free_blocks == ref.blocks.num_free_blocks
        assert native.prefix_hits == ref.blocks.prefix_hits
    while owed:
        update()


def test_random_workloads_match_the_reference() -> None:
    stats: Counter[str] = Counter()
    for seed in range(150):
        run_workload(seed, stats)
    # The workloads must reach every policy, or matching the reference proves little.
    for what in ["preempted", "chunks", "eos", "stop", "length", "rejected", "drafts", "accepted"]:
        assert stats[what] > 0, what
    for what in ["ahead", "ahead refused", "ignored rows"]:
        assert stats[what] > 0, what
    assert stats["proposals refused"] > 0


@pytest.mark.parametrize("make", MAKERS)
def test_bad_input_is_rejected(make: Callable[..., Any]) -> None:
    with pytest.raises(ValueError):
        make(8, 4, 2, 4)
    s = make(2, 4, 8, 2)
    with pytest.raises(ValueError):
        s.add(1, [], 1)
    with pytest.raises(ValueError):
        s.add(1, list(range(6)), 4)  # 9 tokens of KV in a cache of 8
    s.add(1, list(range(6)), 3)
    with pytest.raises(ValueError):
        s.add(1, [1], 1)
    with pytest.raises(IndexError):
        s.abort(7)
    assert [int(x) for x in s.schedule().sample] == [1]
    assert [int(x) for x in s.schedule().pending] == [0]  # one step ahead, no further
    with pytest.raises(RuntimeError):
        s.schedule()
    with pytest.raises(ValueError):
        s.update([])


@pytest.mark.parametrize("make", MAKERS)
def test_chunked_prefill_then_decode_first(make: Callable[..., Any]) -> None:
    s = make(16, 4, 8, 4)
    s.add(1, list(range(100, 110)), 5)
    a = plain(s.schedule())
    assert a["input_ids"] == list(range(100, 108)) and a["sample"] == []
    assert a["block_tables"] == [[0, 1]] and a["slot_mapping"] == list(range(8))
    s.add(2, [200, 201, 202], 5)
    b = plain(s.schedule())
    assert b["seq_ids"] == [1, 2] and b["query_lens"] == [2, 3] and b["context_lens"] == [10, 3]
    assert b["positions"] == [8, 9, 0, 1, 2]
    assert b["block_tables"] == [[0, 1, 2], [3, -1, -1]]
    assert b["sample"] == [1, 2]
    assert s.update([7, 8]) == []
    c = plain(s.schedule())
    assert c["input_ids"] == [7, 8] and c["positions"] == [10, 3] and c["context_lens"] == [11, 4]


@pytest.mark.parametrize("make", MAKERS)
def test_preemption_recomputes_with_generated_tokens(make: Callable[..., Any]) -> None:
    s = make(4, 2, 8, 2)
    s.add(1, [10, 11, 12, 13], 3)
    s.add(2, [20, 21, 22, 23], 3)
    s.schedule()
    s.update([50, 60])
    b = plain(s.schedule())
    assert b["preempted"] == [2] and b["seq_ids"] == [1] and s.num_waiting == 1
    s.update([51])
    assert plain(s.schedule())["seq_ids"] == [1]
    assert [(int(q), [int(t) for t in g], r) for q, g, r in s.update([52])] == [
        (1, [50, 51, 52], "length")
    ]
    d = plain(s.schedule())  # the first prompt block is a prefix hit
    assert d["input_ids"] == [22, 23, 60] and d["positions"] == [2, 3, 4]


@pytest.mark.parametrize("make", MAKERS)
def test_stop_conditions_in_order(make: Callable[..., Any]) -> None:
    s = make(16, 4, 16, 4)
    for seq, max_new in [(1, 3), (2, 3), (3, 1)]:
        s.add(seq, [1], max_new, 0, [7])
    s.schedule()
    done = [(int(q), [int(t) for t in g], r) for q, g, r in s.update([5, 7, 0])]
    assert done == [(2, [7], "stop"), (3, [0], "eos")]


@pytest.mark.parametrize("make", MAKERS)
def test_drafts_are_verified_in_one_row(make: Callable[..., Any]) -> None:
    s = make(16, 4, 6, 2)
    s.add(1, [1, 2, 3], 10)
    s.add(2, [5, 6], 2)
    assert list(s.schedule().sample) == [1, 2]
    s.update([7, 8])
    with pytest.raises(IndexError):
        s.propose(9, [1])
    s.propose(1, [8, 9, 10, 11, 12, 13, 14])
    s.propose(2, [4, 4])  # one more token may be emitted, so no draft fits
    step = plain(s.schedule())
    # Budget 6 less one row per decoding sequence leaves 4 drafts for sequence 1.
    assert step["draft_lens"] == [4, 0] and step["query_lens"] == [5, 1]
    assert step["input_ids"] == [7, 8, 9, 10, 11, 8]
    assert step["positions"] == [3, 4, 5, 6, 7, 2]
    with pytest.raises(ValueError, match="differ from its draft"):
        s.update([8, 10, 4, 1], [3, 1])
    with pytest.raises(ValueError, match="takes 1 to 5 tokens, not 6"):
        s.update([8, 9, 10, 11, 3, 3, 1], [6, 1])
    # Two drafts accepted, then the model's own token; sequence 2 reaches its length.
    assert s.update([8, 9, 4, 1], [3, 1]) == [(2, [8, 1], "length")]
    step = plain(s.schedule())
    assert step["input_ids"] == [4] and step["positions"] == [6] and step["context_lens"] == [7]
    assert step["draft_lens"] == [0]
    s.update([2])
    s.propose(1, [3, 3, 3])
    step = plain(s.schedule())
    assert step["draft_lens"] == [3]
    # An EOS among the accepted drafts ends the sequence there.
    s2 = make(16, 4, 8, 1)
    s2.add(1, [1], 10, 0)
    s2.schedule()
    s2.update([5])
    s2.propose(1, [6, 0, 7])
    s2.schedule()
    assert s2.update([6, 0, 7, 9], [4]) == [(1, [5, 6, 0], "eos")]
    assert (s2.num_running, s2.num_waiting) == (0, 0)


@pytest.mark.parametrize("make", MAKERS)
def test_drafts_never_take_a_block_a_later_decode_row_may_need(make: Callable[..., Any]) -> None:
    for num_blocks, drafts in ((5, 0), (6, 2)):
        s = make(num_blocks, 2, 16, 2)
        s.add(1, [1, 2, 3], 8)
        s.add(2, [4, 5, 6], 8)
        s.schedule()
        s.update([7, 8])  # 1 2 3 7 and 4 5 6 8: two blocks each
        s.propose(1, [9, 9, 9])
        step = plain(s.schedule())
        # Sequence 1's drafts need a new block; one stays free for sequence 2's row.
        assert step["draft_lens"] == [drafts, 0] and step["preempted"] == []


@pytest.mark.parametrize("make", MAKERS)
def test_scheduling_ahead_of_the_last_steps_tokens(make: Callable[..., Any]) -> None:
    s = make(16, 2, 8, 4)
    s.add(1, [10, 11, 12], 3, 0)
    s.add(2, [20, 21, 22], 5, 0)
    assert plain(s.schedule())["sample"] == [1, 2]
    b = plain(s.schedule())  # both decode the tokens still to come
    assert b["input_ids"] == [0, 0] and b["pending"] == [0, 1] and b["positions"] == [3, 3]
    with pytest.raises(RuntimeError):
        s.propose(1, [4])
    # Sequence 2 stops on eos; its row in b ran for nothing.
    assert [(int(q), [int(t) for t in g], r) for q, g, r in s.update([13, 0])] == [(2, [0], "eos")]
    c = plain(s.schedule())
    assert c["seq_ids"] == [1] and c["pending"] == [0] and c["positions"] == [4]
    assert s.update([14, 99]) == []  # sequence 2's token is ignored
    # Sequence 1 reaches max_new_tokens with the token of c: no row for it.
    assert plain(s.schedule())["seq_ids"] == []
    assert [(int(q), [int(t) for t in g], r) for q, g, r in s.update([15])] == [
        (1, [13, 14, 15], "length")
    ]
    # The confirmed tokens fill the prefix cache: 10 11 | 12 13 are hits.
    s.add(3, [10, 11, 12, 13, 14, 7], 1)
    assert plain(s.schedule())["positions"] == [4, 5]
