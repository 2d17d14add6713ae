"""The label store: rankings of sampled answers, one JSONL line each, in the `ranking` format the RM trains on.

    store = LabelStore("samples.jsonl", "comparisons.jsonl", overlap_fraction=0.1)
    item = store.next_item("ann")     # {"id", "prompt", "responses" (as shown to ann), "token", "lease_seconds"}
    store.submit("ann", item["id"], [2, 0, 3, 1], flags={2: ["untruthful"]}, token=item["token"])
    store.submit("bob", ..., "2,0=3,1", token=...)   # "=": answers 0 and 3 (as shown) are equally good

Each accepted ranking is a line `{"prompt", "responses" (best to worst), "ties", "labeler", "item_id", "flags",
"shown_order", "time"}`: `recipes/reward.py --dataset_name comparisons.jsonl` trains on the file as it is. `ties`
holds groups of adjacent positions in `responses` the labeler found equally good (`rlhf_recipes.data.rankings`: the
reward model compares no pair inside a group). Skips go to `<comparisons>.skips.jsonl` (they are not comparisons).
Writes go through `AppendLog` (lock, flush, fsync, a damaged tail set aside), and a ranking is refused rather than
written twice, so a crash or a double click never duplicates one, and after a restart nobody is served an item they
already ranked or skipped.

One served item, one ranking: `next_item` reserves an item for the labeler for `lease_seconds` and returns a serve
token that binds labeler, item and the order the answers were shown in; `submit`/`skip` take that token (or the
item id of the labeler's open serve), map the indices through the order that was shown, and refuse anything that
was not served to that labeler, and a token used twice. A labeler holds at most one open serve: asking again returns
the same item until it is ranked, skipped or released (`release`, e.g. when the app's user changes name).

Who gets what: each item is ranked by one labeler, except a fixed `overlap_fraction` of items (chosen by a hash of
the id, so every process agrees) that `overlap_labelers` different people rank, to measure inter-labeler agreement,
and gold items (rows with a `gold` ranking: a screening set with known answers) that everyone ranks. The quota is
enforced under the store's lock when serving (stored rankings + open leases) and again at submit (stored rankings,
which also counts other processes writing the same file). An expired lease returns the item to the pool; a late
submit on it is still accepted if the item has room. Leases live in the serving process's memory: after a restart
open items are simply served again. The K answers are shown in an order shuffled per (labeler, item) by a hash and
logged as `shown_order` (the sample file's indices, in the order shown).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import secrets
import threading
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ConfigError, MissingPathError
from ..data import DataError
from ..data.rankings import ties_problem
from .jsonl import AppendLog

# InstructGPT's labeling metadata (Ouyang et al. 2022, table 3), shortened; a flag is about one response.
FLAGS = ("harmful", "untruthful", "off_topic", "fails_instruction", "inappropriate", "sexual", "violent", "opinion")
MIN_K, MAX_K = 2, 9
# Caps on what a labeler (or a script) sends: beyond them the input is refused unread, and not echoed back.
MAX_NAME_CHARS = 64
MAX_RANKING_CHARS = 64  # "8=7,6,5,4,3,2,1,0" is 17 characters
MAX_FLAGS_CHARS = 2000  # every flag on each of 9 answers is about 900
MAX_REASON_CHARS = 500
DEFAULT_LEASE_SECONDS = 600.0


class RankingRefused(ValueError):
    """A ranking the store will not write; the message says why and how to fix it."""


@dataclass(frozen=True)
class Item:
    id: str
    prompt: str
    responses: tuple[str, ...]
    gold: tuple[int, ...] | None = None  # known best-to-worst order (sample-file indices) of a screening item


@dataclass
class Serve:
    """One item reserved for one labeler: the answers were shown in `shown` order (sample-file indices)."""

    token: str
    labeler: str
    item_id: str
    shown: list[int]
    expires: float


def _unit_hash(*parts: str) -> float:
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _short(value: Any, limit: int = 40) -> str:
    """repr of a refused input, cut: an error must not echo megabytes back."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def check_name(name: Any, what: str = "labeler name") -> str:
    """A labeler's name as stored: one line of printable characters, no control, format (bidi, zero-width) or odd
    space characters, at most `MAX_NAME_CHARS`; surrounding spaces removed."""
    if not isinstance(name, str):
        raise RankingRefused(f"the {what} must be text.")
    if len(name) > 4 * MAX_NAME_CHARS:
        raise RankingRefused(f"the {what} is {len(name)} characters; use at most {MAX_NAME_CHARS}.")
    name = unicodedata.normalize("NFC", name).strip()
    if not name:
        raise RankingRefused(f"empty {what}; type your name first.")
    if len(name) > MAX_NAME_CHARS:
        raise RankingRefused(f"the {what} is {len(name)} characters; use at most {MAX_NAME_CHARS}.")
    bad = [c for c in name if c != " " and unicodedata.category(c)[0] in "CZ"]
    if bad:
        codes = ", ".join(f"U+{ord(c):04X}" for c in dict.fromkeys(bad))
        raise RankingRefused(f"the {what} may hold printable characters and plain spaces only, not {codes}.")
    return name


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


_TOKEN = re.compile(r"\d+|=|[^\s,\d=]+")


def read_order(text: str, k: int, *, one_based: bool) -> tuple[list[int], list[list[int]]]:
    """Numbers best first, `=` joining adjacent answers that are equally good -> (0-based order, tie groups)."""
    if len(text) > MAX_RANKING_CHARS:
        raise RankingRefused(f"the ranking is {len(text)} characters; a ranking of {k} answers is at most "
                             f"{MAX_RANKING_CHARS}.")
    tokens = _TOKEN.findall(text)
    if one_based:  # the UI numbers answers 1-9, so "3142" is four numbers
        tokens = [d for t in tokens for d in (list(t) if t.isdigit() else [t])]
    first = 1 if one_based else 0
    example = ",".join(map(str, range(k - 1 + first, first - 1, -1)))
    if not tokens or any(not t.isdigit() and t != "=" for t in tokens) or tokens[0] == "=" or tokens[-1] == "=" \
            or any(a == b == "=" for a, b in zip(tokens, tokens[1:])):
        raise RankingRefused(f"ranking {_short(text)} must be answer numbers {first}-{k - 1 + first}, best first "
                             f"(e.g. {example}; '=' between two answers that are equally good).")
    order: list[int] = []
    ties: list[list[int]] = []
    tied_to_previous = False
    for token in tokens:
        if token == "=":
            tied_to_previous = True
            continue
        if tied_to_previous:
            if ties and ties[-1][-1] == len(order) - 1:
                ties[-1].append(len(order))
            else:
                ties.append([len(order) - 1, len(order)])
        tied_to_previous = False
        order.append(int(token) - first)
    return order, ties


def check_order(order: list[int], k: int) -> list[int]:
    if len(set(order)) < len(order):
        raise RankingRefused(f"ranking {order} repeats an index; rank every response once ('=' marks a tie).")
    if sorted(order) != list(range(k)):
        missing = sorted(set(range(k)) - set(order))
        extra = sorted(set(order) - set(range(k)))[:5]
        raise RankingRefused(f"ranking {order[:12]} must order all {k} responses 0..{k - 1}"
                             + (f"; missing {missing}" if missing else "") + (f"; unknown {extra}" if extra else "")
                             + ".")
    return order


def parse_ranking(ranking: str | list[int], k: int, ties: list[list[int]] | None = None
                  ) -> tuple[list[int], list[list[int]]]:
    """`"3,1=0,2"` (0-based indices as shown, best first; `=` ties adjacent answers) -> ([3, 1, 0, 2], [[1, 2]]).

    A list of indices may come with `ties` (groups of adjacent positions in the ranking). Refuses repeats, gaps,
    out-of-range indices, bad tie groups and oversized input."""
    if isinstance(ranking, str):
        if ties:
            raise RankingRefused("give ties either with '=' in the ranking string or as a list, not both.")
        order, ties = read_order(ranking.strip(), k, one_based=False)
    else:
        if not isinstance(ranking, (list, tuple)) or len(ranking) > 2 * MAX_K:
            raise RankingRefused(f"a ranking is a list of at most {MAX_K} response indices, got {_short(ranking)}.")
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in ranking):
            raise RankingRefused(f"ranking {_short(ranking)} must hold response indices (integers).")
        order = list(ranking)
        ties = [list(g) for g in ties] if ties else []
    check_order(order, k)
    problem = ties_problem(ties or None, k)
    if problem:
        raise RankingRefused(f"ties: {problem}.")
    return order, ties


def parse_flags(flags: str | dict | None, k: int) -> dict[int, list[str]]:
    """Flags per shown response: `""`, or JSON `{"<index>": ["harmful", ...]}` (indices as shown)."""
    if flags is None or (isinstance(flags, str) and flags.strip() in ("", "{}")):
        return {}
    if isinstance(flags, str):
        if len(flags) > MAX_FLAGS_CHARS:
            raise RankingRefused(f"flags are {len(flags)} characters; at most {MAX_FLAGS_CHARS}.")
        try:
            flags = json.loads(flags)
        except json.JSONDecodeError:
            raise RankingRefused(f'flags {_short(flags)} must be JSON like {{"0": ["harmful"]}}, or empty.') from None
    if not isinstance(flags, dict):
        raise RankingRefused('flags must be a JSON object {"<response index>": ["flag", ...]}.')
    out: dict[int, list[str]] = {}
    for key, names in flags.items():
        try:
            index = int(key)
        except (TypeError, ValueError):
            raise RankingRefused(f"flag key {_short(key)} is not a response index.") from None
        if not 0 <= index < k:
            raise RankingRefused(f"flag key {index} is not a response index 0..{k - 1}.")
        if isinstance(names, str):
            names = [names]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise RankingRefused(f'flags of response {index} must be a list of flag names like ["harmful"], '
                                 f"got {_short(names)}.")
        unknown = [n for n in names if n not in FLAGS]
        if unknown:
            raise RankingRefused(f"unknown flag(s) {_short(unknown)}; use {list(FLAGS)}.")
        if names:
            out[index] = sorted(set(names))
    return out


def check_reason(reason: Any) -> str:
    """A skip reason: one line of text, at most `MAX_REASON_CHARS` (it is shown to everyone in Stats)."""
    if not isinstance(reason, str):
        raise RankingRefused("the skip reason must be text.")
    if len(reason) > MAX_REASON_CHARS:
        raise RankingRefused(f"the skip reason is {len(reason)} characters; say it in at most {MAX_REASON_CHARS}.")
    reason = " ".join(reason.split())  # one line: no newlines or tabs in a table cell
    if any(unicodedata.category(c) in ("Cc", "Cf") for c in reason):
        raise RankingRefused("the skip reason may hold printable characters only.")
    if not reason:
        raise RankingRefused("say why you skip (e.g. 'unclear prompt', 'all answers identical').")
    return reason


class LabelStore:
    """Items from a samples file, rankings appended to a comparisons file; safe across threads and processes."""

    def __init__(self, samples_file: str | os.PathLike, comparisons_file: str | os.PathLike, *,
                 overlap_fraction: float = 0.0, overlap_labelers: int = 2, seed: int = 0,
                 lease_seconds: float = DEFAULT_LEASE_SECONDS):
        if not 0.0 <= overlap_fraction <= 1.0:
            raise ConfigError(f"overlap_fraction must be in [0, 1], got {overlap_fraction}.")
        if overlap_labelers < 2:
            raise ConfigError("overlap_labelers must be at least 2 (an overlap needs two people).")
        if not lease_seconds > 0:
            raise ConfigError(f"lease_seconds must be > 0, got {lease_seconds}.")
        self.items = load_items(samples_file)
        self.order = list(self.items)
        self.overlap_fraction, self.overlap_labelers, self.seed = overlap_fraction, overlap_labelers, seed
        self.lease_seconds = lease_seconds
        self.comparisons = AppendLog(comparisons_file)
        self.skips = AppendLog(f"{comparisons_file}.skips.jsonl")
        # The store's lock: serving, submitting and skipping are one step each for every thread of this process
        # (the files' own locks order them against other processes).
        self._lock = threading.RLock()
        self._serves: dict[str, Serve] = {}  # open serves by token
        self._closed: dict[str, tuple[str, Serve]] = {}  # token -> (why it closed: used/expired/released, serve)
        self._ranked_by: dict[str, list[str]] = {}  # item id -> labelers who ranked it, in file order
        self._done_by: dict[str, set[str]] = {}  # labeler -> item ids they ranked or skipped
        self._seen = [0, 0]  # rows of comparisons/skips already counted
        self.clock = time.monotonic

    # ---------------------------------------------------------------------------------------------------- serving
    def wanted(self, item: Item) -> int:
        """How many labelers should rank `item`: everyone for gold, several for the overlap set, else one."""
        if item.gold is not None:
            return 10**9
        if self.is_overlap(item):
            return self.overlap_labelers
        return 1

    def is_overlap(self, item: Item) -> bool:
        """True for the items planned to be ranked by `overlap_labelers` people (gold items are not overlap)."""
        return item.gold is None and _unit_hash(str(self.seed), "overlap", item.id) < self.overlap_fraction

    def shown_order(self, labeler: str, item: Item) -> list[int]:
        order = list(range(len(item.responses)))
        random.Random(f"{self.seed}\x1f{labeler}\x1f{item.id}").shuffle(order)
        return order

    def _sync(self) -> None:
        """Read and count the rows other writers appended since the last look (not inside a file's `locked()`)."""
        self.comparisons.refresh()
        self.skips.refresh()
        self._count_new()

    def _count_new(self) -> None:
        for row in self.comparisons.rows[self._seen[0]:]:
            self._ranked_by.setdefault(row.get("item_id"), []).append(row.get("labeler"))
            self._done_by.setdefault(row.get("labeler"), set()).add(row.get("item_id"))
        for row in self.skips.rows[self._seen[1]:]:
            self._done_by.setdefault(row.get("labeler"), set()).add(row.get("item_id"))
        self._seen = [len(self.comparisons.rows), len(self.skips.rows)]

    def _expire(self, now: float) -> None:
        for token, serve in list(self._serves.items()):
            if serve.expires <= now:
                self._closed[token] = ("expired", self._serves.pop(token))

    def _leased(self, item_id: str, now: float, but: str | None = None) -> int:
        """Open leases on `item_id` held by labelers other than `but`."""
        return sum(1 for s in self._serves.values() if s.item_id == item_id and s.expires > now and s.labeler != but)

    def remaining(self, labeler: str) -> list[str]:
        """Item ids `labeler` would still be served (ignoring other labelers' open leases), in serving order."""
        with self._lock:
            self._sync()
            mine = self._done_by.get(labeler, set())
            return [i for i in self.order if i not in mine
                    and len(self._ranked_by.get(i, ())) < self.wanted(self.items[i])]

    def open_serve(self, labeler: str) -> Serve | None:
        """`labeler`'s open (unexpired) serve, if any."""
        with self._lock:
            now = self.clock()
            return next((s for s in self._serves.values() if s.labeler == labeler and s.expires > now), None)

    def next_item(self, labeler: str) -> dict[str, Any] | None:
        """Reserve the next item for `labeler` (or return the one they hold): `{"id", "prompt", "responses" (in the
        order shown to them), "token", "lease_seconds"}`; None when nothing is left for them."""
        labeler = check_name(labeler)
        with self._lock:
            self._sync()
            now = self.clock()
            self._expire(now)
            serve = self.open_serve(labeler)
            if serve is None:
                mine = self._done_by.get(labeler, set())
                leased = Counter(s.item_id for s in self._serves.values())
                item_id = next((i for i in self.order if i not in mine and len(self._ranked_by.get(i, ()))
                                + leased[i] < self.wanted(self.items[i])), None)
                if item_id is None:
                    return None
                serve = Serve(secrets.token_urlsafe(16), labeler, item_id,
                              self.shown_order(labeler, self.items[item_id]), now + self.lease_seconds)
                self._serves[serve.token] = serve
            item = self.items[serve.item_id]
            return {"id": item.id, "prompt": item.prompt, "responses": [item.responses[i] for i in serve.shown],
                    "token": serve.token, "lease_seconds": round(serve.expires - now)}

    def release(self, labeler: str, token: str | None = None) -> bool:
        """Give `labeler`'s open serve (or the one of `token`, if it is theirs) back to the pool; True if one was."""
        with self._lock:
            for serve in list(self._serves.values()):
                if serve.labeler == labeler and (token is None or serve.token == token):
                    self._closed[serve.token] = ("released", self._serves.pop(serve.token))
                    return True
            return False

    def _claim(self, labeler: str, item_id: str | None, token: str | None) -> Serve:
        """The serve a submission or skip is for; refuses anything not served to `labeler`. Call under the lock."""
        if token:
            if not isinstance(token, str) or len(token) > 64:
                raise RankingRefused("not a serve token; use the token /next_item returned.")
            serve = self._serves.get(token)
            if serve is None:
                why, closed = self._closed.get(token, (None, None))
                if why is None:
                    raise RankingRefused("unknown serve token (the app may have restarted); ask /next_item again.")
                if why == "used":
                    raise RankingRefused(f"this serve of item {closed.item_id} was already ranked or skipped; a serve "
                                         "token is used once. Ask /next_item for the next item.")
                if why == "released":
                    raise RankingRefused(f"item {closed.item_id} was released (the labeler name changed); ask "
                                         "/next_item again.")
                serve = closed  # expired: still accepted below if the item has room and nobody else holds it
            if serve.labeler != labeler:
                raise RankingRefused(f"item {serve.item_id} was served to another labeler name, not to {labeler!r}; "
                                     "nothing was saved. Ask /next_item as yourself.")
            if item_id not in (None, "") and str(item_id) != serve.item_id:
                raise RankingRefused(f"the serve token is for item {serve.item_id}, not {_short(item_id)}.")
            return serve
        if item_id is None or str(item_id) not in self.items:
            raise RankingRefused(f"unknown item {_short(item_id)}; ask /next_item for one.")
        serve = next((s for s in self._serves.values() if s.labeler == labeler and s.item_id == str(item_id)), None)
        if serve is None:
            expired = [s for why, s in self._closed.values()
                       if why == "expired" and s.labeler == labeler and s.item_id == str(item_id)]
            if expired and str(item_id) not in self._done_by.get(labeler, set()):
                return expired[-1]
            raise RankingRefused(f"item {item_id} is not served to {labeler!r}; ask /next_item and submit the item "
                                 "it returns (with its token).")
        return serve

    def _check_room(self, serve: Serve) -> None:
        """The quota at write time: not ranked by this labeler yet, and room left beside other open leases."""
        item = self.items[serve.item_id]
        ranked = self._ranked_by.get(item.id, [])
        if serve.labeler in ranked or item.id in self._done_by.get(serve.labeler, set()):
            raise RankingRefused(f"{serve.labeler} already ranked or skipped item {item.id}; it is stored once.")
        if serve.token not in self._serves:  # an expired lease: the item may have gone to someone else
            if len(ranked) + self._leased(item.id, self.clock(), but=serve.labeler) >= self.wanted(item):
                raise RankingRefused(f"your {self.lease_seconds:.0f} s reservation of item {item.id} ran out and it "
                                     "went to another labeler; nothing was saved. Ask /next_item for the next item.")
        elif len(ranked) >= self.wanted(item):
            raise RankingRefused(f"item {item.id} already has the {self.wanted(item)} ranking(s) it needs; nothing "
                                 "was saved. Ask /next_item for the next item.")

    def _close(self, serve: Serve) -> None:
        """The item is done for this labeler: close this serve and any newer one of theirs on the same item."""
        for other in [s for s in self._serves.values() if s.labeler == serve.labeler and s.item_id == serve.item_id]:
            self._closed[self._serves.pop(other.token).token] = ("used", other)
        self._serves.pop(serve.token, None)
        self._closed[serve.token] = ("used", serve)

    # ---------------------------------------------------------------------------------------------------- writing
    def submit(self, labeler: str, item_id: str | None, ranking: str | list[int], flags: str | dict | None = None,
               *, token: str | None = None, ties: list[list[int]] | None = None) -> dict[str, Any]:
        """Write `labeler`'s ranking of the item served to them (indices into the responses as shown, best first;
        `token` from `next_item`, or the item id of their open serve) and return the stored row; raises
        `RankingRefused` (and writes nothing) for a bad ranking, or an item not served to this labeler."""
        labeler = check_name(labeler)
        with self._lock:
            serve = self._claim(labeler, item_id, token)
            item = self.items[serve.item_id]
            k = len(item.responses)
            order, ties = parse_ranking(ranking, k, ties)
            flags_shown = parse_flags(flags, k)
            shown = serve.shown
            row = {
                "prompt": item.prompt,
                "responses": [item.responses[shown[i]] for i in order],
                "ties": ties,  # positions in `responses`
                "labeler": labeler,
                "item_id": item.id,
                "flags": [flags_shown.get(i, []) for i in order],  # aligned with `responses`
                "shown_order": list(shown),
                "time": _now(),
            }
            self.skips.refresh()
            with self.comparisons.locked():  # on entry it reads what other processes appended
                self._count_new()
                self._check_room(serve)
                self.comparisons.append(row)
                self._count_new()
            self._close(serve)
        return row

    def submit_conversation(self, labeler: str, prompt: str, responses: list[str], ranking: str | list[int],
                            flags: str | dict | None = None, source: str = "chat",
                            ties: list[list[int]] | None = None) -> dict[str, Any]:
        """Store a ranking of answers that came from no samples file (the Chat tab): responses as shown."""
        labeler = check_name(labeler)
        if not prompt.strip():
            raise RankingRefused("empty prompt.")
        if not MIN_K <= len(responses) <= MAX_K or len(set(responses)) < len(responses):
            raise RankingRefused(f"need {MIN_K} to {MAX_K} distinct responses to rank.")
        order, ties = parse_ranking(ranking, len(responses), ties)
        flags_shown = parse_flags(flags, len(responses))
        item_id = f"{source}-" + hashlib.sha256(json.dumps([prompt, responses]).encode()).hexdigest()[:16]
        row = {"prompt": prompt, "responses": [responses[i] for i in order], "ties": ties, "labeler": labeler,
               "item_id": item_id, "flags": [flags_shown.get(i, []) for i in order],
               "shown_order": list(range(len(responses))), "time": _now()}
        with self._lock, self.comparisons.locked():
            if any(r.get("item_id") == item_id and r.get("labeler") == labeler for r in self.comparisons.rows):
                raise RankingRefused(f"{labeler} already ranked these answers.")
            self.comparisons.append(row)
        return row

    def skip(self, labeler: str, item_id: str | None, reason: str, *, token: str | None = None) -> dict[str, Any]:
        """Record that `labeler` will not rank the item served to them (and why); it is not served to them again."""
        labeler = check_name(labeler)
        reason = check_reason(reason)
        with self._lock:
            serve = self._claim(labeler, item_id, token)
            row = {"labeler": labeler, "item_id": serve.item_id, "reason": reason, "time": _now()}
            self.comparisons.refresh()
            with self.skips.locked():
                self._count_new()
                if serve.item_id in self._done_by.get(labeler, set()):
                    raise RankingRefused(f"{labeler} already ranked or skipped item {serve.item_id}.")
                self.skips.append(row)
                self._count_new()
            self._close(serve)
        return row


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
