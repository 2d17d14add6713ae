"""Best-of-n sampling: draw n responses per prompt from a policy and keep the one the reward model scores highest.

No training: the policy is the SFT model, the selection is the optimisation. It is the baseline every RL stage has
to beat at equal KL (Stiennon et al. 2020; Gao et al. 2023 use it to chart reward-model overoptimisation), and its
KL to the policy it samples from is known in closed form (`best_of_n_kl`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .data import encode_text
from .evaluation import sample_responses
from .evaluation_metrics import distinct_n, eos_fraction, mean_std
from .models import score_responses


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n || policy) = log n - (n - 1) / n, in nats.

    The selected response has density p_n(y) = n * F(y)^(n-1) * p(y) when the reward ranks responses without ties
    (F = the CDF of the reward under the policy); its KL to p is log n - (n-1)/n whatever p and the reward are
    (Stiennon et al. 2020, appendix G.3). With ties, or few distinct responses, it is an upper bound (Beirami et al.
    2024, "Theoretical guarantees on the best-of-n alignment policy"). n = 1 gives 0.
    """
    if n < 1:
        raise ValueError(f"best-of-n needs n >= 1, got {n}.")
    return math.log(n) - (n - 1) / n


@dataclass
class BestOfNArguments:
    """Arguments of `recipes/best_of_n.py` (the prompts come from `ScriptArguments.dataset_name`)."""

    policy_path: str | None = field(default=None, metadata={"role": "policy",
        "help": "The policy to sample from (the SFT model)."})
    reward_model_path: str | None = field(default=None, metadata={"role": "reward",
        "help": "The reward model that picks the best."})
    n: int = field(default=4, metadata={"range": "[1, inf)", "help": "Responses sampled per prompt."})
    split: str = field(default="test", metadata={"help": "Prompt split: 'test' (held out) or 'train'."})
    num_prompts: int | None = field(default=None, metadata={"range": "[1, inf)",
        "help": "Use the first N prompts of the split."})
    response_length: int = field(default=24, metadata={"range": "[1, inf)", "help": "Maximum new tokens."})
    temperature: float = field(default=1.0, metadata={"range": "(0, inf)", "help": "Sampling temperature."})
    missing_eos_penalty: float | None = field(
        default=None, metadata={"range": "[0, inf)",
            "help": "Subtracted from a response without EOS before choosing (as in PPO)."}
    )
    batch_size: int = field(default=64, metadata={"range": "[1, inf)",
        "help": "Sequences per generation / reward batch."})
    seed: int = field(default=1234, metadata={"range": "[0, 4294967295]", "help": "Sampling seed."})
    output_dir: str = field(default="runs/best_of_n", metadata={"help": "Where best_of_n.jsonl and metrics go."})
    simulated_labeler: bool = field(default=False, metadata={"help": "Also score with the demo's simulated labeler."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the Hub."})


@dataclass
class BestOfN:
    """The chosen response of each prompt, its reward, and every candidate's reward (`[prompts, n]`)."""

    prompts: list[str]
    responses: list[str]
    response_ids: list[list[int]]
    scores: torch.Tensor
    candidate_scores: torch.Tensor
    wall_s: float


def best_of_n(policy: PreTrainedModel, reward_model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
              prompts: list[str], *, n: int, response_length: int = 24, temperature: float = 1.0, seed: int = 1234,
              batch_size: int = 64, missing_eos_penalty: float | None = None) -> BestOfN:
    """Sample `n` responses per prompt (evaluation's sampler, seeded) and keep the reward model's best.

    `scores` are the chosen responses' rewards after the missing-EOS penalty (what the choice maximised).
    """
    if n < 1:
        raise ValueError(f"best-of-n needs n >= 1, got {n}.")
    start = time.perf_counter()
    repeated = [p for p in prompts for _ in range(n)]
    _, responses = sample_responses(policy, tokenizer, repeated, response_length=response_length,
                                    temperature=temperature, seed=seed, batch_size=batch_size)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    response_ids = [[t for t in row.tolist() if t != pad] for row in responses]
    prompt_ids = [encode_text(tokenizer, p) for p in repeated]
    scores = score_responses(reward_model, prompt_ids, response_ids, pad_token_id=pad, eos_token_id=eos,
                             missing_eos_penalty=missing_eos_penalty, batch_size=batch_size).view(len(prompts), n)
    best = scores.argmax(-1)
    chosen = [response_ids[i * n + int(j)] for i, j in enumerate(best)]
    return BestOfN(prompts=list(prompts), responses=tokenizer.batch_decode(chosen, skip_special_tokens=True),
                   response_ids=chosen, scores=scores.gather(1, best[:, None]).squeeze(1).cpu(),
                   candidate_scores=scores.cpu(), wall_s=time.perf_counter() - start)


def summarize(result: BestOfN, n: int, eos_token_id: int, labeler_scores: list[float] | None = None) -> dict[str, Any]:
    """Metrics of a best-of-n run: analytic KL, reward of the chosen and of all candidates, diversity, length."""
    metrics: dict[str, Any] = {
        "n": n,
        "kl": best_of_n_kl(n),
        "num_prompts": len(result.prompts),
        "rm_score_mean": mean_std(result.scores.tolist())[0],
        "rm_score_candidates_mean": mean_std(result.candidate_scores.flatten().tolist())[0],
        "distinct_2": distinct_n(result.response_ids, 2),
        "mean_words": mean_std([len(r.split()) for r in result.responses])[0],
        "eos_fraction": eos_fraction(result.response_ids, eos_token_id),
        "episodes": n * len(result.prompts),
        "wall_s": result.wall_s,
    }
    if labeler_scores is not None:
        metrics["labeler_score"] = mean_std(labeler_scores)[0]
    return metrics


def write_best_of_n(output_dir: str | Path, result: BestOfN, metrics: dict[str, Any],
                    labeler_scores: list[float] | None = None) -> Path:
    """`best_of_n.jsonl` (one chosen response per prompt) and `best_of_n_metrics.json` in `output_dir`."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / "best_of_n.jsonl", "w", encoding="utf-8") as handle:
        for i, (prompt, response) in enumerate(zip(result.prompts, result.responses)):
            row = {"prompt": prompt, "response": response, "score": float(result.scores[i]),
                   "candidate_scores": [float(s) for s in result.candidate_scores[i]]}
            if labeler_scores is not None:
                row["labeler_score"] = labeler_scores[i]
            handle.write(json.dumps(row) + "\n")
    (output_dir / "best_of_n_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return output_dir
