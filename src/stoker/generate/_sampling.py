"""Picks each sequence's next token from its logits: greedy, or temperature with top-k / top-p.

All rows of a step are sampled together on the device. Sampling draws exponential noise and takes
the argmax of probability over noise (the exponential race), which samples exactly from the
distribution without a cumulative sum per row. A row with a seed draws its noise from its own
generator keyed by the seed and the token's position, so its tokens do not depend on its batch.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from torch import Tensor

from stoker.generate._sample_kernel import HAS_TRITON, gumbel_argmax
from stoker.generate._types import SamplingOptions

__all__ = ["Sampled", "sample", "sample_verifying"]

_MIX = 0x9E3779B97F4A7C15  # spreads consecutive token indices over the seed space
_SEEDS = random.Random()  # seeds of unseeded rows on the fused path


def _on(
    values: Sequence[float] | Sequence[int], device: torch.device, dtype: torch.dtype
) -> Tensor:
    """A small host list on the device without a blocking copy, which would make the host wait
    for the device's queue (the engine launches a step while the one before still runs)."""
    return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)


def _filter_top_k(logits: Tensor, ks: Sequence[int]) -> Tensor:
    vocab = logits.shape[-1]
    k = _on([k if 0 < k < vocab else vocab for k in ks], logits.device, torch.int64)
    kth = logits.sort(dim=-1, descending=True).values.gather(1, (k - 1).unsqueeze(1))
    return logits.masked_fill(logits < kth, float("-inf"))


def _filter_top_p(logits: Tensor, ps: Sequence[float]) -> Tensor:
    p = _on(ps, logits.device, torch.float32).unsqueeze(1)
    ordered, order = logits.sort(dim=-1, descending=True)
    probs = ordered.softmax(dim=-1)
    # A token stays when the mass before it is under p, so the most likely one always stays.
    drop = (probs.cumsum(dim=-1) - probs) >= p
    ordered = ordered.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, ordered)


def _noise(
    shape: tuple[int, int],
    rows: Sequence[SamplingOptions],
    positions: Sequence[int],
    device: torch.device,
) -> Tensor:
    noise = torch.empty(shape, device=device).exponential_()
    for i, (row, position) in enumerate(zip(rows, positions, strict=True)):
        if row.seed is not None:
            gen = torch.Generator(device=device)
            gen.manual_seed((row.seed * _MIX + position) % (1 << 63))
            noise[i] = torch.empty(shape[1], device=device).exponential_(generator=gen)
    return noise


def _probabilities(logits: Tensor, rows: Sequence[SamplingOptions]) -> Tensor:
    """Each row's sampling distribution: temperature, then top-k and top-p (greedy rows get a
    temperature of 1, their probabilities unused)."""
    temps = _on(
        [r.temperature if r.temperature > 0 else 1.0 for r in rows], logits.device, torch.float32
    )
    scaled = logits / temps.unsqueeze(1)
    if any(r.top_k > 0 for r in rows):
        scaled = _filter_top_k(scaled, [r.top_k for r in rows])
    if any(r.top_p < 1.0 for r in rows):
        scaled = _filter_top_p(scaled, [r.top_p for r in rows])
    return scaled.softmax(dim=-1)


def sample_verifying(
    logits: Tensor,
    rows: Sequence[SamplingOptions],
    positions: Sequence[int],
    drafts: Sequence[int],
) -> Tensor:
    """``sample`` at positions that verify a speculative draft (``drafts[i]`` >= 0: the draft
    token proposed for row i's position; -1: none).

    A greedy row takes its argmax. A sampled row with a draft keeps the draft with probability
    p(draft), and otherwise draws from p without the draft: the first rejected draft is replaced
    by a token drawn from exactly the distribution that makes the row's output distributed as
    without speculation (speculative sampling with a one-hot proposal). Rows without a draft
    draw from p. The acceptance draws are keyed like the sampling noise, by seed and position.
    """
    if all(r.temperature == 0.0 for r in rows):
        return logits.argmax(dim=-1)
    device = logits.device
    probs = _probabilities(logits, rows)
    draft = _on(list(drafts), device, torch.int64)
    has = draft >= 0
    index = draft.clamp(min=0).unsqueeze(1)
    p_draft = probs.gather(1, index).squeeze(1)
    # exp(-E) of an exponential draw E is uniform on (0, 1).
    uniform = torch.exp(-_noise((len(rows), 1), rows, [~p for p in positions], device)[:, 0])
    keep = has & (uniform < p_draft)
    residual = torch.where(has.unsqueeze(1), probs.scatter(1, index, 0.0), probs)
    drawn = (residual / _noise(tuple(probs.shape), rows, positions, device)).argmax(dim=-1)  # type: ignore[arg-type]
    chosen = torch.where(keep, draft, drawn)
    is_greedy = _on([r.temperature == 0.0 for r in rows], device, torch.bool)
    return torch.where(is_greedy, logits.argmax(dim=-1), chosen)


def sample(logits: Tensor, rows: Sequence[SamplingOptions], positions: Sequence[int]) -> Tensor:
    """One token id (int64, on the logits' device) per row of float32 ``logits`` (N, vocab).

    ``positions`` are the positions the sampled tokens take in their sequences.
    """
    if all(r.temperature == 0.0 for r in rows):
        return logits.argmax(dim=-1)
    if (
        logits.device.type == "cuda"
        and HAS_TRITON
        and not any(r.top_k > 0 or r.top_p < 1.0 for r in rows)
    ):
        return _fused(logits, rows, positions)
    greedy = logits.argmax(dim=-1)
    probs = _probabilities(logits, rows)
    drawn = (probs / _noise(tuple(probs.shape), rows, positions, logits.device)).argmax(dim=-1)  # type: ignore[arg-type]
    is_greedy = _on([r.temperature == 0.0 for r in rows], logits.device, torch.bool)
    return torch.where(is_greedy, greedy, drawn)


def _fused(logits: Tensor, rows: Sequence[SamplingOptions], positions: Sequence[int]) -> Tensor:
    """Temperature sampling in one pass over the logits (the Gumbel-max kernel). A seeded row's
    noise is keyed by its seed and the token's position; other rows draw a fresh seed."""
    seeds = [r.seed if r.seed is not None else _SEEDS.getrandbits(63) for r in rows]
    host = torch.tensor([[float(r.temperature) for r in rows]], dtype=torch.float32)
    ints = torch.tensor([seeds, list(positions)], dtype=torch.int64)
    temps = host[0].to(logits.device, non_blocking=True)
    seeds_t, offsets = ints.to(logits.device, non_blocking=True).unbind(0)
    return gumbel_argmax(logits, temps, seeds_t, offsets)


class Sampled:
    """A step's sampled tokens, maybe still being computed and copied to the host; ``device``
    holds them where they were sampled."""

    def __init__(self, tokens: Tensor, done: torch.cuda.Event | None, device: Tensor) -> None:
        self._tokens, self._done, self.device = tokens, done, device

    def ready(self) -> bool:
        """Whether ``tokens()`` would return without waiting for the device."""
        return self._done is None or bool(self._done.query())  # type: ignore[no-untyped-call]

    def tokens(self) -> list[int]:
        if self._done is not None:
            self._done.synchronize()
        picked: list[int] = self._tokens.tolist()
        return picked
