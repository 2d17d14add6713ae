"""Publish collected rankings to the Hub as a dataset repository, with a dataset card.

The same rules as the models (`rlhf_recipes.hub`): the token from `HF_TOKEN` or `hf auth login`, never a flag; the
repository private unless `hub_private_repo` is false, and an existing public one refused unless it is. Labelers'
names do not leave the machine: each is replaced by a pseudonym, `labeler-` + the first 12 hex digits of
HMAC-SHA256(salt, name), with a random salt made once and kept beside the comparisons file (`labeler_salt`, never
uploaded). The same labeler gets the same pseudonym in every push from that folder; without the salt nobody can
test a guessed name against it. `keep_labeler_names=True` (`--keep_labeler_names`) publishes the names as they are.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Any

from .jsonl import AppendLog

SALT_FILE = "labeler_salt"


def labeler_salt(comparisons_file: str | Path) -> bytes:
    """The folder's salt: made on first use (owner-only permissions), read afterwards."""
    path = Path(comparisons_file).parent / SALT_FILE
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            pass
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32) + "\n")
    salt = path.read_text().strip()
    if len(salt) < 32:
        from ..config import UserError

        raise UserError(f"{path} does not hold a labeler salt (64 hex digits). Restore it from a backup to keep the "
                        "published pseudonyms, or delete it to start new ones.")
    return salt.encode()


def pseudonym(name: str, salt: bytes) -> str:
    return "labeler-" + hmac.new(salt, name.encode(), hashlib.sha256).hexdigest()[:12]


def published_rows(comparisons_file: str | Path, *, keep_labeler_names: bool = False) -> list[dict[str, Any]]:
    """The rows as they are published: labeler names replaced by their pseudonyms unless asked otherwise."""
    rows = AppendLog(comparisons_file).rows
    if keep_labeler_names:
        return rows
    salt = labeler_salt(comparisons_file)
    return [{**row, "labeler": pseudonym(str(row["labeler"]), salt)} if row.get("labeler") else row for row in rows]


def dataset_card(rows: list[dict[str, Any]], repo_id: str, *, pseudonymous: bool = True) -> str:
    labelers = sorted({r.get("labeler") for r in rows if r.get("labeler")})
    ks = sorted({len(r.get("responses", [])) for r in rows})
    who = "a pseudonymous id, the same for one person in every row" if pseudonymous else "the labeler's name"
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

Each row is in the `ranking` format: `prompt`, `responses` ordered best to worst, plus `labeler` ({who}),
`item_id`, `flags` (one list per response, aligned with `responses`), `shown_order` (the sample file's indices in
the order the labeler saw them) and `time` (UTC). Train a reward model on it as it is:

```bash
python recipes/reward.py --config recipes/gpt2/reward.yaml --dataset_name {repo_id} --dataset_format ranking
```
"""


def push_labels(comparisons_file: str | Path, repo_id: str, *, private: bool = True,
                keep_labeler_names: bool = False) -> str:
    """Upload the comparisons as `train.jsonl` with a card, in one commit; return the repository id."""
    from huggingface_hub import CommitOperationAdd

    from ..hub import HubError, hub_api, hub_errors, prepare_repo

    path = Path(comparisons_file)
    if not path.is_file() or not AppendLog(path).rows:
        raise HubError(f"{path} holds no rankings to publish: give the comparisons file the labeling app wrote "
                       "(COMPARISONS=... for make push-labels).")
    api = hub_api()
    repo_id = prepare_repo(api, repo_id, private=private, repo_type="dataset",
                           public_flag="--hub_private_repo false (or --no_hub_private_repo)")
    rows = published_rows(path, keep_labeler_names=keep_labeler_names)
    data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()
    card = dataset_card(rows, repo_id, pseudonymous=not keep_labeler_names).encode()
    operations = [CommitOperationAdd(path_in_repo="train.jsonl", path_or_fileobj=data),
                  CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card)]
    with hub_errors(repo_id):
        api.create_commit(repo_id, operations, repo_type="dataset", commit_message="Upload rankings with rlhf-recipes")
    return repo_id
