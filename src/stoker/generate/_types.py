"""What a generation request asks for and what it gets back, shared by the engine and the API."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

__all__ = [
    "STEP_BUCKETS",
    "FinishReason",
    "GenerationChunk",
    "GenerationError",
    "Generator",
    "GeneratorStats",
    "SamplingOptions",
    "StepTimes",
]

FinishReason = Literal["stop", "length", "abort"]


class GenerationError(ValueError):
    """A generation request that cannot run as asked (bad options, prompt too long)."""


@dataclass(frozen=True)
class SamplingOptions:
    """How one sequence is sampled and when it stops.

    ``temperature`` 0 is greedy; ``top_k`` 0 and ``top_p`` 1 switch those filters off. A ``seed``
    makes the sequence's samples reproducible whatever else runs beside it.
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False

    def check(self) -> None:
        if self.max_tokens < 1:
            raise GenerationError("max_tokens must be at least 1")
        if not 0.0 <= self.temperature <= 100.0:
            raise GenerationError("temperature must be in [0, 100]")
        if not 0.0 < self.top_p <= 1.0:
            raise GenerationError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise GenerationError("top_k must be 0 (off) or positive")


@dataclass
class GenerationChunk:
    """Tokens a sequence produced since its previous chunk; the last chunk has a finish reason."""

    token_ids: list[int] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    """Prompt tokens whose KV came from the prefix cache (set on the first chunk)."""


STEP_BUCKETS = (
    0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.008, 0.010, 0.012, 0.015, 0.020, 0.025, 0.030,
    0.040, 0.050, 0.075, 0.100, 0.200, 0.500, 1.0,
)  # fmt: skip
"""Upper bounds (seconds) of the step-time histogram's buckets; a last bucket holds the rest."""


@dataclass(frozen=True)
class StepTimes:
    """How long one kind of step took: ``counts[i]`` steps in bucket ``i`` of ``STEP_BUCKETS``
    (not cumulative; one more bucket past the last bound), ``seconds`` in all.

    A step's time runs from its launch, or the previous step's tokens if they came later, to its
    own tokens on the host: back to back, the time between one step's tokens and the next's,
    which is what a stream sees between its tokens."""

    counts: tuple[int, ...] = (0,) * (len(STEP_BUCKETS) + 1)
    seconds: float = 0.0

    @property
    def count(self) -> int:
        return sum(self.counts)


@dataclass(frozen=True)
class GeneratorStats:
    """A snapshot of the engine's state and counters since it started."""

    running: int = 0
    waiting: int = 0
    kv_blocks: int = 0
    kv_blocks_free: int = 0
    prefix_hit_blocks: int = 0
    prefix_miss_blocks: int = 0
    steps: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    preemptions: int = 0
    draft_tokens: int = 0  # speculative drafts verified
    accepted_tokens: int = 0  # of those, the ones the model agreed with
    decode_steps: StepTimes = StepTimes()  # steps whose every row decodes
    prompt_steps: StepTimes = StepTimes()  # steps with prompt tokens (chunked prefill)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else 0.0

    @property
    def kv_usage(self) -> float:
        return 1.0 - self.kv_blocks_free / self.kv_blocks if self.kv_blocks else 0.0

    @property
    def prefix_hit_rate(self) -> float:
        looked = self.prefix_hit_blocks + self.prefix_miss_blocks
        return self.prefix_hit_blocks / looked if looked else 0.0


class Generator(Protocol):
    """The engine as the API layer sees it."""

    eos_token_ids: tuple[int, ...]
    max_model_len: int
    model_name: str

    def stats(self) -> GeneratorStats: ...

    def stream(
        self, prompt_ids: Sequence[int], options: SamplingOptions
    ) -> AsyncIterator[GenerationChunk]:
        """The sequence's chunks as they are produced. Leaving the iteration early (break,
        ``aclose()``, cancellation) aborts the sequence and frees its KV blocks."""
        ...
