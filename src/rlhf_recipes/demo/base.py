"""The embedded base model: a byte-level BPE tokenizer and a tiny GPT-2, pretrained on the demo corpus.

It stands in for `openai-community/gpt2` where nothing can be downloaded. It is built with the same classes as the
real thing (`tokenizers` byte-level BPE, `GPT2Config`, `GPT2LMHeadModel`), saved with `save_pretrained` and loaded
back with `from_pretrained`, so every stage treats it exactly like a Hub checkpoint.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from .corpus import pretraining_texts

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


def train_tokenizer(texts: list[str], vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """Train a GPT-2-style byte-level BPE tokenizer with an EOS token and a distinct pad token."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS_TOKEN, PAD_TOKEN])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN, unk_token=EOS_TOKEN,
        pad_token=PAD_TOKEN, model_max_length=128,
    )
    return tokenizer


def tiny_gpt2_config(vocab_size: int, n_positions: int = 128, n_embd: int = 128, n_layer: int = 2,
                     n_head: int = 4) -> GPT2Config:
    """A GPT-2 of the same architecture as the 124M model, shrunk to train in a minute on a laptop CPU."""
    return GPT2Config(
        vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
        bos_token_id=0, eos_token_id=0, pad_token_id=1,
    )


def pretrain(model: GPT2LMHeadModel, token_blocks: torch.Tensor, steps: int, batch_size: int = 32,
             lr: float = 3e-3, seed: int = 0) -> list[float]:
    """Plain next-token pretraining with AdamW and a cosine schedule; returns the loss per step."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    model.train()
    losses = []
    for _ in range(steps):
        rows = torch.randint(0, token_blocks.shape[0], (batch_size,), generator=generator)
        batch = token_blocks[rows]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return losses


def build_base_model(output_dir: str | Path, *, steps: int = 300, num_texts: int = 6000, seed: int = 0,
                     n_embd: int = 128, n_layer: int = 2, batch_size: int = 32) -> Path:
    """Train the tokenizer, pretrain the tiny GPT-2 and save both to `output_dir`; return the folder."""
    output_dir = Path(output_dir)
    torch.manual_seed(seed)
    start = time.time()
    texts = pretraining_texts(num_texts, seed=seed)
    tokenizer = train_tokenizer(texts)
    config = tiny_gpt2_config(len(tokenizer), n_embd=n_embd, n_layer=n_layer)
    config.bos_token_id = config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    model = GPT2LMHeadModel(config)

    # Documents separated by EOS, packed into blocks (as GPT-2 was pretrained). Half the context is enough: a
    # review is 30-60 tokens, and half-length blocks halve the cost of a step.
    stream: list[int] = []
    for text in texts:
        stream.extend(tokenizer(text)["input_ids"] + [tokenizer.eos_token_id])
    block = config.n_positions // 2
    usable = len(stream) // block * block
    blocks = torch.tensor(stream[:usable]).view(-1, block)
    losses = pretrain(model, blocks, steps=steps, batch_size=batch_size, seed=seed)

    output_dir.mkdir(parents=True, exist_ok=True)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    report = {
        "steps": steps, "batch_size": batch_size, "num_texts": num_texts, "tokens": int(usable), "vocab_size": len(tokenizer),
        "parameters": sum(p.numel() for p in model.parameters()), "first_loss": losses[0],
        "final_loss": sum(losses[-20:]) / len(losses[-20:]), "seconds": round(time.time() - start, 1),
    }
    (output_dir / "pretraining.json").write_text(json.dumps(report, indent=2) + "\n")
    return output_dir
