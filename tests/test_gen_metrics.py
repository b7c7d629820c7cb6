"""The generation series' per-token tallies expose what prometheus_client's own Histogram and
Counter would, for the same chunks."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from stoker.generate import GeneratorStats
from stoker.server._gen_metrics import _INTER_TOKEN_BUCKETS, GenerationSeries

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _samples(registry: CollectorRegistry, prefix: str) -> Samples:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith(prefix) and not s.name.endswith("_created")
    }


def test_token_tallies_expose_what_prometheus_client_would() -> None:
    ours = CollectorRegistry()
    metrics = GenerationSeries(ours).add("m", GeneratorStats)
    reference = CollectorRegistry()
    gaps = Histogram(
        "stoker_generation_inter_token_seconds",
        "reference",
        ["model"],
        buckets=_INTER_TOKEN_BUCKETS,
        registry=reference,
    ).labels("m")
    tokens = Counter("stoker_generation_tokens", "reference", ["model"], registry=reference)
    # A first chunk (no gap), gaps inside buckets, on a bound (it belongs to that bucket),
    # past the last bound, zero, and an empty chunk.
    chunks = [
        (1, None),
        (3, 0.006),
        (1, _INTER_TOKEN_BUCKETS[4]),
        (2, 2 * _INTER_TOKEN_BUCKETS[0]),
        (1, 100.0),
        (1, 0.0),
        (0, 0.5),
    ]
    for count, seconds in chunks:
        metrics.tokens(count, seconds)
        tokens.labels("m").inc(count)
        if seconds is not None and count:
            gaps.observe(seconds / count)
    for prefix in ("stoker_generation_inter_token_seconds", "stoker_generation_tokens"):
        got, expected = _samples(ours, prefix), _samples(reference, prefix)
        assert got and got == expected


def test_each_model_keeps_its_own_tallies() -> None:
    registry = CollectorRegistry()
    series = GenerationSeries(registry)
    a, b = series.add("a", GeneratorStats), series.add("b", GeneratorStats)
    a.tokens(2, None)
    b.tokens(5, 0.01)
    got = _samples(registry, "stoker_generation_")
    assert got[("stoker_generation_tokens_total", (("model", "a"),))] == 2
    assert got[("stoker_generation_tokens_total", (("model", "b"),))] == 5
    assert got[("stoker_generation_inter_token_seconds_count", (("model", "a"),))] == 0
    assert got[("stoker_generation_inter_token_seconds_count", (("model", "b"),))] == 1
