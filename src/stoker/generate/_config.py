"""A decoder model folder: its architecture (config.json) and where its files are.

Llama-family decoders are read: Llama and Mistral (plain attention), Qwen2 (biased q/k/v
projections) and Qwen3 (RMSNorm over each head's queries and keys). Nothing is downloaded: a model
is a local folder with ``config.json``, safetensors weights and ``tokenizer.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stoker.generate._types import GenerationError

__all__ = ["DecoderConfig", "read_config"]

_FAMILIES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}


@dataclass(frozen=True)
class DecoderConfig:
    family: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool
    qk_norm: bool
    eos_token_ids: tuple[int, ...]

    @property
    def num_parameters(self) -> int:
        h, kv = self.hidden_size, self.num_kv_heads * self.head_dim
        attn = h * self.num_heads * self.head_dim * 2 + h * kv * 2
        mlp = 3 * h * self.intermediate_size
        embed = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * (attn + mlp) + embed


def _eos_ids(*sources: dict[str, Any]) -> tuple[int, ...]:
    ids: list[int] = []
    for source in sources:
        value = source.get("eos_token_id")
        for token in value if isinstance(value, list) else [value]:
            if isinstance(token, int) and token not in ids:
                ids.append(token)
    return tuple(ids)


def read_config(folder: Path) -> DecoderConfig:
    """The architecture of the model in ``folder``; GenerationError for anything unsupported."""
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a model folder: no config.json")
    raw: dict[str, Any] = json.loads(path.read_text())
    model_type = str(raw.get("model_type", ""))
    family = _FAMILIES.get(model_type)
    if family is None:
        raise GenerationError(
            f"model type {model_type!r} is not supported (supported: {', '.join(_FAMILIES)})"
        )
    rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", None):
        raise GenerationError(f"RoPE scaling {rope_type!r} is not supported")
    if raw.get("hidden_act", "silu") != "silu":
        raise GenerationError(f"activation {raw['hidden_act']!r} is not supported")
    if raw.get("use_sliding_window") or (family == "llama" and raw.get("sliding_window")):
        raise GenerationError("sliding-window attention is not supported")
    heads = int(raw["num_attention_heads"])
    kv_heads = int(raw.get("num_key_value_heads") or heads)
    if heads % kv_heads:
        raise GenerationError(f"{heads} attention heads do not group over {kv_heads} KV heads")
    generation = folder / "generation_config.json"
    extra = json.loads(generation.read_text()) if generation.is_file() else {}
    return DecoderConfig(
        family=family,
        vocab_size=int(raw["vocab_size"]),
        hidden_size=int(raw["hidden_size"]),
        num_layers=int(raw["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=int(raw.get("head_dim") or raw["hidden_size"] // heads),
        intermediate_size=int(raw["intermediate_size"]),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        rope_theta=float(rope.get("rope_theta", raw.get("rope_theta", 10000.0))),
        max_position_embeddings=int(raw.get("max_position_embeddings", 4096)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        attention_bias=bool(raw.get("attention_bias", family == "qwen2")),
        qk_norm=family == "qwen3",
        eos_token_ids=_eos_ids(raw, extra),
    )
