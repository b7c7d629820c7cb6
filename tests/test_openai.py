"""OpenAI-compatible generation: chat templates, incremental detokenizing and stop strings; the
completion endpoints over a fake engine; and OpenAI's own Python client against a real server."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, Iterator, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from _models import TinyNet
from _support import free_port, uvicorn_thread
from _tiny_llm import CHAT_TEMPLATE, build_tokenizer
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from tokenizers import Tokenizer

from stoker.generate._chat import ChatTemplate, IncrementalDetokenizer, StopStrings, TextStream
from stoker.generate._types import (
    STEP_BUCKETS,
    FinishReason,
    GenerationChunk,
    GenerationError,
    GeneratorStats,
    SamplingOptions,
    StepTimes,
)
from stoker.server import ModelConfig, ServerConfig, create_app
from stoker.server._openai_protocol import Answer, BadRequest, parse_request, sampling_options

TOKEN = "gen-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NAME = "tiny-llm"
REPLY = "hello world, hello stoker!"
EOS = 2  # <|im_end|>
IMAGE_MODEL = ModelConfig(name="tiny", model="unused", size=40, crop=32, top_k=3)
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {
        "role": "user",
        "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}],
    },
]
CHATML_TURNS = (
    "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi\nthere<|im_end|>\n"
)
CHATML = CHATML_TURNS + "<|im_start|>assistant\n"


def write_config(folder: Path, **config: Any) -> Path:
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder as far as the API reads one: tokenizer.json and tokenizer_config.json."""
    folder = tmp_path_factory.mktemp("tiny-llm")
    build_tokenizer(folder)
    return write_config(folder, chat_template=CHAT_TEMPLATE, eos_token="<|im_end|>", bos_token=None)


@pytest.fixture(scope="module")
def tokenizer(folder: Path) -> Tokenizer:
    return Tokenizer.from_file(str(folder / "tokenizer.json"))


def _counts(where: dict[int, int]) -> tuple[int, ...]:
    return tuple(where.get(i, 0) for i in range(len(STEP_BUCKETS) + 1))


class FakeGenerator:
    """Answers every prompt with the tokens of ``reply`` and an end-of-sequence token, one token
    a chunk, finishing "stop" ("length" at max_tokens); ``finish`` replaces "stop". With
    ``block_after`` it waits forever after that many chunks; ``fail`` raises at the start."""

    eos_token_ids: tuple[int, ...] = (EOS,)
    model_name = NAME

    def __init__(
        self,
        folder: Path,
        reply: str = REPLY,
        *,
        max_model_len: int = 96,
        finish: FinishReason = "stop",
        block_after: int | None = None,
        fail: Exception | None = None,
    ) -> None:
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.model_folder = folder
        self.max_model_len = max_model_len
        self.ids = [*self.tokenizer.encode(reply).ids, EOS]
        self.finish = finish
        self.block_after = block_after
        self.fail = fail
        self.blocked = asyncio.Event()
        self.calls: list[tuple[list[int], SamplingOptions]] = []
        self.completed = self.aborted = 0
        self.closed = False

    def stats(self) -> GeneratorStats:
        return GeneratorStats(
            running=1,
            waiting=2,
            kv_blocks=10,
            kv_blocks_free=4,
            prefix_hit_blocks=3,
            prefix_miss_blocks=1,
            preemptions=5,
            # Three decode steps of 7, 7 and 40 ms; one prompt step of 0.5 ms.
            decode_steps=StepTimes(_counts({6: 2, 13: 1}), 0.054),
            prompt_steps=StepTimes(_counts({0: 1}), 0.0005),
        )

    async def stream(
        self, prompt_ids: Sequence[int], options: SamplingOptions
    ) -> AsyncGenerator[GenerationChunk, None]:
        self.calls.append((list(prompt_ids), options))
        if self.fail is not None:
            raise self.fail
        n = min(len(self.ids), options.max_tokens)
        finished = False
        try:
            for i in range(n):
                if i == self.block_after:
                    self.blocked.set()
                    await asyncio.Event().wait()
                await asyncio.sleep(0)
                reason: FinishReason | None = None
                if i == n - 1:
                    reason = self.finish if n == len(self.ids) else "length"
                    finished = True
                first = i == 0
                yield GenerationChunk(
                    [self.ids[i]],
                    reason,
                    prompt_tokens=len(prompt_ids) if first else 0,
                    cached_tokens=3 if first else 0,
                )
        finally:
            if finished:
                self.completed += 1
            else:
                self.aborted += 1

    def close(self) -> None:
        self.closed = True


def make_app(generator: FakeGenerator, **server: Any) -> FastAPI:
    config = ServerConfig(models=(IMAGE_MODEL,), token=TOKEN, **server)
    return create_app(config, {"tiny": TinyNet()}, generators={NAME: generator})


@pytest.fixture
def fake(folder: Path) -> FakeGenerator:
    return FakeGenerator(folder)


@pytest.fixture
def client(fake: FakeGenerator) -> Iterator[TestClient]:
    with TestClient(make_app(fake)) as c:
        yield c
    assert fake.closed


def events(body: str) -> list[Any]:
    """The data of a server-sent-event stream, [DONE] included as a string."""
    assert body.endswith("\n\n")
    out = []
    for event in body.split("\n\n")[:-1]:
        assert event.startswith("data: ")
        data = event[len("data: ") :]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def stream_text(chunks: list[Any], kind: str = "text") -> str:
    if kind == "text":
        return "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])


# --- text around the tokens --------------------------------------------------------------


def test_detokenizer_holds_back_split_characters(tokenizer: Tokenizer) -> None:
    text = "日本語 café 😀 été"
    ids = tokenizer.encode(text).ids
    assert "\ufffd" in {tokenizer.decode([i]) for i in ids}  # some tokens hold part of one
    detokenizer = IncrementalDetokenizer(tokenizer)
    deltas = [detokenizer.add([i]) for i in ids]
    assert "" in deltas  # held back while a character was incomplete
    assert not any("\ufffd" in d for d in deltas)
    assert "".join(deltas) + detokenizer.flush() == text
    shown = ""
    for n, delta in enumerate(deltas, 1):
        shown += delta
        assert tokenizer.decode(ids[:n]).startswith(shown)


def test_detokenizer_skips_special_tokens_and_reads_the_prompt(tokenizer: Tokenizer) -> None:
    prompt = tokenizer.encode("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n").ids
    detokenizer = IncrementalDetokenizer(tokenizer, prompt)
    reply = tokenizer.encode("hello world").ids
    assert detokenizer.add(reply[:2]) + detokenizer.add([*reply[2:], EOS]) == "hello world"
    assert detokenizer.flush() == ""
    # A prompt of ids that ends inside a character gives no context to finish it with.
    split = tokenizer.encode("日").ids
    detokenizer = IncrementalDetokenizer(tokenizer, split[:1])
    assert detokenizer.add(split[1:]) == ""
    # What never completes is shown as the tokenizer decodes it.
    assert detokenizer.flush() == tokenizer.decode(split[1:]) == "\ufffd\ufffd"


@pytest.mark.parametrize(
    ("stops", "pieces", "shown", "stopped", "held"),
    [
        (["STOP"], ["abc ST", "O", "P and more"], ["abc ", "", ""], True, ""),
        (["STOP"], ["abc ST", "OX"], ["abc ", "STOX"], False, ""),
        (["STOP"], ["end S"], ["end "], False, "S"),
        (["yz", "END"], ["x E", "ND yz"], ["x ", ""], True, ""),
        (["dog", "og!"], ["hot do", "g!"], ["hot ", ""], True, ""),
        ([], ["free text"], ["free text"], False, ""),
    ],
)
def test_stop_strings(
    stops: list[str], pieces: list[str], shown: list[str], stopped: bool, held: str
) -> None:
    matcher = StopStrings(stops)
    assert [matcher.add(p) for p in pieces] == shown
    assert matcher.stopped is stopped
    assert matcher.flush() == held
    assert matcher.add("after") == ("" if stopped else "after")


def test_stop_strings_refuse_an_empty_one() -> None:
    with pytest.raises(GenerationError, match="empty"):
        StopStrings(["ok", ""])


def test_text_stream_cuts_a_stop_string_split_across_tokens(tokenizer: Tokenizer) -> None:
    ids = [*tokenizer.encode(REPLY).ids, EOS]
    assert not any("o w" in tokenizer.decode([i]) for i in ids)  # the stop string spans tokens
    stream = TextStream(tokenizer, ["zzz", "o wo"])
    out = [stream.add(GenerationChunk([i])) for i in ids]
    finish_at = next(n for n, (_, finish) in enumerate(out) if finish)
    assert out[finish_at][1] == "stop"
    assert "".join(t for t, _ in out[: finish_at + 1]) == "hell"
    assert all(t == "" for t, _ in out[finish_at:])
    plain = TextStream(tokenizer)
    texts = [plain.add(GenerationChunk([i], "length" if i == EOS else None)) for i in ids]
    assert "".join(t for t, _ in texts) == REPLY and texts[-1][1] == "length"


def test_chat_template_renders_chatml(folder: Path, tmp_path: Path) -> None:
    template = ChatTemplate.from_folder(folder)
    assert template.render(MESSAGES) == CHATML
    assert template.render(MESSAGES, add_generation_prompt=False) == CHATML_TURNS
    called = [*MESSAGES, {"role": "assistant", "content": None, "tool_calls": []}]
    expected = CHATML_TURNS + "<|im_start|>assistant\n<|im_end|>\n<|im_start|>assistant\n"
    assert template.render(called) == expected

    named = [
        {"name": "tool_use", "template": "tools"},
        {
            "name": "default",
            "template": "{{ bos_token }}{{ messages | tojson }}{{ eos_token }}"
            "{{ strftime_now('%Y') }}",
        },
    ]
    write_config(tmp_path, chat_template=named, bos_token={"content": "<s>"}, eos_token="</s>")
    other = ChatTemplate.from_folder(tmp_path).render([{"role": "user", "content": "été <b>"}])
    assert other == '<s>[{"role": "user", "content": "été <b>"}]</s>' + time.strftime("%Y")


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([], "non-empty list"),
        ("hi", "non-empty list"),
        (["hi"], r"messages\[0\] must be an object"),
        ([{"role": "bot", "content": "hi"}], "role must be one of"),
        ([{"role": "user", "content": 5}], "string or a list of text parts"),
        ([{"role": "user"}], "string or a list of text parts"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "text"),
    ],
)
def test_malformed_messages(folder: Path, messages: Any, message: str) -> None:
    with pytest.raises(GenerationError, match=message):
        ChatTemplate.from_folder(folder).render(messages)


def test_missing_broken_and_refusing_templates(tmp_path: Path) -> None:
    user = [{"role": "user", "content": "hi"}]
    with pytest.raises(GenerationError, match="no chat template"):
        ChatTemplate.from_folder(tmp_path).render(user)
    with pytest.raises(GenerationError, match="no chat template"):
        ChatTemplate.from_folder(write_config(tmp_path, eos_token="x")).render(user)
    with pytest.raises(GenerationError, match="does not compile"):
        ChatTemplate("{% for %}")
    with pytest.raises(GenerationError, match="must be a string"):
        ChatTemplate.from_folder(write_config(tmp_path, chat_template=5))
    refusing = ChatTemplate("{{ raise_exception('only one user turn') }}")
    with pytest.raises(GenerationError, match="only one user turn"):
        refusing.render(user)
    sandboxed = ChatTemplate("{{ messages.append(1) }}")
    with pytest.raises(GenerationError, match="refused"):
        sandboxed.render(user)


# --- request parsing ---------------------------------------------------------------------


def test_parse_request_fields() -> None:
    body = {
        "model": NAME,
        "prompt": [[5, 6, 7]],
        "max_tokens": 9,
        "temperature": 0,
        "top_p": 0.5,
        "top_k": -1,
        "seed": 7,
        "stop": "x",
        "n": 1,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
        "logit_bias": {},
        "user": "someone",
    }
    request = parse_request("completions", json.dumps(body).encode())
    assert request.prompt == [5, 6, 7] and request.messages is None
    assert (request.max_tokens, request.temperature, request.top_p) == (9, 0.0, 0.5)
    assert (request.top_k, request.seed, request.stop) == (0, 7, ("x",))
    assert request.stream and request.include_usage and request.ignore_eos
    chat = {"model": NAME, "messages": MESSAGES, "max_tokens": 3, "max_completion_tokens": 4}
    parsed = parse_request("chat_completions", json.dumps(chat).encode())
    assert parsed.max_tokens == 4 and parsed.messages == MESSAGES and parsed.prompt is None
    assert sampling_options(parsed, 10, 64).max_tokens == 4
    unlimited = parse_request(
        "chat_completions",
        json.dumps({**chat, "max_tokens": None, "max_completion_tokens": None}).encode(),
    )
    assert sampling_options(unlimited, 10, 64).max_tokens == 54
    with pytest.raises(BadRequest, match="context is 64 tokens") as e:
        sampling_options(parsed, 61, 64)
    assert (e.value.param, e.value.code) == ("messages", "context_length_exceeded")


# --- the endpoints -----------------------------------------------------------------------


def test_completion(client: TestClient, fake: FakeGenerator, tokenizer: Tokenizer) -> None:
    body = {"model": NAME, "prompt": "hello", "max_tokens": 40, "temperature": 0.5}
    body |= {"top_p": 0.9, "top_k": 5, "seed": 3, "ignore_eos": True}
    r = client.post("/v1/completions", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["id"].startswith("cmpl-") and doc["object"] == "text_completion"
    assert doc["model"] == NAME and abs(doc["created"] - time.time()) < 60
    assert doc["choices"] == [
        {"index": 0, "text": REPLY, "logprobs": None, "finish_reason": "stop"}
    ]
    prompt = tokenizer.encode("hello").ids
    used = len(fake.ids)
    assert doc["usage"] == {
        "prompt_tokens": len(prompt),
        "completion_tokens": used,
        "total_tokens": len(prompt) + used,
        "prompt_tokens_details": {"cached_tokens": 3},
    }
    timing = r.headers["server-timing"]
    assert timing.startswith("ttft;dur=") and ", total;dur=" in timing
    ids, options = fake.calls[-1]
    assert ids == prompt
    assert options == SamplingOptions(
        max_tokens=40, temperature=0.5, top_p=0.9, top_k=5, seed=3, ignore_eos=True
    )
    assert (fake.completed, fake.aborted) == (1, 0)

    r = client.post("/v1/completions", json={"model": NAME, "prompt": [[7, 8]]}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert fake.calls[-1][0] == [7, 8] and fake.calls[-1][1].max_tokens == 16  # OpenAI's default
    r = client.post(
        "/v1/completions", json={"model": NAME, "prompt": "hi", "max_tokens": 3}, headers=AUTH
    )
    assert r.json()["choices"][0]["finish_reason"] == "length"
    assert r.json()["choices"][0]["text"] == tokenizer.decode(fake.ids[:3])


def test_chat_completion(client: TestClient, fake: FakeGenerator, tokenizer: Tokenizer) -> None:
    body = {"model": NAME, "messages": MESSAGES, "max_completion_tokens": 50}
    r = client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["id"].startswith("chatcmpl-") and doc["object"] == "chat.completion"
    assert doc["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": REPLY},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    prompt = tokenizer.encode(CHATML, add_special_tokens=False).ids
    assert fake.calls[-1][0] == prompt and doc["usage"]["prompt_tokens"] == len(prompt)
    r = client.post(
        "/v1/chat/completions", json={"model": NAME, "messages": MESSAGES}, headers=AUTH
    )
    assert r.status_code == 200, r.text
    assert fake.calls[-1][1].max_tokens == fake.max_model_len - len(prompt)


def test_streaming(client: TestClient, fake: FakeGenerator) -> None:
    body = {"model": NAME, "prompt": "hello", "stream": True, "max_tokens": 40}
    r = client.post("/v1/completions", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    chunks = events(r.text)
    assert chunks[-1] == "[DONE]"
    chunks = chunks[:-1]
    assert len(chunks) > 5 and len({c["id"] for c in chunks}) == 1
    assert all(c["object"] == "text_completion" and "usage" not in c for c in chunks)
    assert stream_text(chunks) == REPLY
    assert [c["choices"][0]["finish_reason"] for c in chunks][-2:] == [None, "stop"]

    body = {"model": NAME, "messages": MESSAGES, "stream": True, "max_tokens": 4}
    body["stream_options"] = {"include_usage": True}
    chunks = events(client.post("/v1/chat/completions", json=body, headers=AUTH).text)[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:-1])
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert stream_text(chunks, "chat") == fake.tokenizer.decode(fake.ids[:4])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4
    assert (fake.completed, fake.aborted) == (2, 0)


@pytest.mark.parametrize("kind", ["completions", "chat_completions"])
def test_stream_events_serialize_their_chunks(kind: Any) -> None:
    """The per-token event comes from a template; it must be the chunk object, byte for byte."""
    answer = Answer(kind, 'a "quoted" model\u00e9')
    texts = ["", "hi", ' q"uo\\te\n\t\x01', "\u00e9\u4e2d\U0001f600", "</script>"]
    for text in texts:
        for finish in (None, "stop", "length", "abort"):
            chunk = answer.chunk(text, finish)
            expected = f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n".encode()
            assert answer.chunk_event(text, finish) == expected
            assert json.loads(expected[len("data: ") :]) == chunk


@pytest.mark.parametrize("stream", [False, True])
def test_stop_strings_end_the_generation(
    client: TestClient, fake: FakeGenerator, stream: bool
) -> None:
    body = {"model": NAME, "prompt": "hi", "stop": ["zzz", "stoker"], "stream": stream}
    body["max_tokens"] = 40
    r = client.post("/v1/completions", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    if stream:
        chunks = events(r.text)[:-1]
        text, finish = stream_text(chunks), chunks[-1]["choices"][0]["finish_reason"]
    else:
        text, finish = r.json()["choices"][0]["text"], r.json()["choices"][0]["finish_reason"]
    assert (text, finish) == ("hello world, hello ", "stop")
    assert fake.aborted == 1  # the engine was told to stop generating


@pytest.mark.parametrize(
    ("path", "body", "status", "param", "message"),
    [
        ("/v1/completions", {"prompt": "x"}, 400, "model", "'model' must name"),
        ("/v1/completions", {"model": "nope", "prompt": "x"}, 404, "model", "does not exist"),
        ("/v1/completions", {"model": NAME, "prompt": "x", "n": 2}, 400, "n", "n=1"),
        ("/v1/completions", {"model": NAME, "prompt": ["a", "b"]}, 400, "prompt", "one prompt"),
        ("/v1/completions", {"model": NAME, "prompt": [1, True]}, 400, "prompt", "token ids"),
        ("/v1/completions", {"model": NAME, "prompt": [1, 999]}, 400, "prompt", "in [0, 320)"),
        ("/v1/completions", {"model": NAME, "prompt": ""}, 400, "prompt", "prompt is empty"),
        ("/v1/completions", {"model": NAME}, 400, "prompt", "'prompt' must be"),
        ("/v1/completions", {"model": NAME, "prompt": "x", "stop": ["a"] * 5}, 400, "stop", "4"),
        ("/v1/completions", {"model": NAME, "prompt": "x", "stop": [""]}, 400, "stop", "stop"),
        ("/v1/completions", {"model": NAME, "prompt": "x", "stop": 3}, 400, "stop", "stop"),
        (
            "/v1/completions",
            {"model": NAME, "prompt": "x", "max_tokens": True},
            400,
            "max_tokens",
            "integer",
        ),
        (
            "/v1/completions",
            {"model": NAME, "prompt": "x", "temperature": "hot"},
            400,
            "temperature",
            "number",
        ),
        (
            "/v1/completions",
            {"model": NAME, "prompt": "x", "stream": "yes"},
            400,
            "stream",
            "true or false",
        ),
        (
            "/v1/completions",
            {"model": NAME, "prompt": "x", "stream_options": []},
            400,
            "stream_options",
            "object",
        ),
        ("/v1/completions", {"model": NAME, "prompt": "x", "top_p": 0}, 400, None, "top_p"),
        ("/v1/completions", {"model": NAME, "prompt": "x", "seed": 1 << 64}, 400, "seed", "64"),
        (
            "/v1/completions",
            {"model": NAME, "prompt": "x", "max_tokens": 0},
            400,
            None,
            "max_tokens",
        ),
        (
            "/v1/completions",
            {"model": NAME, "prompt": "x", "max_tokens": 96},
            400,
            "prompt",
            "context is 96 tokens",
        ),
        ("/v1/chat/completions", {"model": NAME, "prompt": "x"}, 400, "messages", "messages"),
        (
            "/v1/chat/completions",
            {"model": NAME, "messages": [{"role": "x"}]},
            400,
            None,
            "role must be one of",
        ),
        (
            "/v1/chat/completions",
            {"model": NAME, "messages": MESSAGES, "max_tokens": 60},
            400,
            "messages",
            "context",
        ),
    ],
)
def test_bad_requests(
    client: TestClient,
    fake: FakeGenerator,
    path: str,
    body: dict[str, Any],
    status: int,
    param: str | None,
    message: str,
) -> None:
    r = client.post(path, json=body, headers=AUTH)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert message in error["message"]
    code = "context_length_exceeded" if "context" in message else None
    assert error["code"] == ("model_not_found" if status == 404 else code)
    assert fake.calls == []


def test_auth_body_limits_and_json(fake: FakeGenerator) -> None:
    with TestClient(make_app(fake, max_body_bytes=200)) as client:
        body = {"model": NAME, "prompt": "x"}
        r = client.post("/v1/completions", json=body)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"]["code"] == "invalid_api_key"
        wrong = {"Authorization": "Bearer nope"}
        assert client.post("/v1/chat/completions", json=body, headers=wrong).status_code == 401
        r = client.post("/v1/completions", json={**body, "prompt": "x" * 300}, headers=AUTH)
        assert r.status_code == 413 and "200 bytes" in r.json()["error"]["message"]
        r = client.post("/v1/completions", content=b"{not json", headers=AUTH)
        assert r.status_code == 400 and r.json()["error"]["message"] == "the body is not JSON"
        paths = client.get("/openapi.json").json()["paths"]
        assert {"/v1/completions", "/v1/chat/completions"} <= paths.keys()
    assert fake.calls == []


@pytest.mark.parametrize("stream", [False, True])
def test_engine_failures(folder: Path, stream: bool) -> None:
    refusing = FakeGenerator(folder, fail=GenerationError("the prompt is too long"))
    aborting = FakeGenerator(folder, finish="abort")
    body = {"model": NAME, "prompt": "hi", "stream": stream, "max_tokens": 40}
    with TestClient(make_app(refusing)) as client:
        # The stream's first chunk is awaited before the headers, so the status tells.
        r = client.post("/v1/completions", json=body, headers=AUTH)
        assert r.status_code == 400 and "too long" in r.json()["error"]["message"]
    with TestClient(make_app(aborting)) as client:
        r = client.post("/v1/completions", json=body, headers=AUTH)
        if stream:
            assert r.status_code == 200
            chunks = events(r.text)
            assert chunks[-1] == "[DONE]" and chunks[-2]["error"]["type"] == "server_error"
            assert stream_text(chunks[:-2]) == REPLY
        else:
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert "engine ended" in r.json()["error"]["message"]


def asgi_scope(path: str) -> MutableMapping[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"authorization", f"Bearer {TOKEN}".encode()),
            (b"content-type", b"application/json"),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


@pytest.mark.parametrize("stream", [False, True])
def test_client_leaving_aborts_the_generation(folder: Path, stream: bool) -> None:
    fake = FakeGenerator(folder, block_after=3)
    app = make_app(fake)
    sent: list[MutableMapping[str, Any]] = []

    async def exchange() -> None:
        scope = asgi_scope("/v1/chat/completions")
        body = {"model": NAME, "messages": MESSAGES, "stream": stream}
        inbox = [{"type": "http.request", "body": json.dumps(body).encode()}]
        gone = asyncio.Event()

        async def receive() -> MutableMapping[str, Any]:
            if inbox:
                return inbox.pop()
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message)

        served = asyncio.create_task(app(scope, receive, send))
        await asyncio.wait_for(fake.blocked.wait(), 10)
        gone.set()
        await asyncio.wait_for(served, 10)

    try:
        asyncio.run(exchange())
        scraped = app.state.front.metrics.exposition()[0].decode()
    finally:
        app.state.front.close()
    assert (fake.completed, fake.aborted) == (0, 1)
    if stream:
        assert sent[0]["status"] == 200
        chunks = events(b"".join(m.get("body", b"") for m in sent[1:]).decode())
        assert len(chunks) == 1 + 3  # the role, then one chunk a token
        assert stream_text(chunks, "chat") == fake.tokenizer.decode(fake.ids[:3])
        assert not any(m.get("more_body") is False for m in sent)
    else:
        assert sent == []  # nobody is left to answer
    labels = 'code="499",endpoint="chat_completions",model="tiny-llm"'
    assert f"stoker_requests_total{{{labels}}} 1.0" in scraped
    assert 'stoker_generation_requests_total{finish_reason="abort",model="tiny-llm"} 1.0' in scraped


def test_metrics(client: TestClient, fake: FakeGenerator) -> None:
    body = {"model": NAME, "prompt": "hello", "max_tokens": 40}
    assert client.post("/v1/completions", json=body, headers=AUTH).status_code == 200
    stream = {"model": NAME, "messages": MESSAGES, "max_tokens": 3, "stream": True}
    assert client.post("/v1/chat/completions", json=stream, headers=AUTH).status_code == 200
    assert (
        client.post(
            "/v1/completions", json={"model": "nope", "prompt": "x"}, headers=AUTH
        ).status_code
        == 404
    )
    text = client.get("/metrics", headers=AUTH).text
    got = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    model = (("model", NAME),)
    prompts = len(fake.calls[0][0]) + len(fake.calls[1][0])
    assert got[("stoker_generation_ttft_seconds_count", model)] == 2
    assert got[("stoker_generation_inter_token_seconds_count", model)] == len(fake.ids) - 1 + 2
    assert got[("stoker_generation_prompt_tokens_total", model)] == prompts
    assert got[("stoker_generation_tokens_total", model)] == len(fake.ids) + 3
    finished = "stoker_generation_requests_total"
    assert got[(finished, (("finish_reason", "stop"), *model))] == 1
    assert got[(finished, (("finish_reason", "length"), *model))] == 1
    assert got[(finished, (("finish_reason", "abort"), *model))] == 0
    assert got[("stoker_generation_running", model)] == 1
    assert got[("stoker_generation_waiting", model)] == 2
    assert got[("stoker_kv_cache_usage", model)] == pytest.approx(0.6)
    assert got[("stoker_prefix_cache_hit_rate", model)] == 0.75
    assert got[("stoker_generation_preemptions_total", model)] == 5
    steps = "stoker_generation_step_seconds"

    def step(suffix: str, kind: str, **le: str) -> float:
        return got[(steps + suffix, tuple(sorted({"model": NAME, "kind": kind, **le}.items())))]

    assert step("_count", "decode") == 3 and step("_count", "prompt") == 1
    assert step("_sum", "decode") == pytest.approx(0.054)
    bounds = ("0.006", "0.008", "0.03", "0.04", "+Inf")
    assert [step("_bucket", "decode", le=b) for b in bounds] == [0, 2, 2, 3, 3]
    assert step("_bucket", "prompt", le="0.001") == 1
    for endpoint, code, name in [
        ("completions", "200", NAME),
        ("chat_completions", "200", NAME),
        ("completions", "404", ""),
    ]:
        labels = (("code", code), ("endpoint", endpoint), ("model", name))
        assert got[("stoker_requests_total", labels)] == 1


def test_generator_names_must_not_clash_with_models(fake: FakeGenerator) -> None:
    config = ServerConfig(models=(IMAGE_MODEL,), token=TOKEN)
    with pytest.raises(ValueError, match="both configured and a generator"):
        create_app(config, {"tiny": TinyNet()}, generators={"tiny": fake})


# --- OpenAI's client against a real server -----------------------------------------------


@pytest.fixture
def base_url(fake: FakeGenerator) -> Iterator[str]:
    port = free_port()
    with uvicorn_thread(make_app(fake, port=port), port):
        yield f"http://127.0.0.1:{port}/v1"
    assert fake.closed


def test_openai_client(base_url: str, fake: FakeGenerator, tokenizer: Tokenizer) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=base_url, api_key=TOKEN, max_retries=0)
    try:
        assert [m.id for m in client.models.list()] == [NAME]  # the image model is not listed
        done = client.completions.create(model=NAME, prompt="hello", max_tokens=40, seed=1)
        assert done.choices[0].text == REPLY and done.choices[0].finish_reason == "stop"
        assert done.usage is not None and done.usage.completion_tokens == len(fake.ids)
        assert done.usage.prompt_tokens == len(tokenizer.encode("hello").ids)

        pieces = []
        for chunk in client.completions.create(
            model=NAME, prompt="hello", max_tokens=4, stream=True, extra_body={"top_k": 2}
        ):
            pieces.append(chunk.choices[0].text)
            finish = chunk.choices[0].finish_reason
        assert "".join(pieces) == tokenizer.decode(fake.ids[:4]) and finish == "length"
        assert fake.calls[-1][1].top_k == 2

        chat = client.chat.completions.create(
            model=NAME, messages=MESSAGES, max_completion_tokens=50, temperature=0
        )
        assert chat.choices[0].message.role == "assistant"
        assert chat.choices[0].message.content == REPLY
        assert chat.choices[0].finish_reason == "stop"
        assert chat.usage is not None and chat.usage.total_tokens == (
            chat.usage.prompt_tokens + len(fake.ids)
        )

        chunks = list(
            client.chat.completions.create(
                model=NAME,
                messages=MESSAGES,
                stream=True,
                stop=["stoker"],
                stream_options={"include_usage": True},
            )
        )
        assert chunks[0].choices[0].delta.role == "assistant"
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "hello world, hello "
        assert chunks[-2].choices[0].finish_reason == "stop"
        assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens_details is not None
        assert chunks[-1].usage.prompt_tokens_details.cached_tokens == 3

        with pytest.raises(openai.NotFoundError, match="does not exist"):
            client.completions.create(model="nope", prompt="x")
        with pytest.raises(openai.BadRequestError, match="n=1"):
            client.chat.completions.create(model=NAME, messages=MESSAGES, n=2)
        stranger = openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            stranger.completions.create(model=NAME, prompt="x")
        stranger.close()
    finally:
        client.close()
