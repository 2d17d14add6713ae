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

from .config import ConfigError, UserError
from .data import resolve_template

logger = logging.getLogger(__name__)

PAD_TOKEN = "<|pad|>"
REWARD_NORMALIZATION_FILE = "reward_normalization.json"
ModelKind = Literal["causal_lm", "reward", "value"]
# Where configs declare the context window (GPT-2: n_positions; most others: max_position_embeddings).
CONTEXT_ATTRIBUTES = ("n_positions", "max_position_embeddings", "n_ctx", "seq_length", "max_sequence_length")
# Every length field of every stage's arguments, checked against the context by `check_lengths`.
LENGTH_FIELDS = ("max_length", "max_seq_length", "max_prompt_length", "max_completion_length", "response_length",
                 "max_new_tokens", "ptx_max_length")


class ModelError(UserError, OSError):
    """A model or tokenizer that cannot be found or loaded; the message says what was tried and how to fix it."""


class ContextLengthError(ConfigError):
    """A length setting that does not fit the model's context window."""


def check_model_source(name_or_path: str, what: str = "model", revision: str = "main") -> None:
    """Fail early, and clearly, for a path that is neither a local folder nor a Hub id we can reach.

    transformers' own messages for these cases talk about repo-id syntax or network errors; ours say which of the
    two (local folder, Hub id) was meant and what to change.
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError
    from huggingface_hub.utils import validate_repo_id

    if not name_or_path or not str(name_or_path).strip():
        raise ConfigError(f"No {what} given: set `model_name_or_path` (or the stage's model path) in the recipe.")
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        markers = ("config.json", "adapter_config.json", "tokenizer_config.json", "tokenizer.json")
        if not any((path / marker).is_file() for marker in markers):
            checkpoints = sorted(p.name for p in path.glob("checkpoint-*") if p.is_dir())
            hint = (f" It holds {', '.join(checkpoints)}: the run did not finish; resume it with "
                    "--resume_from_checkpoint latest, or point at one of those folders." if checkpoints else "")
            raise ModelError(f"The {what} folder {name_or_path} holds no model (no config.json, adapter_config.json "
                             f"or tokenizer files).{hint} Give the folder a finished stage saved.")
        return
    if path.exists():
        raise ModelError(f"The {what} path {name_or_path} is a file; give the folder that holds config.json and the "
                         "weights (what `save_pretrained` wrote), or a Hub id.")
    try:
        validate_repo_id(name_or_path)
        valid_id = not name_or_path.startswith((".", "~"))
    except HFValidationError:
        valid_id = False
    if not valid_id:
        raise ModelError(
            f"The {what} {name_or_path!r} is no such local folder, and not a valid Hub id either (Hub ids look like "
            "'name' or 'owner/name'). Check the path (relative paths start from the folder you launched from: "
            f"{os.getcwd()}), or that the previous stage finished and saved there."
        )
    if constants.HF_HUB_OFFLINE:
        try:
            snapshot_download(name_or_path, revision=revision, local_files_only=True)
        except (LocalEntryNotFoundError, OSError, ValueError) as err:
            raise ModelError(
                f"The {what} {name_or_path!r} is not a local folder, and as a Hub id it is not in the local cache "
                f"({constants.HF_HUB_CACHE}), which is all that can be read with HF_HUB_OFFLINE=1 set. Download it "
                "first on a machine with network access (`hf download " + name_or_path + "`), unset "
                "HF_HUB_OFFLINE, or give a local folder."
            ) from err


# What each model role needs; `check_model_role` refuses a checkpoint of another kind before its weights load.
ROLES = {
    "policy": "a causal language model (an SFT, PPO, GRPO or RLOO output, or a base model), or a LoRA adapter over one",
    "reward": "a reward model: a sequence-classification model with one label (what recipes/reward.py saves)",
    "value": "a value model: a sequence-classification model with one label (by default the reward model)",
    "reward_base": "a model to train a reward head on: a causal language model (usually the SFT output) or a "
                   "one-label sequence-classification model",
}
ModelRole = Literal["policy", "reward", "value", "reward_base"]
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def checkpoint_kind(name_or_path: str) -> tuple[str, str] | None:
    """What a checkpoint is, from its `config.json` (or a LoRA adapter's `adapter_config.json` and its base), without
    loading weights: (`causal_lm` | `seq_cls` | `seq_cls_multi` | `other`, a description). None when it cannot be
    told without the network (a Hub id not in the cache) or declares no architecture."""
    path = Path(name_or_path).expanduser()
    adapter = _read_json(path / "adapter_config.json") if path.is_dir() else None
    if adapter is not None:
        task = adapter.get("task_type")
        base = adapter.get("base_model_name_or_path")
        if task == "SEQ_CLS":
            return "seq_cls", f"a LoRA reward-model adapter (task SEQ_CLS) over {base}"
        if task == "CAUSAL_LM":
            return "causal_lm", f"a LoRA adapter over the causal language model {base}"
        found = checkpoint_kind(base) if base else None
        return (found[0], f"a LoRA adapter over {base}, {found[1]}") if found else None
    if path.is_dir():
        config = _read_json(path / "config.json")
    else:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(str(name_or_path), "config.json")
        except Exception:  # noqa: BLE001 - not a valid Hub id: check_model_source explains it
            cached = None
        config = _read_json(Path(cached)) if isinstance(cached, str) else None
    if not config or not config.get("architectures"):
        return None
    architecture = config["architectures"][0]
    if architecture.endswith(_CAUSAL_SUFFIXES):
        return "causal_lm", f"a causal language model ({architecture})"
    if architecture.endswith("ForSequenceClassification"):
        labels = len(config["id2label"]) if isinstance(config.get("id2label"), dict) else config.get("num_labels", 2)
        if labels == 1:
            return "seq_cls", f"a one-label sequence classifier ({architecture}), i.e. a reward model"
        return "seq_cls_multi", f"a {labels}-label sequence classifier ({architecture}), not a scalar reward model"
    return "other", f"a {architecture}"


_ROLE_ACCEPTS = {"policy": ("causal_lm",), "reward": ("seq_cls",), "value": ("seq_cls",),
                 "reward_base": ("causal_lm", "seq_cls")}
_ROLE_FIX = {
    "policy": "Give the folder of a policy (the SFT or PPO output), not a reward model.",
    "reward": "Give the output folder of recipes/reward.py (a causal LM has no reward head: its scores would come "
              "from a freshly initialised one, i.e. noise).",
    "value": "Give a reward model folder (the value function starts from the reward model, as in InstructGPT), or "
             "leave value_model_path unset.",
    "reward_base": "Give the SFT output folder (or another causal language model).",
}


def check_model_role(name_or_path: str | None, role: ModelRole, field: str | None = None) -> None:
    """Refuse a checkpoint of the wrong kind for `role` (e.g. a reward model as the policy, a causal LM as the
    reward model), read from its config without loading weights. Unknown kinds (an uncached Hub id) pass."""
    if not name_or_path:
        return
    found = checkpoint_kind(str(name_or_path))
    if found is None or found[0] in _ROLE_ACCEPTS[role]:
        return
    given = f"`{field}` = {name_or_path}" if field else f"The model {name_or_path}"
    raise ModelError(f"{given} is {found[1]}, but this role needs {ROLES[role]}. {_ROLE_FIX[role]}")


def context_length(name_or_path: str, *, revision: str = "main", trust_remote_code: bool = False) -> int | None:
    """The context window (positions) the model's config declares; None when it declares none."""
    from transformers import AutoConfig

    base = _adapter_base(name_or_path)
    source = base or name_or_path
    check_model_source(source)
    try:
        config = AutoConfig.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise ModelError(f"Could not read the config of {source}: {err}") from err
    for attribute in CONTEXT_ATTRIBUTES:
        value = getattr(config, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_lengths(args, model_paths: str | list[str | None], *, stage: str, generation: tuple[str, str] | None = None,
                  fill_unset: tuple[str, ...] = (), revision: str = "main", trust_remote_code: bool = False) -> int:
    """Check every length field of `args` against the smallest context of `model_paths`, before anything trains.

    `generation=(prompt_field, response_field)`: the response is generated after the prompt, so it must leave room
    for one (and the two together must fit when both are set). A length the user set (in the YAML or as a flag;
    `config.user_set_fields`) that does not fit is an error. One the user did not set is a default of ours, TRL's
    or transformers', and is fitted with a warning instead: the fields in `fill_unset` become the context (TRL would
    not truncate at all when None, and its 1024 is not the model's window), others are lowered only where they do
    not fit (a response to half the context, a prompt to what the response leaves).
    Returns the context length. Raises `ContextLengthError` listing every field that does not fit.
    """
    from .config import user_set_fields

    paths = [model_paths] if isinstance(model_paths, str) else [p for p in model_paths if p]
    known = {p: c for p in dict.fromkeys(paths)
             if (c := context_length(p, revision=revision, trust_remote_code=trust_remote_code)) is not None}
    if not known:
        return 10**9  # no declared window: nothing to check against
    source = min(known, key=known.get)
    context = known[source]
    where = f"the {context}-token context of {source}"
    user_set = user_set_fields(args)

    def unset(name: str) -> bool:
        return user_set is not None and name not in user_set

    def fit(name: str, value: int) -> None:
        default = getattr(args, name)
        logger.warning("%s: %s is unset; using %d, %s%s.", stage, name, value, where,
                       "" if default is None else f" (the default {default} does not describe this model)")
        setattr(args, name, value)

    problems = []
    generated = set(generation or ()) - {None}
    for name in LENGTH_FIELDS:
        if not hasattr(args, name):
            continue
        value = getattr(args, name)
        if name in fill_unset and (value is None or (unset(name) and value != context)):
            fit(name, context)
        elif isinstance(value, int) and value < 1:
            problems.append(f"{name} must be at least 1, got {value}")
        elif isinstance(value, int) and value > context and unset(name) and name not in generated:
            fit(name, context)
        elif isinstance(value, int) and value > context and not (unset(name) and name in generated):
            problems.append(f"{name} {value} is longer than {where}; set it to at most {context}")
    if generation is not None:
        prompt_field, response_field = generation
        response = getattr(args, response_field, None)
        prompt = getattr(args, prompt_field, None) if prompt_field else None
        if isinstance(response, int) and response >= context and unset(response_field):
            fit(response_field, response := context // 2)
        if isinstance(prompt, int) and isinstance(response, int) and prompt + response > context \
                and unset(prompt_field) and response < context:
            fit(prompt_field, prompt := context - response)
        if isinstance(response, int) and response >= context:
            problems.append(f"{response_field} {response} leaves no room for a prompt in {where}; lower it")
        elif isinstance(response, int) and isinstance(prompt, int) and prompt + response > context:
            problems.append(f"{prompt_field} {prompt} + {response_field} {response} = {prompt + response} tokens "
                            f"exceed {where}; lower one of them")
    if problems:
        raise ContextLengthError(f"{stage}: " + "; ".join(problems) + ".")
    return context


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
    conversation_template: str = "auto",
) -> PreTrainedTokenizerBase:
    """Load a tokenizer by Hub id or local path and make sure its pad token is not its EOS token.

    When conversations will be rendered with the tokenizer's chat template (`conversation_template`, see
    `rlhf_recipes.data.resolve_template`), the template's end-of-turn token becomes the EOS: SFT appends it, PPO
    stops at it and the reward model reads its score there. The tokenizer saved with each stage carries it on.
    """
    check_model_source(name_or_path, "tokenizer", revision)
    adapter_base = _adapter_base(name_or_path)
    source = name_or_path if _has_tokenizer(name_or_path) or adapter_base is None else adapter_base
    if source != name_or_path:
        check_model_source(source, "base model of the adapter", revision)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise ModelError(f"Could not load the tokenizer of {source}: {err}") from err
    end_of_turn = resolve_template(tokenizer, conversation_template).end_of_turn
    if end_of_turn is not None and end_of_turn != tokenizer.eos_token:
        logger.info("EOS of %s: %r -> %r, the chat template's end of turn.", name_or_path, tokenizer.eos_token,
                    end_of_turn)
        tokenizer.eos_token = end_of_turn
    if tokenizer.eos_token is None:
        raise ModelError(
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
    role: ModelRole | None = None,
) -> PreTrainedModel:
    """Load a policy (`causal_lm`), reward or value model (`reward`/`value`: one scalar head) for training.

    `model_name_or_path` overrides `model_args.model_name_or_path` (PPO loads several models with one `ModelConfig`).
    A local LoRA adapter folder is loaded onto its base and merged, so any stage can start from an adapter. The
    embeddings are resized when the tokenizer gained a pad token. With `model_args.use_peft` (or `apply_lora=True`)
    the returned model is a `PeftModel` with fresh LoRA adapters; a reward/value model then trains its score head in
    full. `model_args.load_in_8bit/4bit` quantise the base with bitsandbytes.

    `role` (default: `policy` for a causal LM, `reward_base` for a reward/value model) is checked against the
    checkpoint's config before any weights load (`check_model_role`); stages that read a trained reward model pass
    `role="reward"`.
    """
    name = model_name_or_path or model_args.model_name_or_path
    if not name:
        raise ConfigError("No model given: set `model_name_or_path` in the recipe or pass `--model_name_or_path`.")
    check_model_source(name, "model", model_args.model_revision)
    check_model_role(name, role or ("policy" if kind == "causal_lm" else "reward_base"))
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
        try:
            model = _auto_class(kind).from_pretrained(source, **kwargs)
        except OSError as err:
            raise ModelError(f"Could not load the model {name}: {err}") from err
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

        check_model_source(base, "base model of the adapter")
        if not (Path(self.name) / "adapter_model.safetensors").is_file():
            raise ModelError(
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
        raise ConfigError(
            f"The tokenizer of {other_name_or_path} differs from the policy's ({len(other)} vs {len(tokenizer)} "
            "tokens, or different ids). Train the reward model from the same SFT checkpoint as the policy."
        )


def load_policy_tokenizer(script_args, training_args, model_args) -> tuple[str, PreTrainedTokenizerBase]:
    """The online stages' policy start (PPO, GRPO, RLOO): the SFT checkpoint (`sft_model_path`, else
    `model_name_or_path`, which then names it too) and its tokenizer, left-padded for generation, rendering with the
    recipe's `conversation_template`, and checked against the reward model's."""
    sft_path = training_args.sft_model_path or model_args.model_name_or_path
    model_args.model_name_or_path = sft_path
    remote = training_args.trust_remote_code
    tokenizer = load_tokenizer(sft_path, revision=model_args.model_revision, trust_remote_code=remote,
                               padding_side="left", conversation_template=script_args.conversation_template)
    check_same_tokenizer(tokenizer, training_args.reward_model_path, trust_remote_code=remote)
    return sft_path, tokenizer
