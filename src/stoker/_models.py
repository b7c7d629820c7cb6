"""Turning what the user names as a model into a module on the engine's device."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["ModelLike", "load_model", "top_k"]

ModelLike = torch.nn.Module | torch.export.ExportedProgram | str | os.PathLike[str]


def _from_file(path: Path, device: torch.device) -> torch.nn.Module:
    if path.suffix == ".pt2":
        return torch.export.load(str(path)).module()
    try:
        module: torch.nn.Module = torch.jit.load(str(path), map_location=device)  # type: ignore[no-untyped-call]
    except RuntimeError as e:
        raise ValueError(
            f"{path} is neither a torch.export program (.pt2) nor a TorchScript file: {e}"
        ) from e
    return module


def _torchvision(name: str, weights: str | os.PathLike[str] | None) -> torch.nn.Module:
    try:
        import torchvision
    except ImportError as e:
        raise ValueError(
            f"{name!r} is not a file, and naming a torchvision architecture needs torchvision"
        ) from e
    try:
        module: torch.nn.Module = torchvision.models.get_model(name, weights=None)
    except ValueError as e:
        raise ValueError(f"{name!r} is not a file nor a torchvision architecture") from e
    if weights is not None:
        state = torch.load(os.fspath(weights), map_location="cpu", weights_only=True)
        module.load_state_dict(state)
    return module


def load_model(
    model: ModelLike,
    *,
    weights: str | os.PathLike[str] | None,
    device: torch.device,
    dtype: torch.dtype | None,
    channels_last: bool,
) -> torch.nn.Module:
    """An eval-mode module on ``device`` (in ``dtype`` and channels_last when asked)."""
    if weights is not None and not isinstance(model, str):
        raise ValueError("weights= applies only to a torchvision architecture name")
    module: torch.nn.Module
    if isinstance(model, torch.export.ExportedProgram):
        module = model.module()
    elif isinstance(model, torch.nn.Module):
        module = model
    elif isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if path.is_file():
            if weights is not None:
                raise ValueError("weights= applies only to a torchvision architecture name")
            module = _from_file(path, device)
        elif isinstance(model, str) and os.sep not in model:
            module = _torchvision(model, weights)
        else:
            raise FileNotFoundError(f"model file {path} does not exist")
    else:
        raise TypeError(
            "model must be a torch.nn.Module, a torch.export program, a TorchScript or .pt2 "
            f"file, or a torchvision architecture name; got {type(model).__name__}"
        )
    # Exported programs' modules refuse eval(); their graphs are already in inference form.
    if not _exported(module):
        module.eval()
    module.to(device)
    if dtype is not None and dtype.is_floating_point:
        module.to(dtype)
    if channels_last:
        module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return module


def _exported(module: torch.nn.Module) -> bool:
    return type(module).__name__ == "GraphModule" and hasattr(module, "_in_spec")


def top_k(k: int = 5, *, softmax: bool = True) -> Callable[[torch.Tensor], Sequence[Any]]:
    """A postprocess: for each request, ``[(class_id, score), ...]`` of its k best classes."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")

    def postprocess(logits: torch.Tensor) -> Sequence[Any]:
        scores = logits.float().softmax(-1) if softmax else logits.float()
        values, ids = scores.topk(k, dim=-1)
        return [
            list(zip(i, v, strict=True)) for i, v in zip(ids.tolist(), values.tolist(), strict=True)
        ]

    return postprocess
