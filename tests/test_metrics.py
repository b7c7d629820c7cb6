"""Server metrics: request counters, and engine histograms made Prometheus ones at scrape time."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import numpy.typing as npt
import pytest
from _imagegen import jpeg_rgb
from _models import TinyNet
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

import stoker
from stoker import _native
from stoker._stats import STAGES, HistogramSnapshot, StageStats
from stoker.server._metrics import ServerMetrics

Stats = dict[str, HistogramSnapshot]
Labels = frozenset[tuple[str, str]]
Scrape = dict[tuple[str, Labels], float]

STAGE_EDGES_US = [1 << k for k in range(4, 27)]
BATCH_EDGES = [(1 << k) - 1 for k in range(1, 14)]


def snapshot(values: Iterable[int]) -> HistogramSnapshot:
    h = _native.Histogram()
    h.record_many(np.asarray(list(values), dtype=np.int64))
    counts, count, total, peak = h.snapshot()
    return HistogramSnapshot(np.asarray(counts), int(count), int(total), int(peak))


def stats_of(**values: Iterable[int]) -> Stats:
    """Engine-shaped stats: the named histograms hold ``values``, every other one is empty."""
    names = (*STAGES, "batch_size", "batch_compute")
    unknown = set(values) - set(names)
    if unknown:
        raise KeyError(unknown)
    return {name: snapshot(values.get(name, ())) for name in names}


def scrape(metrics: ServerMetrics) -> Scrape:
    body, content_type = metrics.exposition()
    assert content_type == CONTENT_TYPE_LATEST
    out: Scrape = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def series(scraped: Scrape, name: str, **labels: str) -> dict[str, float]:
    """Every ``le`` of a histogram's buckets carrying ``labels``, with its count."""
    want = set(labels.items())
    return {
        dict(key)["le"]: value
        for (sample, key), value in scraped.items()
        if sample == name and want <= key and dict(key).keys() - labels.keys() == {"le"}
    }


def value(scraped: Scrape, name: str, **labels: str) -> float:
    return scraped[(name, frozenset(labels.items()))]


def log_spread(rng: np.random.Generator, n: int, top_exponent: int) -> npt.NDArray[np.int64]:
    """Values spread over every power of two, plus each power of two and its neighbours."""
    spread = (2.0 ** rng.uniform(0, top_exponent, n)).astype(np.int64)
    edges = [v for k in range(top_exponent + 1) for v in ((1 << k) - 1, 1 << k, (1 << k) + 1)]
    return np.concatenate((spread, np.asarray([0, *edges], dtype=np.int64)))


def check_histogram(
    buckets: Mapping[str, float], edges: list[int], unit: float, values: npt.NDArray[np.int64]
) -> None:
    """Cumulative, ``+Inf`` holding everything, and exact at each edge (``edges`` in the values'
    own integers, ``le = edge / unit``): values strictly below it for truncated microseconds,
    at most it for whole item counts, which end one below a power of two."""
    ordered = sorted(buckets.items(), key=lambda item: float(item[0]))
    assert [float(le) for le, _ in ordered] == [*(e / unit for e in edges), float("inf")]
    counts = [c for _, c in ordered]
    assert counts == sorted(counts)
    assert counts[-1] == len(values)
    for edge, got in zip(edges, counts, strict=False):
        below = values < edge if unit != 1 else values <= edge
        assert got == below.sum(), edge


def test_stage_buckets_are_cumulative_and_exact_at_every_edge() -> None:
    rng = np.random.default_rng(0)
    # Up to 2**28 µs: past the last edge, so the tail must land in +Inf alone.
    total, compute = log_spread(rng, 5000, 28), log_spread(rng, 300, 20)
    metrics = ServerMetrics()
    metrics.add_engine("m", lambda: stats_of(total=total, compute=compute), lambda: 0)
    scraped = scrape(metrics)
    for stage, values in (("total", total), ("compute", compute)):
        buckets = series(scraped, "stoker_stage_seconds_bucket", model="m", stage=stage)
        check_histogram(buckets, STAGE_EDGES_US, 1e6, values)
        assert value(scraped, "stoker_stage_seconds_count", model="m", stage=stage) == len(values)
        got_sum = value(scraped, "stoker_stage_seconds_sum", model="m", stage=stage)
        assert got_sum == pytest.approx(values.sum() / 1e6, rel=1e-12)
    queue = series(scraped, "stoker_stage_seconds_bucket", model="m", stage="queue")
    assert set(queue.values()) == {0.0}


def test_batch_size_buckets_are_exact_item_counts() -> None:
    sizes = np.asarray([*range(1, 41), 32, 32, 64, 100, 5000, 9000], dtype=np.int64)
    metrics = ServerMetrics()
    metrics.add_engine("m", lambda: stats_of(batch_size=sizes), lambda: 0)
    scraped = scrape(metrics)
    buckets = series(scraped, "stoker_batch_size_bucket", model="m")
    check_histogram(buckets, BATCH_EDGES, 1, sizes)
    assert value(scraped, "stoker_batch_size_count", model="m") == len(sizes)
    assert value(scraped, "stoker_batch_size_sum", model="m") == sizes.sum()


def test_busy_time_queue_depth_and_orchestration_share() -> None:
    depth_calls = 0

    def depth() -> int:
        nonlocal depth_calls
        depth_calls += 1
        return 7

    stats = stats_of(
        total=[1000, 3000], compute=[250, 750], batch_compute=[1_500_000, 250_000], batch_size=[2]
    )
    metrics = ServerMetrics()
    metrics.add_engine("m", lambda: stats, depth)
    assert depth_calls == 0  # nothing is read until a scrape
    scraped = scrape(metrics)
    assert depth_calls == 1
    assert value(scraped, "stoker_queue_depth", model="m") == 7
    assert value(scraped, "stoker_device_busy_seconds_total", model="m") == pytest.approx(1.75)
    assert value(scraped, "stoker_orchestration_share", model="m") == pytest.approx(0.75)


def test_orchestration_share_stays_a_share() -> None:
    metrics = ServerMetrics()
    # Truncated timings can make compute exceed total on tiny requests.
    metrics.add_engine("over", lambda: stats_of(total=[10], compute=[12]), lambda: 0)
    metrics.add_engine("none", lambda: stats_of(total=[10]), lambda: 0)
    scraped = scrape(metrics)
    assert value(scraped, "stoker_orchestration_share", model="over") == 0.0
    assert value(scraped, "stoker_orchestration_share", model="none") == 1.0


def test_an_engine_without_data_scrapes_as_zeros() -> None:
    metrics = ServerMetrics()
    metrics.add_engine("idle", StageStats().snapshot, lambda: 0)
    scraped = scrape(metrics)
    for stage in STAGES:
        buckets = series(scraped, "stoker_stage_seconds_bucket", model="idle", stage=stage)
        assert len(buckets) == len(STAGE_EDGES_US) + 1
        assert set(buckets.values()) == {0.0}
        assert value(scraped, "stoker_stage_seconds_count", model="idle", stage=stage) == 0
        assert value(scraped, "stoker_stage_seconds_sum", model="idle", stage=stage) == 0
    assert set(series(scraped, "stoker_batch_size_bucket", model="idle").values()) == {0.0}
    assert value(scraped, "stoker_device_busy_seconds_total", model="idle") == 0
    assert value(scraped, "stoker_orchestration_share", model="idle") == 0


def test_requests_are_counted_by_model_endpoint_and_code() -> None:
    metrics = ServerMetrics()
    assert not [k for k in scrape(metrics) if k[0] == "stoker_requests_total"]
    for _ in range(3):
        metrics.observe("a", "infer", 200)
    metrics.observe("a", "infer", 503)
    metrics.observe("b", "classify", 200)
    scraped = scrape(metrics)
    counted = {
        (labels["model"], labels["endpoint"], labels["code"]): v
        for (name, key), v in scraped.items()
        if name == "stoker_requests_total"
        for labels in [dict(key)]
    }
    assert counted == {
        ("a", "infer", "200"): 3,
        ("a", "infer", "503"): 1,
        ("b", "classify", "200"): 1,
    }


def test_models_are_separate_series_and_can_be_removed() -> None:
    metrics = ServerMetrics()
    metrics.add_engine("a", lambda: stats_of(total=[100]), lambda: 1)
    metrics.add_engine("b", lambda: stats_of(total=[100, 200]), lambda: 2)
    with pytest.raises(ValueError, match="already"):
        metrics.add_engine("a", StageStats().snapshot, lambda: 0)
    scraped = scrape(metrics)
    assert value(scraped, "stoker_stage_seconds_count", model="a", stage="total") == 1
    assert value(scraped, "stoker_stage_seconds_count", model="b", stage="total") == 2
    assert value(scraped, "stoker_queue_depth", model="b") == 2
    metrics.remove_engine("a")
    with pytest.raises(KeyError):
        metrics.remove_engine("a")
    models = {dict(key).get("model") for _, key in scrape(metrics)}
    assert models == {"b"}


def test_servers_keep_their_metrics_apart() -> None:
    first, second = ServerMetrics(), ServerMetrics()
    first.observe("a", "infer", 200)
    assert not [k for k in scrape(second) if k[0] == "stoker_requests_total"]


def test_a_real_engines_stats_reach_the_scrape() -> None:
    spec = stoker.ImageSpec(size=40, crop=32, mean=stoker.IMAGENET_MEAN, std=stoker.IMAGENET_STD)
    data = [jpeg_rgb(48 + i % 5, 50 + i % 7, i) for i in range(24)]
    metrics = ServerMetrics()
    with stoker.Engine(TinyNet(), spec, max_batch_size=8, max_delay_ms=5) as engine:
        metrics.add_engine("tiny", engine.stats, lambda: engine.waiting)
        for future in [engine.submit(d) for d in data]:
            future.result(timeout=30)
        stats = engine.stats()
        scraped = scrape(metrics)
    for stage in STAGES:
        count = value(scraped, "stoker_stage_seconds_count", model="tiny", stage=stage)
        assert count == len(data) == stats[stage].count
        buckets = series(scraped, "stoker_stage_seconds_bucket", model="tiny", stage=stage)
        assert buckets["+Inf"] == len(data)
    total_s = value(scraped, "stoker_stage_seconds_sum", model="tiny", stage="total")
    assert total_s == pytest.approx(stats["total"].sum / 1e6) and total_s > 0
    assert value(scraped, "stoker_batch_size_sum", model="tiny") == len(data)
    batches = value(scraped, "stoker_batch_size_count", model="tiny")
    assert 3 <= batches == stats["batch_size"].count
    busy = value(scraped, "stoker_device_busy_seconds_total", model="tiny")
    assert 0 < busy == pytest.approx(stats["batch_compute"].sum / 1e6)
    assert value(scraped, "stoker_queue_depth", model="tiny") == 0
    assert 0 < value(scraped, "stoker_orchestration_share", model="tiny") < 1
