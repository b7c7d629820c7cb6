"""The extension is a plain native library: it must not link libtorch or CUDA.

torch is optional (the numpy API works without it) and CUDA is loaded at run time only when
pinning is requested, so neither may appear among the shared objects the extension needs.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

import stoker._native

FORBIDDEN = ("torch", "c10", "cuda", "cudart", "nvrtc", "cublas")


def _extension() -> Path:
    path = Path(str(stoker._native.__file__))
    assert path.is_file(), path
    assert path.suffix == ".so", path
    return path


def _needed_objdump(path: Path) -> list[str] | None:
    objdump = shutil.which("objdump")
    if objdump is None:
        return None
    proc = subprocess.run([objdump, "-p", str(path)], capture_output=True, text=True, check=True)
    return re.findall(r"^\s*NEEDED\s+(\S+)", proc.stdout, flags=re.MULTILINE)


def _resolved_ldd(path: Path) -> list[str] | None:
    ldd = shutil.which("ldd")
    if ldd is None:
        return None
    proc = subprocess.run([ldd, str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    # Names and paths only: the load address in parentheses is random and may spell "c10".
    lines = (re.sub(r"\(0x[0-9a-f]+\)", "", line).strip() for line in proc.stdout.splitlines())
    return [line for line in lines if line]


def test_extension_does_not_link_torch_or_cuda() -> None:
    path = _extension()
    needed = _needed_objdump(path)
    resolved = _resolved_ldd(path)
    if needed is None and resolved is None:
        pytest.skip("neither objdump nor ldd is available to read the extension's dependencies")
    if needed is not None:
        assert needed, "objdump found no NEEDED entries (expected at least libc)"
        bad = [n for n in needed if any(f in n.lower() for f in FORBIDDEN)]
        assert not bad, f"{path.name} needs {bad}"
        assert any(n.startswith("libc.so") for n in needed)
    if resolved is not None:
        bad = [line for line in resolved if any(f in line.lower() for f in FORBIDDEN)]
        assert not bad, f"{path.name} resolves {bad}"
