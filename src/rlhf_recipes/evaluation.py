"""Compare policies on held-out prompts: sample with fixed seeds, score with the reward model, report.

Per policy: the normalised reward-model score (mean and spread), the win rate against the first policy as judged
by the reward model, the KL to the reference policy (the sampled responses' summed log-ratio, the k1 estimator
averaged over prompts), mean response length (tokens and words), distinct-1/distinct-2, the fraction ending with
EOS, and on the embedded demo the simulated labeler's score and win rate against the first policy, and the win rate
of independent sentiment judges (`rlhf_recipes.demo.judges`, which defines it) against the first policy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from .data import encode_text
from .demo.judges import JUDGES
from .evaluation_metrics import distinct_n, eos_fraction, markdown_table, mean_std, win_rate
from .models import reward_scores
from .ppo.core import first_true_indices, logprobs_from_logits, truncate_after_stop_token

COLUMNS = ["policy", "rm_score_mean", "rm_score_std", "win_rate_vs_first", "kl_to_reference", "response_length",
           "mean_words", "distinct_1", "distinct_2", "eos_fraction", "labeler_score", "labeler_win_vs_first"]
# with `judges` set (names as in rlhf_recipes.demo.judges.JUDGES, repeated so a report needs no judge package)
JUDGE_COLUMNS = [f"{j}_{m}" for j in ("vader", "afinn") for m in ("score", "win_vs_first")]


@dataclass
class EvalArguments:
    """Arguments of `recipes/evaluate.py` (the prompts come from `ScriptArguments.dataset_name`)."""

    policy_paths: list[str] = field(default_factory=list, metadata={"role": "policy",
        "help": "Policies to compare; the first is "
                "the baseline of the win rate."})
    policy_names: list[str] = field(default_factory=list, metadata={"help": "Display names (default: folder)."})
    reward_model_path: str | None = field(default=None, metadata={"role": "reward",
        "help": "Judge: the (normalised) reward model."})
    reference_model_path: str | None = field(
        default=None, metadata={"role": "policy", "help": "KL reference (default: the first policy)."}
    )
    output_dir: str = field(default="runs/eval", metadata={"help": "Where eval_results.json and report.md go."})
    num_prompts: int = field(default=64, metadata={"range": "[1, inf)", "help": "Prompts from the evaluation split."})
    response_length: int = field(default=24, metadata={"range": "[1, inf)", "help": "Maximum new tokens."})
    temperature: float = field(default=1.0, metadata={"range": "(0, inf)", "help": "Sampling temperature."})
    batch_size: int = field(default=32, metadata={"range": "[1, inf)", "help": "Prompts per generation batch."})
    seed: int = field(default=1234, metadata={"range": "[0, 4294967295]",
        "help": "Sampling seed (each policy uses the same one)."})
    simulated_labeler: bool = field(default=False, metadata={"help": "Score with the demo's simulated labeler."})
    judges: list[str] = field(default_factory=list, metadata={"choices": list(JUDGES),
        "help": "Independent sentiment judges (`vader`, `afinn`; needs the `judges` extra): their win rate against "
                "the first policy, per prompt, ties half."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the Hub."})


def _left_pad(rows: list[list[int]], pad_id: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
    return out


@torch.no_grad()
def sample_responses(policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], *,
                     response_length: int, temperature: float, seed: int, batch_size: int) -> tuple[torch.Tensor,
                                                                                                   torch.Tensor]:
    """Sample one response per prompt (seeded). Returns left-padded queries and EOS-truncated, padded responses."""
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    config = GenerationConfig(max_new_tokens=response_length, do_sample=True, top_k=0, top_p=1.0,
                              temperature=temperature, eos_token_id=eos, pad_token_id=pad)
    torch.manual_seed(seed)
    queries, responses = [], []
    policy.eval()
    ids = [encode_text(tokenizer, p) for p in prompts]
    for start in range(0, len(ids), batch_size):
        q = _left_pad(ids[start: start + batch_size], pad).to(policy.device)
        out = policy.generate(input_ids=q, attention_mask=(q != pad).long(), generation_config=config)
        r = torch.full((q.shape[0], response_length), pad, dtype=torch.long, device=q.device)
        r[:, : out.shape[1] - q.shape[1]] = out[:, q.shape[1]:]
        queries.append(q)
        responses.append(truncate_after_stop_token(r, eos, pad))
    width = max(q.shape[1] for q in queries)
    queries = [torch.nn.functional.pad(q, (width - q.shape[1], 0), value=pad) for q in queries]
    return torch.cat(queries), torch.cat(responses)


@torch.no_grad()
def sequence_logprobs(model: PreTrainedModel, queries: torch.Tensor, responses: torch.Tensor, pad_id: int,
                      temperature: float = 1.0) -> torch.Tensor:
    """Summed log pi(y|x) over each response's real tokens."""
    qr = torch.cat([queries, responses], 1)
    mask = (qr != pad_id).long()
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=qr, attention_mask=mask, position_ids=pos).logits[:, queries.shape[1] - 1: -1]
    logprobs = logprobs_from_logits(logits.float() / temperature, responses)
    return (logprobs * (responses != pad_id)).sum(-1)


def evaluate_policies(policies: dict[str, PreTrainedModel], tokenizer: PreTrainedTokenizerBase, prompts: list[str],
                      *, reward_model: PreTrainedModel | None, reference: PreTrainedModel | None,
                      args: EvalArguments) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """Rows of the report (one per policy, `COLUMNS`) and the decoded responses of each policy."""
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    rows, samples, baseline_scores = [], {}, None
    labeler = None
    if args.simulated_labeler:
        from .demo.labeler import labeler_score as labeler
    if args.judges:
        from .demo.judges import judge_scores
    baseline_judged: dict[str, list[float]] = {}
    baseline_labeled: list[float] | None = None
    for name, policy in tqdm(policies.items(), desc="Evaluating policies"):
        queries, responses = sample_responses(policy, tokenizer, prompts, response_length=args.response_length,
                                              temperature=args.temperature, seed=args.seed,
                                              batch_size=args.batch_size)
        texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
        ids = [r[: int(first_true_indices((r == pad)[None])[0])].tolist() for r in responses]
        row: dict[str, Any] = {"policy": name}
        if reward_model is not None:
            scores = []
            for start in range(0, len(prompts), args.batch_size):
                qr = torch.cat([queries[start: start + args.batch_size], responses[start: start + args.batch_size]], 1)
                scores += reward_scores(reward_model, qr, (qr != pad).long()).tolist()
            row["rm_score_mean"], row["rm_score_std"] = mean_std(scores)
            baseline_scores = baseline_scores or scores
            row["win_rate_vs_first"] = win_rate(scores, baseline_scores)
        if reference is not None:
            kl = (sequence_logprobs(policy, queries, responses, pad, args.temperature)
                  - sequence_logprobs(reference, queries, responses, pad, args.temperature))
            row["kl_to_reference"] = kl.mean().item()
        row["response_length"] = sum(len(i) for i in ids) / len(ids)
        row["mean_words"] = sum(len(t.split()) for t in texts) / len(texts)
        row["distinct_1"], row["distinct_2"] = distinct_n(ids, 1), distinct_n(ids, 2)
        row["eos_fraction"] = eos_fraction(ids, eos)
        if labeler is not None:
            labeled = [labeler(p, t) for p, t in zip(prompts, texts)]
            baseline_labeled = baseline_labeled or labeled
            row["labeler_score"] = mean_std(labeled)[0]
            row["labeler_win_vs_first"] = win_rate(labeled, baseline_labeled)
        for judge in args.judges:
            judged = judge_scores(judge, texts)
            baseline_judged.setdefault(judge, judged)
            row[f"{judge}_score"] = mean_std(judged)[0]
            row[f"{judge}_win_vs_first"] = win_rate(judged, baseline_judged[judge])
        rows.append(row)
        samples[name] = texts
    return rows, samples


def write_report(output_dir: str | Path, rows: list[dict[str, Any]], samples: dict[str, list[str]],
                 prompts: list[str], num_samples: int = 8) -> str:
    """Write `eval_results.json` and `report.md` (table + responses side by side); return the table."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    columns = [c for c in COLUMNS + JUDGE_COLUMNS if any(c in r for r in rows)]
    table = markdown_table(rows, columns)
    (output_dir / "eval_results.json").write_text(json.dumps(
        {"results": rows, "samples": {k: v[:num_samples] for k, v in samples.items()},
         "prompts": prompts[:num_samples]}, indent=2) + "\n")
    names = list(samples)
    side = [{"prompt": p, **{n: samples[n][i] for n in names}} for i, p in enumerate(prompts[:num_samples])]
    report = ["# Policy comparison", "", table, "", "## Samples (same prompts, same seed)", "",
              markdown_table(side, ["prompt", *names]), ""]
    (output_dir / "report.md").write_text("\n".join(report))
    return table
