"""Hybrid decode glue and share policy on the CPU (the resize runs in Triton's interpreter)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from _imagegen import jpeg_rgb

import stoker
from stoker import _gpu_decode
from stoker._hybrid import DecodeAhead, Decoded, GpuDecoder, SharePolicy

pytest.importorskip("triton")

SPEC = stoker.ImageSpec(size=40, crop=32, layout="NHWC", dtype="uint8")
# The compiled kernel where there is a GPU, Triton's interpreter elsewhere.
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def host_decode(
    payloads: Sequence[bytes], device: torch.device
) -> tuple[list[torch.Tensor | None], dict[int, Exception]]:
    images: list[torch.Tensor | None] = []
    errors: dict[int, Exception] = {}
    for i, p in enumerate(payloads):
        try:
            rgb = torch.from_numpy(np.ascontiguousarray(stoker.decode(p)))
            images.append(rgb.permute(2, 0, 1).to(device))
        except stoker.ImageError as e:
            images.append(None)
            errors[i] = e
    return images, errors


def test_decoder_fills_its_rows_like_the_cpu_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # The torchvision slot, filled with the CPU decode: the resize alone is under test.
    monkeypatch.setenv("STOKER_GPU_DECODER", "torchvision")
    monkeypatch.setattr(_gpu_decode, "gpu_decode_available", lambda device: True)
    monkeypatch.setattr(_gpu_decode, "decode_jpegs", host_decode)
    decoder = GpuDecoder(SPEC, DEVICE)
    images = [jpeg_rgb(50, 64, 1), jpeg_rgb(70, 45, 2)]
    landing = torch.full((4, 32, 32, 3), 7, dtype=torch.uint8, device=DEVICE)
    errors = decoder(landing, [1, 3, 2], [images[0], images[1], b"\xff\xd8\xff junk"])
    assert set(errors) == {2}
    assert isinstance(errors[2], stoker.ImageError)
    expected = torch.from_numpy(stoker.preprocess_batch_numpy(images, SPEC))
    diff = (landing[[1, 3]].cpu().int() - expected.int()).abs()
    assert diff.max().item() <= 1
    assert bool((landing[0] == 7).all()) and bool((landing[2] == 7).all())


def test_decoder_refuses_a_cpu_device() -> None:
    with pytest.raises(ValueError, match="not available"):
        GpuDecoder(SPEC, torch.device("cpu"))


def test_share_follows_the_rates_of_both_paths() -> None:
    policy = SharePolicy(initial=0.25, smoothing=0.5)
    for _ in range(20):
        # CPU: 300 items per 1,000 µs; GPU: 100 items per 1,000 µs -> a quarter to the GPU.
        policy.update(cpu_items=300, cpu_us=1000.0, gpu_items=100, gpu_us=1000.0)
    assert policy.share == pytest.approx(0.25, abs=1e-6)
    for _ in range(30):
        policy.update(cpu_items=100, cpu_us=1000.0, gpu_items=100, gpu_us=100.0)
    assert policy.share == pytest.approx(0.9, abs=1e-3)  # 10/11 capped at 0.9
    before = policy.share
    policy.update(cpu_items=0, cpu_us=0.0, gpu_items=5, gpu_us=10.0)
    assert policy.share == before


@pytest.mark.parametrize("share", [1.5, -0.1, True, "most"])
def test_engine_refuses_bad_gpu_decode_settings(share: object) -> None:
    with pytest.raises(ValueError, match="gpu_decode"):
        stoker.Engine(torch.nn.Identity(), SPEC, gpu_decode=share)  # type: ignore[arg-type]


def test_gpu_decode_needs_cuda() -> None:
    with pytest.raises(ValueError, match="CUDA"):
        stoker.Engine(torch.nn.Identity(), SPEC, gpu_decode=0.5)


class _Feeder:
    """Hands out `count` batches of two requests each, from any thread, then None."""

    def __init__(self, count: int) -> None:
        self._lock = threading.Lock()
        self._left = list(range(count))

    def next(self) -> Any:
        with self._lock:
            if not self._left:
                return None
            k = self._left.pop(0)
        return SimpleNamespace(ids=np.array([2 * k, 2 * k + 1]), deferred=[1] if k % 3 else [])


class _SlowDecoder:
    def __init__(self) -> None:
        self.threads: set[str] = set()

    def decode(self, payloads: Sequence[bytes]) -> Decoded:
        self.threads.add(threading.current_thread().name)
        time.sleep(0.01)
        if payloads == [b"9"]:
            raise RuntimeError("bad batch")
        return Decoded([None] * len(payloads), {}, host_us=1.0)


@pytest.mark.parametrize("workers", [1, 3])
def test_decode_ahead_hands_on_every_batch_once_then_the_end(workers: int) -> None:
    decoder = _SlowDecoder()
    ahead = DecodeAhead(_Feeder(30), decoder, lambda rid: str(rid).encode(), workers)  # type: ignore[arg-type]
    for t in ahead.threads:
        t.start()
    seen: list[int] = []
    failed: list[int] = []
    while (item := ahead.next()) is not None:
        batch, decoded = item
        k = int(batch.ids[0]) // 2
        seen.append(k)
        if k % 3 == 0:
            assert decoded is None  # nothing deferred: no decode
        elif isinstance(decoded, Exception):
            failed.append(k)
        else:
            assert isinstance(decoded, Decoded) and len(decoded.images) == 1
    for t in ahead.threads:
        t.join(timeout=5)
    assert sorted(seen) == list(range(30))
    assert failed == [4]  # request 9 is batch 4's deferred row: that batch alone fails
    assert len(decoder.threads) == workers


def test_decode_ahead_needs_a_worker() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        DecodeAhead(_Feeder(1), _SlowDecoder(), lambda rid: b"", 0)  # type: ignore[arg-type]
