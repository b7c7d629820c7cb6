"""A complete decoder model folder with random weights, for serving benchmarks without downloads.

The folder is what ``stoker serve --task text-generation --model FOLDER`` loads: ``config.json``
and ``model.safetensors`` of a Qwen3 model (written by ``transformers``), a ``tokenizer.json``
whose vocabulary covers every id of the model, and a ``tokenizer_config.json`` with a ChatML chat
template. The shapes are those of ``bench_generate.SHAPES``: ``qwen3-0.6b`` (Qwen3-0.6B's
published architecture; the shape, not the weights, sets the cost) and ``tiny`` for CPU trials.

Every id ``i`` outside the special tokens is the word ``t<i>`` and decodes to `` t<i>``, so each
generated token streams as distinct, non-empty text, as a real tokenizer's would most of the time,
and text of such words encodes back to the same ids. The special tokens ``<|endoftext|>``,
``<|im_start|>`` and ``<|im_end|>`` take the last three ids; ``<|im_end|>`` ends a sequence.

    python benchmarks/_llm_folder.py /tmp/qwen3-0.6b-random                  # ~1.2 GB, bf16
    .venv/bin/python benchmarks/_llm_folder.py /tmp/tiny-llm --shape tiny
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_generate import SHAPES, _hf_config  # noqa: E402

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

# Qwen's ChatML layout, without its tool-calling and thinking branches.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# SentencePiece's word-boundary mark: a token starting with it decodes with a leading space.
_SPACE = "\u2581"


def special_ids(vocab_size: int) -> dict[str, int]:
    """The ids of the special tokens: the last three of the vocabulary."""
    return {token: vocab_size - len(SPECIAL_TOKENS) + i for i, token in enumerate(SPECIAL_TOKENS)}


def build_tokenizer(folder: Path, vocab_size: int) -> None:
    """Writes ``tokenizer.json``: a word-level vocabulary of exactly ``vocab_size`` ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    specials = special_ids(vocab_size)
    vocab = {f"{_SPACE}t{i}": i for i in range(vocab_size - len(specials))}
    vocab |= specials
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    # Words split at any whitespace, each gets the boundary mark: "t5 t7" encodes to [5, 7].
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement=_SPACE, prepend_scheme="always", split=True),
        ]
    )
    # "never": the first token keeps its space too, so a token's text does not depend on
    # whether it starts the decoded window.
    tokenizer.decoder = decoders.Metaspace(replacement=_SPACE, prepend_scheme="never")
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))  # marks the ids above as special
    if tokenizer.get_vocab_size() != vocab_size:
        raise RuntimeError(f"tokenizer has {tokenizer.get_vocab_size()} ids, not {vocab_size}")
    tokenizer.save(str(folder / "tokenizer.json"))


def build_random_folder(
    folder: Path,
    shape: str = "qwen3-0.6b",
    dtype: str = "bfloat16",
    seed: int = 0,
    max_len: int = 4096,
) -> Path:
    """Writes the model folder at ``folder`` (created if need be) and returns it."""
    import torch
    import transformers

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r} (known: {', '.join(SHAPES)})")
    folder.mkdir(parents=True, exist_ok=True)
    vocab_size = int(SHAPES[shape]["vocab_size"])
    ids = special_ids(vocab_size)
    config = _hf_config(SHAPES[shape], max_len)
    config.rms_norm_eps = 1e-6
    config.eos_token_id = ids["<|im_end|>"]
    config.pad_token_id = ids["<|endoftext|>"]
    torch.manual_seed(seed)
    # Random initialisation of 0.6B parameters takes a while on a CPU, moments on a GPU.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = transformers.Qwen3ForCausalLM(config)
    model = model.to(getattr(torch, dtype)).eval()
    model.save_pretrained(folder, safe_serialization=True)
    del model
    build_tokenizer(folder, vocab_size)
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "chat_template": CHAT_TEMPLATE,
                "eos_token": "<|im_end|>",
                "bos_token": None,
                "pad_token": "<|endoftext|>",
                "model_max_length": max_len,
            },
            indent=2,
        )
    )
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="folder to write (created if need be)")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen3-0.6b")
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-len", type=int, default=4096, help="max_position_embeddings")
    args = parser.parse_args()
    folder = build_random_folder(args.out_dir, args.shape, args.dtype, args.seed, args.max_len)
    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    print(f"wrote {folder} ({size / 2**20:.1f} MiB, shape {args.shape}, {args.dtype})")


if __name__ == "__main__":
    main()
