"""A BERT encoder in plain PyTorch for sentence embeddings: mean pooling over the real tokens and
L2 normalization, as all-MiniLM-L6-v2 was trained to be used.

Weights are read from the checkpoint's safetensors under the names the checkpoint gives them; the
query, key and value projections are fused into one matrix at load, one matmul instead of three.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

__all__ = ["BertConfig", "BertEncoder", "load_encoder"]


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float

    @classmethod
    def from_file(cls, path: str | Path) -> BertConfig:
        raw: dict[str, Any] = json.loads(Path(path).read_text())
        if raw.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"only GELU encoders are supported, not {raw['hidden_act']!r}")
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__})


class _Layer(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.heads = c.num_attention_heads
        self.qkv = nn.Linear(c.hidden_size, 3 * c.hidden_size)
        self.attn_out = nn.Linear(c.hidden_size, c.hidden_size)
        self.attn_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.up = nn.Linear(c.hidden_size, c.intermediate_size)
        self.down = nn.Linear(c.intermediate_size, c.hidden_size)
        self.out_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = self.attn_norm(x + self.attn_out(a.transpose(1, 2).reshape(b, n, d)))
        out: torch.Tensor = self.out_norm(x + self.down(F.gelu(self.up(x))))
        return out


class BertEncoder(nn.Module):
    """Token ids and their mask (B, L) in; unit-length sentence embeddings (B, hidden) out."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.words = nn.Embedding(c.vocab_size, c.hidden_size)
        self.positions = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_types = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.embed_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.layers = nn.ModuleList(_Layer(c) for _ in range(c.num_hidden_layers))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        n = ids.shape[1]
        # Every input is a single segment, so the token-type embedding is row 0 for all tokens.
        x = self.words(ids) + self.positions.weight[:n] + self.token_types.weight[0]
        x = self.embed_norm(x)
        keep = mask.bool()
        attend = keep[:, None, None, :]
        for layer in self.layers:
            x = layer(x, attend)
        # Pooling in float32: half-precision sums over 256 tokens lose the last digits.
        weights = keep.unsqueeze(-1).to(torch.float32)
        pooled = (x.float() * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, p=2.0, dim=1)

    def load_checkpoint(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copies a BERT checkpoint's tensors in; a missing or misshapen tensor raises."""
        prefix = "bert." if "bert.embeddings.word_embeddings.weight" in tensors else ""

        def get(name: str) -> torch.Tensor:
            return tensors[prefix + name]

        own: dict[str, torch.Tensor] = {
            "words.weight": get("embeddings.word_embeddings.weight"),
            "positions.weight": get("embeddings.position_embeddings.weight"),
            "token_types.weight": get("embeddings.token_type_embeddings.weight"),
            "embed_norm.weight": get("embeddings.LayerNorm.weight"),
            "embed_norm.bias": get("embeddings.LayerNorm.bias"),
        }
        for i in range(self.config.num_hidden_layers):
            src, dst = f"encoder.layer.{i}.", f"layers.{i}."
            for kind in ("weight", "bias"):
                own[dst + "qkv." + kind] = torch.cat(
                    [get(f"{src}attention.self.{p}.{kind}") for p in ("query", "key", "value")]
                )
                own[dst + "attn_out." + kind] = get(f"{src}attention.output.dense.{kind}")
                own[dst + "attn_norm." + kind] = get(f"{src}attention.output.LayerNorm.{kind}")
                own[dst + "up." + kind] = get(f"{src}intermediate.dense.{kind}")
                own[dst + "down." + kind] = get(f"{src}output.dense.{kind}")
                own[dst + "out_norm." + kind] = get(f"{src}output.LayerNorm.{kind}")
        self.load_state_dict(own, strict=True)


def load_encoder(
    weights: str | Path,
    config: str | Path,
    device: torch.device,
    dtype: torch.dtype | None = None,
) -> BertEncoder:
    """The encoder with the checkpoint's weights, in eval mode on ``device`` and ``dtype``."""
    model = BertEncoder(BertConfig.from_file(config))
    model.load_checkpoint(load_file(str(weights)))
    return model.to(device=device, dtype=dtype).eval()
