"""Shared fixtures. Helper modules (_imagegen, _reference, _support) live beside this file."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _support import HAS_WEBP

import stoker


@pytest.fixture
def restore_num_threads() -> Iterator[int]:
    """The pool size before the test; restored afterwards whatever the test set."""
    before = stoker.get_num_threads()
    try:
        yield before
    finally:
        stoker.set_num_threads(before)


@pytest.fixture(scope="session")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Llama folder (config, safetensors, tokenizer) for generation tests."""
    pytest.importorskip("transformers")
    from _tiny_llm import build_model

    return build_model(tmp_path_factory.mktemp("llama"), "llama", seed=1)


@pytest.fixture
def engine_of() -> Iterator[Callable[..., Any]]:
    """Makes generation engines that are closed when the test ends."""
    from stoker.generate import GenerateEngine

    engines: list[GenerateEngine] = []

    def make(folder: Path, **kwargs: Any) -> GenerateEngine:
        engines.append(GenerateEngine(folder, **kwargs))
        return engines[-1]

    yield make
    for e in engines:
        e.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if HAS_WEBP:
        return
    skip = pytest.mark.skip(reason="this build of stoker has no WebP support")
    for item in items:
        if "webp" in item.nodeid.lower():
            item.add_marker(skip)
