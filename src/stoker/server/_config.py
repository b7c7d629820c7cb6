"""What `stoker serve` runs: the server's settings and its models, from flags or a TOML file."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import sys
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from stoker._spec import IMAGENET_MEAN, IMAGENET_STD, ImageSpec

__all__ = ["ModelConfig", "ServerConfig", "load_config", "parse_devices", "switch_interval"]

# Bounds that keep deadlines and body sizes far from the native side's integer limits.
_DAY_MS = 86_400_000.0
_MAX_BODY = 1 << 34

Task = Literal["image-classification", "text-embedding", "text-generation"]
TASKS = ("image-classification", "text-embedding", "text-generation")

_GPU = re.compile(r"(?:cuda:)?([0-9]+)")


def parse_devices(value: str | Sequence[str | int]) -> tuple[str, ...]:
    """Devices as ``ModelConfig.devices`` holds them, from ``"0,1"``, ``"cuda:0,cuda:1"``,
    ``"cpu,cpu"`` or a list of those entries (a bare index N is ``cuda:N``)."""
    entries = value.split(",") if isinstance(value, str) else list(value)
    out = []
    for entry in entries:
        if isinstance(value, str) and not str(entry).strip():
            continue  # "0,1," and the like: an empty entry names nothing
        text = str(entry).strip()
        # bool is an int to Python, but `true` in a TOML list is no device index.
        gpu = _GPU.fullmatch(text) if not isinstance(entry, bool) else None
        if text == "cpu":
            out.append(text)
        elif gpu is not None:
            out.append(f"cuda:{int(gpu[1])}")
        else:
            raise ValueError(f"devices: {entry!r} is not cpu, cuda:N or a GPU index N")
    return tuple(out)


@dataclass(frozen=True)
class ModelConfig:
    """One served model; ``model`` is a torchvision architecture name or a model file, or for
    ``text-embedding`` a model folder (``all-minilm-l6-v2``: the installed one), or for
    ``text-generation`` a decoder model folder (config.json, safetensors, tokenizer.json)."""

    name: str
    model: str
    task: Task = "image-classification"
    weights: str | None = None
    device: str = "cpu"
    dtype: Literal["float32", "float16", "bfloat16"] | None = None
    size: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    max_batch_size: int = 32
    max_delay_ms: float = 2.0
    capacity: int = 1024
    top_k: int = 5
    gpu_decode: float | Literal["auto"] | None = None
    staging_slots: int = 3
    max_tokens: int | None = None
    """text-embedding: inputs of more tokens are refused (400); None: the model's length."""
    max_num_seqs: int = 256
    """text-generation: sequences decoded together."""
    max_num_batched_tokens: int = 2048
    """text-generation: tokens per step; prefill chunks beyond it wait, which bounds how long
    a step with prefill work holds up the running sequences' next tokens."""
    max_model_len: int | None = None
    """text-generation: prompt plus output tokens per sequence; None: the model's length."""
    speculative_tokens: int = 0
    """text-generation: prompt-lookup draft tokens verified per step (speculative decoding);
    0: no speculative decoding."""
    schedule_ahead: bool = True
    """text-generation: launch each step before the last one's tokens are known (without
    speculative decoding); False waits for them, the baseline of an A/B comparison."""
    prompt_graph_tokens: int = 2048
    """text-generation: on a GPU, steps that carry prompt tokens replay CUDA graphs up to this
    many tokens, as decode steps do; 0: they run eagerly."""
    engine_process: bool = False
    """text-generation: run the engine in a child process of its own, so that its per-step
    Python never waits for the interpreter lock held by the server's per-token work."""
    devices: tuple[str, ...] | None = None
    """image-classification: one engine per device behind a least-loaded router (cpu, cuda:N,
    or N for cuda:N); ``device`` then becomes the first of them."""
    threads: int | None = None
    """Native preprocessing threads of each engine; None: the process's pool with one device,
    an even share of it with several."""

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"a model name must be non-empty and free of '/', got {self.name!r}")
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; stoker serves {', '.join(TASKS)}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if min(self.max_num_seqs, self.max_num_batched_tokens) < 1:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be positive")
        if self.speculative_tokens < 0:
            raise ValueError(f"speculative_tokens must be >= 0, got {self.speculative_tokens}")
        if self.prompt_graph_tokens < 0:
            raise ValueError(f"prompt_graph_tokens must be >= 0, got {self.prompt_graph_tokens}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"max_model_len must be at least 2, got {self.max_model_len}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {self.top_k}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")
        if self.threads is not None and self.task != "image-classification":
            raise ValueError(f"threads: image-classification only, not {self.task}")
        if self.devices is not None:
            self._check_devices(parse_devices(self.devices))
        object.__setattr__(self, "mean", tuple(self.mean))
        object.__setattr__(self, "std", tuple(self.std))
        self.spec()  # validates size, crop, mean and std now, not at the first request

    def spec(self) -> ImageSpec:
        return ImageSpec(size=self.size, crop=self.crop, mean=self.mean, std=self.std)

    @property
    def replicas(self) -> tuple[str, ...]:
        """The devices the model's engines run on: ``devices``, or ``device`` alone."""
        return self.devices or (self.device,)

    def _check_devices(self, devices: tuple[str, ...]) -> None:
        if self.task != "image-classification":
            raise ValueError(
                f"devices: only image-classification models run on several devices; "
                f"{self.task} runs on one (use device)"
            )
        if not devices:
            raise ValueError("devices must name at least one device")
        if len({d == "cpu" for d in devices}) > 1:
            raise ValueError(f"devices must be all cpu or all GPUs, got {list(devices)}")
        gpus = [d for d in devices if d != "cpu"]
        if len(set(gpus)) != len(gpus):
            # Two engines on one GPU would compete for it; the router assumes one per device.
            raise ValueError(f"devices: each GPU once (one engine per GPU), got {list(devices)}")
        # `device` keeps its default or names the first device, so that replace() round-trips.
        if self.device not in ("cpu", devices[0]):
            raise ValueError(
                f"give device or devices, not both (device={self.device!r}, "
                f"devices={list(devices)})"
            )
        object.__setattr__(self, "devices", devices)
        object.__setattr__(self, "device", devices[0])


@dataclass(frozen=True)
class ServerConfig:
    """Network, security and limits of the server. The token may come from $STOKER_TOKEN."""

    models: tuple[ModelConfig, ...]
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = field(default=None, repr=False)
    max_body_bytes: int = 32 << 20
    max_images_per_request: int = 64
    max_texts_per_request: int = 256
    timeout_ms: float | None = None
    switch_interval_ms: float | None = None
    """The interpreter's thread switch interval while serving (``sys.setswitchinterval``);
    None keeps Python's 5 ms. A thread that gave up the GIL in a blocking call (the generation
    engine's, after each step) waits up to this long to get it back from a busy event loop."""

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("the server needs at least one model")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        if min(self.max_body_bytes, self.max_images_per_request, self.max_texts_per_request) < 1:
            raise ValueError(
                "max_body_bytes, max_images_per_request and max_texts_per_request must be positive"
            )
        if self.timeout_ms is not None and not 0 < self.timeout_ms <= _DAY_MS:
            raise ValueError(f"timeout_ms must be in (0, {_DAY_MS}], got {self.timeout_ms}")
        if self.switch_interval_ms is not None and not 0 < self.switch_interval_ms <= 1000:
            raise ValueError(
                f"switch_interval_ms must be in (0, 1000], got {self.switch_interval_ms}"
            )
        if self.max_body_bytes > _MAX_BODY:
            raise ValueError(
                f"max_body_bytes must be at most {_MAX_BODY}, got {self.max_body_bytes}"
            )
        if self.token is None and os.environ.get("STOKER_TOKEN"):
            object.__setattr__(self, "token", os.environ["STOKER_TOKEN"])


@contextlib.contextmanager
def switch_interval(ms: float | None) -> Iterator[None]:
    """``sys.setswitchinterval(ms / 1000)`` inside, the previous interval after; None: as is."""
    if ms is None:
        yield
        return
    previous = sys.getswitchinterval()
    sys.setswitchinterval(ms / 1000)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def _build(cls: type[Any], values: Mapping[str, Any], where: str) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown setting(s) in {where}: {', '.join(unknown)}")
    return cls(**values)


def load_config(path: str | os.PathLike[str], **overrides: Any) -> ServerConfig:
    """Reads ``[server]`` and ``[[models]]`` tables from a TOML file; ``overrides`` (flags that
    were given) replace ``[server]`` settings."""
    with Path(path).open("rb") as f:
        data = tomllib.load(f)
    unknown = sorted(set(data) - {"server", "models"})
    if unknown:
        raise ValueError(f"unknown table(s) in {path}: {', '.join(unknown)}")
    models = tuple(
        _build(ModelConfig, m, f"{path} [[models]] #{i + 1}")
        for i, m in enumerate(data.get("models", []))
    )
    server = {**data.get("server", {}), **{k: v for k, v in overrides.items() if v is not None}}
    return _build(ServerConfig, {**server, "models": models}, f"{path} [server]")  # type: ignore[no-any-return]
