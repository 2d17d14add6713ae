"""The labeling app as people use it: its gradio_client API (several labelers at once, accounts, every refusal),
and the UI in a real browser (Debian's chromium driven by Playwright): ranking by clicks and keys, ties, a name
edited mid-item, literal text, Stats.

The browser tests skip, saying why, where /usr/bin/chromium or the playwright package is missing (`.ci/run`
installs both: `apt-get install -y chromium`, `pip install playwright`; no `playwright install` download).
Set RLHF_SCREENSHOT_DIR to save screenshots of the Rank and Stats tabs (the README's come from this test).
"""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path

import pytest
from conftest import load_recipe

from rlhf_recipes.feedback.store import LabelStore
from rlhf_recipes.feedback.users import User, Users, hash_password

pytest.importorskip("gradio", reason="the labeling app needs the `feedback` extra: pip install -e '.[feedback]'")
# Gradio's queue computes analytics with a pandas option pandas 3 deprecates, in the server's thread after every
# event; as an error (the project's FutureWarning filter) it kills that event's task. Not ours to fix.
pytestmark = [pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]

CHROMIUM = "/usr/bin/chromium"
PROMPTS = ["This western was", "I watched this comedy with my sister and", "The acting in this drama"]
ANSWERS = [" a slow, dull mess.", " a moving story with a superb cast.", " fine, I guess.", " western western western."]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_store(tmp_path: Path, prompts=PROMPTS, answers=ANSWERS, **kwargs) -> tuple[LabelStore, Path]:
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps({"id": f"item{i}", "prompt": p, "responses": answers}) + "\n"
                               for i, p in enumerate(prompts)))
    comparisons = tmp_path / "comparisons.jsonl"
    return LabelStore(samples, comparisons, **kwargs), comparisons


def serve(store: LabelStore, **kwargs) -> str:
    from rlhf_recipes.feedback.app import KEYS_JS, build_app

    app = build_app(store, **kwargs)
    port = free_port()
    users = kwargs.get("users")
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, head=KEYS_JS,
               share=False, auth=users.check if users else None)
    return app, f"http://127.0.0.1:{port}/"


@pytest.fixture
def served(tmp_path):
    store, comparisons = make_store(tmp_path)
    app, url = serve(store, guidelines="### Our rules\nPrefer the **honest** answer.")
    yield url, store, comparisons
    app.close()


def stored(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_gradio_client_api_round_trip_and_refusals(served):
    from gradio_client import Client

    url, store, comparisons = served
    client = Client(url, verbose=False)
    assert set(client.view_api(return_format="dict")["named_endpoints"]) == {"/next_item", "/submit_ranking",
                                                                              "/skip_item"}

    def submit(*args):
        return json.loads(client.predict(*args, api_name="/submit_ranking"))

    item = json.loads(client.predict("ann", api_name="/next_item"))
    assert item["id"] == "item0" and item["prompt"] == PROMPTS[0] and sorted(item["responses"]) == sorted(ANSWERS)
    assert json.loads(client.predict("ann", api_name="/next_item")) == item  # one open item per labeler
    token = item["token"]
    for args, error in [
        (("ann", item["id"], "3,1,1,2", "", token), "repeats"),
        (("ann", item["id"], "3,1,0", "", token), "missing"),
        (("ann", item["id"], "9,1,0,2", "", token), "unknown"),
        (("ann", item["id"], "3,1,0,2" * 150_000, "", token), "1050000 characters; a ranking of 4 answers"),
        (("ann", item["id"], "3,1,0,2", '{"0": 5}', token), "flags of response 0 must be a list of flag names"),
        (("ann", item["id"], "3,1,0,2", '{"0": null}', token), "flags of response 0 must be a list of flag names"),
        (("ann", item["id"], "3,1,0,2", "[" * 100_000, token), "at most 2000"),
        (("ann", "nope", "0,1,2,3", "", ""), "unknown item"),
        (("ann", "item1", "0,1,2,3", "", ""), "not served to 'ann'"),  # never served to ann
        (("bob", item["id"], "0,1,2,3", "", ""), "not served to 'bob'"),
        (("bob", "", "0,1,2,3", "", token), "served to another labeler name"),  # ann's token
        (("ann\u202e", item["id"], "0,1,2,3", "", token), "printable characters"),
        (("", item["id"], "0,1,2,3", "", token), "empty labeler"),
    ]:
        answer = submit(*args)
        assert answer["ok"] is False and error in answer["error"], (args[:2], answer)
        assert len(answer["error"]) < 300  # nothing huge echoed back
    assert comparisons.read_text() == ""
    answer = json.loads(client.predict("ann", "", "x" * 100_000, token, api_name="/skip_item"))
    assert answer["ok"] is False and "at most 500" in answer["error"]

    assert submit("ann", item["id"], "3,1=0,2", '{"1": ["untruthful"]}', token) == {"ok": True}
    shown = item["responses"]
    (row,) = stored(comparisons)
    assert row["responses"] == [shown[3], shown[1], shown[0], shown[2]] and row["labeler"] == "ann"
    assert row["flags"][1] == ["untruthful"] and row["ties"] == [[1, 2]]
    answer = submit("ann", item["id"], "0,1,2,3", "", token)
    assert answer["ok"] is False and "used once" in answer["error"]  # the same token twice
    item = json.loads(client.predict("ann", api_name="/next_item"))
    assert item["id"] == "item1"
    assert submit("ann", "item1", "0,1,2,3", "") == {"ok": True}  # the item id of ann's open serve is enough
    item = json.loads(client.predict("ann", api_name="/next_item"))
    assert json.loads(client.predict("ann", "", "unclear prompt", item["token"], api_name="/skip_item")) == {"ok": True}
    assert json.loads(client.predict("ann", api_name="/next_item")) == {"id": None}
    assert len(stored(comparisons)) == 2


def test_four_labelers_at_once_stay_within_every_quota(tmp_path):
    from gradio_client import Client

    prompts = [f"Prompt {i}:" for i in range(10)]
    _, comparisons = make_store(tmp_path, prompts)
    samples = tmp_path / "samples.jsonl"
    with open(samples, "a") as handle:  # plus one gold item, which everyone ranks
        handle.write(json.dumps({"id": "gold", "prompt": "Gold:", "responses": ANSWERS, "gold": [1, 2, 0, 3]}) + "\n")
    store = LabelStore(samples, comparisons, overlap_fraction=0.5, overlap_labelers=2)  # 2 of the 10, by hash
    app, url = serve(store)
    tokens, answers, lock = [], [], threading.Lock()

    def labeler(name: str) -> None:
        client = Client(url, verbose=False)
        while (item := json.loads(client.predict(name, api_name="/next_item")))["id"] is not None:
            answer = json.loads(client.predict(name, item["id"], "0,1,2,3", "", item["token"],
                                               api_name="/submit_ranking"))
            with lock:
                tokens.append(item["token"])
                answers.append(answer)

    try:
        threads = [threading.Thread(target=labeler, args=(f"labeler {i}",)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        app.close()
    rows = stored(comparisons)
    by_item: dict[str, list[str]] = {}
    for row in rows:
        by_item.setdefault(row["item_id"], []).append(row["labeler"])
    overlap = {i for i, item in store.items.items() if store.is_overlap(item)}
    assert 0 < len(overlap) < len(prompts)
    for item_id, names in by_item.items():  # every item exactly at its quota: 1, 2 on the overlap set, 4 on gold
        assert len(names) == len(set(names)) == (4 if item_id == "gold" else 2 if item_id in overlap else 1)
    assert set(by_item) == set(store.items)
    assert all(a == {"ok": True} for a in answers) and len(tokens) == len(set(tokens)) == len(rows)
    from rlhf_recipes.feedback.stats import label_stats

    stats = label_stats(store)  # agreement only on the planned overlap items, one pair of labelers each
    assert stats["overlapping_rankings"] == len(overlap) and stats["over_quota"] == 0


def test_accounts_make_the_login_the_labeler(tmp_path):
    from gradio_client import Client

    from rlhf_recipes.feedback.app import Identity

    store, comparisons = make_store(tmp_path)
    users = Users([User("ann", hash_password("ann-password")), User("lead", hash_password("lead-password"), True)])
    app, url = serve(store, users=users)
    try:
        with pytest.raises(Exception, match="login"):
            Client(url, auth=("ann", "wrong-password"), verbose=False)
        ann = Client(url, auth=("ann", "ann-password"), verbose=False)
        item = json.loads(ann.predict("", api_name="/next_item"))
        answer = json.loads(ann.predict("lead", item["id"], "0,1,2,3", "", item["token"], api_name="/submit_ranking"))
        assert answer["ok"] is False and "logged in as 'ann'" in answer["error"]
        assert json.loads(ann.predict("lead", api_name="/next_item"))["id"] is None  # nor served as another
        lead = Client(url, auth=("lead", "lead-password"), verbose=False)
        answer = json.loads(lead.predict("", item["id"], "0,1,2,3", "", item["token"], api_name="/submit_ranking"))
        assert answer["ok"] is False and "another labeler" in answer["error"]  # ann's token is no use to lead
        assert json.loads(ann.predict("", "", "0,1,2,3", "", item["token"], api_name="/submit_ranking"))["ok"]
    finally:
        app.close()
    assert [r["labeler"] for r in stored(comparisons)] == ["ann"]

    class Request:
        def __init__(self, username):
            self.username = username

    who = Identity(users)
    assert who.stats_viewer(Request("lead")) is None and who.stats_viewer(Request("ann")) == "ann"
    assert Identity(None).stats_viewer(Request(None)) is None  # no accounts: this machine only, one team view


def test_a_non_local_host_or_a_share_link_needs_a_password(monkeypatch, tmp_path):
    label = load_recipe("label")
    for name in ("RLHF_LABEL_AUTH", "RLHF_LABEL_USERS", "GRADIO_SHARE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="on 0.0.0.0 without a password"):
        label.parse_auth(label.LabelArguments(host="0.0.0.0"))
    with pytest.raises(ValueError, match="public share link"):
        label.parse_auth(label.LabelArguments(share=True))
    assert label.parse_auth(label.LabelArguments(host="127.0.0.1")) is None
    users = label.parse_auth(label.LabelArguments(host="0.0.0.0", auth="ann:pw"))
    assert users.check("ann", "pw") and not users.check("ann", "pw2") and users.is_admin("ann")
    monkeypatch.setenv("RLHF_LABEL_AUTH", "team:secret")
    assert label.parse_auth(label.LabelArguments(host="0.0.0.0")).check("team", "secret")
    with pytest.raises(ValueError, match="user:password"):
        label.parse_auth(label.LabelArguments(host="0.0.0.0", auth="nopassword"))
    monkeypatch.delenv("RLHF_LABEL_AUTH")
    monkeypatch.setenv("GRADIO_SHARE", "True")  # Gradio's own switch is refused too
    with pytest.raises(ValueError, match="public share link"):
        label.parse_auth(label.LabelArguments())

    users_file = tmp_path / "labelers.txt"
    from rlhf_recipes.feedback.users import add_user

    add_user(users_file, "ann", "ann-password")
    add_user(users_file, "lead", "lead-password", admin=True)
    assert "ann-password" not in users_file.read_text() and oct(users_file.stat().st_mode)[-3:] == "600"
    monkeypatch.setenv("RLHF_LABEL_USERS", str(users_file))
    users = label.parse_auth(label.LabelArguments(host="0.0.0.0"))
    assert users.check("lead", "lead-password") and users.is_admin("lead") and not users.is_admin("ann")
    assert not users.check("ann", "lead-password") and not users.check("nobody", "ann-password")
    users_file.write_text("ann:plain-password\n")
    with pytest.raises(ValueError, match="labelers.txt, line 1: expected name:scrypt"):
        label.parse_auth(label.LabelArguments(host="0.0.0.0"))


def test_launch_passes_share_explicitly_and_prints_no_share_hint(monkeypatch, tmp_path, capsys):
    import gradio as gr

    label = load_recipe("label")
    for name in ("RLHF_LABEL_AUTH", "RLHF_LABEL_USERS", "GRADIO_SHARE"):
        monkeypatch.delenv(name, raising=False)
    make_store(tmp_path)
    launched = {}

    def fake_launch(self, **kwargs):
        launched.update(kwargs)
        self.local_url, self.share_url = "http://127.0.0.1:7860/", None

    monkeypatch.setattr(gr.Blocks, "launch", fake_launch)
    monkeypatch.setattr(gr.Blocks, "block_thread", lambda self: None)
    guidelines = tmp_path / "guidelines.md"
    guidelines.write_text("Prefer honest answers.")
    label.main(label.LabelArguments(samples_file=str(tmp_path / "samples.jsonl"),
                                    comparisons_file=str(tmp_path / "comparisons.jsonl"),
                                    guidelines=str(guidelines)))
    assert launched["share"] is False and launched["auth"] is None and launched["quiet"] is True
    out = capsys.readouterr().out
    assert "share=True" not in out and "http://127.0.0.1:7860/" in out
    with pytest.raises(ValueError, match="no such file"):
        label.main(label.LabelArguments(samples_file=str(tmp_path / "samples.jsonl"), guidelines="missing.md"))


def test_the_users_command_reads_the_password_from_stdin_never_argv(tmp_path):
    import subprocess
    import sys

    users_file = tmp_path / "labelers.txt"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    command = [sys.executable, "-m", "rlhf_recipes.feedback.users", "add", "ann", "--users_file", str(users_file)]
    done = subprocess.run(command, input="a-long-password\n", capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "a-long-password" not in users_file.read_text()
    from rlhf_recipes.feedback.users import add_user, read_users

    assert read_users(users_file).check("ann", "a-long-password")
    with pytest.raises(ValueError, match="at least 8 characters"):
        add_user(users_file, "bob", "short")


@pytest.fixture
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no browser at {CHROMIUM} (Debian: apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed "
                                                                  "(pip install playwright)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def _answers(page, k: int = 4) -> list[str]:
    return [page.locator(f"#answer-{i} textarea").input_value() for i in range(1, k + 1)]


def _wait_prompt(page, text: str) -> None:
    page.wait_for_function("(t) => { const el = document.querySelector('#prompt textarea'); "
                           "return el && el.value.includes(t); }", arg=text)


def _wait_order(page, value: str) -> None:
    page.wait_for_function("(v) => document.querySelector('#order input, #order textarea').value === v", arg=value)


@pytest.mark.slow
def test_rank_items_in_a_real_browser_by_clicks_keys_and_ties(served, browser):
    url, store, comparisons = served
    page = browser.new_page(viewport={"width": 1000, "height": 900})
    page.goto(url)
    page.wait_for_selector("#guidelines:has-text('Our rules')")
    page.locator("#labeler input, #labeler textarea").first.fill("ann")
    page.click("#next")
    _wait_prompt(page, "This western was")
    shown = _answers(page)
    # item 1 by clicks: answer 2 best, then 4, 1, 3; flag answer 3 as off-topic
    for number in (2, 4, 1, 3):
        page.click(f"#pick-{number}")
    _wait_order(page, "2 4 1 3")
    page.locator("#flags-3 label", has_text="off_topic").click()
    screenshot_dir = os.environ.get("RLHF_SCREENSHOT_DIR")
    if screenshot_dir:
        page.screenshot(path=str(Path(screenshot_dir) / "label-rank.png"), full_page=True)
    page.click("#submit")
    _wait_prompt(page, "I watched this comedy")
    page.wait_for_selector("#status:has-text('Saved')")
    shown2 = _answers(page)
    # item 2 by keys, outside the text boxes: 3 = 1 2 4 (3 and 1 equally good), Enter
    page.locator("#left").click()
    for key in ("3", "=", "1", "2", "4"):
        page.keyboard.press(key)
    _wait_order(page, "3=1 2 4")
    page.keyboard.press("Enter")
    _wait_prompt(page, "The acting in this drama")

    rows = stored(comparisons)
    assert [r["item_id"] for r in rows] == ["item0", "item1"]
    assert rows[0]["responses"] == [shown[1], shown[3], shown[0], shown[2]] and rows[0]["ties"] == []
    assert rows[0]["flags"] == [[], [], [], ["off_topic"]]
    assert rows[1]["responses"] == [shown2[2], shown2[0], shown2[1], shown2[3]] and rows[1]["ties"] == [[0, 1]]
    assert [ANSWERS[i] for i in rows[0]["shown_order"]] == shown  # the store agrees with what the page showed

    # the Stats tab shows the current numbers as soon as it is opened (no Refresh)
    page.get_by_role("tab", name="Stats").click()
    page.wait_for_selector("#stats:has-text('2 rankings')")
    if screenshot_dir:
        page.screenshot(path=str(Path(screenshot_dir) / "label-stats.png"))


@pytest.mark.slow
def test_editing_the_name_mid_item_starts_over_and_never_remaps(tmp_path, browser):
    store, comparisons = make_store(tmp_path)
    app, url = serve(store)
    try:
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        page.goto(url)
        name = page.locator("#labeler input, #labeler textarea").first
        name.fill("ann")
        page.click("#next")
        _wait_prompt(page, "This western was")
        for number in (1, 2, 3, 4):
            page.click(f"#pick-{number}")
        _wait_order(page, "1 2 3 4")
        name.fill("ann smith")  # edit the name with ann's item open, then submit
        page.wait_for_selector("#status:has-text('Name changed')")
        page.click("#submit")
        page.wait_for_selector("#status:has-text('Load an item first')")
        assert comparisons.read_text() == ""  # nothing stored against answers ann smith never saw
        assert store.open_serve("ann") is None  # ann's item went back to the pool
        page.click("#next")
        _wait_prompt(page, "This western was")
        shown = _answers(page)
        for number in (1, 2, 3, 4):
            page.click(f"#pick-{number}")
        _wait_order(page, "1 2 3 4")
        page.click("#submit")
        page.wait_for_selector("#status:has-text('Saved')")
    finally:
        app.close()
    (row,) = stored(comparisons)
    assert row["labeler"] == "ann smith" and row["responses"] == shown  # exactly the order on the screen


@pytest.mark.slow
def test_answers_and_names_are_shown_as_literal_text_and_fetch_nothing(tmp_path, browser):
    port = free_port()
    image = f"http://127.0.0.1:{port}/x.png"
    answers = ["<script>document.title='pwned'</script>", f"![]({image}) look", "**bold** and _it_\n\n  indented",
               '<img src="' + image + '">']
    store, comparisons = make_store(tmp_path, ["Say <b>hi</b>\n  twice"], answers)
    app, url = serve(store)
    try:
        page = browser.new_page()
        fetched = []
        page.on("request", lambda request: fetched.append(request.url))
        page.goto(url)
        page.locator("#labeler input, #labeler textarea").first.fill("<img src=" + image + ">")
        page.click("#next")
        _wait_prompt(page, "Say <b>hi</b>")
        assert page.locator("#prompt textarea").input_value() == "Say <b>hi</b>\n  twice"
        assert sorted(_answers(page)) == sorted(answers)  # byte for byte, newlines and spaces kept
        page.locator("#left").click()
        for key in ("1", "2", "3", "4", "Enter"):
            page.keyboard.press(key)
        page.wait_for_selector("#status:has-text('Saved')")
        page.get_by_role("tab", name="Stats").click()
        page.wait_for_selector("#stats:has-text('1 rankings')")
        assert "&lt;img src=" in page.locator("#stats").inner_html()
        assert page.title() != "pwned" and not [u for u in fetched if "x.png" in u]
    finally:
        app.close()

