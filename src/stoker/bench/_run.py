"""A sweep: closed-loop levels (a fixed number of connections, each sending its next request when
the last is answered), then open-loop levels (Poisson arrivals at a fixed rate), each with a
warm-up that is not counted, a measured window and a progress line."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TextIO

from stoker.bench import _stats
from stoker.bench._sample import Sampler

SATURATED = 0.8
"""Generator CPU, in cores per generator thread, above which its own figures are suspect: a busy
event loop reads answers late, which inflates latency and caps throughput."""

LATE_SHARE = 0.05
"""Open loop: the share of requests sent over 1 ms after their scheduled time above which the
offered rate no longer describes the load (their latency still counts from the schedule)."""


_NATIVE_ADVICE = {
    "saturated": "raise --gen-threads",
    "late": "either every connection was waiting on the server (raise --open-connections) or the "
    "generator lacked CPU",
}


@dataclass(frozen=True)
class Plan:
    concurrency: tuple[int, ...] = (1, 4, 16)  # closed loop: connections per level
    rates: tuple[float, ...] = ()  # open loop: requests per second
    rate_fractions: tuple[float, ...] = ()  # open loop: shares of the closed-loop peak
    open_connections: int = 64  # open loop: connections that arrivals are spread over
    seconds: float = 5.0  # measured window per level
    warmup_s: float = 1.0
    max_requests: int = 0  # per level, 0 = bounded by time alone
    timeout_s: float = 30.0
    gen_threads: int = 1
    seed: int = 1

    def __post_init__(self) -> None:
        if not self.concurrency and not self.rates:
            raise ValueError("give at least one concurrency level or open-loop rate")
        if self.rate_fractions and not self.concurrency:
            raise ValueError("rate fractions are shares of the closed-loop peak: give concurrency")
        if any(c < 1 for c in self.concurrency) or any(r <= 0 for r in self.rates):
            raise ValueError("concurrency levels and rates must be positive")
        if any(f <= 0 for f in self.rate_fractions):
            raise ValueError("rate fractions must be positive")


class Load(Protocol):
    """One level's load, started, polled and waited for: the native HTTP generator, or the
    in-process engine's driver, which returns a report of the same shape."""

    @property
    def completed(self) -> int: ...
    @property
    def done(self) -> bool: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def wait(self) -> dict[str, Any]: ...


class Driven(Protocol):
    """What a sweep drives: a server over HTTP, or stoker's engine in this process."""

    @property
    def label(self) -> str: ...
    @property
    def description(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def settings(self) -> dict[str, Any]: ...
    def requests(self, groups: Sequence[Sequence[bytes]]) -> Sequence[Any]:
        """What one request carries, per group of encoded images."""

    def load(self, requests: Sequence[Any], plan: Plan, connections: int, rate: float) -> Load:
        """The load of one level: ``connections`` in flight, or Poisson arrivals at ``rate``."""


def run(
    endpoint: Driven,
    requests: Sequence[Any],
    plan: Plan,
    *,
    images: dict[str, Any],
    progress: TextIO | None = None,
    echo: TextIO | None = None,
) -> dict[str, Any]:
    """Every level of ``plan`` against ``endpoint``; returns the run as a JSON-ready document."""
    echo = echo or sys.stdout  # looked up per call: callers may redirect sys.stdout
    levels: list[dict[str, Any]] = []
    with Sampler() as sampler:
        echo.write(f"{endpoint.label}: {endpoint.description}\n")
        for c in plan.concurrency:
            level = _level(endpoint, requests, plan, c, 0.0, sampler, progress, echo, f"c={c}")
            levels.append(level)
        peak = max((lv["throughput"] for lv in levels), default=0.0)
        # Shares of each run's own peak: two servers compared at the same strain, not the same rate.
        rates = [(r, f"{r:g}/s", f"{r:g}/s") for r in plan.rates]
        rates += [
            (peak * f, f"{f:g} of peak", f"{f:.0%} of peak ({peak * f:.0f}/s)")
            for f in plan.rate_fractions
        ]
        for rate, key, name in rates:
            if rate <= 0:
                echo.write(f"  skipped {name}: no request succeeded at any closed-loop level\n")
                continue
            args = (plan.open_connections, rate, sampler, progress, echo, key, name)
            levels.append(_level(endpoint, requests, plan, *args))
        machine = sampler.machine
    return {
        "label": endpoint.label,
        "description": endpoint.description,
        "model": endpoint.model,
        "settings": endpoint.settings,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "plan": asdict(plan),
        "images": images,
        "machine": machine,
        "levels": levels,
        "peak_throughput": max(lv["throughput"] for lv in levels),
    }


def _level(
    endpoint: Driven,
    requests: Sequence[Any],
    plan: Plan,
    connections: int,
    rate: float,
    sampler: Sampler,
    progress: TextIO | None,
    echo: TextIO,
    key: str,
    name: str | None = None,
) -> dict[str, Any]:
    name = name or key
    gen = endpoint.load(requests, plan, connections, rate)
    start = time.monotonic()
    gen.start()
    try:
        while not gen.done:
            if progress is not None:
                _show(progress, endpoint.label, name, time.monotonic() - start, gen.completed, plan)
            time.sleep(0.2)
    except KeyboardInterrupt:
        gen.stop()
        raise
    report: dict[str, Any] = gen.wait()
    if progress is not None:
        progress.write("\r\033[K")
    # The engine is driven from one thread whatever --gen-threads gives the HTTP generator.
    threads = int(report.get("threads", plan.gen_threads))
    level = {"key": key, **summarize(report, name, connections, rate, threads)}
    level["machine"] = sampler.summary(start + plan.warmup_s, time.monotonic())
    level["warnings"] += _machine_warnings(level["machine"], sampler.machine["cpus"])
    echo.write(line(level) + "\n")
    for warning in level["warnings"]:
        echo.write(f"    warning: {warning}\n")
    return level


def _show(out: TextIO, label: str, name: str, t: float, done: int, plan: Plan) -> None:
    phase = (
        f"warm-up {t:.1f}/{plan.warmup_s:g} s"
        if t < plan.warmup_s
        else f"{t - plan.warmup_s:.1f}/{plan.seconds:g} s, {done} answers"
    )
    out.write(f"\r\033[K  {label} {name}: {phase}")
    out.flush()


def summarize(
    report: dict[str, Any], name: str, connections: int, rate: float, gen_threads: int
) -> dict[str, Any]:
    """One level's figures from the generator's report; a report of the engine's driver brings
    its own ``advice`` for the warnings."""
    elapsed = max(report["elapsed_s"], 1e-9)
    latency = _stats.snapshot(report["latency"])
    timing = {k: _stats.snapshot(v) for k, v in report["server_timing"].items()}
    statuses = {int(k): int(v) for k, v in report["statuses"].items()}
    ok = sum(n for code, n in statuses.items() if 200 <= code < 300)
    errors = {str(code): n for code, n in sorted(statuses.items()) if not 200 <= code < 300}
    if report["timeouts"]:
        errors["timeout"] = int(report["timeouts"])
    if report["transport_errors"]:
        errors["transport"] = int(report["transport_errors"])
    gen_cores = report["cpu_s"] / elapsed
    warnings = []
    advice = {**_NATIVE_ADVICE, **report.get("advice", {})}
    if gen_cores >= SATURATED * gen_threads:
        warnings.append(
            f"the load generator is saturated ({gen_cores:.2f} cores on {gen_threads} thread(s)):"
            f" its latencies read high and its throughput low; {advice['saturated']}"
        )
    if rate and (report["unsent"] or report["late"] > LATE_SHARE * report["sent"]):
        warnings.append(
            f"the offered rate was not kept ({report['late']} of {report['sent']} requests sent "
            f"over 1 ms late, {report['unsent']} never sent): {advice['late']}"
        )
    return {
        "name": name,
        "mode": "open" if rate else "closed",
        "connections": connections,
        "offered_rate": rate or None,  # open loop
        "elapsed_s": report["elapsed_s"],
        "sent": int(report["sent"]),
        "completed": int(report["completed"]),
        "ok": ok,
        "throughput": ok / elapsed,
        "latency_ms": _stats.quantiles_ms(latency),
        "latency_histogram": _stats.to_json(latency),
        "errors": errors,
        "late": int(report["late"]),
        "unsent": int(report["unsent"]),
        "stages_ms": _stats.stage_means_ms(timing),
        "orchestration_share": _stats.orchestration_share(timing),
        "generator": {"cpu_cores": gen_cores, "threads": gen_threads},
        "warnings": warnings,
    }


def _machine_warnings(machine: dict[str, float], cpus: int | None) -> list[str]:
    busy = machine.get("host_cores")
    if busy is None or cpus is None or busy < 0.95 * cpus:
        return []
    return [
        f"the machine's CPUs were all busy ({busy:.1f} of {cpus}): the generator and the server "
        "competed for them, so the server's figures are a lower bound"
    ]


def line(level: dict[str, Any]) -> str:
    """A level as one line of text."""
    q = level["latency_ms"]
    share = level["orchestration_share"]
    errors = sum(level["errors"].values())
    return (
        f"  {level['name']:>9}  {level['throughput']:9.1f} req/s  p50 {q['p50']:7.2f}  "
        f"p90 {q['p90']:7.2f}  p99 {q['p99']:7.2f}  p99.9 {q['p99.9']:7.2f} ms  "
        f"errors {errors}  orchestration {'-' if share is None else f'{share:.0%}'}  "
        f"generator {level['generator']['cpu_cores']:.2f} cores"
    )
