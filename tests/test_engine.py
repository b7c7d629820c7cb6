"""The engine on CPU: answers, errors, deadlines, cancellation, priorities, closing, timings."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from typing import Any

import numpy as np
import pytest
import torch
from _imagegen import encode_jpeg, jpeg_rgb
from _models import FailOnDark, GatedNet, OutOfMemoryAbove, TinyNet

import stoker
from stoker import _native

SPEC = stoker.ImageSpec(size=40, crop=32, mean=stoker.IMAGENET_MEAN, std=stoker.IMAGENET_STD)


def images(n: int, seed: int = 0) -> list[bytes]:
    return [jpeg_rgb(48 + i % 5, 50 + i % 7, seed + i) for i in range(n)]


def reference(model: torch.nn.Module, data: list[bytes]) -> torch.Tensor:
    with torch.inference_mode():
        out: torch.Tensor = model(stoker.preprocess_batch(data, SPEC))
    return out


def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError("condition not reached")
        time.sleep(0.001)


def test_results_equal_the_model_on_a_preprocessed_batch() -> None:
    model = TinyNet()
    data = images(20)
    expected = reference(model, data)
    with stoker.Engine(model, SPEC, max_batch_size=8, max_delay_ms=5) as engine:
        futures = [engine.submit(d) for d in data]
        got = torch.stack([f.result(timeout=30) for f in futures])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_async_callers_get_their_own_answers_with_one_wakeup_per_batch() -> None:
    model = TinyNet()
    data = images(48, seed=100)
    expected = reference(model, data).argmax(1).tolist()

    async def main(engine: stoker.Engine) -> tuple[list[Any], int]:
        loop = asyncio.get_running_loop()
        calls = 0
        original = loop.call_soon_threadsafe

        def counting(*args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            return original(*args, **kwargs)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign,assignment]
        results = await asyncio.gather(*(engine.infer(d) for d in data))
        return results, calls

    with stoker.Engine(
        model, SPEC, max_batch_size=16, max_delay_ms=50, postprocess=stoker.top_k(1)
    ) as engine:
        results, wakeups = asyncio.run(main(engine))
        batches = engine.stats()["batch_size"].count
    assert [r[0][0] for r in results] == expected
    assert wakeups == batches
    assert batches < len(data)


def test_a_bad_image_fails_alone() -> None:
    model = TinyNet()
    good = images(6)
    batch: list[bytes] = [*good[:3], b"\xff\xd8\xff garbage", *good[3:]]
    gated = GatedNet()
    with stoker.Engine(gated, SPEC, max_batch_size=8, max_delay_ms=1) as engine:
        futures = [engine.submit(d) for d in batch]
        gated.gate.set()
        with pytest.raises(stoker.CorruptImageError):
            futures[3].result(timeout=30)
        got = [f.result(timeout=30) for i, f in enumerate(futures) if i != 3]
    torch.testing.assert_close(torch.stack(got), reference(model, good), rtol=1e-5, atol=1e-5)


def test_a_failing_model_fails_its_batch_and_the_engine_goes_on() -> None:
    dark = encode_jpeg(np.zeros((40, 40, 3), np.uint8))
    with stoker.Engine(FailOnDark(), SPEC, max_batch_size=4, max_delay_ms=1) as engine:
        with pytest.raises(RuntimeError, match="dark image"):
            engine.infer_sync(dark)
        assert engine.infer_sync(images(1)[0]).shape == (10,)


def test_out_of_device_memory_fails_the_batch_with_a_retryable_error() -> None:
    images = [jpeg_rgb(40 + i, 44, 10 + i) for i in range(4)]
    model = OutOfMemoryAbove(limit=1)
    with stoker.Engine(model, SPEC, max_batch_size=4, max_delay_ms=200) as engine:
        futures = [engine.submit(image) for image in images]
        errors = [f.exception(timeout=30) for f in futures]
        assert all(isinstance(e, stoker.DeviceMemoryError) for e in errors), errors
        assert "out of device memory" in str(errors[0])
        # The engine goes on: a batch that fits runs.
        result = engine.infer_sync(images[0])
    assert result.shape == (10,)


def test_a_full_queue_rejects_at_once() -> None:
    model = GatedNet()
    data = images(1)[0]
    with stoker.Engine(model, SPEC, max_batch_size=1, capacity=4, staging_slots=2) as engine:
        first = engine.submit(data)
        model.entered.wait(10)
        # One batch in the model, one prepared in the other slot, then four waiting.
        accepted = [engine.submit(data)]
        wait_until(lambda: engine.waiting == 0)
        accepted += [engine.submit(data) for _ in range(4)]
        assert engine.waiting == 4
        start = time.perf_counter()
        with pytest.raises(stoker.QueueFullError):
            engine.submit(data)
        assert time.perf_counter() - start < 0.05
        model.gate.set()
        for f in [first, *accepted]:
            f.result(timeout=30)


def test_expired_requests_are_answered_and_never_run() -> None:
    model = GatedNet()
    data = images(1)[0]
    with stoker.Engine(model, SPEC, max_batch_size=1, staging_slots=2) as engine:
        blockers = [engine.submit(data) for _ in range(2)]
        model.entered.wait(10)
        wait_until(lambda: engine.waiting == 0)
        late = engine.submit(data, timeout_ms=20)
        with pytest.raises(stoker.DeadlineExceededError):
            late.result(timeout=10)
        model.gate.set()
        for f in blockers:
            f.result(timeout=30)
    assert model.rows == 2


def test_cancelling_a_waiting_request_removes_it_from_the_queue() -> None:
    model = GatedNet()
    data = images(1)[0]

    async def main(engine: stoker.Engine) -> None:
        blockers = [asyncio.ensure_future(engine.infer(data)) for _ in range(2)]
        await asyncio.to_thread(model.entered.wait, 10)
        await asyncio.to_thread(wait_until, lambda: engine.waiting == 0)
        task = asyncio.ensure_future(engine.infer(data))
        await asyncio.to_thread(wait_until, lambda: engine.waiting == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert engine.waiting == 0
        model.gate.set()
        await asyncio.gather(*blockers)

    with stoker.Engine(model, SPEC, max_batch_size=1, staging_slots=2) as engine:
        asyncio.run(main(engine))
    assert model.rows == 2


def test_high_priority_requests_run_first() -> None:
    model = GatedNet()
    data = images(1)[0]
    order: list[str] = []
    with stoker.Engine(model, SPEC, max_batch_size=1, staging_slots=2) as engine:
        blockers = [engine.submit(data) for _ in range(2)]
        model.entered.wait(10)
        wait_until(lambda: engine.waiting == 0)
        normal = [engine.submit(data) for _ in range(3)]
        high = engine.submit(data, priority="high")
        for f in normal:
            f.add_done_callback(lambda _: order.append("normal"))
        high.add_done_callback(lambda _: order.append("high"))
        model.gate.set()
        for f in [*blockers, *normal, high]:
            f.result(timeout=30)
    assert order[0] == "high"


def test_burst_beyond_capacity_answers_every_accepted_request_exactly_once() -> None:
    model = TinyNet()
    data = images(8)
    answered: list[int] = []
    rejected = 0
    lock = threading.Lock()
    futures = []
    with stoker.Engine(model, SPEC, max_batch_size=16, capacity=64, max_delay_ms=1) as engine:
        for i in range(2000):
            try:
                f = engine.submit(data[i % len(data)])
            except stoker.QueueFullError:
                rejected += 1
                continue

            def done(_: Any, i: int = i) -> None:
                with lock:
                    answered.append(i)

            f.add_done_callback(done)
            futures.append(f)
        for f in futures:
            f.result(timeout=60)
        assert not engine._pending
    assert rejected > 0
    assert sorted(answered) == sorted(set(answered))
    assert len(answered) == len(futures) == 2000 - rejected


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads RSS from /proc")
def test_repeated_bursts_keep_memory_bounded() -> None:
    data = images(8)

    def burst(engine: stoker.Engine) -> int:
        accepted = []
        for i in range(1500):
            with contextlib.suppress(stoker.QueueFullError):
                accepted.append(engine.submit(data[i % len(data)]))
        for f in accepted:
            f.result(timeout=60)
        return len(accepted)

    with stoker.Engine(TinyNet(), SPEC, max_batch_size=16, capacity=64, max_delay_ms=1) as engine:
        burst(engine)  # warm-up: worker buffers, weight caches, allocator pools
        arena = _native.arena_stats()
        rss = _rss_bytes()
        served = sum(burst(engine) for _ in range(5))
        assert served > 0
        assert engine.waiting == 0 and not engine._pending
        after = _native.arena_stats()
        assert after["live_bytes"] == arena["live_bytes"]
        assert after["cached_bytes"] <= arena["cached_bytes"]
        assert _rss_bytes() - rss < 64 << 20


def test_close_answers_queued_requests_and_refuses_new_ones() -> None:
    engine = stoker.Engine(TinyNet(), SPEC, max_batch_size=4, max_delay_ms=1000)
    futures = [engine.submit(d) for d in images(3)]
    engine.close()
    assert all(f.result(timeout=1).shape == (10,) for f in futures)
    with pytest.raises(stoker.EngineClosedError):
        engine.submit(images(1)[0])
    engine.close()


def test_timings_account_for_the_request() -> None:
    with stoker.Engine(TinyNet(), SPEC, max_batch_size=4, max_delay_ms=1) as engine:
        future = engine.submit(images(1)[0], timed=True)
        _, timings = future.result(timeout=30)
        stats = engine.stats()
    assert isinstance(timings, stoker.Timings)
    assert timings.batch_size == 1
    assert all(getattr(timings, s) >= 0 for s in stoker.STAGES)
    parts = timings.queue + timings.preprocess + timings.compute
    assert timings.total >= parts * 0.9
    header = timings.server_timing()
    assert [p.split(";")[0] for p in header.split(", ")] == list(stoker.STAGES)
    assert stats["total"].count == 1 and stats["compute"].count == 1
    assert stats["total"].quantile(0.5) >= stats["compute"].quantile(0.5) * 0.875


def test_postprocess_must_return_one_result_per_request() -> None:
    with stoker.Engine(TinyNet(), SPEC, postprocess=lambda out: [0]) as engine:
        futures = [engine.submit(d) for d in images(2)]
        errors = [f.exception(timeout=30) for f in futures]
    assert any(isinstance(e, ValueError) and "2 requests" in str(e) for e in errors if e)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_delay_ms": -1}, "max_delay_ms"),
        ({"staging_slots": 1}, "staging_slots"),
        ({"device": "meta"}, "device"),
        ({"preferred_batch_sizes": [64]}, "preferred"),
        ({"capacity": 0}, "capacity"),
    ],
)
def test_bad_configuration_is_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        stoker.Engine(TinyNet(), SPEC, **kwargs)


def test_bad_request_arguments_are_refused() -> None:
    with stoker.Engine(TinyNet(), SPEC) as engine:
        with pytest.raises(ValueError, match="priority"):
            engine.submit(b"x", priority="urgent")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="timeout_ms"):
            engine.submit(b"x", timeout_ms=0)


def test_buffers_go_to_the_native_queue_without_copies_and_stay_pinned() -> None:
    model = GatedNet()
    data = images(2)
    frame = bytearray(b"\0" * 10 + data[0] + b"\0" * 10)
    with stoker.Engine(model, SPEC, max_batch_size=2, max_delay_ms=1) as engine:
        sliced = engine.submit(memoryview(frame)[10:-10])
        held = bytearray(data[1])
        whole = engine.submit(held)
        model.entered.wait(10)
        # While queued, the engine's view pins the buffer: it cannot be resized under it.
        with pytest.raises(BufferError):
            held.extend(b"x")
        model.gate.set()
        expected = reference(TinyNet(), data)
        torch.testing.assert_close(sliced.result(timeout=30), expected[0])
        torch.testing.assert_close(whole.result(timeout=30), expected[1])
        wait_until(lambda: not engine._pending)
    held.extend(b"x")  # answered: the view is gone
    with stoker.Engine(TinyNet(), SPEC) as engine:
        with pytest.raises(ValueError, match="contiguous"):
            engine.submit(memoryview(bytes(range(20)))[::2])
        with pytest.raises(TypeError, match="bytes-like"):
            engine.submit("not bytes")  # type: ignore[arg-type]


@pytest.mark.parametrize("largest", [1, 7, 32, 100, 256])
def test_graph_buckets_pad_a_nearly_full_batch_by_a_sixteenth_at_most(largest: int) -> None:
    from stoker._runner import image_buckets

    buckets = image_buckets(largest, None)
    assert buckets == sorted(set(buckets)) and buckets[-1] == largest and buckets[0] == 1
    step = max(1, largest // 16)
    for n in range(1, largest + 1):
        bucket = next(b for b in buckets if b >= n)
        # Below half the maximum, powers of two; above it, at most one step of padding.
        assert bucket - n < (step if 2 * n > largest else n)


def test_preferred_batch_sizes_are_the_graph_buckets_themselves() -> None:
    from stoker._runner import image_buckets

    assert image_buckets(256, [64, 200]) == [64, 200, 256]
