"""Shared fixtures. Helper modules (_imagegen, _reference, _support) live beside this file."""

from __future__ import annotations

from collections.abc import Iterator

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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if HAS_WEBP:
        return
    skip = pytest.mark.skip(reason="this build of stoker has no WebP support")
    for item in items:
        if "webp" in item.nodeid.lower():
            item.add_marker(skip)
