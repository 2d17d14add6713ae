"""The label store: rankings of sampled answers, one JSONL line each, in the `ranking` format the RM trains on.

    store = LabelStore("samples.jsonl", "comparisons.jsonl", overlap_fraction=0.1)
    item = store.next_item("ann")            # {"id", "prompt", "responses"} (in the order shown to ann) or None
    store.submit("ann", item["id"], [2, 0, 3, 1], flags={2: ["untruthful"]})

Each accepted ranking is a line `{"prompt", "responses" (best to worst), "labeler", "item_id", "flags",
"shown_order", "time"}`: `recipes/reward.py --dataset_name comparisons.jsonl` trains on the file as it is. Skips
go to `<comparisons>.skips.jsonl` (they are not comparisons). Writes go through `AppendLog` (lock, flush, fsync,
a damaged tail set aside), and a ranking is refused rather than written twice, so a crash or a double click never
duplicates one, and after a restart nobody is served an item they already ranked or skipped.

Who gets what: each item is ranked by one labeler, except a fixed `overlap_fraction` of items (chosen by a hash of
the id, so every process agrees) that `overlap_labelers` different people rank, to measure inter-labeler agreement,
and gold items (rows with a `gold` ranking: a screening set with known answers) that everyone ranks. The K answers
are shown in an order shuffled per (labeler, item) by a hash, so the order needs no server state to survive a
restart, and is logged as `shown_order` (the sample file's indices, in the order shown).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ConfigError, MissingPathError
from ..data import DataError
from .jsonl import AppendLog

# InstructGPT's labeling metadata (Ouyang et al. 2022, table 3), shortened; a flag is about one response.
FLAGS = ("harmful", "untruthful", "off_topic", "fails_instruction", "inappropriate", "sexual", "violent", "opinion")
MIN_K, MAX_K = 2, 9


class RankingRefused(ValueError):
    """A ranking the store will not write; the message says why and how to fix it."""


@dataclass(frozen=True)
class Item:
    id: str
    prompt: str
    responses: tuple[str, ...]
    gold: tuple[int, ...] | None = None  # known best-to-worst order (sample-file indices) of a screening item


def _unit_hash(*parts: str) -> float:
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def load_items(samples_file: str | os.PathLike) -> dict[str, Item]:
    """Read a samples file (`recipes/sample.py`'s output, or any `id`, `prompt`, `responses` JSONL)."""
    items: dict[str, Item] = {}
    path = Path(samples_file)
    if not path.is_file():
        raise MissingPathError(f"`samples_file` = {path} does not exist; write it with recipes/sample.py "
                               "(`make sample`), or point --samples_file at its output.")
    for row in AppendLog(path).rows:
        line = len(items) + 1
        missing = [key for key in ("id", "prompt", "responses") if key not in row]
        if missing:
            raise DataError(f"{path}, row {line}: missing {missing}; a samples row needs id, prompt and responses.")
        responses = row["responses"]
        if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
            raise DataError(f"{path}, row {line}: 'responses' must be a list of strings.")
        if not MIN_K <= len(responses) <= MAX_K or len(set(responses)) < len(responses):
            raise DataError(f"{path}, row {line}: needs {MIN_K} to {MAX_K} distinct responses, got {len(responses)} "
                             f"({len(set(responses))} distinct).")
        gold = row.get("gold")
        if gold is not None and sorted(gold) != list(range(len(responses))):
            raise DataError(f"{path}, row {line}: 'gold' must order all response indices 0..{len(responses) - 1}.")
        item_id = str(row["id"])
        if item_id in items:
            raise DataError(f"{path}, row {line}: duplicate id {item_id!r}.")
        items[item_id] = Item(item_id, row["prompt"], tuple(responses), tuple(gold) if gold is not None else None)
    return items


def parse_ranking(ranking: str | list[int], k: int) -> list[int]:
    """`"3,1,0,2"` (0-based indices, best first) -> [3, 1, 0, 2]; refuses repeats, gaps and out-of-range indices."""
    if isinstance(ranking, str):
        parts = [p.strip() for p in ranking.replace(" ", ",").split(",") if p.strip()]
        try:
            order = [int(p) for p in parts]
        except ValueError:
            raise RankingRefused(f"ranking {ranking!r} must be response indices, best first, comma separated "
                                 f"(e.g. \"{','.join(map(str, range(k - 1, -1, -1)))}\").") from None
    else:
        order = [int(i) for i in ranking]
    if len(set(order)) < len(order):
        raise RankingRefused(f"ranking {order} repeats an index; rank every response once (no ties).")
    if sorted(order) != list(range(k)):
        missing = sorted(set(range(k)) - set(order))
        extra = sorted(set(order) - set(range(k)))
        raise RankingRefused(f"ranking {order} must order all {k} responses 0..{k - 1}"
                             + (f"; missing {missing}" if missing else "") + (f"; unknown {extra}" if extra else "") + ".")
    return order


def parse_flags(flags: str | dict | None, k: int) -> dict[int, list[str]]:
    """Flags per shown response: `""`, or JSON `{"<index>": ["harmful", ...]}` (indices as shown)."""
    if flags in (None, "", "{}"):
        return {}
    if isinstance(flags, str):
        try:
            flags = json.loads(flags)
        except json.JSONDecodeError:
            raise RankingRefused(f'flags {flags!r} must be JSON like {{"0": ["harmful"]}}, or empty.') from None
    if not isinstance(flags, dict):
        raise RankingRefused('flags must be a JSON object {"<response index>": ["flag", ...]}.')
    out: dict[int, list[str]] = {}
    for key, names in flags.items():
        try:
            index = int(key)
        except ValueError:
            raise RankingRefused(f"flag key {key!r} is not a response index.") from None
        if not 0 <= index < k:
            raise RankingRefused(f"flag key {index} is not a response index 0..{k - 1}.")
        names = [names] if isinstance(names, str) else list(names)
        unknown = [n for n in names if n not in FLAGS]
        if unknown:
            raise RankingRefused(f"unknown flag(s) {unknown}; use {list(FLAGS)}.")
        if names:
            out[index] = sorted(set(names))
    return out


class LabelStore:
    """Items from a samples file, rankings appended to a comparisons file; safe across threads and processes."""

    def __init__(self, samples_file: str | os.PathLike, comparisons_file: str | os.PathLike, *,
                 overlap_fraction: float = 0.0, overlap_labelers: int = 2, seed: int = 0):
        if not 0.0 <= overlap_fraction <= 1.0:
            raise ConfigError(f"overlap_fraction must be in [0, 1], got {overlap_fraction}.")
        if overlap_labelers < 2:
            raise ConfigError("overlap_labelers must be at least 2 (an overlap needs two people).")
        self.items = load_items(samples_file)
        self.order = list(self.items)
        self.overlap_fraction, self.overlap_labelers, self.seed = overlap_fraction, overlap_labelers, seed
        self.comparisons = AppendLog(comparisons_file)
        self.skips = AppendLog(f"{comparisons_file}.skips.jsonl")

    # ---------------------------------------------------------------------------------------------------- serving
    def wanted(self, item: Item) -> int:
        """How many labelers should rank `item`: everyone for gold, several for the overlap set, else one."""
        if item.gold is not None:
            return 10**9
        if _unit_hash(str(self.seed), "overlap", item.id) < self.overlap_fraction:
            return self.overlap_labelers
        return 1

    def shown_order(self, labeler: str, item: Item) -> list[int]:
        order = list(range(len(item.responses)))
        random.Random(f"{self.seed}\x1f{labeler}\x1f{item.id}").shuffle(order)
        return order

    def _done(self) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
        """item id -> labelers who ranked it; labeler -> item ids they ranked or skipped."""
        ranked_by: dict[str, set[str]] = {}
        done_by: dict[str, set[str]] = {}
        for row in self.comparisons.rows:
            ranked_by.setdefault(row.get("item_id"), set()).add(row.get("labeler"))
            done_by.setdefault(row.get("labeler"), set()).add(row.get("item_id"))
        for row in self.skips.rows:
            done_by.setdefault(row.get("labeler"), set()).add(row.get("item_id"))
        return ranked_by, done_by

    def remaining(self, labeler: str) -> list[str]:
        """Item ids `labeler` would still be served, in serving order."""
        self.comparisons.refresh()
        self.skips.refresh()
        ranked_by, done_by = self._done()
        mine = done_by.get(labeler, set())
        return [i for i in self.order if i not in mine
                and len(ranked_by.get(i, ())) < self.wanted(self.items[i])]

    def next_item(self, labeler: str) -> dict[str, Any] | None:
        """The next item for `labeler`, responses in the order shown to them; None when nothing is left."""
        labeler = _check_labeler(labeler)
        left = self.remaining(labeler)
        if not left:
            return None
        item = self.items[left[0]]
        order = self.shown_order(labeler, item)
        return {"id": item.id, "prompt": item.prompt, "responses": [item.responses[i] for i in order]}

    # ---------------------------------------------------------------------------------------------------- writing
    def submit(self, labeler: str, item_id: str, ranking: str | list[int], flags: str | dict | None = None
               ) -> dict[str, Any]:
        """Write `labeler`'s ranking of `item_id` (indices into the responses as shown, best first) and return the
        stored row; raises `RankingRefused` (and writes nothing) for a bad ranking, labeler or item."""
        labeler = _check_labeler(labeler)
        item = self.items.get(str(item_id))
        if item is None:
            raise RankingRefused(f"unknown item {item_id!r}; ask /next_item for one.")
        k = len(item.responses)
        shown = self.shown_order(labeler, item)
        order = parse_ranking(ranking, k)
        flags_shown = parse_flags(flags, k)
        row = {
            "prompt": item.prompt,
            "responses": [item.responses[shown[i]] for i in order],
            "labeler": labeler,
            "item_id": item.id,
            "flags": [flags_shown.get(i, []) for i in order],  # aligned with `responses`
            "shown_order": shown,
            "time": _now(),
        }
        with self.comparisons.locked():
            if any(r.get("item_id") == item.id and r.get("labeler") == labeler for r in self.comparisons.rows):
                raise RankingRefused(f"{labeler} already ranked item {item.id}; it is stored once.")
            self.comparisons.append(row)
        return row

    def submit_conversation(self, labeler: str, prompt: str, responses: list[str], ranking: str | list[int],
                            flags: str | dict | None = None, source: str = "chat") -> dict[str, Any]:
        """Store a ranking of answers that came from no samples file (the Chat tab): responses as shown."""
        labeler = _check_labeler(labeler)
        if not prompt.strip():
            raise RankingRefused("empty prompt.")
        if not MIN_K <= len(responses) <= MAX_K or len(set(responses)) < len(responses):
            raise RankingRefused(f"need {MIN_K} to {MAX_K} distinct responses to rank.")
        order = parse_ranking(ranking, len(responses))
        flags_shown = parse_flags(flags, len(responses))
        item_id = f"{source}-" + hashlib.sha256(json.dumps([prompt, responses]).encode()).hexdigest()[:16]
        row = {"prompt": prompt, "responses": [responses[i] for i in order], "labeler": labeler, "item_id": item_id,
               "flags": [flags_shown.get(i, []) for i in order], "shown_order": list(range(len(responses))),
               "time": _now()}
        with self.comparisons.locked():
            if any(r.get("item_id") == item_id and r.get("labeler") == labeler for r in self.comparisons.rows):
                raise RankingRefused(f"{labeler} already ranked these answers.")
            self.comparisons.append(row)
        return row

    def skip(self, labeler: str, item_id: str, reason: str) -> dict[str, Any]:
        """Record that `labeler` will not rank `item_id` (and why); it is not served to them again."""
        labeler = _check_labeler(labeler)
        if str(item_id) not in self.items:
            raise RankingRefused(f"unknown item {item_id!r}.")
        if not reason.strip():
            raise RankingRefused("say why you skip (e.g. 'unclear prompt', 'all answers identical').")
        row = {"labeler": labeler, "item_id": str(item_id), "reason": reason.strip(), "time": _now()}
        with self.skips.locked():
            if any(r["item_id"] == row["item_id"] and r["labeler"] == labeler for r in self.skips.rows):
                return row
            self.skips.append(row)
        return row


def _check_labeler(labeler: str) -> str:
    labeler = (labeler or "").strip()
    if not labeler:
        raise RankingRefused("empty labeler name; type your name first.")
    if len(labeler) > 64 or any(c in labeler for c in "\n\r\t"):
        raise RankingRefused("labeler names are one line of at most 64 characters.")
    return labeler


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
