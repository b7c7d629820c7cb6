"""A Llama-family decoder in PyTorch that runs one scheduler step over a paged KV cache.

The forward pass takes the step as flat tensors (every sequence's query tokens back to back) and
attends over the cache through the block tables, so prefill chunks and decode rows of any number
of sequences run in one pass. Weights are fused where that saves launches (q/k/v, gate/up) and
load from Hugging Face-named tensors, so a model folder's safetensors load as they are.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stoker.generate._attention import HAS_TRITON, paged_attention, write_kv
from stoker.generate._config import DecoderConfig
from stoker.generate._fused import qk_norm_rope, rms_norm, silu_mul
from stoker.generate._types import GenerationError

__all__ = ["Decoder", "KVCache", "StepBatch", "load_weights", "safetensors_files"]

KVCache = list[tuple[Tensor, Tensor]]
"""Per layer, the key and value caches, each (blocks, block_size, kv_heads, head_dim)."""


@dataclass
class StepBatch:
    """One step on the device: what the scheduler emitted, as tensors."""

    input_ids: Tensor  # (T,) int64
    positions: Tensor  # (T,) int64
    slot_mapping: Tensor  # (T,) int64
    cu_query_lens: Tensor  # (B + 1,) int32
    context_lens: Tensor  # (B,) int32
    block_tables: Tensor  # (B, W) int32
    logits_indices: Tensor  # (N,) int64: the rows whose last token samples
    max_query_len: int
    tiles: Tensor | None = None  # (2, M) int64: the attention's chunk_tiles map, if any


def _rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    # In float32 and cast back before the weight, as the reference implementation does, so that
    # greedy decoding in float32 matches it token for token.
    y = x.float()
    y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + eps)
    return weight * y.to(x.dtype)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def _weight(size: int, dtype: torch.dtype, device: torch.device) -> nn.Parameter:
    return nn.Parameter(torch.ones(size, dtype=dtype, device=device), requires_grad=False)


class _Layer(nn.Module):
    def __init__(self, cfg: DecoderConfig, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        h, d = cfg.hidden_size, cfg.head_dim
        self.q_size, self.kv_size = cfg.num_heads * d, cfg.num_kv_heads * d

        def linear(n_in: int, n_out: int, bias: bool = False) -> nn.Linear:
            return nn.Linear(n_in, n_out, bias=bias, dtype=dtype, device=device)

        self.input_norm = _weight(h, dtype, device)
        self.post_norm = _weight(h, dtype, device)
        self.qkv = linear(h, self.q_size + 2 * self.kv_size, cfg.attention_bias)
        self.o = linear(self.q_size, h)
        self.gate_up = linear(h, 2 * cfg.intermediate_size)
        self.down = linear(cfg.intermediate_size, h)
        self.q_norm = _weight(d, dtype, device) if cfg.qk_norm else None
        self.k_norm = _weight(d, dtype, device) if cfg.qk_norm else None


class Decoder(nn.Module):
    """The decoder's weights and its forward pass over one step."""

    def __init__(
        self,
        cfg: DecoderConfig,
        dtype: torch.dtype = torch.float32,
        device: str = "cpu",
        fused: bool | None = None,
    ) -> None:
        super().__init__()
        dev = torch.device(device)
        # Fused Triton stages (``_fused``) for half precision on a GPU by default; float32 keeps
        # the unfused torch stages, which match the reference implementation exactly.
        if fused is None:
            fused = HAS_TRITON and dev.type == "cuda" and dtype in (torch.float16, torch.bfloat16)
        self.fused = fused
        # Decode rows' keys shared between several programs when the step has few rows
        # (``decode_splits``); False keeps one program per row and kv head, a benchmark's baseline.
        self.split_kv = True
        self.cfg, self.dtype, self.device = cfg, dtype, dev
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size, dtype=dtype, device=dev)
        self.embed.weight.requires_grad_(False)
        self.layers: list[_Layer] = [_Layer(cfg, dtype, dev) for _ in range(cfg.num_layers)]
        self.blocks = nn.ModuleList(self.layers)  # registers the layers' parameters
        self.norm = _weight(cfg.hidden_size, dtype, dev)
        self.lm_head: Tensor = (
            self.embed.weight
            if cfg.tie_word_embeddings
            else nn.Parameter(
                torch.empty(cfg.vocab_size, cfg.hidden_size, dtype=dtype, device=dev),
                requires_grad=False,
            )
        )
        inv_freq = 1.0 / (
            cfg.rope_theta
            ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.int64).float() / cfg.head_dim)
        )
        angles = torch.outer(torch.arange(cfg.max_position_embeddings).float(), inv_freq)
        angles = torch.cat((angles, angles), dim=-1)
        self.register_buffer("cos", angles.cos().to(dev, dtype), persistent=False)
        self.register_buffer("sin", angles.sin().to(dev, dtype), persistent=False)
        self.scale = cfg.head_dim**-0.5
        self.requires_grad_(False)  # inference only; also lets load() copy into the weights

    def cache_blocks(self, block_size: int, fraction: float, cpu_bytes: int) -> int:
        """How many KV blocks fit ``fraction`` of the GPU memory left after the weights, or on
        the CPU ``cpu_bytes``."""
        element = torch.empty((), dtype=self.dtype).element_size()
        cfg = self.cfg
        per_block = 2 * cfg.num_layers * block_size * cfg.num_kv_heads * cfg.head_dim * element
        budget = cpu_bytes
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            # Memory the allocator holds but no tensor uses is free for the cache too.
            free += torch.cuda.memory_reserved(self.device)
            free -= torch.cuda.memory_allocated(self.device)
            budget = int(free * fraction)
        return max(budget // per_block, 1)

    def new_cache(self, num_blocks: int, block_size: int) -> KVCache:
        shape = (num_blocks, block_size, self.cfg.num_kv_heads, self.cfg.head_dim)
        return [
            (
                torch.zeros(shape, dtype=self.dtype, device=self.device),
                torch.zeros(shape, dtype=self.dtype, device=self.device),
            )
            for _ in range(self.cfg.num_layers)
        ]

    @torch.inference_mode()
    def forward(
        self,
        step: StepBatch,
        cache: KVCache,
        head: bool = True,
        poll: Callable[[], object] | None = None,
    ) -> Tensor:
        """Float32 logits of the ``logits_indices`` rows, (N, vocab); without ``head``, their
        final hidden states, (N, hidden), for ``head()`` to turn into logits later. ``poll`` is
        called on the host after each layer is queued."""
        run = self._forward_fused if self.fused else self._forward
        h = run(step, cache, poll)
        return self.head(h) if head else h

    def head(self, hidden: Tensor) -> Tensor:
        """Float32 logits of final hidden states."""
        return F.linear(hidden, self.lm_head).float()

    def _forward(
        self, step: StepBatch, cache: KVCache, poll: Callable[[], object] | None
    ) -> Tensor:
        cfg = self.cfg
        t = step.input_ids.shape[0]
        cos = self.cos[step.positions].unsqueeze(1)  # type: ignore[index]
        sin = self.sin[step.positions].unsqueeze(1)  # type: ignore[index]
        x = self.embed(step.input_ids)
        for layer, (k_cache, v_cache) in zip(self.layers, cache, strict=True):
            h = _rms_norm(x, layer.input_norm, cfg.rms_norm_eps)
            q, k, v = layer.qkv(h).split([layer.q_size, layer.kv_size, layer.kv_size], dim=-1)
            q = q.view(t, cfg.num_heads, cfg.head_dim)
            k = k.view(t, cfg.num_kv_heads, cfg.head_dim)
            v = v.view(t, cfg.num_kv_heads, cfg.head_dim)
            if layer.q_norm is not None and layer.k_norm is not None:
                q = _rms_norm(q, layer.q_norm, cfg.rms_norm_eps)
                k = _rms_norm(k, layer.k_norm, cfg.rms_norm_eps)
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            o = self._attend(step, q, k, v, (k_cache, v_cache))
            x = x + layer.o(o)
            h = _rms_norm(x, layer.post_norm, cfg.rms_norm_eps)
            gate, up = layer.gate_up(h).chunk(2, dim=-1)
            x = x + layer.down(F.silu(gate) * up)
            if poll is not None:
                poll()
        return _rms_norm(x[step.logits_indices], self.norm, cfg.rms_norm_eps)

    def _attend(
        self, step: StepBatch, q: Tensor, k: Tensor, v: Tensor, cache: tuple[Tensor, Tensor]
    ) -> Tensor:
        write_kv(k, v, cache[0], cache[1], step.slot_mapping)
        o = paged_attention(
            q,
            cache[0],
            cache[1],
            step.cu_query_lens,
            step.context_lens,
            step.block_tables,
            self.scale,
            step.max_query_len,
            tiles=step.tiles,
            splits=None if self.split_kv else 1,
        )
        return o.reshape(q.shape[0], -1)

    def _forward_fused(
        self, step: StepBatch, cache: KVCache, poll: Callable[[], object] | None
    ) -> Tensor:
        cfg, eps = self.cfg, self.cfg.rms_norm_eps
        t = step.input_ids.shape[0]
        x = self.embed(step.input_ids)
        h, x = rms_norm(x, self.layers[0].input_norm, eps)
        norms = [layer.input_norm for layer in self.layers[1:]] + [self.norm]
        for layer, layer_cache, next_norm in zip(self.layers, cache, norms, strict=True):
            qkv = layer.qkv(h)
            q, k = qk_norm_rope(
                qkv,
                step.positions,
                self.cos,  # type: ignore[arg-type]
                self.sin,  # type: ignore[arg-type]
                cfg.num_heads,
                cfg.num_kv_heads,
                layer.q_norm,
                layer.k_norm,
                eps,
            )
            v = qkv[:, layer.q_size + layer.kv_size :].view(t, cfg.num_kv_heads, cfg.head_dim)
            o = self._attend(step, q, k, v, layer_cache)
            h, x = rms_norm(layer.o(o), layer.post_norm, eps, residual=x)
            mlp = layer.down(silu_mul(layer.gate_up(h)))
            h, x = rms_norm(mlp, next_norm, eps, residual=x)
            if poll is not None:
                poll()
        return h[step.logits_indices]

    def load(self, tensors: Iterable[tuple[str, Tensor]]) -> None:
        """Loads Hugging Face-named weights; GenerationError names what is missing or unknown."""
        expected = set(self._targets())
        seen: set[str] = set()
        for name, value in tensors:
            if name not in expected:
                if name.startswith("lm_head") and self.cfg.tie_word_embeddings:
                    continue  # some tied checkpoints still store the head
                if name.endswith("rotary_emb.inv_freq"):
                    continue
                raise GenerationError(f"unexpected weight {name!r}")
            target, rows = self._targets()[name]
            part = target[rows] if rows is not None else target
            if tuple(part.shape) != tuple(value.shape):
                raise GenerationError(
                    f"weight {name!r} has shape {tuple(value.shape)}, expected {tuple(part.shape)}"
                )
            part.copy_(value.to(part.dtype))
            seen.add(name)
        missing = sorted(expected - seen)
        if missing:
            raise GenerationError(f"missing weights: {', '.join(missing[:5])}")

    def _targets(self) -> dict[str, tuple[Tensor, slice | None]]:
        cfg = self.cfg
        out: dict[str, tuple[Tensor, slice | None]] = {
            "model.embed_tokens.weight": (self.embed.weight, None),
            "model.norm.weight": (self.norm, None),
        }
        if not cfg.tie_word_embeddings:
            out["lm_head.weight"] = (self.lm_head, None)
        q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        inter = cfg.intermediate_size
        for i, layer in enumerate(self.layers):
            p = f"model.layers.{i}."
            out[p + "input_layernorm.weight"] = (layer.input_norm, None)
            out[p + "post_attention_layernorm.weight"] = (layer.post_norm, None)
            parts = {"q": slice(0, q), "k": slice(q, q + kv), "v": slice(q + kv, q + 2 * kv)}
            for proj, rows in parts.items():
                out[f"{p}self_attn.{proj}_proj.weight"] = (layer.qkv.weight, rows)
                if layer.qkv.bias is not None:
                    out[f"{p}self_attn.{proj}_proj.bias"] = (layer.qkv.bias, rows)
            out[p + "self_attn.o_proj.weight"] = (layer.o.weight, None)
            out[p + "mlp.gate_proj.weight"] = (layer.gate_up.weight, slice(0, inter))
            out[p + "mlp.up_proj.weight"] = (layer.gate_up.weight, slice(inter, 2 * inter))
            out[p + "mlp.down_proj.weight"] = (layer.down.weight, None)
            if layer.q_norm is not None and layer.k_norm is not None:
                out[p + "self_attn.q_norm.weight"] = (layer.q_norm, None)
                out[p + "self_attn.k_norm.weight"] = (layer.k_norm, None)
        return out


def safetensors_files(folder: Path) -> list[Path]:
    """The weight files of a model folder: one ``model.safetensors`` or the shards of an index."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / s for s in shards]
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    raise FileNotFoundError(f"{folder} holds no safetensors weights")


def _read(files: list[Path]) -> Iterator[tuple[str, Tensor]]:
    from safetensors import safe_open

    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                yield name, f.get_tensor(name)


def load_weights(model: Decoder, folder: Path) -> None:
    model.load(_read(safetensors_files(folder)))
