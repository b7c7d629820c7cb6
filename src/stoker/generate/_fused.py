"""Fused elementwise stages of the decoder layer, as Triton kernels.

A decode step of a small model is mostly tiny elementwise kernels: RMSNorm alone is seven torch
kernels, the per-head query/key norm and the rotary embedding two dozen more per layer. Each costs
a few microseconds of GPU time even inside a CUDA graph, which adds up to milliseconds per step
over 28 layers. These kernels do each stage in one pass:

- ``rms_norm``: an optional residual add, then RMSNorm with its weight;
- ``qk_norm_rope``: per-head RMSNorm of queries and keys (Qwen3) and the rotary embedding;
- ``silu_mul``: the gated MLP's ``silu(gate) * up``.

They round intermediate values to the model's dtype where the plain torch version does, so they
stay within a rounding step of it; ``Decoder`` uses them for half-precision models on CUDA and
keeps the torch version (exact against the reference implementation) for float32. CPU tensors
run through Triton's interpreter, for the tests.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

from stoker._triton import HAS_TRITON, interpreted, jit, tl, triton

__all__ = ["qk_norm_rope", "rms_norm", "silu_mul"]


@jit
def _add(a: tl.tensor, b: tl.tensor) -> tl.tensor:
    return a + b


@jit
def _rms_kernel(
    x_ptr: tl.tensor,
    res_ptr: tl.tensor,
    w_ptr: tl.tensor,
    out_ptr: tl.tensor,
    res_out_ptr: tl.tensor,
    sx: tl.tensor,
    sr: tl.tensor,
    so: tl.tensor,
    sro: tl.tensor,
    n: tl.tensor,
    eps: tl.tensor,
    HAS_RES: tl.constexpr,
    BLOCK: tl.constexpr,
) -> None:
    row = tl.program_id(0)
    col = tl.arange(0, BLOCK)
    ok = col < n
    x = tl.load(x_ptr + row * sx + col, mask=ok, other=0.0)
    if HAS_RES:
        # The residual stream is kept in the model's dtype, as the unfused layer keeps it.
        x = (x.to(tl.float32) + tl.load(res_ptr + row * sr + col, mask=ok, other=0.0)).to(x.dtype)
        tl.store(res_out_ptr + row * sro + col, x, mask=ok)
    y = x.to(tl.float32)
    mean = tl.reduce(y * y, 0, _add) / n
    y = (y / tl.sqrt(mean + eps)).to(x.dtype).to(tl.float32)
    w = tl.load(w_ptr + col, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * so + col, (w * y).to(out_ptr.dtype.element_ty), mask=ok)


@jit
def _qk_kernel(
    qkv_ptr: tl.tensor,
    pos_ptr: tl.tensor,
    cos_ptr: tl.tensor,
    sin_ptr: tl.tensor,
    qw_ptr: tl.tensor,
    kw_ptr: tl.tensor,
    q_ptr: tl.tensor,
    k_ptr: tl.tensor,
    s_qkv: tl.tensor,
    s_cos: tl.tensor,
    eps: tl.tensor,
    HQ: tl.constexpr,
    HKV: tl.constexpr,
    HALF: tl.constexpr,
    NORM: tl.constexpr,
) -> None:
    token = tl.program_id(0)
    head = tl.program_id(1)
    is_q = head < HQ
    d = tl.arange(0, HALF)
    base = qkv_ptr + token * s_qkv + head * 2 * HALF
    x1 = tl.load(base + d)
    x2 = tl.load(base + HALF + d)
    dtype = x1.dtype
    a = x1.to(tl.float32)
    b = x2.to(tl.float32)
    if NORM:
        mean = (tl.reduce(a * a, 0, _add) + tl.reduce(b * b, 0, _add)) / (2 * HALF)
        inv = 1.0 / tl.sqrt(mean + eps)
        w_ptr = tl.where(is_q, qw_ptr, kw_ptr)
        a = tl.load(w_ptr + d).to(tl.float32) * (a * inv).to(dtype).to(tl.float32)
        b = tl.load(w_ptr + HALF + d).to(tl.float32) * (b * inv).to(dtype).to(tl.float32)
        a = a.to(dtype).to(tl.float32)
        b = b.to(dtype).to(tl.float32)
    pos = tl.load(pos_ptr + token)
    c = tl.load(cos_ptr + pos * s_cos + d).to(tl.float32)
    s = tl.load(sin_ptr + pos * s_cos + d).to(tl.float32)
    # x * cos + rotate_half(x) * sin, each product rounded as the unfused version rounds it.
    o1 = (a * c).to(dtype).to(tl.float32) + (-b * s).to(dtype).to(tl.float32)
    o2 = (b * c).to(dtype).to(tl.float32) + (a * s).to(dtype).to(tl.float32)
    if is_q:
        out = q_ptr + (token * HQ + head) * 2 * HALF
    else:
        out = k_ptr + (token * HKV + head - HQ) * 2 * HALF
    tl.store(out + d, o1.to(dtype))
    tl.store(out + HALF + d, o2.to(dtype))


@jit
def _silu_mul_kernel(
    gu_ptr: tl.tensor,
    out_ptr: tl.tensor,
    n: tl.tensor,
    s_gu: tl.tensor,
    s_out: tl.tensor,
    BLOCK: tl.constexpr,
) -> None:
    row = tl.program_id(0)
    col = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = col < n
    g = tl.load(gu_ptr + row * s_gu + col, mask=ok, other=0.0)
    u = tl.load(gu_ptr + row * s_gu + n + col, mask=ok, other=0.0).to(tl.float32)
    gf = g.to(tl.float32)
    act = (gf / (1.0 + tl.exp(-gf))).to(g.dtype).to(tl.float32)
    tl.store(out_ptr + row * s_out + col, (act * u).to(g.dtype), mask=ok)


def _kernel(name: str, device: torch.device) -> Any:
    if not HAS_TRITON:
        raise RuntimeError("the fused decoder kernels require triton (pip install triton)")
    return globals()[name] if device.type == "cuda" else _interpreted(name)


@functools.cache
def _interpreted(name: str) -> Any:
    return interpreted(globals(), ("_add", name))[name]


def _launch(name: str, device: torch.device, grid: tuple[int, ...], *args: Any, **kw: Any) -> None:
    _kernel(name, device)[grid](*args, **kw)


def rms_norm(
    x: Tensor, weight: Tensor, eps: float, residual: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``(rms_norm(x + residual) * weight, x + residual)`` over the last dim of 2-D ``x``
    (without ``residual``: the norm of ``x``, and ``x``)."""
    rows, n = x.shape
    out = torch.empty_like(x)
    res_out = torch.empty_like(x) if residual is not None else x
    res = residual if residual is not None else x
    block = triton.next_power_of_2(n)
    _launch(
        "_rms_kernel",
        x.device,
        (rows,),
        x,
        res,
        weight,
        out,
        res_out,
        x.stride(0),
        res.stride(0),
        out.stride(0),
        res_out.stride(0),
        n,
        eps,
        HAS_RES=residual is not None,
        BLOCK=block,
    )
    return out, res_out


def qk_norm_rope(
    qkv: Tensor,
    positions: Tensor,
    cos: Tensor,
    sin: Tensor,
    num_heads: int,
    num_kv_heads: int,
    q_weight: Tensor | None,
    k_weight: Tensor | None,
    eps: float,
) -> tuple[Tensor, Tensor]:
    """Queries ``(T, Hq, D)`` and keys ``(T, Hkv, D)`` from the fused projection ``qkv``
    (``(T, (Hq + 2 Hkv) D)``, last dim contiguous): per-head RMSNorm when weights are given,
    then the rotary embedding at ``positions`` from ``cos``/``sin`` tables ``(positions, D)``."""
    t = qkv.shape[0]
    head_dim = cos.shape[1]
    q = torch.empty(t, num_heads, head_dim, dtype=qkv.dtype, device=qkv.device)
    k = torch.empty(t, num_kv_heads, head_dim, dtype=qkv.dtype, device=qkv.device)
    if t == 0:
        return q, k
    norm = q_weight is not None and k_weight is not None
    _launch(
        "_qk_kernel",
        qkv.device,
        (t, num_heads + num_kv_heads),
        qkv,
        positions,
        cos,
        sin,
        q_weight if norm else cos,
        k_weight if norm else cos,
        q,
        k,
        qkv.stride(0),
        cos.stride(0),
        eps,
        HQ=num_heads,
        HKV=num_kv_heads,
        HALF=head_dim // 2,
        NORM=norm,
    )
    return q, k


def silu_mul(gate_up: Tensor) -> Tensor:
    """``silu(gate) * up`` of a ``(T, 2 I)`` tensor holding ``[gate | up]`` per row."""
    t, width = gate_up.shape
    n = width // 2
    out = torch.empty(t, n, dtype=gate_up.dtype, device=gate_up.device)
    block = 1024 if gate_up.device.type == "cuda" else 256
    if t:
        _launch(
            "_silu_mul_kernel",
            gate_up.device,
            (t, triton.cdiv(n, block)),
            gate_up,
            out,
            n,
            gate_up.stride(0),
            out.stride(0),
            BLOCK=block,
        )
    return out
