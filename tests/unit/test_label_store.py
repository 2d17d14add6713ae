"""The label store without a browser: append, refusals, restart, crashes, two writers, agreement statistics."""

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
from rlhf_recipes.feedback.stats import label_stats, pairwise_agreement, stats_markdown
from rlhf_recipes.feedback.store import LabelStore, RankingRefused

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


def test_submit_stores_the_ranking_best_first_in_the_reward_format(samples, tmp_path):
    comparisons = tmp_path / "comparisons.jsonl"
    store = LabelStore(samples, comparisons)
    item = store.next_item("ann")
    assert item["id"] == "item0" and sorted(item["responses"]) == sorted(store.items["item0"].responses)
    row = store.submit("ann", "item0", "3,1,0,2", json.dumps({"1": ["untruthful"]}))
    shown = item["responses"]
    assert row["responses"] == [shown[3], shown[1], shown[0], shown[2]]
    assert row["flags"] == [[], ["untruthful"], [], []]  # aligned with the stored order
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
    ("ann", "item0", "a,b", "", "indices"),
    ("ann", "nope", "0,1,2,3", "", "unknown item"),
    ("  ", "item0", "0,1,2,3", "", "empty labeler"),
    ("ann", "item0", "0,1,2,3", '{"0": ["rude"]}', "unknown flag"),
    ("ann", "item0", "0,1,2,3", '{"7": ["harmful"]}', "not a response index"),
])
def test_bad_submissions_are_refused_and_write_nothing(samples, tmp_path, labeler, item_id, ranking, flags, message):
    comparisons = tmp_path / "comparisons.jsonl"
    store = LabelStore(samples, comparisons)
    with pytest.raises(RankingRefused, match=message):
        store.submit(labeler, item_id, ranking, flags)
    assert comparisons.read_text() == ""


def test_restart_serves_nothing_twice_and_refuses_a_second_ranking(samples, tmp_path):
    comparisons = tmp_path / "comparisons.jsonl"
    store = LabelStore(samples, comparisons)
    store.submit("ann", "item0", "0,1,2,3")
    store.skip("ann", "item1", "unclear prompt")
    restarted = LabelStore(samples, comparisons)
    assert restarted.next_item("ann")["id"] == "item2"
    assert restarted.remaining("ann") == ["item2", "item3", "item4"]
    with pytest.raises(RankingRefused, match="already ranked"):
        restarted.submit("ann", "item0", "3,2,1,0")
    assert len(lines(comparisons)) == 1
    # without overlap an item ranked by ann is not served to bob either
    assert restarted.next_item("bob")["id"] == "item1"


def test_damaged_last_line_is_set_aside_with_a_warning(samples, tmp_path, caplog):
    comparisons = tmp_path / "comparisons.jsonl"
    store = LabelStore(samples, comparisons)
    store.submit("ann", "item0", "0,1,2,3")
    good = comparisons.read_bytes()
    with open(comparisons, "ab") as handle:  # a writer that died inside write()
        handle.write(b'{"prompt": "Prompt 1:", "responses": [" ans')
    with caplog.at_level(logging.WARNING):
        restarted = LabelStore(samples, comparisons)
    assert "damaged" in caplog.text
    assert comparisons.read_bytes() == good
    assert b'"responses": [" ans' in Path(f"{comparisons}.damaged").read_bytes()
    assert restarted.next_item("ann")["id"] == "item1"  # the unfinished ranking was never acknowledged
    restarted.submit("ann", "item1", "0,1,2,3")
    assert [r["item_id"] for r in lines(comparisons)] == ["item0", "item1"]


def test_a_damaged_line_before_good_ones_is_an_error_naming_the_line(samples, tmp_path):
    comparisons = tmp_path / "comparisons.jsonl"
    comparisons.write_text('{"a": 1}\nnot json\n{"b": 2}\n')
    with pytest.raises(JsonlError, match="line 2"):
        LabelStore(samples, comparisons)


def _submit_all(samples: str, comparisons: str, labeler: str, barrier) -> None:
    store = LabelStore(samples, comparisons)
    barrier.wait()
    for item_id in list(store.items):
        try:
            store.submit(labeler, item_id, "0,1,2,3")
        except RankingRefused:
            pass


def test_two_processes_never_interleave_or_duplicate(tmp_path):
    # ~100 kB lines: without the lock, appends from two processes would interleave inside lines
    samples = write_samples(tmp_path / "samples.jsonl", 20, width=2000)
    comparisons = tmp_path / "comparisons.jsonl"
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(4)
    workers = [context.Process(target=_submit_all, args=(str(samples), str(comparisons), "ann", barrier)),
               context.Process(target=_submit_all, args=(str(samples), str(comparisons), "ann", barrier)),
               context.Process(target=_submit_all, args=(str(samples), str(comparisons), "bob", barrier))]
    for w in workers:
        w.start()
    barrier.wait()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    rows = lines(comparisons)  # every line is whole JSON
    pairs = [(r["labeler"], r["item_id"]) for r in rows]
    assert sorted(pairs) == sorted({(lab, f"item{i}") for lab in ("ann", "bob") for i in range(20)})


KILLED_WRITER = """
import sys
from rlhf_recipes.feedback.store import LabelStore
store = LabelStore(sys.argv[1], sys.argv[2])
while (item := store.next_item("ann")) is not None:
    store.submit("ann", item["id"], "0,1,2,3")
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


def test_overlap_gold_and_stats(tmp_path):
    samples = write_samples(tmp_path / "samples.jsonl", 4, k=3, gold={3: [2, 1, 0]})
    comparisons = tmp_path / "comparisons.jsonl"
    store = LabelStore(samples, comparisons, overlap_fraction=1.0, overlap_labelers=2)

    def rank(labeler, item_id, indices):  # indices into the sample file -> indices as shown to the labeler
        shown = store.shown_order(labeler, store.items[item_id])
        store.submit(labeler, item_id, [shown.index(i) for i in indices],
                     {shown.index(0): ["harmful"]} if labeler == "bob" else None)

    rank("ann", "item0", [0, 1, 2])
    rank("bob", "item0", [1, 0, 2])  # agrees with ann on 2 of 3 pairs
    rank("ann", "item1", [0, 1, 2])
    rank("bob", "item1", [0, 1, 2])  # agrees on all 3
    assert "item0" not in store.remaining("carol") and "item1" not in store.remaining("carol")  # two is enough
    rank("ann", "item3", [2, 1, 0])  # gold: right
    rank("bob", "item3", [2, 0, 1])  # gold: 2 of 3 pairs
    rank("carol", "item3", [0, 1, 2])  # gold: wrong; everyone is served gold items
    store.skip("carol", "item2", "unclear prompt")
    stats = label_stats(store)
    assert stats["inter_labeler_agreement"] == pytest.approx((2 / 3 + 1 + 2 / 3 + 0 + 1 / 3) / 5)
    assert stats["agreement_by_pair"]["ann / bob"] == {"items": 3, "agreement": pytest.approx((2 / 3 + 1 + 2 / 3) / 3)}
    assert stats["labelers"]["ann"]["gold_agreement"] == 1.0
    assert stats["labelers"]["bob"]["gold_agreement"] == pytest.approx(2 / 3)
    assert stats["labelers"]["carol"] == {"ranked": 1, "skipped": 1, "left": 0, "gold_items": 1,
                                          "gold_agreement": 0.0}
    assert stats["labelers"]["ann"]["left"] == 1  # item2: carol skipped it, nobody ranked it
    assert stats["flags"] == {"harmful": 3}
    assert stats["skip_reasons"] == {"unclear prompt": 1}
    assert "ann / bob" in stats_markdown(stats)


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
