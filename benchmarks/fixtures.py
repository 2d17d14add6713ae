"""Models and data the benchmarks run on, built offline once and cached (default `runs/bench/`, ignored by git).

    python benchmarks/fixtures.py --size 124m      # prints the folders

Two model sizes, both saved with `save_pretrained` and loaded by the recipes like any Hub checkpoint:

* `tiny`: the embedded demo (`rlhf_recipes.demo`): its byte-level BPE tokenizer and a 2-layer d=128 GPT-2
  (0.6M parameters), pretrained for a few steps only (speed does not depend on what it learned).
* `124m`: a randomly initialised GPT-2 of `GPT2Config()`'s shape (12 layers, d=768, 1024 positions, 124M
  parameters) with a 50257-token byte-level BPE tokenizer built here with `tokenizers` (merges learned on the demo
  corpus, then filled up with synthetic merges to GPT-2's vocabulary size, so the embedding and LM-head matmuls
  cost what they cost for `openai-community/gpt2`). Like a post-SFT checkpoint of this project it already carries
  the `<|pad|>` token (vocabulary 50258).

Each size has `policy/` (a causal LM: the SFT model and PPO policy/reference) and `reward/` (the same backbone
with a one-label score head: the reward and value model). The data are the demo's jsonl files, with `*_train`
copies that hold only a train split (so the recipes skip their held-out evaluations while benchmarking).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = REPO / "runs" / "bench"
SIZES = ("tiny", "124m")
GPT2_VOCAB = 50257
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
TINY_PRETRAIN_STEPS = 20


def prepare_data(cache: Path) -> Path:
    """The demo's jsonl data, and train-only copies of each stage's folder."""
    from rlhf_recipes.demo.build import build_demo_data

    data = cache / "data"
    if not (data / "prompts" / "train.jsonl").is_file():
        build_demo_data(cache)
    for stage in ("sft", "reward", "prompts"):
        train_only = data / f"{stage}_train"
        if not (train_only / "train.jsonl").is_file():
            train_only.mkdir(parents=True, exist_ok=True)
            shutil.copy(data / stage / "train.jsonl", train_only / "train.jsonl")
    return data


def build_gpt2_tokenizer(texts: list[str], vocab_size: int = GPT2_VOCAB):
    """A byte-level BPE tokenizer of exactly `vocab_size` tokens (EOS last, as GPT-2's 50256), plus `<|pad|>`.

    BPE learned on a small corpus runs out of merges long before 50257 tokens, so the vocabulary is filled with
    synthetic merges of existing tokens (they are valid BPE merges; text simply rarely uses them).
    """
    from tokenizers import ByteLevelBPETokenizer, Tokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size - 1, min_frequency=2, special_tokens=[])
    data = json.loads(bpe._tokenizer.to_str())
    vocab: dict[str, int] = data["model"]["vocab"]
    merges = data["model"]["merges"]
    as_strings = bool(merges) and isinstance(merges[0], str)
    base = sorted(vocab, key=vocab.get)
    target = vocab_size - 1
    for left in base:
        if len(vocab) >= target:
            break
        for right in base[:256]:
            if len(vocab) >= target:
                break
            token = left + right
            if token not in vocab:
                vocab[token] = len(vocab)
                merges.append(f"{left} {right}" if as_strings else [left, right])
    data["model"]["vocab"], data["model"]["merges"] = vocab, merges
    tokenizer_object = Tokenizer.from_str(json.dumps(data))
    tokenizer_object.add_special_tokens([EOS_TOKEN])  # id vocab_size - 1, like GPT-2's <|endoftext|> = 50256
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer_object, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN,
                                        unk_token=EOS_TOKEN, model_max_length=1024)
    assert len(tokenizer) == vocab_size, len(tokenizer)
    tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})  # what rlhf_recipes.models.load_tokenizer adds
    return tokenizer


def _save_pair(folder: Path, tokenizer, config, seed: int) -> None:
    """Save `policy/` (causal LM) and `reward/` (one-label sequence classifier) built from `config`."""
    import torch
    from transformers import GPT2ForSequenceClassification, GPT2LMHeadModel

    torch.manual_seed(seed)
    policy = GPT2LMHeadModel(config)
    config.num_labels = 1
    torch.manual_seed(seed + 1)
    reward = GPT2ForSequenceClassification(config)
    reward.transformer.load_state_dict(policy.transformer.state_dict())  # a reward model fine-tuned from the SFT
    for name, model in (("policy", policy), ("reward", reward)):
        out = folder / name
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
            model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)


def prepare_models(cache: Path, size: str) -> dict[str, Path]:
    """Build (once) and return the folders of `size`: policy, reward and the data folder."""
    if size not in SIZES:
        raise ValueError(f"Unknown size {size!r}: choose from {SIZES}.")
    cache = Path(cache)
    data = prepare_data(cache)
    folder = cache / size
    marker = folder / "ready.json"
    if not marker.is_file():
        from transformers import GPT2Config

        if size == "tiny":
            from transformers import AutoModelForCausalLM, AutoTokenizer

            from rlhf_recipes.demo.base import build_base_model

            base = build_base_model(cache / "tiny-base", steps=TINY_PRETRAIN_STEPS, seed=0)
            tokenizer = AutoTokenizer.from_pretrained(base)
            config = AutoModelForCausalLM.from_pretrained(base).config
        else:
            from rlhf_recipes.demo.corpus import pretraining_texts

            tokenizer = build_gpt2_tokenizer(pretraining_texts(6000, seed=0))
            config = GPT2Config()  # the 124M shape: 12 layers, d=768, 12 heads, 1024 positions, vocab 50257
            config.vocab_size = len(tokenizer)  # 50258 with the pad token, as after our loader's resize
        config.bos_token_id = config.eos_token_id = tokenizer.eos_token_id
        config.pad_token_id = tokenizer.pad_token_id
        _save_pair(folder, tokenizer, config, seed=0)
        from transformers import AutoModelForCausalLM

        params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(folder / "policy").parameters())
        marker.write_text(json.dumps({"size": size, "parameters": params, "vocab": len(tokenizer)}) + "\n")
    return {"policy": folder / "policy", "reward": folder / "reward", "data": data,
            "parameters": json.loads(marker.read_text())["parameters"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=SIZES, action="append")
    parser.add_argument("--cache", default=str(DEFAULT_CACHE))
    args = parser.parse_args()
    for size in args.size or SIZES:
        print(size, {k: str(v) for k, v in prepare_models(Path(args.cache), size).items()})


if __name__ == "__main__":
    main()
