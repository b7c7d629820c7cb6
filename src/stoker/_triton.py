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
import types
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar, cast

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
    "interpreter_warnings",
    "jit",
    "tl",
    "triton",
]

_F = TypeVar("_F", bound=Callable[..., Any])


def jit(fn: _F) -> _F:
    """A compiled Triton function (the plain function when triton is missing)."""
    return cast(_F, JITFunction(fn)) if HAS_TRITON else fn


def interpreted_copy(fn: Any, namespace: dict[str, Any]) -> Any:
    """An interpreted copy of the jitted ``fn`` whose globals are ``namespace``."""
    from triton.runtime.interpreter import (  # type: ignore[import-untyped,unused-ignore]
        InterpretedFunction,
    )

    raw = fn.fn
    return InterpretedFunction(
        types.FunctionType(raw.__code__, namespace, raw.__name__, raw.__defaults__)
    )


def interpreted(module_globals: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """A copy of a module's globals where the jitted functions ``names`` are interpreted."""
    namespace = dict(module_globals)
    for name in names:
        namespace[name] = interpreted_copy(module_globals[name], namespace)
    return namespace


@contextlib.contextmanager
def interpreter_warnings() -> Iterator[None]:
    """Silences what the interpreter makes numpy say: it hands scalar arguments around as
    1-element arrays, and range() over one warns about converting an array to a scalar."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", "Conversion of an array with ndim > 0", DeprecationWarning
        )
        yield
