"""Machine load during a run, sampled on a thread: host CPU from /proc/stat, and each NVIDIA GPU's
utilization and memory through NVML when nvidia-ml-py and a driver are there."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Sample:
    t: float  # time.monotonic()
    host_cores: float | None  # CPU cores busy on the whole machine since the previous sample
    gpu_util_pct: float | None  # mean over the GPUs
    gpu_mem_mib: float | None  # summed over the GPUs


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs, or None where /proc/stat is not there."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    # guest time is already counted in user time
    total = sum(fields[:8])
    return total - idle, total


class _Gpus:
    """NVML handles of every GPU, or none: no library, no driver or no device all mean none."""

    def __init__(self) -> None:
        self.nvml: Any = None
        self.handles: list[Any] = []
        self.total_mib = 0.0
        self.names: list[str] = []
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception:  # NVML raises its own error types for a missing driver or library
            return
        self.nvml = pynvml
        try:
            handles = [
                pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())
            ]
            names = [pynvml.nvmlDeviceGetName(h) for h in handles]
            total = sum(pynvml.nvmlDeviceGetMemoryInfo(h).total for h in handles)
        except Exception:  # a driver that initializes but cannot describe its GPUs: measure none
            return
        self.handles = handles
        # Older nvidia-ml-py releases hand names over as bytes.
        self.names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        self.total_mib = total / 2**20

    def read(self) -> tuple[float | None, float | None]:
        if not self.handles:
            return None, None
        try:
            util = [self.nvml.nvmlDeviceGetUtilizationRates(h).gpu for h in self.handles]
            mem = [self.nvml.nvmlDeviceGetMemoryInfo(h).used for h in self.handles]
        except Exception:  # a GPU lost mid-run leaves a gap in the samples, not a dead sampler
            return None, None
        return sum(util) / len(util), sum(mem) / 2**20

    def close(self) -> None:
        if self.nvml is not None:
            with contextlib.suppress(Exception):  # the run's figures are in; nothing to lose
                self.nvml.nvmlShutdown()


class Sampler:
    """Samples every ``interval_s`` from start to stop; ``summary(t0, t1)`` averages a window."""

    def __init__(self, interval_s: float = 0.25) -> None:
        self.interval_s = interval_s
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._gpus = _Gpus()
        self._thread = threading.Thread(target=self._run, name="stoker-bench-sampler", daemon=True)

    @property
    def machine(self) -> dict[str, Any]:
        info: dict[str, Any] = {"cpus": os.cpu_count()}
        if self._gpus.handles:
            info["gpus"] = self._gpus.names
            info["gpu_memory_mib"] = round(self._gpus.total_mib)
        return info

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._gpus.close()

    def _run(self) -> None:
        cpus = os.cpu_count() or 1
        before = _cpu_times()
        while not self._stop.wait(self.interval_s):
            now = _cpu_times()
            host = None
            if before is not None and now is not None and now[1] > before[1]:
                host = cpus * (now[0] - before[0]) / (now[1] - before[1])
            before = now
            util, mem = self._gpus.read()
            self.samples.append(Sample(time.monotonic(), host, util, mem))

    def summary(self, t0: float, t1: float) -> dict[str, float]:
        """Means of the samples taken in [t0, t1]; keys only for what was measured."""
        window = [s for s in self.samples if t0 <= s.t <= t1]
        out: dict[str, float] = {}
        for key in ("host_cores", "gpu_util_pct", "gpu_mem_mib"):
            values = [v for s in window if (v := getattr(s, key)) is not None]
            if values:
                out[key] = sum(values) / len(values)
        if "gpu_mem_mib" in out:
            out["gpu_mem_total_mib"] = self._gpus.total_mib
        return out
