"""recipes/chat.py: lines from stdin, one reply each, clean exit on /exit or EOF, history within the context."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def chat(demo_dir, text: str, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / "recipes/chat.py"), "--model_name_or_path",
                           str(demo_dir / "base"), "--max_new_tokens", "8", *extra],
                          input=text, capture_output=True, text=True, env=env, timeout=120)


def test_chat_answers_each_line_and_stops_at_exit_or_eof(demo_dir):
    done = chat(demo_dir, "I watched this western last night\n\nand the acting was\n/exit\nnever read\n")
    assert done.returncode == 0, done.stderr
    replies = [line for line in done.stdout.splitlines() if line.startswith("bot> ")]
    assert len(replies) == 2  # the empty line is ignored; nothing after /exit is read


def test_chat_ends_at_eof(demo_dir):
    import io

    from conftest import load_recipe

    from rlhf_recipes.config import parse_recipe_args

    module = load_recipe("chat")
    out = io.StringIO()
    args = parse_recipe_args(module.DATACLASSES, ["--model_name_or_path", str(demo_dir / "base"),
                                                  "--max_new_tokens", "8"])
    messages = module.main(*args, stdin=io.StringIO("This comedy was\nThe acting"), stdout=out)  # no final newline
    assert out.getvalue().count("bot> ") == 2
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]


def test_history_is_cut_to_the_context(demo_dir):
    from rlhf_recipes.feedback.chat import load_chat_policy

    policy = load_chat_policy(str(demo_dir / "base"), max_new_tokens=8)
    turns = [{"role": r, "content": f"turn {i} " + "the film was good " * 10}
             for i, r in zip(range(40), ["user", "assistant"] * 20)]
    prompt = policy.render(turns)
    assert len(policy.tokenizer(prompt, add_special_tokens=False)["input_ids"]) <= policy.context - 8
    assert "turn 39" in prompt and "turn 0 " not in prompt  # the oldest turns go first
    assert prompt.endswith("\n\nAssistant:")


def test_chat_candidates_are_ranked_into_the_label_store(demo_dir, tmp_path):
    """The app's Chat tab: K distinct candidate replies, the ranking stored like any other."""
    import json

    from rlhf_recipes.feedback.chat import load_chat_policy
    from rlhf_recipes.feedback.store import LabelStore

    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps({"id": "x", "prompt": "p", "responses": ["a", "b"]}) + "\n")
    store = LabelStore(samples, tmp_path / "comparisons.jsonl")
    policy = load_chat_policy(str(demo_dir / "base"), max_new_tokens=8, temperature=1.0, top_p=1.0)
    messages = [{"role": "user", "content": "I watched this western last night"}]
    replies = policy.replies(messages, k=3)
    assert 2 <= len(replies) <= 3 and len(set(replies)) == len(replies)
    row = store.submit_conversation("ann", policy.render(messages), replies, list(range(len(replies)))[::-1])
    assert row["responses"] == replies[::-1] and row["item_id"].startswith("chat-")
    assert row["prompt"].endswith("\n\nAssistant:")
    assert store.comparisons.rows == [row]
