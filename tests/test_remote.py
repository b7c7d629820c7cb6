"""The generation engine in a process of its own (``RemoteEngine``): the same tokens as in
process, aborts, refusals, and a child that fails to start or dies (served: test_generate)."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
pytest.importorskip("safetensors")

from stoker.generate import (  # noqa: E402
    GenerationChunk,
    GenerationError,
    GeneratorStats,
    RemoteEngine,
    SamplingOptions,
)
from stoker.generate._remote import _Child, _portable  # noqa: E402
from stoker.generate._requests import Request  # noqa: E402

GREEDY = SamplingOptions(max_tokens=12, temperature=0.0, ignore_eos=True)
PROMPTS = [[5, 6, 7], [11, 12, 13, 14, 15, 16, 17], [40] * 30, [3, 9, 27, 81]]


@pytest.fixture(scope="module")
def remote(llama: Path) -> Iterator[RemoteEngine]:
    engine = RemoteEngine(llama, max_num_seqs=4, block_size=8)
    yield engine
    engine.close()


async def _collect(engine: Any, prompt: list[int], options: SamplingOptions) -> list[int]:
    got: list[int] = []
    async for chunk in engine.stream(prompt, options):
        got += chunk.token_ids
    return got


async def _settled(engine: RemoteEngine) -> Any:
    """The child's counters once nothing runs. They arrive on the loop that streams, within the
    child's 0.1 s posting period, so this waits on that loop."""
    for _ in range(100):
        stats = engine.stats()
        if stats.running == 0 and stats.kv_blocks_free == stats.kv_blocks:
            return stats
        await asyncio.sleep(0.02)
    return engine.stats()


def test_remote_streams_the_in_process_tokens(
    llama: Path, remote: RemoteEngine, engine_of: Any
) -> None:
    expected = engine_of(llama, max_num_seqs=4, block_size=8).generate(PROMPTS, GREEDY)

    async def all_at_once() -> tuple[list[list[int]], Any]:
        got = await asyncio.gather(*(_collect(remote, p, GREEDY) for p in PROMPTS))
        return list(got), await _settled(remote)

    before = remote.stats().generated_tokens
    got, stats = asyncio.run(all_at_once())
    assert got == expected
    assert stats.generated_tokens - before == sum(map(len, expected))
    assert stats.decode_steps.count + stats.prompt_steps.count == stats.steps > 0
    assert remote.max_model_len > 0 and remote.tokenizer.get_vocab_size() > 0


def test_leaving_a_remote_stream_aborts_and_frees_blocks(remote: RemoteEngine) -> None:
    long = SamplingOptions(max_tokens=400, temperature=0.0, ignore_eos=True)

    async def take_three() -> tuple[list[int], Any]:
        got: list[int] = []
        async for chunk in remote.stream(PROMPTS[1], long):
            got += chunk.token_ids
            if len(got) >= 3:
                break
        return got, await _settled(remote)

    got, stats = asyncio.run(take_three())
    assert 3 <= len(got) < 400
    assert stats.running == 0 and stats.kv_blocks_free == stats.kv_blocks
    # Cancelling a waiting caller aborts too.

    async def cancel_one() -> Any:
        task = asyncio.ensure_future(_collect(remote, PROMPTS[0], long))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await _settled(remote)

    stats = asyncio.run(cancel_one())
    assert stats.running == 0 and stats.kv_blocks_free == stats.kv_blocks


def test_remote_refusals_name_the_problem(remote: RemoteEngine) -> None:
    async def refused(prompt: list[int], options: SamplingOptions) -> None:
        await _collect(remote, prompt, options)

    with pytest.raises(GenerationError, match="exceeds"):
        asyncio.run(refused([5] * 10, SamplingOptions(max_tokens=10**6)))
    with pytest.raises(GenerationError, match="token ids"):
        asyncio.run(refused([10**6], GREEDY))
    with pytest.raises(GenerationError, match="top_p"):
        asyncio.run(refused([5], SamplingOptions(top_p=0.0)))
    assert len(asyncio.run(_collect(remote, [5, 6], GREEDY))) == GREEDY.max_tokens


def test_a_remote_engine_serves_one_loop_at_a_time(remote: RemoteEngine) -> None:
    errors: list[BaseException] = []

    def elsewhere() -> None:
        try:
            asyncio.run(_collect(remote, [5], GREEDY))
        except BaseException as e:
            errors.append(e)

    async def first() -> None:
        await _collect(remote, [5], GREEDY)
        other = threading.Thread(target=elsewhere)
        other.start()
        await asyncio.to_thread(other.join)

    asyncio.run(first())
    assert len(errors) == 1 and "one event loop" in str(errors[0])
    # Once the first loop is closed, another may take over.
    assert len(asyncio.run(_collect(remote, [7], GREEDY))) == GREEDY.max_tokens


def test_an_engine_that_cannot_start_says_why(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        RemoteEngine(tmp_path / "missing")


def test_a_dead_engine_process_fails_its_streams(llama: Path) -> None:
    engine = RemoteEngine(llama, max_num_seqs=2)
    long = SamplingOptions(max_tokens=500, temperature=0.0, ignore_eos=True)

    async def killed_midway() -> None:
        got: list[int] = []
        with pytest.raises(RuntimeError, match="exited"):
            async for chunk in engine.stream([5, 6, 7], long):
                got += chunk.token_ids
                if len(got) >= 2 and engine._process.poll() is None:
                    engine._process.kill()
        assert 2 <= len(got) < 500
        with pytest.raises(RuntimeError, match="exited"):
            await _collect(engine, [5], GREEDY)

    try:
        asyncio.run(killed_midway())
    finally:
        engine.close()
    assert engine._process.returncode is not None


class _RecordingEngine:
    """Stands in for the child's GenerateEngine: takes every submission, runs nothing."""

    def __init__(self) -> None:
        self.submitted: list[list[int]] = []

    def stats(self) -> GeneratorStats:
        return GeneratorStats()

    def submit(self, prompt: list[int], options: SamplingOptions, outlet: Any) -> Any:
        self.submitted.append(prompt)
        return len(self.submitted), Request(prompt, options, outlet)


def test_the_child_reads_submissions_while_its_parent_reads_nothing() -> None:
    # The parent reads and writes the pipe on one event loop. When it is busy writing
    # submissions, the child's steps pile up unread; the child must still read, or each end
    # waits for the other forever.
    parent, end = multiprocessing.Pipe()
    engine = _RecordingEngine()
    child = _Child(engine, end)  # type: ignore[arg-type]
    for target in (child.send_refusals, child.serve):
        threading.Thread(target=target, daemon=True).start()
    parent.send(("submit", 0, [1], GREEDY))
    for _ in range(500):
        if child._seqs:
            break
        time.sleep(0.01)
    request = child._seqs[0][1]
    step = GenerationChunk([7] * 50_000)  # about 100 kB a message: a few fill the pipe

    def post_steps() -> None:
        for _ in range(40):
            child.hand_out([(request, step)], None)

    prompts = [[i] * 20_000 for i in range(1, 40)]

    def submit_all() -> None:
        for i, prompt in enumerate(prompts, 1):
            parent.send(("submit", i, prompt, GREEDY))

    threading.Thread(target=post_steps, daemon=True).start()
    writer = threading.Thread(target=submit_all, daemon=True)
    writer.start()
    writer.join(10)
    stuck = writer.is_alive()
    received = 0
    while parent.poll(1):  # unblocks whatever still waits, whichever way the test ends
        kind, items, error, _ = parent.recv()
        assert kind == "chunks" and error is None
        received += len(items)
    writer.join(10)
    assert not stuck, "the child stopped reading while its messages waited to be read"
    assert engine.submitted == [[1], *prompts]
    assert received == 40
    child.stop_refusals()


class _TwoPartError(Exception):
    def __init__(self, where: str, what: str) -> None:
        super().__init__(f"{where}: {what}")


def test_errors_that_cannot_cross_the_pipe_arrive_as_runtime_errors() -> None:
    plain = GenerationError("prompt too long")
    assert _portable(plain) is plain
    # Pickles, but unpickling calls the constructor with the message alone.
    sent = _portable(_TwoPartError("kernel", "does not compile"))
    assert type(sent) is RuntimeError
    assert str(sent) == "_TwoPartError: kernel: does not compile"
    unpicklable = ValueError(lambda: None)
    assert type(_portable(unpicklable)) is RuntimeError
