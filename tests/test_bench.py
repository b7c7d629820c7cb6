"""`stoker bench`: the histogram math, the report drawn from a recorded run, short runs against an
in-process stoker server and against stoker's engine, and GPU sampling through a stand-in NVML."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import matplotlib.pyplot as plt
import numpy as np
import pytest
from _imagegen import jpeg_rgb
from typer.testing import CliRunner

from stoker import _native, bench
from stoker._cli import app
from stoker._engine import Engine
from stoker._errors import ImageError
from stoker._stats import STAGES, HistogramSnapshot, Timings
from stoker.bench import _figures, _stats
from stoker.bench._engine_target import EngineLoad
from stoker.bench._sample import Sampler

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


def test_short_run_against_the_engine(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["bench", "--engine", "--max-batch-size", "8", "--images", str(images)]
    args += ["--concurrency", "1,4", "--rate-fractions", "", "--rates", "150"]
    args += ["--seconds", "0.4", "--warmup", "0.1", "--out", str(out), "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    run = json.loads((out / "engine.json").read_text())
    assert "stoker engine in process" in run["description"]
    assert "io_threads" not in run["settings"]
    assert [lv["key"] for lv in run["levels"]] == ["c=1", "c=4", "150/s"]
    for level in run["levels"]:
        # Closed and open loop alike wait for every measured request, so each one sent completed.
        assert level["sent"] == level["completed"] == level["ok"] > 0 and level["errors"] == {}
        assert level["latency_histogram"]["count"] == level["completed"]
        assert level["throughput"] == pytest.approx(level["ok"] / level["elapsed_s"])
        assert set(level["stages_ms"]) == set(STAGES)
        assert level["stages_ms"]["compute"] > 0 and level["stages_ms"]["total"] > 0
        # The client's latency holds the engine's total, plus waking the caller's task.
        assert level["latency_ms"]["mean"] >= level["stages_ms"]["total"]
        assert 0 < level["orchestration_share"] < 1
        assert level["generator"]["threads"] == 1 and level["generator"]["cpu_cores"] > 0
        assert "host_cores" in level["machine"]
    open_level = run["levels"][2]
    assert open_level["mode"] == "open" and open_level["connections"] == 64
    assert 20 <= open_level["sent"] <= 110  # Poisson at 150/s over 0.4 s: 60 expected
    text = (out / "report.html").read_text()
    assert all(f"<td>{lv['name']}</td>" in text for lv in run["levels"])
    assert (out / "stages.png").stat().st_size > 0
    assert "engine: peak" in result.output


class _StandIn:
    """An engine's ``infer_timed`` that stalls on its first call and fails on chosen calls."""

    def __init__(self, stall_s: float = 0.0, failing: frozenset[int] = frozenset()) -> None:
        self.stall_s = stall_s
        self.failing = failing
        self.calls = 0

    async def infer_timed(self, image: bytes) -> tuple[Any, Timings]:
        self.calls += 1
        if self.calls in self.failing:
            raise ImageError("not an image")
        await asyncio.sleep(self.stall_s if self.calls == 1 else 0)
        return None, Timings(10.0, 0.0, 50.0, 0.0, 100.0, 5.0, 200.0, 1)


def _drive(engine: _StandIn, plan: bench.Plan, connections: int, rate: float) -> dict[str, Any]:
    load = EngineLoad(cast(Engine, engine), [(b"x",)], plan, connections, rate)
    load.start()
    while not load.done:
        time.sleep(0.01)
    return load.wait()


def test_open_loop_latency_counts_from_the_scheduled_arrival() -> None:
    plan = bench.Plan(concurrency=(), rates=(200.0,), seconds=0.6, warmup_s=0.0)
    report = _drive(_StandIn(stall_s=0.3), plan, 1, 200.0)
    latency = _stats.snapshot(report["latency"])
    # The arrivals queued behind the stalled first request waited up to 0.3 s for the one caller:
    # timed from their sends they would all read as instant.
    assert report["late"] >= 20
    assert latency.count == report["completed"] == report["sent"] > 60
    assert latency.quantile(0.9) >= 50_000
    assert report["unsent"] == 0 and report["timeouts"] == 0


def test_engine_failures_count_by_the_servers_status() -> None:
    plan = bench.Plan(concurrency=(2,), seconds=0.2, warmup_s=0.0, max_requests=40)
    engine = _StandIn(failing=frozenset(range(1, 41, 4)))
    report = _drive(engine, plan, 2, 0.0)
    assert report["completed"] == 40 == sum(report["statuses"].values())
    assert report["statuses"][400] == 10  # stoker's server answers an ImageError with a 400
    timing = {k: _stats.snapshot(v) for k, v in report["server_timing"].items()}
    assert timing["compute"].count == 30 and timing["compute"].max == 100
    assert _stats.orchestration_share(timing) == pytest.approx(0.5)


def _fake_nvml(fail: str | None = None) -> tuple[types.ModuleType, list[str]]:
    """A `pynvml` of two GPUs (30% and 50% busy, 1 and 3 GiB of 8 used) recording its calls;
    ``fail`` names a call that raises."""
    calls: list[str] = []
    nvml = types.ModuleType("pynvml")
    memory = [types.SimpleNamespace(total=8 << 30, used=used << 30) for used in (1, 3)]

    def call(name: str, value: Any = None) -> Any:
        def f(*args: Any) -> Any:
            calls.append(name)
            if name == fail:
                raise RuntimeError(f"{name} failed")
            return value(*args) if callable(value) else value

        setattr(nvml, name, f)

    call("nvmlInit")
    call("nvmlShutdown")
    call("nvmlDeviceGetCount", 2)
    call("nvmlDeviceGetHandleByIndex", lambda i: i)
    call("nvmlDeviceGetName", lambda h: [b"Fake A", "Fake B"][h])
    call("nvmlDeviceGetMemoryInfo", lambda h: memory[h])
    call("nvmlDeviceGetUtilizationRates", lambda h: types.SimpleNamespace(gpu=(30, 50)[h]))
    return nvml, calls


def test_gpu_samples_reach_the_report(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    nvml, calls = _fake_nvml()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    with Sampler(interval_s=0.01) as sampler:
        start = time.monotonic()
        time.sleep(0.1)
        summary = sampler.summary(start, time.monotonic())
        machine = sampler.machine
    assert calls[-1] == "nvmlShutdown"
    assert machine["gpus"] == ["Fake A", "Fake B"] and machine["gpu_memory_mib"] == 16384
    assert summary["gpu_util_pct"] == 40  # the mean over the GPUs
    assert summary["gpu_mem_mib"] == 4096 and summary["gpu_mem_total_mib"] == 16384
    run = bench.load_runs([RECORDED])[0]
    run["machine"] = machine
    for level in run["levels"]:
        level["machine"] = {**level["machine"], **summary}
    text = bench.report([run], tmp_path).read_text()
    assert "gpus [&#x27;Fake A&#x27;, &#x27;Fake B&#x27;]" in text
    assert text.count("<td>40%</td><td>4096 MiB</td>") == len(run["levels"])
    assert (tmp_path / "resources.png").stat().st_size > 0
    figure = _figures._resources([run])
    gpu = next(ax for ax in figure.axes if ax.get_ylabel() == "GPU (%)")
    lines = {line.get_label(): np.asarray(line.get_ydata()).tolist() for line in gpu.get_lines()}
    plt.close(figure)
    assert lines["GPU utilization (%)"] == [40] * len(run["levels"])
    assert lines["GPU memory used (%)"] == [25] * len(run["levels"])


@pytest.mark.parametrize("fail", ["nvmlInit", "nvmlDeviceGetCount", "nvmlDeviceGetMemoryInfo"])
def test_gpu_sampling_degrades_quietly(monkeypatch: pytest.MonkeyPatch, fail: str) -> None:
    nvml, calls = _fake_nvml(fail)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    with Sampler(interval_s=0.01) as sampler:
        start = time.monotonic()
        time.sleep(0.05)
        summary = sampler.summary(start, time.monotonic())
    assert "gpus" not in sampler.machine
    assert summary.keys() <= {"host_cores"}
    assert all(s.gpu_util_pct is None and s.gpu_mem_mib is None for s in sampler.samples)
    # NVML is shut down exactly when it came up.
    assert ("nvmlShutdown" in calls) == (fail != "nvmlInit")


def test_a_gpu_lost_mid_run_leaves_gaps(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml, _ = _fake_nvml("nvmlDeviceGetUtilizationRates")
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    with Sampler(interval_s=0.01) as sampler:
        time.sleep(0.05)
    assert sampler.machine["gpus"] == ["Fake A", "Fake B"]
    assert sampler.samples and all(s.gpu_util_pct is None for s in sampler.samples)
