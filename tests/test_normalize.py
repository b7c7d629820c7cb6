"""The one-pass uint8 normalization against the torch formula it replaces (Triton's interpreter
on the CPU, the compiled kernel where there is a GPU)."""

from __future__ import annotations

import pytest
import torch

from stoker._normalize import normalize_hwc
from stoker._triton import HAS_TRITON

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="needs triton")


def _affine() -> tuple[torch.Tensor, torch.Tensor]:
    scale = torch.tensor([1 / (255 * s) for s in STD], device=DEVICE)
    shift = torch.tensor([-m / s for m, s in zip(MEAN, STD, strict=True)], device=DEVICE)
    return scale, shift


def _formula(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    scale, shift = _affine()
    return (x.float() * scale + shift).to(dtype)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(2, 5, 7, 3), (1, 1, 1, 3), (3, 33, 3)])
def test_matches_the_torch_formula(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(len(shape))
    x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen)
    x[..., 0] = 0  # both ends of the byte range, on every channel
    x.view(-1)[-3:] = 255
    x = x.to(DEVICE)
    got = normalize_hwc(x, *_affine(), dtype)
    assert got.dtype == dtype and got.shape == x.shape and got.device == x.device
    want = _formula(x, dtype)
    # The compiled kernel may fuse the multiply and add (one rounding instead of two).
    tol = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)


def test_empty_batch_and_bad_input() -> None:
    scale, shift = _affine()
    empty = torch.empty((0, 4, 4, 3), dtype=torch.uint8, device=DEVICE)
    assert normalize_hwc(empty, scale, shift, torch.float16).shape == (0, 4, 4, 3)
    with pytest.raises(ValueError, match="uint8"):
        normalize_hwc(empty.float(), scale, shift, torch.float16)
    with pytest.raises(ValueError, match="uint8"):
        normalize_hwc(torch.zeros((2, 4), dtype=torch.uint8), scale, shift, torch.float16)
    strided = torch.zeros((4, 4, 3), dtype=torch.uint8, device=DEVICE)[:, ::2]
    with pytest.raises(ValueError, match="contiguous"):
        normalize_hwc(strided, scale, shift, torch.float16)


@needs_triton
@pytest.mark.parametrize("channels_last", [True, False])
def test_the_cuda_runner_hands_its_model_the_normalized_nchw_batch(channels_last: bool) -> None:
    from types import SimpleNamespace

    from stoker._runner import CudaRunner

    scale, shift = _affine()
    runner = SimpleNamespace(
        _raw=False,
        _scale=scale,
        _shift=shift,
        _out_dtype=torch.float16,
        _channels_last=channels_last,
        _model=lambda x: x,
    )
    x = torch.randint(0, 256, (2, 6, 5, 3), dtype=torch.uint8).to(DEVICE)
    got = CudaRunner._forward(runner, x)  # type: ignore[arg-type]
    nchw = x.permute(0, 3, 1, 2)
    want = (nchw.float() * scale[:, None, None] + shift[:, None, None]).half()
    assert got.shape == (2, 3, 6, 5)
    assert got.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert got.is_contiguous() != channels_last
    torch.testing.assert_close(got.float(), want.float(), rtol=1e-3, atol=1e-3)
