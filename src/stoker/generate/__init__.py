"""Generative serving on stoker: a Llama-family decoder behind a native continuous-batching
scheduler and a paged KV cache.

Needs torch, safetensors and tokenizers (the ``generate`` extra).
"""

from stoker.generate._config import DecoderConfig, read_config
from stoker.generate._engine import GenerateEngine
from stoker.generate._model import Decoder, StepBatch, load_weights
from stoker.generate._remote import RemoteEngine
from stoker.generate._sampling import sample
from stoker.generate._speculative import NgramProposer, Proposer, TokenHistory
from stoker.generate._types import (
    STEP_BUCKETS,
    FinishReason,
    GenerationChunk,
    GenerationError,
    Generator,
    GeneratorStats,
    SamplingOptions,
    StepTimes,
)

__all__ = [
    "STEP_BUCKETS",
    "Decoder",
    "DecoderConfig",
    "FinishReason",
    "GenerateEngine",
    "GenerationChunk",
    "GenerationError",
    "Generator",
    "GeneratorStats",
    "NgramProposer",
    "Proposer",
    "RemoteEngine",
    "SamplingOptions",
    "StepBatch",
    "StepTimes",
    "TokenHistory",
    "load_weights",
    "read_config",
    "sample",
]
