"""Prometheus series of text generation.

Generation requests are longer and fewer than inference requests: their time to first token,
inter-token latency, token counts and finish reasons are observed on the request path, and the
generators' state (running and waiting sequences, KV-cache usage, prefix-cache hits,
preemptions, step times) is read from their ``stats()`` at scrape time.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from stoker.generate._types import STEP_BUCKETS, FinishReason, GeneratorStats

__all__ = ["GenerationMetrics", "GenerationSeries", "GeneratorStatsSource"]

GeneratorStatsSource = Callable[[], GeneratorStats]

_TTFT_BUCKETS = [2.0**k for k in range(-10, 7)]
_INTER_TOKEN_BUCKETS = [2.0**k for k in range(-12, 3)]


class _GeneratorCollector:
    """The generators' state, read from their ``stats()`` at scrape time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sources: dict[str, GeneratorStatsSource] = {}

    def add(self, model: str, stats: GeneratorStatsSource) -> None:
        with self._lock:
            if model in self._sources:
                raise ValueError(f"model {model!r} already has a generator registered")
            self._sources[model] = stats

    def describe(self) -> Iterable[Metric]:
        return _GeneratorFamilies().all()

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            sources = list(self._sources.items())
        f = _GeneratorFamilies()
        for model, source in sources:
            stats = source()
            f.running.add_metric([model], float(stats.running))
            f.waiting.add_metric([model], float(stats.waiting))
            f.kv_usage.add_metric([model], stats.kv_usage)
            f.prefix_hits.add_metric([model], stats.prefix_hit_rate)
            f.preemptions.add_metric([model], float(stats.preemptions))
            f.drafts.add_metric([model], float(stats.draft_tokens))
            f.accepted.add_metric([model], float(stats.accepted_tokens))
            f.acceptance.add_metric([model], stats.acceptance_rate)
            for kind, times in (("decode", stats.decode_steps), ("prompt", stats.prompt_steps)):
                f.steps.add_metric(
                    [model, kind], _buckets(STEP_BUCKETS, times.counts), times.seconds
                )
        return f.all()


def _buckets(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[str, float]]:
    """A histogram family's cumulative buckets from per-bucket counts (one past the bounds)."""
    total, out = 0, []
    for bound, n in zip([*(repr(b) for b in bounds), "+Inf"], counts, strict=True):
        total += n
        out.append((bound, float(total)))
    return out


class _TokenTally:
    """One model's generated tokens and inter-token gaps as plain counts under one lock. The
    request path adds to them once per chunk, which under load is once per token of every
    stream; a prometheus_client Histogram's observe takes several locks and scans its buckets
    in Python, several times the cost."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tokens = 0
        self.gaps = [0] * (len(_INTER_TOKEN_BUCKETS) + 1)
        self.gap_seconds = 0.0


class _TokenCollector:
    """The tallies' series, read at scrape time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tallies: dict[str, _TokenTally] = {}

    def add(self, model: str) -> _TokenTally:
        with self._lock:
            return self._tallies.setdefault(model, _TokenTally())

    def describe(self) -> Iterable[Metric]:
        return _token_families()

    def collect(self) -> Iterable[Metric]:
        generated, gaps = _token_families()
        with self._lock:
            tallies = list(self._tallies.items())
        for model, tally in tallies:
            with tally.lock:
                tokens, counts, seconds = tally.tokens, list(tally.gaps), tally.gap_seconds
            generated.add_metric([model], float(tokens))
            gaps.add_metric([model], _buckets(_INTER_TOKEN_BUCKETS, counts), seconds)
        return [generated, gaps]


def _token_families() -> tuple[CounterMetricFamily, HistogramMetricFamily]:
    return (
        CounterMetricFamily(
            "stoker_generation_tokens", "Tokens generated for requests.", labels=["model"]
        ),
        HistogramMetricFamily(
            "stoker_generation_inter_token_seconds",
            "Time between a sequence's successive chunks of tokens, per token of the chunk.",
            labels=["model"],
        ),
    )


class _GeneratorFamilies:
    """A scrape's generator families, empty until filled."""

    def __init__(self) -> None:
        self.running = GaugeMetricFamily(
            "stoker_generation_running", "Sequences being generated.", labels=["model"]
        )
        self.waiting = GaugeMetricFamily(
            "stoker_generation_waiting",
            "Sequences waiting for their first step.",
            labels=["model"],
        )
        self.kv_usage = GaugeMetricFamily(
            "stoker_kv_cache_usage", "Share of the KV-cache blocks in use.", labels=["model"]
        )
        self.prefix_hits = GaugeMetricFamily(
            "stoker_prefix_cache_hit_rate",
            "Share of looked-up prompt blocks found in the prefix cache since the start.",
            labels=["model"],
        )
        self.preemptions = CounterMetricFamily(
            "stoker_generation_preemptions",
            "Sequences preempted to free KV-cache blocks (recomputed later).",
            labels=["model"],
        )

        self.drafts = CounterMetricFamily(
            "stoker_speculative_draft_tokens",
            "Speculative draft tokens verified by the model.",
            labels=["model"],
        )
        self.accepted = CounterMetricFamily(
            "stoker_speculative_accepted_tokens",
            "Speculative draft tokens the model accepted.",
            labels=["model"],
        )
        self.acceptance = GaugeMetricFamily(
            "stoker_speculative_acceptance_rate",
            "Share of verified draft tokens accepted since the start.",
            labels=["model"],
        )

        self.steps = HistogramMetricFamily(
            "stoker_generation_step_seconds",
            "Time of the engine's steps, from one step's tokens to the next's when back to back; "
            "kind: decode (every row decodes) or prompt (with prompt tokens).",
            labels=["model", "kind"],
        )

    def all(self) -> list[Metric]:
        return [
            self.running,
            self.waiting,
            self.kv_usage,
            self.prefix_hits,
            self.preemptions,
            self.drafts,
            self.accepted,
            self.acceptance,
            self.steps,
        ]


class GenerationMetrics:
    """One generator's request-path metrics, with their label children bound once."""

    def __init__(
        self,
        model: str,
        ttft: Histogram,
        tally: _TokenTally,
        prompt_tokens: Counter,
        finished: Counter,
    ) -> None:
        self._ttft = ttft.labels(model)
        self._tally = tally
        self._prompt_tokens = prompt_tokens.labels(model)
        self._finished = {r: finished.labels(model, r) for r in ("stop", "length", "abort")}

    def first_token(self, seconds: float, prompt_tokens: int) -> None:
        """A request's first chunk came ``seconds`` after the request."""
        self._ttft.observe(seconds)
        self._prompt_tokens.inc(prompt_tokens)

    def tokens(self, count: int, seconds: float | None) -> None:
        """A chunk of ``count`` tokens, ``seconds`` after the previous chunk (None: the first)."""
        t = self._tally
        with t.lock:
            t.tokens += count
            if seconds is not None and count:
                gap = seconds / count
                t.gaps[bisect.bisect_left(_INTER_TOKEN_BUCKETS, gap)] += 1
                t.gap_seconds += gap

    def finished(self, reason: FinishReason) -> None:
        """A request ended: stop, length, or abort (an error, or the client went away)."""
        self._finished[reason].inc()


class GenerationSeries:
    """The generation series of one registry, and the generators exported into it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._generators = _GeneratorCollector()
        registry.register(self._generators)
        self._tokens = _TokenCollector()
        registry.register(self._tokens)
        self._ttft = Histogram(
            "stoker_generation_ttft_seconds",
            "Time from a generation request's arrival to its first tokens.",
            ["model"],
            buckets=_TTFT_BUCKETS,
            registry=registry,
        )
        self._prompt_tokens = Counter(
            "stoker_generation_prompt_tokens",
            "Prompt tokens of generation requests that got their first tokens.",
            ["model"],
            registry=registry,
        )
        self._finished = Counter(
            "stoker_generation_requests",
            "Generation requests ended, by finish reason (stop, length, abort).",
            ["model", "finish_reason"],
            registry=registry,
        )

    def add(self, model: str, stats: GeneratorStatsSource) -> GenerationMetrics:
        self._generators.add(model, stats)
        return GenerationMetrics(
            model, self._ttft, self._tokens.add(model), self._prompt_tokens, self._finished
        )
