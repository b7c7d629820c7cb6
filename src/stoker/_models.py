"""Turning what the user names as a model into a module on the engine's device."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import overload

import numpy as np
import numpy.typing as npt
import torch

from stoker._nets import EMBEDDED

__all__ = ["ModelLike", "TopK", "load_model", "top_k"]

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


def _named(name: str, weights: str | os.PathLike[str] | None) -> torch.nn.Module:
    module: torch.nn.Module
    if name in EMBEDDED:
        module = EMBEDDED[name]()
    else:
        try:
            import torchvision
        except ImportError as e:
            raise ValueError(
                f"{name!r} is not a file nor an embedded model ({', '.join(EMBEDDED)}), and "
                "naming a torchvision architecture needs torchvision"
            ) from e
        try:
            module = torchvision.models.get_model(name, weights=None)
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
            module = _named(model, weights)
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


class TopK(Sequence[list[tuple[int, float]]]):
    """A batch's k best classes: ``ids`` and ``scores`` arrays of shape (n, k); row i reads as
    ``[(class_id, score), ...]``, built only when asked for, so batch consumers skip per-row
    Python objects."""

    __slots__ = ("ids", "scores")

    def __init__(self, ids: npt.NDArray[np.int64], scores: npt.NDArray[np.float32]) -> None:
        self.ids = ids
        self.scores = scores

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, i: int) -> list[tuple[int, float]]: ...

    @overload
    def __getitem__(self, i: slice) -> list[list[tuple[int, float]]]: ...

    def __getitem__(
        self, i: int | slice
    ) -> list[tuple[int, float]] | list[list[tuple[int, float]]]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return list(zip(self.ids[i].tolist(), self.scores[i].tolist(), strict=True))


def top_k(k: int = 5, *, softmax: bool = True) -> Callable[[torch.Tensor], TopK]:
    """A postprocess: for each request, ``[(class_id, score), ...]`` of its k best classes."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")

    def postprocess(logits: torch.Tensor) -> TopK:
        scores = logits.float().softmax(-1) if softmax else logits.float()
        values, ids = scores.topk(k, dim=-1)
        return TopK(ids.cpu().numpy(), values.cpu().numpy())

    return postprocess
