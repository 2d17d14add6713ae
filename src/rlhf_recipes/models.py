"""One loader for every model and tokenizer of the pipeline: policy, reward, value and reference.

Every stage goes through `load_tokenizer` and `load_model`, so that the pad token, LoRA, 8/4-bit loading, dtype and
the safe defaults (safetensors only, no remote code unless asked) are decided in one place.

Why a dedicated pad token: GPT-2 ships without one, and the common fix (`pad = eos`) makes a finished response
indistinguishable from padding. PPO's masks, the "stop at the first EOS" rule and the reward model's "score at the
last real token" all need the two apart. We add `<|pad|>`, resize the embeddings once, and the tokenizer and config
saved with each checkpoint carry the choice to the next stage.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Literal

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from trl import ModelConfig, get_peft_config, get_quantization_config

logger = logging.getLogger(__name__)

PAD_TOKEN = "<|pad|>"
REWARD_NORMALIZATION_FILE = "reward_normalization.json"
ModelKind = Literal["causal_lm", "reward", "value"]


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Give the tokenizer a pad token distinct from EOS; return True when one was added."""
    if tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return False
    tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    return True


def load_tokenizer(
    name_or_path: str,
    *,
    revision: str = "main",
    trust_remote_code: bool = False,
    padding_side: str = "right",
) -> PreTrainedTokenizerBase:
    """Load a tokenizer by Hub id or local path and make sure its pad token is not its EOS token."""
    adapter_base = _adapter_base(name_or_path)
    source = name_or_path if _has_tokenizer(name_or_path) or adapter_base is None else adapter_base
    tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
    if tokenizer.eos_token is None:
        raise ValueError(
            f"The tokenizer of {name_or_path} has no EOS token; set one with `--eos_token` or save a tokenizer "
            "that defines `eos_token`."
        )
    if ensure_pad_token(tokenizer):
        logger.info("Added pad token %r to the tokenizer of %s (GPT-2 has none).", PAD_TOKEN, name_or_path)
    tokenizer.padding_side = padding_side
    return tokenizer


def _has_tokenizer(name_or_path: str) -> bool:
    path = Path(name_or_path)
    if not path.is_dir():
        return True  # a Hub id: let transformers look it up
    return any((path / name).exists() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json"))


def _adapter_base(name_or_path: str) -> str | None:
    """The base model a local LoRA adapter folder was trained on, or None when it is not an adapter."""
    config_file = Path(name_or_path) / "adapter_config.json"
    if not config_file.is_file():
        return None
    return json.loads(config_file.read_text())["base_model_name_or_path"]


def _kbit_device_map() -> dict[str, int | str]:
    """Quantised weights must sit on this process's device from the start (no later `.to()`)."""
    from accelerate import PartialState

    return {"": PartialState().process_index if torch.cuda.is_available() else "cpu"}


def _auto_class(kind: ModelKind):
    if kind == "causal_lm":
        return AutoModelForCausalLM
    if kind in ("reward", "value"):
        return AutoModelForSequenceClassification
    raise ValueError(f"Unknown model kind {kind!r}: expected 'causal_lm', 'reward' or 'value'.")


def _torch_dtype(dtype: str | None):
    if dtype in (None, "auto"):
        return dtype
    return getattr(torch, dtype)


def load_model(
    model_args: ModelConfig,
    tokenizer: PreTrainedTokenizerBase,
    *,
    kind: ModelKind = "causal_lm",
    model_name_or_path: str | None = None,
    trust_remote_code: bool = False,
    apply_lora: bool | None = None,
    device_map: str | dict | None = None,
) -> PreTrainedModel:
    """Load a policy (`causal_lm`), reward or value model (`reward`/`value`: one scalar head) for training.

    `model_name_or_path` overrides `model_args.model_name_or_path` (PPO loads several models with one `ModelConfig`).
    A local LoRA adapter folder is loaded onto its base and merged, so any stage can start from an adapter. The
    embeddings are resized when the tokenizer gained a pad token. With `model_args.use_peft` (or `apply_lora=True`)
    the returned model is a `PeftModel` with fresh LoRA adapters; a reward/value model then trains its score head in
    full. `model_args.load_in_8bit/4bit` quantise the base with bitsandbytes.
    """
    name = model_name_or_path or model_args.model_name_or_path
    if not name:
        raise ValueError("No model given: set `model_name_or_path` in the recipe or pass `--model_name_or_path`.")
    quantization_config = get_quantization_config(model_args)
    kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": trust_remote_code,
        "dtype": _torch_dtype(model_args.dtype),
        "use_safetensors": True,  # never unpickle weights
    }
    if model_args.attn_implementation is not None:
        kwargs["attn_implementation"] = model_args.attn_implementation
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
        kwargs["device_map"] = device_map or _kbit_device_map()
    elif device_map is not None:
        kwargs["device_map"] = device_map
    if kind != "causal_lm":
        kwargs["num_labels"] = 1

    with _resolved_checkpoint(name, kind, tokenizer, trust_remote_code) as source:
        model = _auto_class(kind).from_pretrained(source, **kwargs)
    _match_tokenizer(model, tokenizer)
    if kind != "causal_lm":
        model.reward_bias = read_reward_bias(name)

    use_lora = model_args.use_peft if apply_lora is None else apply_lora
    if use_lora:
        model = _add_lora(model, model_args, kind, quantized=quantization_config is not None)
    return model


class _resolved_checkpoint:
    """Context manager yielding a folder `from_pretrained` can load as `kind`.

    A LoRA adapter is merged into its base first; the merged copy lives in a temporary folder for the duration.
    """

    def __init__(self, name: str, kind: ModelKind, tokenizer: PreTrainedTokenizerBase, trust_remote_code: bool):
        self.name, self.kind, self.tokenizer, self.trust_remote_code = name, kind, tokenizer, trust_remote_code
        self._tmp: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> str:
        base = _adapter_base(self.name)
        if base is None:
            return self.name
        from peft import PeftModel

        if not (Path(self.name) / "adapter_model.safetensors").is_file():
            raise OSError(
                f"{self.name} is a LoRA adapter folder without adapter_model.safetensors; only safetensors weights are "
                "loaded (never pickled .bin files). Re-save the adapter with `save_pretrained(safe_serialization=True)`."
            )
        adapter_kind: ModelKind = "causal_lm"
        adapter_config = json.loads((Path(self.name) / "adapter_config.json").read_text())
        if adapter_config.get("task_type") == "SEQ_CLS":
            adapter_kind = "reward"
        extra = {"num_labels": 1} if adapter_kind != "causal_lm" else {}
        base_model = _auto_class(adapter_kind).from_pretrained(
            base, trust_remote_code=self.trust_remote_code, use_safetensors=True, **extra
        )
        _match_tokenizer(base_model, self.tokenizer)
        merged = PeftModel.from_pretrained(base_model, self.name).merge_and_unload()
        self._tmp = tempfile.TemporaryDirectory(prefix="rlhf-merged-")
        merged.save_pretrained(self._tmp.name, safe_serialization=True)
        logger.info("Merged LoRA adapter %s into its base %s to load it as %s.", self.name, base, self.kind)
        return self._tmp.name

    def __exit__(self, *exc) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


def _match_tokenizer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Resize the embeddings to the tokenizer (once, when a pad token was added) and record pad/eos ids."""
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id


def lora_config(model_args: ModelConfig, kind: ModelKind = "causal_lm"):
    """The LoRA config of `model_args` (TRL's `get_peft_config`, with its one-module target fixed) for `kind`."""
    peft_config = get_peft_config(model_args)
    if peft_config is None:  # get_peft_config returns None when use_peft is off
        model_args.use_peft = True
        peft_config = get_peft_config(model_args)
    target = peft_config.target_modules
    if isinstance(target, str) and target != "all-linear" and re.fullmatch(r"[\w.]+", target):
        # TRL turns a one-item `--lora_target_modules c_attn` into the string "c_attn", which PEFT reads as a regex
        # over full module paths that matches nothing: make it the module-name list the user meant.
        peft_config.target_modules = {target}
    peft_config.task_type = "CAUSAL_LM" if kind == "causal_lm" else "SEQ_CLS"
    if kind != "causal_lm":
        # The scalar head is new: train it in full and save it with the adapter.
        peft_config.modules_to_save = sorted(set(peft_config.modules_to_save or []) | {"score"})
    return peft_config


def _add_lora(model: PreTrainedModel, model_args: ModelConfig, kind: ModelKind, quantized: bool):
    from peft import get_peft_model, prepare_model_for_kbit_training

    peft_config = lora_config(model_args, kind)
    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return get_peft_model(model, peft_config)


def disable_dropout(model: torch.nn.Module) -> None:
    """Set every dropout probability to 0: PPO's ratios and KL assume deterministic forwards."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def use_fused_gelu(model: torch.nn.Module) -> int:
    """Run GPT-2's `gelu_new` as PyTorch's fused tanh-GELU kernel; returns how many activations were swapped.

    The same function (transformers' `GELUTanh` docstring: equivalent to NewGELU up to rounding), in one kernel
    instead of seven element-wise ops, and autograd keeps one activation instead of several per MLP: faster, and
    less memory per token in training. The config is left alone, so saved checkpoints are unchanged.
    """
    from transformers.activations import GELUTanh, NewGELUActivation

    swapped = 0
    for module in list(model.modules()):
        for name, child in module.named_children():
            if type(child) is NewGELUActivation:
                setattr(module, name, GELUTanh())
                swapped += 1
    return swapped


def read_reward_bias(name_or_path: str) -> float:
    """The normalisation bias saved beside a reward model (0.0 when it was never normalised)."""
    file = Path(name_or_path) / REWARD_NORMALIZATION_FILE
    if file.is_file():
        return float(json.loads(file.read_text())["bias"])
    if not Path(name_or_path).exists():
        try:
            from huggingface_hub import hf_hub_download

            downloaded = hf_hub_download(name_or_path, REWARD_NORMALIZATION_FILE)
            return float(json.loads(Path(downloaded).read_text())["bias"])
        except Exception:  # noqa: BLE001 - the Hub repo simply has no normalisation file, or we are offline
            return 0.0
    return 0.0


def write_reward_bias(output_dir: str | os.PathLike, bias: float, **details: float | int | str) -> Path:
    """Save the normalisation bias with a reward model so that every later load applies it."""
    file = Path(output_dir) / REWARD_NORMALIZATION_FILE
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps({"bias": bias, **details}, indent=2) + "\n")
    return file


def reward_scores(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Normalised scalar reward r(x, y) per sequence, read at the last real token (the EOS), never at a pad.

    Position ids come from the attention mask, so the score does not depend on which side was padded.
    """
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    bias = getattr(model, "reward_bias", None)
    if bias is None:  # a PeftModel or DeepSpeed engine: look through the wrappers
        bias = getattr(getattr(model, "base_model", None), "reward_bias", 0.0)
    return logits.squeeze(-1).float() + bias


@torch.no_grad()
def score_responses(
    model: PreTrainedModel,
    prompt_ids: list[list[int]],
    response_ids: list[list[int]],
    *,
    pad_token_id: int,
    eos_token_id: int,
    missing_eos_penalty: float | None = None,
    batch_size: int = 64,
) -> torch.Tensor:
    """`reward_scores` of each prompt + response (token ids, no padding), with PPO's missing-EOS penalty.

    A response that never produced `eos_token_id` (it hit the length limit) loses `missing_eos_penalty`, as in
    PPO's rollout, so that every stage that optimises or selects by the reward model sees the same reward.
    """
    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(response_ids)} responses: give one response per prompt.")
    device = next(model.parameters()).device
    scores = []
    for start in range(0, len(prompt_ids), batch_size):
        rows = [list(p) + list(r) for p, r in zip(prompt_ids[start: start + batch_size],
                                                   response_ids[start: start + batch_size])]
        width = max(len(row) for row in rows)
        # Left padding: the last real token (the EOS) is the last column; position ids come from the mask.
        ids = torch.tensor([[pad_token_id] * (width - len(row)) + row for row in rows], device=device)
        mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows], device=device)
        scores.append(reward_scores(model, ids, mask))
    scores = torch.cat(scores) if scores else torch.zeros(0)
    if missing_eos_penalty:
        finished = torch.tensor([eos_token_id in r for r in response_ids], device=scores.device)
        scores = scores - missing_eos_penalty * (~finished).float()
    return scores


def check_same_tokenizer(tokenizer: PreTrainedTokenizerBase, other_name_or_path: str | None,
                         trust_remote_code: bool = False) -> None:
    """Refuse a reward/value model whose tokenizer differs from the policy's: its scores would read other tokens."""
    if not other_name_or_path:
        return
    other = load_tokenizer(other_name_or_path, trust_remote_code=trust_remote_code)
    if other.get_vocab() != tokenizer.get_vocab():
        raise ValueError(
            f"The tokenizer of {other_name_or_path} differs from the policy's ({len(other)} vs {len(tokenizer)} "
            "tokens, or different ids). Train the reward model from the same SFT checkpoint as the policy."
        )
