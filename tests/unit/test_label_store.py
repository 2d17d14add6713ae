"""The label store without a browser: serving, append, refusals, restart, crashes, two writers, quotas under
concurrency, leases, ties, agreement statistics."""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlhf_recipes.config import ConfigError, MissingPathError
from rlhf_recipes.data import DataError
from rlhf_recipes.feedback.jsonl import JsonlError
from rlhf_recipes.feedback.stats import label_stats, pairwise_agreement, stats_html
from rlhf_recipes.feedback.store import (
    LabelStore,
    RankingRefused,
    check_name,
    check_reason,
    load_items,
    parse_flags,
    read_order,
)

REPO = Path(__file__).resolve().parents[2]


def write_samples(path: Path, n: int, k: int = 4, gold: dict[int, list[int]] | None = None, width: int = 1) -> Path:
    with open(path, "w") as handle:
        for i in range(n):
            row = {"id": f"item{i}", "prompt": f"Prompt {i}:", "responses": [f" answer {i}.{j}" * width for j in range(k)]}
            if gold and i in gold:
                row["gold"] = gold[i]
            handle.write(json.dumps(row) + "\n")
    return path


@pytest.fixture
def samples(tmp_path) -> Path:
    return write_samples(tmp_path / "samples.jsonl", 5)


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def rank_next(store: LabelStore, labeler: str, ranking="0,1,2,3", flags=None) -> dict:
    """Serve `labeler` their next item and submit `ranking` (indices as shown) for it with the serve token."""
    item = store.next_item(labeler)
    return store.submit(labeler, item["id"], ranking, flags, token=item["token"])


def test_submit_stores_the_ranking_best_first_in_the_reward_format(samples, tmp_path):
    comparisons = tmp_path / "comparisons.jsonl"
    store = LabelStore(samples, comparisons)
    item = store.next_item("ann")
    assert item["id"] == "item0" and sorted(item["responses"]) == sorted(store.items["item0"].responses)
    row = store.submit("ann", "item0", "3,1,0,2", json.dumps({"1": ["untruthful"]}), token=item["token"])
    shown = item["responses"]
    assert row["responses"] == [shown[3], shown[1], shown[0], shown[2]]
    assert row["flags"] == [[], ["untruthful"], [], []]  # aligned with the stored order
    assert row["ties"] == []
    assert [store.items["item0"].responses[i] for i in row["shown_order"]] == shown
    assert lines(comparisons) == [row]
    # recipes/reward.py reads the file as it is
    from rlhf_recipes.config import ScriptArguments
    from rlhf_recipes.data import load_stage_dataset

    args = ScriptArguments(dataset_name=str(comparisons))
    dataset, _ = load_stage_dataset(args, "reward")
    assert dataset["train"][0]["responses"] == row["responses"]


@pytest.mark.parametrize("labeler,item_id,ranking,flags,message", [
    ("ann", "item0", "3,1,1,2", "", "repeats"),
    ("ann", "item0", "3,1,0", "", r"missing \[2\]"),
    ("ann", "item0", "3,1,0,4", "", r"unknown \[4\]"),
    ("ann", "item0", "a,b", "", "answer numbers 0-3"),
    ("ann", "item0", "0=1=2=3", "", "every response is tied"),
    ("ann", "item0", "=0,1,2,3", "", "answer numbers"),
    ("ann", "item0", "0,1,2,3" * 10**5, "", "700000 characters; a ranking of 4 answers is at most 64"),
    ("ann", "nope", "0,1,2,3", "", "unknown item"),
    ("ann", "item1", "0,1,2,3", "", "item item1 is not served to 'ann'"),
    ("bob", "item0", "0,1,2,3", "", "not served to 'bob'"),
    ("  ", "item0", "0,1,2,3", "", "empty labeler"),
    ("ann", "item0", "0,1,2,3", '{"0": ["rude"]}', "unknown flag"),
    ("ann", "item0", "0,1,2,3", '{"7": ["harmful"]}', "not a response index"),
    ("ann", "item0", "0,1,2,3", '{"0": 5}', r"flags of response 0 must be a list of flag names.*got 5"),
    ("ann", "item0", "0,1,2,3", '{"0": null}', "flags of response 0 must be a list of flag names.*got None"),
    ("ann", "item0", "0,1,2,3", '{"0": [1]}', "flags of response 0 must be a list of flag names"),
    ("ann", "item0", "0,1,2,3", '{"0": ["harmful"]}' + " " * 3000, "at most 2000"),
])
def test_bad_submissions_are_refused_and_write_nothing(samples, tmp_path, labeler, item_id, ranking, flags, message):
    comparisons = tmp_path / "comparisons.jsonl"
    store = LabelStore(samples, comparisons)
    assert store.next_item("ann")["id"] == "item0"
    with pytest.raises(RankingRefused, match=message) as refused:
        store.submit(labeler, item_id, ranking, flags)
    assert len(str(refused.value)) < 300  # a huge input is not echoed back
    assert comparisons.read_text() == ""
    assert store.submit("ann", "item0", "0,1,2,3")["item_id"] == "item0"  # the serve is still open


@pytest.mark.parametrize("name,message", [
    ("ann\u202eevil", "U\\+202E"), ("ann\x00", "U\\+0000"), ("ann\x1b[31m", "U\\+001B"), ("a\u2028b", "U\\+2028"),
    ("a\u200bb", "U\\+200B"), ("a\tb", "U\\+0009"), ("x" * 65, "at most 64"), ("x" * 10**6, "at most 64"), ("", "empty"),
])
def test_labeler_names_are_one_printable_line(name, message):
    with pytest.raises(RankingRefused, match=message):
        check_name(name)
    assert check_name("  Ann Smith-Jones (QA) ") == "Ann Smith-Jones (QA)"
    assert check_name("Zoë 李") == "Zoë 李"


def test_skip_reasons_are_capped_and_one_line(samples, tmp_path):
    store = LabelStore(samples, tmp_path / "comparisons.jsonl")
    item = store.next_item("ann")
    for reason, message in [("x" * 200_000, "200000 characters"), ("   ", "say why"), ("a\u202eb", "printable")]:
        with pytest.raises(RankingRefused, match=message):
            store.skip("ann", None, reason, token=item["token"])
    assert store.skip("ann", None, "unclear\nprompt", token=item["token"])["reason"] == "unclear prompt"
    assert not Path(f"{tmp_path}/comparisons.jsonl").read_text()
    assert len(lines(Path(f"{tmp_path}/comparisons.jsonl.skips.jsonl"))) == 1


def test_restart_serves_nothing_twice_and_refuses_a_second_ranking(samples, tmp_path):
    comparisons = tmp_path / "comparisons.jsonl"
    store = LabelStore(samples, comparisons)
    rank_next(store, "ann")
    store.skip("ann", store.next_item("ann")["id"], "unclear prompt")
    restarted = LabelStore(samples, comparisons)
    assert restarted.remaining("ann") == ["item2", "item3", "item4"]
    assert restarted.next_item("ann")["id"] == "item2"
    with pytest.raises(RankingRefused, match="not served"):
        restarted.submit("ann", "item0", "3,2,1,0")
    assert len(lines(comparisons)) == 1
    # without overlap an item ranked by ann is not served to bob either
    assert restarted.next_item("bob")["id"] == "item1"  # item2 is leased to ann


def test_damaged_last_line_is_set_aside_with_a_warning(samples, tmp_path, caplog):
    comparisons = tmp_path / "comparisons.jsonl"
    store = LabelStore(samples, comparisons)
    rank_next(store, "ann")
    good = comparisons.read_bytes()
    with open(comparisons, "ab") as handle:  # a writer that died inside write()
        handle.write(b'{"prompt": "Prompt 1:", "responses": [" ans')
    with caplog.at_level(logging.WARNING):
        restarted = LabelStore(samples, comparisons)
    assert "damaged" in caplog.text
    assert comparisons.read_bytes() == good
    assert b'"responses": [" ans' in Path(f"{comparisons}.damaged").read_bytes()
    assert restarted.next_item("ann")["id"] == "item1"  # the unfinished ranking was never acknowledged
    restarted.submit("ann", "item1", "0,1,2,3")  # the item id of ann's open serve is enough
    assert [r["item_id"] for r in lines(comparisons)] == ["item0", "item1"]


def test_a_damaged_line_before_good_ones_is_an_error_naming_the_line(samples, tmp_path):
    comparisons = tmp_path / "comparisons.jsonl"
    comparisons.write_text('{"a": 1}\nnot json\n{"b": 2}\n')
    with pytest.raises(JsonlError, match="line 2"):
        LabelStore(samples, comparisons)


def _submit_all(samples: str, comparisons: str, labeler: str, barrier) -> None:
    store = LabelStore(samples, comparisons)  # each process has its own leases: the file lock orders the writes
    barrier.wait()
    while (item := store.next_item(labeler)) is not None:
        try:
            store.submit(labeler, item["id"], "0,1,2,3", token=item["token"])
        except RankingRefused:
            store.release(labeler)  # another process wrote it first: it is not served here again


@pytest.mark.parametrize("gold", [True, False])
def test_processes_never_interleave_duplicate_or_exceed_a_quota(tmp_path, gold):
    # ~100 kB lines: without the lock, appends from two processes would interleave inside lines
    samples = write_samples(tmp_path / "samples.jsonl", 20, width=2000,
                            gold={i: [0, 1, 2, 3] for i in range(20)} if gold else None)
    comparisons = tmp_path / "comparisons.jsonl"
    context = multiprocessing.get_context("fork")
    labelers = ["ann", "ann", "bob"] if gold else ["ann", "bob", "carol"]
    barrier = context.Barrier(len(labelers) + 1)
    workers = [context.Process(target=_submit_all, args=(str(samples), str(comparisons), name, barrier))
               for name in labelers]
    for w in workers:
        w.start()
    barrier.wait()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    rows = lines(comparisons)  # every line is whole JSON
    pairs = [(r["labeler"], r["item_id"]) for r in rows]
    if gold:  # everyone ranks a gold item, once: two processes of ann never store one twice
        assert sorted(pairs) == sorted({(lab, f"item{i}") for lab in ("ann", "bob") for i in range(20)})
    else:  # one labeler per item, across processes too (the quota is checked under the file lock)
        assert sorted(r["item_id"] for r in rows) == sorted(f"item{i}" for i in range(20))


KILLED_WRITER = """
import sys
from rlhf_recipes.feedback.store import LabelStore
store = LabelStore(sys.argv[1], sys.argv[2])
while (item := store.next_item("ann")) is not None:
    store.submit("ann", item["id"], "0,1,2,3", token=item["token"])
    print(item["id"], flush=True)  # acknowledged
"""


def test_a_killed_writer_loses_no_acknowledged_ranking(tmp_path):
    samples = write_samples(tmp_path / "samples.jsonl", 400, width=50)
    comparisons = tmp_path / "comparisons.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(samples), str(comparisons)],
                             stdout=subprocess.PIPE, text=True, env=env)
    acknowledged = [child.stdout.readline().strip() for _ in range(30)]
    child.send_signal(signal.SIGKILL)
    acknowledged += [x.strip() for x in child.stdout.read().splitlines()]
    child.wait()
    store = LabelStore(samples, comparisons)
    stored = [r["item_id"] for r in store.comparisons.rows]
    assert len(stored) == len(set(stored))
    assert set(acknowledged) <= set(stored)
    assert len(store.remaining("ann")) == 400 - len(stored)


def test_pairwise_agreement_by_hand():
    assert pairwise_agreement([0, 1, 2], [0, 1, 2]) == 1.0
    assert pairwise_agreement([0, 1, 2], [2, 1, 0]) == 0.0
    assert pairwise_agreement([0, 1, 2], [1, 0, 2]) == pytest.approx(2 / 3)  # only (0, 1) flips
    assert pairwise_agreement([0, 1, 2, 3], [0, 1, 3, 2]) == pytest.approx(5 / 6)
    # ties: a pair one ranking ties and the other orders counts 1/2; tied by both counts 1
    assert pairwise_agreement([0, 1, 2], [0, 1, 2], None, [[1, 2]]) == pytest.approx((1 + 1 + 0.5) / 3)
    assert pairwise_agreement([0, 1, 2], [1, 0, 2], [[0, 1]], [[0, 1]]) == 1.0
    assert pairwise_agreement([0, 1, 2], [2, 1, 0], [[0, 1]]) == pytest.approx((0.5 + 0 + 0) / 3)


def test_overlap_gold_ties_and_stats(tmp_path):
    samples = write_samples(tmp_path / "samples.jsonl", 4, k=3, gold={3: [2, 1, 0]})
    comparisons = tmp_path / "comparisons.jsonl"
    store = LabelStore(samples, comparisons, overlap_fraction=1.0, overlap_labelers=2)

    def rank(labeler, item_id, indices, ties=None):  # sample-file indices -> indices as shown to the labeler
        item = store.next_item(labeler)
        assert item["id"] == item_id
        shown = store.shown_order(labeler, store.items[item_id])
        return store.submit(labeler, None, [shown.index(i) for i in indices],
                            {shown.index(0): ["harmful"]} if labeler == "bob" else None, token=item["token"],
                            ties=ties)

    rank("ann", "item0", [0, 1, 2])
    rank("bob", "item0", [1, 0, 2])  # agrees with ann on 2 of 3 pairs
    rank("ann", "item1", [0, 1, 2])
    row = rank("bob", "item1", [0, 1, 2], ties=[[1, 2]])  # ties what ann ordered: (1 + 1 + 1/2) / 3
    assert row["ties"] == [[1, 2]] and row["responses"] == list(store.items["item1"].responses)
    assert store.remaining("carol") == ["item2", "item3"]  # two is enough for item0 and item1
    assert store.next_item("carol")["id"] == "item2"
    store.skip("carol", "item2", "unclear prompt")
    rank("carol", "item3", [0, 1, 2])  # gold: wrong; everyone is served gold items
    rank("ann", "item2", [0, 1, 2])
    rank("ann", "item3", [2, 1, 0])  # gold: right
    rank("bob", "item2", [2, 1, 0])  # disagrees with ann on every pair
    rank("bob", "item3", [2, 0, 1])  # gold: 2 of 3 pairs
    # a row written by an older version without quotas: a third ranking of item0 is left out of the agreement
    with store.comparisons.locked():
        store.comparisons.append({"prompt": "Prompt 0:", "responses": list(store.items["item0"].responses),
                                  "labeler": "carol", "item_id": "item0", "flags": [[], [], []]})
    stats = label_stats(store)
    # planned overlap items only (item0-2; gold items are compared with their gold ranking, not with each other)
    assert stats["inter_labeler_agreement"] == pytest.approx((2 / 3 + 5 / 6 + 0) / 3)
    assert stats["agreement_by_pair"] == {"ann / bob": {"items": 3, "agreement": pytest.approx(1.5 / 3)}}
    assert stats["over_quota"] == 1 and stats["overlap_items"] == 3
    assert stats["labelers"]["ann"]["gold_agreement"] == 1.0
    assert stats["labelers"]["bob"]["gold_agreement"] == pytest.approx(2 / 3)
    assert stats["labelers"]["carol"] == {"ranked": 2, "skipped": 1, "left": 0, "gold_items": 1,
                                          "gold_agreement": 0.0, "agreement": None, "overlap_items": 0,
                                          "skip_reasons": {"unclear prompt": 1}}
    assert stats["labelers"]["ann"]["left"] == 0
    assert stats["flags"] == {"harmful": 4}
    assert stats["skip_reasons"] == {"unclear prompt": 1}
    assert "ann / bob" in stats_html(stats)
    mine = stats_html(stats, viewer="carol")  # a labeler sees their own row, no other name or skip reason
    assert "<td>carol</td>" in mine and "<td>ann" not in mine and "bob" not in mine and "unclear prompt" in mine
    assert "unclear prompt" not in stats_html(stats, viewer="ann")


def test_stats_escape_every_user_supplied_string(tmp_path):
    samples = write_samples(tmp_path / "samples.jsonl", 2)
    store = LabelStore(samples, tmp_path / "comparisons.jsonl")
    name = "<img src=http://x/y.png>|x|"
    rank_next(store, name)
    store.skip("bob", store.next_item("bob")["id"], "<script>alert(1)</script> ![](http://x/z.png)")
    page = stats_html(label_stats(store))
    assert "<img" not in page and "<script" not in page
    assert "&lt;img src=http://x/y.png&gt;|x|" in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_serving_reserves_an_item_under_a_lease(samples, tmp_path):
    store = LabelStore(samples, tmp_path / "comparisons.jsonl", lease_seconds=60)
    now = [1000.0]
    store.clock = lambda: now[0]
    ann = store.next_item("ann")
    assert store.next_item("ann") == {**ann, "lease_seconds": 60}  # asking again: the same serve
    assert store.next_item("bob")["id"] == "item1"  # item0 is reserved for ann
    now[0] += 30
    assert store.next_item("carol")["id"] == "item2"
    now[0] += 31  # ann's lease ran out: item0 goes back to the pool
    dave = store.next_item("dave")
    assert dave["id"] == "item0"
    with pytest.raises(RankingRefused, match="reservation of item item0 ran out and it went to another labeler"):
        store.submit("ann", None, "0,1,2,3", token=ann["token"])
    store.submit("dave", None, "0,1,2,3", token=dave["token"])
    with pytest.raises(RankingRefused, match="used once"):
        store.submit("dave", None, "0,1,2,3", token=dave["token"])
    # a late submit on an expired lease is still taken while nobody else holds the item
    bob = store.next_item("bob")
    now[0] += 61
    assert store.next_item("erin")["id"] == "item1"  # the expired lease of bob
    store.release("erin")  # erin changed name: item1 back in the pool
    assert store.submit("bob", None, "3,2,1,0", token=bob["token"])["item_id"] == "item1"
    assert store.remaining("ann") == ["item2", "item3", "item4"]
    # carol's lease on item2 ran out too: back in the pool
    assert store.next_item("ann")["id"] == "item2"
    assert len(lines(tmp_path / "comparisons.jsonl")) == 2
    # ann's lease runs out and she is served the same item again: either token ranks it, once
    now[0] += 61
    again = store.next_item("ann")
    assert again["id"] == "item2" and again["token"] != ann["token"]
    old = [t for t, (_, s) in store._closed.items() if s.labeler == "ann" and s.item_id == "item2"][0]
    store.submit("ann", None, "0,1,2,3", token=old)
    with pytest.raises(RankingRefused, match="used once"):
        store.submit("ann", None, "0,1,2,3", token=again["token"])
    assert store.open_serve("ann") is None and len(lines(tmp_path / "comparisons.jsonl")) == 3


def test_a_released_serve_is_refused_and_a_name_change_never_remaps(samples, tmp_path):
    store = LabelStore(samples, tmp_path / "comparisons.jsonl")
    item = store.next_item("ann")
    with pytest.raises(RankingRefused, match="served to another labeler name"):
        store.submit("ann smith", None, "0,1,2,3", token=item["token"])
    assert store.release("ann", item["token"])
    with pytest.raises(RankingRefused, match="was released"):
        store.submit("ann", None, "0,1,2,3", token=item["token"])
    assert not (tmp_path / "comparisons.jsonl").read_text()
    again = store.next_item("ann smith")  # starts over as that labeler, with their own shown order
    row = store.submit("ann smith", None, "0,1,2,3", token=again["token"])
    assert row["responses"] == again["responses"] and row["labeler"] == "ann smith"


def test_concurrent_labelers_in_threads_stay_within_quota(tmp_path):
    import threading

    samples = write_samples(tmp_path / "samples.jsonl", 60, gold={0: [0, 1, 2, 3], 1: [3, 2, 1, 0]})
    store = LabelStore(samples, tmp_path / "comparisons.jsonl", overlap_fraction=0.3, overlap_labelers=2)
    tokens: list[str] = []

    def work(name):
        while (item := store.next_item(name)) is not None:
            tokens.append(item["token"])
            store.submit(name, item["id"], "3,2,1,0", token=item["token"])

    threads = [threading.Thread(target=work, args=(f"labeler{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    rows = lines(tmp_path / "comparisons.jsonl")
    per_item: dict[str, list[str]] = {}
    for row in rows:
        per_item.setdefault(row["item_id"], []).append(row["labeler"])
    assert set(per_item) == set(store.items)
    for item_id, labelers in per_item.items():
        assert len(labelers) == len(set(labelers)) == min(store.wanted(store.items[item_id]), 4)
    assert len(tokens) == len(set(tokens)) == len(rows)
    stats = label_stats(store)
    assert stats["over_quota"] == 0
    overlap = sum(1 for item in store.items.values() if store.is_overlap(item))
    assert 0 < overlap < 58 and stats["overlapping_rankings"] == overlap


def test_the_simulated_labeler_ranks_through_the_store(tmp_path):
    from rlhf_recipes.demo.labeler import labeler_score, rank_responses
    from rlhf_recipes.feedback.simulated import label_all

    samples = tmp_path / "samples.jsonl"
    answers = [" great great great great great.", " I loved the acting and the music.", " The plot was dull.",
               " It was fine."]
    samples.write_text("".join(json.dumps({"id": f"r{i}", "prompt": "This western was", "responses": answers}) + "\n"
                               for i in range(3)))
    comparisons = tmp_path / "comparisons.jsonl"
    store = LabelStore(samples, comparisons)
    assert label_all(store, "simulated", rank_responses, limit=2) == 2
    assert label_all(store, "simulated", rank_responses) == 1  # a restart goes on where it stopped
    for row in lines(comparisons):
        scores = [labeler_score(row["prompt"], r) for r in row["responses"]]
        assert scores == sorted(scores, reverse=True) and row["labeler"] == "simulated"
    assert rank_responses("This western was", answers)[0] == 1


def test_store_rankings_join_the_demo_reward_split_and_load_as_rankings(tmp_path):
    from rlhf_recipes.data import load_raw_dataset
    from rlhf_recipes.demo.build import SIZES, add_rankings
    from rlhf_recipes.demo.labeler import rank_responses
    from rlhf_recipes.feedback.simulated import label_all

    samples = tmp_path / "samples.jsonl"
    answers = [" It was fine.", " The plot was dull.", " I loved the acting and the music."]
    samples.write_text("".join(json.dumps({"id": f"r{i}", "prompt": f"Western number {i} was", "responses": answers})
                               + "\n" for i in range(2)))
    comparisons = tmp_path / "comparisons.jsonl"
    label_all(LabelStore(samples, comparisons), "simulated", rank_responses)
    assert add_rankings(tmp_path / "demo", comparisons) == SIZES["reward"][0] + 2
    first = (tmp_path / "demo/data/reward/train.jsonl").read_text()
    assert add_rankings(tmp_path / "demo", comparisons) == SIZES["reward"][0] + 2  # a rerun writes the same file
    assert (tmp_path / "demo/data/reward/train.jsonl").read_text() == first
    train = load_raw_dataset(str(tmp_path / "demo/data/reward"))["train"]
    assert train.column_names == ["prompt", "responses"]
    assert train[-1] == {"prompt": "Western number 1 was", "responses": [answers[2], answers[0], answers[1]]}
    assert len(train[0]["responses"]) == 4  # the corpus rankings come first


def test_adding_rankings_refuses_a_missing_file_or_a_bad_row_by_its_line(tmp_path):
    from rlhf_recipes.data import DataError
    from rlhf_recipes.demo.build import add_rankings

    with pytest.raises(DataError, match="no such rankings file"):
        add_rankings(tmp_path / "demo", tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "responses": ["a", "b"]}) + "\n"
                   + json.dumps({"prompt": "p", "responses": ["only one"]}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl, line 2: a ranking needs"):
        add_rankings(tmp_path / "demo", bad)
    assert not (tmp_path / "demo/data/reward/train.jsonl").exists()  # nothing written
    done = subprocess.run([sys.executable, "-m", "rlhf_recipes.demo.build", "--output_dir", str(tmp_path / "demo"),
                           "--add_rankings", str(bad)], capture_output=True, text=True)
    assert done.returncode == 2 and "line 2" in done.stderr and "Traceback" not in done.stderr


# ------------------------------------------------------------------------------------------------------------------
# Edges of the store's rules, each found by a mutant that survived the tests above (tools/mutation.py).

def test_refusals_name_the_input_and_the_fix(samples, tmp_path):
    store = LabelStore(samples, tmp_path / "comparisons.jsonl")
    token = store.next_item("ann")["token"]
    refused = [  # (ranking, flags, ties, the refusal's start)
        ("a,b", None, None, "ranking 'a,b' must be answer numbers 0-3, best first (e.g. 3,2,1,0; "),
        ("0,1,2,3=", None, None, "ranking '0,1,2,3=' must be"),
        ("0==1,2,3", None, None, "ranking '0==1,2,3' must be"),
        ("3,1,0", None, None, "ranking [3, 1, 0] must order all 4 responses 0..3; missing [2]."),
        ("3,1,0,2,4", None, None, "ranking [3, 1, 0, 2, 4] must order all 4 responses 0..3; unknown [4]."),
        (list(range(13)), None, None,
         f"ranking {list(range(12))} must order all 4 responses 0..3; unknown [4, 5, 6, 7, 8]."),
        (list(range(19)), None, None, "a ranking is a list of at most 9 response indices, got [0, 1, 2, 3"),
        ([0, 1, 2, "3"], None, None, "ranking [0, 1, 2, '3'] must hold response indices (integers)."),
        ([True, 0, 2, 3], None, None, "ranking [True, 0, 2, 3] must hold response indices"),  # a bool is no index
        ("0=1,2,3", None, [[0, 1]], "give ties either with '=' in the ranking string or as a list, not both."),
        ("0,1,2,3", '{"0": ["rude"]}', None, "unknown flag(s) ['rude']; use ['harmful', "),
        ("0,1,2,3", '{"x": ["harmful"]}', None, "flag key 'x' is not a response index."),
        ("0,1,2,3", '{"4": ["harmful"]}', None, "flag key 4 is not a response index 0..3."),
        ("0,1,2,3", "{bad", None, "flags '{bad' must be JSON like"),
        ("0,1,2,3", "[1]", None, 'flags must be a JSON object {"<response index>"'),
    ]
    for ranking, flags, ties, message in refused:
        with pytest.raises(RankingRefused) as err:
            store.submit("ann", None, ranking, flags, token=token, ties=ties)
        assert str(err.value).startswith(message), (ranking, flags, str(err.value))
    assert str(_refusal(store.submit, "ann", "nope", "0,1,2,3")).startswith("unknown item 'nope'; ask /next_item")
    # a refused input is echoed up to 40 characters of its repr, then cut
    assert str(_refusal(store.submit, "ann", "x" * 38, "0,1,2,3")).startswith(f"unknown item {'x' * 38!r}; ask")
    assert str(_refusal(store.submit, "ann", "x" * 39, "0,1,2,3")).startswith(
        "unknown item '" + "x" * 39 + "... (41 characters); ask")
    assert len(str(_refusal(store.submit, "ann", "x" * 10**5, "0,1,2,3"))) < 120
    assert str(_refusal(store.submit, "ann", "item1", "0,1,2,3", token=token)).startswith(
        "the serve token is for item item0, not 'item1'.")
    assert not (tmp_path / "comparisons.jsonl").read_text()
    # what is accepted at the edges: a list within the cap reaches the order check, empty flags, a single flag name,
    # the item id "" beside a token, a ranking of exactly 64 characters
    assert "must order all" in str(_refusal(store.submit, "ann", None, list(range(18)), token=token))
    long = "3,2,1," + " " * 57 + "0"
    assert len(long) == 64
    for flags in ("", "  ", "{}"):
        assert parse_flags(flags, 4) == {}
    assert parse_flags('{"2": "harmful"}', 4) == {2: ["harmful"]}
    padded = '{"0": ["harmful"]' + " " * 1982 + "}"
    assert len(padded) == 2000 and parse_flags(padded, 4) == {0: ["harmful"]}
    assert str(_refusal(parse_flags, padded + " ", 4)) == "flags are 2001 characters; at most 2000."
    row = store.submit("ann", "", long, '{"3": "harmful"}', token=token)
    assert row["flags"] == [["harmful"], [], [], []]  # shown answer 3 is ranked first


def _refusal(call, *args, **kwargs) -> RankingRefused:
    with pytest.raises(RankingRefused) as err:
        call(*args, **kwargs)
    return err.value


def test_the_app_order_box_reads_one_based_digits():
    assert read_order("3142", 4, one_based=True) == ([2, 0, 3, 1], [])
    assert read_order("4=3, 2=1", 4, one_based=True) == ([3, 2, 1, 0], [[0, 1], [2, 3]])
    assert read_order("1=2=3,4", 4, one_based=True) == ([0, 1, 2, 3], [[0, 1, 2]])
    assert str(_refusal(read_order, "x", 4, one_based=True)).startswith(
        "ranking 'x' must be answer numbers 1-4, best first (e.g. 4,3,2,1; ")
    assert read_order("3,2,1,0", 4, one_based=False) == ([3, 2, 1, 0], [])
    assert read_order("0,1,2,3" + " " * 57, 4, one_based=False)[0] == [0, 1, 2, 3]  # 64 characters
    assert "65 characters" in str(_refusal(read_order, "0,1,2,3" + " " * 58, 4, one_based=False))


def test_names_and_skip_reasons_at_their_limits():
    assert check_name("x" * 64) == "x" * 64
    assert check_name(" " * 250 + "ann" + " " * 3) == "ann"  # 256 characters before the spaces go
    assert "293 characters" in str(_refusal(check_name, " " * 290 + "ann"))  # refused unread beyond 4 x 64
    assert str(_refusal(check_name, 5)) == "the labeler name must be text."
    assert str(_refusal(check_name, "a\u202eb\u200b")).endswith("not U+202E, U+200B.")
    assert check_reason("x" * 500) == "x" * 500
    assert str(_refusal(check_reason, "x" * 501)) == "the skip reason is 501 characters; say it in at most 500."
    assert str(_refusal(check_reason, "a\x1bb")) == "the skip reason may hold printable characters only."
    assert str(_refusal(check_reason, None)) == "the skip reason must be text."


@pytest.mark.parametrize("rows,message", [
    ([{"id": 1, "prompt": "p", "responses": ["a", "b"]}, {"id": 2, "responses": ["a", "b"]}],
     r"row 2: missing \['prompt'\]; a samples row needs id, prompt and responses"),
    ([{"id": 1, "prompt": "p", "responses": "ab"}], "row 1: 'responses' must be a list of strings"),
    ([{"id": i, "prompt": "p", "responses": ["a", "b"]} for i in range(2)]
     + [{"id": 3, "prompt": "p", "responses": ["a"]}],
     r"row 3: needs 2 to 9 distinct responses, got 1 \(1 distinct\)"),
    ([{"id": 1, "prompt": "p", "responses": ["a", "b", "a"]}],
     r"row 1: needs 2 to 9 distinct responses, got 3 \(2 distinct\)"),
    ([{"id": 1, "prompt": "p", "responses": [str(i) for i in range(10)]}], "needs 2 to 9 distinct responses, got 10"),
    ([{"id": 1, "prompt": "p", "responses": ["a", "b", "c"], "gold": [0, 1]}],
     r"row 1: 'gold' must order all response indices 0\.\.2\."),
    ([{"id": 1, "prompt": "p", "responses": ["a", "b"]}, {"id": "1", "prompt": "q", "responses": ["a", "b"]}],
     "row 2: duplicate id '1'"),
])
def test_a_bad_samples_file_is_refused_by_its_row(tmp_path, rows, message):
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=f"samples.jsonl, {message}" if message.startswith("row") else message):
        load_items(path)


def test_samples_file_edges_and_store_settings(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text(json.dumps({"id": "two", "prompt": "p", "responses": ["a", "b"]}) + "\n"
                    + json.dumps({"id": "nine", "prompt": "p", "responses": list("abcdefghi")}) + "\n")
    assert [len(i.responses) for i in load_items(path).values()] == [2, 9]  # both ends of 2..9
    with pytest.raises(MissingPathError, match="`samples_file` = .*missing.jsonl does not exist; write it with "
                       r"recipes/sample.py \(`make sample`\), or point --samples_file at its output"):
        load_items(tmp_path / "missing.jsonl")
    for kwargs, message in [({"overlap_fraction": 1.5}, r"overlap_fraction must be in \[0, 1\], got 1.5"),
                            ({"overlap_labelers": 1}, "overlap_labelers must be at least 2"),
                            ({"lease_seconds": 0}, "lease_seconds must be > 0, got 0")]:
        with pytest.raises(ConfigError, match=message):
            LabelStore(path, tmp_path / "c.jsonl", **kwargs)
    assert LabelStore(path, tmp_path / "c.jsonl", lease_seconds=0.5).lease_seconds == 0.5
    # the defaults: an overlap item wants two labelers, and the shown order is seed 0's
    samples = write_samples(tmp_path / "s4.jsonl", 4)
    store = LabelStore(samples, tmp_path / "c.jsonl", overlap_fraction=1.0)
    assert [store.wanted(i) for i in store.items.values()] == [2] * 4
    seeded = LabelStore(samples, tmp_path / "c.jsonl", seed=0)
    assert all(store.shown_order(n, i) == seeded.shown_order(n, i)
               for n in ("ann", "bob") for i in store.items.values())
    assert any(store.shown_order("ann", i) != LabelStore(samples, tmp_path / "c.jsonl", seed=1).shown_order("ann", i)
               for i in store.items.values())


def test_the_overlap_set_is_a_fixed_hash_of_seed_and_id(tmp_path):
    # label_stats later recomputes which rows were planned overlap from this hash: it must not change between
    # versions, or the agreement of an existing comparisons file is measured on other items
    samples = write_samples(tmp_path / "samples.jsonl", 40)

    def unit(*parts):
        return int.from_bytes(hashlib.sha256("\x1f".join(parts).encode()).digest()[:8], "big") / 2**64

    for seed in (0, 7):
        store = LabelStore(samples, tmp_path / "c.jsonl", overlap_fraction=0.4, seed=seed)
        chosen = {i for i, item in store.items.items() if store.is_overlap(item)}
        assert chosen == {f"item{n}" for n in range(40) if unit(str(seed), "overlap", f"item{n}") < 0.4}
        assert 8 <= len(chosen) <= 24


def test_gold_items_go_to_every_labeler(tmp_path):
    samples = write_samples(tmp_path / "samples.jsonl", 1, gold={0: [0, 1, 2, 3]})
    comparisons = tmp_path / "comparisons.jsonl"
    row = {"prompt": "Prompt 0:", "responses": ["a", "b", "c", "d"], "item_id": "item0"}
    comparisons.write_text("".join(json.dumps({**row, "labeler": f"labeler{i}"}) + "\n" for i in range(100)))
    store = LabelStore(samples, comparisons)
    assert store.next_item("newcomer")["id"] == "item0"  # a hundred rankings do not fill a gold item
    assert store.next_item("labeler7") is None


def test_a_lease_ends_at_its_expiry_time_exactly(samples, tmp_path):
    store = LabelStore(samples, tmp_path / "comparisons.jsonl", lease_seconds=60)
    now = [1000.0]
    store.clock = lambda: now[0]
    ann = store.next_item("ann")
    now[0] = 1060.0
    assert store.open_serve("ann") is None
    bob = store.next_item("bob")  # ann's lease ends now: item0 goes to bob
    assert bob["id"] == "item0"
    now[0] = 1120.0  # bob's lease ends now too: ann's late ranking is taken
    assert store.submit("ann", None, "0,1,2,3", token=ann["token"])["item_id"] == "item0"


def test_a_late_ranking_counts_only_open_leases_on_its_own_item(tmp_path):
    samples = write_samples(tmp_path / "samples.jsonl", 3)
    store = LabelStore(samples, tmp_path / "comparisons.jsonl", lease_seconds=60, overlap_fraction=1.0)
    now = [1000.0]
    store.clock = lambda: now[0]
    ann = store.next_item("ann")
    now[0] += 30
    assert [store.next_item(n)["id"] for n in ("bob", "carol", "erin")] == ["item0", "item1", "item1"]
    now[0] += 31
    assert store.next_item("dave")["id"] == "item0"  # ann's lease ran out: her place on item0 goes to dave
    # two open leases on item0 (bob, dave) fill its two places: ann's late ranking is refused ...
    assert "ran out" in str(_refusal(store.submit, "ann", None, "0,1,2,3", token=ann["token"]))
    store.release("dave")
    # ... one open lease leaves one place (the two on item1 are not item0's)
    assert store.submit("ann", None, "0,1,2,3", token=ann["token"])["labeler"] == "ann"


def test_a_late_ranking_by_item_id_uses_the_labelers_own_expired_serve(samples, tmp_path):
    store = LabelStore(samples, tmp_path / "comparisons.jsonl", lease_seconds=60)
    now = [1000.0]
    store.clock = lambda: now[0]
    store.next_item("ann")  # item0
    store.next_item("bob")  # item1
    now[0] += 61
    assert store.next_item("carol")["id"] == "item0"  # expires ann's and bob's leases
    store.release("carol")
    # bob's expired serve is not ann's, and ann's serve of item0 is not one of item1
    assert "item item1 is not served to 'ann'" in str(_refusal(store.submit, "ann", "item1", "0,1,2,3"))
    assert "not served to 'dave'" in str(_refusal(store.submit, "dave", "item0", "0,1,2,3"))
    row = store.submit("ann", "item0", "0,1,2,3")
    assert row["item_id"] == "item0" and row["labeler"] == "ann"
    # the serve is used now: by item id it is not served to ann any more
    assert "item item0 is not served to 'ann'" in str(_refusal(store.submit, "ann", "item0", "3,2,1,0"))


def test_an_expired_serve_of_an_item_done_with_another_token_is_refused(samples, tmp_path):
    store = LabelStore(samples, tmp_path / "comparisons.jsonl", lease_seconds=60)
    now = [1000.0]
    store.clock = lambda: now[0]
    store.next_item("ann")
    now[0] += 61
    again = store.next_item("ann")  # the old lease expired; the same item again under a new token
    store.skip("ann", None, "unclear prompt", token=again["token"])
    assert "not served to 'ann'" in str(_refusal(store.submit, "ann", "item0", "0,1,2,3"))
    assert not (tmp_path / "comparisons.jsonl").read_text()


def test_serve_tokens_are_checked_before_anything_is_written(samples, tmp_path):
    store = LabelStore(samples, tmp_path / "comparisons.jsonl")
    store.next_item("ann")
    for token, message in [("t" * 65, "not a serve token; use the token /next_item returned."),
                           ("t" * 64, "unknown serve token (the app may have restarted); ask /next_item again.")]:
        assert str(_refusal(store.submit, "ann", None, "0,1,2,3", token=token)) == message
    assert not (tmp_path / "comparisons.jsonl").read_text()


def test_release_gives_back_only_the_labelers_own_serve(samples, tmp_path):
    store = LabelStore(samples, tmp_path / "comparisons.jsonl")
    ann = store.next_item("ann")
    assert store.release("bob") is False  # bob holds nothing: ann's serve stays
    assert store.release("ann", "another-token") is False
    assert store.open_serve("ann").token == ann["token"]


def test_two_stores_on_one_file_refuse_what_the_other_stored(samples, tmp_path):
    comparisons = tmp_path / "comparisons.jsonl"
    first, second = LabelStore(samples, comparisons), LabelStore(samples, comparisons)  # e.g. two app processes
    held = first.next_item("ann")
    other = second.next_item("ann")
    assert held["id"] == other["id"] == "item0"
    second.skip("ann", None, "unclear prompt", token=other["token"])
    assert str(_refusal(first.submit, "ann", None, "0,1,2,3", token=held["token"])) == (
        "ann already ranked or skipped item item0; it is stored once.")
    first.release("ann")
    held, other = first.next_item("ann"), second.next_item("ann")
    second.submit("ann", None, "0,1,2,3", token=other["token"])
    assert str(_refusal(first.skip, "ann", None, "unclear", token=held["token"])) == (
        "ann already ranked or skipped item item1.")
    # an item that already has its one ranking: another labeler's open serve of it is refused at submit
    bob = first.next_item("bob")
    assert bob["id"] == "item0"  # skipped by ann, not ranked
    carol = second.next_item("carol")  # the second store does not know bob's lease
    assert carol["id"] == "item0"
    second.submit("carol", None, "0,1,2,3", token=carol["token"])
    assert str(_refusal(first.submit, "bob", None, "0,1,2,3", token=bob["token"])).startswith(
        "item item0 already has the 1 ranking(s) it needs; nothing was saved.")
    assert [(r["labeler"], r["item_id"]) for r in lines(comparisons)] == [("ann", "item1"), ("carol", "item0")]


def test_stored_rows_carry_their_utc_time(samples, tmp_path, monkeypatch):
    monkeypatch.setenv("TZ", "EST+05")  # local time is not UTC
    time.tzset()
    try:
        store = LabelStore(samples, tmp_path / "comparisons.jsonl")
        before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0, tzinfo=None)
        rows = [rank_next(store, "ann"), store.skip("ann", store.next_item("ann")["id"], "unclear")]
        after = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    finally:
        monkeypatch.undo()
        time.tzset()
    for row in rows:
        assert before <= datetime.datetime.strptime(row["time"], "%Y-%m-%dT%H:%M:%SZ") <= after


def test_a_chat_ranking_is_stored_once_in_the_reward_format(tmp_path):
    samples = write_samples(tmp_path / "samples.jsonl", 1)
    comparisons = tmp_path / "comparisons.jsonl"
    store = LabelStore(samples, comparisons)
    answers = ["first", "second", "third"]
    row = store.submit_conversation(" ann ", "User: hi", answers, "2,0=1", flags={"1": ["harmful"]})
    item_id = "chat-" + hashlib.sha256(json.dumps(["User: hi", answers]).encode()).hexdigest()[:16]
    assert {k: v for k, v in row.items() if k != "time"} == {
        "prompt": "User: hi", "responses": ["third", "first", "second"], "ties": [[1, 2]], "labeler": "ann",
        "item_id": item_id, "flags": [[], [], ["harmful"]], "shown_order": [0, 1, 2]}
    datetime.datetime.strptime(row["time"], "%Y-%m-%dT%H:%M:%SZ")
    assert lines(comparisons) == [row]
    other = store.submit_conversation("ann", "User: hi", answers[:2], [1, 0], ties=None, source="web")
    assert other["item_id"].startswith("web-") and other["item_id"][4:] != item_id[5:]
    assert store.submit_conversation("bob", "User: hi", answers, [0, 1, 2], ties=[[0, 1]])["ties"] == [[0, 1]]
    assert str(_refusal(store.submit_conversation, "ann", "User: hi", answers, "0,1,2")) == (
        "ann already ranked these answers.")
    nine = [str(i) for i in range(9)]
    assert store.submit_conversation("ann", "p", nine, list(range(9)))["responses"] == nine  # both ends of 2..9
    assert store.submit_conversation("ann", "p", nine[:2], "1,0")["responses"] == ["1", "0"]
    for prompt, responses, message in [("  ", answers, "empty prompt."),
                                       ("p", ["a"], "need 2 to 9 distinct responses to rank."),
                                       ("p", [str(i) for i in range(10)], "need 2 to 9 distinct responses"),
                                       ("p", ["a", "b", "a"], "need 2 to 9 distinct responses")]:
        assert str(_refusal(store.submit_conversation, "ann", prompt, responses, "0,1")).startswith(message)
    assert "empty labeler" in str(_refusal(store.submit_conversation, " ", "p", answers, "0,1,2"))
    assert "missing [2]" in str(_refusal(store.submit_conversation, "ann", "q", answers, "0,1"))
    assert "not a response index 0..2" in str(_refusal(store.submit_conversation, "ann", "q", answers, "0,1,2",
                                                       flags='{"3": ["harmful"]}'))
    assert len(lines(comparisons)) == 5


def test_every_refused_serve_names_the_item_and_the_fix(samples, tmp_path):
    store = LabelStore(samples, tmp_path / "comparisons.jsonl", lease_seconds=60)
    now = [1000.0]
    store.clock = lambda: now[0]
    ann = store.next_item("ann")
    refusals = [_refusal(store.submit, "bob", None, "0,1,2,3", token=ann["token"]),  # another labeler's token
                _refusal(store.submit, "ann", "item3", "0,1,2,3")]  # not served to ann
    store.release("ann")
    refusals.append(_refusal(store.submit, "ann", None, "0,1,2,3", token=ann["token"]))  # released
    ann = store.next_item("ann")
    store.submit("ann", None, "0,1,2,3", token=ann["token"])
    refusals.append(_refusal(store.submit, "ann", None, "0,1,2,3", token=ann["token"]))  # used
    bob = store.next_item("bob")
    now[0] += 61
    store.next_item("carol")  # takes item1 from bob's expired lease
    refusals.append(_refusal(store.submit, "bob", None, "0,1,2,3", token=bob["token"]))  # ran out
    for refused, item in zip(refusals, ["item0", "item3", "item0", "item0", "item1"]):
        assert f"item {item} " in str(refused) and "/next_item" in str(refused), str(refused)
    assert "60 s reservation" in str(refusals[-1])
