"""Publish collected rankings to the Hub as a dataset repository, with a dataset card.

Same token rules as the models (`rlhf_recipes.hub.require_token`): `HF_TOKEN` or `hf auth login`, never a flag.
"""

from __future__ import annotations

from pathlib import Path

from .jsonl import AppendLog


def dataset_card(comparisons_file: str | Path, repo_id: str) -> str:
    rows = AppendLog(comparisons_file).rows
    labelers = sorted({r.get("labeler") for r in rows if r.get("labeler")})
    ks = sorted({len(r.get("responses", [])) for r in rows})
    return f"""---
tags:
- rlhf
- preference
- rlhf-recipes
task_categories:
- text-generation
configs:
- config_name: default
  data_files:
  - split: train
    path: train.jsonl
---

# {repo_id}

Rankings collected with [rlhf-recipes](https://github.com/)'s labeling app (`recipes/label.py`): {len(rows)} rankings
by {len(labelers)} labelers, K = {", ".join(map(str, ks)) or "-"} answers per prompt.

Each row is in the `ranking` format: `prompt`, `responses` ordered best to worst (no ties), plus `labeler`,
`item_id`, `flags` (one list per response, aligned with `responses`), `shown_order` (the sample file's indices in
the order the labeler saw them) and `time` (UTC). Train a reward model on it as it is:

```bash
python recipes/reward.py --config recipes/gpt2/reward.yaml --dataset_name {repo_id} --dataset_format ranking
```
"""


def push_labels(comparisons_file: str | Path, repo_id: str, *, private: bool = True) -> str:
    """Upload the comparisons file as `train.jsonl` with a card; return the repository id."""
    from huggingface_hub import HfApi

    from ..hub import require_token

    path = Path(comparisons_file)
    if not path.is_file() or not AppendLog(path).rows:
        raise FileNotFoundError(f"{path} holds no rankings to publish.")
    api = HfApi(token=require_token())
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    api.upload_file(path_or_fileobj=str(path), path_in_repo="train.jsonl", repo_id=repo_id, repo_type="dataset",
                    commit_message="Upload rankings with rlhf-recipes")
    api.upload_file(path_or_fileobj=dataset_card(path, repo_id).encode(), path_in_repo="README.md", repo_id=repo_id,
                    repo_type="dataset", commit_message="Dataset card")
    return repo_id
