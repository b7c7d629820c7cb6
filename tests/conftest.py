"""Shared fixtures. Helper modules (_imagegen, _reference, _support) live beside this file."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import stoker


@pytest.fixture
def restore_num_threads() -> Iterator[int]:
    """The pool size before the test; restored afterwards whatever the test set."""
    before = stoker.get_num_threads()
    try:
        yield before
    finally:
        stoker.set_num_threads(before)
