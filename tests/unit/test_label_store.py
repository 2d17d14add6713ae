"""The label store without a browser: serving, append, refusals, restart, crashes, two writers, quotas under
concurrency, leases, ties, agreement statistics."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_recipes.feedback.jsonl import JsonlError
from rlhf_recipes.feedback.stats import label_stats, pairwise_agreement, stats_html
from rlhf_recipes.feedback.store import LabelStore, RankingRefused, check_name

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
