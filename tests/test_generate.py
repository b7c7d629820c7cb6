"""The generation engine against Hugging Face transformers on tiny random-weight models.

Greedy decoding must give the reference's tokens exactly, also when the scheduler chunks prompts,
preempts sequences and serves prefixes from the cache.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
pytest.importorskip("safetensors")

from _support import free_port, uvicorn_thread  # noqa: E402
from _tiny_llm import build_model  # noqa: E402

from stoker.generate import (  # noqa: E402
    STEP_BUCKETS,
    GenerationChunk,
    GenerationError,
    SamplingOptions,
    read_config,
)

GREEDY = SamplingOptions(max_tokens=20, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model(tmp_path_factory.mktemp("qwen3"), "qwen3", seed=2, tie_word_embeddings=True)


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model(tmp_path_factory.mktemp("qwen2"), "qwen2", seed=3)


def _prompts(n: int, seed: int, lengths: tuple[int, int] = (3, 60)) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(lengths[0], lengths[1], (n,), generator=g).tolist()
    return [torch.randint(3, 300, (s,), generator=g).tolist() for s in sizes]


def _reference(folder: Path, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    out = []
    for p in prompts:
        ids = model.generate(
            torch.tensor([p]),
            max_new_tokens=max_tokens,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
        out.append(ids[0, len(p) :].tolist())
    return out


@pytest.mark.parametrize("family", ["llama", "qwen3", "qwen2"])
def test_greedy_matches_transformers(
    family: str, request: pytest.FixtureRequest, engine_of: Any
) -> None:
    folder = request.getfixturevalue(family)
    prompts = _prompts(6, seed=7)
    engine = engine_of(folder, max_num_seqs=4)
    assert engine.generate(prompts, GREEDY) == _reference(folder, prompts, GREEDY.max_tokens)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_cuda_greedy_matches_transformers_with_and_without_graphs(
    family: str, request: pytest.FixtureRequest, engine_of: Any
) -> None:
    folder = request.getfixturevalue(family)
    prompts = _prompts(6, seed=21)
    reference = _reference(folder, prompts, GREEDY.max_tokens)
    for graphs in (True, False):
        engine = engine_of(
            folder, device="cuda", dtype=torch.float32, max_num_seqs=8, cuda_graphs=graphs
        )
        assert (engine.runner.graphs is not None) == graphs
        assert engine.generate(prompts, GREEDY) == reference


def test_greedy_survives_chunking_and_preemption(llama: Path, engine_of: Any) -> None:
    prompts = _prompts(8, seed=11, lengths=(20, 90))
    # 24 blocks of 8 tokens cannot hold eight sequences of up to 110 tokens at once, and a
    # 32-token budget splits every long prompt into chunks.
    engine = engine_of(
        llama, max_num_seqs=6, block_size=8, num_blocks=24, max_num_batched_tokens=32
    )
    got = engine.generate(prompts, GREEDY)
    stats = engine.stats()
    assert stats.preemptions > 0
    assert stats.kv_blocks_free == stats.kv_blocks == 24
    assert got == _reference(llama, prompts, GREEDY.max_tokens)


@pytest.mark.parametrize("ahead", [True, False])
def test_step_times_count_every_step_by_kind(llama: Path, engine_of: Any, ahead: bool) -> None:
    prompts = _prompts(6, seed=17, lengths=(40, 90))
    # A 32-token budget takes several steps per prompt; decoding goes on alone after.
    engine = engine_of(llama, max_num_seqs=6, max_num_batched_tokens=32, schedule_ahead=ahead)
    before = engine.stats()
    assert before.decode_steps.count == before.prompt_steps.count == 0
    engine.generate(prompts, GREEDY)
    stats = engine.stats()
    decode, prompt = stats.decode_steps, stats.prompt_steps
    # The smallest prompt alone needs two steps; decoding needs max_tokens - 1 more.
    assert prompt.count >= 2 and decode.count >= GREEDY.max_tokens - 1
    assert decode.count + prompt.count == stats.steps
    assert decode.seconds > 0 and prompt.seconds > 0
    assert len(decode.counts) == len(STEP_BUCKETS) + 1


def test_scheduling_ahead_changes_no_token(llama: Path, engine_of: Any) -> None:
    prompts = _prompts(8, seed=13, lengths=(20, 90))
    small = {"max_num_seqs": 6, "block_size": 8, "num_blocks": 24, "max_num_batched_tokens": 32}
    waiting = engine_of(llama, schedule_ahead=False, **small)
    free_run = waiting.generate(prompts, GREEDY)
    # Stop tokens end some sequences early: a step scheduled ahead has run their next row.
    stops = tuple(tokens[len(tokens) // 2] for tokens in free_run[:3])
    options = [
        SamplingOptions(
            max_tokens=12 + i, temperature=0.0 if i % 2 else 0.8, seed=i, stop_token_ids=stops
        )
        for i in range(len(prompts))
    ]
    expected = waiting.generate(prompts, options)
    ahead = engine_of(llama, **small)
    assert ahead.schedule_ahead and not waiting.schedule_ahead
    pending_rows = 0
    real = ahead.runner.logits

    def count(step: Any, *args: Any) -> Any:
        nonlocal pending_rows
        pending_rows += int((step.pending >= 0).sum())
        return real(step, *args)

    ahead.runner.logits = count
    assert ahead.generate(prompts, options) == expected
    assert any(len(t) < o.max_tokens for t, o in zip(expected, options, strict=True))
    stats = ahead.stats()
    assert pending_rows > 0 and stats.preemptions > 0
    assert stats.kv_blocks_free == stats.kv_blocks and stats.running == stats.waiting == 0


def test_prefix_cache_hits_keep_outputs(llama: Path, engine_of: Any) -> None:
    system = _prompts(1, seed=3, lengths=(64, 65))[0]
    prompts = [system + tail for tail in _prompts(4, seed=5, lengths=(2, 12))]
    engine = engine_of(llama, max_num_seqs=4, block_size=16)
    first = engine.generate(prompts[:1], GREEDY)
    rest = engine.generate(prompts[1:], GREEDY)
    assert engine.stats().prefix_hit_blocks >= 3 * 4
    assert first + rest == _reference(llama, prompts, GREEDY.max_tokens)


def test_seeded_sampling_is_reproducible_and_batch_independent(llama: Path, engine_of: Any) -> None:
    engine = engine_of(llama, max_num_seqs=8)
    prompt = _prompts(1, seed=9)[0]
    seeded = SamplingOptions(max_tokens=16, temperature=1.5, seed=1234, ignore_eos=True)
    alone = engine.generate([prompt], seeded)[0]
    others = [
        SamplingOptions(max_tokens=16, temperature=1.5, seed=s, ignore_eos=True) for s in (1, 2, 3)
    ]
    crowd = engine.generate([prompt, prompt, prompt, prompt], [seeded, *others])
    assert crowd[0] == alone
    assert len({tuple(t) for t in crowd}) > 1  # other seeds draw other tokens


def test_top_k_one_and_tiny_top_p_are_greedy(qwen3: Path, engine_of: Any) -> None:
    engine = engine_of(qwen3, max_num_seqs=4)
    prompts = _prompts(2, seed=13)
    greedy = engine.generate(prompts, GREEDY)
    for options in (
        SamplingOptions(max_tokens=20, temperature=2.0, top_k=1, ignore_eos=True),
        SamplingOptions(max_tokens=20, temperature=2.0, top_p=1e-6, ignore_eos=True),
    ):
        assert engine.generate(prompts, options) == greedy


def test_stop_token_and_eos_finish(llama: Path, engine_of: Any) -> None:
    engine = engine_of(llama, max_num_seqs=4)
    prompt = _prompts(1, seed=17)[0]
    tokens = engine.generate([prompt], GREEDY)[0]
    stop = tokens[5]
    options = SamplingOptions(20, 0.0, stop_token_ids=(stop,), ignore_eos=True)
    cut = engine.generate([prompt], options)[0]
    assert cut == tokens[: tokens.index(stop) + 1]

    async def stream(options: SamplingOptions) -> list[GenerationChunk]:
        return [c async for c in engine.stream(prompt, options)]

    chunks = asyncio.run(stream(options))
    assert [t for c in chunks for t in c.token_ids] == cut
    assert chunks[-1].finish_reason == "stop"
    assert all(c.finish_reason is None for c in chunks[:-1])
    assert chunks[0].prompt_tokens == len(prompt)
    chunks = asyncio.run(stream(SamplingOptions(4, 0.0, ignore_eos=True)))
    assert [t for c in chunks for t in c.token_ids] == tokens[:4]
    assert chunks[-1].finish_reason == "length"


def test_every_eos_id_of_the_generation_config_stops(
    llama: Path, tmp_path: Path, engine_of: Any
) -> None:
    prompt = _prompts(1, seed=17)[0]
    tokens = engine_of(llama, max_num_seqs=2).generate([prompt], GREEDY)[0]
    eos = tokens[4]
    folder = tmp_path / "model"
    shutil.copytree(llama, folder)
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, eos]}))
    engine = engine_of(folder, max_num_seqs=2)
    assert engine.eos_token_ids == (2, eos)
    assert engine.generate([prompt], SamplingOptions(20, 0.0)) == [tokens[: tokens.index(eos) + 1]]
    assert engine.generate([prompt], GREEDY) == [tokens]  # ignore_eos runs on


def test_leaving_a_stream_aborts_and_frees_blocks(llama: Path, engine_of: Any) -> None:
    engine = engine_of(llama, max_num_seqs=4, block_size=8)
    prompt = _prompts(1, seed=19, lengths=(40, 41))[0]

    async def take_three() -> list[int]:
        got: list[int] = []
        options = SamplingOptions(max_tokens=400, temperature=0.0, ignore_eos=True)
        async for chunk in engine.stream(prompt, options):
            got += chunk.token_ids
            if len(got) >= 3:
                break
        return got

    # A chunk carries every token produced since the last one, so a slow reader may get more
    # than three before it leaves; it must still leave long before the 400 it asked for.
    got = asyncio.run(take_three())
    assert 3 <= len(got) < 400
    for _ in range(200):
        stats = engine.stats()
        if stats.running == 0 and stats.kv_blocks_free == stats.kv_blocks:
            break
        asyncio.run(asyncio.sleep(0.01))
    assert stats.running == 0 and stats.kv_blocks_free == stats.kv_blocks
    again = SamplingOptions(max_tokens=len(got), temperature=0.0, ignore_eos=True)
    assert engine.generate([prompt], again) == [got]


def test_bad_requests_are_refused(llama: Path, engine_of: Any) -> None:
    engine = engine_of(llama, max_num_seqs=2, max_model_len=128)
    with pytest.raises(GenerationError, match="exceeds"):
        engine.generate([[5] * 100], SamplingOptions(max_tokens=40))
    with pytest.raises(GenerationError, match="empty"):
        engine.generate([[]], SamplingOptions())
    with pytest.raises(GenerationError, match="token ids"):
        engine.generate([[10**6]], SamplingOptions())
    with pytest.raises(GenerationError, match="top_p"):
        engine.generate([[5]], SamplingOptions(top_p=0.0))
    # The engine still serves after refusing.
    assert len(engine.generate([[5, 6, 7]], SamplingOptions(max_tokens=3, ignore_eos=True))[0]) == 3


def test_unsupported_models_are_named(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(GenerationError, match="gpt2"):
        read_config(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        read_config(tmp_path / "missing")


@pytest.mark.parametrize("engine_process", [False, True])
def test_served_through_the_completion_endpoints(
    llama: Path, engine_of: Any, engine_process: bool
) -> None:
    pytest.importorskip("fastapi", reason="needs the server extra")
    from fastapi.testclient import TestClient
    from tokenizers import Tokenizer

    from stoker.server import ModelConfig, ServerConfig, create_app

    prompt = _prompts(1, seed=23)[0]
    expected = engine_of(llama, max_num_seqs=2).generate([prompt], SamplingOptions(12, 0.0))[0]
    text = Tokenizer.from_file(str(llama / "tokenizer.json")).decode(expected)
    model = ModelConfig(
        name="llm",
        model=str(llama),
        task="text-generation",
        max_num_seqs=4,
        engine_process=engine_process,
    )
    body = {"model": "llm", "prompt": prompt, "max_tokens": 12, "temperature": 0}
    with TestClient(create_app(ServerConfig(models=(model,)))) as client:
        done = client.post("/v1/completions", json=body)
        assert done.status_code == 200, done.text
        answer = done.json()
        assert answer["choices"][0]["text"] == text
        assert answer["usage"]["prompt_tokens"] == len(prompt)
        assert answer["usage"]["completion_tokens"] == len(expected)
        streamed = client.post("/v1/completions", json={**body, "stream": True})
        pieces = [
            json.loads(line[len("data: ") :])["choices"][0]["text"]
            for line in streamed.text.splitlines()
            if line.startswith("data: {")
        ]
        assert "".join(pieces) == text
        metrics = client.get("/metrics").text
        assert 'stoker_generation_tokens_total{model="llm"}' in metrics
        too_long = client.post("/v1/completions", json={**body, "max_tokens": 10**6})
        assert too_long.status_code == 400


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_fused_stages_keep_greedy_output(
    family: str, request: pytest.FixtureRequest, engine_of: Any
) -> None:
    # On the CPU the fused Triton stages run in Triton's interpreter.
    pytest.importorskip("triton")
    from stoker.generate import Decoder, load_weights

    folder = request.getfixturevalue(family)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    decoder = Decoder(read_config(folder), torch.float32, device, fused=True)
    load_weights(decoder, folder)
    prompts = _prompts(3, seed=29)
    engine = engine_of(folder, device=device, decoder=decoder, max_num_seqs=4)
    assert engine.generate(prompts, GREEDY) == _reference(folder, prompts, GREEDY.max_tokens)


def test_a_slow_stream_reader_gets_the_backlog_as_one_chunk(llama: Path, engine_of: Any) -> None:
    engine = engine_of(llama, max_num_seqs=2)
    prompt = _prompts(1, seed=31)[0]
    expected = engine.generate([prompt], GREEDY)[0]

    async def read_late() -> list[GenerationChunk]:
        stream = engine.stream(prompt, GREEDY)
        first = await anext(stream)
        await asyncio.sleep(1.0)  # the engine finishes meanwhile
        return [first] + [c async for c in stream]

    chunks = asyncio.run(read_late())
    assert [t for c in chunks for t in c.token_ids] == expected
    assert len(chunks) < len(expected)
    assert chunks[-1].finish_reason == "length"


def test_a_ready_decoder_sizes_the_cache_by_its_own_dtype(llama: Path, engine_of: Any) -> None:
    from stoker.generate import Decoder, load_weights

    blocks = {}
    for dtype in (torch.float32, torch.bfloat16):
        decoder = Decoder(read_config(llama), dtype, "cpu")
        load_weights(decoder, llama)
        engine = engine_of(llama, decoder=decoder, max_num_seqs=16, cpu_kv_bytes=1 << 20)
        assert engine.runner.cache[0][0].dtype == dtype
        blocks[dtype] = engine.num_blocks
    assert blocks[torch.bfloat16] == 2 * blocks[torch.float32]


def test_the_openai_client_against_the_engine(llama: Path, engine_of: Any) -> None:
    openai = pytest.importorskip("openai")
    pytest.importorskip("fastapi", reason="needs the server extra")
    from tokenizers import Tokenizer

    from stoker.server import ModelConfig, ServerConfig, create_app

    prompt = _prompts(1, seed=37)[0]
    expected = engine_of(llama, max_num_seqs=2).generate([prompt], SamplingOptions(10, 0.0))[0]
    text = Tokenizer.from_file(str(llama / "tokenizer.json")).decode(expected)
    port = free_port()
    model = ModelConfig(name="llm", model=str(llama), task="text-generation", max_num_seqs=4)
    config = ServerConfig(models=(model,), port=port, token="t0ken")
    with uvicorn_thread(create_app(config), port):
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="t0ken", max_retries=0
        )
        assert [m.id for m in client.models.list()] == ["llm"]
        done = client.completions.create(model="llm", prompt=prompt, max_tokens=10, temperature=0)
        assert done.choices[0].text == text and done.choices[0].finish_reason == "length"
        assert done.usage is not None and done.usage.completion_tokens == len(expected)
        streamed = client.completions.create(
            model="llm", prompt=prompt, max_tokens=10, temperature=0, stream=True
        )
        assert "".join(c.choices[0].text for c in streamed) == text
        chat = client.chat.completions.create(
            model="llm",
            messages=[{"role": "user", "content": "hello stoker"}],
            max_completion_tokens=5,
            temperature=0,
            seed=3,
        )
        assert chat.choices[0].message.role == "assistant"
        assert chat.usage is not None and chat.usage.completion_tokens <= 5
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(
                base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong", max_retries=0
            ).models.list()


def test_a_failing_step_fails_its_sequences_and_the_engine_goes_on(
    llama: Path, engine_of: Any, caplog: pytest.LogCaptureFixture
) -> None:
    engine = engine_of(llama, max_num_seqs=4)
    prompts = _prompts(3, seed=41)
    expected = engine.generate(prompts, GREEDY)
    real = engine.runner.logits
    calls = {"n": 0}

    def flaky(*args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("the device said no")
        return real(*args)

    engine.runner.logits = flaky
    with (
        caplog.at_level(logging.ERROR, logger="stoker.generate"),
        pytest.raises(RuntimeError, match="the device said no"),
    ):
        engine.generate(prompts, GREEDY)
    # The step's own traceback reaches the log, wherever its callers are.
    (record,) = [r for r in caplog.records if r.name == "stoker.generate"]
    assert record.exc_info is not None and "the device said no" in str(record.exc_info[1])
    stats = engine.stats()
    assert stats.running == stats.waiting == 0
    assert stats.kv_blocks_free == stats.kv_blocks
    assert engine.generate(prompts, GREEDY) == expected  # the engine still serves


def test_an_eager_step_hands_out_the_step_before_while_it_is_queued(
    llama: Path, engine_of: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import stoker.generate._engine as engine_module
    from stoker.generate._requests import deliver as real_deliver

    prompts = _prompts(4, seed=43, lengths=(40, 90))
    # A 32-token budget spreads each prompt over steps that also decode the others.
    engine = engine_of(llama, max_num_seqs=4, max_num_batched_tokens=32)
    expected = engine.generate(prompts, GREEDY)
    handed = 0

    def counting(updates: Any, error: BaseException | None = None) -> None:
        nonlocal handed
        handed += 1
        real_deliver(updates, error)

    monkeypatch.setattr(engine_module, "deliver", counting)
    during: list[tuple[bool, int]] = []
    real_launch = engine.runner.launch

    def launch(step: Any, *args: Any) -> Any:
        before = handed
        sampled = real_launch(step, *args)
        during.append((bool((step.query_lens > 1).any()), handed - before))
        return sampled

    engine.runner.launch = launch
    assert engine.generate(prompts, GREEDY) == expected
    # On the CPU every step runs eagerly and the step before is done by its first layer.
    assert any(prompt and n == 1 for prompt, n in during)
    assert all(n <= 1 for _, n in during)
    assert sum(n for _, n in during) >= len(during) - 1


def test_owed_tokens_leave_once_and_only_when_the_device_has_them() -> None:
    from stoker.generate._engine import _Owed
    from stoker.generate._requests import Done

    class Pending:
        done = False

        def ready(self) -> bool:
            return self.done

    sampled = Pending()
    finished: list[Any] = []

    def finish(*launched: Any) -> Done:
        finished.append(launched)
        return Done([], [], [], {})

    owed = _Owed(finish, (None, [], sampled))  # type: ignore[arg-type]
    owed.poll()
    assert finished == []
    sampled.done = True
    owed.poll()
    owed.poll()
    owed.hand_out()
    assert finished == [(None, [], sampled)]


def test_padded_prompt_steps_see_what_unpadded_steps_see(
    llama: Path, engine_of: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import functools

    from stoker.generate import _model
    from stoker.generate._attention import HAS_TRITON, paged_attention
    from stoker.generate._runner import _fill_pending, _pending_arrays

    if HAS_TRITON:  # the kernel (interpreted here) with the step's tile map, as a graph runs it
        monkeypatch.setattr(
            _model, "paged_attention", functools.partial(paged_attention, backend="triton")
        )
    prompts = _prompts(4, seed=45, lengths=(20, 70))
    engine = engine_of(llama, max_num_seqs=4, max_num_batched_tokens=32)
    expected = engine.generate(prompts, GREEDY)
    runner = engine.runner
    real = runner.logits
    compared = {"ahead": 0, "all": 0, "padding rows": 0}

    def checked(
        step: Any, rows: Any, verify: Any = None, previous: Any = None, poll: Any = None
    ) -> Any:
        eager = real(step, rows, verify, previous, poll)
        t, n = len(step.input_ids), len(step.query_lens)
        if t == n:
            return eager
        # Five padding tokens, and padding rows up to max_num_seqs, as a graph runs the step.
        arrays = runner.prompt_arrays(step, rows, t + 5)
        ids, pos, slots, ctx, tables, cu, last, tiles = (torch.from_numpy(a) for a in arrays)
        fill = [torch.from_numpy(a) for a in _pending_arrays(step, previous)]
        _fill_pending(ids, fill, previous)
        batch = _model.StepBatch(
            ids, pos, slots, cu.int(), ctx.int(), tables.int(), last, t + 5, tiles
        )
        hidden = runner.model(batch, runner.cache, False)
        padded = runner.model.head(hidden[: len(rows)])
        torch.testing.assert_close(padded, eager, rtol=1e-4, atol=1e-4)
        compared["all"] += 1
        compared["ahead"] += int(bool(fill))
        compared["padding rows"] += int(n < 4)
        return eager

    runner.logits = checked
    assert engine.generate(prompts, GREEDY) == expected
    # Pending tokens filled in some of the steps, padding rows in others.
    assert compared["all"] > 3 and compared["ahead"] > 0 and compared["padding rows"] > 0


def test_prompt_graph_tokens_must_not_be_negative(llama: Path) -> None:
    from stoker.generate import GenerateEngine
    from stoker.server import ModelConfig

    with pytest.raises(ValueError, match="prompt_graph_tokens"):
        GenerateEngine(llama, prompt_graph_tokens=-1)
    with pytest.raises(ValueError, match="prompt_graph_tokens"):
        ModelConfig(name="m", model=str(llama), task="text-generation", prompt_graph_tokens=-1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("ahead", [True, False])
def test_cuda_prompt_graphs_keep_greedy_output(llama: Path, engine_of: Any, ahead: bool) -> None:
    prompts = _prompts(6, seed=47, lengths=(20, 90))
    # A 64-token budget mixes prompt chunks with decoding rows in most steps.
    options = {"device": "cuda", "dtype": torch.float32, "max_num_seqs": 8}
    options |= {"max_num_batched_tokens": 64, "schedule_ahead": ahead}
    eager = engine_of(llama, prompt_graph_tokens=0, **options)
    expected = eager.generate(prompts, GREEDY)
    assert eager.runner.prompt_replays == 0
    graphed = engine_of(llama, **options)
    assert graphed.runner.prompt_buckets == [64]
    assert graphed.generate(prompts, GREEDY) == expected
    assert graphed.runner.prompt_replays > 3
    assert expected == _reference(llama, prompts, GREEDY.max_tokens)


def test_padded_decode_steps_see_what_unpadded_steps_see(llama: Path, engine_of: Any) -> None:
    from stoker.generate import _model
    from stoker.generate._runner import _fill_pending, _pending_arrays

    prompts = _prompts(4, seed=49, lengths=(5, 30))
    engine = engine_of(llama, max_num_seqs=4)
    expected = engine.generate(prompts, GREEDY)
    runner = engine.runner
    real = runner.logits
    compared = 0

    def checked(
        step: Any, rows: Any, verify: Any = None, previous: Any = None, poll: Any = None
    ) -> Any:
        nonlocal compared
        eager = real(step, rows, verify, previous, poll)
        n = len(step.query_lens)
        if len(step.input_ids) != n:
            return eager
        # Three padding rows, as a decode graph's bucket adds, run eagerly here.
        bucket = n + 3
        arrays = runner._decode_arrays(step, bucket)
        ids, pos, slots, ctx, tables = (torch.from_numpy(a) for a in arrays)
        _fill_pending(ids, [torch.from_numpy(a) for a in _pending_arrays(step, previous)], previous)
        cu = torch.arange(bucket + 1, dtype=torch.int32)
        batch = _model.StepBatch(
            ids, pos, slots, cu, ctx.int(), tables.int(), torch.arange(bucket), 1
        )
        padded = runner.model(batch, runner.cache, True)[:n]
        torch.testing.assert_close(padded, eager, rtol=1e-4, atol=1e-4)
        compared += 1
        return eager

    runner.logits = checked
    assert engine.generate(prompts, GREEDY) == expected
    assert compared > 10


def test_a_steps_arrays_reach_the_device_each_16_byte_aligned(llama: Path, engine_of: Any) -> None:
    import numpy as np

    runner = engine_of(llama, max_num_seqs=4).runner
    parts: list[Any] = [np.arange(n, dtype=np.int64) + 100 * n for n in (3, 1, 4, 7)]
    parts.append(np.arange(6, dtype=np.int64).reshape(2, 3))
    for _ in range(2):  # both staging buffers
        uploaded = runner._upload(parts)
        for got, want in zip(uploaded, parts, strict=True):
            assert got.data_ptr() % 16 == 0
            assert got.shape == want.shape
            assert got.cpu().tolist() == want.tolist()
