"""Scheduler + KV block manager cost per decode step: native against the pure-Python reference.

N sequences (prompts of 100-1,024 tokens, block size 16) are prefilled until every one decodes;
then each timed step is ``schedule()`` plus ``update()`` with one sampled token per sequence, for
N in 64..1,024. Three implementations of the same policies go through the same states step for
step (the workload comes from splitmix64 with a fixed seed, here and in the C++ benchmark):

- C++: ``build/bench/bench_scheduler`` (``make bench-native`` builds it), run as a subprocess;
- bindings: ``stoker._native.Scheduler`` from Python, reading every array of each step as the
  engine does, so the Python-C++ crossing and the numpy conversions are included;
- reference: ``tests/_scheduler_reference.py`` on ``tests/_kv_reference.py``, whose steps are
  plain lists (it is spared the array conversions).

Bindings and reference run in the same process, round by round, one after the other; the garbage
collector stays on, as in an engine.

    .venv/bin/python benchmarks/bench_scheduler.py
    .venv/bin/python benchmarks/bench_scheduler.py --sizes 64,256 --steps 100 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from stoker._native import Scheduler, SchedulerStep

ROOT = Path(__file__).resolve().parent.parent

# Must match csrc/bench/bench_scheduler.cpp, or the C++ column measures another workload.
SEED = 20261123
BLOCK_SIZE = 16
VOCAB = 32000
MIN_PROMPT = 100
MAX_PROMPT = 1024
BATCHED_TOKENS = 8192
PREFILL_STEPS_BOUND = 1024
MASK64 = (1 << 64) - 1
BAR_SEQS = 256
BAR_US = 50.0
IMPLS = ("cpp", "bindings", "reference")


def splitmix64(state: int) -> tuple[int, int]:
    """The next state and its output."""
    state = (state + 0x9E3779B97F4A7C15) & MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return state, z ^ (z >> 31)


def make_prompts(n: int) -> list[list[int]]:
    """The first token is the index, so that no two prompts share a prefix-cached block."""
    state = SEED
    prompts = []
    for i in range(n):
        state, x = splitmix64(state)
        prompt = [i]
        for _ in range(MIN_PROMPT + x % (MAX_PROMPT - MIN_PROMPT + 1) - 1):
            state, x = splitmix64(state)
            prompt.append(x % VOCAB)
        prompts.append(prompt)
    return prompts


def sampled_tokens(step: int, count: int) -> list[int]:
    return [(step * 7919 + row * 104729 + 1) % VOCAB for row in range(count)]


StepT_co = TypeVar("StepT_co", covariant=True)


class SchedulerLike(Protocol[StepT_co]):
    def add(self, seq: int, prompt: list[int], max_new_tokens: int) -> None: ...
    def schedule(self) -> StepT_co: ...
    def update(self, sampled: list[int]) -> list[tuple[int, list[int], str]]: ...


StepT = TypeVar("StepT")


class ReferenceStep(Protocol):
    slot_mapping: list[int]
    sample: list[int]
    preempted: list[int]


def reference_scheduler() -> Callable[[int, int, int, int], SchedulerLike[ReferenceStep]]:
    """tests/_scheduler_reference.py's class, imported at run time: it lives beside the tests."""
    sys.path.insert(0, str(ROOT / "tests"))
    make: Callable[[int, int, int, int], SchedulerLike[ReferenceStep]]
    make = importlib.import_module("_scheduler_reference").ReferenceScheduler
    return make


def read_native(step: SchedulerStep) -> tuple[int, int]:
    """What the engine takes from a step (every array); returns (samples, preemptions)."""
    arrays = (
        step.input_ids,
        step.positions,
        step.seq_ids,
        step.query_lens,
        step.context_lens,
        step.block_tables,
        step.slot_mapping,
        step.copies,
        step.sample,
        step.preempted,
    )
    return len(arrays[8]), len(arrays[9])


def read_reference(step: ReferenceStep) -> tuple[int, int]:
    return len(step.sample), len(step.preempted)


class Driver(Generic[StepT]):
    """One scheduler, fed the benchmark's workload and sampled tokens."""

    def __init__(
        self,
        n: int,
        make: Callable[[int, int, int, int], SchedulerLike[StepT]],
        read: Callable[[StepT], tuple[int, int]],
        steps_after_prefill: int,
    ) -> None:
        self.n = n
        max_new = PREFILL_STEPS_BOUND + steps_after_prefill + 1
        num_blocks = n * (-(-(MAX_PROMPT + max_new) // BLOCK_SIZE) + 1)
        self.sched = make(num_blocks, BLOCK_SIZE, max(BATCHED_TOKENS, n), n)
        self.read = read
        for i, prompt in enumerate(make_prompts(n)):
            self.sched.add(i, prompt, max_new)
        self.step = 0  # counts every step, prefill included, as the C++ benchmark does

    def _tokens(self, count: int) -> list[int]:
        tokens = sampled_tokens(self.step, count)
        self.step += 1
        return tokens

    def prefill(self) -> int:
        """Steps until one schedules nothing but the N decode rows."""
        for steps in range(1, PREFILL_STEPS_BOUND + 1):
            step: Any = self.sched.schedule()
            rows = len(step.seq_ids)
            decoding = rows == self.n and max(int(q) for q in step.query_lens) == 1
            if self.sched.update(self._tokens(len(step.sample))):
                raise RuntimeError(f"N={self.n}: a sequence finished during prefill")
            if decoding:
                return steps
        raise RuntimeError(f"N={self.n}: prefill did not finish")

    def timed_step(self) -> float:
        """One decode step, in microseconds."""
        tokens = self._tokens(self.n)
        start = time.perf_counter_ns()
        step = self.sched.schedule()
        sampled, preempted = self.read(step)
        finished = self.sched.update(tokens)
        del step
        elapsed = time.perf_counter_ns() - start
        if sampled != self.n or preempted or finished:
            raise RuntimeError(f"N={self.n}: a step that is not N plain decode rows")
        return elapsed / 1000


@dataclass
class Figures:
    median_us: float
    p90_us: float
    round_min_us: float
    round_max_us: float


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest rank, as the C++ benchmark computes it."""
    ordered = sorted(values)
    return ordered[max(math.ceil(p * len(ordered)), 1) - 1]


def figures(rounds: list[list[float]]) -> Figures:
    flat = [t for r in rounds for t in r]
    medians = [statistics.median(r) for r in rounds]
    return Figures(statistics.median(flat), percentile(flat, 0.9), min(medians), max(medians))


def measure_python(n: int, steps: int, rounds: int, warmup: int) -> dict[str, Any]:
    after = warmup + steps * rounds
    bindings = Driver(n, Scheduler, read_native, after)
    reference = Driver(n, reference_scheduler(), read_reference, after)
    prefill = bindings.prefill()
    if reference.prefill() != prefill:
        raise RuntimeError(f"N={n}: the implementations disagree on the prefill")
    for _ in range(warmup):
        bindings.timed_step()
        reference.timed_step()
    times: dict[str, list[list[float]]] = {"bindings": [], "reference": []}
    for _ in range(rounds):
        times["bindings"].append([bindings.timed_step() for _ in range(steps)])
        times["reference"].append([reference.timed_step() for _ in range(steps)])
    # The same states step for step, or the comparison means little: check one more step.
    native_slots = [int(s) for s in bindings.sched.schedule().slot_mapping]
    if native_slots != reference.sched.schedule().slot_mapping:
        raise RuntimeError(f"N={n}: the implementations diverged")
    return {
        "prefill_steps": prefill,
        "bindings": asdict(figures(times["bindings"])),
        "reference": asdict(figures(times["reference"])),
    }


def run_native(
    binary: Path, sizes: Sequence[int], steps: int, rounds: int, warmup: int
) -> dict[int, dict[str, Any]]:
    if not binary.exists():
        print(f"{binary} is missing (make bench-native builds it): no C++ column\n")
        return {}
    command = [str(binary), "--sizes", ",".join(map(str, sizes)), "--steps", str(steps)]
    command += ["--rounds", str(rounds), "--warmup", str(warmup), "--json"]
    out = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    return {int(row["seqs"]): row for row in out["rows"]}


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,128,256,512,1024", help="running sequences, N")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=20, help="untimed decode steps first")
    parser.add_argument("--native-bin", type=Path, default=ROOT / "build/bench/bench_scheduler")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    machine = {
        "cpu": cpu_model(),
        "cpus": cpus,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
    }
    print(f"{machine['cpu']}, {cpus} CPUs, Python {machine['python']}, numpy {machine['numpy']}")
    print(
        f"block size {BLOCK_SIZE}, prompts {MIN_PROMPT}-{MAX_PROMPT} tokens, "
        f"{args.rounds} rounds x {args.steps} steps after {args.warmup} warm-up steps\n"
    )

    native = run_native(args.native_bin, sizes, args.steps, args.rounds, args.warmup)
    rows: list[dict[str, Any]] = []
    for n in sizes:
        row: dict[str, Any] = {"seqs": n, **measure_python(n, args.steps, args.rounds, args.warmup)}
        if n in native:
            cpp = native[n]
            if cpp["prefill_steps"] != row["prefill_steps"]:
                raise RuntimeError(f"N={n}: the C++ benchmark ran another workload")
            row["cpp"] = {k: cpp[k] for k in ("median_us", "p90_us", "round_min_us")}
            row["cpp"] |= {k: cpp[k] for k in ("round_max_us", "schedule_us", "update_us")}
        rows.append(row)
        print(f"  N={n}: done", flush=True)

    def cell(row: dict[str, Any], impl: str) -> str:
        if impl not in row:
            return "-"
        f = row[impl]
        return f"{f['median_us']:,.1f} ({f['p90_us']:,.1f})"

    def ratio(row: dict[str, Any], num: str, den: str) -> str:
        if num not in row or den not in row:
            return "-"
        return f"{row[num]['median_us'] / row[den]['median_us']:,.1f}x"

    print(
        "\nµs per decode step, median (p90):\n\n"
        "| seqs | C++ | bindings | reference | reference ÷ C++ | reference ÷ bindings "
        "| bindings ÷ C++ |\n|---|---|---|---|---|---|---|"
    )
    for row in rows:
        print(
            f"| {row['seqs']:,} | {cell(row, 'cpp')} | {cell(row, 'bindings')} "
            f"| {cell(row, 'reference')} | {ratio(row, 'reference', 'cpp')} "
            f"| {ratio(row, 'reference', 'bindings')} | {ratio(row, 'bindings', 'cpp')} |"
        )
    print("\nµs per sequence per step (median ÷ N):\n\n| seqs | C++ | bindings | reference |")
    print("|---|---|---|---|")
    for row in rows:
        per = [f"{row[i]['median_us'] / row['seqs']:.3f}" if i in row else "-" for i in IMPLS]
        print(f"| {row['seqs']:,} | {' | '.join(per)} |")
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        growth = [
            f"{i} {last[i]['median_us'] / first[i]['median_us']:.1f}x"
            for i in IMPLS
            if i in first and i in last
        ]
        print(f"\n{first['seqs']} -> {last['seqs']} sequences: " + ", ".join(growth))
    bar = next((r for r in rows if r["seqs"] == BAR_SEQS), None)
    if bar is not None:
        for impl in ("cpp", "bindings"):
            if impl in bar:
                us = bar[impl]["median_us"]
                verdict = "met" if us <= BAR_US else "NOT met"
                print(f"bar, {BAR_SEQS} sequences, {impl}: {us:.1f} µs (≤ {BAR_US:.0f}): {verdict}")

    if args.json:
        record = {
            "benchmark": "scheduler",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine,
            "steps": args.steps,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "rows": rows,
        }
        args.json.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
