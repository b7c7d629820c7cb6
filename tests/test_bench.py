"""`stoker bench`: the histogram math, the report drawn from a recorded run, and a short run
against an in-process stoker server."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _imagegen import jpeg_rgb
from typer.testing import CliRunner

from stoker import _native, bench
from stoker._cli import app
from stoker._stats import HistogramSnapshot
from stoker.bench import _stats

RECORDED = Path(__file__).parent / "fixtures" / "bench_stoker_vs_naive.json"
RESOLUTION = 1.125  # 8 buckets per power of two: a bucket's edge is at most 12.5% above its values


def recorded(values: np.ndarray[Any, np.dtype[np.int64]]) -> HistogramSnapshot:
    h = _native.Histogram()
    h.record_many(values)
    return _stats.snapshot(h.snapshot())


@pytest.mark.parametrize(
    "draw",
    [
        lambda rng: rng.uniform(100, 50_000, 200_000),
        lambda rng: rng.exponential(2_000, 200_000),
        lambda rng: rng.lognormal(8, 1.5, 200_000),
    ],
    ids=["uniform", "exponential", "lognormal"],
)
def test_quantiles_are_within_the_bucket_resolution(draw: Any) -> None:
    values = np.round(draw(np.random.default_rng(7))).astype(np.int64)
    h = recorded(values)
    got = _stats.quantiles_ms(h)
    for name, q in _stats.QUANTILES.items():
        true_ms = float(np.quantile(values, q, method="inverted_cdf")) / 1000
        assert true_ms <= got[name] <= true_ms * RESOLUTION + 0.001, name
    assert got["mean"] == pytest.approx(values.mean() / 1000)
    assert got["max"] == values.max() / 1000


def test_histograms_survive_json_and_give_the_percentile_spectrum() -> None:
    values = np.arange(1, 10_001, dtype=np.int64)
    h = recorded(values)
    back = _stats.from_json(json.loads(json.dumps(_stats.to_json(h))))
    assert np.array_equal(back.counts, h.counts)
    assert (back.count, back.sum, back.max) == (10_000, int(values.sum()), 10_000)
    qs, ms = _stats.percentile_spectrum(back)
    assert qs == sorted(qs) and ms == sorted(ms)
    assert qs[-1] == 1.0 and ms[-1] == 10.0
    for q, latency in zip(qs, ms, strict=True):
        # Every value up to the bucket's edge lies at or below it: the quantile is their share.
        assert q == pytest.approx(min(latency * 1000, 10_000) / 10_000)


def test_orchestration_share_is_one_minus_compute_over_total() -> None:
    compute = recorded(np.full(100, 3_000, dtype=np.int64))
    total = recorded(np.full(100, 12_000, dtype=np.int64))
    share = _stats.orchestration_share({"compute": compute, "total": total})
    assert share == pytest.approx(0.75)
    assert _stats.orchestration_share({"total": total}) is None


def test_report_from_a_recorded_run(tmp_path: Path) -> None:
    runs = bench.load_runs([RECORDED])
    stoker, naive = runs
    page = bench.report(runs, tmp_path)
    text = page.read_text()
    for name in ("report.html", "results.json", "latency.png", "percentiles.png", "stages.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert not (tmp_path / "errors.png").exists()  # the recorded run had no errors
    for run in runs:
        for level in run["levels"]:
            assert f"<td>{level['name']}</td>" in text
    ratio = stoker["peak_throughput"] / naive["peak_throughput"]
    assert f"peak throughput stoker / naive: <b>{ratio:.2f}x</b>" in text
    for level, base in zip(stoker["levels"], naive["levels"], strict=True):
        p99 = base["latency_ms"]["p99"] / level["latency_ms"]["p99"]
        assert re.search(
            rf"<td>{re.escape(level['name'])}</td><td>[0-9.]+x</td><td>{p99:.2f}x", text
        )
        assert f"<td>{level['orchestration_share']:.1%}</td>" in text
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["comparisons"][0]["throughput_ratio"] == pytest.approx(ratio)


def test_compare_two_saved_runs_from_the_command_line(tmp_path: Path) -> None:
    stoker, naive = bench.load_runs([RECORDED])
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(stoker))
    b.write_text(json.dumps(naive))
    result = CliRunner().invoke(
        app, ["bench", "--compare", str(a), str(b), "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == 0, result.output
    ratio = stoker["peak_throughput"] / naive["peak_throughput"]
    assert f"peak throughput stoker / naive: {ratio:.2f}x" in result.output
    assert (tmp_path / "out" / "report.html").exists()


@pytest.fixture(scope="module")
def server() -> Iterator[bench.Endpoint]:
    with bench.stoker_target(bench.StokerSettings(max_batch_size=8), "stoker") as endpoint:
        yield endpoint


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.jpg").write_bytes(jpeg_rgb(60 + 8 * i, 80, seed=i))
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_short_run_against_stoker(server: bench.Endpoint, images: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["bench", "--url", f"http://127.0.0.1:{server.port}", "--model-name", "tiny"]
    args += ["--images", str(images), "--concurrency", "1,2", "--rate-fractions", "0.5"]
    args += ["--seconds", "0.3", "--warmup", "0.1", "--out", str(out), "--label", "here"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    run = json.loads((out / "here.json").read_text())
    assert run["images"]["count"] == 3
    assert [lv["key"] for lv in run["levels"]] == ["c=1", "c=2", "0.5 of peak"]
    for level in run["levels"]:
        assert level["ok"] > 0 and level["errors"] == {}
        assert level["throughput"] == pytest.approx(level["ok"] / level["elapsed_s"])
        assert 0 < level["orchestration_share"] < 1
        assert {"queue", "preprocess", "compute", "total"} <= set(level["stages_ms"])
        assert level["latency_histogram"]["count"] == level["completed"]
        assert 0 < level["latency_ms"]["p50"] <= level["latency_ms"]["p99"]
    assert run["levels"][2]["offered_rate"] == pytest.approx(0.5 * run["peak_throughput"], 1e-9)
    text = (out / "report.html").read_text()
    assert all(lv["name"] in text for lv in run["levels"])
    assert "report:" in result.output


def test_errors_are_counted_by_status(server: bench.Endpoint, images: Path, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{server.port}"
    plan = bench.Plan(concurrency=(2,), seconds=0.3, warmup_s=0.1)
    runs, page = bench.bench(
        [
            lambda: bench.url_target(url, "tiny", "right", None),
            lambda: bench.url_target(url, "missing", "wrong", None),
        ],
        plan,
        bench.load_images(images, 0),
        tmp_path,
        images_source="test",
        progress=False,
    )
    wrong = runs[1]["levels"][0]
    assert wrong["ok"] == 0 and wrong["errors"]["404"] == wrong["completed"] > 0
    assert (tmp_path / "errors.png").exists()
    comparison = bench.compare(runs[0], runs[1])
    assert comparison["throughput_ratio"] is None  # nothing succeeded on the baseline
    assert comparison["levels"][0]["p99_ratio"] is None
    assert "404: " in page.read_text()
