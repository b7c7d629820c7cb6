"""Small models for engine tests."""

from __future__ import annotations

import threading

import torch


class TinyNet(torch.nn.Module):
    """A deterministic small CNN: conv, global pooling, linear."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.fc = torch.nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(torch.relu(self.conv(x)).mean((2, 3)))
        return out


class GatedNet(TinyNet):
    """TinyNet that blocks until ``gate`` is set and counts the rows it has seen."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.rows = 0
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.entered.set()
        if not self.gate.wait(timeout=30):
            raise TimeoutError("test gate never opened")
        self.rows += x.shape[0]
        self.batches.append(x.shape[0])
        return super().forward(x)


class FailOnDark(TinyNet):
    """Raises for any batch holding an almost black image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x.flatten(1).mean(1) < -1.5).any()):
            raise RuntimeError("dark image in batch")
        return super().forward(x)


class OutOfMemoryAbove(TinyNet):
    """Raises the device's out-of-memory error for batches larger than ``limit`` rows, as a
    model that outgrows GPU memory does."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().forward(x)
