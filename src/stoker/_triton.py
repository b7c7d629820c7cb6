"""Triton where it is installed, and how stoker's kernels run on CPU tensors.

Kernels are compiled ``JITFunction``s whatever ``TRITON_INTERPRET`` says, so a process that also
compiles other Triton code (torch.compile) keeps doing so. CPU tensors (the tests on machines
without a GPU) run through interpreted copies of the kernels made by ``interpreted``: each copy
lives in a private namespace where the helpers it calls are interpreted too, since an
interpreted kernel cannot call a compiled one. For that to work, kernels call no ``@jit``
function of triton.language (``tl.max``, ``tl.sum``, ``tl.zeros`` are ones): those are only
interpreted when ``TRITON_INTERPRET`` was set before triton's import. They reduce with
``tl.reduce`` and combine functions of their own, and build tensors with ``tl.full``.
"""

from __future__ import annotations

import contextlib
import operator
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar, cast

import torch

try:
    import triton  # type: ignore[import-untyped,import-not-found,unused-ignore]
    import triton.language as tl  # type: ignore[import-untyped,import-not-found,unused-ignore]
    from triton.runtime.jit import (  # type: ignore[import-untyped,import-not-found,unused-ignore]
        JITFunction,
    )

    HAS_TRITON = True
except ImportError:  # CPU-only installs: the kernels are never called
    HAS_TRITON = False
    triton = cast(Any, None)
    tl = cast(Any, types.SimpleNamespace(tensor=Any, constexpr=Any))

__all__ = [
    "HAS_TRITON",
    "interpreted",
    "interpreted_copy",
    "jit",
    "jit_varying",
    "on_device",
    "tl",
    "triton",
]

_F = TypeVar("_F", bound=Callable[..., Any])


def jit(fn: _F) -> _F:
    """A compiled Triton function (the plain function when triton is missing)."""
    return cast(_F, JITFunction(fn)) if HAS_TRITON else fn


def jit_varying(*names: str) -> Callable[[_F], _F]:
    """``jit`` for a kernel whose integer arguments ``names`` change from call to call. Triton
    compiles a variant per value class of each integer argument (divisible by 16 or not, 1);
    these are left out, so that a new value never compiles a kernel while a server runs."""

    def wrap(fn: _F) -> _F:
        return cast(_F, JITFunction(fn, do_not_specialize=list(names))) if HAS_TRITON else fn

    return wrap


def interpreted_copy(fn: Any, namespace: dict[str, Any]) -> Any:
    """An interpreted copy of the jitted ``fn`` whose globals are ``namespace`` (which gets a
    ``range`` of its own)."""
    from triton.runtime.interpreter import (  # type: ignore[import-untyped,unused-ignore]
        InterpretedFunction,
    )

    raw = fn.fn
    namespace["range"] = _interpreter_range
    return InterpretedFunction(
        types.FunctionType(raw.__code__, namespace, raw.__name__, raw.__defaults__)
    )


def interpreted(module_globals: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """A copy of a module's globals where the jitted functions ``names`` are interpreted."""
    namespace = dict(module_globals)
    for name in names:
        namespace[name] = interpreted_copy(module_globals[name], namespace)
    return namespace


def _interpreter_range(*bounds: Any) -> range:
    """``range`` for interpreted kernels. The interpreter hands scalars around as 1-element
    arrays, which numpy 2.4 and later no longer turn into ints implicitly (``__index__``)."""
    return range(*(_as_int(b) for b in bounds))


def _as_int(value: Any) -> int:
    handle = getattr(value, "handle", None)
    return int(handle.data.item()) if handle is not None else operator.index(value)


def on_device(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Where a launch for tensors on ``device`` goes: Triton launches on the current CUDA
    device, so it becomes theirs; interpreted launches (CPU tensors) need nothing."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
