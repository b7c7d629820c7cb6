"""Text around the engine's token ids: chat templates in, text deltas and stop strings out."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from stoker.generate._types import FinishReason, GenerationChunk, GenerationError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = ["ROLES", "ChatTemplate", "IncrementalDetokenizer", "StopStrings", "TextStream"]

ROLES = frozenset({"system", "user", "assistant", "tool"})

_REPLACEMENT = "\ufffd"


def _raise_exception(message: str) -> NoReturn:
    raise jinja2.TemplateError(message)


def _tojson(
    value: Any, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    # Jinja's own filter escapes <, > and & for HTML; chat templates expect plain JSON.
    return json.dumps(
        value, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(form: str) -> str:
    return time.strftime(form)


def _token_text(value: Any) -> str:
    """A special token of ``tokenizer_config.json``: a string, or an AddedToken object."""
    if isinstance(value, Mapping):
        value = value.get("content")
    return value if isinstance(value, str) else ""


class ChatTemplate:
    """A model's Jinja chat template, rendered the way Hugging Face's tokenizers render it:
    a sandbox, ``trim_blocks`` and ``lstrip_blocks``, ``raise_exception``, ``tojson``,
    ``strftime_now``, and the special tokens as variables."""

    def __init__(self, source: str | None, *, bos_token: str = "", eos_token: str = "") -> None:
        """``source`` None: the model has none, and rendering raises GenerationError."""
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self._template: jinja2.Template | None = None
        if source is None:
            return
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
        )
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateSyntaxError as e:
            raise GenerationError(f"the chat template does not compile: {e}") from None

    @classmethod
    def from_folder(cls, folder: Path) -> ChatTemplate:
        """The template of ``folder/tokenizer_config.json``: its ``chat_template`` string, or
        the one named "default" of a list of named templates."""
        path = folder / "tokenizer_config.json"
        if not path.is_file():
            return cls(None)
        config = json.loads(path.read_text(encoding="utf-8"))
        source = config.get("chat_template")
        if isinstance(source, list):
            named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
            source = named.get("default")
        if source is not None and not isinstance(source, str):
            raise GenerationError(f"{path}: chat_template must be a string or named templates")
        return cls(
            source,
            bos_token=_token_text(config.get("bos_token")),
            eos_token=_token_text(config.get("eos_token")),
        )

    def render(self, messages: Any, add_generation_prompt: bool = True) -> str:
        """The prompt text of an OpenAI-style ``messages`` list. Raises GenerationError for
        malformed messages, a model without a template, or a template that refuses them."""
        if self._template is None:
            raise GenerationError("this model has no chat template; use /v1/completions")
        if not isinstance(messages, list) or not messages:
            raise GenerationError("'messages' must be a non-empty list of messages")
        checked = [_message(i, m) for i, m in enumerate(messages)]
        try:
            return self._template.render(
                messages=checked,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        # A TypeError is a template combining values that these messages lack or mistype.
        except (jinja2.TemplateError, TypeError) as e:
            raise GenerationError(f"the chat template refused the messages: {e}") from None


def _message(i: int, message: Any) -> dict[str, Any]:
    """A message with its content as one string; other keys (name, tool_calls, ...) are kept
    for the templates that use them."""
    if not isinstance(message, dict):
        raise GenerationError(f"messages[{i}] must be an object")
    role = message.get("role")
    if role not in ROLES:
        raise GenerationError(f"messages[{i}].role must be one of {', '.join(sorted(ROLES))}")
    content = message.get("content")
    if content is None and role == "assistant":  # an assistant turn that only called tools
        content = ""
    elif isinstance(content, list):
        texts = []
        for part in content:
            if not (
                isinstance(part, dict)
                and part.get("type") == "text"
                and isinstance(part.get("text"), str)
            ):
                raise GenerationError(
                    f'messages[{i}].content: only {{"type": "text", "text": ...}} parts are served'
                )
            texts.append(part["text"])
        content = "\n".join(texts)
    elif not isinstance(content, str):
        raise GenerationError(f"messages[{i}].content must be a string or a list of text parts")
    return {**message, "content": content}


class IncrementalDetokenizer:
    """The text of a growing token sequence, as deltas that never end inside a character.

    A byte-level BPE token may hold part of a UTF-8 character, and decoding a sequence that ends
    there gives U+FFFD in place of the partial character; such text is held back until the
    character completes. Each delta is the decoding of a short window of recent tokens minus
    that of its first tokens, so the cost per token stays constant, and a token's text may
    depend on the one before it (SentencePiece drops the space at the start of a text).
    Special tokens are left out of the text.
    """

    _CONTEXT = 4

    def __init__(self, tokenizer: Tokenizer, context: Sequence[int] = ()) -> None:
        """``context``: the prompt's ids, the last few of which start the window."""
        self._tokenizer = tokenizer
        self._ids = list(context[-self._CONTEXT :])
        if self._decode(self._ids).endswith(_REPLACEMENT):
            # A prompt of token ids may end inside a character, which no delta should finish.
            self._ids = []
        # self._ids: the window; its first self._read ids were shown already, as its context.
        self._read = len(self._ids)

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    def add(self, token_ids: Sequence[int]) -> str:
        """The new text that ``token_ids`` complete (possibly empty)."""
        self._ids.extend(token_ids)
        return self._advance(final=False)

    def flush(self) -> str:
        """Text still held back, as decoded: at the end of the sequence nothing will follow."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        if self._read == len(self._ids):
            return ""
        before = self._decode(self._ids[: self._read])
        after = self._decode(self._ids)
        if not final and (len(after) <= len(before) or after.endswith(_REPLACEMENT)):
            return ""
        # What was just shown becomes the context of the next window.
        del self._ids[: self._read]
        self._read = len(self._ids)
        return after[len(before) :]


class StopStrings:
    """Cuts generated text before the first stop string it holds.

    Text that could be the beginning of a stop string is held back until the next text shows
    whether it is, so a stream never shows part of a stop string. ``stopped`` tells when one
    appeared; nothing after it is ever returned.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        if any(not s for s in stops):
            raise GenerationError("stop strings must not be empty")
        self.stops = tuple(stops)
        self.stopped = False
        self._held = ""
        self._longest = max(map(len, self.stops), default=0)

    def add(self, text: str) -> str:
        """What may be shown of the text so far, beyond what was shown before."""
        if self.stopped:
            return ""
        buffer = self._held + text
        # What was held contains no whole stop string, so any one here is the earliest.
        found = [i for i in (buffer.find(s) for s in self.stops) if i >= 0]
        if found:
            self.stopped = True
            self._held = ""
            return buffer[: min(found)]
        keep = self._partial(buffer)
        self._held = buffer[len(buffer) - keep :]
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        """The held-back text, once the sequence ended without completing a stop string."""
        held, self._held = self._held, ""
        return held

    def _partial(self, text: str) -> int:
        """The length of the longest end of ``text`` that begins some stop string."""
        for k in range(min(self._longest - 1, len(text)), 0, -1):
            tail = text[-k:]
            if any(s.startswith(tail) for s in self.stops):
                return k
        return 0


class TextStream:
    """A sequence's chunks as text: deltas of whole characters, cut before any stop string."""

    def __init__(
        self, tokenizer: Tokenizer, stops: Sequence[str] = (), context: Sequence[int] = ()
    ) -> None:
        self._detokenizer = IncrementalDetokenizer(tokenizer, context)
        self._stops = StopStrings(stops)

    def add(self, chunk: GenerationChunk) -> tuple[str, FinishReason | None]:
        """The chunk's new text, and the sequence's finish reason: "stop" once a stop string
        appeared, else the chunk's. After a finish reason nothing more comes."""
        stops, detokenizer = self._stops, self._detokenizer
        text = stops.add(detokenizer.add(chunk.token_ids))
        if chunk.finish_reason is not None:
            text += stops.add(detokenizer.flush()) + stops.flush()
        return text, "stop" if stops.stopped else chunk.finish_reason
