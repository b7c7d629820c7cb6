"""Test environment helpers: the conformance corpus, djpeg, library versions, crafted PNGs."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from _imagegen import parse_pnm
from PIL import features

import stoker

U8 = npt.NDArray[np.uint8]

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------
# Conformance corpus ($STOKER_CORPUS; the Makefile sets it to ../shared/corpus)


def corpus_dir() -> Path:
    env = os.environ.get("STOKER_CORPUS")
    return Path(env) if env else (REPO.parent / "shared" / "corpus").resolve()


def corpus_missing_reason() -> str:
    return (
        f"conformance corpus not found: no manifest.json in {corpus_dir()} "
        "(set STOKER_CORPUS to the corpus folder; `make py-test` sets it to ../shared/corpus)"
    )


@functools.cache
def corpus_entries() -> tuple[dict[str, Any], ...] | None:
    """The manifest's rows, or None when the corpus folder is absent."""
    manifest = corpus_dir() / "manifest.json"
    if not manifest.is_file():
        return None
    rows = json.loads(manifest.read_text(encoding="utf-8"))
    assert isinstance(rows, list) and rows, f"{manifest} lists no images"
    return tuple(rows)


def corpus_bytes(entry: dict[str, Any]) -> bytes:
    return (corpus_dir() / str(entry["file"])).read_bytes()


def corpus_name(entry: dict[str, Any]) -> str:
    return Path(str(entry["file"])).name


def corpus_params(
    *, reference: str | None = None, jpeg_only: bool = False, exclude_modes: tuple[str, ...] = ()
) -> list[Any]:
    """pytest params, one per manifest entry (id: file name), or one skipped param without it."""
    entries = corpus_entries()
    if entries is None:
        return [pytest.param(None, marks=pytest.mark.skip(reason=corpus_missing_reason()))]
    out = []
    for e in entries:
        if reference is not None and e["reference"] != reference:
            continue
        if jpeg_only and e.get("format") != "JPEG":
            continue
        if e.get("mode") in exclude_modes:
            continue
        out.append(pytest.param(e, id=corpus_name(e)))
    return out


# ---------------------------------------------------------------------------------------------
# libjpeg-turbo: djpeg, and whether Pillow bundles the same version stoker links


def djpeg_path() -> str | None:
    return shutil.which("djpeg")


def require_djpeg() -> str:
    path = djpeg_path()
    if path is None:
        pytest.skip("djpeg not on PATH (Debian: apt-get install libjpeg-turbo-progs)")
    return path


def djpeg_decode(data: bytes) -> U8:
    """(H, W, 3) uint8 as libjpeg-turbo's djpeg writes it (defaults: islow IDCT, fancy upsampling).

    Exit status 2 means libjpeg emitted warnings (e.g. extraneous bytes before a marker) but wrote
    the image; that output is what the library produces, so it is the reference too.
    """
    proc = subprocess.run([require_djpeg(), "-pnm"], input=data, capture_output=True, check=False)
    if proc.returncode not in (0, 2) or not proc.stdout:
        raise AssertionError(
            f"djpeg failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}"
        )
    return parse_pnm(proc.stdout)


@functools.cache
def system_libjpeg_turbo_version() -> str | None:
    """libjpeg-turbo version of the system library (djpeg ships with it), e.g. '2.1.5'."""
    path = djpeg_path()
    if path is None:
        return None
    proc = subprocess.run([path, "-version"], capture_output=True, text=True, check=False)
    m = re.search(r"libjpeg-turbo version (\d+\.\d+\.\d+)", proc.stdout + proc.stderr)
    return m.group(1) if m else None


@functools.cache
def pillow_libjpeg_turbo_version() -> str | None:
    version = features.version("libjpeg_turbo")
    return str(version) if version else None


def jpeg_tolerance_vs_pillow() -> int:
    """Max abs level difference allowed between stoker's and Pillow's decode of the same JPEG.

    0 when Pillow bundles the libjpeg-turbo version stoker links (same library, same pixels).
    Otherwise 2: different libjpeg-turbo releases may differ by a level or so in SIMD IDCT or
    upsampling paths. The exact contract (byte for byte with the linked libjpeg-turbo) is checked
    against djpeg in test_djpeg.py and test_corpus.py::test_corpus_jpeg_matches_djpeg.
    """
    sys_v, pil_v = system_libjpeg_turbo_version(), pillow_libjpeg_turbo_version()
    return 0 if sys_v is not None and sys_v == pil_v else 2


# ---------------------------------------------------------------------------------------------
# Hand-made PNGs (16-bit RGB, odd bit depths, lying headers)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def raw_png(
    width: int,
    height: int,
    bit_depth: int,
    color_type: int,
    rows: bytes,
    *,
    extra_chunks: tuple[bytes, ...] = (),
) -> bytes:
    """A PNG from filtered-free scanline payload `rows` (each row without its filter byte)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    stride = len(rows) // height if height else 0
    raw = b"".join(b"\x00" + rows[i * stride : (i + 1) * stride] for i in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + b"".join(extra_chunks)
        + png_chunk(b"IDAT", zlib.compress(raw))
        + png_chunk(b"IEND", b"")
    )


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR (correct CRC) declares width x height 8-bit RGB, with a tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )


def jpeg_with_dimensions(data: bytes, width: int, height: int) -> bytes:
    """The JPEG with its SOF marker's height and width fields rewritten."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ValueError("lost marker sync while looking for SOF")
        marker = data[pos + 1]
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2):
            # FF Cx, length (2), precision (1), height (2), width (2)
            return data[: pos + 5] + struct.pack(">HH", height, width) + data[pos + 9 :]
        pos += 2 + length
    raise ValueError("no SOF marker found")


def jpeg_scan_start(data: bytes) -> int:
    """Offset of the first byte of entropy-coded data (just after the first SOS segment)."""
    pos = 2
    while pos + 4 <= len(data):
        marker = data[pos + 1]
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == 0xDA:
            return pos + 2 + length
        pos += 2 + length
    raise ValueError("no SOS marker found")


# WebP is optional at build time (required on the project's own machines).
HAS_WEBP = "webp" in stoker.SUPPORTED_FORMATS


# ---------------------------------------------------------------------------------------------
# Servers on loopback


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def uvicorn_thread(app: Any, port: int, start_timeout: float = 30.0) -> Iterator[None]:
    """``app`` served by uvicorn on 127.0.0.1:``port`` from a thread of this process: started
    inside the block, shut down (lifespan included) after it."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        # A failed bind or lifespan ends the thread at once; say so rather than wait it out.
        if not thread.is_alive():
            raise RuntimeError(f"uvicorn on 127.0.0.1:{port} stopped before it started")
        if time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn on 127.0.0.1:{port} not started after {start_timeout}s")
        time.sleep(0.01)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=start_timeout)


class ServedOnThread:
    """Serves ``server`` (a NativeServer) on an event loop of its own thread until ``close``."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.port: int = server.port
        self.loop = asyncio.new_event_loop()
        self.stop = asyncio.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.server.serve(self.stop))
        finally:
            self.loop.close()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()
