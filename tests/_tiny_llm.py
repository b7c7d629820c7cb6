"""Tiny random-weight decoder model folders for the generation tests.

Nothing can be downloaded, so each test builds its model: Hugging Face ``transformers`` writes the
weights and config of a Llama- or Qwen3-family model a few layers deep, and a byte-level BPE
tokenizer trained here on a small text supplies ``tokenizer.json``. ``tokenizer_config.json``
carries a ChatML chat template and the special tokens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_TEXT = (
    "the quick brown fox jumps over the lazy dog. stoker serves models so that the gpu never "
    "waits. a paged cache holds keys and values in blocks; the scheduler batches sequences "
    "continuously. hello world, hello stoker! numbers 0123456789 and symbols ,.;:?!-+=()[]{} "
    "\u00e9t\u00e9 \u00fcber na\u00efve caf\u00e9 \u65e5\u672c\u8a9e"
)


def build_tokenizer(folder: Path, vocab_size: int = 320) -> int:
    """Writes ``tokenizer.json`` and returns the vocabulary size it got."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_TEXT] * 4, trainer=trainer)
    tok.save(str(folder / "tokenizer.json"))
    return int(tok.get_vocab_size())


def build_model(
    folder: Path,
    family: str = "llama",
    *,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 512,
    tie_word_embeddings: bool = False,
    seed: int = 0,
    **extra: Any,
) -> Path:
    """A complete model folder at ``folder``: config, safetensors weights, tokenizer files."""
    import torch
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    vocab = build_tokenizer(folder)
    eos = SPECIAL_TOKENS.index("<|im_end|>")
    common: dict[str, Any] = {
        "vocab_size": vocab,
        "hidden_size": hidden_size,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": max_position_embeddings,
        "tie_word_embeddings": tie_word_embeddings,
        "bos_token_id": 0,
        "eos_token_id": eos,
        "pad_token_id": 0,
        **extra,
    }
    if family == "llama":
        config: Any = transformers.LlamaConfig(**common)
        model_class: Any = transformers.LlamaForCausalLM
    elif family == "qwen2":
        config = transformers.Qwen2Config(**common)
        model_class = transformers.Qwen2ForCausalLM
    elif family == "qwen3":
        common.setdefault("head_dim", 2 * hidden_size // heads)
        config = transformers.Qwen3Config(**common)
        model_class = transformers.Qwen3ForCausalLM
    else:
        raise ValueError(f"unknown family {family!r}")
    torch.manual_seed(seed)
    model = model_class(config).eval()
    # Random init leaves the norms at 1; perturbing them checks that every weight is used.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder, safe_serialization=True)
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "chat_template": CHAT_TEMPLATE,
                "eos_token": "<|im_end|>",
                "bos_token": None,
                "pad_token": "<|endoftext|>",
                "model_max_length": max_position_embeddings,
            }
        )
    )
    return folder
