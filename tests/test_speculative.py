"""Speculative decoding: drafts verified in one forward pass never change greedy output, nor the
distribution of sampled output.

Proposers that are always right, always wrong and prompt lookup must all give the greedy tokens
of the engine without speculation; only the number of steps may change.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
pytest.importorskip("safetensors")

from stoker import _native  # noqa: E402
from stoker.generate import (  # noqa: E402
    GenerateEngine,
    NgramProposer,
    SamplingOptions,
    TokenHistory,
)
from stoker.generate._sampling import sample_verifying  # noqa: E402
from stoker.generate._speculative import accept  # noqa: E402

GREEDY = SamplingOptions(max_tokens=24, temperature=0.0, ignore_eos=True)


def _prompts(n: int, seed: int) -> list[list[int]]:
    """Prompts that repeat a stretch of themselves, so that prompt lookup finds matches."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        head = torch.randint(3, 300, (int(torch.randint(4, 12, (1,), generator=g)),), generator=g)
        out.append([*head.tolist(), *head.tolist()[:-2], *head.tolist()])
    return out


class Oracle:
    """Proposes what the target model will say (known from a run without speculation), or,
    ``wrong``, a different token at every position."""

    def __init__(self, full: list[list[int]], num_tokens: int = 4, wrong: bool = False) -> None:
        self.full, self.num_tokens, self.wrong = full, num_tokens, wrong

    def propose(self, histories: Sequence[TokenHistory]) -> list[list[int]]:
        return [self._one(h.tokens()) for h in histories]

    def _one(self, seen: list[int]) -> list[int]:
        for tokens in self.full:
            if tokens[: len(seen)] == seen:
                nxt = tokens[len(seen) : len(seen) + self.num_tokens]
                return [(t + 1) % 300 for t in nxt] if self.wrong else nxt
        return []


def test_history_holds_int32_tokens() -> None:
    h = TokenHistory([256, 1, 7])
    h.extend([1, (1 << 31) - 1])
    assert h.tokens() == [256, 1, 7, 1, (1 << 31) - 1] and len(h) == 5
    assert h.tokens(1, 3) == [1, 7] and h.buffer.itemsize == 4


def test_ngram_proposals() -> None:
    p = NgramProposer(num_tokens=3, max_ngram=2)

    def one(tokens: list[int]) -> list[int]:
        return p.propose([TokenHistory(tokens)])[0]

    assert one([5, 6, 7, 8, 9, 5, 6]) == [7, 8, 9]
    assert one([1, 2, 3, 1, 9, 2, 3]) == [1, 9, 2]  # the 2-gram wins
    assert one([4, 1, 2, 3, 4]) == [1, 2, 3]  # then a 1-gram
    assert one([3, 5, 3, 6, 3]) == [6, 3]  # the latest occurrence, cut at the end
    assert one([1, 2, 3]) == []
    assert one([7]) == [] and one([]) == []
    # 256 holds the bytes of 1 at an odd offset: only whole tokens match.
    assert one([256, 0, 9, 1]) == []
    assert p.propose([]) == []
    with pytest.raises(ValueError, match="num_tokens"):
        NgramProposer(num_tokens=0)
    with pytest.raises(ValueError, match="min_ngram"):
        NgramProposer(max_ngram=1, min_ngram=2)
    with pytest.raises(ValueError, match="whole number of int32 tokens"):
        _native.ngram_propose([b"abc"], 3, 1, 4)


def test_accept_takes_the_agreeing_drafts_and_one_more() -> None:
    assert accept([4, 5, 6], [4, 5, 6, 7]) == [4, 5, 6, 7]
    assert accept([4, 5, 6], [4, 9, 6, 7]) == [4, 9]
    assert accept([4], [3, 2]) == [3]
    assert accept([], [8]) == [8]


def test_greedy_output_is_unchanged_by_any_drafts(llama: Path, engine_of: Any) -> None:
    prompts = _prompts(6, seed=3)
    plain = engine_of(llama, max_num_seqs=4)
    expected = plain.generate(prompts, GREEDY)
    plain_steps = plain.stats().steps
    full = [p + e for p, e in zip(prompts, expected, strict=True)]

    right = engine_of(llama, max_num_seqs=4, speculative=Oracle(full))
    assert right.generate(prompts, GREEDY) == expected
    stats = right.stats()
    assert stats.draft_tokens > 0 and stats.accepted_tokens == stats.draft_tokens
    assert stats.acceptance_rate == 1.0
    assert stats.steps < plain_steps / 2
    assert stats.generated_tokens == sum(len(e) for e in expected)

    wrong = engine_of(llama, max_num_seqs=4, speculative=Oracle(full, wrong=True))
    assert wrong.generate(prompts, GREEDY) == expected
    assert wrong.stats().draft_tokens > 0 and wrong.stats().accepted_tokens == 0

    lookup = engine_of(llama, max_num_seqs=4, speculative=NgramProposer(num_tokens=4))
    assert lookup.generate(prompts, GREEDY) == expected
    assert lookup.stats().draft_tokens > 0


def test_drafts_survive_chunking_preemption_and_stops(llama: Path, engine_of: Any) -> None:
    prompts = _prompts(8, seed=5)
    small = {"max_num_seqs": 6, "block_size": 4, "num_blocks": 20, "max_num_batched_tokens": 24}
    plain = engine_of(llama, **small)
    expected = plain.generate(prompts, GREEDY)
    full = [p + e for p, e in zip(prompts, expected, strict=True)]
    spec = engine_of(llama, speculative=Oracle(full, num_tokens=5), **small)
    assert spec.generate(prompts, GREEDY) == expected
    assert spec.stats().preemptions > 0 and spec.stats().accepted_tokens > 0
    assert spec.stats().kv_blocks_free == 20

    # A stop token met inside a run of accepted drafts ends the output right there.
    stop = expected[0][len(expected[0]) // 2]
    options = SamplingOptions(
        max_tokens=24, temperature=0.0, ignore_eos=True, stop_token_ids=(stop,)
    )
    want = plain.generate(prompts, options)
    assert spec.generate(prompts, options) == want
    assert want[0][-1] == stop and len(want[0]) < len(expected[0])


def test_a_draft_is_kept_with_its_probability_and_replaced_from_the_rest() -> None:
    torch.manual_seed(0)
    n = 40_000
    p = torch.tensor([0.5, 0.3, 0.2, 0.0])
    logits = p.log().expand(n, 4).contiguous()
    rows = [SamplingOptions(temperature=1.0)] * n
    for draft in (1, 3, -1):
        got = sample_verifying(logits, rows, list(range(n)), [draft] * n)
        seen = torch.bincount(got, minlength=4).float() / n
        # Keeping the draft with p(draft) and otherwise drawing from the rest is exact.
        assert (seen - p).abs().max().item() < 0.01, (draft, seen)
    greedy = [SamplingOptions(temperature=0.0)] * 2
    assert sample_verifying(logits[:2], greedy, [0, 1], [1, -1]).tolist() == [0, 0]


def test_sampled_output_keeps_its_distribution(llama: Path, engine_of: Any) -> None:
    prompt = _prompts(1, seed=13)[0]
    n = 1024
    options = [
        SamplingOptions(max_tokens=3, temperature=1.0, top_k=3, seed=s, ignore_eos=True)
        for s in range(n)
    ]
    plain = engine_of(llama, max_num_seqs=256)
    expected = plain.generate([prompt] * n, options)
    greedy = plain.generate([prompt], SamplingOptions(max_tokens=3, temperature=0.0))[0]
    # Drafts that are often right: the greedy continuation.
    spec = engine_of(llama, max_num_seqs=256, speculative=Oracle([prompt + greedy]))
    got = spec.generate([prompt] * n, options)
    again = engine_of(llama, max_num_seqs=256, speculative=Oracle([prompt + greedy]))
    assert again.generate([prompt] * n, options) == got  # seeded: reproducible
    stats = spec.stats()
    assert 0 < stats.accepted_tokens < stats.draft_tokens
    assert got != expected  # other draws, not other distributions:
    for k in (1, 2):
        want = torch.tensor([e[k] for e in expected]).bincount(minlength=512).float() / n
        have = torch.tensor([g[k] for g in got]).bincount(minlength=512).float() / n
        assert 0.5 * (want - have).abs().sum().item() < 0.08, k


def test_served_models_take_speculative_tokens(llama: Path) -> None:
    pytest.importorskip("fastapi", reason="needs the server extra")
    from stoker.server import ModelConfig, ServerConfig
    from stoker.server._app import _generators

    with pytest.raises(ValueError, match="speculative_tokens"):
        ModelConfig(name="m", model=str(llama), task="text-generation", speculative_tokens=-1)
    model = ModelConfig(name="m", model=str(llama), task="text-generation", speculative_tokens=3)
    waits = ModelConfig(name="w", model=str(llama), task="text-generation", schedule_ahead=False)
    engines = _generators(ServerConfig(models=(model, waits)))
    try:
        assert not engines["w"].schedule_ahead  # type: ignore[attr-defined]
        engine = engines["m"]
        assert isinstance(engine, GenerateEngine)
        assert not engine.schedule_ahead  # drafts need the last tokens first
        prompt = _prompts(1, seed=9)
        engine.generate(prompt, GREEDY)
        assert engine.stats().draft_tokens > 0
    finally:
        for e in engines.values():
            e.close()


def _lookup(tokens: list[int], max_ngram: int, min_ngram: int, k: int) -> list[int]:
    """Prompt lookup as its definition reads: for n from max_ngram down, the latest earlier
    occurrence of the last n tokens (ending before the last token), and the k tokens after it."""
    for n in range(min(max_ngram, len(tokens) - 1), min_ngram - 1, -1):
        tail = tokens[len(tokens) - n :]
        for start in range(len(tokens) - n - 1, -1, -1):
            if tokens[start : start + n] == tail:
                return tokens[start + n : start + n + k]
    return []


def test_native_lookup_matches_its_definition() -> None:
    rng = torch.Generator().manual_seed(4)
    for _ in range(2000):
        length = int(torch.randint(0, 30, (1,), generator=rng))
        alphabet = int(torch.randint(1, 5, (1,), generator=rng))
        tokens = torch.randint(0, alphabet, (length,), generator=rng).tolist()
        lo = int(torch.randint(1, 4, (1,), generator=rng))
        hi = lo + int(torch.randint(0, 3, (1,), generator=rng))
        k = int(torch.randint(1, 6, (1,), generator=rng))
        got = NgramProposer(k, hi, lo).propose([TokenHistory(tokens)])[0]
        assert got == _lookup(tokens, hi, lo, k), (tokens, hi, lo, k)


def _padded_logits(runner: Any, step: Any, rows: Any, bucket: int) -> Any:
    """The logits of a verifying step run padded, as its CUDA graph runs it, but eagerly."""
    from stoker.generate._model import StepBatch

    ids, pos, slots, ctx, tables = (torch.from_numpy(a) for a in runner.verify_arrays(step, bucket))
    w = runner.verify_width
    cu = (torch.arange(bucket + 1) * w).int()
    batch = StepBatch(ids, pos, slots, cu, ctx.int(), tables.int(), torch.arange(bucket * w), w)
    hidden = runner.model(batch, runner.cache, False)
    return runner.model.head(hidden[torch.from_numpy(runner.verify_index(step, rows))])


def test_padded_verifying_rows_see_what_unpadded_rows_see(llama: Path, engine_of: Any) -> None:
    prompts = _prompts(5, seed=21)
    plain = engine_of(llama, max_num_seqs=8)
    expected = plain.generate(prompts, GREEDY)
    full = [p + e for p, e in zip(prompts, expected, strict=True)]
    # Drafts right at first, then wrong: rows verify different numbers of drafts.
    oracle = Oracle(full, num_tokens=3)
    spec = engine_of(llama, max_num_seqs=8, speculative=oracle)
    runner = spec.runner
    assert runner.verify_width == 4 and runner.graphs is None  # no graphs on the CPU
    real = runner.logits
    widths: set[int] = set()  # row widths of the steps compared

    def checked(
        step: Any, rows: Any, verify: Any = None, previous: Any = None, poll: Any = None
    ) -> Any:
        assert previous is None and poll is None  # never scheduled ahead with drafts
        if verify is not None and runner.verify_fits(step, rows):
            # Padding rows too: the bucket is larger than the step.
            padded = _padded_logits(runner, step, rows, len(step.query_lens) + 3)
            eager = real(step, rows, verify)
            assert padded.shape == eager.shape
            torch.testing.assert_close(padded, eager, rtol=1e-4, atol=1e-4)
            widths.update(step.query_lens.tolist())
            return eager
        return real(step, rows, verify, previous)

    runner.logits = checked
    assert spec.generate(prompts, GREEDY) == expected
    assert len(widths) > 1  # steps were compared, with rows of several widths


def test_verify_fits_only_steps_of_decoding_rows(llama: Path, engine_of: Any) -> None:
    spec = engine_of(llama, max_num_seqs=4, speculative=NgramProposer(num_tokens=2))
    runner = spec.runner
    seen = {"prefill": 0, "verify": 0}
    real = runner.logits

    def watch(
        step: Any, rows: Any, verify: Any = None, previous: Any = None, poll: Any = None
    ) -> Any:
        fits = runner.verify_fits(step, rows)
        if any(q > d + 1 for q, d in zip(step.query_lens, step.draft_lens, strict=True)):
            assert not fits  # a prefill chunk is in the step
            seen["prefill"] += 1
        elif verify is not None:
            assert fits == (int(step.context_lens.min()) >= 3)
            seen["verify"] += int(fits)
        return real(step, rows, verify, previous, poll)

    runner.logits = watch
    spec.generate(_prompts(4, seed=22), GREEDY)
    assert seen["prefill"] > 0 and seen["verify"] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_verifying_steps_replay_graphs_and_keep_greedy_output(llama: Path, engine_of: Any) -> None:
    prompts = _prompts(6, seed=23)
    plain = engine_of(llama, device="cuda", dtype=torch.float32, max_num_seqs=8)
    expected = plain.generate(prompts, GREEDY)
    full = [p + e for p, e in zip(prompts, expected, strict=True)]
    for wrong in (False, True):
        oracle = Oracle(full, num_tokens=4, wrong=wrong)
        spec = engine_of(
            llama, device="cuda", dtype=torch.float32, max_num_seqs=8, speculative=oracle
        )
        assert spec.runner.graphs is not None and spec.runner.graphs.verify
        assert spec.generate(prompts, GREEDY) == expected
        assert spec.runner.verify_replays > 0
        assert spec.stats().draft_tokens > 0
