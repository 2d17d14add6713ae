"""A GPT-2-like checkpoint for tests: byte-level BPE whose only special token is `<|endoftext|>` (no pad), as in
`openai-community/gpt2`, and a tiny `GPT2LMHeadModel` whose vocabulary is exactly the tokenizer's."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from rlhf_recipes.demo.corpus import pretraining_texts

EOS = "<|endoftext|>"


def gpt2_like_tokenizer(vocab_size: int = 600) -> PreTrainedTokenizerFast:
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(pretraining_texts(300, seed=0), vocab_size=vocab_size, min_frequency=2,
                            special_tokens=[EOS])
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=EOS, eos_token=EOS, unk_token=EOS)


def save_gpt2_like(folder: Path, seed: int = 0) -> Path:
    """Save the no-pad tokenizer and a 1-layer GPT-2 of matching vocabulary to `folder`."""
    tokenizer = gpt2_like_tokenizer()
    assert tokenizer.pad_token is None
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=1, n_head=2,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    GPT2LMHeadModel(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder
