"""The dpo stage of the loader: rankings become the pairs `ranking_pairs` picks (ties left out), pairs and HH
conversations pass as the reward model reads them, and DPO's tokenisation is the one PPO samples and the RM scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gpt2_like import gpt2_like_tokenizer

from rlhf_recipes.config import ScriptArguments
from rlhf_recipes.data import DataError, encode_text, load_stage_dataset
from rlhf_recipes.dpo import DPOConfig, encode_preference

RANKING = {"prompt": "The film", "responses": [" was great.", " was fine.", " was dull.", " was awful."]}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def dpo_pairs(path: Path, selection: str = "all", **overrides) -> list[tuple[str, str, str]]:
    dataset, reports = load_stage_dataset(ScriptArguments(dataset_name=str(path), **overrides), "dpo",
                                          pair_selection=selection)
    assert reports[0].pairs == len(dataset["train"]) + len(dataset.get("test", []))
    return [(r["prompt"], r["chosen"], r["rejected"]) for r in dataset["train"]]


@pytest.mark.parametrize("selection, expected", [
    ("all", [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]),
    ("best_vs_rest", [(0, 1), (0, 2), (0, 3)]),
    ("best_vs_worst", [(0, 3)]),
])
def test_a_ranking_becomes_the_pairs_the_selection_names(tmp_path, selection, expected):
    path = write_jsonl(tmp_path / "r.jsonl", [RANKING])
    responses = RANKING["responses"]
    assert dpo_pairs(path, selection) == [("The film", responses[w], responses[lose]) for w, lose in expected]


def test_tied_responses_are_never_paired_and_a_bad_tie_list_names_the_row(tmp_path):
    tied = {**RANKING, "ties": [[1, 2]]}  # 2nd and 3rd as good as each other
    path = write_jsonl(tmp_path / "t.jsonl", [tied])
    responses = RANKING["responses"]
    got = dpo_pairs(path)
    assert (" was fine.", " was dull.") not in [(c, r) for _, c, r in got]
    assert len(got) == 5 and ("The film", responses[1], responses[3]) in got
    bad = write_jsonl(tmp_path / "bad.jsonl", [RANKING, {**RANKING, "ties": [[0, 2]]}])
    with pytest.raises(DataError, match=r"row 2: a tie group holds adjacent positions only"):
        load_stage_dataset(ScriptArguments(dataset_name=str(bad), invalid_rows="error"), "dpo")


def test_pairs_and_hh_conversations_pass_through_and_a_held_out_ranking_stays_whole(tmp_path):
    pairs = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Hi", "chosen": " Hello.", "rejected": " Go."}])
    assert dpo_pairs(pairs) == [("Hi", " Hello.", " Go.")]
    hh = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": "\n\nHuman: Hi\n\nAssistant: Hello.",
                                              "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."}])
    assert dpo_pairs(hh) == [("\n\nHuman: Hi\n\nAssistant:", " Hello.", " Go away.")]
    rankings = [{"prompt": f"Opening {i}", "responses": RANKING["responses"]} for i in range(10)]
    path = write_jsonl(tmp_path / "many.jsonl", rankings)
    dataset, _ = load_stage_dataset(ScriptArguments(dataset_name=str(path), eval_split_size=0.3), "dpo",
                                    pair_selection="all")
    train, test = set(dataset["train"]["prompt"]), set(dataset["test"]["prompt"])
    assert not train & test and len(dataset["test"]) == 6 * len(test) == 18  # split by ranking, then expanded


def test_conversational_pairs_render_with_the_hh_template(tmp_path):
    row = {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello."}],
           "rejected": [{"role": "assistant", "content": "Go."}]}
    path = write_jsonl(tmp_path / "c.jsonl", [row])
    assert dpo_pairs(path) == [("\n\nHuman: Hi\n\nAssistant:", " Hello.", " Go.")]


def test_encode_preference_is_the_prompt_alone_then_each_response_with_one_eos():
    tokenizer = gpt2_like_tokenizer()
    eos = tokenizer.eos_token_id
    encoded = encode_preference(tokenizer, "The film", " was great.", " was awful." + tokenizer.eos_token)
    assert encoded["prompt_ids"] == encode_text(tokenizer, "The film")
    assert encoded["chosen_ids"] == tokenizer(" was great.", add_special_tokens=False)["input_ids"] + [eos]
    assert encoded["rejected_ids"] == tokenizer(" was awful.", add_special_tokens=False)["input_ids"] + [eos]


def test_dpo_config_refuses_an_unknown_pair_selection_and_a_non_positive_beta(tmp_path):
    with pytest.raises(ValueError, match="ranking_pairs must be one of"):
        DPOConfig(output_dir=str(tmp_path), ranking_pairs="pairs", bf16=False, activation_checkpointing=False)
    with pytest.raises(ValueError, match="beta must be > 0"):
        DPOConfig(output_dir=str(tmp_path), beta=0.0, bf16=False, activation_checkpointing=False)
