"""Print what each stage of a pipeline run achieved (`make demo` ends with this).

    python -m rlhf_recipes.demo.summary runs/demo
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..evaluation_metrics import markdown_table

STAGE_FIELDS = {
    "sft": [("held-out loss before", "eval_loss_before"), ("held-out loss after", "eval_loss_after")],
    "reward": [("held-out accuracy", "eval_accuracy"), ("held-out margin", "eval_margin"),
               ("normalisation bias", "reward_bias")],
    "ppo": [("final KL", "objective/kl"), ("final KL coef", "objective/kl_coef"),
            ("final RM score (train batch)", "objective/scores")],
}


def summarize(run_root: str | Path) -> str:
    run_root = Path(run_root)
    rows = []
    for stage, fields in STAGE_FIELDS.items():
        metrics_file = run_root / stage / "stage_metrics.json"
        if not metrics_file.is_file():
            continue
        metrics = json.loads(metrics_file.read_text())
        for label, key in fields:
            if key in metrics:
                rows.append({"stage": stage, "metric": label, "value": metrics[key]})
    text = ["## Pipeline summary", "", markdown_table(rows, ["stage", "metric", "value"])]
    eval_file = run_root / "eval" / "eval_results.json"
    if eval_file.is_file():
        results = json.loads(eval_file.read_text())["results"]
        columns = [c for c in ("policy", "rm_score_mean", "labeler_score", "win_rate_vs_first", "kl_to_reference",
                               "response_length", "distinct_2", "eos_fraction") if any(c in r for r in results)]
        text += ["", "## Held-out evaluation (reward model, simulated labeler, KL to SFT)", "",
                 markdown_table(results, columns)]
    heldout_file = run_root / "eval_heldout" / "eval_results.json"
    if heldout_file.is_file():
        results = json.loads(heldout_file.read_text())["results"]
        columns = [c for c in ("policy", "labeler_win_vs_first", "vader_win_vs_first", "afinn_win_vs_first",
                               "kl_to_reference", "mean_words", "distinct_2") if any(c in r for r in results)]
        text += ["", "## Openings no stage trained on (win rates vs SFT: labeler and two independent judges)", "",
                 markdown_table(results, columns)]
    return "\n".join(text)


def main() -> None:
    print(summarize(sys.argv[1] if len(sys.argv) > 1 else "runs/demo"))


if __name__ == "__main__":
    main()
