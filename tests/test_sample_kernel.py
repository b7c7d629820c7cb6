"""gumbel_argmax: greedy and Gumbel-max sampling of one token per row in one fused kernel.

The oracles: torch.argmax for greedy rows; for sampled rows, an independent Philox4x32-10 in
numpy (checked against Random123's published known answers) feeding float64 Gumbel arithmetic,
which must pick the kernel's tokens exactly, and, for the distribution itself, softmax(logits / T)
by a chi-square test. Without a GPU the kernels run in Triton's interpreter on CPU tensors (the
module builds interpreted copies itself, so TRITON_INTERPRET is left alone); the interpreter pays
per operation (about 10 ms per sampled row), so vocabularies stay small there. The CUDA tests
compare the compiled kernels with the interpreter, the oracle and softmax at larger sizes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pytest
import torch
from torch import Tensor

from stoker.generate import _sample_kernel
from stoker.generate._sample_kernel import HAS_TRITON, gumbel_argmax

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

U64 = npt.NDArray[np.uint64]
WORD = 0xFFFFFFFF
NEG_INF = float("-inf")
# Chi-square critical values at p = 1e-4 by degrees of freedom: a correct sampler fails one
# check with probability 1e-4 (and the seeds are fixed, so the tests are deterministic).
CHI2_CRITICAL = {6: 27.86, 12: 39.13}


def _philox4x32_10(counter: Sequence[U64], key: tuple[int, int]) -> list[U64]:
    """Random123's Philox4x32-10 on uint32 words held in uint64 arrays (products fit)."""
    mask, shift = np.uint64(WORD), np.uint64(32)
    c0, c1, c2, c3 = counter
    k0, k1 = np.uint64(key[0]), np.uint64(key[1])
    for _ in range(10):
        p0 = c0 * np.uint64(0xD2511F53)
        p1 = c2 * np.uint64(0xCD9E8D57)
        c0, c1, c2, c3 = (p1 >> shift) ^ c1 ^ k0, p1 & mask, (p0 >> shift) ^ c3 ^ k1, p0 & mask
        k0 = (k0 + np.uint64(0x9E3779B9)) & mask
        k1 = (k1 + np.uint64(0xBB67AE85)) & mask
    return [c0, c1, c2, c3]


def _words(*values: int) -> list[U64]:
    return [np.full(1, v, dtype=np.uint64) for v in values]


def _reference(logits: Tensor, temperature: float, seed: int, offset: int) -> int:
    """The token the module docstring's noise definition draws, in float64."""
    vocab = logits.shape[0]
    seed, offset = seed % (1 << 64), offset % (1 << 64)
    j = np.arange(vocab, dtype=np.uint64)
    counter = [j >> np.uint64(2), *_words(offset & WORD, offset >> 32, 0)]
    draws = _philox4x32_10(counter, (seed & WORD, seed >> 32))
    bits = np.choose((j & np.uint64(3)).astype(np.intp), draws)
    u = np.maximum(bits.astype(np.float64), 0.5) / 2.0**32
    gumbel = -np.log(-np.log1p(-u))
    return int(np.argmax(logits.double().numpy() / temperature + gumbel))


def _draw(
    logits: Tensor,
    temperatures: Sequence[float],
    seeds: Sequence[int],
    offsets: Sequence[int],
) -> Tensor:
    device = logits.device
    return gumbel_argmax(
        logits,
        torch.tensor(temperatures, dtype=torch.float32, device=device),
        torch.tensor(seeds, dtype=torch.int64, device=device),
        torch.tensor(offsets, dtype=torch.int64, device=device),
    )


def _chi_square(tokens: Tensor, probs: Tensor) -> float:
    """Pearson's statistic of the tokens against probs, over the tokens of nonzero probability."""
    counts = torch.bincount(tokens.cpu(), minlength=probs.numel()).double()
    expected = probs.double() * tokens.numel()
    keep = expected > 0
    assert counts[~keep].sum() == 0, "drew a token of probability 0"
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())


def _tied_logits(n: int, vocab: int, gen: torch.Generator) -> Tensor:
    """Few distinct values (many ties), -inf and -0.0 entries, and rows of special values."""
    logits = torch.randint(-2, 3, (n, vocab), generator=gen).float()
    logits[torch.rand(n, vocab, generator=gen) < 0.2] = NEG_INF
    logits[0] = NEG_INF  # all masked: token 0
    if n > 1:
        logits[1, vocab // 2 :] = 7.0  # the maximum tied over the whole second half
    if n > 2:
        logits[2, -1] = float("inf")
    if n > 3:  # NaN wins, the first one, as in torch.argmax
        logits[3, vocab // 3 :: 5] = float("nan")
    if n > 4:  # -0.0 and 0.0 tie: the first zero wins (a -0.0 where vocab > 1)
        logits[4] = -1.0
        logits[4, 1::4] = -0.0
        logits[4, 3::4] = 0.0
    return logits


def test_philox_oracle_known_answers() -> None:
    # Random123's kat_vectors, "philox4x32 10": counter, key, expected output.
    cases = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((WORD,) * 4, (WORD, WORD), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        (
            (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
            (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
        ),
    ]
    for counter, key, expected in cases:
        assert [int(w[0]) for w in _philox4x32_10(_words(*counter), key)] == list(expected)


@pytest.mark.parametrize("vocab", [1, 7, 300, 1100])
def test_greedy_rows_match_torch_argmax(vocab: int) -> None:
    gen = torch.Generator().manual_seed(vocab)
    logits = _tied_logits(6, vocab, gen)
    # Sampled rows in between: greedy rows must not care what their neighbours do.
    mixed = torch.cat([logits, torch.randn(4, vocab, generator=gen)])[
        [0, 6, 1, 2, 7, 3, 4, 8, 9, 5]
    ]
    temps = [0.0, 1.0, 0.0, 0.0, 0.7, 0.0, 0.0, 2.0, 1.0, 0.0]
    tokens = _draw(mixed, temps, range(10), range(10))
    assert tokens.dtype == torch.int64 and tokens.shape == (10,)
    greedy = [i for i, t in enumerate(temps) if t == 0.0]
    assert tokens[greedy].tolist() == mixed[greedy].argmax(dim=1).tolist()
    assert ((tokens >= 0) & (tokens < vocab)).all()
    # A lone row is split over chunks (two in the interpreter), a batch's rows are not.
    for i in (1, 3):
        alone = _draw(logits[i : i + 1], [0.0], [0], [0])
        assert alone.tolist() == logits[i : i + 1].argmax(dim=1).tolist()


def test_greedy_on_strided_rows_and_negative_temperatures() -> None:
    gen = torch.Generator().manual_seed(1)
    wide = _tied_logits(5, 1300, gen)
    logits = wide[:, 50:1250]  # a row stride of 1300, the last dimension contiguous
    # NaN and negative temperatures are greedy too.
    tokens = _draw(logits, [0.0, -1.0, float("nan"), 0.0, -0.0], [1] * 5, [2] * 5)
    assert tokens.tolist() == logits.argmax(dim=1).tolist()


def test_tokens_match_the_philox_oracle() -> None:
    gen = torch.Generator().manual_seed(2)
    vocab = 1100  # three of the interpreter's 512-wide tiles: chunks and a partial tile
    temps = [0.3, 1.0, 1.0, 7.0, 100.0, 1.0, 2.5, 1.0]
    # Seeds and offsets past 32 bits and negative ones: both words of each count.
    seeds = [0, 1, -1, 2**40 + 3, 12345, -(2**62), 7, 2**63 - 1]
    offsets = [0, 1, 5, 2**33 + 1, 2**62, -3, 1 << 32, 17]
    logits = torch.randn(len(temps), vocab, generator=gen) * 3.0
    logits[5, ::2] = NEG_INF
    # Winners in later tiles: their noise must be counted from the row's start as well.
    logits[6, :1024] = NEG_INF
    logits[7, :512] = NEG_INF
    tokens = _draw(logits, temps, seeds, offsets)
    expected = [
        _reference(row, t, s, o) for row, t, s, o in zip(logits, temps, seeds, offsets, strict=True)
    ]
    assert tokens.tolist() == expected
    # A lone row runs split over two chunks (of two tiles and one).
    for i in (0, 3, 6, 7):
        alone = _draw(logits[i : i + 1], temps[i : i + 1], seeds[i : i + 1], offsets[i : i + 1])
        assert alone.item() == expected[i]


def test_rows_split_into_many_chunks_combine_in_several_passes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 14 tiles of the interpreter's 512 logits, one chunk each for a lone row: the combining
    # kernel reads the 14 winners 4 at a time. Greedy ties across chunks take the first index.
    monkeypatch.setattr(_sample_kernel, "_PROGRAMS_INTERPRETED", 64)
    gen = torch.Generator().manual_seed(4)
    vocab = 13 * 512 + 100
    logits = torch.randn(3, vocab, generator=gen)
    logits[1, 700] = logits[1, 5000] = logits[1, 6700] = 50.0
    logits[2, 6755] = 50.0  # the winner in the last, partial tile
    temps, seeds, offsets = [1.5, 0.0, 0.0], [11, 0, 0], [3, 0, 0]
    for i, want in enumerate(
        [_reference(logits[0], 1.5, 11, 3), 700, 6755],
    ):
        got = _draw(logits[i : i + 1], temps[i : i + 1], seeds[i : i + 1], offsets[i : i + 1])
        assert got.item() == want


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_sampled_frequencies_follow_softmax(temperature: float) -> None:
    logits = torch.tensor([1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -2.0, NEG_INF])
    rows = 300  # one sample per row: the same logits with their own offsets
    tokens = _draw(logits.expand(rows, -1), [temperature] * rows, [99] * rows, range(rows))
    probs = torch.softmax(logits / temperature, dim=0)
    # A kernel that ignored the temperature, or added uniform noise instead of Gumbel noise,
    # scores in the hundreds on at least one of the three temperatures.
    assert _chi_square(tokens, probs) < CHI2_CRITICAL[6]


def test_noise_depends_only_on_seed_offset_and_index() -> None:
    vocab = 600
    flat = torch.zeros(vocab)  # all tokens equal: the noise alone picks them
    pairs = [(3, 0), (3, 1), (4, 0), (-5, 2**40), (3, 0)]
    alone = _draw(flat.expand(5, -1), [1.0] * 5, *zip(*pairs, strict=True))
    assert alone[0] == alone[4]  # the same pair twice in one batch
    # The same pairs shuffled among greedy rows and other pairs, one at a time, and at another
    # temperature (flat logits: the temperature cannot matter).
    batch = [(7, 7), pairs[3], (8, 8), pairs[1], pairs[0], (9, 9), pairs[2]]
    temps = [1.0, 1.0, 0.0, 0.5, 1.0, 0.0, 3.0]
    logits = torch.randn(len(batch), vocab, generator=torch.Generator().manual_seed(3))
    for i in (1, 3, 4, 6):
        logits[i] = flat
    mixed = _draw(logits, temps, *zip(*batch, strict=True))
    assert mixed[[4, 3, 6, 1]].tolist() == alone[:4].tolist()
    single = [_draw(flat[None], [1.0], [s], [o]).item() for s, o in pairs[:2]]
    assert single == alone[:2].tolist()


def test_offsets_and_seeds_give_fresh_draws() -> None:
    vocab, n = 200, 32
    flat = torch.zeros(vocab).expand(n, -1)
    by_offset = _draw(flat, [1.0] * n, [11] * n, range(n))
    by_seed = _draw(flat, [1.0] * n, range(n), [11] * n)
    # Independent uniform draws from 200 tokens: about 29.6 distinct of 32 expected.
    assert len(set(by_offset.tolist())) >= 25
    assert len(set(by_seed.tolist())) >= 25
    # Seeds and offsets are not interchangeable (as in a kernel keyed by their sum).
    assert by_offset.tolist() != by_seed.tolist()


def test_masked_tokens_are_never_drawn() -> None:
    gen = torch.Generator().manual_seed(4)
    vocab, n = 500, 24
    logits = torch.randn(n, vocab, generator=gen)
    keep = torch.rand(n, vocab, generator=gen) < 0.03
    keep[:, 0] = False  # token 0 masked everywhere: an all -inf fallback would show up as 0
    keep[torch.arange(n), torch.randint(1, vocab, (n,), generator=gen)] = True
    keep[n - 1] = False
    keep[n - 1, 321] = True  # a single live token, whatever the temperature
    logits[~keep] = NEG_INF
    temps = [0.5, 1.0, 5.0, 1e4, float("inf"), 1e-20] * (n // 6)
    tokens = _draw(logits, temps, range(n), range(n, 2 * n))
    assert keep[torch.arange(n), tokens].all()
    assert tokens[-1] == 321
    dead = torch.full((4, vocab), NEG_INF)
    assert _draw(dead, [0.0, 1.0, 1e4, float("inf")], range(4), range(4)).tolist() == [0] * 4


def test_nan_logits_give_valid_tokens() -> None:
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(6, 300, generator=gen)
    logits[:, 3::7] = float("nan")
    logits[5] = float("nan")
    temps = [0.0, 1.0, 0.0, 3.0, 0.5, 1.0]
    tokens = _draw(logits, temps, range(6), range(6))
    assert ((tokens >= 0) & (tokens < 300)).all()
    assert tokens[[0, 2]].tolist() == [3, 3]  # the first NaN, as torch.argmax


def test_empty_batch() -> None:
    out = _draw(torch.zeros(0, 10), [], [], [])
    assert out.shape == (0,) and out.dtype == torch.int64


def test_rejects_bad_arguments() -> None:
    logits = torch.zeros(3, 10)
    temps = torch.ones(3)
    seeds = torch.zeros(3, dtype=torch.int64)
    offsets = torch.zeros(3, dtype=torch.int64)
    bad: list[tuple[Tensor, Tensor, Tensor, Tensor, str]] = [
        (logits[0], temps, seeds, offsets, "float32 \\(N, V\\)"),
        (logits.double(), temps, seeds, offsets, "float32 \\(N, V\\)"),
        (torch.zeros(3, 0), temps, seeds, offsets, "vocabulary"),
        (torch.zeros(10, 3).t(), temps, seeds, offsets, "contiguous in their last"),
        (logits, temps.double(), seeds, offsets, "temperatures"),
        (logits, torch.ones(4), seeds, offsets, "temperatures"),
        (logits, temps, seeds.int(), offsets, "seeds"),
        (logits, temps, seeds, offsets[:2], "offsets"),
        (logits, temps, seeds, offsets.float(), "offsets"),
        (logits, temps, seeds.to("meta"), offsets, "seeds is on meta"),
        (logits.to("meta"), temps.to("meta"), seeds.to("meta"), offsets.to("meta"), "CUDA"),
    ]
    for args in bad:
        with pytest.raises(ValueError, match=args[4]):
            gumbel_argmax(*args[:4])


def test_requires_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_sample_kernel, "HAS_TRITON", False)
    with pytest.raises(RuntimeError, match="requires triton"):
        _draw(torch.zeros(1, 4), [0.0], [0], [0])


@needs_cuda
def test_cuda_greedy_matches_torch_and_the_interpreter() -> None:
    gen = torch.Generator().manual_seed(6)
    for n, vocab in [(1, 5000), (6, 4097), (300, 1000)]:
        logits = _tied_logits(max(n, 6), vocab, gen)[-n:]
        args = ([0.0] * n, range(n), range(n))
        on_gpu = _draw(logits.cuda(), *args).cpu()
        assert on_gpu.tolist() == logits.argmax(dim=1).tolist()
        if n * vocab <= 30000:  # the interpreter is slow
            assert on_gpu.tolist() == _draw(logits, *args).tolist()


@needs_cuda
def test_cuda_sampling_matches_the_oracle_and_the_interpreter() -> None:
    gen = torch.Generator().manual_seed(7)
    n, vocab = 48, 40_000  # a split row on the GPU (several chunks per row)
    logits = torch.randn(n, vocab, generator=gen) * 4.0
    temps = [0.5, 1.0, 2.0, 30.0] * (n // 4)
    seeds = [s * 7919 - 100 for s in range(n)]
    offsets = [o * 2**31 for o in range(n)]
    on_gpu = _draw(logits.cuda(), temps, seeds, offsets).cpu()
    expected = [
        _reference(row, t, s, o) for row, t, s, o in zip(logits, temps, seeds, offsets, strict=True)
    ]
    # The GPU's log2 is an approximation (relative error ~2^-22): a near tie may go either way.
    assert sum(a != b for a, b in zip(on_gpu.tolist(), expected, strict=True)) <= 1
    small = logits[:6, :700]
    interpreted = _draw(small, temps[:6], seeds[:6], offsets[:6])
    assert _draw(small.cuda(), temps[:6], seeds[:6], offsets[:6]).cpu().equal(interpreted)


@needs_cuda
@pytest.mark.parametrize("temperature", [0.7, 1.0, 1.5])
def test_cuda_frequencies_follow_softmax_over_a_large_vocabulary(temperature: float) -> None:
    gen = torch.Generator().manual_seed(8)
    vocab, rows = 151_936, 20_000
    # Ten likely tokens over a long tail, whose share grows from 1% to 97% with the temperature.
    logits = torch.randn(vocab, generator=gen) * 0.5 - 7.0
    logits[:10] = torch.linspace(4.0, 0.0, 10)
    logits[10:20] = NEG_INF
    probs = torch.softmax(logits / temperature, dim=0)
    # A row stride of 0: 20000 rows of the same logits, each with its own offset.
    row = logits.cuda()
    tokens = _draw(row.expand(rows, -1), [temperature] * rows, [5] * rows, range(rows)).cpu()
    assert not ((tokens >= 10) & (tokens < 20)).any()
    # A bin for each likely token, and the tail in three bins across the vocabulary (chunks).
    edges = torch.tensor([50_000, 100_000])
    binned = torch.where(tokens < 10, tokens, 10 + torch.bucketize(tokens, edges, right=True))
    tail = [probs[20:50_000].sum(), probs[50_000:100_000].sum(), probs[100_000:].sum()]
    bins = torch.cat([probs[:10], torch.stack(tail)])
    assert _chi_square(binned, bins) < CHI2_CRITICAL[12]
    # The plan (chunks per row) depends on the batch: the same draws from a batch of three.
    few = _draw(row.expand(3, -1), [temperature] * 3, [5] * 3, [0, 1, 19_999]).cpu()
    assert few.tolist() == tokens[[0, 1, 19_999]].tolist()


@needs_cuda
def test_cuda_graph_replay_matches_eager() -> None:
    gen = torch.Generator().manual_seed(9)
    n, vocab = 8, 32_000
    logits = torch.randn(n, vocab, generator=gen).cuda()
    temps = torch.tensor([0.0, 1.0] * 4, device="cuda")
    seeds = torch.arange(n, device="cuda")
    offsets = torch.zeros(n, dtype=torch.int64, device="cuda")
    gumbel_argmax(logits, temps, seeds, offsets)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = gumbel_argmax(logits, temps, seeds, offsets)
    for step in range(1, 4):
        logits.copy_(torch.randn(n, vocab, generator=gen).cuda())
        offsets.fill_(step)
        graph.replay()
        assert captured[::2].equal(logits[::2].argmax(dim=1))  # the greedy rows
        assert captured.equal(gumbel_argmax(logits, temps, seeds, offsets))
