"""Tokenization with the Rust ``tokenizers`` library, without its padding or truncation.

The file's own padding is turned off (batches are padded by the engine, to its length buckets) and
so is its truncation, so that an input's full token count is known: a server refuses inputs over
its limit instead of silently embedding only their start. Truncation to the model's length then
happens here, keeping the closing special token as the tokenizer's own truncation would.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer

__all__ = ["EmptyTextError", "TextError", "TextTokenizer", "TextTooLongError"]


class TextError(ValueError):
    """A text input that cannot be embedded (HTTP 400)."""


class EmptyTextError(TextError):
    """The input is an empty string."""


class TextTooLongError(TextError):
    """The input has more tokens than the engine's ``max_tokens``."""


class TextTokenizer:
    """Text to token ids, truncated to ``max_length`` tokens (special tokens included)."""

    def __init__(self, path: str | Path, max_length: int) -> None:
        if max_length < 2:
            raise ValueError(f"max_length must leave room for two special tokens, got {max_length}")
        self._tokenizer = Tokenizer.from_file(str(path))
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self.max_length = max_length

    def encode(self, text: str) -> tuple[list[int], int]:
        """The ids the model sees, and the input's untruncated token count."""
        return self._fit(self._tokenizer.encode(text).ids)

    def encode_batch(self, texts: Sequence[str]) -> list[tuple[list[int], int]]:
        """``encode`` of several texts in one call, which runs on Rust threads without the GIL."""
        return [self._fit(e.ids) for e in self._tokenizer.encode_batch(list(texts))]

    def _fit(self, ids: list[int]) -> tuple[list[int], int]:
        n = len(ids)
        if n > self.max_length:
            ids = ids[: self.max_length - 1] + ids[-1:]
        return ids, n
